"""Loops that run beside the API (build workers, the cron scheduler, webhook
delivery), in `kiln serve` or in a process of their own (`kiln worker`,
`kiln scheduler`).

A loop is a coroutine function taking the `Background` it runs in. It works until
`stopping` is set, waits with `idle()` when there is nothing to do, and returns
soon after `stopping` is set, finishing what it had started within the grace
period `stop()` gives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from kiln.core.config import Settings
from kiln.store.services import Services

log = logging.getLogger(__name__)

Loop = Callable[["Background"], Awaitable[None]]


class Background:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._nudges: dict[str, asyncio.Event] = {}

    def start(self, name: str, loop: Loop) -> None:
        self._tasks.append(asyncio.create_task(self._guarded(name, loop), name=name))

    async def _guarded(self, name: str, loop: Loop) -> None:
        """Run `loop`; if it fails, log it and start it again after a pause."""
        while not self.stopping.is_set():
            try:
                await loop(self)
                return
            except Exception:
                log.exception("background loop %s failed; restarting it", name)
                await self.idle(name, 1.0)

    def nudge(self, topic: str) -> None:
        """Tell loops idling on `topic` that there is work (in this process)."""
        self._nudges.setdefault(topic, asyncio.Event()).set()

    async def idle(self, topic: str, seconds: float) -> None:
        """Wait up to `seconds`, less if nudged on `topic` or told to stop."""
        nudge = self._nudges.setdefault(topic, asyncio.Event())
        waiters = [asyncio.ensure_future(nudge.wait()), asyncio.ensure_future(self.stopping.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        nudge.clear()

    async def stop(self, grace: float) -> None:
        """Ask every loop to stop; cancel those still running after `grace` seconds."""
        self.stopping.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def run_until_signalled(settings: Settings, loops: list[tuple[str, Loop]]) -> None:
    """Run `loops` in this process until SIGTERM or SIGINT, then stop them gracefully."""
    services = Services.from_settings(settings)
    running = Background(services)
    for name, loop in loops:
        running.start(name, loop)
    signalled = asyncio.Event()
    event_loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        event_loop.add_signal_handler(signum, signalled.set)
    log.info("running %s", ", ".join(name for name, _ in loops))
    await signalled.wait()
    log.info("stopping; running jobs have %s s to finish", settings.grace_seconds)
    await running.stop(settings.grace_seconds)
    services.db.dispose()
