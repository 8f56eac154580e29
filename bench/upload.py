"""Kiln's object upload and download against a bare Starlette endpoint, in one run.

Starts `kiln serve` on SQLite and, with the same TLS certificate and on the same
disk, `bench/bare_upload.py` (one uvicorn process each). Each round uploads the
same 1 GiB as a raw body to the bare endpoint, to the bare endpoint through Kiln's
storage layer (MD5 and SHA-256 included), and to Kiln as `POST /api/v1/objects`,
then downloads it back from the bare endpoint and from Kiln. Dirty pages are
written back before each transfer. Prints MiB/s for each, the ratios (median of the
rounds), and the Kiln server's peak RSS growth while it takes the upload in.

    uv run python -m bench.upload [--size-mib 1024] [--rounds 3]

Targets: upload and download at least 0.7x the bare endpoint, peak RSS growth
under 64 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.servers import serving, uvicorn_command
from tests.processes import kiln_env, run_kiln
from tests.support import free_port

MIB = 1 << 20
TARGET_RATIO = 0.7
TARGET_RSS_GROWTH_MIB = 64
CHUNK = os.urandom(MIB)  # incompressible, sent again and again


@dataclass
class Transfer:
    status: int
    size: int
    seconds: float
    answer: bytes = b""

    @property
    def mib_per_second(self) -> float:
        return self.size / MIB / self.seconds


class Connection:
    """One TLS connection for one request, speaking just enough HTTP/1.1 to time a
    big body; it closes once the answer is read."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port))
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.buffer = b""

    def _head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _response_head(self) -> tuple[int, int]:
        while b"\r\n\r\n" not in self.buffer:
            received = self.sock.recv(65536)
            if not received:
                raise ConnectionError("the server closed the connection")
            self.buffer += received
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(head[9:12]), length

    def _body(self, length: int) -> bytes:
        while len(self.buffer) < length:
            received = self.sock.recv(65536)
            if not received:
                raise ConnectionError("the server closed the connection mid-body")
            self.buffer += received
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body

    def _drain(self, length: int) -> None:
        """Read and drop `length` body bytes."""
        remaining = length - len(self.buffer)
        self.buffer = b""
        sink = bytearray(4 * MIB)
        view = memoryview(sink)
        while remaining > 0:
            received = self.sock.recv_into(view, min(len(sink), remaining))
            if not received:
                raise ConnectionError("the server closed the connection mid-body")
            remaining -= received

    def upload(self, path: str, size: int, headers: dict[str, str]) -> Transfer:
        head = self._head(
            "POST",
            path,
            {
                **headers,
                "Content-Type": "application/octet-stream",
                "Content-Length": str(size),
            },
        )
        started = time.perf_counter()
        self.sock.sendall(head)
        sent = 0
        while sent < size:
            piece = CHUNK[: min(MIB, size - sent)]
            self.sock.sendall(piece)
            sent += len(piece)
        status, length = self._response_head()
        answer = self._body(length)
        self.sock.close()
        return Transfer(status, size, time.perf_counter() - started, answer)

    def download(self, path: str, headers: dict[str, str]) -> Transfer:
        started = time.perf_counter()
        self.sock.sendall(self._head("GET", path, headers))
        status, length = self._response_head()
        self._drain(length)
        self.sock.close()
        return Transfer(status, length, time.perf_counter() - started)


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


@contextmanager
def peak_rss_growth(pid: int) -> Iterator[list[int]]:
    """Yields a one-item list that holds the peak RSS growth once the block ends.

    Samples VmRSS every 2 ms and also reads VmHWM, reset beforehand where the
    kernel allows it (clear_refs 5), so a brief peak between samples still counts."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    baseline = rss_bytes(pid)
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.002):
            peak = max(peak, rss_bytes(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    growth = [0]
    try:
        yield growth
    finally:
        done.set()
        sampler.join()
        if hwm_reset:
            peak = max(peak, rss_bytes(pid, "VmHWM"))
        growth[0] = peak - baseline


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MIB

    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        data_dir = Path(tmp) / "kiln"
        bare_dir = Path(tmp) / "bare"
        bare_dir.mkdir()
        cert, key = data_dir / "cert.pem", data_dir / "key.pem"
        env = kiln_env(
            KILN_DATA_DIR=str(data_dir),
            KILN_RATE_LIMIT="1000000000/hour",
            KILN_LOG_LEVEL="warning",
        )
        assert run_kiln("users", "create", "bench", stdin="bench-pw\n", env=env).returncode == 0
        minted = run_kiln(
            "tokens", "create", "--user", "bench", "--scope", "object:read,write", env=env
        )
        auth = {"Authorization": f"Bearer {minted.stdout.strip()}"}
        kiln_port, bare_port = free_port(), free_port()
        kiln_cmd = [sys.executable, "-m", "kiln", "serve", "--port", str(kiln_port)]
        bare_cmd = uvicorn_command("bench.bare_upload:app", bare_port, cert, key)
        # The bare app starts second: it serves Kiln's certificate, made as Kiln starts.
        with (
            serving(kiln_cmd, env, f"https://127.0.0.1:{kiln_port}/healthz", cert) as kiln,
            serving(
                bare_cmd,
                {**env, "BARE_UPLOAD_DIR": str(bare_dir)},
                f"https://127.0.0.1:{bare_port}/healthz",
                cert,
            ),
        ):
            context = ssl.create_default_context(cafile=cert)
            rows = [
                measure_round(n, size, kiln.pid, kiln_port, bare_port, context, auth)
                for n in range(args.rounds)
            ]
    report(rows, args)


def settled() -> None:
    """Write back what the last transfer left dirty, so it does not cost the next one."""
    os.sync()
    time.sleep(0.5)


def measure_round(
    n: int,
    size: int,
    kiln_pid: int,
    kiln_port: int,
    bare_port: int,
    context: ssl.SSLContext,
    auth: dict[str, str],
) -> dict[str, float]:
    def connect(port: int) -> Connection:
        # A connection per transfer: an idle one would meet uvicorn's keep-alive timeout.
        settled()
        return Connection(port, context)

    bare_up = connect(bare_port).upload("/upload", size, {})
    digested_up = connect(bare_port).upload("/digested", size, {})
    kiln_socket = connect(kiln_port)
    with peak_rss_growth(kiln_pid) as growth:
        kiln_up = kiln_socket.upload(f"/api/v1/objects?name=big-{n}.bin", size, auth)
    content = json.loads(kiln_up.answer)["_links"]["content"]["href"]
    bare_down = connect(bare_port).download("/upload", {})
    kiln_down = connect(kiln_port).download(content, auth)
    for label, transfer, expected in (
        ("bare upload", bare_up, 201),
        ("digested upload", digested_up, 201),
        ("kiln upload", kiln_up, 201),
        ("bare download", bare_down, 200),
        ("kiln download", kiln_down, 200),
    ):
        if transfer.status != expected or transfer.size != size:
            raise SystemExit(f"{label}: status {transfer.status}, {transfer.size} bytes")
    return {
        "bare up": bare_up.mib_per_second,
        "digested up": digested_up.mib_per_second,
        "kiln up": kiln_up.mib_per_second,
        "bare down": bare_down.mib_per_second,
        "kiln down": kiln_down.mib_per_second,
        "rss growth": growth[0] / MIB,
    }


def report(rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    print(f"{args.size_mib} MiB raw body, loopback TLS, one uvicorn process each, same disk")
    columns = ("bare up", "digested up", "kiln up", "bare down", "kiln down", "rss growth")
    print(f"{'round':<7}" + "".join(f"{c:>13}" for c in columns) + "   (MiB/s; MiB)")
    for n, row in enumerate(rows):
        print(f"{n:<7}" + "".join(f"{row[c]:>13.0f}" for c in columns))
    median = {c: statistics.median(row[c] for row in rows) for c in columns}
    up = median["kiln up"] / median["bare up"]
    down = median["kiln down"] / median["bare down"]
    peak = max(row["rss growth"] for row in rows)
    print(
        f"median upload: kiln {median['kiln up']:.0f}, bare {median['bare up']:.0f} MiB/s"
        f" = {up:.2f}x; bare with Kiln's digests {median['digested up']:.0f} MiB/s,"
        f" kiln/that {median['kiln up'] / median['digested up']:.2f}x"
    )
    print(
        f"median download: kiln {median['kiln down']:.0f}, bare {median['bare down']:.0f}"
        f" MiB/s = {down:.2f}x"
    )
    print(f"kiln peak RSS growth during upload: {peak:.1f} MiB (largest of the rounds)")
    for what, ok, figure in (
        (f"upload >= {TARGET_RATIO}x bare", up >= TARGET_RATIO, f"{up:.2f}x"),
        (f"download >= {TARGET_RATIO}x bare", down >= TARGET_RATIO, f"{down:.2f}x"),
        (
            f"RSS growth < {TARGET_RSS_GROWTH_MIB} MiB",
            peak < TARGET_RSS_GROWTH_MIB,
            f"{peak:.1f} MiB",
        ),
    ):
        print(f"target: {what}: {'met' if ok else 'MISSED'} ({figure})")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
