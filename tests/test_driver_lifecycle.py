"""The whole build lifecycle through the API on every driver: local (confined), docker
(a real Docker Engine) and ssh (a real OpenSSH sshd on loopback).

One server runs all three drivers; each test runs once per driver, as a user with a
Kiln SSH key that the sshd accepts.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.driver_site import Site, driver_site
from tests.support import Account, wait_for_build, wait_until

B = "/api/v1/builds"
DRIVERS = ("local", "docker", "ssh")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with driver_site(tmp_path_factory, "lifecycle") as running:
        yield running


@pytest.fixture(scope="module")
def client(site: Site) -> Iterator[httpx.Client]:
    with site.server.client() as c:
        yield c


@pytest.fixture(scope="module")
def owner(site: Site) -> Account:
    return site.user()


def manifest(site: Site, driver: str, jobs: str, extra: str = "") -> str:
    return f"driver: {site.driver(driver)}\n{extra}jobs:\n{jobs}"


def run(client: httpx.Client, who: Account, text: str, **body: Any) -> dict[str, Any]:
    submitted = client.post(B, json={"manifest": text, **body}, headers=who.auth)
    assert submitted.status_code == 202, submitted.text
    return wait_for_build(client, who.auth, submitted.json()["id"])


def output(client: httpx.Client, who: Account, build: dict[str, Any], n: int = 0) -> str:
    href = build["_embedded"]["jobs"][n]["_links"]["output"]["href"]
    return client.get(href, headers=who.auth).text


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_build_passes_with_its_output_masked(
    site: Site, client: httpx.Client, owner: Account, driver: str
) -> None:
    created = client.post(
        "/api/v1/variables",
        json={"key": f"TOKEN_{driver.upper()}", "value": f"hunter2-{driver}", "masked": True},
        headers=owner.auth,
    )
    assert created.status_code == 201, created.text
    jobs = f'- stage: a\n  commands: ["echo $GREETING", "echo secret=$TOKEN_{driver.upper()}"]\n'
    build = run(client, owner, manifest(site, driver, jobs, "env: [GREETING=hello]\nstages: [a]\n"))
    assert build["status"] == "passed", build
    text = output(client, owner, build)
    assert "hello\n" in text
    assert "secret=xxxxxx" in text
    assert f"hunter2-{driver}" not in text


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_failing_command_fails_its_stage_unless_allowed(
    site: Site, client: httpx.Client, owner: Account, driver: str
) -> None:
    jobs = (
        '- stage: flaky\n  commands: ["exit 3", "echo never"]\n'
        '- stage: strict\n  commands: ["echo fine"]\n'
        '- stage: last\n  commands: ["exit 4"]\n'
    )
    build = run(
        client,
        owner,
        manifest(site, driver, jobs, "stages: [flaky, strict, last]\nallow_failures: [flaky]\n"),
    )
    assert build["status"] == "failed"
    assert [j["status"] for j in build["_embedded"]["jobs"]] == ["failed", "passed", "failed"]
    assert [j["exit_code"] for j in build["_embedded"]["jobs"]] == [3, 0, 4]
    assert "never" not in output(client, owner, build).replace("echo never", "")


@pytest.mark.parametrize("driver", DRIVERS)
def test_objects_keys_and_artifacts_travel(
    site: Site, client: httpx.Client, owner: Account, driver: str
) -> None:
    name = f"input-{driver}-{time.monotonic_ns()}"
    payload = os.urandom(200_000)
    uploaded = client.post(
        f"/api/v1/objects?name={name}",
        content=payload,
        headers={**owner.auth, "Content-Type": "application/octet-stream"},
    )
    assert uploaded.status_code == 201, uploaded.text
    jobs = (
        "- stage: a\n  commands:\n"
        "  - cp in/data.bin out.bin\n"
        '  - test "$(stat -c %a $HOME/.ssh/deploy)" = 600\n'
        "  - grep -q 'User git' $HOME/.ssh/config\n"
        "  artifacts: [out.bin => copy.bin]\n"
    )
    extra = f"objects: ['{name} => in/data.bin']\nkeys: [deploy]\nstages: [a]\n"
    build = run(client, owner, manifest(site, driver, jobs, extra))
    assert build["status"] == "passed", output(client, owner, build)
    listed = client.get(f"{B}/{build['id']}/artifacts", headers=owner.auth).json()
    (artifact,) = listed["_embedded"]["artifacts"]
    assert artifact["name"] == "copy.bin"
    assert artifact["size"] == len(payload)
    assert artifact["sha256"] == hashlib.sha256(payload).hexdigest()
    content = client.get(artifact["_links"]["content"]["href"], headers=owner.auth)
    assert content.content == payload


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_killed_build_stops_at_once(
    site: Site, client: httpx.Client, owner: Account, driver: str
) -> None:
    jobs = '- stage: a\n  commands: ["echo started; sleep 60", "echo never"]\n'
    submitted = client.post(
        B, json={"manifest": manifest(site, driver, jobs, "stages: [a]\n")}, headers=owner.auth
    )
    assert submitted.status_code == 202, submitted.text
    build_id = submitted.json()["id"]
    href = f"{B}/{build_id}/jobs/{submitted.json()['_embedded']['jobs'][0]['id']}/output"
    wait_until(
        lambda: "started" in client.get(href, headers=owner.auth).text, what="the job to start"
    )
    killed_at = time.monotonic()
    assert client.post(f"{B}/{build_id}/kill", headers=owner.auth).status_code == 202
    build = wait_for_build(client, owner.auth, build_id)
    assert time.monotonic() - killed_at < 20
    assert build["status"] == "killed"
    assert "never" not in client.get(href, headers=owner.auth).text.replace("echo never", "")


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_build_past_its_timeout_times_out(
    site: Site, client: httpx.Client, owner: Account, driver: str
) -> None:
    jobs = '- stage: a\n  commands: ["sleep 60"]\n'
    build = run(client, owner, manifest(site, driver, jobs, "timeout: 2s\nstages: [a]\n"))
    assert build["status"] == "timed_out"
    assert build["_embedded"]["jobs"][0]["status"] == "timed_out"


@pytest.mark.parametrize("driver", DRIVERS)
def test_output_can_be_followed_while_the_job_runs(
    site: Site, client: httpx.Client, owner: Account, driver: str
) -> None:
    jobs = '- stage: a\n  commands: ["echo one; sleep 1; echo two"]\n'
    submitted = client.post(
        B, json={"manifest": manifest(site, driver, jobs, "stages: [a]\n")}, headers=owner.auth
    )
    assert submitted.status_code == 202, submitted.text
    job = submitted.json()["_embedded"]["jobs"][0]
    href = f"{B}/{submitted.json()['id']}/jobs/{job['id']}/output?follow=true"
    with client.stream("GET", href, headers=owner.auth, timeout=60) as streamed:
        text = b"".join(streamed.iter_bytes()).decode()
    assert "one\n" in text
    assert text.endswith("two\n")
    assert wait_for_build(client, owner.auth, submitted.json()["id"])["status"] == "passed"


def test_a_docker_image_that_is_nowhere_fails_the_build_saying_so(
    site: Site, client: httpx.Client, owner: Account
) -> None:
    text = (
        "driver: {type: docker, image: 'kiln-no-such-image:404'}\nstages: [a]\n"
        "jobs:\n- stage: a\n  commands: ['true']\n"
    )
    build = run(client, owner, text)
    assert build["status"] == "failed"
    assert build["reason"].startswith("preparation_failed: ")
    assert "kiln-no-such-image:404" in output(client, owner, build)


def test_an_ssh_host_with_another_host_key_is_refused(
    site: Site, client: httpx.Client, owner: Account, tmp_path: Path
) -> None:
    forged = site.driver("ssh").replace(
        site.sshd.host_key.split()[1],
        "AAAAC3NzaC1lZDI1NTE5AAAAIHtwQtzS2Fz6zGl4hA9BzOZ6l7p8gqbQAZQXE2pZ8r5N",
    )
    text = f"driver: {forged}\nstages: [a]\njobs:\n- stage: a\n  commands: ['true']\n"
    build = run(client, owner, text)
    assert build["status"] == "failed"
    assert build["reason"].startswith("preparation_failed: ")
    assert "host key" in output(client, owner, build)
