"""connexion's AsyncApp, trimmed where it redoes per request what it could do once.

connexion 3.3 wraps the handler in its parameter and response decorators, which
inspect the handler's signature, on every request (`AsyncOperation.fn` makes a new
decorator each time, and the decorator re-decorates on each call). None of that
depends on the request, so it is done once per operation here; what does (the
request object) is still made per call, exactly as connexion makes it.
"""

from __future__ import annotations

import functools
from typing import Any

from connexion import AsyncApp
from connexion.apps.asynchronous import AsyncApi, AsyncASGIApp, AsyncOperation
from connexion.context import receive, scope
from connexion.decorators import StarletteDecorator
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from starlette.types import Receive, Scope, Send


class _NoFormRequest(ConnexionRequest):  # type: ignore[misc]
    """Kiln takes no form fields: its multipart uploads stream the body themselves, so
    connexion must not parse (and so read and keep) the whole form before the handler."""

    async def files(self) -> dict[str, Any]:
        return {}


class _DecorateOnce(StarletteDecorator):  # type: ignore[misc]
    def __call__(self, function: Any) -> Any:
        decorated = self.decorate(function)
        uri_parser = None

        @functools.wraps(function)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal uri_parser
            if uri_parser is None:  # needs the operation, which the context holds at call time
                uri_parser = self.uri_parser
            request = _NoFormRequest(scope, receive, uri_parser=uri_parser)
            return await decorated(request)

        return wrapper


class _Operation(AsyncOperation):  # type: ignore[misc]
    @functools.cached_property
    def fn(self) -> Any:
        return _DecorateOnce(pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)(
            self._fn
        )


class _Api(AsyncApi):  # type: ignore[misc]
    def make_operation(self, operation: Any) -> _Operation:
        made: _Operation = _Operation.from_operation(
            operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier
        )
        return made


class _ASGIApp(AsyncASGIApp):  # type: ignore[misc]
    api_cls = _Api


class SwaggerUIOnItsPaths(SwaggerUIMiddleware):  # type: ignore[misc]
    """connexion's Swagger UI and spec routes, without matching every API request
    against them first."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(("/docs", "/openapi.")):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


class KilnAsyncApp(AsyncApp):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._middleware_app = _ASGIApp()
        self.middleware.app = self._middleware_app
