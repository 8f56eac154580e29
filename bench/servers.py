"""Server processes for the benchmarks: started, waited for, and stopped."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.processes import REPO


@contextmanager
def serving(
    command: list[str], env: dict[str, str], probe: str, ca: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` until the block ends; ready once `probe` answers over TLS."""
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{' '.join(command)} did not start")
            if ca.exists():
                try:
                    httpx.get(probe, verify=ssl.create_default_context(cafile=ca), timeout=2)
                    break
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait()


def uvicorn_command(app: str, port: int, cert: Path, key: Path) -> list[str]:
    """One uvicorn process serving `app` over TLS, quietly."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
    ]
