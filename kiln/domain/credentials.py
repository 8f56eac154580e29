"""Secrets: capability tokens, password hashes and scope strings."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_PREFIX = "kiln_"  # noqa: S105 (a public prefix)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_hasher = PasswordHasher()  # argon2id with the library's current parameters


def new_token() -> tuple[str, str]:
    """A fresh token secret (256 random bits, base62, `kiln_` prefix) and its hash."""
    value = int.from_bytes(secrets.token_bytes(32), "big")
    digits = []
    for _ in range(43):  # 62**43 > 2**256
        value, digit = divmod(value, 62)
        digits.append(_BASE62[digit])
    secret = TOKEN_PREFIX + "".join(digits)
    return secret, token_hash(secret)


def token_hash(secret: str) -> str:
    # 256 random bits need no slow hash: SHA-256 is enough to keep the secret out of the database.
    return hashlib.sha256(secret.encode()).hexdigest()


def looks_like_token(secret: str) -> bool:
    return secret.startswith(TOKEN_PREFIX) and len(secret) == len(TOKEN_PREFIX) + 43


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def expand_scopes(requested: Iterable[str]) -> list[str]:
    """`["build:read,write", "cron:read"]` -> `["build:read", "build:write", "cron:read"]`."""
    out: list[str] = []
    for item in requested:
        resource, _, permissions = item.partition(":")
        for permission in permissions.split(","):
            scope = f"{resource}:{permission}"
            if scope not in out:
                out.append(scope)
    return out
