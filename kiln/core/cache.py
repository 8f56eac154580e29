"""What Kiln can rebuild but keeps between runs: the contract as parsed, and bytecode.

It all lives in the user's cache directory (`$XDG_CACHE_HOME/kiln`, else
`~/.cache/kiln`), never in the source tree. An entry that is missing, stale or
unreadable is built again, so deleting the directory is always safe.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

T = TypeVar("T")
log = logging.getLogger(__name__)
_FORMAT = "1"  # bump when what is kept changes shape


def default_directory() -> Path | None:
    """The user's cache directory for Kiln, or None where there is no home to put it in."""
    base = os.environ.get("XDG_CACHE_HOME")
    if base:
        return Path(base) / "kiln"
    try:
        return Path.home() / ".cache" / "kiln"
    except (RuntimeError, KeyError):
        return None


def kept(
    name: str,
    source: Path,
    build: Callable[[], T],
    *,
    versions: tuple[str, ...] = (),
    directory: Path | None = None,
) -> T:
    """`build()`, or what it returned before while `source` held the same bytes and
    `versions` were the same; one pickle for each name and source file."""
    folder = directory or default_directory()
    if folder is None:
        return build()
    place = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:16]
    path = folder / f"{name}-{place}.pickle"
    key = "\0".join(
        (_FORMAT, sys.version, hashlib.sha256(source.read_bytes()).hexdigest(), *versions)
    )
    found, value = _read(path, key)
    if found:
        return cast(T, value)
    built = build()
    _write(path, key, built)
    return built


def _read(path: Path, key: str) -> tuple[bool, Any]:
    """The entry's value if it was kept under `key`; its key is read first, so that a
    stale entry costs no more than that."""
    try:
        with path.open("rb") as f:
            # Only this module writes these files, in the user's own cache directory.
            if pickle.load(f) != key:  # noqa: S301
                return False, None
            return True, pickle.load(f)  # noqa: S301
    except FileNotFoundError:
        return False, None
    except Exception:  # a truncated or foreign file can fail to unpickle in any way
        log.warning("Rebuilding %s: the cached copy is unreadable", path.name)
        return False, None


def _write(path: Path, key: str, value: Any) -> None:
    """Replace the entry whole, so that a reader never sees half of one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-")
        try:
            with os.fdopen(fd, "wb") as f:
                pickle.dump(key, f, protocol=pickle.HIGHEST_PROTOCOL)
                pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except (OSError, pickle.PicklingError, TypeError, AttributeError) as e:
        log.warning("Not caching %s: %s", path.name, e)


def keep_bytecode() -> None:
    """Let Python keep compiled modules even where the environment asks it not to write
    bytecode (`PYTHONDONTWRITEBYTECODE`, as tox sets): into the cache directory, away
    from the sources that setting keeps clean. Without it every start compiles the
    ~1,400 modules a server imports again, which is most of its start-up time."""
    if not sys.dont_write_bytecode:
        return
    if sys.pycache_prefix is None:
        folder = default_directory()
        if folder is None:
            return
        sys.pycache_prefix = str(folder / "bytecode")
    sys.dont_write_bytecode = False
