from __future__ import annotations

from sqlalchemy import Text, UniqueConstraint
from sqlmodel import Field

from models.owned import Owned


class SshKey(Owned, table=True):
    __tablename__ = "ssh_keys"
    __table_args__ = (UniqueConstraint("owner_key", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    private_key: str = Field(sa_type=Text, description="encrypted at rest (see kiln.secrets)")
    config: str = Field(default="", sa_type=Text)
    algorithm: str = Field(max_length=16)
    fingerprint: str = Field(max_length=100)
