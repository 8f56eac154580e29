"""The drivers this deployment knows, each registered here by name.

The worker asks for a driver by the name a manifest gives; only this module knows
which class serves which name.
"""

from __future__ import annotations

from pathlib import Path

from kiln.drivers.base import Driver
from kiln.drivers.local import LocalDriver

KNOWN_DRIVERS = ("local", "docker", "qemu", "ssh")


def get(name: str, *, root: Path, kill_grace: float, nice: int = 0) -> Driver:
    """The driver for `name`. `root` is where workspaces are made (the caller passes
    <data dir>/workspaces); jobs run at niceness `nice` at least.

    Raises LookupError for names not in KNOWN_DRIVERS and NotImplementedError for
    docker/qemu/ssh (they exist in the interface but are not implemented in this
    deployment yet).
    """
    if name not in KNOWN_DRIVERS:
        raise LookupError(f"unknown driver {name!r}")
    if name != "local":
        raise NotImplementedError(f"the {name} driver is not implemented in this deployment")
    return LocalDriver(root=root, kill_grace=kill_grace, nice=nice)
