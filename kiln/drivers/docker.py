"""The `docker` driver: jobs run in containers on a Docker Engine.

A build gets three Docker volumes of its own, labelled with this deployment's instance
and the build's id: its workspace (mounted where the manifest says, `/workspace` by
default), its $HOME (`/kiln/home`) and its $TMPDIR (`/kiln/tmp`). Every command of a job
runs as `/bin/sh -c <command>` in a fresh container from the build's image with those
volumes mounted, and the container is removed when the command ends: nothing a command
leaves running survives it, as with the local driver, and only files carry over from
one command to the next. Sources are cloned by `git` in such a container (so the image
must have git), files and SSH keys are put into the volumes and artifacts read out of
them through the Engine's archive API, by a container that is created for this and
never started. Commands run as the image's USER; what Kiln puts into the volumes
belongs to that user.

Security: everything in the plan (image name, paths, commands) may come from an
attacker. Containers are never privileged; they run with no-new-privileges, Docker's
default seccomp profile, a small capability set (see CAPABILITIES), limits on memory
(no swap), CPU and processes, in the operator's network, under an init that reaps
orphans. Nothing of the worker's machine is mounted into them: their only mounts are
the build's volumes (and what the Engine itself provides: /etc/hosts, /etc/resolv.conf,
/etc/hostname and its init binary). Their environment is built from scratch (the
image's own plus Kiln's), never the worker's, and their output is streamed to Kiln only
(the Engine keeps no log of it). No shell command line is ever built on the worker from
plan values: commands and arguments go to the Engine as lists. Artifacts must be regular
files inside the workspace reached without any symbolic link.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import secrets
import shlex
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError
from aiodocker.stream import Message, Stream
from aiodocker.volumes import DockerVolume
from yarl import URL

from kiln.drivers.base import (
    ArtifactMissing,
    ArtifactSpec,
    BuildPlan,
    DriverSettings,
    Exit,
    JobResult,
    JobSpec,
    KeySpec,
    NotStarted,
    Output,
    PlacedFile,
    PreparationFailed,
    RunningFilter,
    SourceSpec,
    Stop,
    StopStatus,
    check_stop,
    clone_directory,
    display_url,
    drain,
    stop_reason,
    stopped_during,
    with_newline,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

SHELL = "/bin/sh"
DEFAULT_WORKSPACE = "/workspace"
KILN_DIR = "/kiln"
HOME = f"{KILN_DIR}/home"
TMP = f"{KILN_DIR}/tmp"  # noqa: S108 (in the container, on a volume of the build's own)
# Where a workspace can never be mounted: Kiln's own directory, and the kernel's.
RESERVED = (KILN_DIR, "/proc", "/sys", "/dev")
INSTANCE_LABEL = "kiln.instance"
BUILD_LABEL = "kiln.build"
WORKSPACE_LABEL = "kiln.workspace"
CHUNK = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE
# Docker's default capabilities less NET_RAW (raw sockets: spoofing other containers on
# the bridge), MKNOD, SYS_CHROOT, SETFCAP, SETPCAP and AUDIT_WRITE, which builds do not
# need. What is kept lets a job running as root in its image do what builds do: chown
# and chmod what it unpacks, write files of other users, and let package managers drop
# to an unprivileged user (SETUID/SETGID; no-new-privileges still stops setuid binaries
# from gaining anything).
CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_BIND_SERVICE",
    "SETGID",
    "SETUID",
)
# Docker's reference grammar (distribution/reference): [domain/]path[:tag][@digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
IMAGE = re.compile(
    rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::\w[\w.-]{{0,127}})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?",
    re.ASCII,
)
# How docker-init (tini) says it could not run the container's command.
INIT_FAILED = re.compile(rb"\[FATAL tini \(\d+\)\] exec .* failed: (.*)")
EXEC_FAILED = 127
# Go's os.FileMode type bits, as the Engine reports a path's mode.
GO_MODE_DIR = 1 << 31
GO_MODE_SYMLINK = 1 << 27
GO_MODE_IRREGULAR = 1 << 19
GO_MODE_TYPE = GO_MODE_DIR | GO_MODE_SYMLINK | GO_MODE_IRREGULAR
GO_MODE_TYPE |= (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21)  # devices, pipes, sockets
OOM_KILLED = 137
EXTENDED_HEADERS = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


@dataclass(frozen=True)
class Identity:
    """Whom the image's processes run as (its USER), so that what Kiln puts into the
    volumes belongs to them."""

    uid: int = 0
    gid: int = 0


ROOT = Identity()


@dataclass(frozen=True)
class Entry:
    """One member of a tar archive put into the volumes: a directory, or a file with its
    bytes given or read from a local file."""

    name: str  # relative to the container's root
    mode: int
    data: bytes | None = None
    source: Path | None = None

    @property
    def is_directory(self) -> bool:
        return self.data is None and self.source is None


class NotExecutable(NotStarted):
    """The image has no such program (or cannot run it)."""


class EngineFailed(Exception):
    """The Docker Engine failed (or could not be reached); the message says how."""


# What a request to the Engine raises when it fails (aiodocker reports an Engine it cannot
# reach as a DockerError with status 900).
ENGINE_ERRORS = (DockerError, aiohttp.ClientError)


class DockerDriver:
    def __init__(self, settings: DriverSettings) -> None:
        self.settings = settings

    async def prepare(self, plan: BuildPlan, output: Output, stop: Stop) -> DockerWorkspace:
        workspace = DockerWorkspace(self.settings, plan)
        try:
            await workspace.prepare(output, stop)
        except BaseException:
            await workspace.close()
            raise
        return workspace

    async def sweep(self, still_running: RunningFilter) -> list[str]:
        instance = self.settings.instance
        try:
            docker = connect(self.settings)
        except EngineFailed as failed:
            return [f"what instance {instance} left on the Docker Engine ({failed})"]
        try:
            return await sweep(docker, instance, still_running)
        except ENGINE_ERRORS as error:
            said = engine_failure(error, self.settings)
            return [f"what instance {instance} left on the Docker Engine ({said})"]
        finally:
            await docker.close()


async def sweep(docker: aiodocker.Docker, instance: str, still_running: RunningFilter) -> list[str]:
    label = {"label": [f"{INSTANCE_LABEL}={instance}"]}
    containers = await docker.containers.list(all=True, filters=json.dumps(label))
    listed = await docker.volumes.list(filters=label)  # type: ignore[no-untyped-call]
    volumes: list[dict[str, Any]] = listed.get("Volumes") or []
    found = [(build_of(c["Labels"]), "container", str(c["Id"])) for c in containers]
    found += [(build_of(v.get("Labels")), "volume", str(v["Name"])) for v in volumes]
    running = await still_running({build_id for build_id, _, _ in found if build_id is not None})
    left = []
    # Containers (listed first) before volumes: a volume in use cannot be removed.
    for build_id, kind, name in found:
        if build_id is None or build_id in running:
            continue
        if not await remove(docker, kind, name):
            left.append(f"{kind} {name}")
    return left


def build_of(labels: dict[str, str] | None) -> int | None:
    value = (labels or {}).get(BUILD_LABEL, "")
    return int(value) if value.isdecimal() else None


class DockerWorkspace:
    def __init__(self, settings: DriverSettings, plan: BuildPlan) -> None:
        self.settings = settings
        self.plan = plan
        self.image = image_name(plan)
        self.workspace = workspace_path(plan)
        check_env(plan.env)
        for key in plan.keys:
            check_key_name(key.name)
        self.name = f"kiln-{safe_name(settings.instance)}-build-{plan.build_id}-"
        self.name += secrets.token_hex(4)
        self.labels = {
            INSTANCE_LABEL: settings.instance,
            BUILD_LABEL: str(plan.build_id),
            WORKSPACE_LABEL: self.name,
        }
        self.volumes = {
            self.workspace: f"{self.name}-work",
            HOME: f"{self.name}-home",
            TMP: f"{self.name}-tmp",
        }
        self.docker: aiodocker.Docker | None = None
        self.image_id = ""
        self.identity = ROOT
        self.base_env: dict[str, str] = {}
        self._keeper: DockerContainer | None = None
        self._containers = 0

    # Preparation

    async def prepare(self, output: Output, stop: Stop) -> None:
        check_stop(stop, "connecting to the Docker Engine")
        try:
            self.docker = connect(self.settings)
            config = await self._image(self.docker, stop)
            self.base_env = base_env(self.plan, config)
            await self._create_volumes(self.docker)
            self.identity = await self._identity(config.get("User") or "")
            # Keys first, so that private sources can be cloned over SSH with them.
            if self.identity != ROOT or self.plan.keys:
                await self._put(self._home_entries(), stop, "preparing the home directory")
            for source in self.plan.sources:
                await self._clone(source, output, stop)
            if self.plan.files:
                await self._put(self._file_entries(), stop, "placing files")
        except EngineFailed as failed:
            raise PreparationFailed(str(failed)) from None
        except ENGINE_ERRORS as error:
            raise PreparationFailed(engine_failure(error, self.settings)) from None
        except OSError as error:  # an object that could not be read
            raise PreparationFailed(f"preparing the workspace failed: {error}") from None

    async def _image(self, docker: aiodocker.Docker, stop: Stop) -> dict[str, Any]:
        """The image's configuration, pulled first as the pull policy says."""
        policy = self.settings.docker_pull
        if policy == "always":
            await self._pull(docker, stop)
        try:
            image = await docker.images.inspect(self.image)
        except DockerError as error:
            if error.status != 404:
                raise
            if policy != "if-not-present":
                said = f"image {self.image} is not on the Docker Engine"
                raise PreparationFailed(f"{said} (docker_pull is {policy})") from None
            await self._pull(docker, stop)
            image = await docker.images.inspect(self.image)
        self.image_id = str(image["Id"])
        config: dict[str, Any] = image.get("Config") or {}
        return config

    async def _pull(self, docker: aiodocker.Docker, stop: Stop) -> None:
        what = f"pulling image {self.image}"
        check_stop(stop, what)
        try:
            await until_stopped(docker.images.pull(self.image), stop, what)
        except DockerError as error:
            if error.status == 900:  # the Engine itself is unreachable
                raise
            said = f"image {self.image} is not on the Docker Engine and could not be pulled"
            if self.settings.docker_pull == "always":
                said = f"image {self.image} could not be pulled (docker_pull is always)"
            raise PreparationFailed(f"{said}: {error.message}") from None

    async def _create_volumes(self, docker: aiodocker.Docker) -> None:
        # aiodocker's volume calls have no type annotations.
        for volume in self.volumes.values():
            config = {"Name": volume, "Labels": self.labels}
            await docker.volumes.create(config)  # type: ignore[no-untyped-call]

    async def _identity(self, user: str) -> Identity:
        """Whom the image runs as. Its /etc/passwd (and /etc/group) are read, as Docker
        does, unless the USER is root or a uid:gid."""
        name, _, group = user.partition(":")
        if name in ("", "root", "0") and group in ("", "root", "0"):
            return ROOT
        if name.isdecimal() and group.isdecimal():
            return Identity(int(name), int(group))
        passwd = await self._image_file("/etc/passwd")
        groups = await self._image_file("/etc/group") if group and not group.isdecimal() else ""
        return identity(user, passwd, groups)

    async def _image_file(self, path: str) -> str:
        """The text of a regular file of the image; empty if there is none."""
        try:
            chunks = [chunk async for chunk in self._read(await self.keeper(), path, path)]
        except ArtifactMissing:
            return ""
        return b"".join(chunks).decode(errors="replace")

    def _home_entries(self) -> list[Entry]:
        entries = [Entry(relative(HOME), 0o700), Entry(relative(TMP), 0o700)]
        entries.append(Entry(relative(self.workspace), 0o755))
        if not self.plan.keys:
            return entries
        ssh = f"{relative(HOME)}/.ssh"
        entries.append(Entry(ssh, 0o700))
        for key in self.plan.keys:
            entries.append(
                Entry(f"{ssh}/{key.name}", 0o600, with_newline(key.private_key).encode())
            )
        # The config always exists, so that `ssh -F` (see ssh_command) can read it.
        config = "".join(with_newline(key.config or "") for key in self.plan.keys)
        entries.append(Entry(f"{ssh}/config", 0o600, config.encode()))
        return entries

    def _file_entries(self) -> list[Entry]:
        top = relative(self.workspace)
        entries: list[Entry] = []
        for placed in self.plan.files:
            parts = destination_parts(placed)
            # The Engine makes missing directories itself, but owned by root.
            if self.identity != ROOT:
                parents = range(1, len(parts))
                entries += [Entry("/".join([top, *parts[:n]]), 0o755) for n in parents]
            entries.append(Entry("/".join([top, *parts]), 0o644, source=placed.source))
        return entries

    async def _put(self, entries: list[Entry], stop: Stop, what: str) -> None:
        check_stop(stop, what)
        for entry in entries:  # fail on an unreadable object before the Engine does
            if entry.source is not None and not entry.source.is_file():
                raise PreparationFailed(f"{what} failed: {entry.source.name} is not readable")
        keeper = await self.keeper()
        archive = tar_stream(entries, self.identity)
        await keeper.put_archive("/", archive)  # type: ignore[no-untyped-call]

    async def _clone(self, source: SourceSpec, output: Output, stop: Stop) -> None:
        directory = clone_directory(source)
        env = {**self.base_env, **self.plan.env, "GIT_TERMINAL_PROMPT": "0"}
        url = display_url(source.url)
        await output.write(f"kiln: cloning {url}\n".encode())
        clone = ["git", "clone", "--quiet", "--", source.url, directory]
        await self._git(clone, env, output, stop, f"git clone of {url}")
        if source.ref is None:
            return
        if source.ref.startswith("-"):
            raise PreparationFailed(f"cannot check out {source.ref!r}: not a ref")
        await output.write(f"kiln: checking out {source.ref}\n".encode())
        checkout = ["git", "-C", directory, "checkout", "--quiet", source.ref]
        await self._git(checkout, env, output, stop, f"git checkout of {source.ref} in {directory}")

    async def _git(
        self, argv: list[str], env: dict[str, str], output: Output, stop: Stop, what: str
    ) -> None:
        check_stop(stop, what)
        try:
            result = await self._run(argv, env, output, stop)
        except NotExecutable as exc:
            said = f"the image {self.image} has no git ({exc})"
            raise PreparationFailed(f"{what} failed: {said}") from None
        except NotStarted as exc:
            raise PreparationFailed(f"{what} failed: cannot start its container: {exc}") from None
        if result.stopped is not None:
            raise stopped_during(result.stopped, what)
        if result.code != 0:
            raise PreparationFailed(f"{what} failed (exit {result.code})")

    # Jobs

    async def run_job(self, job: JobSpec, output: Output, stop: Stop) -> JobResult:
        env = {**self.base_env, "KILN_JOB_NAME": job.name, **self.plan.env}
        code = 0
        for command in job.commands:
            if (reason := stop_reason(stop)) is not None:
                return JobResult(reason, None)
            await output.write(f"$ {command}\n".encode())
            try:
                result = await self._run([SHELL, "-c", command], env, output, stop)
            except NotStarted as exc:
                said = f"cannot run {SHELL}: {exc}"
                await output.write(f"kiln: {said}\n".encode())
                return JobResult("failed", None, said)
            except EngineFailed as failed:
                await output.write(f"kiln: {failed}\n".encode())
                return JobResult("failed", None)
            if result.stopped is not None:
                return JobResult(result.stopped, None)
            code = result.code or 0
            if code != 0:
                return JobResult("failed", code)
        return JobResult("passed", code)

    async def _run(self, argv: list[str], env: dict[str, str], output: Output, stop: Stop) -> Exit:
        """Runs `argv` in a container of its own, streaming its output until it exits or
        `stop` says it must be stopped, then removes the container. Raises NotStarted if
        it cannot be started, EngineFailed if the Engine fails meanwhile."""
        if (reason := stop_reason(stop)) is not None:
            return Exit(None, reason)
        docker = self._engine()
        self._containers += 1
        name = f"{self.name}-{self._containers}"
        try:
            container = await docker.containers.create(self._config(argv, env), name=name)
        except ENGINE_ERRORS as error:
            raise NotStarted(engine_failure(error, self.settings)) from None
        try:
            return await self._attached(docker, container, output, stop)
        except ENGINE_ERRORS as error:
            raise EngineFailed(engine_failure(error, self.settings)) from None
        finally:
            await remove(docker, "container", container.id)

    async def _attached(
        self, docker: aiodocker.Docker, container: DockerContainer, output: Output, stop: Stop
    ) -> Exit:
        async with contextlib.AsyncExitStack() as stack:
            try:
                # Attached before it starts, so that none of its output is missed.
                stream = await stack.enter_async_context(attach(docker, container.id))
                await container.start()
            except ENGINE_ERRORS as error:
                raise NotStarted(engine_failure(error, self.settings)) from None
            pump = Pump(stream, output)
            pumping = asyncio.create_task(pump.run())
            stack.callback(pumping.cancel)
            reason = await wait_for_end(pumping, stop)
            if reason is not None:
                await self._terminate(container)
                await drain(pumping, *ENGINE_ERRORS)
                return Exit(None, reason)
        code = int((await container.wait())["StatusCode"])
        if code == EXEC_FAILED and (said := pump.init_failure()) is not None:
            raise NotExecutable(said)
        if code == OOM_KILLED and (await container.show())["State"].get("OOMKilled"):
            limit = self.settings.memory_bytes // 1024**2
            await output.write(f"kiln: killed: out of memory (limit {limit} MiB)\n".encode())
        return Exit(code)

    async def _terminate(self, container: DockerContainer) -> None:
        """SIGTERM to the command (through the container's init); SIGKILL to the whole
        container if it outlives the grace period."""
        await signal(container, "SIGTERM")
        try:
            await asyncio.wait_for(container.wait(), self.settings.kill_grace)
        except TimeoutError:
            await signal(container, "SIGKILL")
            await container.wait()

    def _config(self, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
        return {
            "Image": self.image_id,
            "Entrypoint": argv[:1],
            "Cmd": argv[1:],
            "Env": [f"{name}={value}" for name, value in env.items()],
            "WorkingDir": self.workspace,
            "AttachStdin": False,
            "AttachStdout": True,
            "AttachStderr": True,
            "OpenStdin": False,
            "Tty": False,
            "Labels": self.labels,
            "HostConfig": self._host_config(),
        }

    def _host_config(self) -> dict[str, Any]:
        settings = self.settings
        config: dict[str, Any] = {
            "Privileged": False,
            "SecurityOpt": ["no-new-privileges"],
            "CapDrop": ["ALL"],
            "CapAdd": list(CAPABILITIES),
            "Init": True,
            "Memory": settings.memory_bytes,
            "MemorySwap": settings.memory_bytes,
            "PidsLimit": settings.pids,
            "NetworkMode": settings.docker_network,
            "IpcMode": "private",
            "Mounts": [
                {"Type": "volume", "Source": volume, "Target": target}
                for target, volume in self.volumes.items()
            ],
            "LogConfig": {"Type": "none", "Config": {}},
        }
        if settings.cpus > 0:
            config["NanoCpus"] = int(settings.cpus * 1e9)
        return config

    # Artifacts

    async def artifact(self, spec: ArtifactSpec) -> AsyncIterator[bytes]:
        parts = artifact_parts(spec.path)
        if parts is None:
            raise ArtifactMissing(f"{spec.path} is outside the workspace")
        if not parts:
            raise ArtifactMissing("the workspace itself is not a regular file")
        try:
            keeper = await self.keeper()
            for depth in range(1, len(parts)):
                await self._check_directory(keeper, parts[:depth])
        except ENGINE_ERRORS as error:
            raise OSError(engine_failure(error, self.settings)) from None
        except EngineFailed as failed:
            raise OSError(str(failed)) from None
        path = "/".join([self.workspace, *parts])
        async for chunk in self._read(keeper, path, "/".join(parts)):
            yield chunk

    async def _check_directory(self, keeper: DockerContainer, parts: list[str]) -> None:
        shown = "/".join(parts)
        mode = await path_mode(self._engine(), keeper, "/".join([self.workspace, *parts]))
        if mode is None:
            raise ArtifactMissing(f"{shown} does not exist")
        if mode & GO_MODE_SYMLINK:
            raise ArtifactMissing(f"{shown} is a symbolic link")
        if not mode & GO_MODE_DIR:
            raise ArtifactMissing(f"{shown} is not a directory")

    async def _read(self, keeper: DockerContainer, path: str, shown: str) -> AsyncIterator[bytes]:
        """The bytes of the regular file at `path` (in the keeper), in chunks; raises
        ArtifactMissing before the first unless it is one."""
        query = self._engine()._query(
            f"containers/{keeper.id}/archive", method="GET", params={"path": path}
        )
        try:
            async with query as response:
                try:
                    check_regular(stat_mode(response.headers), shown)
                    size = await member_size(response.content, shown)
                    while size > 0:
                        chunk = await response.content.read(min(CHUNK, size))
                        if not chunk:
                            raise OSError(f"{shown}: the Docker Engine sent less than the file")
                        size -= len(chunk)
                        yield chunk
                finally:
                    response.close()  # the rest of the archive is not wanted
        except DockerError as error:
            if error.status == 404:
                raise ArtifactMissing(f"{shown} does not exist") from None
            raise OSError(engine_failure(error, self.settings)) from None
        except (aiohttp.ClientError, asyncio.IncompleteReadError) as error:
            raise OSError(f"reading {shown} from the Docker Engine failed: {error}") from None

    async def keeper(self) -> DockerContainer:
        """A container that is never started, with the volumes mounted: the Engine puts
        files in and reads them out through it."""
        if self._keeper is None:
            config = self._config([SHELL], {})
            name = f"{self.name}-files"
            self._keeper = await self._engine().containers.create(config, name=name)
        return self._keeper

    # Removal

    async def close(self) -> None:
        docker, self.docker = self.docker, None
        if docker is None:
            return
        try:
            left = await self._remove_all(docker)
        except ENGINE_ERRORS as error:
            left = [engine_failure(error, self.settings)]
        finally:
            await docker.close()
        if left:
            log.warning("could not remove %s; the next sweep retries", ", ".join(left))

    async def _remove_all(self, docker: aiodocker.Docker) -> list[str]:
        label = json.dumps({"label": [f"{WORKSPACE_LABEL}={self.name}"]})
        containers = await docker.containers.list(all=True, filters=label)
        left = []
        for container in containers:
            if not await remove(docker, "container", container.id):
                left.append(f"container {container.id}")
        for volume in self.volumes.values():
            if not await remove(docker, "volume", volume):
                left.append(f"volume {volume}")
        return left

    def _engine(self) -> aiodocker.Docker:
        if self.docker is None:
            raise EngineFailed("the workspace is closed")
        return self.docker


# The Engine


def connect(settings: DriverSettings) -> aiodocker.Docker:
    try:
        return aiodocker.Docker(url=settings.docker_host)
    # aiodocker asserts that it found an address (no DOCKER_HOST, no local socket).
    except (AssertionError, ValueError, DockerError, OSError) as error:
        where = engine_address(settings)
        raise EngineFailed(f"the Docker Engine at {where} is unreachable: {error}") from None


def engine_address(settings: DriverSettings) -> str:
    return settings.docker_host or "DOCKER_HOST or the local socket"


def engine_failure(error: BaseException, settings: DriverSettings) -> str:
    if isinstance(error, DockerError) and error.status == 900:
        where = engine_address(settings)
        return f"the Docker Engine at {where} is unreachable: {error.message}"
    if isinstance(error, DockerError):
        return f"the Docker Engine refused: {error.message}"
    return f"the Docker Engine failed: {error!r}"


async def remove(docker: aiodocker.Docker, kind: str, name: str) -> bool:
    """Remove a container (killing it) or a volume; whether it is gone."""
    try:
        if kind == "container":
            await docker.containers.container(name).delete(force=True, v=True)
        else:
            await DockerVolume(docker, name).delete()  # type: ignore[no-untyped-call]
    except DockerError as error:
        if error.status == 404:
            return True
        log.debug("removing %s %s failed: %s", kind, name, error)
        return False
    except (aiohttp.ClientError, OSError) as error:
        log.debug("removing %s %s failed: %r", kind, name, error)
        return False
    return True


async def signal(container: DockerContainer, name: str) -> None:
    with contextlib.suppress(DockerError):  # it has exited meanwhile
        await container.kill(signal=name)


@contextlib.asynccontextmanager
async def attach(docker: aiodocker.Docker, container_id: str) -> AsyncIterator[Stream]:
    """The container's output, stdout and stderr as they come (aiodocker's own `attach`
    would first inspect the container, which costs a request per command)."""
    query: dict[str, str | int] = {"stdout": 1, "stderr": 1, "stream": 1, "logs": 0}
    url = URL(f"containers/{container_id}/attach").with_query(query)

    async def setup() -> tuple[URL, bytes | None, bool]:
        return url, None, False

    async with Stream(docker, setup) as stream:
        yield stream


class Pump:
    """Copies a container's output to the job's, keeping how it began."""

    def __init__(self, stream: Stream, output: Output) -> None:
        self.stream = stream
        self.output = output
        self.head = b""  # the first line on stderr, if nothing came before on stdout
        self.heading = True

    async def run(self) -> None:
        while (message := await self.stream.read_out()) is not None:
            self._keep(message)
            await self.output.write(message.data)

    def _keep(self, message: Message) -> None:
        if not self.heading:
            return
        if message.stream != 2:
            self.heading = False
            return
        self.head += message.data  # the init may write its line in more than one piece
        self.heading = b"\n" not in self.head and len(self.head) < BLOCK

    def init_failure(self) -> str | None:
        """Why the container's init could not run its command, if that is what its
        output began with (then it is the init's: the command never ran)."""
        match = INIT_FAILED.match(self.head)
        return match.group(1).decode(errors="replace").strip() if match else None


async def wait_for_end(pumping: asyncio.Task[None], stop: Stop) -> StopStatus | None:
    """None once the output has ended (the container exited), or why it must be stopped
    first. Re-raises what ended the pump if it failed."""
    killed = asyncio.create_task(stop.killed.wait())
    try:
        timeout = max(0.0, stop.deadline - time.monotonic())
        await asyncio.wait({pumping, killed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        killed.cancel()
    if pumping.done():
        pumping.result()
        return None
    return "killed" if stop.killed.is_set() else "timed_out"


async def until_stopped(work: Awaitable[T], stop: Stop, what: str) -> T:
    """The result of `work`, unless the build is stopped first (then `work` is
    cancelled and PreparationStopped raised)."""
    task = asyncio.ensure_future(work)
    killed = asyncio.create_task(stop.killed.wait())
    try:
        timeout = max(0.0, stop.deadline - time.monotonic())
        await asyncio.wait({task, killed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        killed.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, *ENGINE_ERRORS):
        await task
    raise stopped_during(stop_reason(stop) or "timed_out", what)


# Archives


async def tar_stream(entries: Iterable[Entry], owner: Identity) -> AsyncIterator[bytes]:
    """A tar archive of `entries`, made as it is sent: objects are read in chunks."""
    now = int(time.time())
    for entry in entries:
        info = tarfile.TarInfo(entry.name)
        info.mode, info.mtime, info.uid, info.gid = entry.mode, now, owner.uid, owner.gid
        if entry.is_directory:
            info.type = tarfile.DIRTYPE
            yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        elif entry.data is not None:
            info.size = len(entry.data)
            yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            yield entry.data + padding(info.size)
        elif entry.source is not None:
            async for chunk in file_member(info, entry.source):
                yield chunk
    yield b"\0" * (2 * BLOCK)


async def file_member(info: tarfile.TarInfo, source: Path) -> AsyncIterator[bytes]:
    with await asyncio.to_thread(source.open, "rb") as file:
        info.size = os.fstat(file.fileno()).st_size
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        left = info.size
        while left > 0:
            chunk = await asyncio.to_thread(file.read, min(CHUNK, left))
            if not chunk:
                raise OSError(f"{source} shrank while it was being placed")
            left -= len(chunk)
            yield chunk
    yield padding(info.size)


def padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


async def member_size(content: aiohttp.StreamReader, shown: str) -> int:
    """Reads the headers of the archive's first member, which must be a regular file;
    its size. Its bytes come next."""
    size: int | None = None
    while True:
        try:
            header = tarfile.TarInfo.frombuf(
                await content.readexactly(BLOCK), "utf-8", "surrogateescape"
            )
        except tarfile.HeaderError as error:
            raise OSError(f"{shown}: the Docker Engine sent no archive: {error}") from None
        if header.type in EXTENDED_HEADERS:
            extended = await content.readexactly(header.size + len(padding(header.size)))
            if header.type == tarfile.XHDTYPE:
                size = pax_size(extended[: header.size]) or size
            continue
        if header.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise ArtifactMissing(f"{shown} is not a regular file")
        return header.size if size is None else size


def pax_size(records: bytes) -> int | None:
    """The `size` of PAX extended header records (`<length> <key>=<value>\\n` each)."""
    for record in records.split(b"\n"):
        _, _, field = record.partition(b" ")
        key, _, value = field.partition(b"=")
        if key == b"size" and value.isdigit():
            return int(value)
    return None


async def path_mode(docker: aiodocker.Docker, container: DockerContainer, path: str) -> int | None:
    """The Go file mode of `path` in the container (a final link not followed), or
    None if there is nothing there."""
    query = docker._query(
        f"containers/{container.id}/archive", method="HEAD", params={"path": path}
    )
    try:
        async with query as response:
            response.close()
            return stat_mode(response.headers)
    except DockerError as error:
        if error.status == 404:
            return None
        raise


def stat_mode(headers: Any) -> int:
    stat = json.loads(base64.b64decode(headers.get("X-Docker-Container-Path-Stat", "")) or "{}")
    return int(stat.get("mode", GO_MODE_IRREGULAR))


def check_regular(mode: int, shown: str) -> None:
    if mode & GO_MODE_SYMLINK:
        raise ArtifactMissing(f"{shown} is a symbolic link")
    if mode & GO_MODE_DIR:
        raise ArtifactMissing(f"{shown} is a directory")
    if mode & GO_MODE_TYPE:
        raise ArtifactMissing(f"{shown} is not a regular file")


# The plan, checked


def image_name(plan: BuildPlan) -> str:
    image = plan.target.image
    if not image:
        raise PreparationFailed("the docker driver needs an image")
    if len(image) > 255 or IMAGE.fullmatch(image) is None:
        raise PreparationFailed(f"invalid image name {image!r}")
    return image


def workspace_path(plan: BuildPlan) -> str:
    path = plan.target.workspace or DEFAULT_WORKSPACE
    pure = PurePosixPath(path)
    if not path.startswith("/") or path.startswith("//") or str(pure) != path or "\0" in path:
        raise PreparationFailed(f"invalid workspace {path!r}: not a normal absolute path")
    if ".." in pure.parts or pure == PurePosixPath("/"):
        raise PreparationFailed(f"invalid workspace {path!r}")
    for reserved in map(PurePosixPath, RESERVED):
        if pure.is_relative_to(reserved) or reserved.is_relative_to(pure):
            raise PreparationFailed(f"the workspace cannot be {path}: {reserved} is reserved")
    return path


def check_env(env: dict[str, str]) -> None:
    for name, value in env.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise PreparationFailed(f"invalid environment variable {name!r}")


def check_key_name(name: str) -> None:
    # `config` is the file every key's config goes to.
    if name in ("", ".", "..", "config") or "/" in name or "\0" in name:
        raise PreparationFailed(f"invalid SSH key file name {name!r}")


def destination_parts(placed: PlacedFile) -> list[str]:
    parts = placed.destination.split("/")
    if any(part in ("", ".", "..") or "\0" in part for part in parts):
        raise PreparationFailed(
            f"cannot place a file at {placed.destination!r}: not in the workspace"
        )
    return parts


def artifact_parts(path: str) -> list[str] | None:
    """The components of `path` within the workspace, `..` taken lexically (no link is
    ever followed); None if it is absolute or leaves the workspace."""
    if path.startswith("/") or "\0" in path:
        return None
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return parts


def relative(path: str) -> str:
    return path.lstrip("/")


def safe_name(text: str) -> str:
    """`text` as it may appear in a Docker object's name."""
    return re.sub(r"[^a-zA-Z0-9_.-]", "_", text)[:40] or "_"


def base_env(plan: BuildPlan, image_config: dict[str, Any]) -> dict[str, str]:
    """What Kiln adds to the image's environment for every process of the build (before
    `plan.env`); the worker's own environment is never passed."""
    env = {
        "HOME": HOME,
        "TMPDIR": TMP,
        "CI": "true",
        "KILN": "true",
        "KILN_BUILD_ID": str(plan.build_id),
    }
    image_env = {entry.partition("=")[0] for entry in image_config.get("Env") or []}
    if "LANG" not in image_env:
        env["LANG"] = "C.UTF-8"
    if plan.keys:
        env["GIT_SSH_COMMAND"] = ssh_command(plan.keys)
    return env


def ssh_command(keys: list[KeySpec]) -> str:
    # OpenSSH finds ~/.ssh through the password database, not $HOME, so git is told
    # where the build's own config, known hosts and keys are.
    ssh = f"{HOME}/.ssh"
    options = ["ssh", "-F", f"{ssh}/config", "-o", f"UserKnownHostsFile={ssh}/known_hosts"]
    for key in keys:
        options += ["-i", f"{ssh}/{key.name}"]
    return shlex.join(options)


def identity(user: str, passwd: str, groups: str) -> Identity:
    """Whom `user` (`name[:group]`, either part a name or a number) is, from the image's
    /etc/passwd and /etc/group, as Docker resolves it."""
    name, _, group = user.partition(":")
    entry = database_entry(passwd, name, 4)
    if entry is not None and entry[2].isdecimal() and entry[3].isdecimal():
        uid, gid = int(entry[2]), int(entry[3])
    elif name.isdecimal():
        uid, gid = int(name), 0
    else:
        raise PreparationFailed(f"the image's user {name!r} is not in its /etc/passwd")
    if not group:
        return Identity(uid, gid)
    if group.isdecimal():
        return Identity(uid, int(group))
    entry = database_entry(groups, group, 3)
    if entry is None or not entry[2].isdecimal():
        raise PreparationFailed(f"the image's group {group!r} is not in its /etc/group")
    return Identity(uid, int(entry[2]))


def database_entry(text: str, key: str, fields: int) -> list[str] | None:
    """The line of an /etc/passwd or /etc/group for `key`, a name or (all digits) an
    id; split, with at least `fields` fields."""
    column = 2 if key.isdecimal() else 0
    for line in text.splitlines():
        entry = line.split(":")
        if len(entry) >= fields and entry[column] == key:
            return entry
    return None
