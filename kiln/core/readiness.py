"""Waiting for a descriptor to have something to read, without reading it."""

from __future__ import annotations

import asyncio
from typing import Protocol


class HasFileno(Protocol):
    def fileno(self) -> int: ...


async def readable(source: int | HasFileno) -> None:
    """Return once `source` has something to read (or has reached its end)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(source, wake)
    try:
        await ready
    finally:
        loop.remove_reader(source)
