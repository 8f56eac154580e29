"""Baselines for bench/http.py: bare Starlette apps doing the work of
`GET /api/v1/namespaces/{id}` and `POST /api/v1/namespaces` on Kiln's SQLite file.

* `data_app` does exactly Kiln's data work (the same token lookup, the same
  visibility-aware row fetch or insert, the same representation, JSON-encoded)
  by calling Kiln's own data layer, without Kiln's HTTP framework around it:
  comparing with it measures what connexion and Kiln's conventions cost.
* `sql_app` does the least that answers the same requests: hand-written SQL for
  the token and the row, through the same engine settings.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from types import SimpleNamespace
from typing import Any, cast

import orjson
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from handlers.namespaces import represent_namespace
from kiln.core.config import Settings
from kiln.core.problems import Problem
from kiln.domain import access, namespaces
from kiln.http.auth import authenticate
from kiln.http.context import ServedApp
from kiln.http.ratelimit import RateLimits
from kiln.store.db import Database

settings = Settings(database_url=os.environ["BARE_DATABASE_URL"])
db = Database(settings.resolved_database_url)
kiln_parts = cast(ServedApp, SimpleNamespace(db=db, limits=RateLimits(settings)))


def _json(body: object, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_UTC_Z), status, media_type="application/hal+json"
    )


# data_app: Kiln's data layer, no framework.


async def data_get(request: Request) -> Response:
    try:
        principal = await authenticate(kiln_parts, request.headers["authorization"], "bench")
        with db.transaction(write=False):
            namespace, owner, _ = access.find_readable(principal, request.path_params["id"])
            return _json(represent_namespace(namespace, owner))
    except Problem as problem:
        return _json({"code": problem.type.code}, problem.status)


async def data_create(request: Request) -> Response:
    try:
        principal = await authenticate(kiln_parts, request.headers["authorization"], "bench")
        body = orjson.loads(await request.body())
        with db.transaction():
            namespace, owner = namespaces.create(principal, name=body["name"])
            return _json(represent_namespace(namespace, owner), 201)
    except Problem as problem:
        return _json({"code": problem.type.code}, problem.status)


data_app = Starlette(
    routes=[
        Route("/api/v1/namespaces/{id:int}", data_get),
        Route("/api/v1/namespaces", data_create, methods=["POST"]),
    ]
)


# sql_app: hand-written SQL.

_TOKEN = text("SELECT user_id FROM tokens WHERE secret_hash = :h")
_NAMESPACE = text(
    "SELECT n.*, u.username FROM namespaces n JOIN users u ON u.id = n.owner_id WHERE n.id = :id"
)
_INSERT = text(
    "INSERT INTO namespaces (name, path, description, visibility, parent_id, root_id, depth,"
    " owner_id, created_at, updated_at) VALUES (:name, :path, '', 'private', NULL, NULL, 1,"
    " :owner, :now, :now) RETURNING id"
)
_ANCESTRY = text("INSERT INTO namespace_ancestors VALUES (:id, :id, 0)")


def _user_id(request: Request) -> int | None:
    secret = request.headers.get("authorization", "").removeprefix("Bearer ")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with db.engine.connect() as conn:
        row = conn.execute(_TOKEN, {"h": digest}).first()
    return row[0] if row else None


async def sql_get(request: Request) -> Response:
    if _user_id(request) is None:
        return _json({"code": "invalid_credentials"}, 401)
    with db.engine.connect() as conn:
        row = conn.execute(_NAMESPACE, {"id": request.path_params["id"]}).mappings().first()
    if row is None:
        return _json({"code": "not_found"}, 404)
    body: dict[str, Any] = dict(row)
    body["_links"] = {"self": {"href": f"/api/v1/namespaces/{row['id']}"}}
    return _json(body)


async def sql_create(request: Request) -> Response:
    user_id = _user_id(request)
    if user_id is None:
        return _json({"code": "invalid_credentials"}, 401)
    data = orjson.loads(await request.body())
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    params = {"name": data["name"], "path": f"sql/{data['name']}", "owner": user_id, "now": now}
    with db.engine.begin() as conn:
        new_id = conn.execute(_INSERT, params).scalar_one()
        conn.execute(_ANCESTRY, {"id": new_id})
    return _json({"id": new_id, "name": data["name"]}, 201)


sql_app = Starlette(
    routes=[
        Route("/api/v1/namespaces/{id:int}", sql_get),
        Route("/api/v1/namespaces", sql_create, methods=["POST"]),
    ]
)
