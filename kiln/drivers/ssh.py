"""The `ssh` driver: jobs run on a machine the manifest names, logged in over SSH.

The worker logs in as `driver.user` at `driver.address` with the login key the manifest
names, and goes on only if the host presents exactly `driver.host_key`: the known hosts
are that one key, never the worker's files nor what the host says the first time. None
of the worker's own SSH setup is used (no ~/.ssh, agent, config or known_hosts), so a
build logs in with what its namespace holds, or not at all.

Each build gets a directory of its own on the host, `~/.kiln/build-<id>-<random>` (in
/tmp when the home directory will not do), holding `work/` (the jobs' working
directory, "the workspace"), `home/` ($HOME), `tmp/` ($TMPDIR) and `control/`, Kiln's
scripts and records. Files go both ways over SFTP; sources are cloned by the host's git.
Each command runs as `/bin/sh -c <command>` in an SSH session of its own, which sshd
makes a process group of its own; the group is recorded under `control/`, so that
stopping a command, or ending what it left in the background, signals the whole group
through another session.

Nothing the manifest chose is put in a command line for the host's login shell: the
commands, the environment and every path in them go into files over SFTP, quoted for
/bin/sh, and the command lines Kiln sends name only its own scripts and directories
(paths of plain characters, checked). The environment is built from scratch (`env -i`)
as the local driver builds it, but for PATH: the host's own, unless the manifest sets
one.

Crash safety: a keeper session, started before anything secret is placed, waits for its
input to end. It ends when the workspace is closed, or when the connection goes away for
any reason (the worker killed, the network gone); the keeper then kills every recorded
process group and removes the build's directory. So nothing has to log in again after a
crash, which nothing could: the decrypted login key is kept only in memory.

What this does not protect: a job runs as the manifest's own user on the manifest's own
host, so it can do there whatever that user may (kill the keeper, start processes that
leave their process group, write outside its directory). The driver protects the worker
and other builds from the host, not the host from its user. It connects to the address
as given: which addresses a build may reach (not loopback or private ones, unless the
operator allows them) is settled before the plan reaches the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import posixpath
import re
import secrets
import shlex
import signal
import stat
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

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
    Target,
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
DEFAULT_PORT = 22
CHUNK = 256 * 1024  # of an artifact, or of a file being placed
SIGNAL_TIMEOUT = 30.0  # for a signal to reach a process group
EXIT_TIMEOUT = 10.0  # for a command to be reported gone once SIGKILLed
KEEPER_TIMEOUT = 30.0  # for the keeper to start
REMOVAL_TIMEOUT = 300.0  # for the build's directory to be removed
KEEPALIVE_INTERVAL = 15.0  # so that a vanished host is noticed within a minute
KEEPALIVE_COUNT_MAX = 4
# Output chunks held for a slow Output before the host is asked to wait.
QUEUE_HIGH = 64
QUEUE_LOW = 8
FALLBACK_PARENT = "/tmp"  # noqa: S108 (a directory of the build's own is made in it)
MAX_REASON = 200  # characters of a reason the host gave, in an error message

ADDRESS = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*))(?::(?P<port>\d{1,5}))?"
)
USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What a remote path Kiln puts in a command line may hold: nothing any shell treats
# specially, so that the line means the same to every login shell.
PLAIN_PATH = re.compile(r"/[A-Za-z0-9._+/-]*")

# Run as `run <dir> <n>`: step n of the build in <dir>. sshd starts each session in a
# session (so a process group) of its own, led by the login shell that execs this; were
# it not so, setsid(1) makes it so (without forking: this is no group leader then). The
# group is recorded before the step starts, and a stop asked for before that is
# honoured (see SIGNAL).
RUNNER = """\
exec 2>&1 </dev/null
dir=$1 n=$2
group=$$
if [ -r /proc/self/stat ]; then
  read -r _pid _comm _state _ppid group _rest </proc/self/stat || group=$$
fi
if [ "$group" != $$ ] && command -v setsid >/dev/null; then
  exec setsid /bin/sh "$0" "$dir" "$n"
fi
echo "$group" >"$dir/control/group.$n" || exit 126
if [ -e "$dir/control/stop.$n" ]; then exit 143; fi
exec env -i "PATH=$PATH" "KILN_STEP=$dir/$n" /bin/sh "$dir/control/step.$n"
"""

# `kill_marked <grep flags> <text>` kills this user's processes with an environment line
# matching <text>: those a step started that left its process group (`setsid`), which
# still carry KILN_STEP. (A job that also clears its environment escapes this: on its
# own host it may do whatever the login user may.)
KILL_MARKED = """kill_marked() {
  for p in /proc/[0-9]*; do
    [ -O "$p" ] && [ "${p#/proc/}" != $$ ] || continue
    if tr '\\0' '\\n' <"$p/environ" 2>/dev/null | grep -q "$1" -- "$2"; then
      kill -s KILL "${p#/proc/}" 2>/dev/null
    fi
  done
}
"""

# Run as `signal <dir> <SIGNAL> <n> [forget]`: signals step n's process group; with
# `forget`, the step is over and its group number is dropped (it may be reused).
SIGNAL = (
    KILL_MARKED
    + """\
dir=$1 sig=$2 n=$3
: >"$dir/control/stop.$n"
if read -r group 2>/dev/null <"$dir/control/group.$n" && [ "$group" -gt 1 ] 2>/dev/null
then
  kill -s "$sig" -- "-$group" 2>/dev/null
fi
if [ "$sig" = KILL ]; then kill_marked -xF "KILN_STEP=$dir/$n"; fi
if [ "${4-}" = forget ]; then rm -f "$dir/control/group.$n"; fi
exit 0
"""
)

# Run as `keeper <dir>` for as long as the connection lasts, or with no input to clean
# up at once: kills every step's process group, then removes <dir>.
KEEPER = (
    KILL_MARKED
    + """\
trap '' HUP INT TERM PIPE
dir=$1
echo kiln-keeper-ready
cat >/dev/null 2>&1
exec >/dev/null 2>&1
for file in "$dir"/control/group.*; do
  if read -r group <"$file" && [ "$group" -gt 1 ]; then kill -s KILL -- "-$group"; fi
done
kill_marked -F "KILN_STEP=$dir/"
if ! rm -rf "$dir"; then
  chmod -R u+rwX "$dir"
  chattr -R -f -i -a "$dir"
  rm -rf "$dir"
fi
[ ! -e "$dir" ]
"""
)

KEEPER_READY = b"kiln-keeper-ready\n"
SCRIPTS = {"run": RUNNER, "signal": SIGNAL, "keeper": KEEPER}


@dataclass(frozen=True)
class Login:
    """Where and how to log in, checked."""

    address: str  # as the manifest gives it, for messages
    host: str
    port: int
    user: str
    key: asyncssh.SSHKey
    host_key: asyncssh.SSHKey


class SshDriver:
    def __init__(self, settings: DriverSettings) -> None:
        self.settings = settings

    async def sweep(self, still_running: RunningFilter) -> list[str]:
        """Nothing to sweep: the driver keeps nothing on the worker, and on a host the
        keeper removes a build's directory as soon as the worker's connection to it is
        gone, however it went (a crashed worker included). Logging in again to check
        would take the login key, which is not kept once a build is over."""
        return []

    async def prepare(self, plan: BuildPlan, output: Output, stop: Stop) -> SshWorkspace:
        login = login_for(plan.target)
        check_plan(plan)
        check_stop(stop, f"connecting to {login.address}")
        await output.write(f"kiln: connecting to {login.user}@{login.address}\n".encode())
        connect = open_connection(login, self.settings.ssh_connect_timeout)
        connection = await until_stopped(connect, stop, f"connecting to {login.address}")
        workspace = SshWorkspace(connection, login, plan, self.settings)
        try:
            await workspace.prepare(plan, output, stop)
        except BaseException:
            await workspace.close()
            raise
        return workspace


class SshWorkspace:
    def __init__(
        self,
        connection: asyncssh.SSHClientConnection,
        login: Login,
        plan: BuildPlan,
        settings: DriverSettings,
    ) -> None:
        self.connection = connection
        self.login = login
        self.kill_grace = settings.kill_grace
        self.git_protocols = settings.git_protocols
        self.build_id = plan.build_id
        self.dir = ""  # the build's directory on the host, once made
        self._sftp: asyncssh.SFTPClient | None = None
        self._keeper: asyncssh.SSHClientProcess[bytes] | None = None
        self._real_work = ""
        self._steps = itertools.count(1)
        self._base_env: dict[str, str] = {}
        self._plan_env = plan.env
        self._closed = False

    @property
    def work(self) -> str:
        return f"{self.dir}/work"

    @property
    def home(self) -> str:
        return f"{self.dir}/home"

    @property
    def control(self) -> str:
        return f"{self.dir}/control"

    @property
    def sftp(self) -> asyncssh.SFTPClient:
        assert self._sftp is not None, "prepare() opens the SFTP session"
        return self._sftp

    async def prepare(self, plan: BuildPlan, output: Output, stop: Stop) -> None:
        where = f"setting up on {self.login.address}"
        await self._setup(self._make_directories(), stop, where)
        await self._setup(self._start_keeper(), stop, where)
        tmp = f"{self.dir}/tmp"  # noqa: S108 (the build's own)
        self._base_env = base_env(plan, self.login.user, home=self.home, tmp=tmp)
        # Keys first, so that private sources can be cloned over SSH with them.
        if plan.keys:
            await self._setup(self._install_keys(plan.keys), stop, "installing SSH keys")
        if plan.sources:
            env = {
                **self._base_env,
                **self._plan_env,
                "GIT_TERMINAL_PROMPT": "0",
                "GIT_ALLOW_PROTOCOL": self.git_protocols,
            }
            env_file = await self._setup(self._write_env(env), stop, where)
            for source in plan.sources:
                await self._clone(source, env_file, output, stop)
        for placed in plan.files:
            what = f"placing {placed.destination}"
            check_stop(stop, what)
            await until_stopped(self._place(placed), stop, what)

    async def run_job(self, job: JobSpec, output: Output, stop: Stop) -> JobResult:
        if not job.commands:
            return JobResult("passed", 0)
        if (reason := stop_reason(stop)) is not None:
            return JobResult(reason, None)
        env = {**self._base_env, "KILN_JOB_NAME": job.name, **self._plan_env}
        try:
            env_file = await self._write_env(env)
        except (asyncssh.Error, OSError) as exc:
            said = f"cannot run {SHELL} on {self.login.address}: {describe(exc)}"
            return await self._not_started(output, said)
        code = 0
        for command in job.commands:
            if (reason := stop_reason(stop)) is not None:
                return JobResult(reason, None)
            await output.write(f"$ {command}\n".encode())
            try:
                result = await self._step(command, env_file, output, stop)
            except NotStarted as exc:
                return await self._not_started(output, str(exc))
            if result.stopped is not None:
                return JobResult(result.stopped, None)
            if result.lost is not None:
                await output.write(f"kiln: {result.lost}\n".encode())
                return JobResult("failed", None)
            code = result.code or 0
            if code != 0:
                return JobResult("failed", code)
        return JobResult("passed", code)

    async def _setup(self, work: Awaitable[T], stop: Stop, what: str) -> T:
        try:
            return await until_stopped(work, stop, what)
        except (asyncssh.Error, OSError) as exc:
            raise PreparationFailed(f"{what} failed: {describe(exc)}") from None

    async def artifact(self, spec: ArtifactSpec) -> AsyncIterator[bytes]:
        file = await self._open_artifact(await self._artifact_path(spec.path))
        async with file:
            first = True
            while chunk := await self._read(file, first):
                first = False
                yield chunk

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.dir and self.connection.is_closed():
                log.info(
                    "build %s: the connection to %s is gone; its keeper removes %s",
                    self.build_id,
                    self.login.address,
                    self.dir,
                )
            elif self.dir and not await self._remove():
                log.warning(
                    "build %s: %s on %s could not be removed",
                    self.build_id,
                    self.dir,
                    self.login.address,
                )
        finally:
            if self._sftp is not None:
                self._sftp.exit()
            self.connection.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.connection.wait_closed(), SIGNAL_TIMEOUT)

    # Preparation

    async def _make_directories(self) -> None:
        self._sftp = await self.connection.start_sftp_client()
        self.dir = await self._build_directory()
        # Whatever the SFTP server made of the mode asked for, nobody else may enter.
        await self.sftp.chmod(self.dir, 0o700)
        for name in ("work", "home", "tmp", "control"):
            await self.sftp.mkdir(f"{self.dir}/{name}", private())
        self._real_work = await self.sftp.realpath(self.work)
        for name, text in SCRIPTS.items():
            await self._write(f"{self.control}/{name}", text)

    async def _build_directory(self) -> str:
        """A new directory of the build's own: under ~/.kiln, or /tmp if that fails."""
        name = f"build-{self.build_id}-{secrets.token_hex(6)}"
        failures = []
        home = await self.sftp.realpath(".")  # where SFTP sessions start
        for parent in (f"{home}/.kiln", FALLBACK_PARENT):
            if parent != FALLBACK_PARENT:
                with contextlib.suppress(asyncssh.SFTPError):  # it exists, or it cannot be
                    await self.sftp.mkdir(parent, private())
            try:
                await self.sftp.mkdir(f"{parent}/{name}", private())
                path = await self.sftp.realpath(f"{parent}/{name}")
            except asyncssh.SFTPError as exc:
                failures.append(f"{parent}: {describe(exc)}")
                continue
            if PLAIN_PATH.fullmatch(path):
                return path
            with contextlib.suppress(asyncssh.SFTPError):
                await self.sftp.rmdir(path)
            failures.append(f"{parent}: {path!r} has characters a shell would interpret")
        raise PreparationFailed(
            f"cannot make a build directory on {self.login.address}: {'; '.join(failures)}"
        )

    async def _start_keeper(self) -> None:
        self._keeper = await self.connection.create_process(
            self._command("keeper"), encoding=None, stderr=asyncssh.DEVNULL
        )
        try:
            await asyncio.wait_for(self._keeper_ready(self._keeper), KEEPER_TIMEOUT)
        except (TimeoutError, EOFError):
            raise PreparationFailed(
                f"cannot run commands on {self.login.address}: the cleanup session did not start"
            ) from None

    @staticmethod
    async def _keeper_ready(keeper: asyncssh.SSHClientProcess[bytes]) -> None:
        # Lines before it are the login shell's (a chatty ~/.bashrc, say).
        while (line := await keeper.stdout.readline()) != KEEPER_READY:
            if not line:
                raise EOFError

    async def _install_keys(self, keys: list[KeySpec]) -> None:
        ssh_dir = f"{self.home}/.ssh"
        await self.sftp.mkdir(ssh_dir, private())
        # As the local driver writes them: each key, then each config appended to
        # `config` (which always exists, so that `ssh -F` can read it).
        files: dict[str, str] = {}
        for key in keys:
            files[key.name] = with_newline(key.private_key)
            files["config"] = files.get("config", "") + with_newline(key.config or "")
        for name, text in files.items():
            await self._write_private(f"{ssh_dir}/{name}", text)

    async def _clone(self, source: SourceSpec, env_file: str, output: Output, stop: Stop) -> None:
        directory = clone_directory(source)
        url = display_url(source.url)
        await output.write(f"kiln: cloning {url}\n".encode())
        clone = ["git", "clone", "--quiet", "--", source.url, directory]
        await self._git(clone, env_file, output, stop, f"git clone of {url}")
        if source.ref is None:
            return
        if source.ref.startswith("-"):
            raise PreparationFailed(f"cannot check out {source.ref!r}: not a ref")
        await output.write(f"kiln: checking out {source.ref}\n".encode())
        checkout = ["git", "-C", directory, "checkout", "--quiet", source.ref]
        what = f"git checkout of {source.ref} in {directory}"
        await self._git(checkout, env_file, output, stop, what)

    async def _git(
        self, argv: list[str], env_file: str, output: Output, stop: Stop, what: str
    ) -> None:
        check_stop(stop, what)
        try:
            result = await self._step(shlex.join(argv), env_file, output, stop)
        except NotStarted as exc:
            raise PreparationFailed(f"{what} failed: {exc}") from None
        if result.stopped is not None:
            raise stopped_during(result.stopped, what)
        if result.lost is not None:
            raise PreparationFailed(f"{what} failed: {result.lost}")
        if result.code != 0:
            raise PreparationFailed(f"{what} failed (exit {result.code})")

    async def _place(self, placed: PlacedFile) -> None:
        failed = f"placing a file at {placed.destination} failed"
        parts = workspace_parts(placed.destination, failed)
        path = self.work
        try:
            for part in parts[:-1]:
                path = f"{path}/{part}"
                await self._directory_at(path, failed)
            path = f"{path}/{parts[-1]}"
            kind = await self._kind(path)
            if kind not in (None, "a regular file"):
                raise PreparationFailed(f"{failed}: it is {kind}")
            await self._upload(placed.source, path)
        except (asyncssh.Error, OSError) as exc:
            raise PreparationFailed(f"{failed}: {describe(exc)}") from None

    async def _directory_at(self, path: str, failed: str) -> None:
        """A directory at `path`, made if missing; never a symbolic link followed (a
        cloned source may hold one pointing anywhere)."""
        kind = await self._kind(path)
        if kind is None:
            await self.sftp.mkdir(path)
        elif kind != "a directory":
            relative = path.removeprefix(f"{self.work}/")
            raise PreparationFailed(f"{failed}: {relative} is {kind}")

    async def _kind(self, path: str) -> str | None:
        try:
            attrs = await self.sftp.lstat(path)
        except asyncssh.SFTPNoSuchFile:
            return None
        return kind_of(attrs)

    async def _upload(self, source: Path, path: str) -> None:
        local = await asyncio.to_thread(source.open, "rb")
        try:
            async with self.sftp.open(path, "wb") as remote:
                while chunk := await asyncio.to_thread(local.read, CHUNK):
                    await remote.write(chunk)
        finally:
            await asyncio.to_thread(local.close)

    async def _write_env(self, env: dict[str, str]) -> str:
        path = f"{self.control}/env.{next(self._steps)}"
        await self._write_private(path, env_script(env))
        return path

    async def _write(self, path: str, text: str) -> None:
        async with self.sftp.open(path, "wb", private(0o600)) as file:
            await file.write(text.encode())

    async def _write_private(self, path: str, text: str) -> None:
        """`_write`, making sure of the mode: ssh refuses keys others may read."""
        await self._write(path, text)
        await self.sftp.chmod(path, 0o600)

    # Commands

    async def _step(self, command: str, env_file: str, output: Output, stop: Stop) -> Exit:
        """Runs `command` on the host in its own process group, streaming its output
        until it exits or `stop` says it must be stopped; leaves nothing of its process
        group behind. Raises NotStarted if it cannot be started."""
        if (reason := stop_reason(stop)) is not None:
            return Exit(None, reason)
        number = next(self._steps)
        session = StepSession()
        try:
            script = step_script(self.work, env_file, command)
            await self._write(f"{self.control}/step.{number}", script)
            channel, _ = await self.connection.create_session(
                lambda: session, self._command("run", str(number)), encoding=None
            )
        except (asyncssh.Error, OSError) as exc:
            raise NotStarted(
                f"cannot run {SHELL} on {self.login.address}: {describe(exc)}"
            ) from None
        pump = asyncio.create_task(copy_output(session, output))
        try:
            reason = await wait_or_stop(session.exited, stop)
            if reason is not None:
                await self._terminate(number, session)
        finally:
            try:
                await self._signal(number, "KILL", "forget")  # what it left in the background
                await drain(pump)
            finally:
                channel.close()
        if reason is not None:
            return Exit(None, reason)
        code = session.exited.result()
        if code is None:
            return Exit(None, lost=self._lost(session.lost))
        return Exit(code)

    async def _terminate(self, number: int, session: StepSession) -> None:
        """SIGTERM to the step's process group; SIGKILL if it outlives the grace period."""
        await self._signal(number, "TERM")
        if not await exited_within(session, self.kill_grace):
            await self._signal(number, "KILL")
            await exited_within(session, EXIT_TIMEOUT)

    async def _signal(self, number: int, name: str, *extra: str) -> None:
        command = self._command("signal", name, str(number), *extra)
        try:
            run = self.connection.run(command, stdin=asyncssh.DEVNULL, check=False)
            await asyncio.wait_for(run, SIGNAL_TIMEOUT)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            log.warning(
                "build %s: SIG%s to step %s on %s failed: %s",
                self.build_id,
                name,
                number,
                self.login.address,
                describe(exc),
            )

    def _command(self, script: str, *args: str) -> str:
        """The command line that runs one of Kiln's scripts (all of it plain: see
        PLAIN_PATH), through `exec` so that it takes over the login shell's process."""
        return shlex.join(["exec", SHELL, f"{self.control}/{script}", self.dir, *args])

    async def _not_started(self, output: Output, said: str) -> JobResult:
        await output.write(f"kiln: {said}\n".encode())
        return JobResult("failed", None, said)

    def _lost(self, error: Exception | None) -> str:
        if isinstance(error, asyncssh.Error | OSError):
            return f"the connection to {self.login.address} was lost: {describe(error)}"
        if self.connection.is_closed():
            return f"the connection to {self.login.address} was lost"
        return f"{self.login.address} gave no exit status for the command"

    # Artifacts

    async def _artifact_path(self, relative: str) -> str:
        """The artifact's path with every link resolved; raises ArtifactMissing unless it
        is a regular file inside the workspace."""
        if not relative or relative.startswith("/") or "\0" in relative:
            raise ArtifactMissing("not a path inside the workspace")
        try:
            path = posixpath.normpath(await self.sftp.realpath(f"{self.work}/{relative}"))
            if path != self._real_work and not path.startswith(f"{self._real_work}/"):
                raise ArtifactMissing("outside the workspace")
            kind = await self._kind(path)  # lstat: nothing is left to follow
        except asyncssh.SFTPNoSuchFile:
            kind = None
        except asyncssh.SFTPError as exc:
            raise ArtifactMissing(describe(exc)) from None
        if kind is None:
            raise ArtifactMissing("no such file")
        if kind != "a regular file":
            raise ArtifactMissing(f"it is {kind}")
        return path

    async def _open_artifact(self, path: str) -> asyncssh.SFTPClientFile:
        try:
            file = await self.sftp.open(path, "rb")
        except asyncssh.SFTPError as exc:
            raise ArtifactMissing(describe(exc)) from None
        try:
            regular = is_regular(await file.stat())
        except asyncssh.SFTPError as exc:
            await file.close()
            raise ArtifactMissing(describe(exc)) from None
        if not regular:
            await file.close()
            raise ArtifactMissing("not a regular file")
        return file

    async def _read(self, file: asyncssh.SFTPClientFile, first: bool) -> bytes:
        try:
            return await file.read(CHUNK)
        except asyncssh.SFTPError as exc:
            if first:
                raise ArtifactMissing(describe(exc)) from None
            raise OSError(f"reading over SFTP failed: {describe(exc)}") from None

    # Cleanup

    async def _remove(self) -> bool:
        """Has the keeper end every process group and remove the build's directory;
        runs the same script anew if the keeper is gone (a job may have killed it)."""
        if self._keeper is not None and await self._end_keeper(self._keeper):
            return True
        try:
            await self.sftp.makedirs(self.control, exist_ok=True)
            await self._write(f"{self.control}/keeper", KEEPER)
            run = self.connection.run(self._command("keeper"), stdin=asyncssh.DEVNULL)
            result = await asyncio.wait_for(run, REMOVAL_TIMEOUT)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            log.warning(
                "build %s: cleanup on %s failed: %s", self.build_id, self.dir, describe(exc)
            )
            return False
        return result.exit_status == 0

    async def _end_keeper(self, keeper: asyncssh.SSHClientProcess[bytes]) -> bool:
        try:
            keeper.stdin.write_eof()
            result = await asyncio.wait_for(keeper.wait(), REMOVAL_TIMEOUT)
        except (asyncssh.Error, OSError, TimeoutError):
            return False
        return result.exit_status == 0


class StepSession(asyncssh.SSHClientSession[bytes]):
    """One command's session: its output in order, and how it ended (its exit code, or
    None if the session closed without saying)."""

    def __init__(self) -> None:
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self.lost: Exception | None = None
        self._channel: asyncssh.SSHClientChannel[bytes] | None = None
        self._paused = False

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self._channel = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.chunks.put_nowait(data)
        if self.chunks.qsize() >= QUEUE_HIGH and self._channel is not None and not self._paused:
            self._paused = True
            self._channel.pause_reading()

    def eof_received(self) -> bool:
        self.chunks.put_nowait(None)
        return False

    def exit_status_received(self, status: int) -> None:
        self._exit(status)

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._exit(signal_code(signal))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        self.chunks.put_nowait(None)
        self._exit(None)

    def _exit(self, code: int | None) -> None:
        if not self.exited.done():
            self.exited.set_result(code)

    async def next_chunk(self) -> bytes | None:
        chunk = await self.chunks.get()
        if self._paused and self.chunks.qsize() <= QUEUE_LOW and self._channel is not None:
            self._paused = False
            self._channel.resume_reading()
        return chunk


class HostKeyWitness(asyncssh.SSHClient):
    """Remembers the host key a host presented when it was not the trusted one (asyncssh
    asks only then), so that the error can name it; never trusts it."""

    def __init__(self) -> None:
        self.presented: asyncssh.SSHKey | None = None
        self._connection: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._connection = conn

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.presented = key
        return False

    @property
    def dropped_before_verified(self) -> bool:
        """Whether the host answered, then went before proving it holds the trusted key."""
        connection = self._connection
        return connection is not None and connection.get_server_host_key() is None


# Logging in


def login_for(target: Target) -> Login:
    """The target's login, checked; raises PreparationFailed naming what is wrong (and
    never showing a key)."""
    if not (target.address and target.user and target.login_key and target.host_key):
        raise PreparationFailed("the ssh driver needs an address, a user, a key and a host key")
    host, port = parse_address(target.address)
    if not USER.fullmatch(target.user):
        raise PreparationFailed(f"invalid remote user name {target.user!r}")
    try:
        key = asyncssh.import_private_key(target.login_key.private_key)
    except (asyncssh.KeyImportError, ValueError):
        raise PreparationFailed(
            f"the key {target.login_key.name} is not an unencrypted private key"
        ) from None
    return Login(target.address, host, port, target.user, key, parse_host_key(target.host_key))


def parse_address(address: str) -> tuple[str, int]:
    with contextlib.suppress(ValueError):  # a bare IPv6 address, as a resolver gives it
        return str(ipaddress.IPv6Address(address)), DEFAULT_PORT
    match = ADDRESS.fullmatch(address)
    port = int(match.group("port") or DEFAULT_PORT) if match else 0
    if match is None or not 0 < port < 65536:
        raise PreparationFailed(f"invalid address {address!r}: host[:port] expected")
    return match.group("ipv6") or match.group("host"), port


def parse_host_key(line: str) -> asyncssh.SSHKey:
    """The key of an OpenSSH public key line, `type base64 [comment]`."""
    fields = line.split()
    try:
        if len(fields) < 2:
            raise asyncssh.KeyImportError("not a public key line")
        key = asyncssh.import_public_key(f"{fields[0]} {fields[1]}")
    except (asyncssh.KeyImportError, ValueError):
        raise PreparationFailed("invalid host key: `type base64 [comment]` expected") from None
    if key.algorithm.decode() != fields[0]:
        raise PreparationFailed(f"invalid host key: it is a {key.algorithm.decode()} key")
    return key


async def open_connection(login: Login, seconds: float) -> asyncssh.SSHClientConnection:
    witness = HostKeyWitness()
    try:
        return await asyncssh.connect(
            login.host,
            login.port,
            config=[],  # not ~/.ssh/config
            client_factory=lambda: witness,
            username=login.user,
            client_keys=[login.key],
            known_hosts=([login.host_key], [], []),
            x509_trusted_certs=None,
            x509_trusted_cert_paths=[],
            agent_path=None,
            agent_forwarding=False,
            pkcs11_provider=None,
            client_host_keysign=False,
            public_key_auth=True,
            password_auth=False,
            kbdint_auth=False,
            host_based_auth=False,
            gss_auth=False,
            gss_kex=False,
            preferred_auth="publickey",
            request_pty=False,
            x11_forwarding=False,
            proxy_command=None,
            connect_timeout=seconds,
            keepalive_interval=KEEPALIVE_INTERVAL,
            keepalive_count_max=KEEPALIVE_COUNT_MAX,
        )
    except Exception as exc:  # every way of failing, each made a clear reason below
        raise connection_failed(exc, login, witness, seconds) from None


def connection_failed(
    error: Exception, login: Login, witness: HostKeyWitness, timeout: float
) -> PreparationFailed:
    where = login.address
    mismatch = f"the host key of {where} did not match the manifest's host_key"
    if isinstance(error, asyncssh.HostKeyNotVerifiable):
        got = witness.presented
        if got is None:
            return PreparationFailed(mismatch)
        return PreparationFailed(
            f"{mismatch}: it presented {got.algorithm.decode()} {got.get_fingerprint()}"
        )
    algorithm = login.host_key.algorithm.decode()
    if isinstance(error, asyncssh.KeyExchangeFailed) and "host key" in error.reason:
        return PreparationFailed(f"{mismatch}: it has no {algorithm} host key")
    lost = isinstance(error, asyncssh.ConnectionLost | ConnectionResetError)
    if lost and witness.dropped_before_verified:
        # What OpenSSH does when it has no host key of the type asked for.
        return PreparationFailed(
            f"{where} closed the connection before presenting a host key: "
            f"it may have no {algorithm} host key (the type of the manifest's host_key)"
        )
    if isinstance(error, asyncssh.PermissionDenied):
        return PreparationFailed(
            f"{where} refused the key for user {login.user} (authentication failed)"
        )
    if isinstance(error, asyncssh.Error):
        return PreparationFailed(f"the SSH connection to {where} failed: {describe(error)}")
    if isinstance(error, TimeoutError):
        return PreparationFailed(f"connecting to {where} timed out after {timeout:g} s")
    if isinstance(error, ConnectionRefusedError):
        return PreparationFailed(f"connecting to {where} failed: connection refused")
    if isinstance(error, OSError):
        return PreparationFailed(f"connecting to {where} failed: {describe(error)}")
    return PreparationFailed(f"connecting to {where} failed: {error}")


# Preparation


def check_plan(plan: BuildPlan) -> None:
    """What the host would be given, checked before connecting."""
    for name, value in plan.env.items():
        if not ENV_NAME.fullmatch(name) or "\0" in value:
            raise PreparationFailed(f"invalid environment variable {name!r}")
    for key in plan.keys:
        if not key.name or "/" in key.name or key.name in (".", "..") or "\0" in key.name:
            raise PreparationFailed(f"invalid SSH key file name {key.name!r}")
    for placed in plan.files:
        workspace_parts(placed.destination, f"cannot place a file at {placed.destination!r}")
    for source in plan.sources:
        clone_directory(source)


def base_env(plan: BuildPlan, user: str, *, home: str, tmp: str) -> dict[str, str]:
    """The environment every process of the build starts from (before `plan.env`); PATH
    is the host's own."""
    env = {
        "HOME": home,
        "LANG": "C.UTF-8",
        "TMPDIR": tmp,
        "CI": "true",
        "KILN": "true",
        "KILN_BUILD_ID": str(plan.build_id),
        "USER": user,
        "LOGNAME": user,
    }
    if plan.keys:
        env["GIT_SSH_COMMAND"] = ssh_command(f"{home}/.ssh", plan.keys)
    return env


def ssh_command(ssh_dir: str, keys: list[KeySpec]) -> str:
    # OpenSSH finds ~/.ssh through the password database, not $HOME, so git is told
    # where the build's own config, known hosts and keys are.
    options = ["ssh", "-F", f"{ssh_dir}/config", "-o", f"UserKnownHostsFile={ssh_dir}/known_hosts"]
    for key in keys:
        options += ["-i", f"{ssh_dir}/{key.name}"]
    return shlex.join(options)


def env_script(env: dict[str, str]) -> str:
    """/bin/sh text exporting `env` (names checked by check_plan, values quoted)."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def step_script(work: str, env_file: str, command: str) -> str:
    return (
        f"cd {shlex.quote(work)} || exit 126\n"
        f". {shlex.quote(env_file)}\n"
        f"exec {SHELL} -c {shlex.quote(command)}\n"
    )


def workspace_parts(destination: str, failed: str) -> list[str]:
    """The parts of a path inside the workspace; raises PreparationFailed for anything
    else (absolute, `..`, empty parts)."""
    parts = destination.split("/")
    if "\0" in destination or any(part in ("", ".", "..") for part in parts):
        raise PreparationFailed(f"{failed}: not a path inside the workspace")
    return parts


def private(mode: int = 0o700) -> asyncssh.SFTPAttrs:
    return asyncssh.SFTPAttrs(permissions=mode)


def kind_of(attrs: asyncssh.SFTPAttrs) -> str:
    mode = attrs.permissions or 0
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def is_regular(attrs: asyncssh.SFTPAttrs) -> bool:
    return stat.S_ISREG(attrs.permissions or 0)


# Waiting


async def until_stopped(work: Awaitable[T], stop: Stop, what: str) -> T:
    """What `work` gives, unless the build must stop first: then `work` is cancelled
    and PreparationStopped raised."""
    task = asyncio.ensure_future(work)
    try:
        reason = await wait_or_stop(task, stop)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
    if reason is not None and task.cancelled():
        raise stopped_during(reason, what)
    return task.result()


async def wait_or_stop(future: asyncio.Future[Any], stop: Stop) -> StopStatus | None:
    """None once `future` is done, or why the build must stop first."""
    killed = asyncio.create_task(stop.killed.wait())
    try:
        timeout = max(0.0, stop.deadline - time.monotonic())
        await asyncio.wait({future, killed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        killed.cancel()
    if future.done():
        return None
    return "killed" if stop.killed.is_set() else "timed_out"


async def exited_within(session: StepSession, seconds: float) -> bool:
    await asyncio.wait({session.exited}, timeout=seconds)
    return session.exited.done()


async def copy_output(session: StepSession, output: Output) -> None:
    while (chunk := await session.next_chunk()) is not None:
        await output.write(chunk)


def signal_code(name: str) -> int:
    """A process killed by signal N exits 128+N, as a shell reports it."""
    try:
        return 128 + signal.Signals[f"SIG{name}"].value
    except KeyError:
        return 255  # a signal this machine does not know: still a failure


def describe(error: BaseException) -> str:
    """A short, printable reason for `error` (a host's reasons are its own text)."""
    if isinstance(error, asyncssh.Error):
        text = error.reason or type(error).__name__
    elif isinstance(error, OSError) and error.strerror:
        text = error.strerror
    else:
        text = str(error) or type(error).__name__
    text = "".join(c if c.isprintable() else " " for c in text)
    return text[:MAX_REASON]
