"""The ssh driver against a real OpenSSH server on this machine (tests/sshd.py), with
real processes and a real git repository: the "remote" host is this one, logged in as
an unprivileged user of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from kiln.drivers import registry as drivers
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
    RunningFilter,
    SourceSpec,
    Stop,
    Target,
    Workspace,
)
from kiln.drivers.ssh import SshWorkspace
from tests.driver_support import Captured, alive, job, make_stop, wait_gone
from tests.sshd import Sshd, keygen, remote_tmp_fixture, sshd_fixture  # noqa: F401
from tests.support import wait_until

pytestmark = pytest.mark.no_database

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent


def target_of(server: Sshd) -> Target:
    return Target(
        address=server.address,
        user=server.user,
        login_key=KeySpec(name="login", private_key=server.login_key, config=None),
        host_key=server.host_key,
    )


def make_plan(server: Sshd, **fields: Any) -> BuildPlan:
    # A build id of its own, so that its leftovers (were there any) are told apart from
    # those of other tests and of other test processes logged in as the same user.
    defaults: dict[str, Any] = {
        "build_id": secrets.randbelow(10**9) + 10**9,
        "env": {},
        "masked": [],
        "sources": [],
        "files": [],
        "keys": [],
        "target": target_of(server),
    }
    return BuildPlan(**(defaults | fields))


def make_settings(tmp_path: Path, **fields: Any) -> DriverSettings:
    # Local sources allowed (`file`), as `--sources-allow-local` does: the tests clone
    # repositories of this machine's.
    defaults: dict[str, Any] = {
        "root": tmp_path / "root",
        "kill_grace": 1.0,
        "git_protocols": "https:http:ssh:git:file",
    }
    return DriverSettings(**(defaults | fields))


def leftovers(server: Sshd, plan: BuildPlan) -> list[Path]:
    """Build directories of the plan's build on the host."""
    pattern = f"build-{plan.build_id}-*"
    return [*(server.home / ".kiln").glob(pattern), *Path("/tmp").glob(pattern)]


def in_workspace(
    server: Sshd,
    tmp_path: Path,
    body: Callable[[SshWorkspace, Captured, Stop], Awaitable[T]],
    *,
    plan: BuildPlan | None = None,
    kill_grace: float = 1.0,
) -> tuple[T, Captured]:
    """Prepares a workspace on the host, runs `body` in it, closes it; checks that
    closing left nothing of it behind."""
    plan = plan or make_plan(server)

    async def scenario() -> tuple[T, Captured]:
        driver = drivers.get("ssh", make_settings(tmp_path, kill_grace=kill_grace))
        output, stop = Captured(), make_stop()
        workspace = cast(SshWorkspace, await driver.prepare(plan, output, stop))
        try:
            return await body(workspace, output, stop), output
        finally:
            await workspace.close()

    result = asyncio.run(scenario())
    assert leftovers(server, plan) == []
    return result


def run_commands(
    server: Sshd, tmp_path: Path, *commands: str, plan: BuildPlan | None = None
) -> tuple[JobResult, Captured]:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        return await workspace.run_job(job(*commands), output, stop)

    return in_workspace(server, tmp_path, body, plan=plan)


def prepare_fails(server: Sshd, tmp_path: Path, plan: BuildPlan, **settings: Any) -> str:
    """Why preparing `plan` fails (it must), having checked that it left nothing."""
    output = Captured()

    async def scenario() -> None:
        driver = drivers.get("ssh", make_settings(tmp_path, **settings))
        await driver.prepare(plan, output, make_stop())

    with pytest.raises(PreparationFailed) as failed:
        asyncio.run(scenario())
    assert leftovers(server, plan) == []
    return str(failed.value)


def read_pid(path: Path) -> int:
    """The process id a job writes to `path`, once it has."""

    def written() -> str | None:
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            return None

    return int(wait_until(written, what=f"a process id in {path}"))


def git(*args: str, cwd: Path) -> str:
    command = ["git", "-c", "user.name=Kiln Test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def origin(sshd: Sshd, remote_tmp: Path) -> Path:
    """A repository the login user owns, with two commits: the first tagged v1, the
    second on `main`, which also holds a symbolic link out of it (`escape`)."""
    repo = remote_tmp / "origin"
    repo.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    for version in ("one", "two"):
        (repo / "version").write_text(version + "\n")
        git("add", "version", cwd=repo)
        if version == "two":
            (repo / "escape").symlink_to(remote_tmp)
            git("add", "escape", cwd=repo)
        git("commit", "--quiet", "-m", version, cwd=repo)
        if version == "one":
            git("tag", "v1", cwd=repo)
    sshd.give(repo)
    return repo


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


# Jobs


def test_a_passing_job_shows_commands_and_output(sshd: Sshd, tmp_path: Path) -> None:
    result, output = run_commands(sshd, tmp_path, "echo hello", "echo world >&2")
    assert result == JobResult("passed", 0)
    assert output.text.endswith("$ echo hello\nhello\n$ echo world >&2\nworld\n")
    assert output.text.startswith(f"kiln: connecting to {sshd.user}@{sshd.address}\n")


def test_a_job_stops_at_the_first_failing_command(sshd: Sshd, tmp_path: Path) -> None:
    result, output = run_commands(sshd, tmp_path, "echo one", "exit 3", "echo never")
    assert result == JobResult("failed", 3)
    assert "one\n$ exit 3\n" in output.text
    assert "never" not in output.text


def test_a_job_without_commands_passes(sshd: Sshd, tmp_path: Path) -> None:
    assert run_commands(sshd, tmp_path)[0] == JobResult("passed", 0)


def test_commands_run_in_the_workspace_and_share_it(sshd: Sshd, tmp_path: Path) -> None:
    commands = ["echo data > file", 'cat file; basename "$PWD"; id -un']
    result, output = run_commands(sshd, tmp_path, *commands)
    assert result.status == "passed"
    assert output.text.endswith(f"data\nwork\n{sshd.user}\n")


def test_output_is_streamed_before_the_command_ends(sshd: Sshd, tmp_path: Path) -> None:
    result, output = run_commands(sshd, tmp_path, "printf partial; sleep 0.6; echo done")
    assert result.status == "passed"
    arrived = next(at for at, data in output.writes if b"partial" in data)
    ended = output.writes[-1][0]
    assert ended - arrived > 0.3


def test_the_environment_is_built_from_scratch_and_reaches_the_job_verbatim(
    sshd: Sshd,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KILN_SECRET_KEY", "do-not-leak")
    tricky = 'it\'s "$(touch /tmp/kiln-pwned)" `id` $HOME \\ ; exit 9\nsecond line'
    plan = make_plan(sshd, env={"GREETING": "hello there", "CI": "overridden", "TRICKY": tricky})
    commands = ["env", 'test -d "$HOME" && test -w "$HOME"', 'printf "%s|" "$TRICKY"']
    result, output = run_commands(sshd, tmp_path, *commands, plan=plan)
    assert result.status == "passed"
    assert f"{tricky}|" in output.text
    assert not Path("/tmp/kiln-pwned").exists()
    env = dict(line.split("=", 1) for line in output.text.splitlines() if "=" in line)
    assert "KILN_SECRET_KEY" not in env
    assert "SSH_CONNECTION" not in env  # nothing of sshd's either
    assert env["GREETING"] == "hello there"
    assert env["CI"] == "overridden"
    assert env["KILN"] == "true"
    assert env["KILN_BUILD_ID"] == str(plan.build_id)
    assert env["KILN_JOB_NAME"] == "build"
    assert env["LANG"] == "C.UTF-8"
    assert env["USER"] == env["LOGNAME"] == sshd.user
    assert "/bin" in env["PATH"].split(":")  # the host's own
    home = Path(env["HOME"])
    assert home.name == "home"
    assert home.parent.name.startswith(f"build-{plan.build_id}-")
    assert Path(env["TMPDIR"]) == home.parent / "tmp"


def test_the_manifest_may_set_path(sshd: Sshd, tmp_path: Path) -> None:
    plan = make_plan(sshd, env={"PATH": "/nonexistent"})
    result, output = run_commands(sshd, tmp_path, 'echo "$PATH"', plan=plan)
    assert result == JobResult("passed", 0)
    assert output.text.endswith("/nonexistent\n")


def test_a_killed_job_loses_its_whole_process_group(
    sshd: Sshd,
    tmp_path: Path,
    remote_tmp: Path,
) -> None:
    pidfile = remote_tmp / "pid"

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> tuple[JobResult, float]:
        asyncio.get_running_loop().call_later(0.5, stop.killed.set)
        started = time.monotonic()
        commands = [f"sleep 60 & echo $! > {pidfile}; sleep 60", "echo never"]
        result = await workspace.run_job(job(*commands), output, stop)
        elapsed = time.monotonic() - started
        assert await asyncio.to_thread(wait_gone, read_pid(pidfile))  # before close()
        return result, elapsed

    (result, elapsed), output = in_workspace(sshd, tmp_path, body)
    assert result == JobResult("killed", None)
    assert elapsed < 4
    assert "echo never" not in output.text


def test_a_job_ignoring_sigterm_is_killed_after_the_grace_period(
    sshd: Sshd,
    tmp_path: Path,
) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> tuple[JobResult, float]:
        asyncio.get_running_loop().call_later(0.2, stop.killed.set)
        started = time.monotonic()
        result = await workspace.run_job(job("trap '' TERM; sleep 60"), output, stop)
        return result, time.monotonic() - started

    (result, elapsed), _ = in_workspace(sshd, tmp_path, body, kill_grace=0.5)
    assert result == JobResult("killed", None)
    assert 0.6 < elapsed < 4


def test_a_job_past_its_deadline_times_out(sshd: Sshd, tmp_path: Path) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> tuple[JobResult, float]:
        stop.deadline = time.monotonic() + 1
        started = time.monotonic()
        result = await workspace.run_job(job("sleep 60", "echo never"), output, stop)
        return result, time.monotonic() - started

    (result, elapsed), output = in_workspace(sshd, tmp_path, body)
    assert result == JobResult("timed_out", None)
    assert 0.9 < elapsed < 4
    assert "never" not in output.text


def test_a_stopped_build_runs_no_more_commands(sshd: Sshd, tmp_path: Path) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        stop.killed.set()
        output.data.clear()
        return await workspace.run_job(job("echo never"), output, stop)

    result, output = in_workspace(sshd, tmp_path, body)
    assert result == JobResult("killed", None)
    assert output.text == ""


def test_background_processes_left_behind_are_killed(
    sshd: Sshd, tmp_path: Path, remote_tmp: Path
) -> None:
    pidfile, quiet = remote_tmp / "pid", remote_tmp / "quiet"
    commands = [
        f"sleep 60 & echo $! > {pidfile}; echo left",  # holding the output open
        f"sleep 60 >/dev/null 2>&1 & echo $! > {quiet}",  # not holding it
        "echo next",
    ]

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        started = time.monotonic()
        result = await workspace.run_job(job(*commands), output, stop)
        assert time.monotonic() - started < 30  # not held up by the sleep holding output
        # Gone when the job is over, not only once the workspace is closed.
        for path in (pidfile, quiet):
            assert await asyncio.to_thread(wait_gone, read_pid(path))
        return result

    result, output = in_workspace(sshd, tmp_path, body)
    assert result == JobResult("passed", 0)
    assert "left\n" in output.text
    assert output.text.endswith("next\n")


def test_a_command_killed_by_a_signal_fails_like_in_a_shell(sshd: Sshd, tmp_path: Path) -> None:
    result, _ = run_commands(sshd, tmp_path, "kill -9 $$")
    assert result == JobResult("failed", 137)


def test_jobs_run_one_after_another_in_the_same_workspace(sshd: Sshd, tmp_path: Path) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> list[JobResult]:
        first = await workspace.run_job(job("echo kept > file"), output, stop)
        second = JobSpec(name="second", commands=['cat file; echo "$KILN_JOB_NAME"'], artifacts=[])
        return [first, await workspace.run_job(second, output, stop)]

    results, output = in_workspace(sshd, tmp_path, body)
    assert results == [JobResult("passed", 0)] * 2
    assert output.text.endswith("kept\nsecond\n")


# Preparation


def test_sources_are_cloned_and_checked_out(sshd: Sshd, tmp_path: Path, origin: Path) -> None:
    sources = [
        SourceSpec(url=str(origin), ref="v1", directory="pinned"),
        SourceSpec(url=f"file://{origin}", ref=None, directory=None),
        SourceSpec(url=str(origin), ref="main", directory="deep/main"),
    ]
    plan = make_plan(sshd, sources=sources)
    result, output = run_commands(
        sshd, tmp_path, "cat pinned/version origin/version deep/main/version", plan=plan
    )
    assert result.status == "passed"
    assert f"kiln: cloning {origin}\n" in output.text
    assert output.text.endswith("one\ntwo\ntwo\n")


def test_a_failing_clone_fails_preparation_and_leaves_nothing(
    sshd: Sshd,
    tmp_path: Path,
    remote_tmp: Path,
) -> None:
    missing = remote_tmp / "missing"
    plan = make_plan(sshd, sources=[SourceSpec(url=str(missing), ref=None, directory=None)])
    reason = prepare_fails(sshd, tmp_path, plan)
    assert "git clone of" in reason
    assert reason.endswith("missing failed (exit 128)")


def test_a_password_in_a_source_url_is_not_shown(sshd: Sshd, tmp_path: Path) -> None:
    url = "https://kiln:pa55word@127.0.0.1:1/repo.git"  # nothing listens on port 1
    plan = make_plan(sshd, sources=[SourceSpec(url=url, ref=None, directory=None)])
    reason = prepare_fails(sshd, tmp_path, plan)
    assert reason.startswith("git clone of https://kiln:xxxxxx@127.0.0.1:1/repo.git")


def test_a_missing_ref_fails_preparation(sshd: Sshd, tmp_path: Path, origin: Path) -> None:
    plan = make_plan(sshd, sources=[SourceSpec(url=str(origin), ref="nope", directory=None)])
    assert "git checkout of nope in origin failed" in prepare_fails(sshd, tmp_path, plan)


def test_a_killed_build_stops_preparing(sshd: Sshd, tmp_path: Path, origin: Path) -> None:
    plan = make_plan(sshd, sources=[SourceSpec(url=str(origin), ref=None, directory=None)])

    async def scenario() -> None:
        stop = make_stop()
        stop.killed.set()
        await drivers.get("ssh", make_settings(tmp_path)).prepare(plan, Captured(), stop)

    with pytest.raises(PreparationStopped) as stopped:
        asyncio.run(scenario())
    assert stopped.value.status == "killed"
    assert leftovers(sshd, plan) == []


def test_a_build_killed_during_a_hanging_clone_stops_within_seconds(
    sshd: Sshd, tmp_path: Path, remote_tmp: Path
) -> None:
    fifo = remote_tmp / "fifo"
    os.mkfifo(fifo)
    sshd.give(fifo)
    # git's ext:: transport runs a command as the remote end; reading a FIFO nobody
    # writes to, it never answers. (`% ` is a space within an argument.)
    url = f"ext::sh -c cat% {fifo}"
    plan = make_plan(sshd, sources=[SourceSpec(url=url, ref=None, directory="hang")])
    settings = make_settings(tmp_path, git_protocols="ext")

    async def scenario() -> tuple[str, float, int]:
        stop = make_stop()
        preparing = asyncio.create_task(
            drivers.get("ssh", settings).prepare(plan, Captured(), stop)
        )
        hanging = await asyncio.to_thread(
            wait_until, lambda: process_running("cat", str(fifo)), what="the clone to hang"
        )
        started = time.monotonic()
        stop.killed.set()
        with pytest.raises(PreparationStopped) as stopped:
            await preparing
        return str(stopped.value), time.monotonic() - started, hanging

    reason, elapsed, hanging = asyncio.run(scenario())
    assert reason == f"build killed during git clone of {url}"
    assert elapsed < 4
    assert wait_gone(hanging)
    assert leftovers(sshd, plan) == []


def test_the_operators_git_protocols_hold_whatever_the_manifest_sets(
    sshd: Sshd, tmp_path: Path, origin: Path
) -> None:
    plan = make_plan(
        sshd,
        env={"GIT_ALLOW_PROTOCOL": "file"},
        sources=[SourceSpec(url=f"file://{origin}", ref=None, directory=None)],
    )
    reason = prepare_fails(sshd, tmp_path, plan, git_protocols="https:http:ssh:git")
    assert reason == f"git clone of file://{origin} failed (exit 128)"


def process_running(*argv: str) -> int | None:
    """The id of a live process whose command line is `argv`, if there is one."""
    wanted = "\0".join(argv) + "\0"
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_text() == wanted:
                return int(entry.name)
        except OSError:
            continue
    return None


def test_files_are_placed_inside_the_workspace(sshd: Sshd, tmp_path: Path) -> None:
    source = tmp_path / "object.bin"
    content = b"\x00object bytes\xff" + os.urandom(600_000)
    source.write_bytes(content)
    files = [
        PlacedFile(source=source, destination="conf/app.bin"),
        PlacedFile(source=source, destination="top.bin"),
    ]
    commands = ["od -c conf/app.bin | head -1", "cmp conf/app.bin top.bin && echo same"]
    result, output = run_commands(sshd, tmp_path, *commands, plan=make_plan(sshd, files=files))
    assert result.status == "passed"
    assert "o   b   j   e   c   t" in output.text
    assert output.text.endswith("same\n")


@pytest.mark.parametrize("destination", ["/etc/passwd", "../outside", "a/../../b", "a//b", ""])
def test_files_outside_the_workspace_are_refused(
    sshd: Sshd,
    tmp_path: Path,
    destination: str,
) -> None:
    source = tmp_path / "object.bin"
    source.write_bytes(b"x")
    plan = make_plan(sshd, files=[PlacedFile(source=source, destination=destination)])
    assert "not a path inside the workspace" in prepare_fails(sshd, tmp_path, plan)


def test_a_file_is_never_placed_through_a_link_in_a_source(
    sshd: Sshd,
    tmp_path: Path,
    origin: Path,
    remote_tmp: Path,
) -> None:
    source = tmp_path / "object.bin"
    source.write_bytes(b"x")
    plan = make_plan(
        sshd,
        sources=[SourceSpec(url=str(origin), ref=None, directory="repo")],
        files=[PlacedFile(source=source, destination="repo/escape/planted")],
    )
    reason = prepare_fails(sshd, tmp_path, plan)
    assert reason == "placing a file at repo/escape/planted failed: repo/escape is a symbolic link"
    assert not (remote_tmp / "planted").exists()


def test_keys_are_written_privately_with_their_config(sshd: Sshd, tmp_path: Path) -> None:
    keys = [
        KeySpec(name="deploy", private_key="-----BEGIN KEY-----\nabc", config="Host a\n  User git"),
        KeySpec(name="other", private_key="-----BEGIN KEY-----\ndef\n", config=None),
    ]
    commands = [
        'cd "$HOME/.ssh" && stat -c "%a %n" . deploy other config',
        'cat "$HOME/.ssh/deploy" "$HOME/.ssh/config"',
        'echo "$GIT_SSH_COMMAND"',
        'ls "$HOME/.ssh"',
    ]
    result, output = run_commands(sshd, tmp_path, *commands, plan=make_plan(sshd, keys=keys))
    assert result.status == "passed"
    assert "700 .\n600 deploy\n600 other\n600 config\n" in output.text
    assert "-----BEGIN KEY-----\nabc\nHost a\n  User git\n" in output.text
    assert "/home/.ssh/deploy" in output.text.splitlines()[-5]
    assert "BEGIN OPENSSH PRIVATE KEY" not in output.text  # the login key is not one of them
    assert output.text.endswith("config\ndeploy\nother\n")


def test_an_unsafe_key_name_fails_preparation(sshd: Sshd, tmp_path: Path) -> None:
    plan = make_plan(sshd, keys=[KeySpec(name="../escape", private_key="k", config=None)])
    assert "invalid SSH key file name" in prepare_fails(sshd, tmp_path, plan)


def test_an_invalid_environment_name_fails_preparation(sshd: Sshd, tmp_path: Path) -> None:
    plan = make_plan(sshd, env={"A;touch /tmp/x": "1"})
    assert "invalid environment variable" in prepare_fails(sshd, tmp_path, plan)


# Logging in


def test_a_host_key_mismatch_fails_preparation_naming_what_was_presented(
    sshd: Sshd,
    tmp_path: Path,
) -> None:
    other = keygen(tmp_path / "other_host_key", "impostor")[1]
    plan = make_plan(sshd, target=replace(target_of(sshd), host_key=other))
    fingerprint = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"],
        input=sshd.host_key,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[1]
    reason = prepare_fails(sshd, tmp_path, plan)
    assert reason == (
        f"the host key of {sshd.address} did not match the manifest's host_key: "
        f"it presented ssh-ed25519 {fingerprint}"
    )


def test_a_host_without_a_key_of_the_expected_type_fails_preparation(
    sshd: Sshd,
    tmp_path: Path,
) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(tmp_path / "ecdsa")], check=True
    )
    ecdsa = (tmp_path / "ecdsa.pub").read_text().strip()
    plan = make_plan(sshd, target=replace(target_of(sshd), host_key=ecdsa))
    reason = prepare_fails(sshd, tmp_path, plan)
    assert reason == (
        f"{sshd.address} closed the connection before presenting a host key: it may have no "
        "ecdsa-sha2-nistp256 host key (the type of the manifest's host_key)"
    )


def test_a_key_the_host_refuses_fails_preparation(sshd: Sshd, tmp_path: Path) -> None:
    wrong = keygen(tmp_path / "wrong_key", "wrong")[0]
    login_key = KeySpec(name="wrong", private_key=wrong, config=None)
    plan = make_plan(sshd, target=replace(target_of(sshd), login_key=login_key))
    reason = prepare_fails(sshd, tmp_path, plan)
    assert reason == (
        f"{sshd.address} refused the key for user {sshd.user} (authentication failed)"
    )


def test_a_key_that_is_not_a_private_key_fails_preparation(sshd: Sshd, tmp_path: Path) -> None:
    login_key = KeySpec(name="garbage", private_key="secret-looking garbage", config=None)
    plan = make_plan(sshd, target=replace(target_of(sshd), login_key=login_key))
    reason = prepare_fails(sshd, tmp_path, plan)
    assert reason == "the key garbage is not an unencrypted private key"


def test_a_closed_port_fails_preparation(sshd: Sshd, tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        address = f"127.0.0.1:{unused.getsockname()[1]}"
        plan = make_plan(sshd, target=replace(target_of(sshd), address=address))
        reason = prepare_fails(sshd, tmp_path, plan)
    assert reason == f"connecting to {address} failed: connection refused"


def test_a_host_that_never_answers_times_out(
    sshd: Sshd,
    tmp_path: Path,
    silent_port: int,
) -> None:
    address = f"127.0.0.1:{silent_port}"
    plan = make_plan(sshd, target=replace(target_of(sshd), address=address))
    started = time.monotonic()
    reason = prepare_fails(sshd, tmp_path, plan, ssh_connect_timeout=1.0)
    assert reason == f"connecting to {address} timed out after 1 s"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("address", ["-oProxyCommand=x", "host:0", "host:99999", "a b", ""])
def test_an_invalid_address_fails_preparation(sshd: Sshd, tmp_path: Path, address: str) -> None:
    plan = make_plan(sshd, target=replace(target_of(sshd), address=address))
    assert prepare_fails(sshd, tmp_path, plan)


def test_the_workers_own_ssh_setup_is_never_used(
    sshd: Sshd,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker whose ~/.ssh has the right key, known host and config, and an agent,
    still cannot log in for a build without them."""
    home = tmp_path / "worker-home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(sshd.login_key)
    (home / ".ssh" / "id_ed25519").chmod(0o600)
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key}\n")
    (home / ".ssh" / "config").write_text(f"Host *\n  User {sshd.user}\n")
    monkeypatch.setenv("HOME", str(home))
    wrong = keygen(tmp_path / "wrong_key", "wrong")[0]
    login_key = KeySpec(name="wrong", private_key=wrong, config=None)
    plan = make_plan(sshd, target=replace(target_of(sshd), login_key=login_key))
    with agent_holding(home / ".ssh" / "id_ed25519", tmp_path / "agent.sock"):
        monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
        assert "authentication failed" in prepare_fails(sshd, tmp_path, plan)


@contextlib.contextmanager
def agent_holding(key: Path, socket_path: Path) -> Iterator[None]:
    """A real ssh-agent on `socket_path`, holding `key`."""
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        wait_until(socket_path.exists, what="ssh-agent to listen")
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", "-q", str(key)], env=env, check=True, capture_output=True)
        yield
    finally:
        agent.terminate()
        agent.wait()


def test_names_and_paths_reach_the_host_verbatim(
    sshd: Sshd, tmp_path: Path, origin: Path, remote_tmp: Path
) -> None:
    """Every name is quoted on its way: none is ever run as shell text."""
    canary = remote_tmp / "pwned"
    weird = f"we ird $(touch {canary}) `touch {canary}` 'q\"uote;"
    key_name = "k $(id) `id` 'q\";"  # no `/` in a file name
    source = tmp_path / "object.bin"
    source.write_bytes(b"placed\n")
    plan = make_plan(
        sshd,
        sources=[SourceSpec(url=str(origin), ref=None, directory=f"src/{weird}")],
        files=[PlacedFile(source=source, destination=f"files/{weird}")],
        keys=[KeySpec(name=key_name, private_key="k", config=None)],
        env={"WEIRD": weird, "KEY_NAME": key_name},
    )
    commands = ['cat "files/$WEIRD" "src/$WEIRD/version" "$HOME/.ssh/$KEY_NAME"']
    result, output = run_commands(sshd, tmp_path, *commands, plan=plan)
    assert result == JobResult("passed", 0), output.text
    assert output.text.endswith("placed\ntwo\nk\n")
    assert not canary.exists()


# Artifacts and cleanup


async def read_artifact(workspace: Workspace, path: str) -> bytes | str:
    """The artifact's bytes, or why it is missing."""
    try:
        return b"".join([chunk async for chunk in workspace.artifact(ArtifactSpec(path, "a"))])
    except ArtifactMissing as missing:
        return f"missing: {missing}"


def test_artifacts_must_be_regular_files_inside_the_workspace(
    sshd: Sshd,
    tmp_path: Path,
    remote_tmp: Path,
) -> None:
    outside = remote_tmp / "outside.txt"
    outside.write_text("not yours\n")
    sshd.give(outside)
    commands = [
        "mkdir -p out dir && echo report > out/report.txt",
        "head -c 1000000 /dev/urandom > big.bin",
        "ln -s out/report.txt inside-link",
        f"ln -s {outside} outside-link",
        f"ln -s {remote_tmp} dir-out",
        "echo escaped > ../escaped.txt",
        "mkfifo pipe",
    ]

    async def body(workspace: SshWorkspace, output: Captured, stop: Stop) -> dict[str, Any]:
        assert await workspace.run_job(job(*commands), output, stop) == JobResult("passed", 0)
        paths = ["out/report.txt", "inside-link", "out/../../work/out/report.txt", "big.bin"]
        paths += ["missing.txt", "dir", "../escaped.txt", "outside-link", str(outside)]
        paths += ["dir-out/outside.txt", "pipe", "", "out/report.txt/x"]
        found = {path: await read_artifact(workspace, path) for path in paths}
        found["real big.bin"] = await asyncio.to_thread(Path(workspace.work, "big.bin").read_bytes)
        return found

    found, _ = in_workspace(sshd, tmp_path, body)
    assert found["out/report.txt"] == found["inside-link"] == b"report\n"
    assert found["out/../../work/out/report.txt"] == b"report\n"
    assert found["big.bin"] == found["real big.bin"]
    assert len(found["big.bin"]) == 1_000_000
    assert found["missing.txt"] == "missing: no such file"
    assert found["dir"] == "missing: it is a directory"
    for outside_path in ("../escaped.txt", "outside-link", "dir-out/outside.txt"):
        assert found[outside_path] == "missing: outside the workspace"
    assert found[str(outside)] == found[""] == "missing: not a path inside the workspace"
    assert found["pipe"] == "missing: it is not a regular file"
    assert str(found["out/report.txt/x"]).startswith("missing: ")


def test_close_removes_the_workspace_even_when_read_only(sshd: Sshd, tmp_path: Path) -> None:
    commands = [
        "mkdir -p ro/sub locked && touch ro/sub/file locked/file",
        "chmod 555 ro/sub ro && chmod 000 locked",
        f"ln -s {tmp_path} link-out",
    ]

    async def body(workspace: SshWorkspace, output: Captured, stop: Stop) -> None:
        await workspace.run_job(job(*commands), Captured(), make_stop())
        assert await asyncio.to_thread(Path(workspace.dir).is_dir)
        await workspace.close()
        assert not await asyncio.to_thread(Path(workspace.dir).exists)
        await workspace.close()

    in_workspace(sshd, tmp_path, body)


def test_close_cleans_up_even_after_a_job_killed_the_keeper(
    sshd: Sshd, tmp_path: Path, remote_tmp: Path
) -> None:
    pidfile = remote_tmp / "pid"

    async def body(workspace: SshWorkspace, output: Captured, stop: Stop) -> None:
        # The keeper's command line ends with the build's directory, $PWD's parent.
        kill_keeper = 'pkill -KILL -f "control/keeper $(dirname "$PWD")\\$" && echo killed'
        assert await workspace.run_job(job(kill_keeper), output, stop) == JobResult("passed", 0)
        assert output.text.endswith("killed\n")
        await workspace.run_job(job(f"echo $$ > {pidfile}"), output, stop)

    in_workspace(sshd, tmp_path, body)  # which checks that nothing was left


def test_sweep_has_nothing_to_do(sshd: Sshd, tmp_path: Path) -> None:
    async def none_running(candidates: set[int]) -> set[int]:
        return set()

    still_running: RunningFilter = none_running
    driver = drivers.get("ssh", make_settings(tmp_path))
    assert asyncio.run(driver.sweep(still_running)) == []


# Crash safety


def test_a_lost_connection_fails_the_job_and_the_host_cleans_up(
    sshd: Sshd, tmp_path: Path, remote_tmp: Path
) -> None:
    pidfile = remote_tmp / "pid"
    plan = make_plan(sshd)

    async def scenario() -> tuple[JobResult, JobResult, str, int]:
        driver = drivers.get("ssh", make_settings(tmp_path))
        output, stop = Captured(), make_stop()
        workspace = cast(SshWorkspace, await driver.prepare(plan, output, stop))
        try:
            commands = [f"echo $$ > {pidfile}; exec sleep 300", "echo never"]
            running = asyncio.create_task(workspace.run_job(job(*commands), output, stop))
            pid = await asyncio.to_thread(read_pid, pidfile)
            workspace.connection.abort()  # as a network gone would, abruptly
            lost = await running
            after = await workspace.run_job(job("echo never"), output, stop)
        finally:
            await workspace.close()
        return lost, after, output.text, pid

    lost, after, text, pid = asyncio.run(scenario())
    assert lost == JobResult("failed", None)
    assert f"kiln: the connection to {sshd.address} was lost" in text
    assert after.status == "failed"
    assert after.not_started is not None
    assert "never" not in text.replace("$ echo never", "")
    assert wait_gone(pid)
    wait_until(lambda: leftovers(sshd, plan) == [], what="the host to remove the build directory")


# Run by the crash test in a worker process of its own (importing only the drivers, to
# start fast): prepares a workspace, says where it is, and runs a job until killed.
CRASHING_WORKER = """
import asyncio, json, sys, time
from pathlib import Path
from kiln.drivers import registry
from kiln.drivers.base import BuildPlan, DriverSettings, JobSpec, KeySpec, Stop, Target

class Discard:
    async def write(self, data):
        pass

config = json.loads(Path(sys.argv[1]).read_text())
login_key = KeySpec(name="login", private_key=config["login_key"], config=None)
target = Target(
    address=config["address"], user=config["user"], login_key=login_key,
    host_key=config["host_key"],
)
plan = BuildPlan(config["build_id"], {}, [], [], [], [], target)

async def main():
    driver = registry.get("ssh", DriverSettings(root=Path(config["root"]), kill_grace=1))
    stop = Stop(asyncio.Event(), time.monotonic() + 600)
    workspace = await driver.prepare(plan, Discard(), stop)
    print(workspace.dir, flush=True)
    await workspace.run_job(JobSpec("build", [config["command"]], []), Discard(), stop)

asyncio.run(main())
"""


def test_a_crashed_worker_leaves_nothing_on_the_host(
    sshd: Sshd,
    tmp_path: Path,
    remote_tmp: Path,
) -> None:
    background, foreground = remote_tmp / "background", remote_tmp / "foreground"
    build_id = make_plan(sshd).build_id
    config = {
        "address": sshd.address,
        "user": sshd.user,
        "login_key": sshd.login_key,
        "host_key": sshd.host_key,
        "build_id": build_id,
        "root": str(tmp_path / "root"),
        "command": f"sleep 300 & echo $! > {background}; echo $$ > {foreground}; exec sleep 300",
    }
    config_path = tmp_path / "crash.json"
    config_path.write_text(json.dumps(config))
    worker = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WORKER, str(config_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stdout is not None
        line = worker.stdout.readline().strip()
        assert line, "the worker did not prepare its workspace"
        remote_dir = Path(line)
        pids = [read_pid(background), read_pid(foreground)]
        assert remote_dir.is_dir()
        assert all(alive(pid) for pid in pids)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    wait_until(lambda: not remote_dir.exists(), what=f"{remote_dir} to be removed")
    for pid in pids:
        assert wait_gone(pid)
    assert leftovers(sshd, make_plan(sshd, build_id=build_id)) == []
