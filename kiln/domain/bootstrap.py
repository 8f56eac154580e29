"""First start: an administrator and a token for it, printed once."""

from __future__ import annotations

from kiln.core import spec
from kiln.domain.accounts import count_users, create_user, issue_token
from kiln.store.db import Database

ADMIN = "admin"


def first_admin_token(db: Database) -> str | None:
    """The new admin's token secret when the database had no users, else None."""
    with db.transaction():
        if count_users() > 0:
            return None
        admin = create_user(ADMIN, admin=True)
        assert admin.id is not None
        _, secret = issue_token(admin.id, name="bootstrap", scopes=sorted(spec.declared_scopes()))
        return secret
