"""The build queue, in the database: workers claim builds atomically and hold them
with a lease they renew; a build whose worker stops renewing is failed (it had
started running jobs) or queued again (it had not)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import bindparam, text
from sqlmodel import col, select

from kiln.domain import builds
from kiln.store.db import Database, UTCDateTime, utcnow
from models import Build, Job

_CLAIM = (
    "UPDATE builds SET status = 'running', worker = :worker, lease_expires_at = :lease, "
    "started_at = :now WHERE status = 'queued' AND id = "
    "(SELECT id FROM builds WHERE status = 'queued' ORDER BY id LIMIT 1{lock}) RETURNING id"
)
# PostgreSQL: concurrent claimers skip each other's row instead of waiting on it.
# SQLite: the statement runs under the database's write lock, one claimer at a time.
_TIMES = (bindparam("now", type_=UTCDateTime), bindparam("lease", type_=UTCDateTime))
CLAIM_POSTGRES = text(_CLAIM.format(lock=" FOR UPDATE SKIP LOCKED")).bindparams(*_TIMES)
CLAIM_SQLITE = text(_CLAIM.format(lock="")).bindparams(*_TIMES)
ANY_QUEUED = text("SELECT 1 FROM builds WHERE status = 'queued' LIMIT 1")
ANY_LAPSED = text(
    "SELECT 1 FROM builds WHERE status = 'running' AND lease_expires_at < :now LIMIT 1"
).bindparams(_TIMES[0])
RENEW = text(
    "UPDATE builds SET lease_expires_at = :lease WHERE id = :id AND worker = :worker "
    "AND status = 'running' RETURNING kill_requested"
).bindparams(_TIMES[1])


def claim(db: Database, worker: str, lease_seconds: float) -> int | None:
    """The id of the oldest queued build, now running on `worker`; None if none is queued."""
    # Idle workers only read: no writer lock is taken unless there is a build to claim.
    if db.first(ANY_QUEUED, {}) is None:
        return None
    now = utcnow()
    statement = CLAIM_SQLITE if db.is_sqlite else CLAIM_POSTGRES
    with db.transaction() as s:
        row = (
            s.connection()
            .execute(
                statement,
                {"worker": worker, "now": now, "lease": now + dt.timedelta(seconds=lease_seconds)},
            )
            .first()
        )
    return None if row is None else int(row[0])


def renew(db: Database, build_id: int, worker: str, lease_seconds: float) -> bool | None:
    """Extend the lease; the answer is whether a kill was asked for, None if the lease is lost."""
    lease = utcnow() + dt.timedelta(seconds=lease_seconds)
    with db.transaction() as s:
        row = (
            s.connection()
            .execute(RENEW, {"lease": lease, "id": build_id, "worker": worker})
            .first()
        )
    return None if row is None else bool(row[0])


def still_running(db: Database, build_ids: set[int]) -> set[int]:
    """Of `build_ids`, those of builds that are running (on any worker)."""
    if not build_ids:
        return set()
    with db.transaction(write=False) as s:
        running = s.exec(
            select(Build.id).where(col(Build.id).in_(build_ids), Build.status == "running")
        ).all()
    return {build_id for build_id in running if build_id is not None}


def reap(db: Database) -> list[int]:
    """Builds whose worker's lease ran out: failed `worker_lost` if a job had started,
    else queued again. Returns their ids."""
    now = utcnow()
    if db.first(ANY_LAPSED, {"now": now}) is None:
        return []
    with db.transaction() as s:
        lost = s.exec(
            select(Build)
            .where(Build.status == "running", col(Build.lease_expires_at) < now)
            .with_for_update(skip_locked=True)
        ).all()
        for build in lost:
            started = s.exec(
                select(Job.id).where(Job.build_id == build.id, col(Job.started_at).is_not(None))
            ).first()
            if started is None:
                build.status, build.worker, build.lease_expires_at = "queued", None, None
                build.started_at = None
            else:
                builds.finish_unstarted(build, "failed", "worker_lost")
        return [b.id for b in lost if b.id is not None]
