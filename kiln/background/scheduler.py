"""The cron scheduler: for every cron job that is due, a build with trigger `cron`,
exactly once per due time however many schedulers run (the unique constraint on
`builds (cron_job_id, cron_due_at)` turns a second scheduler's insert away), and
`next_run`/`prev_run` moved on."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import bindparam, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from kiln.background.loops import Background
from kiln.core.principal import Principal
from kiln.core.problems import Problem
from kiln.domain import builds, events, schedules
from kiln.domain.build_views import build_view
from kiln.store.db import UTCDateTime, session, utcnow
from kiln.store.services import Services
from models import Build, CronJob, User, owner_key

log = logging.getLogger(__name__)
BATCH = 20
ANY_DUE = text("SELECT 1 FROM cron_jobs WHERE next_run <= :now LIMIT 1").bindparams(
    bindparam("now", type_=UTCDateTime)
)


async def run(background: Background) -> None:
    services = background.services
    while not background.stopping.is_set():
        fired = await services.db.run(lambda: fire_due(services))
        if fired:
            background.nudge("worker")
        else:
            await background.idle("scheduler", max(services.settings.poll_interval, 0.5))


def fire_due(services: Services) -> int:
    """Submit a build for each due cron job; how many due times were handled."""
    now = utcnow()
    if services.db.first(ANY_DUE, {"now": now}) is None:  # only read while nothing is due
        return 0
    with services.db.transaction() as s:
        # Rows another scheduler is firing are skipped (PostgreSQL); SQLite's writer
        # lock already lets one scheduler at a time in here.
        due = s.exec(
            select(CronJob)
            .where(col(CronJob.next_run) <= now)
            .order_by(col(CronJob.next_run))
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for job in due:
            _fire(services, job, now)
    return len(due)


def _fire(services: Services, job: CronJob, now: dt.datetime) -> None:
    due_at = job.next_run
    try:
        with session().begin_nested():
            build = _submit(services, job, due_at)
            if build is not None:
                events.emit(build.namespace_id, "cron.submitted", lambda: build_view(build))
    except IntegrityError:
        log.info("cron job %s fired for %s by another scheduler", job.id, due_at)
    job.prev_run = due_at
    job.next_run = schedules.next_after(job.schedule, max(due_at, now))


def _submit(services: Services, job: CronJob, due_at: dt.datetime) -> Build | None:
    creator = session().get(User, job.created_by) if job.created_by is not None else None
    if creator is None:
        log.warning("cron job %s has no creator left to submit as", job.id)
        return None
    principal = Principal(creator.id, creator.username, frozenset())
    try:
        checked = builds.check(
            job.manifest, principal, services.settings, default_namespace_id=job.namespace_id
        )
    except Problem as problem:
        return _refused(job, due_at, principal, problem)
    return builds.submit(
        checked,
        principal,
        source=job.manifest,
        trigger="cron",
        cron_job_id=job.id,
        cron_due_at=due_at,
    )


def _refused(job: CronJob, due_at: dt.datetime, principal: Principal, problem: Problem) -> Build:
    """A build that says why the cron job's manifest could not run this time."""
    owner = owner_key(None if job.namespace_id else principal.user_id, job.namespace_id)
    build = Build(
        number=builds.next_number(owner),
        status="failed",
        reason="manifest_refused",
        manifest=job.manifest,
        comment=(problem.detail or "The manifest was refused.")[:1000],
        trigger="cron",
        driver="local",
        timeout_seconds=1,
        submitter_id=principal.user_id,
        cron_job_id=job.id,
        cron_due_at=due_at,
        user_id=None if job.namespace_id else principal.user_id,
        namespace_id=job.namespace_id,
        owner_key=owner,
        finished_at=utcnow(),
    )
    session().add(build)
    session().flush()
    return build
