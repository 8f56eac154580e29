"""What every build driver is: the plan it is handed, the Driver and Workspace it
provides, and the errors it raises. Drivers import this module and nothing else of
Kiln but `kiln.core`.

A driver prepares a workspace for a build (sources cloned, files placed, SSH keys
installed); the workspace then runs the build's jobs one at a time, hands out their
artifacts and is finally closed, which removes it. The worker never sees how: the
`local` driver runs jobs as processes on the worker's own machine, the others (docker,
qemu, ssh) are part of the interface but not implemented in this deployment.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol


@dataclass(frozen=True)
class SourceSpec:
    url: str  # anything `git clone` accepts (local paths, file:// in tests)
    ref: str | None  # branch, tag or commit to check out after cloning
    directory: str | None  # where to clone, relative to the workspace; None: git's default name


@dataclass(frozen=True)
class PlacedFile:
    source: Path  # a local file holding an object's bytes (never modify it: copy it)
    destination: str  # absolute path, or relative to the workspace


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
class BuildPlan:
    build_id: int
    env: dict[str, str]  # manifest env and variables, already merged
    masked: list[str]  # values shown as xxxxxx in output (the Output sink does the masking)
    sources: list[SourceSpec]
    files: list[PlacedFile]
    keys: list[KeySpec]
    image: str | None  # for docker/qemu; None for local


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


class Workspace(Protocol):
    async def run_job(self, job: JobSpec, output: Output, stop: Stop) -> JobResult: ...

    def artifact(self, spec: ArtifactSpec) -> Path | None:
        """The regular file, or None if missing, not a regular file, or outside the workspace
        (symlinks resolved)."""
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


def niceness_increment(nice: int) -> int:
    """How much to add to this process's niceness to run at `nice` at least."""
    return max(0, nice - os.getpriority(os.PRIO_PROCESS, 0))
