"""Confinement for the local driver's processes, with bubblewrap (`bwrap`).

Every command of a local job (and every `git clone` of its sources) runs in
namespaces of its own:
- mount: a new root holding only the system's programs and libraries (`/usr`, `/etc`,
  the `/bin`-style links), read-only, a private `/dev` and `/proc`, and the build's own
  directories at fixed places: `/kiln/work` (the workspace), `/kiln/home` ($HOME) and
  `/tmp`. Nothing else of the host is there: not the data directory (secret key,
  database, blobs), not other builds' workspaces, not /root or /home;
- PID: the job sees only its own processes, so it can neither read another process's
  `/proc` entries nor signal it, and when the command ends the kernel kills whatever
  it left running (the namespace's init is gone);
- network (unless the operator chose `--local-driver-network host`): only a loopback of
  its own, so the host's loopback services (the database, Redis) are out of reach;
  clones share the host's network, since their URLs were checked before the build;
- IPC and UTS.
When Kiln runs as root, jobs run as the unprivileged user `nobody` (`setpriv`, every
capability dropped, no_new_privs); otherwise bwrap makes a user namespace and drops
every capability in it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

WORK = Path("/kiln/work")
HOME = Path("/kiln/home")
TMP = Path("/tmp")  # noqa: S108 (the build's own directory, bound there)
JOB_UID = JOB_GID = 65534  # nobody, nogroup
SYSTEM_DIRS = ("/usr", "/etc", "/opt")
# On a merged-/usr system these are links into /usr; elsewhere directories.
SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
HOW_TO_FIX = (
    "install bubblewrap (Debian: apt-get install bubblewrap) and, if Kiln does not run as"
    " root, allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1);"
    " or, for a single-user install only, start Kiln with --local-driver-unconfined"
)


class Unconfinable(Exception):
    """Confinement cannot be set up on this host; the message says why and how to fix it."""


def as_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class Sandbox:
    workspace: Path  # the host directory holding the build's work/, home/ and tmp/
    hidden: tuple[Path, ...] = ()  # never visible, even where a system directory holds them
    network: bool = False  # share the host's network

    def argv(
        self, argv: Sequence[str], *, network: bool | None = None, readable: Sequence[Path] = ()
    ) -> list[str]:
        """`argv` run confined; `readable` are host paths also bound, read-only, at their
        own place (a local source being cloned)."""
        shared = self.network if network is None else network
        options = [
            bwrap(),
            "--die-with-parent",
            "--new-session",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
        ]
        if not shared:
            options.append("--unshare-net")
        if not as_root():
            options += ["--unshare-user", "--cap-drop", "ALL"]
        options += system_mounts()
        for path in self.hidden:
            if any(path.is_relative_to(d) for d in SYSTEM_DIRS) and path.exists():
                options += ["--tmpfs", str(path)]
        options += ["--proc", "/proc", "--dev", "/dev", "--perms", "0755", "--dir", "/kiln"]
        options += ["--bind", str(self.workspace / "work"), str(WORK)]
        options += ["--bind", str(self.workspace / "home"), str(HOME)]
        options += ["--bind", str(self.workspace / "tmp"), str(TMP)]
        for path in readable:
            for parent in reversed(path.parents[:-1]):  # bwrap would make them 0700
                options += ["--perms", "0755", "--dir", str(parent)]
            options += ["--ro-bind", str(path), str(path)]
        options += ["--chdir", str(WORK), "--"]
        return [*options, *unprivileged(), *argv]


def unprivileged() -> list[str]:
    """The prefix that drops root for the job, when Kiln runs as root."""
    if not as_root():
        return []
    return [
        setpriv(),
        f"--reuid={JOB_UID}",
        f"--regid={JOB_GID}",
        "--clear-groups",
        "--no-new-privs",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--",
    ]


@functools.cache
def system_mounts() -> tuple[str, ...]:
    mounts: list[str] = []
    for directory in SYSTEM_DIRS:
        if os.path.isdir(directory):
            mounts += ["--ro-bind", directory, directory]
    for name in SYSTEM_LINKS:
        if os.path.islink(name):
            mounts += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            mounts += ["--ro-bind", name, name]
    return tuple(mounts)


@functools.cache
def bwrap() -> str:
    return shutil.which("bwrap") or "bwrap"


@functools.cache
def setpriv() -> str:
    return shutil.which("setpriv") or "setpriv"


@functools.cache
def probe() -> str | None:
    """None if jobs can be confined on this host; otherwise why not."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    if as_root() and shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    with tempfile.TemporaryDirectory(prefix="kiln-probe-") as top:
        workspace = Path(top)
        for name in ("work", "home", "tmp"):
            (workspace / name).mkdir()
        hand_over(workspace)
        try:
            done = subprocess.run(
                Sandbox(workspace).argv(["/bin/sh", "-c", "touch /kiln/work/ok"]),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as error:
            return f"bwrap could not be run: {error}"
        if done.returncode != 0 or not (workspace / "work" / "ok").exists():
            said = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
            return f"bwrap failed: {said}"
    return None


def hand_over(path: Path) -> None:
    """Give `path` and everything below it to the job's user (when Kiln is root; else
    the files are Kiln's user's already, which the user namespace maps). Links are
    changed themselves, never followed."""
    if not as_root():
        return
    with contextlib.suppress(OSError):
        os.lchown(path, JOB_UID, JOB_GID)
    for parent, directories, files in os.walk(path):
        for name in directories + files:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(parent, name), JOB_UID, JOB_GID)


def inner_groups(pid: int) -> list[int]:
    """The process groups of `pid`'s descendants (the sandbox's job), to be asked to
    stop before the sandbox itself is killed."""
    groups: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        for child in children(current):
            with contextlib.suppress(OSError):
                group = os.getpgid(child)
                if group != os.getpgid(pid) and group not in groups:
                    groups.append(group)
            pending.append(child)
    return groups


def children(pid: int) -> list[int]:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            found += [int(n) for n in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found
