"""Column helpers shared by every table."""

from __future__ import annotations

from typing import Any

from sqlmodel import Field

from kiln.store.db import UTCDateTime, utcnow


def timestamp(*, nullable: bool = False, default_now: bool = True, index: bool = False) -> Any:
    """A UTC timestamp column (see `UTCDateTime`)."""
    if default_now and not nullable:
        return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=index)
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def reference(target: str, *, nullable: bool = False, index: bool = True) -> Any:
    """A foreign key whose rows go when the row they point at goes."""
    return Field(
        default=None if nullable else ...,
        foreign_key=target,
        ondelete="CASCADE",
        nullable=nullable,
        index=index,
    )


def weak_reference(target: str) -> Any:
    """A foreign key that is cleared, not followed, when the row it points at goes."""
    return Field(default=None, foreign_key=target, ondelete="SET NULL", nullable=True, index=True)
