"""Encryption at rest for secrets in the database (variable values, SSH keys, webhook secrets).

Fernet keys come from `KILN_SECRET_KEY` (comma-separated, newest first) or from
`secret.key` in the data directory (one per line, newest first), made on first use.
MultiFernet decrypts with any of them and encrypts with the first, so a key can be
rotated (`kiln secrets rotate`) without losing what the old one encrypted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlmodel import select

from kiln.store import files
from kiln.store.db import Database, session

KEY_FILE = "secret.key"


class SecretBox:
    def __init__(
        self, keys: Iterable[bytes], reload: Callable[[], Iterable[bytes]] | None = None
    ) -> None:
        self._reload = reload
        self._use(keys)

    def _use(self, keys: Iterable[bytes]) -> None:
        self.keys = [k.strip() for k in keys if k.strip()]
        if not self.keys:
            raise ValueError("no encryption key")
        self._fernet = MultiFernet([Fernet(k) for k in self.keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            if self._reload is None:
                raise ValueError("a secret cannot be decrypted with the configured keys") from None
        # Another process rotated the key file: take its keys and try once more.
        self._use(self._reload())
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("a secret cannot be decrypted with the configured keys") from None

    def rotate(self, token: str) -> str:
        """The same secret, encrypted with the newest key."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise ValueError("a secret cannot be decrypted with the configured keys") from None


def load(secret_key: str | None, data_dir: Path) -> SecretBox:
    if secret_key:
        return SecretBox(k.encode() for k in secret_key.split(","))
    path = data_dir / KEY_FILE
    if not path.exists():
        files.private_directory(data_dir)
        _write_keys(path, [Fernet.generate_key()])
    files.tighten(path)
    return SecretBox(path.read_bytes().splitlines(), reload=lambda: path.read_bytes().splitlines())


def add_key(data_dir: Path) -> SecretBox:
    """Put a new key in front of the key file's keys and return the new box."""
    path = data_dir / KEY_FILE
    old = path.read_bytes().splitlines() if path.exists() else []
    _write_keys(path, [Fernet.generate_key(), *old])
    return SecretBox(path.read_bytes().splitlines())


def _write_keys(path: Path, keys: list[bytes]) -> None:
    temporary = path.with_suffix(".tmp")
    files.write(temporary, b"\n".join(k.strip() for k in keys if k.strip()) + b"\n")
    temporary.replace(path)


def reencrypt(db: Database, box: SecretBox) -> int:
    """Re-encrypt every stored secret with `box`'s newest key; how many there were."""
    from models import IdempotencyRecord, SshKey, Variable, Webhook

    encrypted: tuple[tuple[type[Any], str], ...] = (
        (Variable, "value"),
        (SshKey, "private_key"),
        (Webhook, "secret"),
        (IdempotencyRecord, "body"),  # a replayed result can hold a token's secret
    )
    count = 0
    with db.transaction():
        for model, column in encrypted:
            for row in session().exec(select(model)):
                token = getattr(row, column)
                if token is not None:
                    setattr(row, column, box.rotate(token))
                    count += 1
    return count
