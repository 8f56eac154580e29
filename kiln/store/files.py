"""The data directory is Kiln's alone: the directory and those Kiln makes in it are
0700, and every file Kiln writes there is 0600, whatever the umask.

What an older Kiln left looser (or what was made before Kiln ran, as `kiln.db` by a
migration) is tightened when Kiln starts: the data directory shuts out everyone else
whatever the modes inside it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIRECTORY = 0o700
PRIVATE_FILE = 0o600

log = logging.getLogger(__name__)


def private_directory(path: Path) -> Path:
    """`path`, made (with any missing parents) 0700 if it is not there."""
    try:
        path.mkdir(mode=PRIVATE_DIRECTORY)
    except FileExistsError:
        pass
    except FileNotFoundError:
        private_directory(path.parent)
        path.mkdir(mode=PRIVATE_DIRECTORY, exist_ok=True)
    return path


def data_directory(path: Path) -> Path:
    """The data directory, made if missing and 0700 either way."""
    private_directory(path)
    tighten(path, PRIVATE_DIRECTORY)
    return path


def tighten(path: Path, mode: int = PRIVATE_FILE) -> None:
    """Take away every permission beyond `mode` from `path`, if it is there."""
    try:
        current = path.stat().st_mode & 0o777
        if current & ~mode:
            path.chmod(current & mode)
    except FileNotFoundError:
        pass
    except PermissionError:
        log.warning("Cannot make %s private: it belongs to another user", path)


def open_private(path: Path, flags: int) -> int:
    """A descriptor for `path` (`os.open` flags), which is 0600 whether new or not."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        if os.fstat(fd).st_mode & 0o777 & ~PRIVATE_FILE:
            os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create(path: Path) -> BinaryIO:
    """`path` opened to write from its start, 0600."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb")


def append(path: Path) -> BinaryIO:
    """`path` opened to append to, 0600."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")


def write(path: Path, data: bytes) -> None:
    with create(path) as f:
        f.write(data)
