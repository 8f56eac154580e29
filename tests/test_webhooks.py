"""Webhooks: public https targets only, secrets kept, pings queued as deliveries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import Account, RunningServer, add_collaborator, query, server_settings

PUBLIC = "https://93.184.216.34/hook"


def hooks(namespace: dict[str, Any]) -> str:
    return f"/api/v1/namespaces/{namespace['id']}/webhooks"


@pytest.fixture
def namespace(client: httpx.Client, alice: Account) -> dict[str, Any]:
    made: dict[str, Any] = client.post(
        "/api/v1/namespaces", json={"name": "hooked"}, headers=alice.auth
    ).json()
    return made


def test_create_read_and_secret_kept(
    client: httpx.Client, database_url: str, alice: Account, namespace: dict[str, Any]
) -> None:
    created = client.post(
        hooks(namespace),
        json={"payload_url": PUBLIC, "secret": "shh-secret-value", "events": ["build.finished"]},
        headers=alice.auth,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["has_secret"] is True
    assert body["active"] is True
    assert "secret" not in body
    assert (
        "shh-secret-value"
        not in query(database_url, "SELECT secret FROM webhooks WHERE id = :i", i=body["id"])[0][0]
    )
    listed = client.get(hooks(namespace), headers=alice.auth).json()["_embedded"]["webhooks"]
    assert [w["id"] for w in listed] == [body["id"]]
    cleared = client.patch(
        created.headers["location"], json={"secret": None, "active": False}, headers=alice.auth
    )
    assert (cleared.json()["has_secret"], cleared.json()["active"]) == (False, False)


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/hook",
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.1/hook",
        "https://169.254.169.254/latest",
        "https://224.0.0.1/hook",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://localhost/hook",
        "https://does-not-resolve.invalid/hook",
    ],
)
def test_unsafe_targets_are_refused(
    client: httpx.Client, alice: Account, namespace: dict[str, Any], url: str
) -> None:
    response = client.post(
        hooks(namespace),
        json={"payload_url": url, "events": ["build.finished"]},
        headers=alice.auth,
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["pointer"] == "/payload_url"


def test_private_targets_when_the_server_allows(
    database_url: str, tmp_path: Path, alice: Account
) -> None:
    settings = server_settings(
        tmp_path, database_url, webhooks_allow_private=True, webhooks_allow_http=True
    )
    with RunningServer(settings) as server, server.client() as client:
        namespace = client.post(
            "/api/v1/namespaces", json={"name": "lan"}, headers=alice.auth
        ).json()
        response = client.post(
            hooks(namespace),
            json={"payload_url": "http://127.0.0.1:9/hook", "events": ["invite.sent"]},
            headers=alice.auth,
        )
        assert response.status_code == 201, response.text


def test_unknown_events_are_400(
    client: httpx.Client, alice: Account, namespace: dict[str, Any]
) -> None:
    response = client.post(
        hooks(namespace),
        json={"payload_url": PUBLIC, "events": ["build.exploded"]},
        headers=alice.auth,
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["pointer"] == "/events/0"


def test_collaborators_read_the_owner_manages(
    client: httpx.Client, database_url: str, alice: Account, bob: Account, namespace: dict[str, Any]
) -> None:
    add_collaborator(database_url, namespace["id"], bob.id)
    made = client.post(
        hooks(namespace),
        json={"payload_url": PUBLIC, "events": ["build.finished"]},
        headers=alice.auth,
    ).json()
    assert client.get(made["_links"]["self"]["href"], headers=bob.auth).status_code == 200
    refused = client.post(
        hooks(namespace),
        json={"payload_url": PUBLIC, "events": ["build.finished"]},
        headers=bob.auth,
    )
    assert refused.status_code == 403
    assert client.delete(made["_links"]["self"]["href"], headers=bob.auth).status_code == 403


def test_a_ping_is_queued_as_a_delivery(
    client: httpx.Client, alice: Account, namespace: dict[str, Any]
) -> None:
    webhook = client.post(
        hooks(namespace),
        json={"payload_url": PUBLIC, "events": ["build.finished"]},
        headers=alice.auth,
    ).json()
    ping = client.post(webhook["_links"]["pings"]["href"], headers=alice.auth)
    assert ping.status_code == 202
    delivery = ping.json()
    assert (delivery["event"], delivery["status"], delivery["attempts"]) == ("ping", "pending", [])
    assert (
        client.get(ping.headers["location"], headers=alice.auth).json()["guid"] == delivery["guid"]
    )
    listed = client.get(webhook["_links"]["deliveries"]["href"], headers=alice.auth).json()
    assert [d["id"] for d in listed["_embedded"]["deliveries"]] == [delivery["id"]]
