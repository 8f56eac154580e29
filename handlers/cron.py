"""Cron jobs: manifests submitted as builds on a schedule."""

from __future__ import annotations

from typing import Any

from connexion.lifecycle import ConnexionResponse
from sqlmodel import col, delete

from handlers.builds import page_of_builds_where
from kiln.core.problems import FieldError, validation_failed
from kiln.domain import builds, resources, schedules
from kiln.http import hal, pagination
from kiln.http.auth import current_principal
from kiln.http.context import current_app
from kiln.store.db import session, utcnow
from models import Build, CronJob

NOUN = "Cron job"


def represent_cron_job(job: CronJob) -> hal.Body:
    href = f"/api/v1/cron/{job.id}"
    return {
        "id": job.id,
        "name": job.name,
        "schedule": job.schedule,
        "manifest": job.manifest,
        "next_run": job.next_run,
        "prev_run": job.prev_run,
        **resources.owner_fields(job),
        "_links": {
            "self": hal.link(href),
            "builds": hal.link(f"{href}/builds"),
            **resources.owner_links(job),
        },
    }


def list_cron_jobs(
    limit: int = 25,
    after: str | None = None,
    namespace_id: int | None = None,
    search: str | None = None,
) -> ConnexionResponse:
    page = pagination.page_of(
        CronJob,
        current_principal(),
        members_only=True,
        search_column=CronJob.name,
        namespace_id=namespace_id,
        search=search,
        limit=limit,
        after=after,
    )
    return hal.collection("cron", [represent_cron_job(j) for j in page.rows], page)


def list_namespace_cron_jobs(
    id: int, limit: int = 25, after: str | None = None, search: str | None = None
) -> ConnexionResponse:
    return list_cron_jobs(limit=limit, after=after, namespace_id=id, search=search)


def create_cron_job(body: dict[str, Any]) -> ConnexionResponse:
    _check(body, body.get("namespace_id"))
    job = CronJob(
        name=body["name"],
        schedule=body["schedule"].strip(),
        manifest=body["manifest"],
        next_run=schedules.next_after(body["schedule"], utcnow()),
        created_by=current_principal().user_id,
        **resources.placement(current_principal(), body.get("namespace_id")),
    )
    session().add(job)
    resources.flush_unique(f"A cron job {body['name']} exists already here.")
    return hal.created(represent_cron_job(job))


def get_cron_job(id: int) -> ConnexionResponse:
    job = resources.find(CronJob, id, current_principal(), members_only=True, noun=NOUN)
    return hal.resource(represent_cron_job(job))


def update_cron_job(id: int, body: dict[str, Any]) -> ConnexionResponse:
    job = resources.find(CronJob, id, current_principal(), members_only=True, noun=NOUN)
    hal.require_unchanged(represent_cron_job(job))
    _check(body, job.namespace_id)
    if "schedule" in body:
        job.schedule = body["schedule"].strip()
        job.next_run = schedules.next_after(job.schedule, utcnow())
    if "manifest" in body:
        job.manifest = body["manifest"]
    if "name" in body:
        job.name = body["name"]
    job.updated_at = utcnow()
    resources.flush_unique(f"A cron job {job.name} exists already here.")
    return hal.resource(represent_cron_job(job))


def delete_cron_job(id: int) -> ConnexionResponse:
    job = resources.find(CronJob, id, current_principal(), members_only=True, noun=NOUN)
    hal.require_unchanged(represent_cron_job(job))
    session().exec(delete(CronJob).where(col(CronJob.id) == id))
    return hal.no_content()


def list_cron_job_builds(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    resources.find(CronJob, id, current_principal(), members_only=True, noun=NOUN)
    return page_of_builds_where(Build.cron_job_id == id, limit, after)


def _check(body: dict[str, Any], namespace_id: int | None) -> None:
    """The schedule, and the manifest checked exactly as a submission would be."""
    if "schedule" in body and not schedules.is_valid(body["schedule"]):
        raise validation_failed(
            [
                FieldError(
                    "invalid",
                    "schedule must be 5 cron fields or @hourly, @daily, @weekly or @monthly.",
                    pointer="/schedule",
                )
            ]
        )
    if "manifest" in body:
        builds.check(
            body["manifest"],
            current_principal(),
            current_app().settings,
            default_namespace_id=namespace_id,
            create_namespaces=False,
        )
