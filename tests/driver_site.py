"""A server running every driver, with what the docker and ssh drivers need beside it:
the test images on a real Docker Engine and a real OpenSSH sshd on loopback."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests import docker_engine
from tests.sshd import Sshd, running_sshd
from tests.support import Account, RunningServer, isolated_database, make_account, server_settings

CONFIG = "Host example\n  User git\n"  # appended to ~/.ssh/config for the `deploy` key


@dataclass(frozen=True)
class Site:
    server: RunningServer
    sshd: Sshd
    image: str

    def driver(self, name: str) -> str:
        if name == "docker":
            return f"{{type: docker, image: {self.image}}}"
        if name == "ssh":
            return (
                f"{{type: ssh, address: '{self.sshd.address}', user: {self.sshd.user},"
                f" key: login, host_key: '{self.sshd.host_key}'}}"
            )
        return "{type: local}"

    def user(self, prefix: str = "builder") -> Account:
        """A new user whose Kiln SSH keys `login` and `deploy` the sshd accepts."""
        url = self.server.settings.database_url
        assert url is not None
        account = make_account(url, prefix=prefix)
        with self.server.client() as client:
            for name in ("login", "deploy"):
                created = client.post(
                    "/api/v1/keys",
                    json={
                        "name": name,
                        "key": self.sshd.login_key,
                        "config": "Host example\n  User git\n",
                    },
                    headers=account.auth,
                )
                assert created.status_code == 201, created.text
        return account


@contextlib.contextmanager
def driver_site(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Site]:
    images = docker_engine.ready(tmp_path_factory.mktemp("images"))
    shared = os.environ.get("KILN_TEST_DATABASE_URL", "sqlite://")
    database = isolated_database(shared, tmp_path_factory.mktemp(f"{name}-db"), name)
    settings = server_settings(
        tmp_path_factory.mktemp(f"{name}-data"), database, drivers="local,docker,ssh"
    )
    with running_sshd(tmp_path_factory.mktemp("sshd")) as sshd, RunningServer(settings) as server:
        yield Site(server, sshd, images.busybox)
