"""Idempotency-Key on creates: replay, reuse with another body, in flight, across processes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import httpx

from tests.processes import KilnServe, kiln_env
from tests.support import Account, RunningServer, query


def post(client: httpx.Client, account: Account, key: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(
        "/api/v1/namespaces", json=body, headers={**account.auth, "Idempotency-Key": key}
    )


def test_a_replay_returns_the_first_result(client: httpx.Client, alice: Account) -> None:
    first = post(client, alice, "key-1", {"name": "once"})
    again = post(client, alice, "key-1", {"name": "once"})
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert "idempotent-replayed" not in first.headers
    listed = client.get("/api/v1/namespaces?search=once", headers=alice.auth).json()
    assert len(listed["_embedded"]["namespaces"]) == 1


def test_keys_belong_to_their_user(client: httpx.Client, alice: Account, bob: Account) -> None:
    assert post(client, alice, "shared", {"name": "mine"}).status_code == 201
    assert post(client, bob, "shared", {"name": "mine"}).status_code == 201


def test_the_same_key_with_another_body_is_422(client: httpx.Client, alice: Account) -> None:
    assert post(client, alice, "key-2", {"name": "first"}).status_code == 201
    response = post(client, alice, "key-2", {"name": "second"})
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"


def test_a_key_still_in_flight_is_409(
    client: httpx.Client, database_url: str, alice: Account
) -> None:
    # A request that claimed the key and has not finished: its claim has no result yet.
    body = {"name": "flight"}
    assert post(client, alice, "key-3", body).status_code == 201
    query(
        database_url,
        "UPDATE idempotency_keys SET status = NULL, body = NULL, headers = NULL, created_at = :now "
        "WHERE user_id = :u AND key = 'key-3'",
        u=alice.id,
        now=dt.datetime.now(dt.UTC).replace(tzinfo=None),
    )
    response = post(client, alice, "key-3", body)
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_in_flight"
    assert response.headers["retry-after"] == "1"


def test_a_failed_request_frees_its_key(client: httpx.Client, alice: Account) -> None:
    taken = client.post("/api/v1/namespaces", json={"name": "taken"}, headers=alice.auth).json()
    assert post(client, alice, "key-4", {"name": "taken"}).status_code == 409
    assert client.delete(f"/api/v1/namespaces/{taken['id']}", headers=alice.auth).status_code == 204
    assert post(client, alice, "key-4", {"name": "taken"}).status_code == 201


def test_keys_hold_across_processes(
    client: httpx.Client,
    server: RunningServer,
    database_url: str,
    alice: Account,
    tmp_path: Path,
) -> None:
    first = post(client, alice, "key-5", {"name": "across"})
    assert first.status_code == 201
    # Kept results are encrypted: processes that share a database share its keys.
    keys = (server.settings.data_dir / "secret.key").read_text().split()
    env = kiln_env(KILN_DATABASE_URL=database_url, KILN_SECRET_KEY=",".join(keys))
    with KilnServe(tmp_path / "other", env=env) as other, other.client() as other_client:
        again = post(other_client, alice, "key-5", {"name": "across"})
        assert again.status_code == 200
        assert again.content == first.content
