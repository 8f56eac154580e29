"""Where uploaded bytes live: a small interface, and its filesystem implementation.

An upload is written to a temporary file while its size, MD5 and SHA-256 are
computed, and only becomes a blob when committed (an atomic rename); an aborted,
oversized or interrupted upload leaves nothing behind. The digests and the writing
run on two threads of the upload's own (MD5 on one, SHA-256 and the file on the
other: hashlib and file writes let go of the GIL), each fed batches of about 1 MiB
through a bounded queue, so the event loop keeps receiving and memory stays bounded.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio.to_thread

from kiln.store import files

BATCH = 1 << 20
Batch = tuple[bytes, ...]
IN_FLIGHT_BATCHES = 8


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"over {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredBlob:
    key: str
    size: int
    md5: str
    sha256: str


class Upload(Protocol):
    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> StoredBlob: ...

    async def abort(self) -> None: ...


class Storage(Protocol):
    def upload(self, *, limit: int) -> Upload: ...

    def local_path(self, key: str) -> Path:
        """A file holding the blob's bytes, for serving them (with Range) from this host."""
        ...

    def delete(self, key: str) -> None: ...


class FileSystemStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        files.private_directory(root / "tmp")

    def upload(self, *, limit: int) -> FileUpload:
        return FileUpload(self.root, limit)

    def local_path(self, key: str) -> Path:
        return self.root / key

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)


class _Lane:
    """A thread applying `work` to each chunk in turn, at most IN_FLIGHT_BATCHES batches
    behind."""

    def __init__(self, work: Callable[[bytes], object], name: str) -> None:
        self._work = work
        self._batches: queue.Queue[Batch | None] = queue.Queue(maxsize=IN_FLIGHT_BATCHES)
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._batches.get()) is not None:
            if self.failure is None:
                try:
                    for chunk in batch:
                        self._work(chunk)
                except BaseException as exc:  # reported by the next put or by finish
                    self.failure = exc

    async def put(self, batch: Batch | None) -> None:
        try:
            self._batches.put_nowait(batch)
        except queue.Full:  # the thread is behind: wait for it off the event loop
            await anyio.to_thread.run_sync(self._batches.put, batch)

    async def finish(self, *, skip_the_rest: bool = False) -> None:
        """Let the thread work through what it was given (or drop it), then stop it."""
        if skip_the_rest:
            self.failure = self.failure or RuntimeError("aborted")
        await self.put(None)
        await anyio.to_thread.run_sync(self._thread.join)


class FileUpload:
    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit
        self.size = 0
        name = uuid.uuid4().hex
        self.key = f"{name[:2]}/{name[2:4]}/{name}"
        self._temporary = root / "tmp" / name
        self._file = files.create(self._temporary)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._lanes = (
            _Lane(self._md5.update, "kiln-upload-md5"),
            _Lane(self._hash_and_write, "kiln-upload-write"),
        )
        self._finished = False

    def _hash_and_write(self, batch: bytes) -> None:
        self._sha256.update(batch)
        self._file.write(batch)

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(self.limit)
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= BATCH:
            await self._hand_over()

    async def _hand_over(self) -> None:
        batch = tuple(self._pending)  # the chunks themselves, not a copy
        self._pending.clear()
        self._pending_size = 0
        for lane in self._lanes:
            if lane.failure is not None:
                raise lane.failure
            await lane.put(batch)

    async def _finish(self, *, skip_the_rest: bool = False) -> None:
        if not self._finished:
            self._finished = True
            for lane in self._lanes:
                await lane.finish(skip_the_rest=skip_the_rest)
        self._file.close()

    async def commit(self) -> StoredBlob:
        if self._pending:
            await self._hand_over()
        await self._finish()
        failure = next((lane.failure for lane in self._lanes if lane.failure), None)
        if failure is not None:
            await self.abort()
            raise failure
        final = self.root / self.key
        files.private_directory(final.parent)
        os.replace(self._temporary, final)
        return StoredBlob(self.key, self.size, self._md5.hexdigest(), self._sha256.hexdigest())

    async def abort(self) -> None:
        self._pending.clear()
        await self._finish(skip_the_rest=True)
        self._temporary.unlink(missing_ok=True)
