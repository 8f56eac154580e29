"""`kiln` commands: first start, users and tokens made offline against the same database."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx

from tests.processes import TOKEN_LINE, KilnServe, kiln_env, run_kiln
from tests.support import unique


def test_first_start_makes_an_admin_and_prints_its_token_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with KilnServe(data_dir) as server:
        tokens = [line for line in server.output.splitlines() if TOKEN_LINE.match(line)]
        assert len(tokens) == 1
        with server.client() as client:
            me = client.get("/api/v1/user", headers={"Authorization": f"Bearer {tokens[0]}"})
            assert me.status_code == 200
            assert me.json()["username"] == "admin"
        assert (data_dir / "cert.pem").exists()
        assert (data_dir / "kiln.db").exists()
    with KilnServe(data_dir) as again:
        assert not [line for line in again.output.splitlines() if TOKEN_LINE.match(line)]


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
            token = next(line for line in server.output.splitlines() if TOKEN_LINE.match(line))
            auth = {"Authorization": f"Bearer {token}"}
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
    assert tokens[0]["scopes"] == ["namespace:read", "namespace:write", "build:read"]
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
