"""Bring a database to the newest schema (Alembic, from the `migrations/` folder)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

_PACKAGED = Path(__file__).parents[1] / "migrations"
_SOURCE = Path(__file__).parents[2] / "migrations"
MIGRATIONS = _PACKAGED if _PACKAGED.exists() else _SOURCE


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade(url: str) -> None:
    command.upgrade(alembic_config(url), "head")
