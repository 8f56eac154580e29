"""A worker killed with SIGKILL mid-build leaves nothing behind on the docker and ssh
drivers, once the next start's sweep (docker) or the remote side (ssh) has cleaned up.

`kiln serve` runs the worker in-process, so killing it kills the worker; the next
`kiln serve` on the same data directory and database is the same deployment.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import docker_engine
from tests.processes import KilnServe, kiln_env
from tests.sshd import Sshd, running_sshd
from tests.support import wait_for_build, wait_until

ENV = {
    "KILN_DRIVERS": "local,docker,ssh",
    "KILN_LEASE_SECONDS": "3",  # a lost build is noticed within seconds
    "KILN_POLL_INTERVAL": "0.05",
    "KILN_BUILDS_ALLOW_PRIVATE": "true",
}
SLEEPER = "jobs:\n- stage: a\n  commands: ['echo started; sleep 120']\nstages: [a]\n"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    return docker_engine.ready(tmp_path_factory.mktemp("images")).busybox


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    with running_sshd(tmp_path_factory.mktemp("sshd")) as running:
        yield running


def start_build(server: KilnServe, token: str, driver: str) -> int:
    auth = {"Authorization": f"Bearer {token}"}
    with server.client() as client:
        submitted = client.post(
            "/api/v1/builds", json={"manifest": f"driver: {driver}\n{SLEEPER}"}, headers=auth
        )
        assert submitted.status_code == 202, submitted.text
        build = submitted.json()
        href = build["_embedded"]["jobs"][0]["_links"]["output"]["href"]
        wait_until(lambda: "started" in output(client, href, auth), what="the job to start")
        return int(build["id"])


def output(client: httpx.Client, href: str, auth: dict[str, str]) -> str:
    return client.get(href, headers=auth).text


def lost(server: KilnServe, token: str, build_id: int) -> dict[str, object]:
    with server.client() as client:
        return wait_for_build(client, {"Authorization": f"Bearer {token}"}, build_id)


def test_a_killed_worker_leaves_no_container_or_volume(tmp_path: Path, image: str) -> None:
    data = tmp_path / "data"
    env = kiln_env(**ENV)
    first = KilnServe(data, env=env)
    with first:
        token = first.admin_token()
        build_id = start_build(first, token, f"{{type: docker, image: {image}}}")
        label = f"kiln.build={build_id}"
        running = lambda: docker_engine.labelled("container", label) != []  # noqa: E731
        wait_until(running, what="the build's container to be listed")
        first.stop(signal.SIGKILL)
    wait_until(running, what="the crashed build's container to be listed")  # the crash left it
    with KilnServe(data, env=env) as second:
        build = lost(second, token, build_id)
        assert build["status"] == "failed"
        assert build["reason"] == "worker_lost"
        wait_until(
            lambda: (
                not docker_engine.labelled("container", label)
                and not docker_engine.labelled("volume", label)
            ),
            what="the sweep to remove the crashed build's containers and volumes",
        )


def test_a_killed_worker_leaves_no_remote_directory_or_process(tmp_path: Path, sshd: Sshd) -> None:
    data = tmp_path / "data"
    env = kiln_env(**ENV)
    first = KilnServe(data, env=env)
    with first:
        token = first.admin_token()
        auth = {"Authorization": f"Bearer {token}"}
        with first.client() as client:
            created = client.post(
                "/api/v1/keys", json={"name": "login", "key": sshd.login_key}, headers=auth
            )
            assert created.status_code == 201, created.text
        driver = (
            f"{{type: ssh, address: '{sshd.address}', user: {sshd.user}, key: login,"
            f" host_key: '{sshd.host_key}'}}"
        )
        before = remote_directories(sshd)
        build_id = start_build(first, token, driver)
        assert remote_directories(sshd) - before != set()
        first.stop(signal.SIGKILL)
    wait_until(
        lambda: remote_directories(sshd) <= before and not remote_sleepers(sshd),
        what="the remote side to remove the build's directory and processes",
    )
    with KilnServe(data, env=env) as second:
        assert lost(second, token, build_id)["reason"] == "worker_lost"


def remote_directories(sshd: Sshd) -> set[str]:
    """What builds keep in the login user's home (the ssh driver's workspaces)."""
    return {str(p) for p in sshd.home.rglob("build-*") if p.is_dir()}


def remote_sleepers(sshd: Sshd) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                owner = entry.stat().st_uid
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if owner == sshd.uid and cmdline.startswith(b"sleep\x00120"):
                found.append(int(entry.name))
    return found
