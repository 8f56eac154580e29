"""Real `kiln` processes for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

from tests.support import free_port, wait_until

REPO = Path(__file__).resolve().parent.parent
TOKEN_LINE = re.compile(r"^kiln_[0-9A-Za-z]{43}$")  # a token, as `kiln tokens create` prints it
ADMIN_TOKEN_FILE = "admin-token"  # where the first `kiln serve` leaves the admin's token


def kiln_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kiln", *args]


def kiln_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    env.update(extra)
    return env


def run_kiln(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kiln_command(*args),
        input=stdin,
        capture_output=True,
        text=True,
        env=env or kiln_env(),
        cwd=REPO,
        timeout=120,
        check=False,
    )


class KilnProcess:
    """A `kiln` command in a subprocess, its output captured to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            kiln_command(*self.args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=REPO,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def close(self, sig: int) -> None:
        self.stop(sig)
        if self._log:
            self._log.close()


class KilnServe(KilnProcess):
    """`kiln serve`, ready once it answers /healthz."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        super().__init__(
            ["serve", "--data-dir", str(data_dir), "--port", str(self.port), *args],
            env or kiln_env(),
            data_dir.parent / f"serve-{self.port}.log",
        )
        self.base_url = f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> KilnServe:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.start()
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        try:
            wait_until(self._ready, what="kiln serve to answer /healthz")
        except AssertionError as exc:
            raise RuntimeError(f"{exc}; it said:\n{self.output}") from None

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            code = self.process.returncode
            raise RuntimeError(f"kiln serve exited with {code}:\n{self.output}")
        if not self.cert.exists():
            return False
        try:
            with self.client() as c:
                return c.get("/healthz").status_code == 200
        except (httpx.TransportError, ssl.SSLError):
            return False

    def admin_token(self) -> str:
        """The token the first start made for the admin, from the file it leaves."""
        return (self.data_dir / ADMIN_TOKEN_FILE).read_text().strip()

    @property
    def cert(self) -> Path:
        return self.data_dir / "cert.pem"

    def client(self, **options: Any) -> httpx.Client:
        context = ssl.create_default_context(cafile=self.cert)
        return httpx.Client(base_url=self.base_url, verify=context, timeout=30, **options)

    def __exit__(self, *exc: object) -> None:
        self.close(signal.SIGTERM)


class KilnBackground(KilnProcess):
    """`kiln worker` or `kiln scheduler`; killed outright if the block leaves it running."""

    def __init__(self, command: str, data_dir: Path, env: dict[str, str]) -> None:
        log_path = data_dir.parent / f"{command}-{time.monotonic_ns()}.log"
        super().__init__([command, "--data-dir", str(data_dir)], env, log_path)

    def __enter__(self) -> KilnBackground:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(signal.SIGKILL)
