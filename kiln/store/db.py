"""The database: engine, units of work, and where their code runs.

Database code is plain synchronous SQLModel. `Database.run` decides where it runs:
inline on the event loop for SQLite, which answers in microseconds (a thread
handoff costs more than the query, and inline transactions of one process never
interleave, so they never wait on each other's locks); in a worker thread for
PostgreSQL, whose queries cross a network.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from sqlalchemy import DateTime, Row, create_engine, event, make_url, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.expression import Executable
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session

from kiln.store import files

T = TypeVar("T")
_session: ContextVar[Session] = ContextVar("kiln_session")

# How long SQLite waits for another process's write lock before giving up (503).
SQLITE_BUSY_TIMEOUT = 5


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timestamps stored as naive UTC and always read back timezone-aware.

    SQLite keeps no zone, so this one type makes both databases agree.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # A pool big enough for the concurrency we serve: connections opened past it
        # are closed when they come back.
        options: dict[str, Any] = {"echo": echo, "pool_size": 20, "max_overflow": 20}
        if self.is_sqlite:
            options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False}
            private_sqlite_file(url)
        else:
            options.update(pool_recycle=1800, connect_args={"connect_timeout": 5})
        self.engine: Engine = create_engine(url, **options)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        # SQLite takes the write lock up front for writing units of work, so two
        # writers queue on busy_timeout instead of failing to upgrade a read lock.
        self._writer = self.engine.execution_options(kiln_write=True)

    async def run(self, work: Callable[[], T]) -> T:
        """Run synchronous database code where it belongs (see the module docstring)."""
        if self.is_sqlite:
            return work()
        return await anyio.to_thread.run_sync(work)

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Session]:
        """One unit of work: commits when the block ends, rolls back if it raises.

        The session is also the current one (`session()`) inside the block.
        """
        with Session(self._writer if write else self.engine, expire_on_commit=False) as s:
            token = _session.set(s)
            try:
                with s.begin():
                    yield s
            finally:
                _session.reset(token)
            for callback in s.info.pop("after_commit", []):
                callback()

    def first(self, statement: Executable, params: dict[str, Any]) -> Row[Any] | None:
        """The first row of one statement, read in a short transaction of its own."""
        with self.engine.connect() as conn:
            return conn.execute(statement, params).first()

    def execute(self, statement: Executable, params: dict[str, Any]) -> None:
        """One writing statement, committed at once."""
        with self._writer.begin() as conn:
            conn.execute(statement, params)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


def after_commit(callback: Callable[[], None]) -> None:
    """Run `callback` once the current unit of work has committed; never if it rolls back."""
    session().info.setdefault("after_commit", []).append(callback)


def session() -> Session:
    """The session of the unit of work this code runs in."""
    try:
        return _session.get()
    except LookupError:
        raise RuntimeError("no unit of work is open") from None


def private_sqlite_file(url: str) -> None:
    """Make the SQLite database file 0600 before SQLite opens it, and tighten one made
    looser before (by a migration, or an older Kiln). SQLite gives its -wal and -shm
    files the database file's mode."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    for suffix in ("", "-wal", "-shm", "-journal"):
        files.tighten(path.with_name(path.name + suffix))
    if not path.exists():
        # With no such directory, SQLite says so when it connects.
        with contextlib.suppress(FileNotFoundError):
            os.close(files.open_private(path, os.O_RDONLY | os.O_CREAT))


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the driver so that `_on_begin` decides it.
        dbapi_connection.isolation_level = None
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            f"busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}",
        ):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("kiln_write", False)
        # Straight to the driver: this runs for every transaction, and SQLAlchemy's
        # statement machinery would cost more than the BEGIN itself.
        conn.connection.driver_connection.execute(  # type: ignore[union-attr]
            "BEGIN IMMEDIATE" if immediate else "BEGIN"
        )
