"""Test plumbing: a real Kiln behind uvicorn (TLS) in a thread, and accounts in its database."""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvicorn
from sqlalchemy import create_engine, make_url, text

from kiln.app import Kiln
from kiln.core import spec
from kiln.core.config import Settings
from kiln.domain.accounts import create_user, issue_token
from kiln.server import uvicorn_config
from kiln.store import migrate
from kiln.store.db import Database
from models import Collaborator

T = TypeVar("T")
ALL_SCOPES = sorted(spec.declared_scopes())
_names = itertools.count(1)
# How long a wait may take before the test fails. Waits end as soon as their condition
# holds, so this costs nothing when tests pass; it is generous so that a loaded machine
# (two cores, two test workers and other work) never fails a test that is only slow.
WAIT_SECONDS = 120.0
POLL_SECONDS = 0.05


def wait_until(check: Callable[[], T | None], *, what: str, seconds: float = WAIT_SECONDS) -> T:
    """Poll `check` until it returns something truthy, and return that."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(POLL_SECONDS)


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_names)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(work: Callable[[Database], T], url: str) -> T:
    """Database work from the test thread, on an engine of its own."""
    db = Database(url)
    try:
        return work(db)
    finally:
        db.dispose()


# The smallest manifest that runs: one job, one command, on the local driver.
MANIFEST = 'driver:\n  type: local\nstages: [test]\njobs:\n- stage: test\n  commands: ["true"]\n'


def fresh_database(url: str | None, directory: Path) -> str:
    """An empty, migrated database: PostgreSQL's public schema recreated, or a new SQLite file."""
    if url is None:
        url = f"sqlite:///{directory / 'kiln.db'}"
    else:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    migrate.upgrade(url)
    return url


@dataclass
class Account:
    id: int
    username: str
    token: str
    password: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_account(
    url: str, *, scopes: Iterable[str] = ALL_SCOPES, password: str | None = None, prefix: str = "u"
) -> Account:
    name = unique(prefix)

    def work(db: Database) -> Account:
        with db.transaction():
            user = create_user(name, password=password)
            assert user.id is not None
            _, secret = issue_token(user.id, name="test", scopes=scopes)
            return Account(user.id, name, secret, password)

    return run(work, url)


def make_token(url: str, account: Account, scopes: Iterable[str], **options: Any) -> str:
    def work(db: Database) -> str:
        with db.transaction():
            _, secret = issue_token(account.id, name="extra", scopes=scopes, **options)
            return secret

    return run(work, url)


class RunningServer:
    """`kiln.app.Kiln` served by uvicorn in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = Kiln(settings)
        self.server = uvicorn.Server(uvicorn_config(self.app, settings))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        scheme = "https" if settings.tls else "http"
        self.base_url = f"{scheme}://127.0.0.1:{settings.port}"
        self.cert = settings.data_dir / "cert.pem"

    def __enter__(self) -> RunningServer:
        self.thread.start()

        def started() -> bool:
            if not self.thread.is_alive():
                raise RuntimeError("the test server's thread ended before it started")
            return bool(self.server.started)

        wait_until(started, what="the test server to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def client(self, **options: Any) -> httpx.Client:
        verify: Any = ssl.create_default_context(cafile=self.cert) if self.settings.tls else False
        return httpx.Client(base_url=self.base_url, verify=verify, timeout=30, **options)


def server_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "port": free_port(),
        "validate_responses": True,
        "rate_limit": "1000000/hour",
        "anonymous_rate_limit": "1000000/hour",
        "password_rate_limit": "100000/minute",
        "poll_interval": 0.05,  # builds, cron and deliveries start at once in tests
        "kill_grace_seconds": 1.0,
        "grace_seconds": 5.0,
        # Tests clone sources from local repositories and reach sshd on loopback.
        "sources_allow_local": True,
        "builds_allow_private": True,
    }
    values.update(overrides)
    return Settings(**values)


def add_collaborator(url: str, namespace_id: int, user_id: int) -> None:
    """Share a namespace directly in the database (invites come through the API later)."""

    def work(db: Database) -> None:
        with db.transaction() as session:
            session.add(Collaborator(namespace_id=namespace_id, user_id=user_id))

    run(work, url)


def query(url: str, statement: str, **params: Any) -> list[Any]:
    """Rows of a SQL statement, read straight from the test database."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


def bytes_of_a_live_database_file(path: Path) -> bytes:
    """A SQLite file's bytes, read by another process. Closing any descriptor of a
    database file drops every POSIX lock this process holds on it, including those of
    the test server's open connections: another process then writes under them and
    corrupts the database."""
    return subprocess.run(["cat", "--", str(path)], capture_output=True, check=True).stdout


def ssh_private_key() -> str:
    """A fresh Ed25519 private key in OpenSSH form."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        .decode()
    )


QCOW2_HEADER = b"QFI\xfb\x00\x00\x00\x03" + bytes(56)


def stays_the_same(items: list[Any], seconds: float) -> bool:
    """Whether `items` (appended to by another thread) gains nothing for `seconds`."""
    before = len(items)
    time.sleep(seconds)
    return len(items) == before


def wait_for_build(
    client: httpx.Client, auth: dict[str, str], build_id: int, *, seconds: float = WAIT_SECONDS
) -> dict[str, Any]:
    """The build once it has finished (its status is no longer queued or running)."""

    def finished() -> dict[str, Any] | None:
        build: dict[str, Any] = client.get(f"/api/v1/builds/{build_id}", headers=auth).json()
        return build if build["status"] not in ("queued", "running") else None

    return wait_until(finished, what=f"build {build_id} to finish", seconds=seconds)


def worker_name() -> str:
    """This test process's name under pytest-xdist (gw0, gw1, ...), or "main"."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def isolated_database(shared_url: str, directory: Path, suffix: str) -> str:
    """A database for one test module (or one test process) alone, beside the shared
    one: the suite's shared server runs background loops (workers, deliveries) that
    would otherwise act on what the module sets up. On PostgreSQL it is a database of
    its own per xdist worker, so that workers never drop each other's tables."""
    if shared_url.startswith("sqlite"):
        return fresh_database(None, directory)
    url = make_url(shared_url)
    name = f"{url.database}_{worker_name()}_{suffix}"
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return fresh_database(url.set(database=name).render_as_string(hide_password=False), directory)
