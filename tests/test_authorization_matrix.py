"""For every operation on an `{id}`: another user gets 404, no credentials 401, no scope 403.

The operations come from the contract, so a new one is covered (or fails here
until it has a resource to act on in `RESOURCES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from kiln.core import spec
from tests.support import (
    MANIFEST,
    QCOW2_HEADER,
    Account,
    add_collaborator,
    make_account,
    make_token,
    ssh_private_key,
    wait_for_build,
)

SPEC = spec.load()
OPS = [op for op in spec.operations().values() if "{id}" in op.path]


@dataclass
class World:
    owner: Account
    stranger: Account
    namespace: dict[str, Any]
    collaborator: Account
    made: dict[str, int]  # the id of one resource of each kind, in the owner's namespace


@pytest.fixture(scope="module")
def world(client: httpx.Client, database_url: str) -> World:
    """Made once: no request in this module succeeds in changing anything."""
    owner, stranger, collaborator, invitee = (make_account(database_url) for _ in range(4))

    def post(path: str, **kwargs: Any) -> int:
        response = client.post(path, headers=owner.auth, **kwargs)
        assert response.status_code in (201, 202), response.text
        made: int = response.json()["id"]
        return made

    namespace = client.post(
        "/api/v1/namespaces", json={"name": "guarded"}, headers=owner.auth
    ).json()
    ns = namespace["id"]
    add_collaborator(database_url, ns, collaborator.id)
    hook = {"payload_url": "https://93.184.216.34/hook", "events": ["build.finished"]}
    webhook = post(f"/api/v1/namespaces/{ns}/webhooks", json=hook)
    cron = {"name": "c", "schedule": "@daily", "manifest": MANIFEST, "namespace_id": ns}
    made = {
        "token": post("/api/v1/tokens", json={"name": "t", "scopes": ["build:read"]}),
        "variable": post("/api/v1/variables", json={"key": "K", "value": "v", "namespace_id": ns}),
        "key": post(
            "/api/v1/keys", json={"name": "k", "key": ssh_private_key(), "namespace_id": ns}
        ),
        "object": post(f"/api/v1/objects?name=o.txt&namespace_id={ns}", content=b"hello"),
        "image": post(f"/api/v1/images?name=i.qcow2&namespace_id={ns}", content=QCOW2_HEADER),
        "cron": post("/api/v1/cron", json=cron),
        "webhook": webhook,
        "delivery": post(f"/api/v1/namespaces/{ns}/webhooks/{webhook}/pings"),
        "invite": post(f"/api/v1/namespaces/{ns}/invites", json={"username": invitee.username}),
        "build": post("/api/v1/builds", json={"manifest": BUILD, "tags": ["t"]}),
    }
    build = wait_for_build(client, owner.auth, made["build"])
    made["job"] = build["_embedded"]["jobs"][0]["id"]
    artifacts = client.get(f"/api/v1/builds/{made['build']}/artifacts", headers=owner.auth)
    made["artifact"] = artifacts.json()["_embedded"]["artifacts"][0]["id"]
    return World(owner, stranger, namespace, collaborator, made)


BUILD = """namespace: guarded
driver: {type: local}
stages: [make]
jobs:
- stage: make
  commands: [echo made > made.txt]
  artifacts: [made.txt]
"""


# How to fill each path's parameters from the world the owner made.
def _own(kind: str) -> Callable[[World], dict[str, Any]]:
    return lambda w: {"id": w.made[kind]}


def _in_build(w: World) -> dict[str, Any]:
    return {"id": w.made["build"], "job_id": w.made["job"], "artifact_id": w.made["artifact"],
            "name": "t"}  # fmt: skip


def _in_namespace(w: World) -> dict[str, Any]:
    return {"id": w.namespace["id"], "webhook_id": w.made["webhook"],
            "delivery_id": w.made["delivery"]}  # fmt: skip


RESOURCES: dict[str, Callable[[World], dict[str, Any]]] = {
    "/api/v1/tokens/{id}": _own("token"),
    "/api/v1/variables/{id}": _own("variable"),
    "/api/v1/keys/{id}": _own("key"),
    "/api/v1/objects/{id}": _own("object"),
    "/api/v1/objects/{id}/content": _own("object"),
    "/api/v1/objects/{id}/builds": _own("object"),
    "/api/v1/images/{id}": _own("image"),
    "/api/v1/images/{id}/content": _own("image"),
    "/api/v1/cron/{id}": _own("cron"),
    "/api/v1/cron/{id}/builds": _own("cron"),
    "/api/v1/invites/{id}": _own("invite"),
    "/api/v1/invites/{id}/accept": _own("invite"),
    **{
        f"/api/v1/builds/{{id}}{tail}": _in_build
        for tail in (
            "",
            "/kill",
            "/jobs",
            "/jobs/{job_id}",
            "/jobs/{job_id}/output",
            "/artifacts",
            "/artifacts/{artifact_id}",
            "/artifacts/{artifact_id}/content",
            "/tags",
            "/tags/{name}",
            "/objects",
            "/variables",
            "/keys",
        )
    },
    "/api/v1/namespaces/{id}/builds": _in_namespace,
    "/api/v1/namespaces/{id}/variables": _in_namespace,
    "/api/v1/namespaces/{id}/keys": _in_namespace,
    "/api/v1/namespaces/{id}/objects": _in_namespace,
    "/api/v1/namespaces/{id}/images": _in_namespace,
    "/api/v1/namespaces/{id}/cron": _in_namespace,
    "/api/v1/namespaces/{id}/invites": _in_namespace,
    "/api/v1/namespaces/{id}/webhooks": _in_namespace,
    "/api/v1/namespaces/{id}/webhooks/{webhook_id}": _in_namespace,
    "/api/v1/namespaces/{id}/webhooks/{webhook_id}/deliveries": _in_namespace,
    "/api/v1/namespaces/{id}/webhooks/{webhook_id}/deliveries/{delivery_id}": _in_namespace,
    "/api/v1/namespaces/{id}/webhooks/{webhook_id}/pings": _in_namespace,
    "/api/v1/namespaces/{id}": lambda w: {"id": w.namespace["id"]},
    "/api/v1/namespaces/{id}/namespaces": lambda w: {"id": w.namespace["id"]},
    "/api/v1/namespaces/{id}/collaborators": lambda w: {"id": w.namespace["id"]},
    "/api/v1/namespaces/{id}/collaborators/{username}": lambda w: {
        "id": w.namespace["id"],
        "username": w.collaborator.username,
    },
}


def _request(
    client: httpx.Client, op: spec.OperationInfo, world: World, headers: dict[str, str]
) -> httpx.Response:
    assert op.path in RESOURCES, f"add {op.path} to RESOURCES"
    url = op.path.format(**RESOURCES[op.path](world))
    body = _example_body(op)
    return client.request(op.method, url, json=body, headers=headers)


def _example_body(op: spec.OperationInfo) -> Any:
    operation = SPEC["paths"][op.path][op.method.lower()]
    content = operation.get("requestBody", {}).get("content", {})
    for media in content.values():
        if "examples" in media:
            example = next(iter(media["examples"].values()))
            return spec.resolve(SPEC, example)["value"]
    return None


@pytest.mark.parametrize("op", OPS, ids=[f"{o.method} {o.path}" for o in OPS])
def test_another_users_token_gets_404(
    client: httpx.Client, world: World, op: spec.OperationInfo
) -> None:
    response = _request(client, op, world, world.stranger.auth)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"


@pytest.mark.parametrize("op", OPS, ids=[f"{o.method} {o.path}" for o in OPS])
def test_no_credentials_get_401(client: httpx.Client, world: World, op: spec.OperationInfo) -> None:
    response = _request(client, op, world, {})
    if op.anonymous:  # a public read: the private resource stays hidden
        assert response.status_code == 404, response.text
    else:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == 'Bearer realm="kiln"'


@pytest.mark.parametrize("op", OPS, ids=[f"{o.method} {o.path}" for o in OPS])
def test_a_token_without_the_scope_gets_403(
    client: httpx.Client, database_url: str, world: World, op: spec.OperationInfo
) -> None:
    if op.scopes:
        others = [s for s in spec.declared_scopes() if s not in op.scopes]
        token = make_token(database_url, world.owner, others)
        expected = "insufficient_scope"
    else:  # operations on the caller's own tokens: a narrowed token may not use them
        token = make_token(
            database_url, world.owner, spec.declared_scopes(), namespace_id=world.namespace["id"]
        )
        expected = "token_narrowed"
    response = _request(client, op, world, {"Authorization": f"Bearer {token}"})
    assert response.status_code == 403, response.text
    assert response.json()["code"] == expected
