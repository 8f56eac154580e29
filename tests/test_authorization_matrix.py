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

from kiln import spec
from tests.support import Account, add_collaborator, make_token

Maker = Callable[..., Account]
SPEC = spec.load()
OPS = [op for op in spec.operations().values() if "{id}" in op.path]


@dataclass
class World:
    owner: Account
    stranger: Account
    namespace: dict[str, Any]
    collaborator: Account
    token_id: int


@pytest.fixture
def world(client: httpx.Client, database_url: str, make_user: Maker) -> World:
    owner, stranger, collaborator = make_user(), make_user(), make_user()
    namespace = client.post(
        "/api/v1/namespaces", json={"name": "guarded"}, headers=owner.auth
    ).json()
    add_collaborator(database_url, namespace["id"], collaborator.id)
    token = client.post(
        "/api/v1/tokens", json={"name": "t", "scopes": ["build:read"]}, headers=owner.auth
    ).json()
    return World(owner, stranger, namespace, collaborator, token["id"])


# How to fill each path's parameters from the world the owner made.
RESOURCES: dict[str, Callable[[World], dict[str, Any]]] = {
    "/api/v1/tokens/{id}": lambda w: {"id": w.token_id},
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
