"""Rate limits per credential (per address when anonymous), reported on every response.

A request counts as the caller it is served as. Without credentials that is its
address, counted before anything else runs. With credentials it is the credential
only once `auth` has found them valid for an operation that takes them; otherwise
(invalid credentials, operations that ignore them, answers given before they are
looked at) it is the address again, so made-up credentials buy no budget of their own.

Failed sign-ins have tighter limits of their own, per user name and per address.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kiln.core.config import Settings
from kiln.core.problems import Problem
from kiln.http.asgi import header, send_problem

log = logging.getLogger("kiln.ratelimit")

# An address may fail this many times as often as one user name: enough for the people
# behind one NAT to mistype, not for one client to spray guesses over many names.
ADDRESS_FAILURES_PER_NAME = 10
_COUNTED = "kiln.ratelimit"


@dataclass
class _Counted:
    """Whether the request has been counted, and the RateLimit-* headers that says."""

    done: bool = False
    headers: tuple[tuple[bytes, bytes], ...] = ()


class RateLimits:
    """The limiter and the limits Kiln applies."""

    def __init__(self, settings: Settings) -> None:
        self.storage = _storage(settings.rate_limit_storage)
        self.limiter = FixedWindowRateLimiter(self.storage)
        self.credential = parse(settings.rate_limit)
        self.anonymous = parse(settings.anonymous_rate_limit)
        self.password = parse(settings.password_rate_limit)
        self.address_failures = type(self.password)(
            self.password.amount * ADDRESS_FAILURES_PER_NAME, self.password.multiples
        )

    async def hit(self, item: RateLimitItem, key: str) -> tuple[bool, int, int]:
        """Count one request; (allowed, remaining, seconds until the window resets)."""
        allowed = await self.limiter.hit(item, key)
        return allowed, *await self._stats(item, key)

    async def _stats(self, item: RateLimitItem, key: str) -> tuple[int, int]:
        stats = await self.limiter.get_window_stats(item, key)
        return stats.remaining, max(0, math.ceil(stats.reset_time - time.time()))

    async def admit(self, scope: Scope, caller: str | None) -> None:
        """Count the request, once, against `caller`'s limit (a key for valid credentials)
        or, without one, its address's; `rate_limited` past it."""
        counted = scope.get(_COUNTED) or _Counted()
        if counted.done:
            return
        counted.done = True
        if caller is not None:
            item, key = self.credential, "cred:" + caller
        else:
            item, key = self.anonymous, "addr:" + client_address(scope)
        try:
            allowed, remaining, reset = await self.hit(item, key)
        except Exception:
            # Limits are a guard, not a gate: with their storage down, serve unlimited.
            log.exception("rate limit storage failed; request not limited")
            return
        counted.headers = (
            (b"ratelimit-limit", str(item.amount).encode()),
            (b"ratelimit-remaining", str(remaining).encode()),
            (b"ratelimit-reset", str(reset).encode()),
        )
        if not allowed:
            raise Problem(
                "rate_limited",
                f"Try again in {reset} seconds.",
                headers={"Retry-After": str(reset)},
            )

    def _sign_in_limits(
        self, address: str, username: str | None
    ) -> list[tuple[RateLimitItem, str]]:
        limits = [(self.address_failures, "auth:addr:" + address)]
        if username is not None:
            name = hashlib.blake2b(username.encode(), digest_size=16).hexdigest()
            limits.append((self.password, "auth:user:" + name))
        return limits

    async def check_sign_in(self, address: str, username: str | None = None) -> None:
        """Refuse a sign-in while its user name or its address is over its limit of
        failures, whether or not the password is right: else the right guess gets in."""
        for item, key in self._sign_in_limits(address, username):
            if not await self.limiter.test(item, key):
                raise _too_many_sign_ins((await self._stats(item, key))[1])

    async def count_failed_sign_in(self, address: str, username: str | None = None) -> None:
        """Count a failed sign-in against its user name and its address; `rate_limited`
        past either's limit. Sign-ins that succeed are not counted."""
        for item, key in self._sign_in_limits(address, username):
            allowed, _, reset = await self.hit(item, key)
            if not allowed:
                raise _too_many_sign_ins(reset)


def _too_many_sign_ins(reset: int) -> Problem:
    return Problem(
        "rate_limited",
        f"Too many failed sign-ins; try again in {reset} seconds.",
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
        counted = scope[_COUNTED] = _Counted()

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *counted.headers]
            await send(message)

        if header(scope, b"authorization") is None:
            try:
                await self.limits.admit(scope, None)
            except Problem as problem:
                await send_problem(scope, send_with_limits, problem)
                return
            await self.app(scope, receive, send_with_limits)
            return

        # With credentials, `auth` counts the request once it knows whom it serves. What
        # is answered before that (unknown paths, the contract, refusals) counts against
        # the address as its answer starts, and past the limit is answered with a 429.
        refused = False

        async def send_counted(message: Message) -> None:
            nonlocal refused
            if refused:
                return
            if message["type"] == "http.response.start" and not counted.done:
                try:
                    await self.limits.admit(scope, None)
                except Problem as problem:
                    refused = True
                    await send_problem(scope, send_with_limits, problem)
                    return
            await send_with_limits(message)

        await self.app(scope, receive, send_counted)
