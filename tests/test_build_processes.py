"""Workers and schedulers as real processes: crashes, graceful stops, restarts and
two schedulers racing for the same due time."""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from kiln.db import Database, session
from models import CronJob
from tests.processes import TOKEN_LINE, KilnBackground, KilnServe, kiln_env
from tests.support import wait_for_build

pytestmark = pytest.mark.slow

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
    token = next(line for line in server.output.splitlines() if TOKEN_LINE.match(line))
    return {"Authorization": f"Bearer {token}"}


def wait_until(check: Any, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
    return result


def running(client: httpx.Client, auth: dict[str, str], build_id: int) -> bool:
    build = client.get(f"/api/v1/builds/{build_id}", headers=auth).json()
    return bool(build["_embedded"]["jobs"][0]["status"] == "running")


def test_a_worker_killed_mid_build_loses_it_and_another_fails_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = kiln_env(**FAST)
    with KilnServe(data, "--workers", "0", env=env) as server, server.client() as client:
        auth = admin(server)
        build = submit(client, auth, '["sleep 60"]')
        with KilnBackground("worker", data, env) as doomed:
            wait_until(lambda: running(client, auth, build["id"]))
            doomed.stop(signal.SIGKILL)
        with KilnBackground("worker", data, env):
            lost = wait_for_build(client, auth, build["id"], seconds=20)
        assert lost["status"] == "failed"
        assert lost["reason"] == "worker_lost"


def test_sigterm_lets_the_running_job_finish(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = kiln_env(**FAST)
    with KilnServe(data, "--workers", "0", env=env) as server, server.client() as client:
        auth = admin(server)
        build = submit(client, auth, '["sleep 2", "echo finished"]')
        with KilnBackground("worker", data, env) as worker:
            wait_until(lambda: running(client, auth, build["id"]))
            assert worker.stop(signal.SIGTERM) == 0
        done = client.get(f"/api/v1/builds/{build['id']}", headers=auth).json()
        assert done["status"] == "passed", worker.output
        output = client.get(done["_embedded"]["jobs"][0]["_links"]["output"]["href"], headers=auth)
        assert "finished" in output.text


def test_restarting_serve_loses_no_queued_build(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = kiln_env(**FAST)
    with KilnServe(data, "--workers", "0", env=env) as server, server.client() as client:
        auth = admin(server)
        build = submit(client, auth, '["echo ran"]')
    with KilnServe(data, env=env) as again, again.client() as client:
        assert wait_for_build(client, auth, build["id"])["status"] == "passed"


def test_two_schedulers_fire_a_due_cron_job_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = kiln_env(**FAST)
    with KilnServe(data, "--workers", "0", env=env) as server, server.client() as client:
        auth = admin(server)
        manifest = 'driver: {type: local}\nstages: [a]\njobs:\n- stage: a\n  commands: ["true"]\n'
        job = client.post(
            "/api/v1/cron",
            json={"name": "often", "schedule": "@hourly", "manifest": manifest},
            headers=auth,
        ).json()
        due = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
        db = Database(f"sqlite:///{data / 'kiln.db'}")
        with db.transaction():
            session().exec(update(CronJob).where(col(CronJob.id) == job["id"]).values(next_run=due))
        db.dispose()
        with KilnBackground("scheduler", data, env), KilnBackground("scheduler", data, env):
            fired = wait_until(
                lambda: client.get(f"/api/v1/cron/{job['id']}/builds", headers=auth).json()[
                    "_embedded"
                ]["builds"]
            )
            time.sleep(1)  # room for a second firing, were there to be one
            builds = client.get(f"/api/v1/cron/{job['id']}/builds", headers=auth).json()
        assert len(builds["_embedded"]["builds"]) == 1
        assert fired[0]["trigger"] == "cron"
        after = client.get(f"/api/v1/cron/{job['id']}", headers=auth).json()
        assert after["prev_run"] == due.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert after["next_run"] > after["prev_run"]
