"""Build workers: claim a queued build, run its jobs stage by stage with its driver,
keep its output and artifacts, and settle its status.

A worker renews its lease on the build while it runs (and notices kills then); if
it dies, another worker's reaper fails or requeues the build (kiln.queue). Told to
stop, it lets the running job finish within the grace period, then kills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TypeVar

from sqlmodel import col, select, update

from kiln.background import queue
from kiln.background.loops import Background
from kiln.core.config import Settings
from kiln.domain import build_targets, events, manifest
from kiln.domain.build_views import build_view
from kiln.domain.builds import because, finish_unstarted, job_failed
from kiln.domain.masking import OutputLog
from kiln.domain.webhook_targets import TargetRefused
from kiln.drivers import registry
from kiln.drivers.base import (
    ArtifactMissing,
    ArtifactSpec,
    BuildPlan,
    DriverSettings,
    JobResult,
    JobSpec,
    KeySpec,
    PlacedFile,
    PreparationFailed,
    PreparationStopped,
    SourceSpec,
    Stop,
    Target,
    Workspace,
)
from kiln.store import output
from kiln.store.db import utcnow
from kiln.store.services import Services
from kiln.store.storage import TooLarge
from models import Artifact, Build, BuildKey, BuildObject, BuildVariable, Job

log = logging.getLogger(__name__)
T = TypeVar("T")


async def run(background: Background) -> None:
    services = background.services
    settings = services.settings
    name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    reaped_at = 0.0
    while not background.stopping.is_set():
        if time.monotonic() - reaped_at > settings.lease_seconds / 3:
            for build_id in await services.db.run(lambda: queue.reap(services.db)):
                log.warning("build %s lost its worker", build_id)
            await sweep_workspaces(services)
            reaped_at = time.monotonic()
        claimed = await services.db.run(
            lambda: queue.claim(services.db, name, settings.lease_seconds)
        )
        if claimed is None:
            await background.idle("worker", settings.poll_interval)
            continue
        await _run_one(background, claimed, name)


async def _run_one(background: Background, build_id: int, worker: str) -> None:
    services = background.services
    try:
        await Run(background, build_id, worker).execute()
    except BuildGone:
        log.info("build %s was deleted (with its namespace) while it ran", build_id)
    except Exception:
        log.exception("build %s failed in the worker", build_id)
        await services.db.run(lambda: _settle_after_error(services, build_id))


class BuildGone(Exception):
    """The build's rows are gone: its namespace was deleted while it ran."""


def _one(found: T | None) -> T:
    if found is None:
        raise BuildGone
    return found


@dataclass
class Loaded:
    build: Build
    jobs: list[Job]
    parsed: manifest.Manifest
    plan: BuildPlan


class Run:
    """One build on this worker, from claim to settled status."""

    def __init__(self, background: Background, build_id: int, worker: str) -> None:
        self.background = background
        self.services: Services = background.services
        self.build_id = build_id
        self.worker = worker
        self.stop = Stop(killed=asyncio.Event(), deadline=0.0)
        self.stopped_by_worker = False
        # The job running now and its output, whose size the heartbeat keeps current.
        self.running: tuple[Job, OutputLog] | None = None
        self.recorded_size = 0

    async def execute(self) -> None:
        loaded = await self.services.db.run(self._load)
        self.stop.deadline = time.monotonic() + loaded.build.timeout_seconds
        async with self._heartbeat():
            status, reason = await self._run_stages(loaded)
        await self.services.db.run(lambda: self._finish(status, reason))

    # -- loading -------------------------------------------------------------

    def _load(self) -> Loaded:
        db, secrets = self.services.db, self.services.secrets
        with db.transaction() as s:
            build = _one(s.exec(select(Build).where(Build.id == self.build_id)).one_or_none())
            jobs = list(
                s.exec(select(Job).where(Job.build_id == self.build_id).order_by(col(Job.position)))
            )
            given = BuildObject.build_id == self.build_id
            objects = s.exec(select(BuildObject).where(given)).all()
            variables = s.exec(
                select(BuildVariable)
                .where(BuildVariable.build_id == self.build_id)
                .order_by(col(BuildVariable.id))
            ).all()
            keys = s.exec(select(BuildKey).where(BuildKey.build_id == self.build_id)).all()
            parsed = manifest.parse(build.manifest)
            env = parsed.environment()
            masked = []
            for variable in variables:
                value = secrets.decrypt(variable.value)
                env[variable.key] = value
                if variable.masked:
                    masked.append(value)
            specs = {
                k.name: KeySpec(k.name, secrets.decrypt(k.private_key), k.config) for k in keys
            }
            driver = parsed.driver
            plan = BuildPlan(
                build_id=self.build_id,
                env=env,
                masked=masked,
                sources=[
                    SourceSpec(src.url, src.ref, src.directory) for src in manifest.sources(parsed)
                ],
                files=[
                    PlacedFile(
                        self.services.storage.local_path(o.storage_key),
                        manifest.workspace_relative(o.destination) or o.destination,
                    )
                    for o in objects
                ],
                # The ssh driver's login key is the driver's, not the jobs'.
                keys=[specs[name] for name in parsed.keys if name in specs],
                target=Target(
                    image=driver.image,
                    workspace=driver.workspace,
                    address=driver.address,
                    user=driver.user,
                    login_key=specs.get(driver.key) if driver.key else None,
                    host_key=driver.host_key,
                ),
            )
            events.emit(build.namespace_id, "build.started", lambda: build_view(build))
        return Loaded(build, jobs, parsed, plan)

    # -- running -------------------------------------------------------------

    async def _run_stages(self, loaded: Loaded) -> tuple[str, str | None]:
        driver = registry.get(loaded.build.driver, driver_settings(self.services.settings))
        first = self._log(loaded.jobs[0], loaded.plan)
        try:
            plan = await reachable(loaded.plan, self.services.settings)
            workspace = await driver.prepare(plan, first, self.stop)
        except PreparationFailed as exc:
            await first.write(f"kiln: {exc}\n".encode())
            await first.close()
            status, reason = self._prepared_not(exc)
            size = first.path.stat().st_size
            await self.services.db.run(lambda: self._job_done(loaded.jobs[0], status, None, size))
            return status, reason
        try:
            return await self._stages(loaded, workspace, first)
        finally:
            await workspace.close()

    def _prepared_not(self, exc: PreparationFailed) -> tuple[str, str]:
        """The status and reason of a build whose workspace could not be prepared."""
        if not isinstance(exc, PreparationStopped):
            return "failed", because("preparation_failed", str(exc))
        if self.stopped_by_worker:
            return "failed", "worker_stopped"
        return exc.status, exc.status

    async def _stages(
        self, loaded: Loaded, workspace: Workspace, first: OutputLog
    ) -> tuple[str, str | None]:
        """The build's status and reason; the reason names the first failed job of the
        stage that failed it (or, for `passed_with_failures`, the first allowed one)."""
        allowed = set(loaded.parsed.allow_failures)
        outcome: tuple[str, str | None] = ("passed", None)
        for n, stage in enumerate(loaded.parsed.stages):
            if n and self.background.stopping.is_set():
                return "failed", "worker_stopped"
            failure: str | None = None
            for job in (j for j in loaded.jobs if j.stage == stage):
                sink = first if job is loaded.jobs[0] else self._log(job, loaded.plan)
                result = await self._job(job, workspace, sink)
                if result.status in ("killed", "timed_out"):
                    if self.stopped_by_worker:
                        return "failed", "worker_stopped"
                    return result.status, result.status
                if result.status == "failed" and failure is None:
                    failure = _job_failure(job.name, result)
            if failure is not None and stage not in allowed:
                return "failed", failure
            if failure is not None and outcome[1] is None:
                outcome = ("passed_with_failures", failure)
        return outcome

    async def _job(self, job: Job, workspace: Workspace, sink: OutputLog) -> JobResult:
        await self.services.db.run(lambda: self._job_started(job))
        spec = JobSpec(
            name=job.name,
            commands=json.loads(job.commands),
            artifacts=[ArtifactSpec(a["path"], a["name"]) for a in json.loads(job.artifacts)],
        )
        self.running, self.recorded_size = (job, sink), 0
        try:
            result = await workspace.run_job(spec, sink, self.stop)
        finally:
            self.running = None
        for artifact in spec.artifacts:
            await self._collect(job, workspace, artifact, sink)
        await sink.close()
        size = output.path(self.services, job).stat().st_size
        await self.services.db.run(
            lambda: self._job_done(job, result.status, result.exit_code, size)
        )
        return result

    async def _collect(
        self, job: Job, workspace: Workspace, spec: ArtifactSpec, sink: OutputLog
    ) -> None:
        upload = self.services.storage.upload(limit=self.services.settings.max_object_size)
        try:
            async for chunk in workspace.artifact(spec):
                await upload.write(chunk)
            stored = await upload.commit()
        except ArtifactMissing as missing:
            await upload.abort()
            await sink.write(f"kiln: artifact {spec.path} not found: {missing}\n".encode())
            return
        except TooLarge:
            await upload.abort()
            await sink.write(f"kiln: artifact {spec.path} is too large to keep\n".encode())
            return
        except OSError as exc:
            await upload.abort()
            await sink.write(f"kiln: artifact {spec.path} could not be read: {exc}\n".encode())
            return

        def record() -> None:
            with self.services.db.transaction() as s:
                s.add(
                    Artifact(
                        build_id=self.build_id,
                        job_id=job.id or 0,
                        name=spec.name,
                        path=spec.path,
                        size=stored.size,
                        md5=stored.md5,
                        sha256=stored.sha256,
                        storage_key=stored.key,
                    )
                )

        await self.services.db.run(record)

    def _log(self, job: Job, plan: BuildPlan) -> OutputLog:
        return OutputLog(output.path(self.services, job), plan.masked)

    # -- lease, kills and stopping ------------------------------------------

    @contextlib.asynccontextmanager
    async def _heartbeat(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _beat(self) -> None:
        """Renew the lease, watch for kills, and kill the job when a stop's grace runs out."""
        settings = self.services.settings
        db = self.services.db
        stop_by: float | None = None
        while True:
            # The claim has just taken the lease: the first renewal can wait a beat.
            await self.background.idle(
                f"kill-{self.build_id}", min(settings.lease_seconds / 3, 0.5)
            )
            killed = await db.run(
                lambda: queue.renew(db, self.build_id, self.worker, settings.lease_seconds)
            )
            if killed or killed is None:  # killed, or the lease was lost to a reaper
                self.stop.killed.set()
            await self._record_output_size()
            if self.background.stopping.is_set() and stop_by is None:
                stop_by = time.monotonic() + max(
                    0.0, settings.grace_seconds - settings.kill_grace_seconds - 1
                )
            if stop_by is not None and time.monotonic() >= stop_by:
                self.stopped_by_worker = True
                self.stop.killed.set()

    async def _record_output_size(self) -> None:
        """Bring the running job's `output_size` up to what its output file holds."""
        if self.running is None:
            return
        job, sink = self.running
        try:
            size = sink.path.stat().st_size
        except FileNotFoundError:
            return
        if size == self.recorded_size:
            return
        db = self.services.db

        def record() -> None:
            with db.transaction() as s:
                # Only while it runs: once it is done, `_job_done` has the last word.
                s.exec(
                    update(Job)
                    .where(col(Job.id) == job.id, col(Job.status) == "running")
                    .values(output_size=size)
                )

        try:
            await db.run(record)
        except Exception:
            # The next beat tries again; a heartbeat that died would lose the build's lease.
            log.warning("could not record job %s's output size", job.id, exc_info=True)
            return
        self.recorded_size = size

    # -- recording ------------------------------------------------------------

    def _job_started(self, job: Job) -> None:
        with self.services.db.transaction() as s:
            row = _one(s.exec(select(Job).where(Job.id == job.id)).one_or_none())
            row.status, row.started_at = "running", utcnow()

    def _job_done(self, job: Job, status: str, exit_code: int | None, size: int) -> None:
        with self.services.db.transaction() as s:
            row = _one(s.exec(select(Job).where(Job.id == job.id)).one_or_none())
            row.status, row.exit_code, row.output_size = status, exit_code, size
            row.finished_at = utcnow()
            if row.started_at is None:
                row.started_at = row.finished_at

    def _finish(self, status: str, reason: str | None) -> None:
        with self.services.db.transaction() as s:
            build = _one(s.exec(select(Build).where(Build.id == self.build_id)).one_or_none())
            if build.status != "running" or build.worker != self.worker:
                return  # a reaper settled it (`worker_lost`), or queued it again
            finish_unstarted(build, status, reason)
            build.worker = None
            events.emit(build.namespace_id, "build.finished", lambda: build_view(build))


def _job_failure(name: str, result: JobResult) -> str:
    """The reason a failed job gives its build: how it exited, or which command of it
    could not be started (its output says more)."""
    if result.not_started is None:
        return job_failed(name, result.exit_code)
    return because("command_not_started", f"{name}: {result.not_started}")


def _settle_after_error(services: Services, build_id: int) -> None:
    with services.db.transaction() as s:
        build = s.exec(select(Build).where(Build.id == build_id)).one_or_none()
        if build is not None and build.status == "running":
            finish_unstarted(build, "failed", "worker_error")


async def sweep_workspaces(services: Services) -> None:
    """Remove what finished builds left behind on this machine, in every driver enabled."""
    settings = services.settings

    async def running(build_ids: set[int]) -> set[int]:
        return await services.db.run(lambda: queue.still_running(services.db, build_ids))

    for name in sorted(settings.enabled_drivers):
        try:
            driver = registry.get(name, driver_settings(settings))
        except (LookupError, NotImplementedError):
            continue
        for left in await driver.sweep(running):
            log.warning("could not remove %s, left by a finished build; retrying later", left)


def driver_settings(settings: Settings) -> DriverSettings:
    data_dir = settings.data_dir.resolve()
    # One name per deployment (its database), on what it leaves on a shared Docker Engine.
    instance = hashlib.sha256(settings.resolved_database_url.encode()).hexdigest()[:12]
    return DriverSettings(
        root=data_dir / "workspaces",
        kill_grace=settings.kill_grace_seconds,
        instance=instance,
        nice=settings.worker_nice,
        hidden=(data_dir,),
        local_confined=not settings.local_driver_unconfined,
        local_network=settings.local_driver_network,
        docker_host=settings.docker_host,
        docker_network=settings.docker_network,
        docker_pull=settings.docker_pull,
        memory_bytes=settings.job_memory_mb * 1024 * 1024,
        cpus=settings.job_cpus,
        pids=settings.job_pids,
        git_protocols=build_targets.git_protocols(allow_local=settings.sources_allow_local),
    )


async def reachable(plan: BuildPlan, settings: Settings) -> BuildPlan:
    """`plan` once its sources and ssh host have been resolved to addresses builds may
    reach (kiln.domain.build_targets); the ssh driver then connects to the address
    approved here, not to what the name resolves to a moment later."""
    allow = settings.builds_allow_private
    try:
        for source in plan.sources:
            remote = build_targets.source_remote(source.url)
            if remote is not None:
                await build_targets.resolve_remote(remote, allow_private=allow, what=source.url)
        address = plan.target.address
        if address is None:
            return plan
        remote = build_targets.ssh_address(address)
        found = await build_targets.resolve_remote(remote, allow_private=allow, what=address)
    except TargetRefused as refused:
        raise PreparationFailed(str(refused)) from None
    host = f"[{found}]" if found.version == 6 else str(found)
    return replace(plan, target=replace(plan.target, address=f"{host}:{remote.port}"))
