from __future__ import annotations

import datetime as dt

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import reference, timestamp


class IdempotencyRecord(SQLModel, table=True):
    """The first result of a create sent with an `Idempotency-Key`.

    A key belongs to the credential that sent it, not only to its user: another token
    of the same user never gets its result (a created token's secret, say). The body is
    kept encrypted with the secret box for the same reason.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "credential", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = reference("users.id", index=False)
    # The token that sent it (its records go with it, so a reused id finds none), or none
    # for the password; `credential` says which, for the unique key.
    token_id: int | None = reference("tokens.id", nullable=True)
    credential: str = Field(max_length=32, description="`token:<id>` or `password`")
    key: str = Field(max_length=255)
    fingerprint: str = Field(max_length=64)
    status: int | None = None
    headers: str | None = Field(default=None, description="JSON object")
    body: str | None = Field(default=None, description="encrypted with the secret box")
    created_at: dt.datetime = timestamp(index=True)
