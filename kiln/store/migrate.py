"""Bring a database to the newest schema (Alembic, from the `migrations/` folder).

Most starts find the database there already. That is told from the revision ids the
scripts declare and the `alembic_version` table, without importing Alembic (and the
Mako and Pygments it brings) or running a script; anything else is left to Alembic.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, inspect, pool, text

if TYPE_CHECKING:
    from alembic.config import Config

_PACKAGED = Path(__file__).parents[1] / "migrations"
_SOURCE = Path(__file__).parents[2] / "migrations"
MIGRATIONS = _PACKAGED if _PACKAGED.exists() else _SOURCE
_HEADER = ("revision", "down_revision", "branch_labels", "depends_on")


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade(url: str) -> None:
    if at_head(url):
        return
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def at_head(url: str, versions: Path = MIGRATIONS / "versions") -> bool:
    """Whether the database has applied exactly the newest revisions the scripts declare."""
    heads = declared_heads(versions)
    return heads is not None and applied_revisions(url) == heads


def declared_heads(versions: Path) -> frozenset[str] | None:
    """The revisions that no script revises; None when a script says something that is
    not plainly a revision and its parents, so that Alembic decides."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for script in versions.glob("*.py"):
        if script.name == "__init__.py":
            continue
        header = _revision_and_parents(script)
        if header is None:
            return None
        revisions.add(header[0])
        revised.update(header[1])
    heads = revisions - revised
    return frozenset(heads) if heads else None


def _revision_and_parents(script: Path) -> tuple[str, tuple[str, ...]] | None:
    values = _header_values(script)
    if values is None or values.get("branch_labels") or values.get("depends_on"):
        return None
    revision, parents = values.get("revision"), values.get("down_revision")
    if not isinstance(revision, str):
        return None
    if parents is None:
        return revision, ()
    if isinstance(parents, str):
        return revision, (parents,)
    if isinstance(parents, tuple | list) and all(isinstance(p, str) for p in parents):
        return revision, tuple(parents)
    return None


def _header_values(script: Path) -> dict[str, Any] | None:
    """The literal values of the script's top-level `revision = ...` and the like."""
    try:
        module = ast.parse(script.read_bytes(), str(script))
    except SyntaxError:
        return None
    values: dict[str, Any] = {}
    for node in module.body:
        targets: list[ast.expr]
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        elif isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Name) and target.id in _HEADER:
                try:
                    values[target.id] = ast.literal_eval(value)
                except (ValueError, TypeError, SyntaxError):
                    return None
    return values


def applied_revisions(url: str) -> frozenset[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return frozenset()
            rows = conn.execute(text("SELECT version_num FROM alembic_version"))
            return frozenset(rows.scalars())
    finally:
        engine.dispose()
