"""Migrations build exactly the schema the models describe."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlmodel import SQLModel

import models  # noqa: F401
from tests.conftest import POSTGRES_URL
from tests.support import fresh_database


def test_migrations_match_the_models(database_url: str, tmp_path: Path) -> None:
    # On PostgreSQL, `database_url` is a freshly migrated schema; SQLite gets a new file.
    url = database_url if POSTGRES_URL else fresh_database(None, tmp_path)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
        )
    engine.dispose()
    assert diff == []
