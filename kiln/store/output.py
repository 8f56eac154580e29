"""Where a job's output lives while a worker appends to it, and reading it back."""

from __future__ import annotations

from pathlib import Path

from kiln.store.services import Services
from models import Job

READ = 64 * 1024


def key(job: Job) -> str:
    return f"output/{job.build_id}/{job.id}.log"


def path(services: Services, job: Job) -> Path:
    return services.storage.local_path(key(job))


def read(file: Path, offset: int, most: int = READ) -> bytes:
    """Up to `most` bytes (and at most READ) from `offset`; none if the file is not there yet."""
    try:
        with file.open("rb") as f:
            f.seek(offset)
            return f.read(min(most, READ))
    except FileNotFoundError:
        return b""
