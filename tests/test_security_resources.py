"""Resource exhaustion: what one client may make the server hold or do, and what a job's
own settings may make the worker do. Each test is named after the attack it stops."""

from __future__ import annotations

import json
import re
import resource
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.domain.manifest import MAX_DEPTH
from tests.support import (
    MANIFEST,
    WAIT_SECONDS,
    Account,
    RunningServer,
    server_settings,
    unique,
    wait_for_build,
)

B = "/api/v1/builds"
C = "/api/v1/cron"
DEEP = "x: " + "[" * 20000 + "]" * 20000  # 40 KB, under the size cap
HEADER_TIMEOUT = 3.0
BODY_TIMEOUT = 1.0
# How long /healthz may take while an attack is under way; unloaded, it takes a few ms.
PROMPT = 2.0


@pytest.fixture(scope="module")
def guarded(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with short header and body timeouts, and no background work (the suite's
    server runs the builds of this database)."""
    settings = server_settings(
        tmp_path_factory.mktemp("guarded"),
        database_url,
        header_timeout=HEADER_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
        workers=0,
        scheduler=False,
        deliveries=False,
    )
    with RunningServer(settings) as running:
        yield running


def tls_socket(server: RunningServer) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=server.cert)
    raw = socket.create_connection(("127.0.0.1", server.settings.port), timeout=WAIT_SECONDS)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def until_closed(sock: socket.socket) -> bytes:
    """What the server sends until it closes the connection (a timeout fails the test)."""
    sock.settimeout(WAIT_SECONDS)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (ConnectionError, ssl.SSLError):  # closed with unread data: reset
        pass
    return answer


def heard_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sends within `seconds` (b"" if it closes the connection), or None
    if it sends nothing. A TLS socket turns readable for the session tickets TLS 1.3
    sends after the handshake: only application data counts."""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as watch:
        watch.register(sock, selectors.EVENT_READ)
        sock.setblocking(False)
        try:
            while True:
                try:
                    return sock.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    pass
                except (ConnectionError, ssl.SSLError):
                    return b""
                left = deadline - time.monotonic()
                if left <= 0 or not watch.select(timeout=left):
                    return None
        finally:
            sock.settimeout(WAIT_SECONDS)


def one_answer(sock: socket.socket) -> bytes:
    """One whole response (by its Content-Length), without waiting for the close."""
    sock.settimeout(WAIT_SECONDS)
    answer = b""
    while True:
        _, found, body = answer.partition(b"\r\n\r\n")
        if found and len(body) >= int(parse_answer(answer)[1]["content-length"]):
            return answer
        chunk = sock.recv(65536)
        assert chunk, f"closed in the middle of an answer: {answer!r}"
        answer += chunk


def parse_answer(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (h.split(": ", 1) for h in lines)}
    return status_line, headers, body


def healthz_seconds(server: RunningServer) -> float:
    with server.client() as client:
        started = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        return time.perf_counter() - started


def request_head(
    method: str, path: str, headers: dict[str, str] | None = None, *, who: Account | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if who is not None:
        lines.append(f"Authorization: Bearer {who.token}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# 7. Manifests nested without end


def refused_for_depth(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["code"] == "validation_failed"
    [error] = problem["errors"]
    assert error["pointer"] == "/manifest"
    assert f"over {MAX_DEPTH} deep" in error["detail"]


def test_a_deeply_nested_manifest_is_refused_at_the_nesting_limit(
    client: httpx.Client, alice: Account
) -> None:
    refused_for_depth(client.post(B, json={"manifest": DEEP}, headers=alice.auth))
    # Block collections count as flow ones do.
    blocks = "x:\n" + "".join(" " * i + "- \n" for i in range(1, 40)) + " " * 40 + "- end\n"
    refused_for_depth(client.post(B, json={"manifest": blocks}, headers=alice.auth))
    # As deep as the limit is only a schema problem.
    deepest = "x: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    response = client.post(B, json={"manifest": deepest}, headers=alice.auth)
    assert response.status_code == 400
    assert {e["pointer"] for e in response.json()["errors"]} >= {"/manifest/x"}


def test_a_deeply_nested_cron_manifest_is_refused_on_create_and_update(
    client: httpx.Client, alice: Account
) -> None:
    body = {"name": unique("deep"), "schedule": "@daily"}
    refused_for_depth(client.post(C, json={**body, "manifest": DEEP}, headers=alice.auth))
    created = client.post(C, json={**body, "manifest": MANIFEST}, headers=alice.auth)
    assert created.status_code == 201, created.text
    cron = f"{C}/{created.json()['id']}"
    refused_for_depth(client.patch(cron, json={"manifest": DEEP}, headers=alice.auth))
    assert client.get(cron, headers=alice.auth).json()["manifest"] == MANIFEST


def test_four_deeply_nested_manifests_at_once_do_not_stall_healthz(
    server: RunningServer, alice: Account
) -> None:
    statuses: list[int] = []
    go = threading.Barrier(5)

    def attack() -> None:
        with server.client() as attacker:
            go.wait()
            for _ in range(5):
                response = attacker.post(B, json={"manifest": DEEP}, headers=alice.auth)
                statuses.append(response.status_code)

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for thread in attackers:
        thread.start()
    go.wait()
    slowest = max(healthz_seconds(server) for _ in range(5))
    for thread in attackers:
        thread.join()
    assert statuses == [400] * 20
    assert slowest < PROMPT


# 9. A job environment that hides the programs Kiln runs


def build_of(client: httpx.Client, who: Account, text: str) -> tuple[dict[str, Any], str]:
    response = client.post(B, json={"manifest": text}, headers=who.auth)
    assert response.status_code == 202, response.text
    build = wait_for_build(client, who.auth, response.json()["id"])
    href = build["_embedded"]["jobs"][0]["_links"]["output"]["href"]
    return build, client.get(href, headers=who.auth).text


def test_a_job_path_without_programs_does_not_stop_kiln_starting_the_job(
    client: httpx.Client, alice: Account
) -> None:
    text = (
        "driver: {type: local}\nenv: [PATH=/nonexistent]\nstages: [test]\njobs:\n"
        '- stage: test\n  commands: ["echo $PATH", "ls"]\n'
    )
    build, output = build_of(client, alice, text)
    # Kiln's own wrapper (nice) ran; the job's commands see the PATH it asked for.
    assert "$ echo $PATH\n/nonexistent\n" in output
    assert re.search(r"ls: (command )?not found", output), output  # dash, or bash as sh
    assert (build["status"], build["reason"]) == (
        "failed",
        "job_failed: test.1 exited with code 127",
    )


def test_a_job_path_without_git_fails_preparation_and_says_why(
    client: httpx.Client, alice: Account, tmp_path: Path
) -> None:
    text = (
        f"driver: {{type: local}}\nenv: [PATH=/nonexistent]\nsources: [{tmp_path}/repo.git]\n"
        'stages: [test]\njobs:\n- stage: test\n  commands: ["true"]\n'
    )
    build, output = build_of(client, alice, text)
    assert build["status"] == "failed"
    assert build["reason"].startswith("preparation_failed: git clone of")
    assert "git" in output.splitlines()[-1]
    assert "No such file or directory" in output


# 10. Headers without end


def test_an_oversized_header_gets_431_problem_json(guarded: RunningServer) -> None:
    big = "a" * (guarded.settings.max_header_size + 1000)
    started = time.perf_counter()
    with tls_socket(guarded) as sock:
        sock.sendall(request_head("GET", "/healthz", {"X-Big": big}))
        status_line, headers, body = parse_answer(one_answer(sock))
        assert time.perf_counter() - started < PROMPT
        assert until_closed(sock) == b""
    assert status_line.startswith("HTTP/1.1 431")
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert headers["strict-transport-security"].startswith("max-age=")
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (431, "headers_too_large")
    assert problem["request_id"] == headers["x-request-id"]
    # Many headers count together, and a URL as well.
    many = {f"X-H{i}": "b" * 1000 for i in range(70)}
    for head in (request_head("GET", "/healthz", many), request_head("GET", "/" + big)):
        with tls_socket(guarded) as sock:
            sock.sendall(head)
            assert parse_answer(one_answer(sock))[0].startswith("HTTP/1.1 431")
    # Plain HTTP to the TLS port is held to the same limit before it is refused.
    port = guarded.settings.port
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS) as plain:
        plain.sendall(request_head("GET", "/healthz", {"X-Big": big}))
        assert parse_answer(one_answer(plain))[0].startswith("HTTP/1.1 431")
    # Just under the limit is served.
    fits = "c" * (guarded.settings.max_header_size - 200)
    with guarded.client() as client:
        assert client.get("/healthz", headers={"X-Fits": fits}).status_code == 200


def test_an_endless_header_is_cut_off_without_being_buffered(guarded: RunningServer) -> None:
    chunk = b"a" * 65536
    sent = 0
    with tls_socket(guarded) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        try:
            while sent < 64 * 1024 * 1024 and heard_within(sock, 0) is None:
                sock.sendall(chunk)
                sent += len(chunk)
        except (ConnectionError, ssl.SSLError):  # closed by the server: what is wanted
            pass
        until_closed(sock)
    # What the socket buffers on both sides hold, and not much more.
    assert 64 * 1024 < sent < 16 * 1024 * 1024
    assert healthz_seconds(guarded) < PROMPT


# 11. Headers and bodies sent slowly


def closed_after(socks: list[socket.socket], seconds: float) -> list[float]:
    """When each of `socks` was closed by the server, waiting at most `seconds`."""
    watch = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        watch.register(sock, selectors.EVENT_READ)
    closed: dict[socket.socket, float] = {}
    deadline = time.monotonic() + seconds
    try:
        while len(closed) < len(socks) and time.monotonic() < deadline:
            for key, _ in watch.select(timeout=deadline - time.monotonic()):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    data = ready.recv(65536)
                except (BlockingIOError, ssl.SSLWantReadError):
                    continue
                except (ConnectionError, ssl.SSLError):
                    data = b""
                assert data == b"", f"the server answered an unfinished request: {data[:100]!r}"
                watch.unregister(ready)
                closed[ready] = time.monotonic()
    finally:
        watch.close()
    assert len(closed) == len(socks), f"{len(socks) - len(closed)} connections are still open"
    return [closed[sock] for sock in socks]


@pytest.fixture
def descriptors() -> Iterator[int]:
    """Room for 1,000 connections from this process to its own server: 2 descriptors each."""
    wanted = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * wanted + 1024
    if soft < needed:
        # Raising the hard limit too takes root (as CI has): never skip for want of it.
        ceiling = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, ceiling))
    try:
        yield wanted
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_thousand_half_sent_request_lines_neither_stall_the_server_nor_outlive_the_timeout(
    guarded: RunningServer, descriptors: int
) -> None:
    socks: list[socket.socket] = []
    try:
        opened = time.monotonic()
        for _ in range(descriptors):
            sock = socket.create_connection(("127.0.0.1", guarded.settings.port), timeout=30)
            socks.append(sock)
            sock.sendall(b"GET /heal")
        assert healthz_seconds(guarded) < PROMPT
        if time.monotonic() - opened < HEADER_TIMEOUT * 0.9:
            # All still held: /healthz answered with every one of them open.
            with selectors.DefaultSelector() as watch:
                for sock in socks:
                    watch.register(sock, selectors.EVENT_READ)
                assert watch.select(timeout=0) == []
        closed = closed_after(socks, WAIT_SECONDS)
        assert min(closed) - opened >= HEADER_TIMEOUT * 0.9
    finally:
        for sock in socks:
            sock.close()


def test_stalled_request_heads_are_closed_after_the_header_timeout(
    guarded: RunningServer,
) -> None:
    opened = time.monotonic()
    silent = socket.create_connection(("127.0.0.1", guarded.settings.port), timeout=30)
    handshaken = tls_socket(guarded)  # TLS, then not a byte of a request
    half = [tls_socket(guarded) for _ in range(5)]
    for sock in half:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    # A kept-alive connection's second request has the timeout of its own.
    second = tls_socket(guarded)
    second.sendall(request_head("GET", "/healthz"))
    assert one_answer(second).startswith(b"HTTP/1.1 200")
    second.sendall(b"GET /healthz HTTP/1.1\r\n")
    socks: list[socket.socket] = [silent, handshaken, *half, second]
    try:
        closed = closed_after(socks, WAIT_SECONDS)
    finally:
        for each in socks:
            each.close()
    assert min(closed) - opened >= HEADER_TIMEOUT * 0.9


def test_a_stalled_body_is_closed_after_the_body_timeout(
    guarded: RunningServer, alice: Account
) -> None:
    with tls_socket(guarded) as sock:
        head = request_head(
            "POST",
            "/api/v1/namespaces",
            {"Content-Type": "application/json", "Content-Length": "1000"},
            who=alice,
        )
        sock.sendall(head + b'{"name": ')
        sent = time.monotonic()
        [closed] = closed_after([sock], WAIT_SECONDS)
    assert closed - sent >= BODY_TIMEOUT * 0.9
    # A body that comes at once is read as ever.
    with guarded.client() as client:
        response = client.post(
            "/api/v1/namespaces", json={"name": unique("paced")}, headers=alice.auth
        )
        assert response.status_code == 201, response.text


def test_a_trickled_body_is_closed_after_the_body_timeout(
    guarded: RunningServer, alice: Account
) -> None:
    with tls_socket(guarded) as sock:
        head = request_head(
            "POST",
            "/api/v1/namespaces",
            {"Content-Type": "application/json", "Content-Length": "100000"},
            who=alice,
        )
        sock.sendall(head + b'{"name": "')
        started = time.monotonic()
        trickled = 0
        try:
            # A byte each 50 ms (20 bytes a second) until the server closes the connection.
            while (heard := heard_within(sock, 0.05)) is None:
                assert time.monotonic() - started < WAIT_SECONDS, "the trickle was never cut off"
                sock.sendall(b"a")
                trickled += 1
        except (ConnectionError, ssl.SSLError):
            heard = b""
    assert heard == b""
    assert time.monotonic() - started >= BODY_TIMEOUT * 0.9
    assert 10 < trickled < 1024
