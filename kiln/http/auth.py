"""Who is calling, and may they: credentials checked once, scopes enforced by connexion.

Bearer tokens and Basic credentials (password or token) both carry scopes, so one
connexion security handler (registered for the `bearer` scheme) authenticates
either and checks the operation's scopes. The `basic` scheme in the spec documents
that Basic is accepted; its own handler defers to the `bearer` one. An operation
names its scopes in `x-kiln-scopes` (an `oauth2` requirement would have generated
clients send the token without `Bearer `); they reach the handler as connexion's
required scopes of the operation's requirements.

Before that, each operation judges the credentials a request brought (once; the
handler reads the verdict) and counts the request against the rate limit of whom it
serves: the credential when valid ones came to an operation that takes them, the
address otherwise.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable
from typing import Any

import anyio
import sqlalchemy
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.security import SecurityAPI, SecurityMiddleware, SecurityOperation
from connexion.security import NO_VALUE, AbstractSecurityHandler, SecurityHandlerFactory
from sqlalchemy import bindparam
from sqlmodel import col, select, update
from starlette.types import Receive, Scope, Send

from kiln.core import spec
from kiln.core.principal import ANONYMOUS, Principal
from kiln.core.problems import Problem
from kiln.domain.credentials import looks_like_token, token_hash, verify_password
from kiln.http.asgi import current_scope, header, request_info
from kiln.http.context import ServedApp, app_of
from kiln.http.ratelimit import client_address
from kiln.store.db import utcnow
from models import Token, User

REALM = 'Bearer realm="kiln"'
LAST_USED_GRANULARITY = dt.timedelta(minutes=1)
_VERDICT = "kiln.credentials"


def invalid_credentials(detail: str) -> Problem:
    return Problem(
        "invalid_credentials",
        detail,
        headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
    )


def insufficient_scope(needed: str) -> Problem:
    return Problem(
        "insufficient_scope",
        f"This operation needs the scope {needed}.",
        headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{needed}"'},
    )


async def authenticate(app: ServedApp, authorization: str, address: str) -> Principal:
    scheme, _, value = authorization.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and value:
        return await _token_principal(app, value, username=None, address=address)
    if scheme == "basic" and value:
        try:
            username, _, secret = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise invalid_credentials("The Basic credentials are not valid base64 UTF-8.") from None
        if looks_like_token(secret):
            return await _token_principal(app, secret, username=username, address=address)
        return await _password_principal(app, username, secret, address)
    raise invalid_credentials("Send 'Authorization: Bearer <token>' or Basic credentials.")


# Built once: these run for every authenticated request.
_TOKEN = (
    sqlalchemy.select(
        col(Token.id),
        col(Token.user_id),
        col(Token.scopes),
        col(Token.namespace_id),
        col(Token.expires_at),
        col(Token.last_used_at),
        col(User.username),
    )
    .join(User, col(User.id) == Token.user_id)
    .where(col(Token.secret_hash) == bindparam("secret_hash"))
)
_TOUCH_TOKEN = (
    update(Token)
    .where(col(Token.id) == bindparam("token_id"))
    .values(last_used_at=bindparam("now"))
)
_PASSWORD = select(User.id, User.password_hash).where(User.username == bindparam("username"))


async def _token_principal(
    app: ServedApp, secret: str, *, username: str | None, address: str
) -> Principal:
    if not looks_like_token(secret):
        await app.limits.count_failed_sign_in(address)
        raise invalid_credentials("The token is malformed.")
    params = {"secret_hash": token_hash(secret)}
    token = await app.db.run(lambda: app.db.first(_TOKEN, params))
    if token is None or (username is not None and token.username != username):
        await app.limits.count_failed_sign_in(address)
        raise invalid_credentials("The token is unknown or revoked.")
    now = utcnow()
    if token.expires_at is not None and token.expires_at <= now:
        raise invalid_credentials("The token has expired.")
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_GRANULARITY:
        touch = {"token_id": token.id, "now": now}
        await app.db.run(lambda: app.db.execute(_TOUCH_TOKEN, touch))
    return Principal(
        user_id=token.user_id,
        username=token.username,
        scopes=frozenset(token.scopes.split()),
        token_id=token.id,
        namespace_id=token.namespace_id,
    )


async def _password_principal(
    app: ServedApp, username: str, password: str, address: str
) -> Principal:
    await app.limits.check_sign_in(address, username)
    user = await app.db.run(lambda: app.db.first(_PASSWORD, {"username": username}))
    # argon2 takes tens of milliseconds of CPU: keep it off the event loop.
    if (
        user is None
        or user.password_hash is None
        or not await anyio.to_thread.run_sync(verify_password, user.password_hash, password)
    ):
        await app.limits.count_failed_sign_in(address, username)
        raise invalid_credentials("Wrong user name or password.")
    return Principal(user_id=user.id, username=username, scopes=spec.declared_scopes())


async def _judged(scope: Scope) -> Principal | Problem:
    """The verdict on the request's credentials: judged once, kept in its scope."""
    verdict: Principal | Problem | None = scope.get(_VERDICT)
    if verdict is None:
        authorization = header(scope, b"authorization") or b""
        try:
            verdict = await authenticate(
                app_of(scope), authorization.decode("latin-1"), client_address(scope)
            )
        except Problem as problem:
            verdict = problem
        scope[_VERDICT] = verdict
    return verdict


async def admit(scope: Scope, *, takes_credentials: bool) -> None:
    """Count a request with credentials against the rate limit of whom it serves: its
    credential when they are valid and the operation takes them, else its address."""
    caller = None
    if takes_credentials:
        verdict = await _judged(scope)
        if isinstance(verdict, Principal):
            token = verdict.token_id
            caller = f"token:{token}" if token is not None else f"user:{verdict.user_id}"
    await app_of(scope).limits.admit(scope, caller)


def current_principal() -> Principal:
    """The caller of the operation being served (ANONYMOUS when it sent no credentials)."""
    return request_info(current_scope()).principal or ANONYMOUS


class ScopedCredentialsHandler(AbstractSecurityHandler):  # type: ignore[misc]
    """Security handler for the `bearer` scheme: authenticates Bearer or Basic, checks scopes."""

    def get_fn(
        self, security_scheme: dict[str, Any], required_scopes: list[str]
    ) -> Callable[[ConnexionRequest], Any]:
        needed = tuple(required_scopes)

        async def verify(request: ConnexionRequest) -> Any:
            if not request.headers.get("authorization"):
                return NO_VALUE
            principal = await _judged(request.scope)
            if isinstance(principal, Problem):
                raise principal
            request_info(request.scope).principal = principal
            for scope in needed:
                if scope not in principal.scopes:
                    raise insufficient_scope(scope)
            return {"sub": principal.user_id, "principal": principal}

        return verify


class DeferToScopedHandler(AbstractSecurityHandler):  # type: ignore[misc]
    """Security handler for the `basic` scheme: ScopedCredentialsHandler already checked it."""

    def get_fn(
        self, security_scheme: dict[str, Any], required_scopes: list[str]
    ) -> Callable[[ConnexionRequest], Any]:
        return lambda request: NO_VALUE


SECURITY_MAP = {"bearer": ScopedCredentialsHandler, "basic": DeferToScopedHandler}


class _SecurityHandlerFactory(SecurityHandlerFactory):  # type: ignore[misc]
    @staticmethod
    def verify_none(request: ConnexionRequest) -> Any:
        # Anonymous access is for requests without credentials: credentials that
        # came are always judged, so a bad or under-scoped token never reads as anonymous.
        return NO_VALUE if request.headers.get("authorization") else {}


class _SecurityOperation(SecurityOperation):  # type: ignore[misc]
    """Connexion's security check of one operation, after counting the request."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if header(scope, b"authorization") is not None:
            await admit(scope, takes_credentials=bool(self.security))
        await super().__call__(scope, receive, send)


class _SecurityAPI(SecurityAPI):  # type: ignore[misc]
    security_handler_factory: Any

    def make_operation(self, operation: Any) -> Any:
        if not isinstance(self.security_handler_factory, _SecurityHandlerFactory):
            self.security_handler_factory = _SecurityHandlerFactory(
                self.security_handler_factory.security_handlers
            )
        # Each requirement (bearer, basic) needs the operation's scopes.
        scopes = list(spec.operations()[operation.operation_id].scopes)
        return _SecurityOperation(
            next_app=self.next_app,
            security_handler_factory=self.security_handler_factory,
            security=[{name: scopes for name in needs} for needs in operation.security],
            security_schemes=operation.security_schemes,
        )


class KilnSecurityMiddleware(SecurityMiddleware):  # type: ignore[misc]
    api_cls = _SecurityAPI
