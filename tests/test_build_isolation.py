"""A build is hostile code: one manifest of attacks, submitted through the API by a user
with nothing but `build:write`-like rights, run on every driver, each attack failing.

Each attack is a job of an allowed-to-fail stage that succeeds only if the attack
worked, so the build's jobs say which attacks got through. The same manifest on the
local driver started `--local-driver-unconfined` is the control: there the attacks on
the host succeed, which shows that each check can fail.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.driver_site import Site, driver_site
from tests.driver_support import processes_running
from tests.processes import KilnServe, kiln_env
from tests.support import (
    Account,
    RunningServer,
    isolated_database,
    make_account,
    server_settings,
    wait_for_build,
)

B = "/api/v1/builds"
SLEEP = f"{4000 + os.getpid() % 1000}.{time.monotonic_ns() % 997}"  # a daemon to look for


def serve(factory: pytest.TempPathFactory, name: str, **settings: Any) -> Iterator[RunningServer]:
    """A server with a database of its own: a worker of another would run its builds."""
    shared = os.environ.get("KILN_TEST_DATABASE_URL", "sqlite://")
    database = isolated_database(shared, factory.mktemp(f"{name}-db"), name)
    data = factory.mktemp(f"{name}-data")
    with RunningServer(server_settings(data, database, **settings)) as running:
        yield running


@pytest.fixture(scope="module")
def confined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve(tmp_path_factory, "confined", drivers="local")


@pytest.fixture(scope="module")
def unconfined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from serve(tmp_path_factory, "unconfined", drivers="local", local_driver_unconfined=True)


def user(server: RunningServer) -> Account:
    url = server.settings.database_url
    assert url is not None
    return make_account(url, prefix="bob")


def attacks(server: RunningServer, *, loopback: str | None = "bash") -> dict[str, str]:
    """Job name: a command that succeeds only if the attack worked."""
    data = server.settings.data_dir.resolve()
    pid = os.getpid()  # the server runs in this process
    found = {
        "secret_key": f"cat {data}/secret.key",
        "tls_key": f"cat {data}/key.pem",
        "other_workspaces": f"ls {data}/workspaces",
        "server_environ": f"cat /proc/{pid}/environ | tr '\\0' '\\n' | grep -q PATH",
        "signal_server": f"kill -0 {pid}",
    }
    database = server.settings.resolved_database_url
    if database.startswith("sqlite:///"):
        found["database"] = f"head -c 15 {database.removeprefix('sqlite:///')}"
    # A connection to the database port on the host's loopback, with what the job has.
    if loopback == "bash":
        found["loopback"] = "timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432'"
    elif loopback == "busybox":
        found["loopback"] = "nc -w 5 127.0.0.1 5432 </dev/null"
    return found


def hostile_manifest(driver: str, jobs: dict[str, str]) -> str:
    lines = [f"driver: {driver}", "stages: [attack]", "allow_failures: [attack]", "jobs:"]
    for name, command in jobs.items():
        lines += ["- stage: attack", f"  name: {name}", f"  commands: [{json.dumps(command)}]"]
    return "\n".join(lines) + "\n"


def run_attacks(
    server: RunningServer, who: Account, driver: str, jobs: dict[str, str]
) -> dict[str, str]:
    """Each attack's job status."""
    with server.client() as client:
        submitted = client.post(
            B, json={"manifest": hostile_manifest(driver, jobs)}, headers=who.auth
        )
        assert submitted.status_code == 202, submitted.text
        build = wait_for_build(client, who.auth, submitted.json()["id"])
    assert build["status"] in ("passed", "passed_with_failures"), build
    return {job["name"]: job["status"] for job in build["_embedded"]["jobs"]}


def daemons_left() -> list[int]:
    return processes_running(f"sleep {SLEEP}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with driver_site(tmp_path_factory, "hostile") as running:
        yield running


# Started by a job that then ends: it must not outlive the job.
# The job waits until the daemon has its own session (field 6 of /proc/<pid>/stat), so
# that it has escaped the job's process group before the job ends.
SESSION_OF = "$(cut -d' ' -f6 /proc/{}/stat)"
ESCAPED = f'[ "{SESSION_OF.format("$d")}" != "{SESSION_OF.format("$$")}" ]'
DAEMON = {
    "daemon": f"setsid sleep {SLEEP} >/dev/null 2>&1 </dev/null & d=$!; i=0;"
    f" until {ESCAPED} || [ $i -ge 100 ]; do i=$((i+1)); sleep 0.05; done"
}


def test_every_attack_fails_on_the_confined_local_driver(confined: RunningServer) -> None:
    jobs = attacks(confined)
    statuses = run_attacks(confined, user(confined), "{type: local}", jobs | DAEMON)
    assert statuses == dict.fromkeys(jobs, "failed") | {"daemon": "passed"}
    assert daemons_left() == []


@pytest.mark.parametrize("driver", ["docker", "ssh"])
def test_every_attack_fails_on_the_docker_and_ssh_drivers(site: Site, driver: str) -> None:
    # The ssh driver's machine is the user's own: its loopback is theirs to reach.
    jobs = attacks(site.server, loopback="busybox" if driver == "docker" else None)
    statuses = run_attacks(site.server, site.user(), site.driver(driver), jobs | DAEMON)
    assert statuses == dict.fromkeys(jobs, "failed") | {"daemon": "passed"}
    assert daemons_left() == []


def test_the_attacks_work_on_the_unconfined_local_driver(unconfined: RunningServer) -> None:
    jobs = attacks(unconfined)
    try:
        statuses = run_attacks(unconfined, user(unconfined), "{type: local}", jobs | DAEMON)
        left = daemons_left()
    finally:
        for pid in daemons_left():
            os.kill(pid, 9)
    assert statuses == dict.fromkeys(jobs, "passed") | {"daemon": "passed"}
    assert left != []  # `setsid` left the job's process group, which was all it killed


def test_an_object_is_never_placed_outside_the_workspace(confined: RunningServer) -> None:
    bob = user(confined)
    outside = Path(f"/tmp/kiln-placed-{os.getpid()}-{time.monotonic_ns()}")
    with confined.client() as client:
        created = client.post(
            "/api/v1/objects?name=payload",
            content=b"payload\n",
            headers={**bob.auth, "Content-Type": "application/octet-stream"},
        )
        assert created.status_code == 201, created.text
        escaping = client.post(
            B,
            json={"manifest": placing("payload => ../../../escaped", "true")},
            headers=bob.auth,
        )
        assert escaping.status_code == 400, escaping.text
        assert escaping.json()["errors"][0]["pointer"] == "/manifest/objects/0"
        assert escaping.json()["errors"][0]["code"] == "outside_workspace"
        # An absolute destination is taken from the workspace's top.
        absolute = client.post(
            B,
            json={"manifest": placing(f"payload => {outside}", f"cat .{outside}")},
            headers=bob.auth,
        )
        assert absolute.status_code == 202, absolute.text
        build = wait_for_build(client, bob.auth, absolute.json()["id"])
        assert build["status"] == "passed", build
        href = build["_embedded"]["jobs"][0]["_links"]["output"]["href"]
        assert "payload" in client.get(href, headers=bob.auth).text
    assert not outside.exists()


def built(server: RunningServer, who: Account, text: str) -> tuple[dict[str, Any], str]:
    """The build of manifest `text` once it has finished, and its first job's output."""
    with server.client() as client:
        submitted = client.post(B, json={"manifest": text}, headers=who.auth)
        assert submitted.status_code == 202, submitted.text
        build = wait_for_build(client, who.auth, submitted.json()["id"])
        href = build["_embedded"]["jobs"][0]["_links"]["output"]["href"]
        return build, client.get(href, headers=who.auth).text


def placing(entry: str, command: str) -> str:
    return (
        f"driver: {{type: local}}\nobjects: [{entry!r}]\nstages: [a]\n"
        f"jobs:\n- {{stage: a, commands: [{command!r}]}}\n"
    )


def test_a_command_that_cannot_be_started_fails_its_build_and_says_why(
    unconfined: RunningServer,
) -> None:
    # Unconfined only: a confined job cannot remove its own working directory.
    bob = user(unconfined)
    text = (
        "driver: {type: local}\nstages: [test]\njobs:\n"
        '- stage: test\n  commands: [\'rm -rf "$PWD"\', "true"]\n'
    )
    build, output = built(unconfined, bob, text)
    assert "kiln: cannot run /bin/sh: No such file or directory" in output
    assert build["status"] == "failed"
    assert build["reason"].startswith("command_not_started: test.1: cannot run /bin/sh")


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server as it is out of the box: no local sources, no private addresses."""
    yield from serve(
        tmp_path_factory,
        "strict",
        drivers="local,ssh",
        sources_allow_local=False,
        builds_allow_private=False,
    )


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("/etc", "on the server's own disk"),
        ("file:///srv/git/app.git", "on the server's own disk"),
        ("./relative", "on the server's own disk"),
        ("ext::sh -c id", "git transport helper"),
        ("fd::3", "git transport helper"),
        ("ftp://example.com/app.git", "cannot be cloned over ftp://"),
        ("http://127.0.0.1:6379/", "not a public address"),
        ("https://169.254.169.254/latest", "not a public address"),
        ("ssh://[::1]/app.git", "not a public address"),
        ("git@10.0.0.1:app.git", "not a public address"),
        ("--upload-pack=touch /tmp/x", "not a URL or path git can clone"),
    ],
)
def test_sources_a_build_may_not_reach_are_refused(
    strict: RunningServer, source: str, said: str
) -> None:
    text = (
        f"driver: {{type: local}}\nsources: [{source!r}]\n"
        "stages: [a]\njobs:\n- {stage: a, commands: ['true']}\n"
    )
    with strict.client() as client:
        refused = client.post(B, json={"manifest": text}, headers=user(strict).auth)
    assert refused.status_code == 422, refused.text
    error = refused.json()["errors"][0]
    assert error["pointer"] == "/manifest/sources/0"
    assert error["code"] == "not_allowed"
    assert said in error["detail"]


def test_an_ssh_host_on_a_private_address_is_refused(strict: RunningServer) -> None:
    bob = user(strict)
    text = (
        "driver: {type: ssh, address: '127.0.0.1:22', user: git, key: mine,"
        " host_key: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA'}\n"
        "stages: [a]\njobs:\n- {stage: a, commands: ['true']}\n"
    )
    with strict.client() as client:
        refused = client.post(B, json={"manifest": text}, headers=bob.auth)
    assert refused.status_code == 422, refused.text
    pointers = {e["pointer"]: e for e in refused.json()["errors"]}
    assert pointers["/manifest/driver/address"]["code"] == "not_allowed"
    assert pointers["/manifest/driver/key"]["code"] == "not_found"  # bob has no key `mine`


def test_a_name_resolving_to_a_private_address_fails_the_build(strict: RunningServer) -> None:
    # `localhost` passes the submission (a name), and is refused once resolved.
    bob = user(strict)
    text = (
        "driver: {type: local}\nsources: ['https://localhost/app.git']\n"
        "stages: [a]\njobs:\n- {stage: a, commands: ['true']}\n"
    )
    build, output = built(strict, bob, text)
    assert build["status"] == "failed"
    assert build["reason"].startswith("preparation_failed: ")
    assert "resolves to 127.0.0.1, which is not a public address" in output


def test_qemu_and_drivers_not_enabled_are_501(strict: RunningServer) -> None:
    texts = [
        "driver: {type: qemu, image: disk}\n",  # known, not implemented
        "driver: {type: docker, image: busybox}\n",  # implemented, not enabled here
    ]
    with strict.client() as client:
        for text in texts:
            full = text + "stages: [a]\njobs:\n- {stage: a, commands: ['true']}\n"
            refused = client.post(B, json={"manifest": full}, headers=user(strict).auth)
            assert refused.status_code == 501, refused.text
            assert refused.json()["code"] == "driver_not_enabled"


@pytest.mark.parametrize(
    ("driver", "pointers"),
    [
        ("{type: docker}", {"/manifest/driver/image": "required"}),
        ("{type: local, image: x}", {"/manifest/driver/image": "unknown_field"}),
        (
            "{type: ssh, address: 'h:22'}",
            {
                "/manifest/driver/user": "required",
                "/manifest/driver/key": "required",
                "/manifest/driver/host_key": "required",
            },
        ),
        ("{type: docker, image: 'a b'}", {"/manifest/driver/image": "pattern"}),
        (
            "{type: docker, image: x, workspace: 'rel/dir'}",
            {"/manifest/driver/workspace": "pattern"},
        ),
    ],
)
def test_driver_fields_are_checked_per_type(
    strict: RunningServer, driver: str, pointers: dict[str, str]
) -> None:
    text = f"driver: {driver}\nstages: [a]\njobs:\n- {{stage: a, commands: ['true']}}\n"
    with strict.client() as client:
        refused = client.post(B, json={"manifest": text}, headers=user(strict).auth)
    assert refused.status_code == 400, refused.text
    assert {e["pointer"]: e["code"] for e in refused.json()["errors"]} == pointers


def test_a_host_that_cannot_confine_jobs_fails_them_saying_how_to_fix_it(
    tmp_path: Path,
) -> None:
    # No bwrap on the worker's PATH: the local driver refuses rather than run unconfined.
    env = kiln_env(PATH="/nonexistent", KILN_RATE_LIMIT="100000/hour")
    with KilnServe(tmp_path / "data", env=env) as server, server.client() as client:
        auth = {"Authorization": f"Bearer {server.admin_token()}"}
        text = "driver: {type: local}\nstages: [a]\njobs:\n- {stage: a, commands: ['true']}\n"
        submitted = client.post(B, json={"manifest": text}, headers=auth)
        assert submitted.status_code == 202, submitted.text
        build = wait_for_build(client, auth, submitted.json()["id"])
        href = build["_embedded"]["jobs"][0]["_links"]["output"]["href"]
        said = client.get(href, headers=auth).text
    assert build["status"] == "failed"
    assert build["reason"].startswith("preparation_failed: the local driver cannot confine jobs")
    assert "bubblewrap (bwrap) is not installed" in said
    assert "apt-get install bubblewrap" in said
    assert "--local-driver-unconfined" in said
