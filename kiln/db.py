"""The database: engine, one transaction per unit of work, and the session it runs in."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any

from sqlalchemy import DateTime, event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.types import TypeDecorator
from sqlmodel.ext.asyncio.session import AsyncSession

_session: ContextVar[AsyncSession] = ContextVar("kiln_session")


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
        options: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            options["connect_args"] = {"timeout": 30}
        else:
            options.update(pool_size=10, max_overflow=20, pool_recycle=1800)
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        # SQLite takes the write lock up front for writing units of work, so two
        # writers queue on busy_timeout instead of failing to upgrade a read lock.
        writer = self.engine.execution_options(kiln_write=True)
        self._readers = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self._writers = async_sessionmaker(writer, class_=AsyncSession, expire_on_commit=False)

    @contextlib.asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits when the block ends, rolls back if it raises.

        The session is also the current one (`session()`) inside the block.
        """
        maker = self._writers if write else self._readers
        async with maker() as session:
            token = _session.set(session)
            try:
                async with session.begin():
                    yield session
            finally:
                _session.reset(token)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


def session() -> AsyncSession:
    """The session of the unit of work this code runs in."""
    try:
        return _session.get()
    except LookupError:
        raise RuntimeError("no unit of work is open") from None


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the driver so that `_on_begin` decides it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("kiln_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
