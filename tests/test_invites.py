"""Invites: the owner invites, the invitee accepts (and gets access at once) or declines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from tests.support import Account, add_collaborator

Maker = Callable[..., Account]


def invite(
    client: httpx.Client, owner: Account, namespace: dict[str, Any], username: str
) -> httpx.Response:
    return client.post(
        f"/api/v1/namespaces/{namespace['id']}/invites",
        json={"username": username},
        headers=owner.auth,
    )


def test_accepting_gives_access_at_once_and_removal_takes_it(
    client: httpx.Client, make_user: Maker
) -> None:
    owner, guest = make_user(), make_user()
    namespace = client.post("/api/v1/namespaces", json={"name": "club"}, headers=owner.auth).json()
    variable = client.post(
        "/api/v1/variables",
        json={"key": "K", "value": "v", "namespace_id": namespace["id"]},
        headers=owner.auth,
    ).json()
    assert (
        client.get(f"/api/v1/namespaces/{namespace['id']}", headers=guest.auth).status_code == 404
    )

    sent = invite(client, owner, namespace, guest.username)
    assert sent.status_code == 201
    assert sent.json()["namespace_path"] == namespace["path"]
    received = client.get("/api/v1/invites", headers=guest.auth).json()["_embedded"]["invites"]
    assert [i["id"] for i in received] == [sent.json()["id"]]
    pending = client.get(f"/api/v1/namespaces/{namespace['id']}/invites", headers=owner.auth).json()
    assert len(pending["_embedded"]["invites"]) == 1

    accepted = client.post(received[0]["_links"]["accept"]["href"], headers=guest.auth)
    assert accepted.status_code == 200
    assert accepted.json()["username"] == guest.username
    assert (
        client.get(f"/api/v1/namespaces/{namespace['id']}", headers=guest.auth).status_code == 200
    )
    assert client.get(f"/api/v1/variables/{variable['id']}", headers=guest.auth).status_code == 200
    assert client.get("/api/v1/invites", headers=guest.auth).json()["_embedded"]["invites"] == []

    assert invite(client, owner, namespace, guest.username).status_code == 409
    removed = client.delete(accepted.json()["_links"]["self"]["href"], headers=owner.auth)
    assert removed.status_code == 204
    assert client.get(f"/api/v1/variables/{variable['id']}", headers=guest.auth).status_code == 404


def test_who_may_invite_and_whom(client: httpx.Client, database_url: str, make_user: Maker) -> None:
    owner, helper, guest, stranger = make_user(), make_user(), make_user(), make_user()
    namespace = client.post(
        "/api/v1/namespaces", json={"name": "guarded"}, headers=owner.auth
    ).json()
    add_collaborator(database_url, namespace["id"], helper.id)
    assert invite(client, owner, namespace, guest.username).status_code == 201
    assert invite(client, owner, namespace, guest.username).status_code == 409
    assert invite(client, owner, namespace, helper.username).status_code == 409
    assert invite(client, owner, namespace, owner.username).status_code == 409
    unknown = invite(client, owner, namespace, "nobody-here-at-all")
    assert unknown.status_code == 422
    assert unknown.json()["code"] == "user_not_found"
    assert invite(client, helper, namespace, stranger.username).status_code == 403
    assert invite(client, stranger, namespace, guest.username).status_code == 404


def test_decline_withdraw_and_privacy(client: httpx.Client, make_user: Maker) -> None:
    owner, guest, other, stranger = make_user(), make_user(), make_user(), make_user()
    namespace = client.post("/api/v1/namespaces", json={"name": "maybe"}, headers=owner.auth).json()
    to_guest = invite(client, owner, namespace, guest.username).json()
    to_other = invite(client, owner, namespace, other.username).json()
    url = f"/api/v1/invites/{to_guest['id']}"
    assert client.get(url, headers=stranger.auth).status_code == 404
    assert client.get(url, headers=other.auth).status_code == 404
    assert client.get(url, headers=owner.auth).status_code == 200
    assert client.post(f"{url}/accept", headers=owner.auth).status_code == 403
    assert client.delete(url, headers=guest.auth).status_code == 204
    assert client.get(url, headers=guest.auth).status_code == 404
    assert client.delete(f"/api/v1/invites/{to_other['id']}", headers=owner.auth).status_code == 204
    assert (
        client.post(f"/api/v1/invites/{to_other['id']}/accept", headers=other.auth).status_code
        == 404
    )
