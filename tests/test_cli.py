"""`kiln` commands: first start, users and tokens made offline against the same database."""

from __future__ import annotations

import base64
import contextlib
import os
import pty
import select
import subprocess
from pathlib import Path

import httpx

from tests.processes import (
    ADMIN_TOKEN_FILE,
    REPO,
    TOKEN_LINE,
    KilnServe,
    kiln_command,
    kiln_env,
    run_kiln,
)
from tests.support import free_port, unique, wait_until


def test_first_start_makes_an_admin_whose_token_never_reaches_the_logs(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with KilnServe(data_dir) as server:
        token = server.admin_token()
        assert TOKEN_LINE.match(token)
        assert (data_dir / ADMIN_TOKEN_FILE).stat().st_mode & 0o777 == 0o600
        assert token not in server.output  # what a log collector would keep
        assert str(data_dir / ADMIN_TOKEN_FILE) in server.output
        with server.client() as client:
            me = client.get("/api/v1/user", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200
            assert me.json()["username"] == "admin"
        assert (data_dir / "cert.pem").exists()
        assert (data_dir / "kiln.db").exists()
    (data_dir / ADMIN_TOKEN_FILE).unlink()
    with KilnServe(data_dir) as again:
        assert not (data_dir / ADMIN_TOKEN_FILE).exists()
        assert "Created the administrator" not in again.output


def test_the_first_admin_token_is_shown_on_a_terminal(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    command = kiln_command("serve", "--data-dir", str(data_dir), "--port", str(port))
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command, stdin=terminal, stdout=terminal, stderr=terminal, env=kiln_env(), cwd=REPO
    )
    os.close(terminal)
    shown = bytearray()
    try:

        def token_shown() -> bool:
            if select.select([controller], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):
                    shown.extend(os.read(controller, 4096))
            file = data_dir / ADMIN_TOKEN_FILE
            return file.exists() and file.read_text().strip() in shown.decode(errors="replace")

        wait_until(token_shown, what="the admin token on the terminal")
    finally:
        process.terminate()
        process.wait(timeout=60)
        os.close(controller)


def test_flags_also_come_from_the_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "from-env"
    server = KilnServe(data_dir, env=kiln_env(KILN_LOG_LEVEL="warning"))
    server.args = ["serve", "--port", str(server.port)]
    server.env["KILN_DATA_DIR"] = str(data_dir)
    with server:
        assert (data_dir / "kiln.db").exists()
        assert "Started server process" not in server.output


def test_serve_flags_let_webhooks_reach_a_private_http_address(tmp_path: Path) -> None:
    hook = {"payload_url": "http://127.0.0.1:9/hook", "events": ["build.finished"]}
    for flags, expected in (
        ((), 422),
        (("--webhooks-allow-private", "--webhooks-allow-http"), 201),
    ):
        with KilnServe(tmp_path / f"data{len(flags)}", *flags) as server:
            auth = {"Authorization": f"Bearer {server.admin_token()}"}
            with server.client() as client:
                namespace = client.post("/api/v1/namespaces", json={"name": "n"}, headers=auth)
                created = client.post(
                    f"/api/v1/namespaces/{namespace.json()['id']}/webhooks", json=hook, headers=auth
                )
                assert created.status_code == expected, created.text


def test_users_and_tokens_made_offline_work_online(client: httpx.Client, database_url: str) -> None:
    name = unique("cli")
    created = run_kiln("users", "create", name, "--database-url", database_url, stdin="s3cret\n")
    assert created.returncode == 0, created.stderr
    again = run_kiln("users", "create", name, "--database-url", database_url, stdin="s3cret\n")
    assert again.returncode == 1
    basic = base64.b64encode(f"{name}:s3cret".encode()).decode()
    assert (
        client.get("/api/v1/user", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    )

    minted = run_kiln(
        "tokens",
        "create",
        "--user",
        name,
        "--scope",
        "namespace:read,write",
        "--scope",
        "build:read",
        "--scope",
        "token:read",
        "--expires-in",
        "30d",
        "--database-url",
        database_url,
    )
    assert minted.returncode == 0, minted.stderr
    assert TOKEN_LINE.match(minted.stdout.strip())
    assert minted.stdout.count("\n") == 1
    bearer = {"Authorization": f"Bearer {minted.stdout.strip()}"}
    tokens = client.get("/api/v1/tokens", headers=bearer).json()["_embedded"]["tokens"]
    assert tokens[0]["scopes"] == ["namespace:read", "namespace:write", "build:read", "token:read"]
    assert tokens[0]["expires_at"] is not None


def test_tokens_create_refuses_bad_input(database_url: str) -> None:
    name = unique("cli")
    assert (
        run_kiln("users", "create", name, "--database-url", database_url, stdin="pw\n").returncode
        == 0
    )
    for args in (
        ["--user", "nobody-at-all", "--scope", "build:read"],
        ["--user", name, "--scope", "build:fly"],
        ["--user", name, "--scope", "build:read", "--expires-in", "soon"],
        ["--user", name, "--scope", "build:read", "--namespace", "987654321"],
    ):
        result = run_kiln("tokens", "create", *args, "--database-url", database_url)
        assert result.returncode != 0, args
        assert result.stdout == ""
        assert "Traceback" not in result.stderr
