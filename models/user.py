from __future__ import annotations

import datetime as dt

from sqlmodel import Field, SQLModel

from models.base import timestamp


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    username: str = Field(max_length=39, unique=True)
    email: str | None = Field(default=None, max_length=254)
    password_hash: str | None = Field(default=None, max_length=255)
    is_admin: bool = False
    created_at: dt.datetime = timestamp()
