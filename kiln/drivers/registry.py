"""The drivers this deployment knows, each registered here by name.

The worker asks for a driver by the name a manifest gives; only this module knows
which class serves which name.
"""

from __future__ import annotations

from kiln.drivers.base import Driver, DriverSettings

KNOWN_DRIVERS = ("local", "docker", "qemu", "ssh")
IMPLEMENTED_DRIVERS = ("local", "docker", "ssh")


def get(name: str, settings: DriverSettings) -> Driver:
    """The driver for `name`.

    Raises LookupError for names not in KNOWN_DRIVERS and NotImplementedError for qemu
    (it is part of the interface but not implemented in this deployment yet).
    """
    if name not in KNOWN_DRIVERS:
        raise LookupError(f"unknown driver {name!r}")
    if name == "local":
        from kiln.drivers.local import LocalDriver

        return LocalDriver(settings)
    if name == "docker":
        from kiln.drivers.docker import DockerDriver

        return DockerDriver(settings)
    if name == "ssh":
        from kiln.drivers.ssh import SshDriver

        return SshDriver(settings)
    raise NotImplementedError(f"the {name} driver is not implemented in this deployment")
