"""Masking secret values in job output, and the job-output sink that does it.

Output arrives in arbitrary chunks, so a value may be split across two of them. The
masker therefore holds back the last `max_len - 1` bytes of what it has seen (unless
they are already part of a masked value) until more output, or the end, shows whether
they start a value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from kiln.store import files

MASK = b"xxxxxx"


class Masker:
    """Replaces every occurrence of the given values with `MASK`, chunk by chunk."""

    def __init__(self, values: Iterable[str]) -> None:
        encoded = {value.encode() for value in values if value}
        # Longest first: where values overlap, the longest one is masked whole.
        ordered = sorted(encoded, key=lambda value: (-len(value), value))
        self.max_len = len(ordered[0]) if ordered else 0
        self._pattern = re.compile(b"|".join(map(re.escape, ordered))) if ordered else None
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        """What can safely be emitted now that `data` has arrived."""
        if self._pattern is None:
            return data
        buffer = self._pending + data
        # A value starting before `cut` lies wholly inside the buffer, so every match
        # that starts there is final; bytes from `cut` on might begin a value.
        cut = len(buffer) - (self.max_len - 1)
        parts: list[bytes] = []
        position = 0
        for match in self._pattern.finditer(buffer):
            if match.start() >= cut:
                break
            parts += (buffer[position : match.start()], MASK)
            position = match.end()
        end = max(position, cut)
        parts.append(buffer[position:end])
        self._pending = buffer[end:]
        return b"".join(parts)

    def flush(self) -> bytes:
        """The masked rest of the output, once no more will arrive."""
        rest, self._pending = self._pending, b""
        if self._pattern is None:
            return rest
        return self._pattern.sub(MASK, rest)


class OutputLog:
    """A job's output, masked and appended to a file as it is produced."""

    def __init__(self, path: Path, masked: Iterable[str]) -> None:
        files.private_directory(path.parent)
        self.path = path
        self.bytes_written = 0
        self._masker = Masker(masked)
        self._file: BinaryIO | None = files.append(path)

    async def write(self, data: bytes) -> None:
        self._append(self._masker.feed(data))

    async def close(self) -> None:
        """Writes the held-back tail and closes the file; safe to call twice."""
        if self._file is None:
            return
        self._append(self._masker.flush())
        self._file.close()
        self._file = None

    def _append(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError(f"output log {self.path} is closed")
        if not data:
            return
        self._file.write(data)
        # Flushed at once so that a reader following the file sees output as it comes.
        self._file.flush()
        self.bytes_written += len(data)
