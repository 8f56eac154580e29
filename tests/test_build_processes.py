"""Workers and schedulers as real processes: crashes, graceful stops, restarts and
two schedulers racing for the same due time."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from kiln.store.db import Database, session
from models import CronJob
from tests.processes import KilnBackground, KilnServe, kiln_env
from tests.support import wait_for_build, wait_until

pytestmark = pytest.mark.slow

SCHEDULER_TICK = 0.5  # kiln.background.scheduler idles at most this long between looks
FAST = {
    "KILN_POLL_INTERVAL": "0.05",
    "KILN_LEASE_SECONDS": "1",
    "KILN_KILL_GRACE_SECONDS": "1",
    "KILN_LOG_LEVEL": "warning",
}


def submit(client: httpx.Client, auth: dict[str, str], commands: str) -> dict[str, Any]:
    manifest = f"driver: {{type: local}}\nstages: [a]\njobs:\n- stage: a\n  commands: {commands}\n"
    response = client.post("/api/v1/builds", json={"manifest": manifest}, headers=auth)
    assert response.status_code == 202, response.text
    build: dict[str, Any] = response.json()
    return build


def admin(server: KilnServe) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_token()}"}


def running(client: httpx.Client, auth: dict[str, str], build_id: int) -> bool:
    build = client.get(f"/api/v1/builds/{build_id}", headers=auth).json()
    return bool(build["_embedded"]["jobs"][0]["status"] == "running")


@dataclass
class Api:
    """`kiln serve --workers 0` on a fresh data directory, and a client of it."""

    data: Path
    env: dict[str, str]
    server: KilnServe
    client: httpx.Client
    auth: dict[str, str]

    def worker(self) -> KilnBackground:
        return KilnBackground("worker", self.data, self.env)

    def build(self, build_id: int) -> dict[str, Any]:
        build: dict[str, Any] = self.client.get(
            f"/api/v1/builds/{build_id}", headers=self.auth
        ).json()
        return build

    def output(self, build: dict[str, Any]) -> str:
        href = build["_embedded"]["jobs"][0]["_links"]["output"]["href"]
        return self.client.get(href, headers=self.auth).text


@contextmanager
def api_without_workers(tmp_path: Path) -> Iterator[Api]:
    data = tmp_path / "data"
    env = kiln_env(**FAST)
    with KilnServe(data, "--workers", "0", env=env) as server, server.client() as client:
        yield Api(data, env, server, client, admin(server))


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_a_worker_killed_mid_build_loses_it_and_another_fails_it(tmp_path: Path) -> None:
    with api_without_workers(tmp_path) as api:
        build = submit(api.client, api.auth, '["sleep 60"]')
        with api.worker() as doomed:
            wait_until(lambda: running(api.client, api.auth, build["id"]), what="the job to run")
            doomed.stop(signal.SIGKILL)
        with api.worker():
            lost = wait_for_build(api.client, api.auth, build["id"])
        assert lost["status"] == "failed"
        assert lost["reason"] == "worker_lost"


def test_sigterm_lets_the_running_job_finish(tmp_path: Path) -> None:
    with api_without_workers(tmp_path) as api:
        build = submit(api.client, api.auth, '["sleep 2", "echo finished"]')
        with api.worker() as worker:
            wait_until(lambda: running(api.client, api.auth, build["id"]), what="the job to run")
            assert worker.stop(signal.SIGTERM) == 0
        done = api.build(build["id"])
        assert done["status"] == "passed", worker.output
        assert "finished" in api.output(done)


def test_kiln_worker_and_its_jobs_run_below_the_api(tmp_path: Path) -> None:
    with api_without_workers(tmp_path) as api:
        build = submit(api.client, api.auth, '["nice"]')
        with api.worker() as worker:
            done = wait_for_build(api.client, api.auth, build["id"])
            assert worker.process is not None
            assert niceness(worker.process.pid) >= 10
        assert int(api.output(done).splitlines()[1]) >= 10
        assert api.server.process is not None
        assert niceness(api.server.process.pid) == niceness(os.getpid())  # the API keeps its own


def test_restarting_serve_loses_no_queued_build(tmp_path: Path) -> None:
    with api_without_workers(tmp_path) as api:
        build = submit(api.client, api.auth, '["echo ran"]')
    with KilnServe(api.data, env=api.env) as again, again.client() as client:
        assert wait_for_build(client, api.auth, build["id"])["status"] == "passed"


def test_two_schedulers_fire_a_due_cron_job_once(tmp_path: Path) -> None:
    with api_without_workers(tmp_path) as api:
        data, env, client, auth = api.data, api.env, api.client, api.auth
        manifest = 'driver: {type: local}\nstages: [a]\njobs:\n- stage: a\n  commands: ["true"]\n'
        job = client.post(
            "/api/v1/cron",
            json={"name": "often", "schedule": "@hourly", "manifest": manifest},
            headers=auth,
        ).json()
        due = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
        db = Database(f"sqlite:///{data / 'kiln.db'}")
        verbose = {**env, "KILN_LOG_LEVEL": "info"}
        with (
            KilnBackground("scheduler", data, verbose) as one,
            KilnBackground("scheduler", data, verbose) as two,
        ):
            wait_until(
                lambda: "running scheduler" in one.output and "running scheduler" in two.output,
                what="both schedulers to run",
            )
            with db.transaction():
                session().exec(
                    update(CronJob).where(col(CronJob.id) == job["id"]).values(next_run=due)
                )
            db.dispose()
            fired = wait_until(
                lambda: client.get(f"/api/v1/cron/{job['id']}/builds", headers=auth).json()[
                    "_embedded"
                ]["builds"],
                what="the cron job to fire",
            )
            # A second firing would come within a tick of the other scheduler (it looks
            # every 0.5 s at most): give each two ticks.
            time.sleep(2 * SCHEDULER_TICK)
            builds = client.get(f"/api/v1/cron/{job['id']}/builds", headers=auth).json()
        assert len(builds["_embedded"]["builds"]) == 1
        assert fired[0]["trigger"] == "cron"
        after = client.get(f"/api/v1/cron/{job['id']}", headers=auth).json()
        assert after["prev_run"] == due.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert after["next_run"] > after["prev_run"]
