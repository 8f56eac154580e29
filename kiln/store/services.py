"""What Kiln's parts share, whether they serve HTTP or only run in the background:
settings, the database, the secret box and blob storage."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.core.config import Settings
from kiln.store import files, secrets
from kiln.store.db import Database
from kiln.store.secrets import SecretBox
from kiln.store.storage import FileSystemStorage, Storage


@dataclass
class Services:
    settings: Settings
    db: Database
    secrets: SecretBox
    storage: Storage

    @classmethod
    def from_settings(cls, settings: Settings) -> Services:
        files.data_directory(settings.data_dir)
        return cls(
            settings=settings,
            db=Database(settings.resolved_database_url),
            secrets=secrets.load(settings.secret_key, settings.data_dir),
            storage=FileSystemStorage(settings.data_dir / "blobs"),
        )
