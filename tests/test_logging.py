"""One structured log line per request, and never a secret in it."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support import Account, wait_until


def test_one_structured_line_per_request(
    client: httpx.Client, alice: Account, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="kiln.access")
    response = client.get("/api/v1/user?", headers=alice.auth)

    def lines() -> list[dict[str, Any]]:
        return [
            json.loads(r.getMessage())
            for r in caplog.records
            if r.name == "kiln.access" and response.headers["x-request-id"] in r.getMessage()
        ]

    # The server's thread logs once the response is sent, which may be just after we read it.
    wait_until(lines, what="the access log line")
    assert len(lines()) == 1
    line = lines()[0]
    assert line["method"] == "GET"
    assert line["path"] == "/api/v1/user"
    assert line["status"] == 200
    assert line["user_id"] == alice.id
    assert line["duration_ms"] >= 0
    assert alice.token not in caplog.text


def test_failures_are_logged_without_secrets(
    client: httpx.Client, alice: Account, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    client.post("/api/v1/tokens", json={"name": "x", "scopes": ["nope:read"]}, headers=alice.auth)
    created = client.post(
        "/api/v1/tokens", json={"name": "x", "scopes": ["build:read"]}, headers=alice.auth
    ).json()
    client.get("/api/v1/user", headers={"Authorization": "Bearer " + created["token"] + "x"})
    assert alice.token not in caplog.text
    assert created["token"] not in caplog.text
