"""Columns shared by resources that live either with one user or in one namespace."""

from __future__ import annotations

import datetime as dt

from sqlmodel import Field, SQLModel

from models.base import reference, timestamp


def owner_key(user_id: int | None, namespace_id: int | None) -> str:
    """What names are unique within: the namespace, or the user for their own resources."""
    return f"n:{namespace_id}" if namespace_id is not None else f"u:{user_id}"


class Owned(SQLModel):
    """Exactly one of `user_id` (the user's own) and `namespace_id` (the namespace's) is set."""

    user_id: int | None = reference("users.id", nullable=True)
    namespace_id: int | None = reference("namespaces.id", nullable=True)
    owner_key: str = Field(max_length=32)
    created_at: dt.datetime = timestamp()
    updated_at: dt.datetime = timestamp()
