"""Where uploaded bytes live: a small interface, and its filesystem implementation.

An upload is written to a temporary file while its size, MD5 and SHA-256 are
computed, and only becomes a blob when committed (an atomic rename); an aborted,
oversized or interrupted upload leaves nothing behind. The hashing and writing run
on a thread of the upload's own, fed 1 MiB batches through a bounded queue, so the
event loop keeps receiving while the digests are computed and memory stays bounded.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio.to_thread

BATCH = 1 << 20
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
        (root / "tmp").mkdir(parents=True, exist_ok=True)

    def upload(self, *, limit: int) -> FileUpload:
        return FileUpload(self.root, limit)

    def local_path(self, key: str) -> Path:
        return self.root / key

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)


class FileUpload:
    def __init__(self, root: Path, limit: int) -> None:
        self.root = root
        self.limit = limit
        self.size = 0
        name = uuid.uuid4().hex
        self.key = f"{name[:2]}/{name[2:4]}/{name}"
        self._temporary = root / "tmp" / name
        self._file = self._temporary.open("wb")
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha256 = hashlib.sha256()
        self._pending = bytearray()
        self._batches: queue.Queue[bytes | None] = queue.Queue(maxsize=IN_FLIGHT_BATCHES)
        self._failure: BaseException | None = None
        self._worker = threading.Thread(target=self._consume, name="kiln-upload", daemon=True)
        self._worker.start()

    def _consume(self) -> None:
        while (batch := self._batches.get()) is not None:
            if self._failure is None:
                try:
                    self._md5.update(batch)
                    self._sha256.update(batch)
                    self._file.write(batch)
                except BaseException as exc:  # reported by the next write or commit
                    self._failure = exc

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise TooLarge(self.limit)
        self._pending += chunk
        if len(self._pending) >= BATCH:
            await self._hand_over(bytes(self._pending))
            self._pending.clear()

    async def _hand_over(self, batch: bytes | None) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            self._batches.put_nowait(batch)
        except queue.Full:  # the worker is behind: wait for it off the event loop
            await anyio.to_thread.run_sync(self._batches.put, batch)

    async def _drain(self) -> None:
        """Let the worker finish what it was given, then stop it."""
        try:
            self._batches.put_nowait(None)
        except queue.Full:
            await anyio.to_thread.run_sync(self._batches.put, None)
        await anyio.to_thread.run_sync(self._worker.join)
        self._file.close()

    async def commit(self) -> StoredBlob:
        if self._pending:
            await self._hand_over(bytes(self._pending))
            self._pending.clear()
        await self._drain()
        if self._failure is not None:
            await self.abort()
            raise self._failure
        final = self.root / self.key
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._temporary, final)
        return StoredBlob(self.key, self.size, self._md5.hexdigest(), self._sha256.hexdigest())

    async def abort(self) -> None:
        if self._worker.is_alive():
            self._failure = self._failure or RuntimeError("aborted")  # the worker skips the rest
            self._pending.clear()
            await self._drain()
        self._file.close()
        self._temporary.unlink(missing_ok=True)
