"""connexion's AsyncApp, trimmed where it redoes per request what it could do once.

connexion parses, validates and resolves the contract on every start: here that is done
once per version of the file and kept in the cache (`kiln.core.cache`).

connexion 3.3 also wraps the handler in its parameter and response decorators, which
inspect the handler's signature, on every request (`AsyncOperation.fn` makes a new
decorator each time, and the decorator re-decorates on each call). None of that
depends on the request, so it is done once per operation here; what does (the
request object) is still made per call, exactly as connexion makes it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
from pathlib import Path
from typing import Any

from connexion import AsyncApp
from connexion.apps.asynchronous import AsyncApi, AsyncASGIApp, AsyncOperation
from connexion.context import receive, scope
from connexion.decorators import StarletteDecorator
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.main import API
from connexion.middleware.swagger_ui import SwaggerUIMiddleware
from connexion.spec import Specification
from starlette.types import Receive, Scope, Send

from kiln.core import cache, spec
from kiln.http import contract_documents, docs_headers


def load_specification(path: Path, cache_dir: Path | None = None) -> Specification:
    """The contract as connexion makes it (checked against the OpenAPI schema, `$ref`s
    resolved), taken from the cache while the file and connexion's version are unchanged."""
    return cache.kept(
        "connexion",
        path,
        functools.partial(_specification, path, cache_dir),
        versions=(importlib.metadata.version("connexion"),),
        directory=cache_dir,
    )


def _specification(path: Path, cache_dir: Path | None) -> Specification:
    # What connexion's Specification.load does with a file, minus parsing it again.
    return Specification.from_dict(spec.read(path, cache_dir), base_uri=f"{path.parent}{os.sep}")


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
    """connexion's Swagger UI, without matching every API request against its routes
    first; the contract's documents as written (kiln.http.contract_documents)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        contract_documents.documents()  # made now, not while a request waits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(("/docs", "/openapi.")):
            await self.app(scope, receive, send)
            return
        if contract_documents.serves(scope):
            await contract_documents.send_document(scope, send)
            return
        # /docs pages: no framing, and a Content-Security-Policy (kiln.http.docs_headers).
        await super().__call__(scope, receive, docs_headers.guarded(scope, send))


class KilnAsyncApp(AsyncApp):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._middleware_app = _ASGIApp()
        self.middleware.app = self._middleware_app

    def add_specification(self, specification: Specification) -> None:
        """`add_api` for a specification already loaded, with the app's options (connexion's
        own takes a path or a dict, and would parse or validate it all over again)."""
        if self.middleware.middleware_stack is not None:
            raise RuntimeError("Cannot add api after an application has started")
        options = self.middleware.options.__dict__
        self.middleware.apis.append(API(specification, base_path=None, name=None, **options))
