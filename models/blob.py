"""Uploaded files: objects placed into builds, and disk images for the qemu driver."""

from __future__ import annotations

from sqlalchemy import BigInteger, UniqueConstraint
from sqlmodel import Field

from models.owned import Owned


class Blob(Owned):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=255)
    content_type: str = Field(max_length=255)
    size: int = Field(sa_type=BigInteger)
    md5: str = Field(max_length=32)
    sha256: str = Field(max_length=64)
    storage_key: str = Field(max_length=255)


class StoredObject(Blob, table=True):
    __tablename__ = "objects"
    __table_args__ = (UniqueConstraint("owner_key", "name"),)


class Image(Blob, table=True):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("owner_key", "name"),)

    driver: str = Field(default="qemu", max_length=16)
