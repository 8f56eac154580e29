from __future__ import annotations

from sqlalchemy import Text, UniqueConstraint
from sqlmodel import Field

from models.owned import Owned


class Variable(Owned, table=True):
    __tablename__ = "variables"
    __table_args__ = (UniqueConstraint("owner_key", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=255)
    value: str = Field(sa_type=Text, description="encrypted at rest (see kiln.secrets)")
    masked: bool = False
