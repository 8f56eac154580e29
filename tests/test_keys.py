"""Keys: parsed, fingerprinted as ssh-keygen does, encrypted at rest, never returned."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support import Account, query, ssh_private_key

K = "/api/v1/keys"


def test_a_key_is_fingerprinted_and_never_returned(
    client: httpx.Client, database_url: str, alice: Account, tmp_path: Path
) -> None:
    path = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    private = path.read_text()
    expected = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    created = client.post(
        K, json={"name": "deploy", "key": private, "config": "Host *\n"}, headers=alice.auth
    )
    assert created.status_code == 201, created.text
    assert created.json()["fingerprint"] == expected
    assert created.json()["algorithm"] == "ed25519"
    for response in (
        created,
        client.get(created.headers["location"], headers=alice.auth),
        client.get(K, headers=alice.auth),
    ):
        assert "key" not in response.json()
        assert "PRIVATE KEY" not in response.text
    stored = query(
        database_url, "SELECT private_key FROM ssh_keys WHERE id = :i", i=created.json()["id"]
    )
    assert "PRIVATE KEY" not in stored[0][0]


@pytest.mark.parametrize(
    "text",
    [
        "not a key",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    ],
)
def test_anything_else_is_422(client: httpx.Client, alice: Account, text: str) -> None:
    response = client.post(K, json={"name": "bad", "key": text}, headers=alice.auth)
    assert response.status_code == 422
    assert response.json()["errors"][0]["pointer"] == "/key"


def test_replace_rename_and_delete(client: httpx.Client, alice: Account) -> None:
    created = client.post(
        K, json={"name": "old", "key": ssh_private_key()}, headers=alice.auth
    ).json()
    url = f"{K}/{created['id']}"
    changed = client.patch(
        url, json={"name": "new", "key": ssh_private_key(), "config": None}, headers=alice.auth
    )
    assert changed.status_code == 200
    assert changed.json()["name"] == "new"
    assert changed.json()["config"] == ""
    assert changed.json()["fingerprint"] != created["fingerprint"]
    assert (
        client.post(
            K, json={"name": "new", "key": ssh_private_key()}, headers=alice.auth
        ).status_code
        == 409
    )
    assert client.delete(url, headers=alice.auth).status_code == 204
