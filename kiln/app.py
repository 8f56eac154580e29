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

from kiln.background import deliveries, scheduler, worker
from kiln.background.loops import Background
from kiln.core import spec
from kiln.core.config import Settings
from kiln.http import errors
from kiln.http.auth import SECURITY_MAP, KilnSecurityMiddleware
from kiln.http.body_limit import BodyLimitMiddleware
from kiln.http.connexion_app import KilnAsyncApp, SwaggerUIOnItsPaths, load_specification
from kiln.http.context import attach
from kiln.http.https import HttpsOnlyMiddleware
from kiln.http.negotiation import AcceptMiddleware
from kiln.http.operations import UnitOfWorkResolver
from kiln.http.ratelimit import RateLimitMiddleware, RateLimits
from kiln.http.request_log import RequestLogMiddleware
from kiln.http.validation import VALIDATOR_MAP, KilnRequestValidationMiddleware
from kiln.store.services import Services


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
        self.api.add_specification(load_specification(spec.SPEC_PATH))
        errors.install(self.api)
        self._asgi = RequestLogMiddleware(
            HttpsOnlyMiddleware(RateLimitMiddleware(self.api, self.limits))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        attach(scope, self)
        await self._asgi(scope, receive, send)

    def nudge(self, topic: str) -> None:
        """Wake this process's background loops that wait on `topic`; callable from
        the threads database work runs in."""
        if self.background is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.background.nudge, topic)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Any) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self.background = start_background(self.services)
        try:
            yield
        finally:
            await self.background.stop(self.settings.grace_seconds)
            self.db.dispose()


def start_background(services: Services) -> Background:
    """The loops `kiln serve` runs beside the API, as its settings ask."""
    settings = services.settings
    running = Background(services)
    for n in range(settings.workers):
        running.start(f"worker-{n}", worker.run)
    if settings.scheduler:
        running.start("scheduler", scheduler.run)
    if settings.deliveries:
        running.start("deliveries", deliveries.run)
    return running
