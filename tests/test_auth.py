"""Credentials: tokens and Basic, 401 versus 403, revocation, expiry and narrowing."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable

import httpx
import pytest

from tests.support import Account, make_token, query

Maker = Callable[..., Account]


def basic(username: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()}


def test_no_credentials_is_401_without_error(client: httpx.Client) -> None:
    response = client.get("/api/v1/user")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    assert response.headers["www-authenticate"] == 'Bearer realm="kiln"'


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer kiln_" + "A" * 43,
        "Bearer not-a-token",
        "Bearer",
        "Token abc",
        "Basic !!!",
        "Basic " + "Zm9v",
    ],
)
def test_bad_credentials_are_401_invalid_token(client: httpx.Client, authorization: str) -> None:
    response = client.get("/api/v1/user", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_credentials"
    assert response.headers["www-authenticate"] == 'Bearer realm="kiln", error="invalid_token"'


def test_a_token_without_the_scope_is_403(client: httpx.Client, make_user: Maker) -> None:
    reader = make_user(scopes=["namespace:read"])
    response = client.post("/api/v1/namespaces", json={"name": "x"}, headers=reader.auth)
    assert response.status_code == 403
    assert response.json()["code"] == "insufficient_scope"
    assert response.headers["www-authenticate"] == (
        'Bearer realm="kiln", error="insufficient_scope", scope="namespace:write"'
    )


def test_an_under_scoped_token_is_not_read_as_anonymous(
    client: httpx.Client, make_user: Maker
) -> None:
    owner, stranger = make_user(), make_user(scopes=["build:read"])
    public = client.post(
        "/api/v1/namespaces", json={"name": "pub", "visibility": "public"}, headers=owner.auth
    ).json()
    assert client.get(f"/api/v1/namespaces/{public['id']}").status_code == 200
    response = client.get(f"/api/v1/namespaces/{public['id']}", headers=stranger.auth)
    assert response.status_code == 403
    assert (
        client.get(
            f"/api/v1/namespaces/{public['id']}", headers={"Authorization": "Bearer x"}
        ).status_code
        == 401
    )


def test_basic_with_password(client: httpx.Client, make_user: Maker) -> None:
    user = make_user(password="correct horse")
    assert (
        client.get("/api/v1/user", headers=basic(user.username, "correct horse")).status_code == 200
    )
    wrong = client.get("/api/v1/user", headers=basic(user.username, "battery staple"))
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "invalid_credentials"


def test_basic_with_a_token_carries_its_scopes(client: httpx.Client, make_user: Maker) -> None:
    user = make_user(scopes=["namespace:read"])
    assert (
        client.get("/api/v1/namespaces", headers=basic(user.username, user.token)).status_code
        == 200
    )
    denied = client.post(
        "/api/v1/namespaces", json={"name": "x"}, headers=basic(user.username, user.token)
    )
    assert denied.status_code == 403
    other = make_user()
    assert client.get("/api/v1/user", headers=basic(other.username, user.token)).status_code == 401


def test_revocation_takes_effect_on_the_next_request(client: httpx.Client, alice: Account) -> None:
    minted = client.post(
        "/api/v1/tokens", json={"name": "short", "scopes": ["namespace:read"]}, headers=alice.auth
    ).json()
    bearer = {"Authorization": f"Bearer {minted['token']}"}
    assert client.get("/api/v1/user", headers=bearer).status_code == 200
    assert client.delete(f"/api/v1/tokens/{minted['id']}", headers=alice.auth).status_code == 204
    assert client.get("/api/v1/user", headers=bearer).status_code == 401


def test_expired_tokens_stop_working(
    client: httpx.Client, database_url: str, alice: Account
) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    token = make_token(database_url, alice, ["namespace:read"], expires_at=soon)
    assert (
        client.get("/api/v1/user", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    )
    query(
        database_url,
        "UPDATE tokens SET expires_at = :t WHERE user_id = :u AND name = 'extra'",
        t=dt.datetime(2000, 1, 1),
        u=alice.id,
    )
    response = client.get("/api/v1/user", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_last_used_at_is_kept(client: httpx.Client, alice: Account) -> None:
    tokens = client.get("/api/v1/tokens", headers=alice.auth).json()["_embedded"]["tokens"]
    assert tokens[0]["last_used_at"] is not None


def test_the_secret_is_shown_once_and_stored_as_a_hash(
    client: httpx.Client, database_url: str, alice: Account
) -> None:
    created = client.post(
        "/api/v1/tokens", json={"name": "once", "scopes": ["build:read"]}, headers=alice.auth
    )
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("kiln_")
    assert "token" not in client.get(created.headers["location"], headers=alice.auth).json()
    rows = query(
        database_url, "SELECT secret_hash FROM tokens WHERE id = :id", id=created.json()["id"]
    )
    assert rows[0][0] != secret
    assert secret not in str(query(database_url, "SELECT * FROM tokens"))


def test_combined_scope_form(client: httpx.Client, alice: Account) -> None:
    created = client.post(
        "/api/v1/tokens",
        json={"name": "combo", "scopes": ["build:read,write", "namespace:read"]},
        headers=alice.auth,
    ).json()
    assert created["scopes"] == ["build:read", "build:write", "namespace:read"]


def test_a_token_cannot_grant_what_it_does_not_hold(client: httpx.Client, make_user: Maker) -> None:
    user = make_user(scopes=["namespace:read", "token:write"])
    response = client.post(
        "/api/v1/tokens", json={"name": "wider", "scopes": ["build:read"]}, headers=user.auth
    )
    assert response.status_code == 403
    assert response.json()["code"] == "scope_escalation"


def test_scopes_can_be_narrowed_never_widened(client: httpx.Client, alice: Account) -> None:
    created = client.post(
        "/api/v1/tokens", json={"name": "n", "scopes": ["namespace:read,write"]}, headers=alice.auth
    ).json()
    url = f"/api/v1/tokens/{created['id']}"
    wider = client.patch(url, json={"scopes": ["namespace:read", "build:read"]}, headers=alice.auth)
    assert wider.status_code == 422
    assert wider.json()["code"] == "scope_widening"
    narrower = client.patch(
        url, json={"scopes": ["namespace:read"], "name": "ro"}, headers=alice.auth
    )
    assert narrower.status_code == 200
    assert narrower.json()["scopes"] == ["namespace:read"]
    assert narrower.json()["name"] == "ro"
    bearer = {"Authorization": f"Bearer {created['token']}"}
    assert client.post("/api/v1/namespaces", json={"name": "x"}, headers=bearer).status_code == 403


def test_expiry_must_be_in_the_future(client: httpx.Client, alice: Account) -> None:
    response = client.post(
        "/api/v1/tokens",
        json={"name": "old", "scopes": ["build:read"], "expires_at": "2001-01-01T00:00:00Z"},
        headers=alice.auth,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["pointer"] == "/expires_at"
    later = client.post(
        "/api/v1/tokens",
        json={"name": "later", "scopes": ["build:read"], "expires_at": "2099-01-01T00:00:00+02:00"},
        headers=alice.auth,
    )
    assert later.json()["expires_at"] == "2098-12-31T22:00:00Z"


def test_a_narrowed_token_sees_only_its_namespace(client: httpx.Client, alice: Account) -> None:
    inside = client.post("/api/v1/namespaces", json={"name": "inside"}, headers=alice.auth).json()
    child = client.post(
        "/api/v1/namespaces", json={"name": "kid", "parent_id": inside["id"]}, headers=alice.auth
    ).json()
    outside = client.post("/api/v1/namespaces", json={"name": "outside"}, headers=alice.auth).json()
    narrowed = client.post(
        "/api/v1/tokens",
        json={
            "name": "narrow",
            "scopes": ["namespace:read,write", "token:read,write"],
            "namespace_id": inside["id"],
        },
        headers=alice.auth,
    ).json()
    assert narrowed["namespace_id"] == inside["id"]
    bearer = {"Authorization": f"Bearer {narrowed['token']}"}
    assert client.get(f"/api/v1/namespaces/{inside['id']}", headers=bearer).status_code == 200
    assert client.get(f"/api/v1/namespaces/{child['id']}", headers=bearer).status_code == 200
    assert client.get(f"/api/v1/namespaces/{outside['id']}", headers=bearer).status_code == 404
    listed = client.get("/api/v1/namespaces", headers=bearer).json()["_embedded"]["namespaces"]
    assert {n["id"] for n in listed} == {inside["id"], child["id"]}
    top = client.post("/api/v1/namespaces", json={"name": "escape"}, headers=bearer)
    assert top.status_code == 422
    for attempt in (
        client.get("/api/v1/tokens", headers=bearer),
        client.post(
            "/api/v1/tokens", json={"name": "m", "scopes": ["namespace:read"]}, headers=bearer
        ),
    ):
        assert attempt.status_code == 403
        assert attempt.json()["code"] == "token_narrowed"


def test_the_authenticated_user(client: httpx.Client, alice: Account) -> None:
    me = client.get("/api/v1/user", headers=alice.auth).json()
    assert me["id"] == alice.id
    assert me["username"] == alice.username
    assert me["_links"]["self"]["href"] == "/api/v1/user"
