"""Security review of credentials: each test is named after the attack it stops.

Idempotency replays go only to the credential that made them, and keep no secret in
plaintext; managing tokens needs a credential that may; a token never mints one that
outlives it; made-up credentials get the anonymous rate limit; the password limit
counts failures only, per user name and per address.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import ALL_SCOPES, Account, RunningServer, make_token, query, server_settings

Maker = Callable[..., Account]
MINT = {"name": "deploy", "scopes": ["build:read,write"]}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def basic(username: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{username}:{secret}".encode()).decode()}


def mint(
    client: httpx.Client, auth: dict[str, str], key: str, body: dict[str, Any] = MINT
) -> httpx.Response:
    return client.post("/api/v1/tokens", json=body, headers={**auth, "Idempotency-Key": key})


def token_id(database_url: str, account: Account) -> int:
    """The id of the account's own (full) token."""
    rows = query(
        database_url, "SELECT id FROM tokens WHERE user_id = :u AND name = 'test'", u=account.id
    )
    return int(rows[0][0])


# 1. Idempotency-Key replays


def test_another_credential_replaying_an_idempotency_key_gets_no_token_secret(
    client: httpx.Client, database_url: str, make_user: Maker
) -> None:
    owner = make_user(password="pw-replay")
    first = mint(client, owner.auth, "deploy-1")
    assert first.status_code == 201
    secret = first.json()["token"]

    reader = make_token(database_url, owner, ["build:read"])
    narrowed_namespace = client.post(
        "/api/v1/namespaces", json={"name": "replay"}, headers=owner.auth
    ).json()["id"]
    narrowed = make_token(database_url, owner, ALL_SCOPES, namespace_id=narrowed_namespace)
    for auth, code in (
        (bearer(reader), "insufficient_scope"),
        (bearer(narrowed), "token_narrowed"),
    ):
        refused = mint(client, auth, "deploy-1")
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == code
        assert secret not in refused.text

    # The user's other credentials that may mint tokens mint their own.
    other = make_token(database_url, owner, ALL_SCOPES)
    for auth in (bearer(other), basic(owner.username, "pw-replay")):
        own = mint(client, auth, "deploy-1")
        assert own.status_code == 201, own.text
        assert "idempotent-replayed" not in own.headers
        assert own.json()["token"] != secret

    # The credential that made it still gets its replay.
    again = mint(client, owner.auth, "deploy-1")
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["token"] == secret


def test_reading_the_idempotency_table_reveals_no_token_secret(
    client: httpx.Client, database_url: str, alice: Account
) -> None:
    created = mint(client, alice.auth, "deploy-2", {"name": "kept-apart", "scopes": ["build:read"]})
    assert created.status_code == 201
    rows = query(
        database_url,
        "SELECT body, headers FROM idempotency_keys WHERE user_id = :u AND key = 'deploy-2'",
        u=alice.id,
    )
    assert len(rows) == 1
    kept = str(rows[0])
    assert created.json()["token"] not in kept
    assert "kept-apart" not in kept  # the whole body is encrypted, not only the secret
    replayed = mint(
        client, alice.auth, "deploy-2", {"name": "kept-apart", "scopes": ["build:read"]}
    )
    assert replayed.content == created.content


def test_a_token_that_reuses_a_revoked_tokens_id_inherits_none_of_its_replays(
    client: httpx.Client, database_url: str, alice: Account
) -> None:
    # SQLite may give a new token the id of the newest revoked one: a revoked token's
    # kept results go with it, so nothing is left under its id to replay.
    short = mint(client, alice.auth, "deploy-3", {"name": "short", "scopes": ALL_SCOPES}).json()
    assert mint(client, bearer(short["token"]), "deploy-3").status_code == 201
    count = "SELECT count(*) FROM idempotency_keys WHERE token_id = :t"
    assert query(database_url, count, t=short["id"])[0][0] == 1
    revoked = client.delete(f"/api/v1/tokens/{short['id']}", headers=alice.auth)
    assert revoked.status_code == 204
    assert query(database_url, count, t=short["id"])[0][0] == 0


# 2. Managing tokens


def test_a_read_only_token_cannot_strip_or_revoke_the_users_other_tokens(
    client: httpx.Client, database_url: str, alice: Account
) -> None:
    full = f"/api/v1/tokens/{token_id(database_url, alice)}"
    reader = bearer(make_token(database_url, alice, ["build:read"]))
    for attempt, needed in (
        (client.patch(full, json={"scopes": ["build:read"]}, headers=reader), "token:write"),
        (client.delete(full, headers=reader), "token:delete"),
        (client.get(full, headers=reader), "token:read"),
        (client.get("/api/v1/tokens", headers=reader), "token:read"),
        (client.post("/api/v1/tokens", json=MINT, headers=reader), "token:write"),
    ):
        assert attempt.status_code == 403, attempt.text
        assert attempt.json()["code"] == "insufficient_scope"
        assert f'scope="{needed}"' in attempt.headers["www-authenticate"]
    assert client.get(full, headers=alice.auth).json()["scopes"] == ALL_SCOPES
    # A token that holds the scope may: here, to narrow the full token.
    writer = bearer(make_token(database_url, alice, ["token:write"]))
    narrowed = client.patch(full, json={"scopes": ["build:read"]}, headers=writer)
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["scopes"] == ["build:read"]


def test_a_narrowed_token_cannot_manage_tokens_whatever_its_scopes(
    client: httpx.Client, database_url: str, alice: Account
) -> None:
    namespace = client.post("/api/v1/namespaces", json={"name": "narrow-t"}, headers=alice.auth)
    narrowed = bearer(
        make_token(database_url, alice, ALL_SCOPES, namespace_id=namespace.json()["id"])
    )
    full = f"/api/v1/tokens/{token_id(database_url, alice)}"
    for attempt in (
        client.patch(full, json={"scopes": ["build:read"]}, headers=narrowed),
        client.delete(full, headers=narrowed),
        client.get("/api/v1/tokens", headers=narrowed),
        client.post("/api/v1/tokens", json=MINT, headers=narrowed),
    ):
        assert attempt.status_code == 403, attempt.text
        assert attempt.json()["code"] == "token_narrowed"
    assert client.get(full, headers=alice.auth).json()["scopes"] == ALL_SCOPES


def test_a_short_lived_token_cannot_mint_one_that_outlives_it(
    client: httpx.Client, database_url: str, make_user: Maker
) -> None:
    owner = make_user(password="pw-expiry")
    hour = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).replace(microsecond=0)
    parent = bearer(make_token(database_url, owner, ALL_SCOPES, expires_at=hour))
    sooner = hour - dt.timedelta(minutes=30)
    for asked, expected in (
        (None, hour),
        ("2099-01-01T00:00:00Z", hour),
        (sooner.isoformat(), sooner),
    ):
        body = {"name": "child", "scopes": ["build:read"], "expires_at": asked}
        child = client.post("/api/v1/tokens", json=body, headers=parent)
        assert child.status_code == 201, child.text
        assert dt.datetime.fromisoformat(child.json()["expires_at"]) == expected
        stored = query(
            database_url, "SELECT expires_at FROM tokens WHERE id = :i", i=child.json()["id"]
        )
        assert stored[0][0] is not None
    # The password has no lifetime to pass on.
    body = {"name": "forever", "scopes": ["build:read"], "expires_at": None}
    forever = client.post("/api/v1/tokens", json=body, headers=basic(owner.username, "pw-expiry"))
    assert forever.status_code == 201
    assert forever.json()["expires_at"] is None


# 3. Anonymous limits


@pytest.mark.parametrize(
    ("path", "status"), [("/healthz", 200), ("/openapi.json", 200), ("/api/v1/user", 401)]
)
def test_made_up_credentials_do_not_escape_the_anonymous_limit(
    database_url: str, tmp_path: Path, alice: Account, path: str, status: int
) -> None:
    settings = server_settings(
        tmp_path, database_url, rate_limit="1000/minute", anonymous_rate_limit="3/minute"
    )
    with RunningServer(settings) as server, server.client() as client:
        junk = ["junk" + secrets.token_hex(8), "kiln_" + secrets.token_hex(22)[:43]] * 2
        responses = [client.get(path, headers=bearer(credential)) for credential in junk]
        assert [r.status_code for r in responses] == [status, status, status, 429]
        assert {r.headers["ratelimit-limit"] for r in responses} == {"3"}
        assert responses[-1].json()["code"] == "rate_limited"
        assert int(responses[-1].headers["retry-after"]) > 0
        assert client.get(path).status_code == 429  # the same bucket as no credentials
        # Valid credentials still count as themselves.
        valid = client.get("/api/v1/user", headers=alice.auth)
        assert valid.status_code == 200
        assert valid.headers["ratelimit-limit"] == "1000"


# 4. Password limits


def test_correct_passwords_do_not_use_up_the_password_limit(
    database_url: str, tmp_path: Path, make_user: Maker
) -> None:
    user = make_user(password="pw-right")
    settings = server_settings(tmp_path, database_url, password_rate_limit="3/minute")
    with RunningServer(settings) as server, server.client() as client:
        statuses = [
            client.get("/api/v1/user", headers=basic(user.username, "pw-right")).status_code
            for _ in range(12)
        ]
        assert statuses == [200] * 12


def test_one_users_failed_passwords_do_not_lock_out_another_user(
    database_url: str, tmp_path: Path, make_user: Maker
) -> None:
    guessed, other = make_user(password="pw-a"), make_user(password="pw-b")
    settings = server_settings(tmp_path, database_url, password_rate_limit="3/minute")
    with RunningServer(settings) as server, server.client() as client:
        guesses = [
            client.get("/api/v1/user", headers=basic(guessed.username, "nope")).status_code
            for _ in range(4)
        ]
        assert guesses == [401, 401, 401, 429]
        # Over its limit, the name takes no password, the right one neither: else a
        # guesser would still learn when it got it right.
        locked = client.get("/api/v1/user", headers=basic(guessed.username, "pw-a"))
        assert locked.status_code == 429
        assert locked.json()["code"] == "rate_limited"
        assert client.get("/api/v1/user", headers=basic(other.username, "pw-b")).status_code == 200


def test_spraying_guesses_over_many_names_from_one_address_is_refused(
    database_url: str, tmp_path: Path, make_user: Maker
) -> None:
    user = make_user(password="pw-c")
    settings = server_settings(tmp_path, database_url, password_rate_limit="3/minute")
    with RunningServer(settings) as server, server.client() as client:
        # One guess per name stays under every name's limit; the address has ten names' worth.
        sprayed = [
            client.get("/api/v1/user", headers=basic(f"sprayed{n}", "guess")).status_code
            for n in range(30)
        ]
        assert sprayed == [401] * 30
        refused = client.get("/api/v1/user", headers=basic(user.username, "pw-c"))
        assert refused.status_code == 429
        assert client.get("/api/v1/user", headers=user.auth).status_code == 200
