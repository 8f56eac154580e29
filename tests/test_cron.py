"""Cron jobs: schedules checked and next_run computed in UTC; manifests must be YAML."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from tests.support import MANIFEST, Account

C = "/api/v1/cron"


def create(client: httpx.Client, who: Account, **body: object) -> httpx.Response:
    return client.post(C, json={"name": "job", "manifest": MANIFEST, **body}, headers=who.auth)


@pytest.mark.parametrize(
    "schedule", ["0 3 * * *", "*/15 * * * *", "@hourly", "@daily", "@weekly", "@monthly"]
)
def test_valid_schedules(client: httpx.Client, alice: Account, schedule: str) -> None:
    response = create(client, alice, name=f"s{abs(hash(schedule))}", schedule=schedule)
    assert response.status_code == 201, response.text
    next_run = dt.datetime.fromisoformat(response.json()["next_run"])
    assert next_run > dt.datetime.now(dt.UTC)
    assert response.json()["prev_run"] is None


@pytest.mark.parametrize(
    "schedule", ["* * * *", "0 0 * * * *", "61 * * * *", "@yearly-ish", "every day"]
)
def test_invalid_schedules_are_400(client: httpx.Client, alice: Account, schedule: str) -> None:
    response = create(client, alice, name="bad", schedule=schedule)
    assert response.status_code == 400
    assert response.json()["errors"][0]["pointer"] == "/schedule"


def test_next_run_follows_the_schedule(client: httpx.Client, alice: Account) -> None:
    job = create(client, alice, name="at3", schedule="0 3 * * *").json()
    next_run = dt.datetime.fromisoformat(job["next_run"])
    assert (next_run.hour, next_run.minute, next_run.second) == (3, 0, 0)
    assert next_run - dt.datetime.now(dt.UTC) <= dt.timedelta(days=1)
    moved = client.patch(
        f"{C}/{job['id']}", json={"schedule": "@monthly"}, headers=alice.auth
    ).json()
    monthly = dt.datetime.fromisoformat(moved["next_run"])
    assert (monthly.day, monthly.hour) == (1, 0)


@pytest.mark.parametrize(
    "manifest", ["stages: [unclosed", "just a string", "- a\n- list", "a: &x [1]\nb: *x\n"]
)
def test_manifest_must_be_a_yaml_mapping_without_aliases(
    client: httpx.Client, alice: Account, manifest: str
) -> None:
    response = create(client, alice, name="badyaml", schedule="@daily", manifest=manifest)
    assert response.status_code == 400
    assert response.json()["errors"][0]["pointer"] == "/manifest"


def test_builds_list_and_names(client: httpx.Client, alice: Account) -> None:
    job = create(client, alice, name="listed", schedule="@daily").json()
    builds = client.get(job["_links"]["builds"]["href"], headers=alice.auth)
    assert builds.json()["_embedded"]["builds"] == []
    assert create(client, alice, name="listed", schedule="@daily").status_code == 409
    assert client.delete(f"{C}/{job['id']}", headers=alice.auth).status_code == 204
