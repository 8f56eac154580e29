"""The `local` driver: jobs run as processes on the worker's own machine.

Each build gets a directory under the driver's root holding `work/` (the jobs' working
directory, "the workspace"), `home/` (a private $HOME) and `tmp/` ($TMPDIR). Commands
run as `/bin/sh -c <command>`, confined (kiln.drivers.sandbox: namespaces of their own,
an unprivileged user, nothing of the host but its programs) unless the operator turned
that off for a single-user install; where confinement cannot be set up, builds fail
saying why rather than run unconfined. The environment is built from scratch so that
nothing of the worker's (its secrets least of all) leaks into a job. A command's output
goes through a pipe that Kiln owns, so that neither waiting for the command nor reading
its output depends on background processes it left behind.

The worker writes into the workspace (keys, objects) as itself, after a job's user has
had the chance to put links there (a cloned repository may hold any), so every write
walks the path without following links, and artifacts are read only when they resolve
inside the workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from kiln.core.readiness import readable
from kiln.drivers import sandbox
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
    Workspace,
    check_stop,
    clone_directory,
    display_url,
    drain,
    niceness_increment,
    stop_reason,
    stopped_during,
    with_newline,
)
from kiln.drivers.sandbox import Sandbox

log = logging.getLogger(__name__)
CHUNK = 64 * 1024
WORKSPACE_NAME = re.compile(r"build-(\d+)-\w+")  # as prepare() names them
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHELL = "/bin/sh"


class LocalDriver:
    def __init__(self, settings: DriverSettings) -> None:
        self.settings = settings
        self.root = settings.root

    async def sweep(self, still_running: RunningFilter) -> list[str]:
        found = await asyncio.to_thread(self._workspaces)
        running = await still_running(set(found.values()))
        left = []
        for path, build_id in found.items():
            if build_id not in running and not await asyncio.to_thread(remove_tree, path):
                left.append(str(path))
        return left

    def _workspaces(self) -> dict[Path, int]:
        """Every workspace under the root, with its build's id."""
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return {}
        return {
            path: int(match.group(1))
            for path in entries
            if (match := WORKSPACE_NAME.fullmatch(path.name)) is not None
        }

    async def prepare(self, plan: BuildPlan, output: Output, stop: Stop) -> Workspace:
        if self.settings.local_confined and (why := await asyncio.to_thread(sandbox.probe)):
            raise PreparationFailed(
                f"the local driver cannot confine jobs on this host: {why}. To fix it,"
                f" {sandbox.HOW_TO_FIX}"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        path = Path(tempfile.mkdtemp(prefix=f"build-{plan.build_id}-", dir=self.root))
        try:
            workspace = LocalWorkspace(path, plan, self.settings)
            await workspace.prepare(plan, output, stop)
        except BaseException:
            await asyncio.to_thread(remove_tree, path)
            raise
        return workspace


class LocalWorkspace:
    def __init__(self, path: Path, plan: BuildPlan, settings: DriverSettings) -> None:
        self.path = path
        self.work = path / "work"
        self.home = path / "home"
        self.tmp = path / "tmp"
        for directory in (self.work, self.home, self.tmp):
            directory.mkdir(mode=0o700)
        self.kill_grace = settings.kill_grace
        self.nice = settings.nice
        self.git_protocols = settings.git_protocols
        self.sandbox: Sandbox | None = None
        home, tmp = self.home, self.tmp
        if settings.local_confined:
            self.sandbox = Sandbox(path, settings.hidden, settings.local_network == "host")
            home, tmp = sandbox.HOME, sandbox.TMP
        self._base_env = base_env(plan, home=home, tmp=tmp, user=self.sandbox is None)
        self._plan_env = plan.env

    async def prepare(self, plan: BuildPlan, output: Output, stop: Stop) -> None:
        # Keys first, so that private sources can be cloned over SSH with them.
        for key in plan.keys:
            await asyncio.to_thread(install_key, self.home / ".ssh", key)
        await self._hand_over()
        for source in plan.sources:
            await self._clone(source, output, stop)
        for placed in plan.files:
            check_stop(stop, f"placing {placed.destination}")
            await asyncio.to_thread(place_file, self.work, placed)
        await self._hand_over()

    async def _hand_over(self) -> None:
        if self.sandbox is not None:
            await asyncio.to_thread(sandbox.hand_over, self.path)

    async def run_job(self, job: JobSpec, output: Output, stop: Stop) -> JobResult:
        env = {**self._base_env, "KILN_JOB_NAME": job.name, **self._plan_env}
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
            if result.stopped is not None:
                return JobResult(result.stopped, None)
            code = result.code or 0
            if code != 0:
                return JobResult("failed", code)
        return JobResult("passed", code)

    async def artifact(self, spec: ArtifactSpec) -> AsyncIterator[bytes]:
        # Every process of the job is gone by now, so nothing can swap a link in
        # between this check and the read.
        path = artifact_path(self.work, spec)
        with path.open("rb") as file:
            while chunk := await asyncio.to_thread(file.read, CHUNK):
                yield chunk

    async def close(self) -> None:
        if not await asyncio.to_thread(remove_tree, self.path):
            log.warning("workspace %s could not be removed; the next sweep retries", self.path)

    async def _clone(self, source: SourceSpec, output: Output, stop: Stop) -> None:
        directory = clone_directory(source)
        env = {
            **self._base_env,
            **self._plan_env,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ALLOW_PROTOCOL": self.git_protocols,
        }
        url = display_url(source.url)
        await output.write(f"kiln: cloning {url}\n".encode())
        clone = ["git", "clone", "--quiet", "--", source.url, directory]
        local = local_source(source.url)
        trusting = self.tmp / ".kiln-clone-gitconfig"
        if local and self.sandbox is not None:
            # The job's user does not own the repository, which git refuses; and for a
            # local clone git drops config given on its command line or environment.
            await asyncio.to_thread(trusting.write_text, "[safe]\n\tdirectory = *\n")
            env["GIT_CONFIG_GLOBAL"] = str(sandbox.TMP / trusting.name)
        try:
            await self._git(clone, env, output, stop, f"git clone of {url}", local)
        finally:
            trusting.unlink(missing_ok=True)
        env.pop("GIT_CONFIG_GLOBAL", None)
        if source.ref is None:
            return
        if source.ref.startswith("-"):
            raise PreparationFailed(f"cannot check out {source.ref!r}: not a ref")
        await output.write(f"kiln: checking out {source.ref}\n".encode())
        checkout = ["git", "-C", directory, "checkout", "--quiet", source.ref]
        what = f"git checkout of {source.ref} in {directory}"
        await self._git(checkout, env, output, stop, what, local)

    async def _git(
        self,
        argv: list[str],
        env: dict[str, str],
        output: Output,
        stop: Stop,
        what: str,
        readable: list[Path],
    ) -> None:
        check_stop(stop, what)
        try:
            # Clones reach the network: their URLs were checked before the build ran.
            result = await self._run(argv, env, output, stop, network=True, readable=readable)
        except NotStarted as exc:
            raise PreparationFailed(f"{what} failed: cannot run {argv[0]}: {exc}") from None
        if result.stopped is not None:
            raise stopped_during(result.stopped, what)
        if result.code != 0:
            raise PreparationFailed(f"{what} failed (exit {result.code})")

    async def _run(
        self,
        argv: list[str],
        env: dict[str, str],
        output: Output,
        stop: Stop,
        *,
        network: bool | None = None,
        readable: Sequence[Path] = (),
    ) -> Exit:
        confined = self.sandbox is not None
        if self.sandbox is not None:
            argv = self.sandbox.argv(argv, network=network, readable=readable)
        return await run_process(
            at_niceness(argv, self.nice),
            cwd=self.work,
            env=env,
            output=output,
            stop=stop,
            kill_grace=self.kill_grace,
            # A signal to bwrap ends the whole sandbox at once: ask the job itself first.
            graceful=sandbox.inner_groups if confined else lambda pid: [pid],
        )


# Preparation


def base_env(plan: BuildPlan, *, home: Path, tmp: Path, user: bool = True) -> dict[str, str]:
    """The environment every process of the build starts from (before `plan.env`);
    `user`: name the worker's user in it (not for confined jobs, which run as another)."""
    env = {
        "PATH": DEFAULT_PATH if not user else os.environ.get("PATH") or DEFAULT_PATH,
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "TMPDIR": str(tmp),
        "CI": "true",
        "KILN": "true",
        "KILN_BUILD_ID": str(plan.build_id),
    }
    name = current_user() if user else "nobody"
    if name is not None:
        env["USER"] = env["LOGNAME"] = name
    if plan.keys:
        env["GIT_SSH_COMMAND"] = ssh_command(home / ".ssh", plan.keys)
    return env


def current_user() -> str | None:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return None


def ssh_command(ssh_dir: Path, keys: list[KeySpec]) -> str:
    # OpenSSH finds ~/.ssh through the password database, not $HOME, so git is told
    # where the build's own config, known hosts and keys are.
    options = ["ssh", "-F", str(ssh_dir / "config")]
    options += ["-o", f"UserKnownHostsFile={ssh_dir / 'known_hosts'}"]
    for key in keys:
        options += ["-i", str(ssh_dir / key.name)]
    return shlex.join(options)


def place_file(work: Path, placed: PlacedFile) -> None:
    """Copy the object to its destination inside `work`, following no link on the way:
    a cloned repository may hold `conf -> /etc`, and Kiln writes as itself."""
    parts = Path(placed.destination).parts
    if not parts or Path(placed.destination).is_absolute() or ".." in parts:
        raise PreparationFailed(
            f"cannot place a file at {placed.destination!r}: outside the workspace"
        )
    directory = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for name in parts[:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=directory)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            os.close(directory)
            directory = inner
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
        target = os.open(parts[-1], flags, 0o644, dir_fd=directory)
        with open(target, "wb") as out, placed.source.open("rb") as source:
            shutil.copyfileobj(source, out, CHUNK)
    except OSError as error:
        said = error.strerror or str(error)
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            said = "a link or a file is in the way"
        raise PreparationFailed(f"placing a file at {placed.destination} failed: {said}") from None
    finally:
        os.close(directory)


def artifact_path(work: Path, spec: ArtifactSpec) -> Path:
    """The artifact's regular file, links resolved; ArtifactMissing if there is none
    inside `work`."""
    top = work.resolve()
    try:
        path = (top / spec.path).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        raise ArtifactMissing("no such file") from None
    if not path.is_relative_to(top):
        raise ArtifactMissing("it leads outside the workspace")
    if not path.is_file():
        raise ArtifactMissing("not a regular file")
    return path


def local_source(url: str) -> list[Path]:
    """The host directory a local source (a path or file:// URL) is cloned from, which a
    confined clone must be able to read; none for remote sources."""
    if url.startswith("file://"):
        path = Path(urlsplit(url).path)
    elif "://" in url or not url.startswith("/"):
        return []
    else:
        path = Path(url)
    try:
        return [path.resolve(strict=True)]
    except (OSError, RuntimeError):
        return []


def install_key(ssh_dir: Path, key: KeySpec) -> None:
    # Only ever called before any job or clone ran, so nothing in `home/` is a link yet.
    if not key.name or "/" in key.name or key.name in (".", ".."):
        raise PreparationFailed(f"invalid SSH key file name {key.name!r}")
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    ssh_dir.chmod(0o700)
    write_private(ssh_dir / key.name, with_newline(key.private_key), append=False)
    # The config always exists, so that `ssh -F` (see ssh_command) can read it.
    write_private(ssh_dir / "config", with_newline(key.config or ""), append=True)


def write_private(path: Path, text: str, *, append: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(fd, 0o600)
        file.write(text)


def remove_tree(path: Path) -> bool:
    """Remove `path` and everything in it; whether it is gone."""
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        # A command made files immutable or append-only (chattr), or directories
        # read-only or unreadable: undo that and retry.
        clear_file_attributes(path)
        make_directories_writable(path)
        shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)


def clear_file_attributes(top: Path) -> None:
    """Clear the immutable and append-only attributes below `top` (chattr -R skips
    symbolic links, so nothing outside the tree is touched)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            ["chattr", "-R", "-f", "-i", "-a", "--", str(top)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )


def make_directories_writable(top: Path) -> None:
    with contextlib.suppress(OSError):
        top.chmod(0o700)
    # Top-down: each directory is opened up before os.walk goes into it.
    for parent, directories, _ in os.walk(top):
        for name in directories:
            path = os.path.join(parent, name)
            if os.path.islink(path):  # chmod would follow it out of the tree
                continue
            with contextlib.suppress(OSError):
                os.chmod(path, 0o700)


# Processes


def at_niceness(argv: list[str], nice: int) -> list[str]:
    """`argv` run at niceness `nice` at least (through nice(1), so that the process and
    everything it starts has it from its first instruction)."""
    increment = niceness_increment(nice)
    return [nice_program(), "-n", str(increment), *argv] if increment else argv


@functools.cache
def nice_program() -> str:
    """nice(1) as found on the worker's PATH: a bare `nice` would be looked up on the
    job's PATH, which the manifest sets (`PATH=/nonexistent` must not stop Kiln)."""
    return shutil.which("nice") or "nice"


def not_started(error: OSError) -> NotStarted:
    said = error.strerror or str(error)
    return NotStarted(f"{said}: {error.filename}" if error.filename else said)


async def run_process(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    output: Output,
    stop: Stop,
    kill_grace: float,
    graceful: Callable[[int], list[int]] = lambda pid: [pid],
) -> Exit:
    """Runs `argv` in its own process group, streaming its output until it exits or
    `stop` says it must be stopped; leaves nothing of its process group behind. Raises
    NotStarted if it cannot be started. To stop it, the process groups `graceful` names
    for its pid get SIGTERM first, then its own group SIGKILL after `kill_grace`."""
    if (reason := stop_reason(stop)) is not None:
        return Exit(None, reason)
    try:
        read_fd, write_fd = os.pipe()
    except OSError as error:
        raise not_started(error) from error
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            start_new_session=True,
        )
    except OSError as error:
        os.close(read_fd)
        raise not_started(error) from error
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    pump = asyncio.create_task(copy_output(read_fd, output))
    try:
        reason = await wait_for_exit(process, stop)
        if reason is not None:
            await terminate(process, kill_grace, graceful(process.pid))
    finally:
        kill_group(process.pid)  # whatever the command left running in the background
        returncode = await process.wait()
        await drain(pump)
        os.close(read_fd)
    if reason is not None:
        return Exit(None, reason)
    return Exit(shell_code(returncode))


async def copy_output(fd: int, output: Output) -> None:
    """Copy what comes out of the pipe `fd` until its end; the caller closes `fd`.

    Read here rather than through `loop.connect_read_pipe`: uvloop's pipe transport
    closes the descriptor twice (libuv, then the file object), and in between another
    thread (SQLite, a file being written) may have been given the same number."""
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except BlockingIOError:
            await readable(fd)
            continue
        if not chunk:
            return
        await output.write(chunk)


async def wait_for_exit(process: asyncio.subprocess.Process, stop: Stop) -> StopStatus | None:
    """None once the process has exited, or why it must be stopped first."""
    exited = asyncio.create_task(process.wait())
    killed = asyncio.create_task(stop.killed.wait())
    try:
        timeout = max(0.0, stop.deadline - time.monotonic())
        await asyncio.wait({exited, killed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
        killed.cancel()
    if process.returncode is not None:
        return None
    return "killed" if stop.killed.is_set() else "timed_out"


async def terminate(
    process: asyncio.subprocess.Process, kill_grace: float, groups: list[int]
) -> None:
    """SIGTERM to `groups`; SIGKILL to the process's group if it outlives `kill_grace`."""
    for group in groups:
        signal_group(group, signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), kill_grace)
    except TimeoutError:
        kill_group(process.pid)
        await process.wait()


def kill_group(pgid: int) -> None:
    signal_group(pgid, signal.SIGKILL)


def signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pgid, signum)


def shell_code(returncode: int) -> int:
    """A process killed by signal N exits 128+N, as a shell reports it."""
    return 128 - returncode if returncode < 0 else returncode
