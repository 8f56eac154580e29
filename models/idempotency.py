from __future__ import annotations

import datetime as dt

from sqlalchemy import LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import reference, timestamp


class IdempotencyRecord(SQLModel, table=True):
    """The first result of a create sent with an `Idempotency-Key`."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = reference("users.id", index=False)
    key: str = Field(max_length=255)
    fingerprint: str = Field(max_length=64)
    status: int | None = None
    headers: str | None = Field(default=None, description="JSON object")
    body: bytes | None = Field(default=None, sa_type=LargeBinary)
    created_at: dt.datetime = timestamp(index=True)
