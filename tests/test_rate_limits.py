"""Rate limits per credential, per address when anonymous, tighter for passwords."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support import Account, RunningServer, server_settings

Maker = Callable[..., Account]


def test_every_response_reports_the_limit(client: httpx.Client, alice: Account) -> None:
    for response in (
        client.get("/api/v1/user", headers=alice.auth),
        client.get("/nope"),
        client.get("/api/v1/user"),
    ):
        assert int(response.headers["ratelimit-limit"]) > 0
        assert int(response.headers["ratelimit-remaining"]) >= 0
        assert int(response.headers["ratelimit-reset"]) >= 0


def test_over_the_limit_is_429_with_retry_after(
    database_url: str, tmp_path: Path, make_user: Maker
) -> None:
    alice, bob = make_user(), make_user()
    settings = server_settings(
        tmp_path, database_url, rate_limit="3/minute", anonymous_rate_limit="2/minute"
    )
    with RunningServer(settings) as server, server.client() as client:
        remaining = [
            int(client.get("/api/v1/user", headers=alice.auth).headers["ratelimit-remaining"])
            for _ in range(3)
        ]
        assert remaining == [2, 1, 0]
        limited = client.get("/api/v1/user", headers=alice.auth)
        assert limited.status_code == 429
        assert limited.json()["code"] == "rate_limited"
        assert 0 < int(limited.headers["retry-after"]) <= 60
        assert limited.headers["ratelimit-limit"] == "3"
        # Another credential has its own budget; so has the anonymous caller.
        assert client.get("/api/v1/user", headers=bob.auth).status_code == 200
        assert [client.get("/healthz").status_code for _ in range(3)] == [200, 200, 429]


def test_failed_password_attempts_are_limited_harder(
    database_url: str, tmp_path: Path, make_user: Maker
) -> None:
    user = make_user(password="pw-1")
    settings = server_settings(tmp_path, database_url, password_rate_limit="2/minute")
    wrong = "Basic " + base64.b64encode(f"{user.username}:pw-2".encode()).decode()
    with RunningServer(settings) as server, server.client() as client:
        statuses = [
            client.get("/api/v1/user", headers={"Authorization": wrong}).status_code
            for _ in range(3)
        ]
        assert statuses == [401, 401, 429]
        # Tokens are not password attempts.
        assert client.get("/api/v1/user", headers=user.auth).status_code == 200


def test_redis_storage_shares_the_count_between_processes(
    database_url: str, tmp_path: Path, make_user: Maker
) -> None:
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_timeout=2).ping()
    except redis.RedisError:
        if os.environ.get("CI"):
            raise  # CI has Redis: never skip this there
        pytest.skip("no Redis on 127.0.0.1:6379")
    user = make_user()
    # A fresh user's token is a key of its own, so earlier runs' counts do not matter.
    common = {"rate_limit": "3/minute", "rate_limit_storage": "redis://127.0.0.1:6379/0"}
    first = server_settings(tmp_path / "a", database_url, **common)
    second = server_settings(tmp_path / "b", database_url, **common)
    with RunningServer(first) as a, RunningServer(second) as b, a.client() as ca, b.client() as cb:
        assert ca.get("/api/v1/user", headers=user.auth).status_code == 200
        assert cb.get("/api/v1/user", headers=user.auth).status_code == 200
        assert ca.get("/api/v1/user", headers=user.auth).status_code == 200
        assert cb.get("/api/v1/user", headers=user.auth).status_code == 429
