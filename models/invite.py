from __future__ import annotations

import datetime as dt

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import reference, timestamp


class Invite(SQLModel, table=True):
    """An invitation to collaborate in a namespace, until the invitee answers it."""

    __tablename__ = "invites"
    __table_args__ = (UniqueConstraint("namespace_id", "user_id"),)

    id: int | None = Field(default=None, primary_key=True)
    namespace_id: int = reference("namespaces.id")
    user_id: int = reference("users.id")
    inviter_id: int = reference("users.id")
    created_at: dt.datetime = timestamp()
