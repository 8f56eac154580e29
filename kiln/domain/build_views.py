"""How builds, jobs, artifacts and tags look to clients: in API answers and in the
webhook events the worker sends."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import col, select

from kiln.core import bodies
from kiln.domain import resources
from kiln.store.db import session
from models import Artifact, Build, BuildTag, Job, User

B = "/api/v1/builds"
BUILD_SUBRESOURCES = ("jobs", "artifacts", "tags", "kill", "objects", "variables", "keys")


def represent_job(job: Job) -> bodies.Body:
    href = f"{B}/{job.build_id}/jobs/{job.id}"
    return {
        "id": job.id,
        "build_id": job.build_id,
        "name": job.name,
        "stage": job.stage,
        "commands": json.loads(job.commands),
        "artifacts": json.loads(job.artifacts),
        "status": job.status,
        "exit_code": job.exit_code,
        "output_size": job.output_size,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "_links": {
            "self": bodies.link(href),
            "build": bodies.link(f"{B}/{job.build_id}"),
            "output": bodies.link(f"{href}/output"),
        },
    }


def represent_build(
    build: Build, jobs: list[Job], tags: list[str], submitter: str | None
) -> bodies.Body:
    href = f"{B}/{build.id}"
    links: dict[str, Any] = {
        "self": bodies.link(href),
        **{name: bodies.link(f"{href}/{name}") for name in BUILD_SUBRESOURCES},
        **resources.owner_links(build),
    }
    if build.cron_job_id is not None:
        links["cron_job"] = bodies.link(f"/api/v1/cron/{build.cron_job_id}")
    return {
        "id": build.id,
        "number": build.number,
        "status": build.status,
        "reason": build.reason,
        "kill_requested": build.kill_requested,
        "manifest": build.manifest,
        "comment": build.comment,
        "tags": tags,
        "namespace_id": build.namespace_id,
        "trigger": build.trigger,
        "driver": build.driver,
        "timeout": build.timeout_seconds,
        "cron_job_id": build.cron_job_id,
        "submitter": submitter,
        "created_at": build.created_at,
        "started_at": build.started_at,
        "finished_at": build.finished_at,
        "_links": links,
        "_embedded": {"jobs": [represent_job(job) for job in jobs]},
    }


def build_views(builds: list[Build]) -> list[bodies.Body]:
    """Representations of several builds, their jobs, tags and submitters read in three
    queries whatever their number."""
    ids = [b.id for b in builds]
    jobs: dict[int, list[Job]] = {}
    for job in session().exec(
        select(Job).where(col(Job.build_id).in_(ids)).order_by(col(Job.position))
    ):
        jobs.setdefault(job.build_id, []).append(job)
    tags: dict[int, list[str]] = {}
    for tag in session().exec(
        select(BuildTag).where(col(BuildTag.build_id).in_(ids)).order_by(col(BuildTag.id))
    ):
        tags.setdefault(tag.build_id, []).append(tag.name)
    user_ids = {b.submitter_id for b in builds if b.submitter_id is not None}
    names = dict(
        session().exec(select(User.id, User.username).where(col(User.id).in_(user_ids))).all()
    )
    return [
        represent_build(
            b,
            jobs.get(b.id or 0, []),
            tags.get(b.id or 0, []),
            names.get(b.submitter_id) if b.submitter_id is not None else None,
        )
        for b in builds
    ]


def build_view(build: Build) -> bodies.Body:
    return build_views([build])[0]


def represent_artifact(artifact: Artifact) -> bodies.Body:
    href = f"{B}/{artifact.build_id}/artifacts/{artifact.id}"
    return {
        "id": artifact.id,
        "build_id": artifact.build_id,
        "job_id": artifact.job_id,
        "name": artifact.name,
        "path": artifact.path,
        "size": artifact.size,
        "md5": artifact.md5,
        "sha256": artifact.sha256,
        "created_at": artifact.created_at,
        "_links": {
            "self": bodies.link(href),
            "build": bodies.link(f"{B}/{artifact.build_id}"),
            "job": bodies.link(f"{B}/{artifact.build_id}/jobs/{artifact.job_id}"),
            "content": bodies.link(f"{href}/content"),
        },
    }


def represent_tag(tag: BuildTag) -> bodies.Body:
    return {
        "name": tag.name,
        "created_at": tag.created_at,
        "_links": {
            "self": bodies.link(f"{B}/{tag.build_id}/tags/{tag.name}"),
            "build": bodies.link(f"{B}/{tag.build_id}"),
        },
    }
