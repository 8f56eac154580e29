"""The queue's claim and reaper against a real database: a build whose worker
vanished before starting a job is queued again; one that had started fails."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, update

from kiln.background import queue
from kiln.store.db import Database, session, utcnow
from models import Build, Job
from tests.support import (
    MANIFEST,
    Account,
    RunningServer,
    isolated_database,
    make_account,
    server_settings,
)


@dataclass
class Idle:
    client: httpx.Client
    db: Database
    who: Account

    def submit(self) -> int:
        response = self.client.post(
            "/api/v1/builds", json={"manifest": MANIFEST}, headers=self.who.auth
        )
        assert response.status_code == 202, response.text
        build_id: int = response.json()["id"]
        return build_id

    def build(self, build_id: int) -> dict[str, object]:
        got: dict[str, object] = self.client.get(
            f"/api/v1/builds/{build_id}", headers=self.who.auth
        ).json()
        return got

    def lapse(self, build_id: int) -> None:
        past = utcnow() - dt.timedelta(seconds=5)
        with self.db.transaction():
            session().exec(
                update(Build).where(col(Build.id) == build_id).values(lease_expires_at=past)
            )


@pytest.fixture
def idle(database_url: str, tmp_path: Path) -> Iterator[Idle]:
    """A server without workers, on a database of its own: only the test claims builds."""
    url = isolated_database(database_url, tmp_path, "queue")
    with RunningServer(server_settings(tmp_path / "data", url, workers=0)) as server:
        db = Database(url)
        with server.client() as client:
            yield Idle(client, db, make_account(url))
        db.dispose()


def test_a_lost_build_that_had_not_started_a_job_is_queued_again(idle: Idle) -> None:
    build_id = idle.submit()
    assert queue.claim(idle.db, "gone", 30) == build_id
    assert queue.reap(idle.db) == []  # its lease still holds
    idle.lapse(build_id)
    assert queue.reap(idle.db) == [build_id]
    assert idle.build(build_id)["status"] == "queued"
    assert queue.claim(idle.db, "next", 30) == build_id


def test_a_lost_build_that_had_started_a_job_fails(idle: Idle) -> None:
    build_id = idle.submit()
    assert queue.claim(idle.db, "gone", 30) == build_id
    with idle.db.transaction():
        session().exec(
            update(Job)
            .where(col(Job.build_id) == build_id)
            .values(started_at=utcnow(), status="running")
        )
    idle.lapse(build_id)
    assert queue.reap(idle.db) == [build_id]
    lost = idle.build(build_id)
    assert (lost["status"], lost["reason"]) == ("failed", "worker_lost")
