"""What the drivers' own tests share: an Output that keeps what it is given, stops,
jobs, and a look at the machine's processes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from kiln.drivers.base import JobSpec, Stop
from tests.support import wait_until


@dataclass
class Captured:
    """An Output that keeps what it is given, and when."""

    data: bytearray = field(default_factory=bytearray)
    writes: list[tuple[float, bytes]] = field(default_factory=list)
    grew: asyncio.Event = field(default_factory=asyncio.Event)

    async def write(self, data: bytes) -> None:
        self.data += data
        self.writes.append((time.monotonic(), data))
        self.grew.set()

    async def shows(self, data: bytes) -> None:
        """Returns once `data` has been written."""
        while data not in self.data:
            self.grew.clear()
            await self.grew.wait()

    @property
    def text(self) -> str:
        return self.data.decode()


def make_stop(seconds: float = 60) -> Stop:
    return Stop(killed=asyncio.Event(), deadline=time.monotonic() + seconds)


def job(*commands: str) -> JobSpec:
    return JobSpec(name="build", commands=list(commands), artifacts=[])


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def wait_gone(pid: int) -> bool:
    return wait_until(lambda: not alive(pid), what=f"process {pid} to be gone")


def processes_running(marker: str) -> list[int]:
    """The pids of live processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found
