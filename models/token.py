from __future__ import annotations

import datetime as dt

from sqlmodel import Field, SQLModel

from models.base import reference, timestamp


class Token(SQLModel, table=True):
    """A capability token. Only the SHA-256 of the secret is kept."""

    __tablename__ = "tokens"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = reference("users.id")
    name: str = Field(max_length=100)
    secret_hash: str = Field(max_length=64, unique=True)
    scopes: str = Field(max_length=1000, description="space-separated")
    namespace_id: int | None = reference("namespaces.id", nullable=True)
    expires_at: dt.datetime | None = timestamp(nullable=True, default_now=False)
    last_used_at: dt.datetime | None = timestamp(nullable=True, default_now=False)
    created_at: dt.datetime = timestamp()

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(self.scopes.split())
