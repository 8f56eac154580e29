"""What every build driver is: the plan it is handed, the Driver and Workspace it
provides, and the errors it raises. Drivers import this module and nothing else of
Kiln but `kiln.core`.

A driver prepares a workspace for a build (sources cloned, files placed, SSH keys
installed); the workspace then runs the build's jobs one at a time, hands out their
artifacts and is finally closed, which removes it. The worker never sees how: the
`local` driver runs jobs as confined processes on the worker's own machine, `docker` in
containers on a Docker Engine, `ssh` on a machine the user names; `qemu` is part of the
interface but not implemented in this deployment.

Everything in a plan but the settings comes from a manifest, so from someone who may be
hostile: a driver treats every path, name and address in it as chosen by an attacker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol
from urllib.parse import urlsplit, urlunsplit


@dataclass(frozen=True)
class SourceSpec:
    url: str  # anything `git clone` accepts (local paths, file:// in tests)
    ref: str | None  # branch, tag or commit to check out after cloning
    directory: str | None  # where to clone, relative to the workspace; None: git's default name


@dataclass(frozen=True)
class PlacedFile:
    source: Path  # a local file holding an object's bytes (never modify it: copy it)
    destination: str  # relative to the workspace, normalised: no `..`, not absolute


@dataclass(frozen=True)
class KeySpec:
    name: str  # file name under $HOME/.ssh
    private_key: str  # private key text, already decrypted
    config: str | None  # ssh_config text, appended to $HOME/.ssh/config


@dataclass(frozen=True)
class ArtifactSpec:
    path: str  # relative to the workspace
    name: str


@dataclass(frozen=True)
class JobSpec:
    name: str
    commands: list[str]
    artifacts: list[ArtifactSpec]


@dataclass(frozen=True)
class Target:
    """Where the manifest's `driver:` says to run, beyond its type."""

    image: str | None = None  # docker, qemu
    workspace: str | None = None  # docker: where the workspace volume is mounted
    address: str | None = None  # ssh: host[:port]
    user: str | None = None  # ssh: the remote user
    login_key: KeySpec | None = None  # ssh: the user's key to log in with, decrypted
    host_key: str | None = None  # ssh: "ssh-ed25519 AAAA...", which the host must present


@dataclass(frozen=True)
class BuildPlan:
    build_id: int
    env: dict[str, str]  # manifest env and variables, already merged
    masked: list[str]  # values shown as xxxxxx in output (the Output sink does the masking)
    sources: list[SourceSpec]
    files: list[PlacedFile]
    keys: list[KeySpec]
    target: Target = Target()


@dataclass(frozen=True)
class DriverSettings:
    """What the operator decided, the same for every build (from kiln.core.config)."""

    root: Path  # a directory of the worker's own for workspaces and local state
    kill_grace: float  # seconds between SIGTERM and SIGKILL
    instance: str = "kiln"  # this deployment's name, on what it leaves on shared engines
    nice: int = 0  # local jobs run at this niceness at least
    hidden: tuple[Path, ...] = ()  # what a confined local job must never see (the data dir)
    local_confined: bool = True
    local_network: Literal["none", "host"] = "none"
    docker_host: str | None = None  # None: DOCKER_HOST, or the local socket
    docker_network: str = "bridge"
    docker_pull: Literal["if-not-present", "always", "never"] = "if-not-present"
    memory_bytes: int = 2 * 1024**3  # per container
    cpus: float = 1.0
    pids: int = 512
    ssh_connect_timeout: float = 15.0
    git_protocols: str = "https:http:ssh:git"  # GIT_ALLOW_PROTOCOL for every clone


class Output(Protocol):
    async def write(self, data: bytes) -> None: ...


JobStatus = Literal["passed", "failed", "killed", "timed_out"]
StopStatus = Literal["killed", "timed_out"]


@dataclass(frozen=True)
class JobResult:
    status: JobStatus
    exit_code: int | None  # of the last command run; None when killed/timed out before it exited
    not_started: str | None = None  # why a command could not be started, when one could not


@dataclass
class Stop:
    killed: asyncio.Event  # set by the worker when the build is killed
    deadline: float  # time.monotonic() value past which the build has timed out


class ArtifactMissing(Exception):
    """No regular file at the artifact's path inside the workspace; the message says why."""


class Workspace(Protocol):
    async def run_job(self, job: JobSpec, output: Output, stop: Stop) -> JobResult: ...

    def artifact(self, spec: ArtifactSpec) -> AsyncIterator[bytes]:
        """The artifact's bytes, in chunks. Raises ArtifactMissing (before the first chunk)
        if it is missing, not a regular file, or outside the workspace (links resolved)."""
        ...

    async def close(self) -> None:
        """Removes the workspace; always safe to call."""
        ...


# Of the build ids given, those still running.
RunningFilter = Callable[[set[int]], Awaitable[set[int]]]


class Driver(Protocol):
    async def prepare(self, plan: BuildPlan, output: Output, stop: Stop) -> Workspace: ...

    async def sweep(self, still_running: RunningFilter) -> list[str]:
        """Remove what finished builds left behind (a workspace whose removal failed, or
        that a crashed worker never closed); what still could not be removed.

        `still_running` is asked after the leftovers are found, so a build that starts
        meanwhile is never swept."""
        ...


class PreparationFailed(Exception):
    """Preparing the workspace failed; the message says what failed."""


class PreparationStopped(PreparationFailed):
    """The build was killed or timed out while its workspace was being prepared."""

    def __init__(self, status: StopStatus, message: str) -> None:
        super().__init__(message)
        self.status: StopStatus = status


def stop_reason(stop: Stop) -> StopStatus | None:
    """Why the build must stop now, or None while it may go on."""
    if stop.killed.is_set():
        return "killed"
    if time.monotonic() >= stop.deadline:
        return "timed_out"
    return None


def check_stop(stop: Stop, what: str) -> None:
    if (reason := stop_reason(stop)) is not None:
        raise stopped_during(reason, what)


def stopped_during(reason: StopStatus, what: str) -> PreparationStopped:
    verb = "killed" if reason == "killed" else "timed out"
    return PreparationStopped(reason, f"build {verb} during {what}")


def niceness_increment(nice: int) -> int:
    """How much to add to this process's niceness to run at `nice` at least."""
    return max(0, nice - os.getpriority(os.PRIO_PROCESS, 0))


# What every driver needs to run commands and report how they ended.

# After a command's processes are killed, how long its remaining output may take.
DRAIN_TIMEOUT = 2.0


@dataclass(frozen=True)
class Exit:
    """How a command ended: its exit code, why Kiln stopped it, or why its end is
    unknown (`lost`: the ssh driver's connection went away)."""

    code: int | None
    stopped: StopStatus | None = None
    lost: str | None = None


class NotStarted(Exception):
    """A command could not be started (its program or working directory missing, the
    machine out of processes, the engine or host refusing); the message says why."""


async def drain(pump: asyncio.Task[None], *also: type[BaseException]) -> None:
    """Waits for the rest of a command's output; gives up on it if a process that left
    the command's process group (and so survived its killing) still holds it open.
    `also`: errors of the pump that mean the same (an engine gone)."""
    with contextlib.suppress(TimeoutError, *also):
        await asyncio.wait_for(pump, DRAIN_TIMEOUT)


# What every driver that clones sources and writes text files needs.


def display_url(url: str) -> str:
    """`url` without the password it may hold (https://user:token@host/...)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":xxxxxx@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def clone_directory(source: SourceSpec) -> str:
    """Where `source` is cloned, relative to the workspace; never outside it."""
    directory = source.directory or default_directory(source.url)
    parts = PurePosixPath(directory).parts
    if not parts or directory.startswith("/") or ".." in parts or "\0" in directory:
        raise PreparationFailed(f"cannot clone {display_url(source.url)} into {directory!r}")
    return directory


def default_directory(url: str) -> str:
    """The directory `git clone <url>` would make: the URL's last part, less `.git`."""
    path = url.rstrip("/")
    path = path.removesuffix("/.git").rstrip("/")
    name = re.split(r"[/:]", path)[-1]
    return name.removesuffix(".git").removesuffix(".bundle")


def with_newline(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"
