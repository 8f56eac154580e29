"""Encryption at rest: a key made on first start, or given; rotation loses nothing."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet

from tests.processes import KilnServe, kiln_env, run_kiln
from tests.support import RunningServer, fresh_database, make_account, query, server_settings


def test_rotation_re_encrypts_and_running_servers_keep_reading(tmp_path: Path) -> None:
    # A database of its own: every secret in it was encrypted with this data directory's key.
    database_url = fresh_database(None, tmp_path)
    data_dir = tmp_path / "data"
    settings = server_settings(data_dir, database_url)
    owner = make_account(database_url)
    with RunningServer(settings) as server, server.client() as client:
        made = client.post(
            "/api/v1/variables", json={"key": "ROTATE_ME", "value": "keep-this"}, headers=owner.auth
        ).json()
        key_file = data_dir / "secret.key"
        assert len(key_file.read_bytes().splitlines()) == 1
        rotated = run_kiln(
            "secrets", "rotate", "--data-dir", str(data_dir), "--database-url", database_url
        )
        assert rotated.returncode == 0, rotated.stderr
        assert len(key_file.read_bytes().splitlines()) == 2
        # The server loaded the old key only; it picks the new one up when it meets it.
        again = client.get(f"/api/v1/variables/{made['id']}", headers=owner.auth)
        assert again.json()["value"] == "keep-this"


def test_rotation_re_encrypts_stored_idempotent_results(tmp_path: Path) -> None:
    database_url = fresh_database(None, tmp_path)
    data_dir = tmp_path / "data"
    owner = make_account(database_url)
    with RunningServer(server_settings(data_dir, database_url)) as server, server.client() as c:
        made = c.post(
            "/api/v1/tokens",
            json={"name": "ci", "scopes": ["build:read"]},
            headers={**owner.auth, "Idempotency-Key": "rotate-1"},
        )
        assert made.status_code == 201, made.text
    rotated = run_kiln(
        "secrets", "rotate", "--data-dir", str(data_dir), "--database-url", database_url
    )
    assert rotated.returncode == 0, rotated.stderr
    newest = Fernet((data_dir / "secret.key").read_bytes().splitlines()[0])
    [(body,)] = query(database_url, "SELECT body FROM idempotency_keys")
    assert made.json()["token"] in newest.decrypt(body.encode()).decode()


def test_a_given_key_is_used_instead_of_a_file(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    data_dir = tmp_path / "data"
    with KilnServe(data_dir, env=kiln_env(KILN_SECRET_KEY=key)):
        pass
    assert not (data_dir / "secret.key").exists()
