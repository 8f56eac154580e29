"""Builds end to end: real manifests submitted over HTTPS, run by the server's own
worker with the local driver, and their results read back."""

from __future__ import annotations

import hashlib
import subprocess
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from tests.support import (
    Account,
    RunningServer,
    ssh_private_key,
    stays_the_same,
    unique,
    wait_for_build,
    wait_until,
)

B = "/api/v1/builds"


def manifest(*jobs: str, stages: str = "[test]", extra: str = "") -> str:
    return f"driver: {{type: local}}\nstages: {stages}\n{extra}jobs:\n" + "".join(jobs)


def job(commands: str, stage: str = "test", more: str = "") -> str:
    return f"- stage: {stage}\n  commands: {commands}\n{more}"


def submit(client: httpx.Client, who: Account, text: str, **body: Any) -> httpx.Response:
    return client.post(B, json={"manifest": text, **body}, headers=who.auth)


def run(client: httpx.Client, who: Account, text: str, **body: Any) -> dict[str, Any]:
    response = submit(client, who, text, **body)
    assert response.status_code == 202, response.text
    return wait_for_build(client, who.auth, response.json()["id"])


def output(client: httpx.Client, who: Account, build: dict[str, Any], n: int = 0) -> str:
    href = build["_embedded"]["jobs"][n]["_links"]["output"]["href"]
    return client.get(href, headers=who.auth).text


def test_a_submitted_build_is_queued_then_passes(client: httpx.Client, alice: Account) -> None:
    text = manifest(job('["echo $GREETING", "echo done"]'), extra="env: [GREETING=hello]\n")
    response = submit(client, alice, text, comment="first", tags=["one"])
    assert response.status_code == 202
    queued = response.json()
    assert response.headers["location"] == f"{B}/{queued['id']}"
    assert queued["status"] in ("queued", "running")
    assert queued["tags"] == ["one"]
    assert queued["comment"] == "first"
    assert [j["name"] for j in queued["_embedded"]["jobs"]] == ["test.1"]
    assert queued["trigger"] == "api"
    assert queued["submitter"] == alice.username
    build = wait_for_build(client, alice.auth, queued["id"])
    assert build["status"] == "passed"
    assert build["started_at"]
    assert build["finished_at"]
    assert output(client, alice, build) == "$ echo $GREETING\nhello\n$ echo done\ndone\n"
    assert build["_embedded"]["jobs"][0]["exit_code"] == 0


def test_jobs_run_below_the_api_at_the_worker_niceness(
    client: httpx.Client, alice: Account
) -> None:
    build = run(client, alice, manifest(job('["nice"]')))
    assert int(output(client, alice, build).splitlines()[1]) >= 10


def test_builds_are_numbered_per_owner(client: httpx.Client, alice: Account) -> None:
    first = submit(client, alice, manifest(job('["true"]'))).json()
    second = submit(client, alice, manifest(job('["true"]'))).json()
    assert second["number"] == first["number"] + 1


def test_a_failing_job_fails_the_build_and_skips_later_stages(
    client: httpx.Client, alice: Account
) -> None:
    text = manifest(
        job('["echo before", "exit 3", "echo never"]'),
        job('["echo later"]', stage="make"),
        stages="[test, make]",
    )
    build = run(client, alice, text)
    assert build["status"] == "failed"
    first, later = build["_embedded"]["jobs"]
    assert (first["status"], first["exit_code"]) == ("failed", 3)
    assert later["status"] == "skipped"
    assert "never" not in output(client, alice, build).replace("echo never", "")


def test_allowed_failures_pass_with_failures(client: httpx.Client, alice: Account) -> None:
    text = manifest(
        job('["false"]'),
        job('["echo made"]', stage="make"),
        stages="[test, make]",
        extra="allow_failures: [test]\n",
    )
    build = run(client, alice, text)
    assert build["status"] == "passed_with_failures"
    assert [j["status"] for j in build["_embedded"]["jobs"]] == ["failed", "passed"]


def test_kill_stops_a_running_build(client: httpx.Client, alice: Account) -> None:
    build = submit(client, alice, manifest(job('["echo started", "sleep 30"]'))).json()
    wait_until(lambda: "started" in output(client, alice, build), what="the job's first line")
    killed = client.post(f"{B}/{build['id']}/kill", headers=alice.auth)
    assert killed.status_code == 202
    done = wait_for_build(client, alice.auth, build["id"])
    assert done["status"] == "killed"
    assert done["_embedded"]["jobs"][0]["status"] == "killed"
    again = client.post(f"{B}/{build['id']}/kill", headers=alice.auth)
    assert again.status_code == 409
    assert again.json()["code"] == "build_finished"


def test_a_build_past_its_timeout_times_out(client: httpx.Client, alice: Account) -> None:
    build = run(client, alice, manifest(job('["sleep 30"]'), extra="timeout: 1s\n"))
    assert build["status"] == "timed_out"


def test_masked_values_never_reach_output(client: httpx.Client, alice: Account) -> None:
    secret = unique("s3cret")
    created = client.post(
        "/api/v1/variables",
        json={"key": "TOKEN", "value": secret, "masked": True},
        headers=alice.auth,
    )
    assert created.status_code == 201
    client.post("/api/v1/variables", json={"key": "PLAIN", "value": "visible"}, headers=alice.auth)
    build = run(client, alice, manifest(job('["echo token=$TOKEN plain=$PLAIN"]')))
    text = output(client, alice, build)
    assert secret not in text
    assert "token=xxxxxx plain=visible" in text
    given = client.get(f"{B}/{build['id']}/variables", headers=alice.auth).json()
    values = {v["key"]: v["value"] for v in given["_embedded"]["variables"]}
    assert values == {"TOKEN": "xxxxxx", "PLAIN": "visible"}


def test_artifacts_are_collected_with_their_hashes(client: httpx.Client, alice: Account) -> None:
    more = "  artifacts: [out/app.bin => app, missing.txt]\n"
    text = manifest(job('["mkdir -p out", "head -c 100000 /dev/urandom > out/app.bin"]', more=more))
    build = run(client, alice, text)
    assert build["status"] == "passed"
    listed = client.get(f"{B}/{build['id']}/artifacts", headers=alice.auth).json()
    (artifact,) = listed["_embedded"]["artifacts"]
    assert (artifact["name"], artifact["path"], artifact["size"]) == ("app", "out/app.bin", 100000)
    content = client.get(artifact["_links"]["content"]["href"], headers=alice.auth)
    assert content.status_code == 200
    assert hashlib.sha256(content.content).hexdigest() == artifact["sha256"]
    part = client.get(
        artifact["_links"]["content"]["href"], headers={**alice.auth, "Range": "bytes=0-9"}
    )
    assert part.status_code == 206
    assert part.content == content.content[:10]
    assert "kiln: artifact missing.txt not found" in output(client, alice, build)


def test_objects_are_placed_and_keys_written(client: httpx.Client, alice: Account) -> None:
    uploaded = client.post(
        "/api/v1/objects?name=data.txt",
        content=b"payload",
        headers={**alice.auth, "Content-Type": "text/plain"},
    )
    assert uploaded.status_code == 201
    key = client.post(
        "/api/v1/keys",
        json={"name": "deploy", "key": ssh_private_key(), "config": "Host example\n"},
        headers=alice.auth,
    )
    assert key.status_code == 201
    extra = "objects: [data.txt => in/data.txt]\nkeys: [deploy]\n"
    commands = (
        '["cat in/data.txt", "test -s $HOME/.ssh/deploy && echo key", "cat $HOME/.ssh/config"]'
    )
    build = run(client, alice, manifest(job(commands), extra=extra))
    assert build["status"] == "passed", output(client, alice, build)
    text = output(client, alice, build)
    assert "payload" in text
    assert "\nkey\n" in text
    assert "Host example" in text
    objects = client.get(f"{B}/{build['id']}/objects", headers=alice.auth).json()
    assert [o["name"] for o in objects["_embedded"]["objects"]] == ["data.txt"]
    keys = client.get(f"{B}/{build['id']}/keys", headers=alice.auth).json()
    assert [k["name"] for k in keys["_embedded"]["keys"]] == ["deploy"]
    placed = client.get(f"/api/v1/objects/{uploaded.json()['id']}/builds", headers=alice.auth)
    assert [b["id"] for b in placed.json()["_embedded"]["builds"]] == [build["id"]]


def test_following_output_streams_until_the_job_ends(client: httpx.Client, alice: Account) -> None:
    build = submit(client, alice, manifest(job('["echo one", "sleep 1", "echo two"]'))).json()
    href = build["_embedded"]["jobs"][0]["_links"]["output"]["href"]
    with client.stream("GET", f"{href}?follow=true", headers=alice.auth) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/plain")
        received = b"".join(streamed.iter_bytes()).decode()
    assert received == "$ echo one\none\n$ sleep 1\n$ echo two\ntwo\n"


def test_a_follower_that_disconnects_stops_costing_queries(
    server: RunningServer, alice: Account
) -> None:
    polls: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("SELECT jobs.status \nFROM jobs"):
            polls.append(statement)

    engine = server.app.db.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        with server.client() as client:
            build = submit(client, alice, manifest(job('["echo started", "sleep 30"]'))).json()
            href = build["_embedded"]["jobs"][0]["_links"]["output"]["href"]
            wait_until(lambda: "started\n" in output(client, alice, build), what="output")
            with client.stream("GET", f"{href}?follow=true", headers=alice.auth) as streamed:
                assert b"started\n" in next(streamed.iter_bytes())
                wait_until(lambda: polls, what="the follower to poll while connected")
        # The connection is closed: the stream ends at its next await, and then no
        # poll comes for many of the server's poll intervals.
        quiet = 20 * server.settings.poll_interval
        wait_until(lambda: stays_the_same(polls, quiet), what="the follower to stop polling")
    finally:
        event.remove(engine, "before_cursor_execute", count)
        with server.client() as client:
            client.post(f"{B}/{build['id']}/kill", headers=alice.auth)
            wait_for_build(client, alice.auth, build["id"])


def test_schema_problems_are_400_with_every_pointer(client: httpx.Client, alice: Account) -> None:
    text = (
        "driver: {type: local}\nstages: [a]\njobs:\n- {stage: a, commands: []}\n- {commands: [x]}\n"
    )
    response = submit(client, alice, text)
    assert response.status_code == 400
    pointers = {e["pointer"] for e in response.json()["errors"]}
    assert pointers == {"/manifest/jobs/0/commands", "/manifest/jobs/1/stage"}
    unknown_stage = submit(client, alice, manifest(job('["true"]', stage="nope")))
    assert unknown_stage.status_code == 400
    assert unknown_stage.json()["errors"][0]["pointer"] == "/manifest/jobs/0/stage"


@pytest.mark.parametrize(
    ("extra", "pointer"),
    [
        ("objects: [nothing.tar]\n", "/manifest/objects/0"),
        ("keys: [nokey]\n", "/manifest/keys/0"),
        ("timeout: 90d\n", "/manifest/timeout"),
    ],
)
def test_what_cannot_be_used_is_422(
    client: httpx.Client, alice: Account, extra: str, pointer: str
) -> None:
    response = submit(client, alice, manifest(job('["true"]'), extra=extra))
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "manifest_refused"
    assert response.json()["errors"][0]["pointer"] == pointer


def test_a_driver_this_server_does_not_run_is_501(client: httpx.Client, alice: Account) -> None:
    text = (
        "driver: {type: docker, image: debian}\nstages: [a]\njobs:\n- {stage: a, commands: [x]}\n"
    )
    response = submit(client, alice, text)
    assert response.status_code == 501
    assert response.json()["code"] == "driver_not_enabled"


def test_a_manifest_namespace_of_ones_own_is_made_on_the_fly(
    client: httpx.Client, alice: Account, bob: Account
) -> None:
    text = manifest(job('["true"]'), extra="namespace: fresh/child\n")
    build = submit(client, alice, text).json()
    namespace = client.get(f"/api/v1/namespaces/{build['namespace_id']}", headers=alice.auth)
    assert namespace.json()["path"] == f"{alice.username}/fresh/child"
    assert namespace.json()["visibility"] == "private"
    foreign = submit(
        client, bob, manifest(job('["true"]'), extra=f"namespace: {alice.username}/fresh\n")
    )
    assert foreign.status_code == 422, foreign.text
    mine = client.get(f"/api/v1/namespaces/{build['namespace_id']}/builds", headers=alice.auth)
    assert [b["id"] for b in mine.json()["_embedded"]["builds"]] == [build["id"]]


def test_listing_filters_and_tags(client: httpx.Client, alice: Account, bob: Account) -> None:
    tagged = run(client, alice, manifest(job('["true"]')), comment="release candidate")
    failed = run(client, alice, manifest(job('["false"]')))
    added = client.post(f"{B}/{tagged['id']}/tags", json={"name": "rc"}, headers=alice.auth)
    assert added.status_code == 201
    assert added.headers["location"] == f"{B}/{tagged['id']}/tags/rc"
    assert (
        client.post(f"{B}/{tagged['id']}/tags", json={"name": "rc"}, headers=alice.auth).status_code
        == 409
    )

    def ids(query: str) -> list[int]:
        page = client.get(f"{B}?{query}", headers=alice.auth).json()
        return [b["id"] for b in page["_embedded"]["builds"]]

    assert ids("tag=rc") == [tagged["id"]]
    assert ids("status=failed")[0] == failed["id"]
    assert ids("search=CANDIDATE") == [tagged["id"]]
    everything = ids("limit=100")
    assert everything == sorted(everything, reverse=True)  # newest first
    assert tagged["id"] not in [
        b["id"] for b in client.get(B, headers=bob.auth).json()["_embedded"]["builds"]
    ]
    removed = client.delete(f"{B}/{tagged['id']}/tags/rc", headers=alice.auth)
    assert removed.status_code == 204
    assert ids("tag=rc") == []
    assert client.delete(f"{B}/{tagged['id']}/tags/rc", headers=alice.auth).status_code == 404


def test_the_namespaces_variables_win_over_ones_own(client: httpx.Client, alice: Account) -> None:
    namespace = client.post("/api/v1/namespaces", json={"name": unique("vars")}, headers=alice.auth)
    ns = namespace.json()
    for body in (
        {"key": "WHO", "value": "mine"},
        {"key": "WHO", "value": "the namespace's", "namespace_id": ns["id"]},
        {"key": "ONLY_MINE", "value": "kept"},
    ):
        assert client.post("/api/v1/variables", json=body, headers=alice.auth).status_code == 201
    text = manifest(job('["echo $WHO / $ONLY_MINE"]'), extra=f"namespace: {ns['path']}\n")
    build = run(client, alice, text)
    assert "the namespace's / kept" in output(client, alice, build)


def test_a_cron_jobs_manifest_is_checked_as_a_submission(
    client: httpx.Client, alice: Account
) -> None:
    body = {"name": unique("c"), "schedule": "@daily"}
    refused = client.post(
        "/api/v1/cron",
        json={**body, "manifest": manifest(job('["true"]'), extra="objects: [nothing]\n")},
        headers=alice.auth,
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["pointer"] == "/manifest/objects/0"
    bad_schema = client.post(
        "/api/v1/cron", json={**body, "manifest": "driver: {type: local}\n"}, headers=alice.auth
    )
    assert bad_schema.status_code == 400


def test_a_yaml_syntax_error_says_where_and_what_was_expected(
    client: httpx.Client, alice: Account
) -> None:
    response = submit(client, alice, "stages: [test")
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["pointer"] == "/manifest"
    assert error["detail"] == (
        "The manifest is not YAML: while parsing a flow sequence at line 1 column 9: "
        "expected ',' or ']', but got '<stream end>' at line 1 column 14."
    )


def test_the_reason_names_the_job_that_failed_and_its_exit_code(
    client: httpx.Client, alice: Account
) -> None:
    text = manifest(
        job('["exit 1"]', stage="check", more="  name: lint\n"),
        job('["true"]', more="  name: fine\n"),
        job('["exit 3"]', more="  name: unit\n"),
        job('["exit 4"]', more="  name: other\n"),
        job('["true"]', stage="make"),
        stages="[check, test, make]",
        extra="allow_failures: [check]\n",
    )
    failed = run(client, alice, text)
    assert (failed["status"], failed["reason"]) == ("failed", "job_failed: unit exited with code 3")
    allowed = run(client, alice, text.replace("exit 3", "true").replace("exit 4", "true"))
    assert allowed["status"] == "passed_with_failures"
    assert allowed["reason"] == "job_failed: lint exited with code 1"
    passed = run(client, alice, manifest(job('["true"]')))
    assert passed["reason"] is None
    timed_out = run(client, alice, manifest(job('["sleep 30"]'), extra="timeout: 1s\n"))
    assert (timed_out["status"], timed_out["reason"]) == ("timed_out", "timed_out")


def test_a_workspace_that_cannot_be_prepared_says_why(client: httpx.Client, alice: Account) -> None:
    missing = f"/nonexistent/{unique('repo')}.git"
    build = run(client, alice, manifest(job('["true"]'), extra=f"sources: [{missing}]\n"))
    assert build["status"] == "failed"
    assert build["reason"].startswith(f"preparation_failed: git clone of {missing[:20]}")
    assert len(build["reason"]) <= 64
    first = build["_embedded"]["jobs"][0]
    assert first["status"] == "failed"
    assert first["output_size"] == len(output(client, alice, build).encode()) > 0


def test_a_kill_that_was_taken_says_so_while_the_build_stops(
    client: httpx.Client, alice: Account
) -> None:
    build = submit(client, alice, manifest(job('["echo started", "sleep 30"]'))).json()
    assert build["kill_requested"] is False
    wait_until(lambda: "started" in output(client, alice, build), what="the job's first line")
    killed = client.post(f"{B}/{build['id']}/kill", headers=alice.auth).json()
    assert (killed["status"], killed["kill_requested"]) == ("running", True)
    done = wait_for_build(client, alice.auth, build["id"])
    assert (done["status"], done["reason"], done["kill_requested"]) == ("killed", "killed", True)


def test_a_running_jobs_output_size_is_kept_current(client: httpx.Client, alice: Account) -> None:
    build = submit(client, alice, manifest(job('["echo started", "sleep 30"]'))).json()
    wait_until(lambda: "started" in output(client, alice, build), what="the job's first line")

    def embedded_size() -> int:
        got = client.get(f"{B}/{build['id']}", headers=alice.auth).json()
        size: int = got["_embedded"]["jobs"][0]["output_size"]
        return size

    expected = len(b"$ echo started\nstarted\n$ sleep 30\n")
    wait_until(lambda: embedded_size() == expected, what="output_size to catch up", seconds=10)
    listed = client.get(f"{B}/{build['id']}/jobs", headers=alice.auth).json()
    assert listed["_embedded"]["jobs"][0]["output_size"] == expected
    client.post(f"{B}/{build['id']}/kill", headers=alice.auth)
    done = wait_for_build(client, alice.auth, build["id"])
    assert done["_embedded"]["jobs"][0]["output_size"] == len(output(client, alice, done).encode())


def test_a_workspace_a_finished_build_could_not_remove_is_swept(server: RunningServer) -> None:
    # What a job leaves after making its files immutable, or a worker that crashed
    # before closing its workspace: the worker sweeps it (every lease_seconds / 3).
    left = server.settings.data_dir / "workspaces" / "build-999999-leftover"
    (left / "work").mkdir(parents=True)
    (left / "work" / "stuck").touch()
    subprocess.run(["chattr", "+i", str(left / "work" / "stuck")], check=True)
    wait_until(lambda: not left.exists(), what="the worker to sweep the leftover workspace")


@pytest.mark.parametrize(
    "accept",
    ["application/problem+json", "application/json", "application/json, application/problem+json"],
)
def test_downloads_answer_clients_that_accept_only_json(
    client: httpx.Client, alice: Account, accept: str
) -> None:
    # What generated clients send on every call: the bytes come anyway (RFC 9110 lets a
    # server disregard Accept); only JSON operations answer 406 to a type they lack.
    more = "  artifacts: [out.txt => out]\n"
    build = run(client, alice, manifest(job('["echo hello > out.txt", "echo done"]', more=more)))
    asked = {**alice.auth, "Accept": accept}
    href = build["_embedded"]["jobs"][0]["_links"]["output"]["href"]
    shown = client.get(href, headers=asked)
    assert shown.status_code == 200
    assert shown.headers["content-type"].startswith("text/plain")
    assert "done" in shown.text
    listed = client.get(f"{B}/{build['id']}/artifacts", headers=alice.auth).json()
    (artifact,) = listed["_embedded"]["artifacts"]
    content = client.get(artifact["_links"]["content"]["href"], headers=asked)
    assert content.status_code == 200
    assert content.content == b"hello\n"
    refused = client.get(href, headers={**alice.auth, "Accept": "image/png"})
    assert refused.status_code == 406
    assert (
        client.get("/api/v1/user", headers={**alice.auth, "Accept": "text/plain"}).status_code
        == 406
    )


def test_deleting_a_namespace_under_a_running_build_stops_it_cleanly(
    client: httpx.Client, alice: Account, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="kiln.background.worker")
    name = unique("doomed")
    extra = f"namespace: {name}\n"
    build = submit(client, alice, manifest(job('["echo started", "sleep 60"]'), extra=extra))
    assert build.status_code == 202, build.text
    made = build.json()
    wait_until(lambda: "started" in output(client, alice, made), what="the job to start")
    deleted = client.delete(f"/api/v1/namespaces/{made['namespace_id']}", headers=alice.auth)
    assert deleted.status_code == 204, deleted.text
    wait_until(
        lambda: any("was deleted" in r.getMessage() for r in caplog.records),
        what="the worker to let the deleted build go",
    )
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    after = run(client, alice, manifest(job('["true"]')))  # the worker is free again
    assert after["status"] == "passed"
