"""Variables: per owner or namespace, masked ones encrypted at rest and never shown."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import POSTGRES_URL
from tests.support import Account, RunningServer, bytes_of_a_live_database_file, query

Maker = Callable[..., Account]
V = "/api/v1/variables"


def create(client: httpx.Client, who: Account, **body: object) -> httpx.Response:
    return client.post(V, json=body, headers=who.auth)


def test_plain_and_masked_values(client: httpx.Client, alice: Account) -> None:
    plain = create(client, alice, key="REGION", value="eu-west-1")
    assert plain.status_code == 201
    assert plain.json()["value"] == "eu-west-1"
    masked = create(client, alice, key="TOKEN", value="hunter2-very-secret", masked=True)
    assert masked.json()["value"] == "xxxxxx"
    assert client.get(masked.headers["location"], headers=alice.auth).json()["value"] == "xxxxxx"
    listed = client.get(V, params={"search": "tok"}, headers=alice.auth).json()
    assert [v["value"] for v in listed["_embedded"]["variables"]] == ["xxxxxx"]


def test_the_database_holds_no_plaintext_of_a_masked_value(
    client: httpx.Client, server: RunningServer, database_url: str, alice: Account
) -> None:
    secret = "plaintext-must-not-leak-7f3a9"
    assert create(client, alice, key="LEAK", value=secret, masked=True).status_code == 201
    stored = query(database_url, "SELECT value FROM variables WHERE key = 'LEAK'")[0][0]
    assert secret not in stored
    if POSTGRES_URL is None:  # the SQLite database is files we can read
        path = Path(database_url.removeprefix("sqlite:///"))
        for file in (path, path.with_name(path.name + "-wal")):
            if file.exists():
                assert secret.encode() not in bytes_of_a_live_database_file(file)


def test_keys_are_unique_per_owner_or_namespace(client: httpx.Client, alice: Account) -> None:
    assert create(client, alice, key="DUP", value="1").status_code == 201
    again = create(client, alice, key="DUP", value="2")
    assert again.status_code == 409
    assert again.json()["code"] == "already_exists"
    namespace = client.post("/api/v1/namespaces", json={"name": "vars"}, headers=alice.auth).json()
    assert (
        create(client, alice, key="DUP", value="3", namespace_id=namespace["id"]).status_code == 201
    )


def test_key_pattern(client: httpx.Client, alice: Account) -> None:
    for key in ("1ABC", "with-dash", "", "a b"):
        assert create(client, alice, key=key, value="x").status_code == 400
    assert create(client, alice, key="_ok_1", value="x").status_code == 201


def test_masking_rules(client: httpx.Client, alice: Account) -> None:
    short = create(client, alice, key="SHORT", value="abc", masked=True)
    assert short.status_code == 422
    assert short.json()["errors"][0]["pointer"] == "/value"
    made = create(client, alice, key="HIDE", value="long-enough", masked=True).json()
    url = f"{V}/{made['id']}"
    unmask = client.patch(url, json={"masked": False}, headers=alice.auth)
    assert unmask.status_code == 422
    revealed = client.patch(url, json={"masked": False, "value": "new"}, headers=alice.auth)
    assert revealed.json() | {"value": "new", "masked": False} == revealed.json()
    plain = create(client, alice, key="TOMASK", value="abc").json()
    too_short = client.patch(f"{V}/{plain['id']}", json={"masked": True}, headers=alice.auth)
    assert too_short.status_code == 422


def test_namespace_variables_are_for_members(
    client: httpx.Client, alice: Account, bob: Account
) -> None:
    public = client.post(
        "/api/v1/namespaces", json={"name": "pubvars", "visibility": "public"}, headers=alice.auth
    ).json()
    made = create(client, alice, key="NS_VAR", value="v", namespace_id=public["id"]).json()
    mine = client.get(f"/api/v1/namespaces/{public['id']}/variables", headers=alice.auth).json()
    assert [v["id"] for v in mine["_embedded"]["variables"]] == [made["id"]]
    assert client.get(f"{V}/{made['id']}", headers=bob.auth).status_code == 404
    listing = client.get(f"/api/v1/namespaces/{public['id']}/variables", headers=bob.auth)
    assert listing.status_code == 403
    assert create(client, bob, key="X", value="v", namespace_id=public["id"]).status_code == 422


def test_a_narrowed_token_keeps_to_its_namespace(client: httpx.Client, alice: Account) -> None:
    namespace = client.post(
        "/api/v1/namespaces", json={"name": "narrow-v"}, headers=alice.auth
    ).json()
    create(client, alice, key="OWN_LEVEL", value="1")
    inside = create(client, alice, key="INSIDE", value="2", namespace_id=namespace["id"]).json()
    token = client.post(
        "/api/v1/tokens",
        json={"name": "n", "scopes": ["variable:read,write"], "namespace_id": namespace["id"]},
        headers=alice.auth,
    ).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    listed = client.get(V, headers=bearer).json()["_embedded"]["variables"]
    assert [v["id"] for v in listed] == [inside["id"]]
    assert client.post(V, json={"key": "Z", "value": "1"}, headers=bearer).status_code == 422


def test_patch_and_delete_with_etags(client: httpx.Client, alice: Account) -> None:
    made = create(client, alice, key="EDIT", value="1").json()
    url = f"{V}/{made['id']}"
    etag = client.get(url, headers=alice.auth).headers["etag"]
    assert (
        client.patch(
            url, json={"value": "2"}, headers={**alice.auth, "If-Match": '"x"'}
        ).status_code
        == 412
    )
    changed = client.patch(
        url, json={"value": "2", "key": "EDITED"}, headers={**alice.auth, "If-Match": etag}
    )
    assert changed.json()["value"] == "2"
    assert changed.json()["key"] == "EDITED"
    assert client.delete(url, headers=alice.auth).status_code == 204
    assert client.get(url, headers=alice.auth).status_code == 404
