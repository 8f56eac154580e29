"""The app factory: connexion bound to the contract, wrapped in Kiln's conventions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from connexion.middleware.context import ContextMiddleware
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.lifespan import LifespanMiddleware
from connexion.middleware.response_validation import ResponseValidationMiddleware
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.server_error import ServerErrorMiddleware
from connexion.options import SwaggerUIOptions
from starlette.types import Receive, Scope, Send

from kiln import background, errors, spec
from kiln.auth import SECURITY_MAP, KilnSecurityMiddleware
from kiln.background import Background
from kiln.body_limit import BodyLimitMiddleware
from kiln.config import Settings
from kiln.connexion_app import KilnAsyncApp, SwaggerUIOnItsPaths
from kiln.https import HttpsOnlyMiddleware
from kiln.negotiation import AcceptMiddleware
from kiln.operations import UnitOfWorkResolver
from kiln.ratelimit import RateLimitMiddleware, RateLimits
from kiln.request_log import RequestLogMiddleware
from kiln.services import Services
from kiln.validation import VALIDATOR_MAP, KilnRequestValidationMiddleware


class Kiln:
    """The ASGI application, and the services every operation shares."""

    def __init__(self, settings: Settings) -> None:
        self.services = Services.from_settings(settings)
        self.settings = settings
        self.db = self.services.db
        self.secrets = self.services.secrets
        self.storage = self.services.storage
        self.limits = RateLimits(settings)
        self.background: Background | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.api = KilnAsyncApp(
            __name__,
            specification_dir=spec.SPEC_PATH.parent,
            middlewares=[
                partial(ServerErrorMiddleware, handler=errors.on_unexpected),
                ExceptionMiddleware,
                SwaggerUIOnItsPaths,
                RoutingMiddleware,
                partial(BodyLimitMiddleware, limit=settings.max_json_body),
                AcceptMiddleware,
                KilnSecurityMiddleware,
                KilnRequestValidationMiddleware,
                ResponseValidationMiddleware,
                LifespanMiddleware,
                ContextMiddleware,
            ],
            lifespan=self._lifespan,
            resolver=UnitOfWorkResolver(),
            strict_validation=True,
            validate_responses=settings.validate_responses,
            validator_map=VALIDATOR_MAP,
            security_map=SECURITY_MAP,
            swagger_ui_options=SwaggerUIOptions(swagger_ui_path="/docs"),
        )
        self.api.add_api(spec.SPEC_PATH.name)
        errors.install(self.api)
        self._asgi = RequestLogMiddleware(
            HttpsOnlyMiddleware(RateLimitMiddleware(self.api, self.limits))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["kiln.app"] = self
        await self._asgi(scope, receive, send)

    def nudge(self, topic: str) -> None:
        """Wake this process's background loops that wait on `topic`; callable from
        the threads database work runs in."""
        if self.background is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.background.nudge, topic)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Any) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self.background = background.start_configured(self.services)
        try:
            yield
        finally:
            await self.background.stop(self.settings.grace_seconds)
            self.db.dispose()
