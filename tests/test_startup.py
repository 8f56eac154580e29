"""Start-up: the contract is parsed and checked once per version of the file, the
bytecode is kept, and migrations are skipped when the database is at the newest."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest
from alembic import command
from connexion.exceptions import InvalidSpecification
from connexion.spec import Specification

from kiln.core import cache, spec
from kiln.http import connexion_app
from kiln.store import migrate
from tests.processes import KilnServe, kiln_env


@pytest.fixture
def contract(tmp_path: Path) -> Path:
    copy = tmp_path / "contract" / "openapi.yaml"
    copy.parent.mkdir()
    shutil.copy(spec.SPEC_PATH, copy)
    return copy


def _forbid(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> None:
    def refused(*_: object) -> None:
        raise AssertionError(f"{name} was called: the cache was not used")

    monkeypatch.setattr(owner, name, refused)


def test_the_parsed_contract_is_kept_until_the_file_changes(
    contract: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = spec.read(contract, tmp_path / "cache")
    assert parsed == spec.parse(spec.SPEC_PATH)
    with monkeypatch.context() as m:
        _forbid(m, spec, "parse")
        assert spec.read(contract, tmp_path / "cache") == parsed

    contract.write_text(contract.read_text().replace("title: ", "title: Changed ", 1))
    assert spec.read(contract, tmp_path / "cache")["info"]["title"].startswith("Changed ")


def test_a_corrupt_cache_entry_is_rebuilt(
    contract: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "cache"
    parsed = spec.read(contract, folder)
    (entry,) = folder.glob("contract-*.pickle")
    entry.write_bytes(entry.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="kiln.core.cache"):
        assert spec.read(contract, folder) == parsed
    assert "unreadable" in caplog.text
    assert cache.kept("contract", contract, lambda: {"not": "rebuilt"}, directory=folder) == parsed


def test_a_cache_that_cannot_be_written_only_costs_time(contract: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert spec.read(contract, blocked) == spec.parse(contract)


def test_connexion_gets_the_specification_it_would_have_loaded(
    contract: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = Specification.load(str(contract))
    built = connexion_app.load_specification(contract, tmp_path / "cache")
    with monkeypatch.context() as m:
        _forbid(m, connexion_app, "_specification")
        kept = connexion_app.load_specification(contract, tmp_path / "cache")
    for loaded in (built, kept):
        assert type(loaded) is type(own)
        assert loaded.raw == own.raw
        assert loaded.spec == own.spec
        assert loaded.base_path == own.base_path


def test_a_changed_contract_is_checked_again(contract: Path, tmp_path: Path) -> None:
    connexion_app.load_specification(contract, tmp_path / "cache")
    contract.write_text(contract.read_text().replace("openapi: 3.0.3", "openapi: 3.0.3\nbogus: 1"))
    with pytest.raises(InvalidSpecification):
        connexion_app.load_specification(contract, tmp_path / "cache")


def test_bytecode_is_kept_in_the_cache_where_the_environment_says_not_to_write_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    cache.keep_bytecode()
    assert sys.pycache_prefix == str(tmp_path / "kiln" / "bytecode")
    assert not sys.dont_write_bytecode


def test_migrations_run_only_when_the_database_is_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'kiln.db'}"
    assert migrate.applied_revisions(url) == frozenset()
    assert not migrate.at_head(url)
    migrate.upgrade(url)
    assert migrate.at_head(url)
    _forbid(monkeypatch, command, "upgrade")
    migrate.upgrade(url)


def test_heads_that_are_not_plain_are_left_to_alembic(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    shutil.copytree(migrate.MIGRATIONS / "versions", versions)
    assert migrate.declared_heads(versions) == migrate.declared_heads(
        migrate.MIGRATIONS / "versions"
    )
    (versions / "merge.py").write_text(
        "revision = 'abc'\ndown_revision = ('x', 'y')\ndepends_on = 'z'\n"
    )
    assert migrate.declared_heads(versions) is None
    (versions / "merge.py").write_text("revision = compute()\ndown_revision = None\n")
    assert migrate.declared_heads(versions) is None


@pytest.mark.slow
def test_a_second_start_uses_what_the_first_kept(tmp_path: Path) -> None:
    env = kiln_env(XDG_CACHE_HOME=str(tmp_path / "cache"), PYTHONDONTWRITEBYTECODE="1")
    kept = tmp_path / "cache" / "kiln"
    with KilnServe(tmp_path / "data", env=env) as first, first.client() as client:
        assert client.get("/healthz").status_code == 200
    entries = {p: p.stat().st_mtime_ns for p in kept.glob("*.pickle")}
    assert {p.name.partition("-")[0] for p in entries} == {"contract", "connexion"}
    assert list((kept / "bytecode").rglob("app.cpython-*.pyc"))

    with KilnServe(tmp_path / "data", env=env) as second, second.client() as client:
        assert client.post("/api/v1/namespaces", json={}).status_code == 401
    assert {p: p.stat().st_mtime_ns for p in kept.glob("*.pickle")} == entries
