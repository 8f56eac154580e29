"""Users: the authenticated user."""

from __future__ import annotations

from connexion.lifecycle import ConnexionResponse
from sqlmodel import select

from kiln.http import hal
from kiln.http.auth import current_principal
from kiln.store.db import session
from models import User


def represent_user(user: User) -> hal.Body:
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "created_at": user.created_at,
        "_links": {"self": hal.link("/api/v1/user")},
    }


def get_authenticated_user() -> ConnexionResponse:
    user_id = current_principal().user_id
    user = (session().exec(select(User).where(User.id == user_id))).one()
    return hal.resource(represent_user(user))
