"""Rate limits per credential (per address when anonymous), reported on every response."""

from __future__ import annotations

import hashlib
import logging
import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.core.config import Settings
from kiln.core.problems import Problem
from kiln.http.asgi import header, send_problem

log = logging.getLogger("kiln.ratelimit")


class RateLimits:
    """The limiter and the three limits Kiln applies."""

    def __init__(self, settings: Settings) -> None:
        self.storage = _storage(settings.rate_limit_storage)
        self.limiter = FixedWindowRateLimiter(self.storage)
        self.credential = parse(settings.rate_limit)
        self.anonymous = parse(settings.anonymous_rate_limit)
        self.password = parse(settings.password_rate_limit)

    async def hit(self, item: RateLimitItem, key: str) -> tuple[bool, int, int]:
        """Count one request; (allowed, remaining, seconds until the window resets)."""
        allowed = await self.limiter.hit(item, key)
        stats = await self.limiter.get_window_stats(item, key)
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        return allowed, stats.remaining, reset

    async def check_password_attempt(self, *keys: str) -> None:
        """Password guesses and failed logins count against tighter per-name, per-address limits."""
        for key in keys:
            allowed, _, reset = await self.hit(self.password, "auth:" + key)
            if not allowed:
                raise Problem(
                    "rate_limited",
                    f"Too many sign-in attempts; try again in {reset} seconds.",
                    headers={"Retry-After": str(reset)},
                )


def _storage(uri: str) -> Storage:
    if uri.startswith(("redis://", "rediss://")):
        storage = storage_from_string("async+" + uri, implementation="redispy")
    elif uri.startswith("memory://"):
        storage = storage_from_string("async+" + uri)
    else:
        storage = storage_from_string(uri)
    if not isinstance(storage, Storage):
        raise ValueError(f"{uri} is not an asynchronous rate-limit storage")
    return storage


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        credential = header(scope, b"authorization")
        if credential:
            # Keyed by a digest of the credential itself: no secret reaches the storage.
            item = self.limits.credential
            key = "cred:" + hashlib.blake2b(credential, digest_size=16).hexdigest()
        else:
            item = self.limits.anonymous
            key = "addr:" + client_address(scope)
        try:
            allowed, remaining, reset = await self.limits.hit(item, key)
        except Exception:
            # Limits are a guard, not a gate: with their storage down, serve unlimited.
            log.exception("rate limit storage failed; request not limited")
            await self.app(scope, receive, send)
            return
        headers = [
            (b"ratelimit-limit", str(item.amount).encode()),
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(reset).encode()),
        ]

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        if not allowed:
            problem = Problem(
                "rate_limited",
                f"Try again in {reset} seconds.",
                headers={"Retry-After": str(reset)},
            )
            await send_problem(scope, send_with_limits, problem)
            return
        await self.app(scope, receive, send_with_limits)
