"""What the HTTP layer needs of the app it serves, and how code serving a request
reaches it. The app (`kiln.app.Kiln`) satisfies `ServedApp`; this layer never
imports it."""

from __future__ import annotations

from typing import Protocol

from starlette.types import Scope

from kiln.core.config import Settings
from kiln.http.asgi import current_scope
from kiln.http.ratelimit import RateLimits
from kiln.store.db import Database
from kiln.store.secrets import SecretBox
from kiln.store.services import Services
from kiln.store.storage import Storage

APP_KEY = "kiln.app"


class ServedApp(Protocol):
    services: Services
    settings: Settings
    db: Database
    secrets: SecretBox
    storage: Storage
    limits: RateLimits

    def nudge(self, topic: str) -> None:
        """Wake this process's background loops that wait on `topic`."""


def attach(scope: Scope, app: ServedApp) -> None:
    """Make `app` the one serving the request in `scope`."""
    scope[APP_KEY] = app


def app_of(scope: Scope) -> ServedApp:
    app: ServedApp = scope[APP_KEY]
    return app


def current_app() -> ServedApp:
    """The app serving the current request."""
    return app_of(current_scope())
