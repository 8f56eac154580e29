from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import String
from sqlmodel import Field, SQLModel

from models.base import reference, timestamp

MAX_DEPTH = 20


class Visibility(StrEnum):
    private = "private"
    internal = "internal"
    public = "public"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Visibility.private: 0, Visibility.internal: 1, Visibility.public: 2}


class Namespace(SQLModel, table=True):
    __tablename__ = "namespaces"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    path: str = Field(max_length=1400, unique=True)
    description: str = Field(default="", max_length=1000)
    visibility: str = Field(default=Visibility.private.value, sa_type=String(16))
    parent_id: int | None = reference("namespaces.id", nullable=True)
    root_id: int | None = Field(default=None, index=True)
    depth: int = 1
    owner_id: int = reference("users.id")
    created_at: dt.datetime = timestamp()
    updated_at: dt.datetime = timestamp()


class NamespaceAncestor(SQLModel, table=True):
    """Closure table: one row per (namespace, ancestor-or-self) pair.

    Lets "collaborates in this namespace or any above it" be one indexed join.
    """

    __tablename__ = "namespace_ancestors"

    namespace_id: int = Field(foreign_key="namespaces.id", ondelete="CASCADE", primary_key=True)
    ancestor_id: int = Field(
        foreign_key="namespaces.id", ondelete="CASCADE", primary_key=True, index=True
    )
    distance: int = 0


class Collaborator(SQLModel, table=True):
    __tablename__ = "collaborators"

    namespace_id: int = Field(foreign_key="namespaces.id", ondelete="CASCADE", primary_key=True)
    user_id: int = Field(foreign_key="users.id", ondelete="CASCADE", primary_key=True, index=True)
    created_at: dt.datetime = timestamp()
