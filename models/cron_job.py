from __future__ import annotations

import datetime as dt

from sqlalchemy import Text, UniqueConstraint
from sqlmodel import Field

from models.base import timestamp, weak_reference
from models.owned import Owned


class CronJob(Owned, table=True):
    __tablename__ = "cron_jobs"
    __table_args__ = (UniqueConstraint("owner_key", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    schedule: str = Field(max_length=100)
    manifest: str = Field(sa_type=Text)
    next_run: dt.datetime = timestamp(index=True)
    prev_run: dt.datetime | None = timestamp(nullable=True, default_now=False)
    created_by: int | None = weak_reference("users.id")  # submits its builds
