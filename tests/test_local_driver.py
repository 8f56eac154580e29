"""The local driver and output masking, with real processes and a real git repository."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from kiln.domain.masking import MASK, Masker, OutputLog
from kiln.drivers import local
from kiln.drivers import registry as drivers
from kiln.drivers.base import (
    ArtifactMissing,
    ArtifactSpec,
    BuildPlan,
    DriverSettings,
    JobResult,
    KeySpec,
    PlacedFile,
    PreparationFailed,
    PreparationStopped,
    RunningFilter,
    SourceSpec,
    Stop,
    Workspace,
)
from tests.driver_support import Captured, job, make_stop, processes_running, wait_gone
from tests.processes import REPO

pytestmark = pytest.mark.no_database

T = TypeVar("T")


def make_plan(**fields: Any) -> BuildPlan:
    defaults: dict[str, Any] = {
        "build_id": 7,
        "env": {},
        "masked": [],
        "sources": [],
        "files": [],
        "keys": [],
    }
    return BuildPlan(**(defaults | fields))


def local_settings(root: Path, kill_grace: float = 1.0, *, confined: bool = True) -> DriverSettings:
    return DriverSettings(
        root=root,
        kill_grace=kill_grace,
        local_confined=confined,
        git_protocols="https:http:ssh:git:file",  # the sources here are local repositories
    )


def in_workspace(
    tmp_path: Path,
    body: Callable[[Workspace, Captured, Stop], Awaitable[T]],
    *,
    plan: BuildPlan | None = None,
    kill_grace: float = 1.0,
    confined: bool = True,
) -> tuple[T, Captured]:
    """Prepares a workspace under tmp_path/workspaces, runs `body` in it, closes it."""

    async def scenario() -> tuple[T, Captured]:
        settings = local_settings(tmp_path / "workspaces", kill_grace, confined=confined)
        driver = drivers.get("local", settings)
        output, stop = Captured(), make_stop()
        workspace = await driver.prepare(plan or make_plan(), output, stop)
        try:
            return await body(workspace, output, stop), output
        finally:
            await workspace.close()

    return asyncio.run(scenario())


def run_commands(
    tmp_path: Path, *commands: str, plan: BuildPlan | None = None, confined: bool = True
) -> tuple[JobResult, Captured]:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        return await workspace.run_job(job(*commands), output, stop)

    return in_workspace(tmp_path, body, plan=plan, confined=confined)


def git(*args: str, cwd: Path) -> str:
    command = ["git", "-c", "user.name=Kiln Test", "-c", "user.email=test@example.com", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    """A repository with two commits; the first is tagged v1, the second is on `main`."""
    repo = tmp_path / "origin"
    repo.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    for version in ("one", "two"):
        (repo / "version").write_text(version + "\n")
        git("add", "version", cwd=repo)
        git("commit", "--quiet", "-m", version, cwd=repo)
        if version == "one":
            git("tag", "v1", cwd=repo)
    return repo


# Jobs


def test_a_passing_job_shows_commands_and_output(tmp_path: Path) -> None:
    result, output = run_commands(tmp_path, "echo hello", "echo world >&2")
    assert result == JobResult("passed", 0)
    assert output.text == "$ echo hello\nhello\n$ echo world >&2\nworld\n"


def test_a_job_stops_at_the_first_failing_command(tmp_path: Path) -> None:
    result, output = run_commands(tmp_path, "echo one", "exit 3", "echo never")
    assert result == JobResult("failed", 3)
    assert "one\n$ exit 3\n" in output.text
    assert "never" not in output.text


def test_a_job_without_commands_passes(tmp_path: Path) -> None:
    assert run_commands(tmp_path)[0] == JobResult("passed", 0)


def test_commands_run_in_the_workspace_and_share_it(tmp_path: Path) -> None:
    result, output = run_commands(tmp_path, "echo data > file", "cat file; basename $PWD")
    assert result.status == "passed"
    assert output.text.endswith("data\nwork\n")


def test_output_is_streamed_before_the_command_ends(tmp_path: Path) -> None:
    result, output = run_commands(tmp_path, "printf partial; sleep 0.6; echo done")
    assert result.status == "passed"
    arrived = next(at for at, data in output.writes if b"partial" in data)
    ended = output.writes[-1][0]
    assert ended - arrived > 0.3


def test_the_environment_is_built_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_SECRET_KEY", "do-not-leak")
    monkeypatch.setenv("UNRELATED", "worker-only")
    plan = make_plan(env={"GREETING": "hello there", "CI": "overridden"})
    result, output = run_commands(tmp_path, "env", 'test -d "$HOME" && test -w "$HOME"', plan=plan)
    assert result.status == "passed"
    env = dict(line.split("=", 1) for line in output.text.splitlines() if "=" in line)
    assert "KILN_SECRET_KEY" not in env
    assert "UNRELATED" not in env
    assert "do-not-leak" not in output.text
    assert env["GREETING"] == "hello there"
    assert env["CI"] == "overridden"
    assert env["KILN"] == "true"
    assert env["KILN_BUILD_ID"] == "7"
    assert env["KILN_JOB_NAME"] == "build"
    assert env["LANG"] == "C.UTF-8"
    # Confined, the build's own directories are at fixed places in its mount namespace.
    assert env["HOME"] == "/kiln/home"
    assert env["TMPDIR"] == "/tmp"
    assert env["USER"] == "nobody"


def test_unconfined_jobs_see_their_directories_where_they_are(tmp_path: Path) -> None:
    result, output = run_commands(tmp_path, 'echo "$HOME $TMPDIR $PWD"', confined=False)
    assert result.status == "passed"
    home, tmp, work = (Path(p) for p in output.text.splitlines()[-1].split())
    assert home.name == "home"
    assert home.parent.parent == tmp_path / "workspaces"
    assert tmp.parent == work.parent == home.parent


def test_a_killed_unconfined_job_loses_its_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> tuple[JobResult, float]:
        asyncio.get_running_loop().call_later(0.5, stop.killed.set)
        started = time.monotonic()
        commands = [f"sleep 60 & echo $! > {pidfile}; sleep 60", "echo never"]
        result = await workspace.run_job(job(*commands), output, stop)
        return result, time.monotonic() - started

    (result, elapsed), output = in_workspace(tmp_path, body, confined=False)
    assert result == JobResult("killed", None)
    assert elapsed < 4
    assert "echo never" not in output.text
    assert wait_gone(int(pidfile.read_text()))


def test_nothing_a_confined_job_starts_outlives_it(tmp_path: Path) -> None:
    # `setsid` leaves the process group, which an unconfined job's killing would miss.
    seconds = f"{300 + os.getpid() % 1000}.{time.monotonic_ns() % 1000}"
    started = time.monotonic()

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> list[int]:
        result = await workspace.run_job(job(f"setsid sleep {seconds} & echo left"), output, stop)
        assert result == JobResult("passed", 0)
        return processes_running(f"sleep {seconds}")

    left, output = in_workspace(tmp_path, body)
    assert time.monotonic() - started < 30
    assert output.text.endswith("left\n")
    assert left == []


def test_a_killed_confined_job_is_asked_to_stop_then_gone(tmp_path: Path) -> None:
    seconds = f"{300 + os.getpid() % 1000}.{time.monotonic_ns() % 1000}"

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        asyncio.get_running_loop().call_later(0.5, stop.killed.set)
        command = f"trap 'echo terminated; exit 1' TERM; setsid sleep {seconds} & sleep 60 & wait"
        return await workspace.run_job(job(command, "echo never"), output, stop)

    result, output = in_workspace(tmp_path, body)
    assert result == JobResult("killed", None)
    assert "terminated" in output.text  # SIGTERM reached the job before the sandbox went
    assert "echo never" not in output.text
    assert processes_running(f"sleep {seconds}") == []


def test_a_job_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> tuple[JobResult, float]:
        asyncio.get_running_loop().call_later(0.2, stop.killed.set)
        started = time.monotonic()
        result = await workspace.run_job(job("trap '' TERM; sleep 60"), output, stop)
        return result, time.monotonic() - started

    (result, elapsed), _ = in_workspace(tmp_path, body, kill_grace=0.5)
    assert result == JobResult("killed", None)
    assert 0.6 < elapsed < 4


def test_a_job_past_its_deadline_times_out(tmp_path: Path) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> tuple[JobResult, float]:
        stop.deadline = time.monotonic() + 1
        started = time.monotonic()
        result = await workspace.run_job(job("sleep 60", "echo never"), output, stop)
        return result, time.monotonic() - started

    (result, elapsed), output = in_workspace(tmp_path, body)
    assert result == JobResult("timed_out", None)
    assert 0.9 < elapsed < 4
    assert "never" not in output.text


def test_a_stopped_build_runs_no_more_commands(tmp_path: Path) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        stop.killed.set()
        return await workspace.run_job(job("echo never"), output, stop)

    result, output = in_workspace(tmp_path, body)
    assert result == JobResult("killed", None)
    assert output.text == ""


def test_background_processes_an_unconfined_job_leaves_are_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    command = f"sleep 60 & echo $! > {pidfile}; echo left"
    result, output = run_commands(tmp_path, command, confined=False)
    assert result == JobResult("passed", 0)
    assert time.monotonic() - started < 30  # not held up by the sleep holding the pipe open
    assert output.text.endswith("left\n")
    assert wait_gone(int(pidfile.read_text()))


def test_a_command_that_cannot_be_started_fails_its_job_and_says_why(tmp_path: Path) -> None:
    # Unconfined: a confined job cannot remove its own working directory (a mount point).
    result, output = run_commands(tmp_path, 'rm -rf "$PWD"', "true", confined=False)
    assert result.status == "failed"
    assert result.not_started is not None
    assert result.not_started.startswith("cannot run /bin/sh: No such file or directory")
    assert "kiln: cannot run /bin/sh: No such file or directory" in output.text


def test_a_command_killed_by_a_signal_fails_like_in_a_shell(tmp_path: Path) -> None:
    result, _ = run_commands(tmp_path, "kill -9 $$")
    assert result == JobResult("failed", 137)


# Masking


def test_masker_masks_values_split_across_chunks() -> None:
    masker = Masker(["abc", "abcdef", "", "pässwörd"])
    text = "xabcdefy abc p\u00e4ssw\u00f6rd abcde ab".encode()
    masked = b"".join(masker.feed(text[i : i + 1]) for i in range(len(text))) + masker.flush()
    assert masked == b"x" + MASK + b"y " + MASK + b" " + MASK + b" " + MASK + b"de ab"


def test_masker_holds_back_less_than_the_longest_value() -> None:
    masker = Masker(["secret"])
    assert masker.feed(b"hello sec") == b"hell"
    assert masker.feed(b"ret and more") == b"o " + MASK + b" and"
    assert masker.flush() == b" more"
    assert Masker([]).feed(b"anything") == b"anything"


def test_output_log_masks_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "job.log"

    async def scenario() -> OutputLog:
        log = OutputLog(path, ["s3cr3t-value"])
        await log.write(b"start s3c")
        await log.write(b"r3t-value end s3cr3t")
        assert path.read_bytes() == b"start " + MASK  # readable while being written
        await log.close()
        await log.close()
        return log

    log = asyncio.run(scenario())
    assert path.read_bytes() == b"start " + MASK + b" end s3cr3t"
    assert log.bytes_written == len(path.read_bytes())


def test_a_masked_value_printed_by_a_command_is_hidden(tmp_path: Path) -> None:
    secret = "s3cr3t-value"
    plan = make_plan(env={"TOKEN": secret}, masked=[secret])
    path = tmp_path / "job.log"

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        log = OutputLog(path, plan.masked)
        try:
            return await workspace.run_job(job('echo "token is $TOKEN"'), log, stop)
        finally:
            await log.close()

    result, _ = in_workspace(tmp_path, body, plan=plan)
    assert result.status == "passed"
    assert path.read_text() == '$ echo "token is $TOKEN"\ntoken is xxxxxx\n'


# Preparation


def test_sources_are_cloned_and_checked_out(tmp_path: Path, origin: Path) -> None:
    sources = [
        SourceSpec(url=str(origin), ref="v1", directory="pinned"),
        SourceSpec(url=f"file://{origin}", ref=None, directory=None),
        SourceSpec(url=str(origin), ref="main", directory="deep/main"),
    ]
    plan = make_plan(sources=sources)
    commands = ["cat pinned/version origin/version deep/main/version"]

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        return await workspace.run_job(job(*commands), output, stop)

    result, output = in_workspace(tmp_path, body, plan=plan)
    assert result.status == "passed"
    assert f"kiln: cloning {origin}\n" in output.text
    assert output.text.endswith("one\ntwo\ntwo\n")


def test_a_failing_clone_fails_preparation_and_leaves_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    plan = make_plan(sources=[SourceSpec(url=str(missing), ref=None, directory=None)])
    root = tmp_path / "workspaces"
    output = Captured()

    async def scenario() -> None:
        await drivers.get("local", local_settings(root, 1)).prepare(plan, output, make_stop())

    with pytest.raises(PreparationFailed, match=r"git clone of .*missing failed \(exit 128\)"):
        asyncio.run(scenario())
    assert "does not exist" in output.text
    assert list(root.iterdir()) == []


def test_a_password_in_a_source_url_is_not_shown(tmp_path: Path) -> None:
    url = "https://kiln:pa55word@127.0.0.1:1/repo.git"  # nothing listens on port 1
    plan = make_plan(sources=[SourceSpec(url=url, ref=None, directory=None)])
    output = Captured()

    async def scenario() -> None:
        driver = drivers.get("local", local_settings(tmp_path / "ws", 1))
        await driver.prepare(plan, output, make_stop())

    with pytest.raises(PreparationFailed) as failed:
        asyncio.run(scenario())
    assert str(failed.value).startswith("git clone of https://kiln:xxxxxx@127.0.0.1:1/repo.git")
    assert "kiln: cloning https://kiln:xxxxxx@127.0.0.1:1/repo.git\n" in output.text


def test_a_missing_ref_fails_preparation(tmp_path: Path, origin: Path) -> None:
    plan = make_plan(sources=[SourceSpec(url=str(origin), ref="nope", directory=None)])

    async def scenario() -> None:
        driver = drivers.get("local", local_settings(tmp_path / "ws", 1))
        await driver.prepare(plan, Captured(), make_stop())

    with pytest.raises(PreparationFailed, match="git checkout of nope in origin failed"):
        asyncio.run(scenario())


def test_a_killed_build_stops_preparing(tmp_path: Path, origin: Path) -> None:
    plan = make_plan(sources=[SourceSpec(url=str(origin), ref=None, directory=None)])
    root = tmp_path / "workspaces"

    async def scenario() -> None:
        stop = make_stop()
        stop.killed.set()
        await drivers.get("local", local_settings(root, 1)).prepare(plan, Captured(), stop)

    with pytest.raises(PreparationStopped) as stopped:
        asyncio.run(scenario())
    assert stopped.value.status == "killed"
    assert list(root.iterdir()) == []


def test_files_are_placed_inside_the_workspace(tmp_path: Path) -> None:
    source = tmp_path / "object.bin"
    source.write_bytes(b"\x00object bytes\xff")
    files = [PlacedFile(source=source, destination="conf/app.bin")]
    result, output = run_commands(tmp_path, "od -c conf/app.bin", plan=make_plan(files=files))
    assert result.status == "passed"
    assert "o   b   j   e   c   t" in output.text


@pytest.mark.parametrize("destination", ["/tmp/placed.bin", "../../placed.bin", "a/../../x"])
def test_a_file_is_never_placed_outside_the_workspace(tmp_path: Path, destination: str) -> None:
    source = tmp_path / "object.bin"
    source.write_bytes(b"bytes")
    plan = make_plan(files=[PlacedFile(source=source, destination=destination)])

    async def scenario() -> None:
        await drivers.get("local", local_settings(tmp_path / "ws")).prepare(
            plan, Captured(), make_stop()
        )

    with pytest.raises(PreparationFailed, match="outside the workspace"):
        asyncio.run(scenario())
    assert not Path("/tmp/placed.bin").exists() or destination != "/tmp/placed.bin"
    assert list((tmp_path / "ws").iterdir()) == []


def test_a_link_in_a_cloned_source_cannot_carry_a_file_out(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = tmp_path / "evil"
    repo.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    (repo / "conf").symlink_to(outside)
    git("add", "conf", cwd=repo)
    git("commit", "--quiet", "-m", "a link out", cwd=repo)
    source = tmp_path / "object.bin"
    source.write_bytes(b"bytes")
    plan = make_plan(
        sources=[SourceSpec(url=str(repo), ref=None, directory="app")],
        files=[PlacedFile(source=source, destination="app/conf/app.bin")],
    )

    async def scenario() -> None:
        await drivers.get("local", local_settings(tmp_path / "ws")).prepare(
            plan, Captured(), make_stop()
        )

    with pytest.raises(PreparationFailed, match="a link or a file is in the way"):
        asyncio.run(scenario())
    assert list(outside.iterdir()) == []


def test_keys_are_written_privately_with_their_config(tmp_path: Path) -> None:
    keys = [
        KeySpec(name="deploy", private_key="-----BEGIN KEY-----\nabc", config="Host a\n  User git"),
        KeySpec(name="other", private_key="-----BEGIN KEY-----\ndef\n", config=None),
    ]
    commands = [
        'cd "$HOME/.ssh" && stat -c "%a %n" . deploy other config',
        'cat "$HOME/.ssh/deploy" "$HOME/.ssh/config"',
        'echo "$GIT_SSH_COMMAND"',
    ]
    result, output = run_commands(tmp_path, *commands, plan=make_plan(keys=keys))
    assert result.status == "passed"
    assert "700 .\n600 deploy\n600 other\n600 config\n" in output.text
    assert "-----BEGIN KEY-----\nabc\nHost a\n  User git\n" in output.text
    assert "/home/.ssh/deploy" in output.text.splitlines()[-1]


def test_an_unsafe_key_name_fails_preparation(tmp_path: Path) -> None:
    plan = make_plan(keys=[KeySpec(name="../escape", private_key="k", config=None)])

    async def scenario() -> None:
        driver = drivers.get("local", local_settings(tmp_path / "ws", 1))
        await driver.prepare(plan, Captured(), make_stop())

    with pytest.raises(PreparationFailed, match="invalid SSH key file name"):
        asyncio.run(scenario())


# Artifacts and cleanup


def test_artifacts_must_be_regular_files_inside_the_workspace(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours\n")
    commands = [
        "mkdir -p out dir && echo report > out/report.txt",
        "ln -s out/report.txt inside-link",
        f"ln -s {outside} outside-link",
        "echo escaped > ../escaped.txt",
    ]

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> list[str | None]:
        await workspace.run_job(job(*commands), output, stop)
        paths = ["out/report.txt", "inside-link", "out/../../work/out/report.txt", "missing.txt"]
        paths += ["dir", "../escaped.txt", "outside-link", str(outside)]
        return [await read_artifact(workspace, path) for path in paths]

    found, _ = in_workspace(tmp_path, body)
    assert found == ["report\n"] * 3 + [None] * 5


async def read_artifact(workspace: Workspace, path: str) -> str | None:
    try:
        return b"".join([c async for c in workspace.artifact(ArtifactSpec(path, "a"))]).decode()
    except ArtifactMissing:
        return None


def test_close_removes_the_workspace_even_when_read_only(tmp_path: Path) -> None:
    root = tmp_path / "workspaces"
    commands = [
        "mkdir -p ro/sub locked && touch ro/sub/file locked/file",
        "chmod 555 ro/sub ro && chmod 000 locked",
        f"ln -s {tmp_path} link-out",
    ]

    async def scenario() -> None:
        driver = drivers.get("local", local_settings(root, 1))
        workspace = await driver.prepare(make_plan(), Captured(), make_stop())
        await workspace.run_job(job(*commands), Captured(), make_stop())
        assert len(list(root.iterdir())) == 1
        await workspace.close()
        await workspace.close()

    asyncio.run(scenario())
    assert list(root.iterdir()) == []


def test_a_job_making_its_files_immutable_cannot_keep_its_workspace(tmp_path: Path) -> None:
    root = tmp_path / "workspaces"
    commands = [
        "mkdir -p keep/deep && touch keep/deep/file keep/log",
        "chattr +i keep/deep/file && chattr +a keep/log && chattr +i keep/deep",
    ]

    async def scenario() -> None:
        # Unconfined: a confined job runs unprivileged and cannot set these attributes.
        driver = drivers.get("local", local_settings(root, 1, confined=False))
        workspace = await driver.prepare(make_plan(), Captured(), make_stop())
        result = await workspace.run_job(job(*commands), Captured(), make_stop())
        assert result == JobResult("passed", 0)  # the attack itself worked
        await workspace.close()

    asyncio.run(scenario())
    assert list(root.iterdir()) == []


def test_clearing_attributes_never_follows_a_link_out_of_the_workspace(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    subprocess.run(["chattr", "+i", str(outside / "precious")], check=True)
    root = tmp_path / "workspaces"
    commands = [
        f"ln -s {outside} dir-out && ln -s {outside / 'precious'} file-out",
        "touch stuck && chattr +i stuck",  # so that removal clears attributes
    ]

    async def scenario() -> None:
        driver = drivers.get("local", local_settings(root, 1, confined=False))
        workspace = await driver.prepare(make_plan(), Captured(), make_stop())
        await workspace.run_job(job(*commands), Captured(), make_stop())
        await workspace.close()

    try:
        asyncio.run(scenario())
        assert list(root.iterdir()) == []
        flags = subprocess.run(
            ["lsattr", "-d", str(outside / "precious")], capture_output=True, text=True, check=True
        ).stdout.split()[0]
        assert "i" in flags
        assert (outside / "precious").read_text() == "keep"
    finally:
        subprocess.run(["chattr", "-i", str(outside / "precious")], check=False)


def test_sweep_removes_what_finished_builds_left_and_keeps_running_ones(tmp_path: Path) -> None:
    root = tmp_path / "workspaces"
    for name in ("build-5-abc", "build-6-def"):
        (root / name / "work").mkdir(parents=True)
        (root / name / "work" / "file").touch()
    subprocess.run(["chattr", "+i", str(root / "build-5-abc" / "work" / "file")], check=True)
    (root / "not-a-workspace").mkdir()

    def running(*ids: int) -> RunningFilter:
        async def still_running(candidates: set[int]) -> set[int]:
            assert candidates <= {5, 6}
            return candidates & set(ids)

        return still_running

    driver = drivers.get("local", local_settings(root, 1))
    assert asyncio.run(driver.sweep(running(6))) == []
    assert sorted(p.name for p in root.iterdir()) == ["build-6-def", "not-a-workspace"]
    assert asyncio.run(driver.sweep(running())) == []
    assert sorted(p.name for p in root.iterdir()) == ["not-a-workspace"]


def test_reading_output_never_closes_another_threads_file(tmp_path: Path) -> None:
    """Under uvloop (as kiln serve runs) while other threads open and close files, as
    SQLite's do: a pipe's descriptor closed twice closes one of theirs. Reading output
    through uvloop's pipe transport did so about once in a thousand pipes."""
    probe = tmp_path / "probe"
    probe.write_text("x")
    inode = probe.stat().st_ino
    errors: list[str] = []
    done = threading.Event()

    def open_and_close() -> None:
        while not done.is_set():
            fd = os.open(probe, os.O_RDONLY)
            try:
                if os.fstat(fd).st_ino != inode:
                    errors.append("a descriptor of another file")
            except OSError as exc:
                errors.append(repr(exc))
            try:
                os.close(fd)
            except OSError as exc:
                errors.append(repr(exc))

    async def pipes(count: int) -> bytes:
        received = Captured()
        for _ in range(count):
            read_fd, write_fd = os.pipe()
            os.write(write_fd, b"x")
            os.close(write_fd)
            try:
                await local.copy_output(read_fd, received)
            finally:
                os.close(read_fd)
        return bytes(received.data)

    threads = [threading.Thread(target=open_and_close) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        copied = uvloop.run(pipes(5000))
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert copied == b"x" * 5000
    assert errors == []


def test_get_knows_the_drivers(tmp_path: Path) -> None:
    for name in ("local", "docker", "ssh"):
        assert type(drivers.get(name, local_settings(tmp_path))).__name__.lower().startswith(name)
    with pytest.raises(NotImplementedError):
        drivers.get("qemu", local_settings(tmp_path))
    with pytest.raises(LookupError):
        drivers.get("nope", local_settings(tmp_path))


NOT_ROOT_JOB = """
import asyncio, sys, time
from pathlib import Path
from kiln.drivers import registry
from kiln.drivers.base import BuildPlan, DriverSettings, JobSpec, Stop

class Printed:
    async def write(self, data):
        sys.stdout.write(data.decode())

async def main(root, secret):
    settings = DriverSettings(root=Path(root), kill_grace=1, hidden=(Path(secret).parent,))
    plan = BuildPlan(build_id=1, env={}, masked=[], sources=[], files=[], keys=[])
    stop = Stop(killed=asyncio.Event(), deadline=time.monotonic() + 60)
    workspace = await registry.get("local", settings).prepare(plan, Printed(), stop)
    commands = ["id -u", "grep CapEff /proc/self/status", f"cat {secret} || echo unreadable"]
    result = await workspace.run_job(JobSpec("a", commands, []), Printed(), stop)
    await workspace.close()
    print(result.status)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_jobs_are_confined_in_a_user_namespace_when_kiln_is_not_root(
    request: pytest.FixtureRequest,
) -> None:
    # The driver run as an unprivileged user (nobody): bwrap then makes a user namespace.
    if os.geteuid() != 0:
        pytest.fail("this test starts the driver as another user, which needs root")
    # Outside pytest's temporary directories, which only root may enter.
    top = Path(tempfile.mkdtemp(prefix="kiln-not-root-"))
    request.addfinalizer(lambda: shutil.rmtree(top, ignore_errors=True))
    (top / "data").mkdir()
    secret = top / "data" / "secret.key"
    secret.write_text("the server's own\n")
    for path in (top, top / "data", secret):
        os.chown(path, 65534, 65534)
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            sys.executable,
            "-c",
            NOT_ROOT_JOB,
            str(top / "workspaces"),
            str(secret),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": os.environ["PATH"], "HOME": str(top), "PYTHONPATH": str(REPO)},
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "65534" in lines  # the job's user is Kiln's own, mapped into the namespace
    assert "CapEff:\t0000000000000000" in lines
    assert "unreadable" in lines  # its own user's file, yet out of the job's sight
    assert "the server's own" not in done.stdout
    assert lines[-1] == "passed"
