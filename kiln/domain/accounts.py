"""Users and their tokens: made by the API, by `kiln` commands and at first start alike."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from sqlalchemy import func
from sqlmodel import select

from kiln.domain.credentials import expand_scopes, hash_password, new_token
from kiln.store.db import session
from models import Token, User

USERNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,38})$")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def create_user(
    username: str, *, password: str | None = None, email: str | None = None, admin: bool = False
) -> User:
    if not USERNAME.match(username):
        raise ValueError(f"{username!r} is not a valid user name")
    user = User(
        username=username,
        email=email,
        password_hash=hash_password(password) if password else None,
        is_admin=admin,
    )
    session().add(user)
    session().flush()
    return user


def find_user(username: str) -> User | None:
    return session().exec(select(User).where(User.username == username)).one_or_none()


def count_users() -> int:
    return session().exec(select(func.count()).select_from(User)).one()


def issue_token(
    user_id: int,
    *,
    name: str,
    scopes: Iterable[str],
    namespace_id: int | None = None,
    expires_at: dt.datetime | None = None,
    parent: Token | None = None,
) -> tuple[Token, str]:
    """A new token and its secret, which is not stored and cannot be shown again.

    A token minted with another (`parent`) never outlives it: it expires by then at the
    latest, whatever was asked.
    """
    if parent is not None and parent.expires_at is not None:
        expires_at = min(expires_at or parent.expires_at, parent.expires_at)
    secret, digest = new_token()
    token = Token(
        user_id=user_id,
        name=name,
        secret_hash=digest,
        scopes=" ".join(expand_scopes(scopes)),
        namespace_id=namespace_id,
        expires_at=expires_at,
    )
    session().add(token)
    session().flush()
    return token, secret


def parse_duration(text: str) -> dt.timedelta:
    """`90s`, `15m`, `12h`, `30d`, `2w`."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h or 15m")
    amount, unit = match.groups()
    return dt.timedelta(**{_UNITS[unit]: int(amount)})
