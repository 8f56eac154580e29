"""Cron schedules: five fields, or @hourly, @daily, @weekly, @monthly; times in UTC."""

from __future__ import annotations

import datetime as dt

from croniter import croniter

NICKNAMES = frozenset({"@hourly", "@daily", "@weekly", "@monthly"})


def is_valid(schedule: str) -> bool:
    schedule = schedule.strip()
    if schedule in NICKNAMES:
        return True
    return len(schedule.split()) == 5 and bool(croniter.is_valid(schedule))


def next_after(schedule: str, moment: dt.datetime) -> dt.datetime:
    """The first time the schedule fires strictly after `moment`."""
    following: dt.datetime = croniter(schedule.strip(), moment.astimezone(dt.UTC)).get_next(
        dt.datetime
    )
    return following.astimezone(dt.UTC)
