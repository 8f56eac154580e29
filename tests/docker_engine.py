"""A Docker Engine for the docker driver's tests, and the images they run.

No registry is reachable from the test machines, so the images are built here, from
what the machine has: a static busybox (Debian's `busybox-static`) for a tiny image with
a shell, and the machine's own git with the libraries it links for an image that can
clone. Images are built once and kept (a later session reuses them); `dockerd` is
started if it is installed but not running, and left running for later sessions and
other test workers. A file lock keeps concurrent test workers from doing either twice.

Without a Docker Engine the tests fail, saying so: they are never skipped (`.ci/run`
installs and starts one).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.support import wait_until

BUSYBOX_IMAGE = "kiln-test-busybox:1"  # busybox installed in /bin; PATH=/bin
GIT_IMAGE = "kiln-test-git:1"  # the busybox image, git, and a repository at /srv/origin
USER_IMAGE = "kiln-test-builder:1"  # the busybox image running as `builder` (1234:2345)
NO_SHELL_IMAGE = "kiln-test-no-shell:1"  # nothing but /busybox: no /bin/sh
BUILDER = (1234, 2345)
ORIGIN = "/srv/origin"  # in GIT_IMAGE: two commits, the first tagged v1, the second `main`
LOCK = Path(tempfile.gettempdir()) / "kiln-test-docker.lock"
ENGINE_START_SECONDS = 60.0
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
PT_INTERP = 3  # an ELF program header naming a dynamic loader


@dataclass(frozen=True)
class Images:
    busybox: str
    git: str | None  # None when this machine has no git to put into an image
    user: str
    no_shell: str


def unavailable(reason: str) -> None:
    pytest.fail(f"the docker driver's tests need a Docker Engine: {reason}")


def docker(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_BUILDKIT": "0"}  # buildx is not installed everywhere
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def engine_ready() -> bool:
    try:
        return docker("info", check=False, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@contextlib.contextmanager
def locked() -> Iterator[None]:
    with LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ready(directory: Path) -> Images:
    """A reachable Docker Engine with the test images on it (skips or fails if none)."""
    if shutil.which("docker") is None:
        unavailable("there is no docker command on this machine")
    with locked():
        if not engine_ready():
            start_engine(directory)
        return build_images(directory)


def start_engine(directory: Path) -> None:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        unavailable("the Docker Engine is not running and there is no dockerd to start")
        return
    log = directory / "dockerd.log"
    with log.open("wb") as file:
        process = subprocess.Popen(
            [dockerd], stdout=file, stderr=file, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def up_or_dead() -> bool:
        return process.poll() is not None or engine_ready()

    wait_until(up_or_dead, what="dockerd to answer", seconds=ENGINE_START_SECONDS)
    if process.returncode is not None:
        tail = log.read_text(errors="replace")[-2000:]
        pytest.fail(f"dockerd exited ({process.returncode}):\n{tail}")


def build_images(directory: Path) -> Images:
    busybox = static_busybox()
    if not has_image(BUSYBOX_IMAGE):
        context = directory / "busybox"
        context.mkdir()
        shutil.copy(busybox, context / "busybox")
        build(
            BUSYBOX_IMAGE,
            context,
            "FROM scratch",
            "COPY busybox /bin/busybox",
            'RUN ["/bin/busybox", "--install", "-s", "/bin"]',
            "ENV PATH=/bin",
        )
    if not has_image(NO_SHELL_IMAGE):
        context = directory / "no-shell"
        context.mkdir()
        shutil.copy(busybox, context / "busybox")
        build(NO_SHELL_IMAGE, context, "FROM scratch", "COPY busybox /busybox")
    if not has_image(USER_IMAGE):
        build_user_image(directory / "user")
    git = shutil.which("git")
    if git is not None and not has_image(GIT_IMAGE):
        build_git_image(directory / "git", Path(git))
    return Images(BUSYBOX_IMAGE, GIT_IMAGE if git else None, USER_IMAGE, NO_SHELL_IMAGE)


def static_busybox() -> Path:
    for candidate in map(Path, BUSYBOX_PATHS):
        if candidate.is_file() and is_static(candidate):
            return candidate
    unavailable("no static busybox on this machine (apt-get install busybox-static)")
    raise AssertionError("unreachable")


def is_static(path: Path) -> bool:
    """Whether an x86-64/aarch64 ELF executable has no dynamic loader."""
    data = path.read_bytes()
    if data[:5] != b"\x7fELF\x02":  # 64-bit
        return False
    order: Literal["little", "big"] = "little" if data[5] == 1 else "big"
    offset = int.from_bytes(data[32:40], order)
    size, count = int.from_bytes(data[54:56], order), int.from_bytes(data[56:58], order)
    types = (
        int.from_bytes(data[offset + i * size : offset + i * size + 4], order) for i in range(count)
    )
    return PT_INTERP not in types


def has_image(tag: str) -> bool:
    return docker("image", "inspect", tag, check=False).returncode == 0


def build(tag: str, context: Path, *dockerfile: str) -> None:
    (context / "Dockerfile").write_text("\n".join(dockerfile) + "\n")
    result = docker("build", "--quiet", "--tag", tag, str(context), check=False)
    if result.returncode != 0:
        pytest.fail(f"building {tag} failed:\n{result.stdout}{result.stderr}")


def build_user_image(context: Path) -> None:
    uid, gid = BUILDER
    (context / "etc").mkdir(parents=True)
    (context / "etc" / "passwd").write_text(
        f"root:x:0:0:root:/root:/bin/sh\nbuilder:x:{uid}:{gid}::/nonexistent:/bin/sh\n"
    )
    (context / "etc" / "group").write_text(f"root:x:0:\nbuilders:x:{gid}:\n")
    build(USER_IMAGE, context, f"FROM {BUSYBOX_IMAGE}", "COPY etc/ /etc/", "USER builder")


def build_git_image(context: Path, git: Path) -> None:
    """The busybox image with this machine's git and the libraries it links."""
    root = context / "root"
    for directory in ("usr/bin", "usr/lib/git-core", "usr/share/git-core/templates"):
        (root / directory).mkdir(parents=True)
    shutil.copy(git, root / "usr/bin/git")
    for helper in ("git", "git-upload-pack"):  # git runs its helpers from its exec path
        (root / "usr/lib/git-core" / helper).symlink_to("../../bin/git")
    for library in linked_libraries(git):
        target = root / library.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(library.resolve(), target)
    make_origin(context / "origin")
    dockerfile = [f"FROM {BUSYBOX_IMAGE}", "COPY root/ /", f"COPY origin {ORIGIN}"]
    build(GIT_IMAGE, context, *dockerfile, "ENV PATH=/usr/bin:/bin")


def linked_libraries(program: Path) -> list[Path]:
    listed = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True)
    return [Path(path) for path in re.findall(r"(/\S+) \(0x", listed.stdout)]


def make_origin(repo: Path) -> None:
    repo.mkdir()

    def git(*args: str) -> None:
        identity = ["-c", "user.name=Kiln Test", "-c", "user.email=test@example.com"]
        subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True)

    git("init", "--quiet", "--initial-branch=main")
    for version in ("one", "two"):
        (repo / "version").write_text(version + "\n")
        git("add", "version")
        git("commit", "--quiet", "-m", version)
        if version == "one":
            git("tag", "v1")


# Looking at what the driver made


def labelled(kind: str, *labels: str) -> list[str]:
    """The containers (all, running or not) or volumes with all of `labels` (k=v)."""
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    if kind == "container":
        listed = docker("ps", "--all", "--quiet", "--no-trunc", *filters)
    else:
        listed = docker("volume", "ls", "--quiet", *filters)
    return listed.stdout.split()


def running(*labels: str) -> list[str]:
    filters = [arg for label in labels for arg in ("--filter", f"label={label}")]
    return docker("ps", "--quiet", "--no-trunc", *filters).stdout.split()


def inspect(container: str) -> dict[str, Any]:
    shown: list[dict[str, Any]] = json.loads(docker("container", "inspect", container).stdout)
    return shown[0]


def remove_labelled(*labels: str) -> None:
    """Remove whatever a test left behind with `labels` (so that a failing test leaves
    nothing on the Engine either)."""
    if containers := labelled("container", *labels):
        docker("rm", "--force", "--volumes", *containers, check=False)
    if volumes := labelled("volume", *labels):
        docker("volume", "rm", "--force", *volumes, check=False)
