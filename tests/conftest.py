"""Fixtures: one real server per test process, on SQLite or on PostgreSQL.

`KILN_TEST_DATABASE_URL=postgresql+psycopg://...` runs the suite on PostgreSQL;
without it, on a fresh SQLite file. Under pytest-xdist each worker has a database of
its own (on PostgreSQL, `<database>_<worker>` beside the named one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    Account,
    RunningServer,
    fresh_database,
    isolated_database,
    make_account,
    server_settings,
)

POSTGRES_URL = os.environ.get("KILN_TEST_DATABASE_URL")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("db")
    if POSTGRES_URL is None:
        return fresh_database(None, directory)
    return isolated_database(POSTGRES_URL, directory, "suite")


@pytest.fixture(scope="session")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = server_settings(tmp_path_factory.mktemp("data"), database_url)
    with RunningServer(settings) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def make_user(database_url: str) -> Callable[..., Account]:
    def make(**options: Any) -> Account:
        return make_account(database_url, **options)

    return make


@pytest.fixture
def alice(make_user: Callable[..., Account]) -> Account:
    return make_user(prefix="alice")


@pytest.fixture
def bob(make_user: Callable[..., Account]) -> Account:
    return make_user(prefix="bob")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The schemathesis run takes minutes on its own: handed out first, it runs beside
    # the rest of the suite instead of after it, on a worker of its own.
    def order(item: pytest.Item) -> int:
        if item.path.name == "test_schemathesis.py":
            return 0
        return 1 if item.get_closest_marker("slow") is not None else 2

    items.sort(key=order)
