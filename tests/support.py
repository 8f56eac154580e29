"""Test plumbing: a real Kiln behind uvicorn (TLS) in a thread, and accounts in its database."""

from __future__ import annotations

import itertools
import os
import socket
import ssl
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
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
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


def wait_for_build(
    client: httpx.Client, auth: dict[str, str], build_id: int, *, seconds: float = 30
) -> dict[str, Any]:
    """The build once it has finished (its status is no longer queued or running)."""
    deadline = time.monotonic() + seconds
    while True:
        build: dict[str, Any] = client.get(f"/api/v1/builds/{build_id}", headers=auth).json()
        if build["status"] not in ("queued", "running"):
            return build
        assert time.monotonic() < deadline, f"build {build_id} still {build['status']}"
        time.sleep(0.05)


def isolated_database(shared_url: str, directory: Path, suffix: str) -> str:
    """A database for one test module alone, beside the shared one: the suite's shared
    server runs background loops (workers, deliveries) that would otherwise act on
    what the module sets up."""
    if shared_url.startswith("sqlite"):
        return fresh_database(None, directory)
    url = make_url(shared_url)
    name = f"{url.database}_{suffix}"
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
