"""Builds, their jobs, artifacts and tags, and what each build was given to run with."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.base import reference, timestamp, weak_reference
from models.owned import Owned


class BuildCounter(SQLModel, table=True):
    """The last build number given out per owner (a user, or a namespace)."""

    __tablename__ = "build_counters"

    owner_key: str = Field(primary_key=True, max_length=32)
    last_number: int = 0


class Build(Owned, table=True):
    __tablename__ = "builds"
    __table_args__ = (
        UniqueConstraint("owner_key", "number"),
        # A cron job fires once per due time, however many schedulers run.
        UniqueConstraint("cron_job_id", "cron_due_at"),
        Index("ix_builds_status_id", "status", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    number: int
    status: str = Field(default="queued", max_length=32)
    manifest: str = Field(sa_type=Text)
    comment: str | None = Field(default=None, max_length=1000)
    trigger: str = Field(max_length=16)
    driver: str = Field(max_length=16)
    timeout_seconds: int
    submitter_id: int | None = weak_reference("users.id")
    cron_job_id: int | None = weak_reference("cron_jobs.id")
    cron_due_at: dt.datetime | None = timestamp(nullable=True, default_now=False)
    reason: str | None = Field(default=None, max_length=64)
    kill_requested: bool = False
    worker: str | None = Field(default=None, max_length=100)
    lease_expires_at: dt.datetime | None = timestamp(nullable=True, default_now=False)
    started_at: dt.datetime | None = timestamp(nullable=True, default_now=False)
    finished_at: dt.datetime | None = timestamp(nullable=True, default_now=False)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    build_id: int = reference("builds.id")
    position: int
    stage: str = Field(max_length=100)
    name: str = Field(max_length=100)
    commands: str = Field(sa_type=Text, description="JSON list of strings")
    artifacts: str = Field(sa_type=Text, description='JSON list of {"path", "name"}')
    status: str = Field(default="queued", max_length=32)
    exit_code: int | None = None
    output_size: int = 0
    started_at: dt.datetime | None = timestamp(nullable=True, default_now=False)
    finished_at: dt.datetime | None = timestamp(nullable=True, default_now=False)


class Artifact(SQLModel, table=True):
    __tablename__ = "artifacts"

    id: int | None = Field(default=None, primary_key=True)
    build_id: int = reference("builds.id")
    job_id: int = reference("jobs.id")
    name: str = Field(max_length=255)
    path: str = Field(max_length=1000)
    size: int
    md5: str = Field(max_length=32)
    sha256: str = Field(max_length=64)
    storage_key: str = Field(max_length=255)
    created_at: dt.datetime = timestamp()


class BuildTag(SQLModel, table=True):
    __tablename__ = "build_tags"
    __table_args__ = (UniqueConstraint("build_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    build_id: int = reference("builds.id")
    name: str = Field(max_length=32, index=True)
    created_at: dt.datetime = timestamp()


class BuildObject(SQLModel, table=True):
    """An object placed on a build, as it was when the build was submitted."""

    __tablename__ = "build_objects"

    id: int | None = Field(default=None, primary_key=True)
    build_id: int = reference("builds.id")
    object_id: int | None = weak_reference("objects.id")
    name: str = Field(max_length=255)
    destination: str = Field(max_length=1000)
    size: int
    sha256: str = Field(max_length=64)
    storage_key: str = Field(max_length=255)


class BuildVariable(SQLModel, table=True):
    """A variable a build was given: its value then, encrypted at rest."""

    __tablename__ = "build_variables"

    id: int | None = Field(default=None, primary_key=True)
    build_id: int = reference("builds.id")
    variable_id: int | None = weak_reference("variables.id")
    key: str = Field(max_length=255)
    value: str = Field(sa_type=Text, description="encrypted at rest (see kiln.secrets)")
    masked: bool


class BuildKey(SQLModel, table=True):
    """An SSH key a build was given: the private key then, encrypted at rest."""

    __tablename__ = "build_keys"

    id: int | None = Field(default=None, primary_key=True)
    build_id: int = reference("builds.id")
    key_id: int | None = weak_reference("ssh_keys.id")
    name: str = Field(max_length=100)
    fingerprint: str = Field(max_length=100)
    private_key: str = Field(sa_type=Text, description="encrypted at rest (see kiln.secrets)")
    config: str | None = Field(default=None, sa_type=Text)
