"""The docker driver, on a real Docker Engine with images built by tests/docker_engine.py.

Every test has a Kiln instance name of its own, so that what it leaves on the Engine,
and its sweeps, never touch another test's (the tests run in parallel).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kiln.domain.masking import OutputLog
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
    Target,
    Workspace,
)
from tests import docker_engine
from tests.docker_engine import BUILDER, ORIGIN, Images
from tests.driver_support import Captured, job, make_stop
from tests.support import unique, wait_until

pytestmark = pytest.mark.no_database

T = TypeVar("T")
BUILD_ID = 7


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return docker_engine.ready(tmp_path_factory.mktemp("docker"))


@pytest.fixture
def settings(tmp_path: Path, images: Images) -> Iterator[DriverSettings]:
    instance = unique("kiln-test-")
    yield DriverSettings(
        root=tmp_path / "root",
        kill_grace=1.0,
        instance=instance,
        hidden=(tmp_path,),
        memory_bytes=256 * 1024**2,
        cpus=1.5,
        pids=128,
    )
    docker_engine.remove_labelled(f"kiln.instance={instance}")


def make_plan(image: str = docker_engine.BUSYBOX_IMAGE, **fields: Any) -> BuildPlan:
    target = fields.pop("target", Target(image=image))
    defaults: dict[str, Any] = {
        "build_id": BUILD_ID,
        "env": {},
        "masked": [],
        "sources": [],
        "files": [],
        "keys": [],
    }
    return BuildPlan(**(defaults | fields), target=target)


def in_workspace(
    settings: DriverSettings,
    body: Callable[[Workspace, Captured, Stop], Awaitable[T]],
    *,
    plan: BuildPlan | None = None,
) -> tuple[T, Captured]:
    """Prepares a workspace, runs `body` in it, closes it."""

    async def scenario() -> tuple[T, Captured]:
        driver = drivers.get("docker", settings)
        output, stop = Captured(), make_stop()
        workspace = await driver.prepare(plan or make_plan(), output, stop)
        try:
            return await body(workspace, output, stop), output
        finally:
            await workspace.close()

    return asyncio.run(scenario())


def run_commands(
    settings: DriverSettings, *commands: str, plan: BuildPlan | None = None
) -> tuple[JobResult, Captured]:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        return await workspace.run_job(job(*commands), output, stop)

    return in_workspace(settings, body, plan=plan)


def prepare_fails(settings: DriverSettings, plan: BuildPlan) -> tuple[PreparationFailed, Captured]:
    output = Captured()

    async def scenario() -> None:
        await drivers.get("docker", settings).prepare(plan, output, make_stop())

    with pytest.raises(PreparationFailed) as failed:
        asyncio.run(scenario())
    assert left_behind(settings) == ([], [])
    return failed.value, output


def left_behind(settings: DriverSettings) -> tuple[list[str], list[str]]:
    label = f"kiln.instance={settings.instance}"
    return docker_engine.labelled("container", label), docker_engine.labelled("volume", label)


async def running_container(settings: DriverSettings) -> str:
    """The build's container, once it runs a command."""
    label = f"kiln.instance={settings.instance}"

    def find() -> str | None:
        found = docker_engine.running(label)
        return found[0] if found else None

    return await asyncio.to_thread(wait_until, find, what="the job's container to run")


def kill_when(stop: Stop, ready: Callable[[], Awaitable[object]]) -> asyncio.Task[float]:
    """Kills the build once `ready` returns; when it did."""

    async def kill() -> float:
        await ready()
        stop.killed.set()
        return time.monotonic()

    return asyncio.create_task(kill())


async def printed(output: Captured, text: str) -> None:
    while text not in output.text:
        output.grew.clear()
        await output.grew.wait()


def environment(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


# Jobs


def test_a_passing_job_shows_commands_and_output(settings: DriverSettings) -> None:
    result, output = run_commands(settings, "echo hello", "echo world >&2")
    assert result == JobResult("passed", 0)
    assert output.text == "$ echo hello\nhello\n$ echo world >&2\nworld\n"


def test_a_job_stops_at_the_first_failing_command(settings: DriverSettings) -> None:
    result, output = run_commands(settings, "echo one", "exit 3", "echo never")
    assert result == JobResult("failed", 3)
    assert output.text == "$ echo one\none\n$ exit 3\n"


def test_a_job_without_commands_passes(settings: DriverSettings) -> None:
    assert run_commands(settings)[0] == JobResult("passed", 0)


def test_commands_run_in_the_workspace_and_share_it(settings: DriverSettings) -> None:
    result, output = run_commands(settings, "echo data > file", "cat file; pwd")
    assert result.status == "passed"
    assert output.text.endswith("data\n/workspace\n")


def test_the_workspace_is_where_the_manifest_says(settings: DriverSettings) -> None:
    plan = make_plan(target=Target(image=docker_engine.BUSYBOX_IMAGE, workspace="/src/app"))
    result, output = run_commands(settings, "pwd", plan=plan)
    assert result.status == "passed"
    assert output.text.endswith("\n/src/app\n")


@pytest.mark.parametrize("workspace", ["/", "relative", "/kiln/home", "/proc/x", "/a/../b"])
def test_a_workspace_where_none_can_be_fails_preparation(
    settings: DriverSettings, workspace: str
) -> None:
    plan = make_plan(target=Target(image=docker_engine.BUSYBOX_IMAGE, workspace=workspace))
    failed, _ = prepare_fails(settings, plan)
    assert "workspace" in str(failed)


def test_output_is_streamed_before_the_command_ends(settings: DriverSettings) -> None:
    result, output = run_commands(settings, "printf partial; sleep 0.6; echo done")
    assert result.status == "passed"
    arrived = next(at for at, data in output.writes if b"partial" in data)
    ended = output.writes[-1][0]
    assert ended - arrived > 0.3


def test_the_environment_is_built_from_scratch(
    settings: DriverSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KILN_SECRET_KEY", "do-not-leak")
    monkeypatch.setenv("UNRELATED", "worker-only")
    plan = make_plan(env={"GREETING": "hello there", "CI": "overridden"})
    commands = ["env", 'test -d "$HOME" && test -w "$HOME" && test -w "$TMPDIR"']
    result, output = run_commands(settings, *commands, plan=plan)
    assert result == JobResult("passed", 0)
    env = environment(output.text)
    assert "KILN_SECRET_KEY" not in env
    assert "UNRELATED" not in env
    assert "do-not-leak" not in output.text
    assert env["GREETING"] == "hello there"
    assert env["CI"] == "overridden"
    assert env["KILN"] == "true"
    assert env["KILN_BUILD_ID"] == str(BUILD_ID)
    assert env["KILN_JOB_NAME"] == "build"
    assert env["LANG"] == "C.UTF-8"
    assert env["PATH"] == "/bin"  # the image's
    assert env["HOME"] == "/kiln/home"
    assert env["TMPDIR"] == "/kiln/tmp"


def test_a_masked_value_printed_by_a_command_is_hidden(
    settings: DriverSettings, tmp_path: Path
) -> None:
    secret = "s3cr3t-value"
    plan = make_plan(env={"TOKEN": secret}, masked=[secret])
    path = tmp_path / "job.log"

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        log = OutputLog(path, plan.masked)
        try:
            return await workspace.run_job(job('echo "token is $TOKEN"'), log, stop)
        finally:
            await log.close()

    result, _ = in_workspace(settings, body, plan=plan)
    assert result.status == "passed"
    assert path.read_text() == '$ echo "token is $TOKEN"\ntoken is xxxxxx\n'


def test_a_killed_job_is_stopped_within_seconds(settings: DriverSettings) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> tuple[JobResult, float]:
        killer = kill_when(stop, lambda: running_container(settings))
        result = await workspace.run_job(job("sleep 30", "echo never"), output, stop)
        return result, time.monotonic() - await killer

    (result, elapsed), output = in_workspace(settings, body)
    assert result == JobResult("killed", None)
    assert elapsed < settings.kill_grace + 5
    assert "echo never" not in output.text
    assert left_behind(settings) == ([], [])


def test_a_job_ignoring_sigterm_is_killed_after_the_grace_period(
    settings: DriverSettings,
) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> tuple[JobResult, float]:
        killer = kill_when(stop, lambda: printed(output, "ready\n"))
        result = await workspace.run_job(job("trap '' TERM; echo ready; sleep 60"), output, stop)
        return result, time.monotonic() - await killer

    (result, elapsed), _ = in_workspace(settings, body)
    assert result == JobResult("killed", None)
    assert settings.kill_grace - 0.1 < elapsed < settings.kill_grace + 5


def test_a_job_past_its_deadline_times_out(settings: DriverSettings) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> tuple[JobResult, float]:
        stop.deadline = time.monotonic() + 3
        started = time.monotonic()
        result = await workspace.run_job(job("sleep 60", "echo never"), output, stop)
        return result, time.monotonic() - started

    (result, elapsed), output = in_workspace(settings, body)
    assert result == JobResult("timed_out", None)
    assert 2.9 < elapsed < 10
    assert "never" not in output.text


def test_a_stopped_build_runs_no_more_commands(settings: DriverSettings) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        stop.killed.set()
        return await workspace.run_job(job("echo never"), output, stop)

    result, output = in_workspace(settings, body)
    assert result == JobResult("killed", None)
    assert output.text == ""


def test_background_processes_left_behind_are_gone_with_the_job(
    settings: DriverSettings,
) -> None:
    label = f"kiln.instance={settings.instance}"

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> list[str]:
        commands = ["sh -c 'sleep 300 &'; sleep 300 & echo left", "echo next"]
        result = await workspace.run_job(job(*commands), output, stop)
        assert result == JobResult("passed", 0)
        return await asyncio.to_thread(docker_engine.running, label)

    started = time.monotonic()
    still_running, output = in_workspace(settings, body)
    assert time.monotonic() - started < 30
    assert output.text.endswith("left\n$ echo next\nnext\n")
    assert still_running == []


def test_a_command_killed_by_a_signal_fails_like_in_a_shell(settings: DriverSettings) -> None:
    result, _ = run_commands(settings, "kill -9 $$")
    assert result == JobResult("failed", 137)


def test_an_image_without_a_shell_cannot_start_commands(
    settings: DriverSettings, images: Images
) -> None:
    result, output = run_commands(settings, "true", plan=make_plan(images.no_shell))
    assert result.status == "failed"
    assert result.exit_code is None
    assert result.not_started == "cannot run /bin/sh: No such file or directory"
    assert "kiln: cannot run /bin/sh" in output.text


# Confinement


def test_containers_are_unprivileged_and_limited(settings: DriverSettings) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> dict[str, Any]:
        async def inspect_and_kill() -> dict[str, Any]:
            container = await running_container(settings)
            shown = await asyncio.to_thread(docker_engine.inspect, container)
            stop.killed.set()
            return shown

        inspecting = asyncio.create_task(inspect_and_kill())
        await workspace.run_job(job("sleep 30"), output, stop)
        return await inspecting

    shown, _ = in_workspace(settings, body)
    host = shown["HostConfig"]
    assert host["Privileged"] is False
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["CapDrop"] == ["ALL"]
    assert "NET_RAW" not in host["CapAdd"]
    assert "SYS_ADMIN" not in host["CapAdd"]
    assert host["Init"] is True
    assert host["Memory"] == host["MemorySwap"] == settings.memory_bytes
    assert host["NanoCpus"] == 1_500_000_000
    assert host["PidsLimit"] == settings.pids
    assert host["NetworkMode"] == "bridge"
    assert host["LogConfig"]["Type"] == "none"
    assert not host["Binds"]
    assert {mount["Type"] for mount in shown["Mounts"]} == {"volume"}
    assert {mount["Destination"] for mount in shown["Mounts"]} == {
        "/workspace",
        "/kiln/home",
        "/kiln/tmp",
    }
    labels = shown["Config"]["Labels"]
    assert labels["kiln.instance"] == settings.instance
    assert labels["kiln.build"] == str(BUILD_ID)


def test_a_job_sees_nothing_of_the_host(settings: DriverSettings, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "kiln.db").write_text("secret")
    repo = Path(__file__).resolve().parent.parent
    commands = [
        f"test ! -e {data_dir} && test ! -e {repo} && test ! -e {repo / 'kiln'}",
        "grep -E '^(NoNewPrivs|CapEff)' /proc/self/status",
        "touch owned && chown 1000:1000 owned && stat -c %u owned",  # root in its image
    ]
    result, output = run_commands(settings, *commands)
    assert result == JobResult("passed", 0), output.text
    status = dict(line.split(":\t") for line in output.text.splitlines() if ":\t" in line)
    assert status["NoNewPrivs"] == "1"
    capabilities = int(status["CapEff"], 16)
    assert capabilities & 1 << 0  # CAP_CHOWN
    assert not capabilities & 1 << 13  # CAP_NET_RAW
    assert not capabilities & 1 << 21  # CAP_SYS_ADMIN
    assert output.text.endswith("\n1000\n")


def test_a_command_out_of_memory_is_killed_and_said_so(settings: DriverSettings) -> None:
    small = DriverSettings(**(vars(settings) | {"memory_bytes": 64 * 1024**2}))
    result, output = run_commands(small, "dd if=/dev/zero of=/dev/null bs=100M count=1")
    assert result == JobResult("failed", 137)
    assert output.text.endswith("kiln: killed: out of memory (limit 64 MiB)\n")


# Preparation


def test_files_are_placed_in_the_workspace(settings: DriverSettings, tmp_path: Path) -> None:
    small = tmp_path / "object.bin"
    small.write_bytes(b"\x00object bytes\xff")
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    files = [
        PlacedFile(source=small, destination="conf/app.bin"),
        PlacedFile(source=large, destination="deep/er/large.bin"),
        PlacedFile(source=small, destination="top.bin"),
    ]
    commands = ["od -c conf/app.bin", "sha256sum deep/er/large.bin", "cmp conf/app.bin top.bin"]
    result, output = run_commands(settings, *commands, plan=make_plan(files=files))
    assert result.status == "passed", output.text
    assert "o   b   j   e   c   t" in output.text
    assert hashlib.sha256(large.read_bytes()).hexdigest() in output.text
    assert small.read_bytes() == b"\x00object bytes\xff"


@pytest.mark.parametrize("destination", ["../escape", "/etc/passwd", "a/../../b", "a//b", ""])
def test_a_file_outside_the_workspace_fails_preparation(
    settings: DriverSettings, tmp_path: Path, destination: str
) -> None:
    source = tmp_path / "object.bin"
    source.write_bytes(b"x")
    plan = make_plan(files=[PlacedFile(source=source, destination=destination)])
    failed, _ = prepare_fails(settings, plan)
    assert "cannot place a file" in str(failed)


def test_keys_are_written_privately_with_their_config(settings: DriverSettings) -> None:
    keys = [
        KeySpec(name="deploy", private_key="-----BEGIN KEY-----\nabc", config="Host a\n  User git"),
        KeySpec(name="other", private_key="-----BEGIN KEY-----\ndef\n", config=None),
    ]
    commands = [
        'cd "$HOME/.ssh" && stat -c "%a %n" . deploy other config',
        'cat "$HOME/.ssh/deploy" "$HOME/.ssh/config"',
        'echo "$GIT_SSH_COMMAND"',
    ]
    result, output = run_commands(settings, *commands, plan=make_plan(keys=keys))
    assert result.status == "passed", output.text
    assert "700 .\n600 deploy\n600 other\n600 config\n" in output.text
    assert "-----BEGIN KEY-----\nabc\nHost a\n  User git\n" in output.text
    assert "-i /kiln/home/.ssh/deploy -i /kiln/home/.ssh/other" in output.text.splitlines()[-1]


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "config"])
def test_an_unsafe_key_name_fails_preparation(settings: DriverSettings, name: str) -> None:
    plan = make_plan(keys=[KeySpec(name=name, private_key="k", config=None)])
    failed, _ = prepare_fails(settings, plan)
    assert "invalid SSH key file name" in str(failed)


def test_an_image_running_as_a_named_user_owns_the_workspace(
    settings: DriverSettings, images: Images, tmp_path: Path
) -> None:
    source = tmp_path / "object.bin"
    source.write_bytes(b"placed\n")
    plan = make_plan(
        images.user,
        files=[PlacedFile(source=source, destination="conf/app.txt")],
        keys=[KeySpec(name="deploy", private_key="k", config=None)],
    )
    commands = [
        "id -u; id -g",
        'stat -c "%u:%g %a %n" conf conf/app.txt "$HOME/.ssh/deploy"',
        'echo made > made && mkdir "$HOME/cache" && mktemp -p "$TMPDIR" >/dev/null',
    ]
    result, output = run_commands(settings, *commands, plan=plan)
    assert result == JobResult("passed", 0), output.text
    uid, gid = BUILDER
    assert f"{uid}\n{gid}\n" in output.text
    assert f"{uid}:{gid} 755 conf\n{uid}:{gid} 644 conf/app.txt\n" in output.text
    assert f"{uid}:{gid} 600 /kiln/home/.ssh/deploy\n" in output.text


def test_sources_are_cloned_and_checked_out(settings: DriverSettings, images: Images) -> None:
    if images.git is None:
        pytest.skip("no git on this machine to make an image that has git")
    sources = [
        SourceSpec(url=ORIGIN, ref="v1", directory="pinned"),
        SourceSpec(url=f"file://{ORIGIN}", ref=None, directory=None),
        SourceSpec(url=ORIGIN, ref="main", directory="deep/main"),
    ]
    plan = make_plan(images.git, sources=sources)
    result, output = run_commands(
        settings, "cat pinned/version origin/version deep/main/version", plan=plan
    )
    assert result.status == "passed", output.text
    assert f"kiln: cloning {ORIGIN}\n" in output.text
    assert output.text.endswith("one\ntwo\ntwo\n")


def test_a_failing_clone_fails_preparation_and_leaves_nothing(
    settings: DriverSettings, images: Images
) -> None:
    if images.git is None:
        pytest.skip("no git on this machine to make an image that has git")
    plan = make_plan(images.git, sources=[SourceSpec(url="/srv/missing", ref=None, directory=None)])
    failed, output = prepare_fails(settings, plan)
    assert str(failed) == "git clone of /srv/missing failed (exit 128)"
    assert "does not exist" in output.text


def test_a_missing_ref_fails_preparation(settings: DriverSettings, images: Images) -> None:
    if images.git is None:
        pytest.skip("no git on this machine to make an image that has git")
    plan = make_plan(images.git, sources=[SourceSpec(url=ORIGIN, ref="nope", directory=None)])
    failed, _ = prepare_fails(settings, plan)
    assert str(failed).startswith("git checkout of nope in origin failed")


def test_cloning_with_an_image_without_git_fails_clearly(settings: DriverSettings) -> None:
    plan = make_plan(sources=[SourceSpec(url=ORIGIN, ref=None, directory=None)])
    failed, _ = prepare_fails(settings, plan)
    assert str(failed) == (
        f"git clone of {ORIGIN} failed: the image {docker_engine.BUSYBOX_IMAGE} has no git"
        " (No such file or directory)"
    )


def test_a_password_in_a_source_url_is_not_shown(settings: DriverSettings) -> None:
    url = "https://kiln:pa55word@127.0.0.1:1/repo.git"
    plan = make_plan(sources=[SourceSpec(url=url, ref=None, directory=None)])
    failed, output = prepare_fails(settings, plan)
    assert str(failed).startswith("git clone of https://kiln:xxxxxx@127.0.0.1:1/repo.git")
    assert "pa55word" not in output.text


def test_a_killed_build_stops_preparing(settings: DriverSettings) -> None:
    async def scenario() -> None:
        stop = make_stop()
        stop.killed.set()
        await drivers.get("docker", settings).prepare(make_plan(), Captured(), stop)

    with pytest.raises(PreparationStopped) as stopped:
        asyncio.run(scenario())
    assert stopped.value.status == "killed"
    assert left_behind(settings) == ([], [])


def test_an_image_that_is_not_there_fails_preparation(settings: DriverSettings) -> None:
    image = f"{unique('kiln-nope-')}:1"
    failed, _ = prepare_fails(settings, make_plan(image))
    assert str(failed).startswith(
        f"image {image} is not on the Docker Engine and could not be pulled: "
    )


def test_an_image_is_pulled_every_time_when_always(settings: DriverSettings) -> None:
    always = DriverSettings(**(vars(settings) | {"docker_pull": "always"}))
    failed, _ = prepare_fails(always, make_plan())  # no registry is reachable from the tests
    image = docker_engine.BUSYBOX_IMAGE
    assert str(failed).startswith(f"image {image} could not be pulled (docker_pull is always): ")


def test_an_image_that_is_not_there_is_not_pulled_when_never(settings: DriverSettings) -> None:
    never = DriverSettings(**(vars(settings) | {"docker_pull": "never"}))
    failed, _ = prepare_fails(never, make_plan("kiln-nope:1"))
    assert str(failed) == "image kiln-nope:1 is not on the Docker Engine (docker_pull is never)"


@pytest.mark.parametrize("image", ["../containers/json", "UPPER:1", "a b", "-flag", ""])
def test_an_invalid_image_name_fails_preparation(settings: DriverSettings, image: str) -> None:
    failed, _ = prepare_fails(settings, make_plan(image))
    assert "image" in str(failed)


@pytest.mark.parametrize("host", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:1"])
def test_an_unreachable_engine_fails_preparation(settings: DriverSettings, host: str) -> None:
    unreachable = DriverSettings(**(vars(settings) | {"docker_host": host}))
    failed, _ = prepare_fails(unreachable, make_plan())
    assert str(failed).startswith(f"the Docker Engine at {host} is unreachable")


# Artifacts


def test_artifacts_must_be_regular_files_inside_the_workspace(settings: DriverSettings) -> None:
    commands = [
        "mkdir -p out dir && echo report > out/report.txt && : > empty",
        "head -c 3000017 /dev/urandom > big.bin && sha256sum big.bin",
        "ln -s out/report.txt inside-link && ln -s /etc/hostname outside-link",
        "ln -s /etc link-dir && ln -s out out-link && mkfifo fifo",
        "echo escaped > $HOME/escaped.txt",
    ]
    found_paths = ["out/report.txt", "./out//report.txt", "dir/../out/report.txt", "empty"]
    missing_paths = ["missing.txt", "dir", "inside-link", "outside-link", "link-dir/hostname"]
    missing_paths += ["out-link/report.txt", "fifo", "out/report.txt/x", "", ".", "../home"]
    missing_paths += ["../kiln/home/escaped.txt", "/etc/hostname", "/workspace/out/report.txt"]

    async def read(workspace: Workspace, path: str) -> bytes | str:
        try:
            return b"".join([chunk async for chunk in workspace.artifact(ArtifactSpec(path, "a"))])
        except ArtifactMissing as missing:
            return str(missing)

    async def body(workspace: Workspace, output: Captured, stop: Stop) -> list[bytes | str]:
        result = await workspace.run_job(job(*commands), output, stop)
        assert result.status == "passed", output.text
        return [await read(workspace, path) for path in ["big.bin", *found_paths, *missing_paths]]

    (big, *found), output = in_workspace(settings, body)
    assert isinstance(big, bytes)
    assert len(big) == 3000017
    assert hashlib.sha256(big).hexdigest() in output.text
    assert found[: len(found_paths)] == [b"report\n"] * 3 + [b""]
    assert found[len(found_paths) :] == [
        "missing.txt does not exist",
        "dir is a directory",
        "inside-link is a symbolic link",
        "outside-link is a symbolic link",
        "link-dir is a symbolic link",
        "out-link is a symbolic link",
        "fifo is not a regular file",
        "out/report.txt is not a directory",
        "the workspace itself is not a regular file",
        "the workspace itself is not a regular file",
        "../home is outside the workspace",
        "../kiln/home/escaped.txt is outside the workspace",
        "/etc/hostname is outside the workspace",
        "/workspace/out/report.txt is outside the workspace",
    ]


# Removal


def test_close_removes_every_container_and_volume(settings: DriverSettings, tmp_path: Path) -> None:
    source = tmp_path / "object.bin"
    source.write_bytes(b"x")
    plan = make_plan(files=[PlacedFile(source=source, destination="placed")])

    async def scenario() -> tuple[list[str], list[str]]:
        driver = drivers.get("docker", settings)
        workspace = await driver.prepare(plan, Captured(), make_stop())
        await workspace.run_job(job("echo data > file"), Captured(), make_stop())
        listed = await asyncio.to_thread(left_behind, settings)
        await workspace.close()
        await workspace.close()
        return listed

    containers, volumes = asyncio.run(scenario())
    assert len(containers) == 1  # the one that puts files in and reads them out
    assert len(volumes) == 3
    assert left_behind(settings) == ([], [])


def test_close_after_a_timeout_leaves_nothing(settings: DriverSettings) -> None:
    async def body(workspace: Workspace, output: Captured, stop: Stop) -> JobResult:
        stop.deadline = time.monotonic() + 2
        return await workspace.run_job(job("sleep 60"), output, stop)

    result, _ = in_workspace(settings, body)
    assert result == JobResult("timed_out", None)
    assert left_behind(settings) == ([], [])


def test_sweep_removes_what_finished_builds_left_and_keeps_running_ones(
    settings: DriverSettings, tmp_path: Path
) -> None:
    source = tmp_path / "object.bin"
    source.write_bytes(b"x")
    with_file = [PlacedFile(source=source, destination="placed")]
    other = f"kiln.instance={settings.instance}-other"
    labels = ["--label", f"kiln.instance={settings.instance}", "--label", "kiln.build=5"]
    image = docker_engine.BUSYBOX_IMAGE
    docker_engine.docker("run", "--detach", *labels, image, "sleep", "300")
    docker_engine.docker("volume", "create", *labels)
    docker_engine.docker("volume", "create", "--label", other, "--label", "kiln.build=5")
    asked: list[set[int]] = []

    def running(*ids: int) -> RunningFilter:
        async def still_running(candidates: set[int]) -> set[int]:
            asked.append(candidates)
            return candidates & set(ids)

        return still_running

    def of_build(build_id: int) -> tuple[list[str], list[str]]:
        labels = (f"kiln.instance={settings.instance}", f"kiln.build={build_id}")
        return docker_engine.labelled("container", *labels), docker_engine.labelled(
            "volume", *labels
        )

    async def scenario() -> None:
        driver = drivers.get("docker", settings)
        five = await driver.prepare(make_plan(build_id=5, files=with_file), Captured(), make_stop())
        six = await driver.prepare(make_plan(build_id=6, files=with_file), Captured(), make_stop())
        try:
            assert await driver.sweep(running(6)) == []
            assert asked == [{5, 6}]
            assert await asyncio.to_thread(of_build, 5) == ([], [])
            containers, volumes = await asyncio.to_thread(of_build, 6)
            assert (len(containers), len(volumes)) == (1, 3)
            assert await driver.sweep(running()) == []
            assert await asyncio.to_thread(of_build, 6) == ([], [])
        finally:
            await five.close()
            await six.close()

    try:
        asyncio.run(scenario())
        assert left_behind(settings) == ([], [])
        assert len(docker_engine.labelled("volume", other)) == 1  # another instance's
    finally:
        docker_engine.remove_labelled(other)


def test_sweep_with_no_engine_says_so(settings: DriverSettings) -> None:
    unreachable = DriverSettings(**(vars(settings) | {"docker_host": "unix:///nonexistent.sock"}))

    async def never(candidates: set[int]) -> set[int]:
        raise AssertionError("nothing was listed")

    left = asyncio.run(drivers.get("docker", unreachable).sweep(never))
    assert len(left) == 1
    assert "unreachable" in left[0]
