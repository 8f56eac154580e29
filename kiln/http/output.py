"""Serving job output: whole, or followed until the job ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlmodel import select
from starlette.responses import Response, StreamingResponse

from kiln.store import output
from kiln.store.services import Services
from models import Job

TEXT = "text/plain; charset=utf-8"
RUNNING = ("queued", "running")


def response(services: Services, job: Job, *, follow: bool) -> Any:
    """The output so far; with `follow`, a stream that ends when the job does."""
    file = output.path(services, job)
    if follow and job.status in RUNNING:
        return StreamingResponse(_follow(services, job, file), media_type=TEXT)
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        return Response(b"", media_type=TEXT)
    # The worker may still be appending: send what there was when asked, no more.
    return StreamingResponse(_upto(file, size), media_type=TEXT)


async def _follow(services: Services, job: Job, file: Path) -> AsyncIterator[bytes]:
    """Bytes as the worker appends them. A client that goes away ends the stream (the
    response stops iterating); nothing is held for it meanwhile."""
    offset = 0
    pause = services.settings.poll_interval
    while True:
        chunk = output.read(file, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
            continue
        if not await services.db.run(lambda: _running(services, job.id or 0)):
            while chunk := output.read(file, offset):  # what was written before it ended
                offset += len(chunk)
                yield chunk
            return
        await asyncio.sleep(pause)


async def _upto(file: Path, size: int) -> AsyncIterator[bytes]:
    offset = 0
    while offset < size and (chunk := output.read(file, offset, size - offset)):
        offset += len(chunk)
        yield chunk


def _running(services: Services, job_id: int) -> bool:
    with services.db.transaction(write=False) as s:
        status = s.exec(select(Job.status).where(Job.id == job_id)).one_or_none()
    return status in RUNNING
