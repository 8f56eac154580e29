"""Request validation that reports every failing field, not the first.

Connexion's validators stop at the first error, answer a body that is not UTF-8
with a 500, and rebuild their JSON Schema validators on every request; these
replace them through connexion's `validator_map`. A JSON body is validated as the
media type its `Content-Type` names, which the handler then reads it as too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import orjson
from connexion.datastructures import MediaTypeDict
from connexion.json_schema import Draft4RequestValidator
from connexion.lifecycle import ConnexionRequest
from connexion.middleware.request_validation import (
    RequestValidationAPI,
    RequestValidationMiddleware,
    RequestValidationOperation,
)
from connexion.utils import is_null, is_nullable
from connexion.validators import (
    AbstractResponseBodyValidator,
    FormDataValidator,
    JSONRequestBodyValidator,
    JSONResponseBodyValidator,
    MultiPartFormDataValidator,
    ParameterValidator,
)
from jsonschema import Draft4Validator, ValidationError
from python_multipart.multipart import parse_options_header
from starlette.types import Message, Receive, Scope, Send

from kiln.core import spec
from kiln.core.problems import FieldError, Problem, validation_failed
from kiln.http.asgi import header

_validators: dict[int, tuple[Any, dict[str, Any]]] = {}


def _compiled(schema: dict[str, Any]) -> Any:
    """One validator per schema object for the life of the process (schemas never change)."""
    entry = _validators.get(id(schema))
    if entry is None:
        validator = Draft4RequestValidator(schema, format_checker=Draft4Validator.FORMAT_CHECKER)
        # The schema is kept alongside so that its id cannot be reused by another object.
        entry = _validators[id(schema)] = (validator, schema)
    return entry[0]


def pointer(path: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def _describe(error: ValidationError, name: str) -> tuple[str, str]:
    """A stable code and a short message that never echoes a long input back."""
    kind, limit = error.validator, error.validator_value
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    match kind:
        case "required":
            return "required", f"{name} is required."
        case "type":
            expected = " or ".join(limit) if isinstance(limit, list) else limit
            return "type", f"{name} must be of type {expected}."
        case "maxLength":
            return "too_long", f"{name} is longer than {limit} characters."
        case "minLength":
            return "too_short", f"{name} is shorter than {limit} characters."
        case "pattern" if isinstance(error.instance, str) and "\x00" in error.instance:
            return "pattern", f"{name} contains NUL (U+0000), which no string may."
        case "pattern":
            return "pattern", f"{name} does not match the pattern {limit}."
        case "enum":
            return "enum", f"{name} must be one of: {', '.join(map(str, schema['enum']))}."
        case "minimum" | "exclusiveMinimum":
            return "out_of_range", f"{name} must be at least {schema.get('minimum')}."
        case "maximum" | "exclusiveMaximum":
            return "out_of_range", f"{name} must be at most {schema.get('maximum')}."
        case "format":
            return "format", f"{name} is not a valid {limit}."
        case "maxItems":
            return "too_many_items", f"{name} has more than {limit} items."
        case "minItems":
            return "too_few_items", f"{name} has fewer than {limit} items."
        case "uniqueItems":
            return "duplicate_items", f"{name} has duplicate items."
        case "maxProperties" | "minProperties":
            return "invalid", f"{name} has the wrong number of fields."
    return "invalid", f"{name} is invalid."


def schema_errors(schema: dict[str, Any], instance: Any) -> list[FieldError]:
    """Every way `instance` fails `schema`, each with a JSON pointer into it."""
    errors: list[FieldError] = []
    for error in _compiled(schema).iter_errors(instance):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = (
                set(error.schema.get("properties", {})) if isinstance(error.schema, dict) else set()
            )
            for extra in sorted(k for k in error.instance if k not in known):
                errors.append(
                    FieldError(
                        "unknown_field",
                        f"{extra} is not a field of this body.",
                        pointer=pointer([*path, extra]),
                    )
                )
            continue
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            path.append(missing)
        name = str(path[-1]) if path else "The body"
        code, detail = _describe(error, name)
        errors.append(FieldError(code, detail, pointer=pointer(path)))
    errors.sort(key=lambda e: e.pointer or "")
    return errors


class KilnParameterValidator(ParameterValidator):  # type: ignore[misc]
    def validate_request(self, request: ConnexionRequest) -> None:
        errors: list[FieldError] = []
        if self.strict_validation:
            for extra in sorted(
                self.validate_query_parameter_list(request, self.security_query_params)
            ):
                errors.append(
                    FieldError(
                        "unknown_parameter",
                        f"{extra} is not a parameter of this operation.",
                        parameter=extra,
                        location="query",
                    )
                )
        sources: dict[str, Callable[[dict[str, Any]], Any]] = {
            "query": lambda p: request.query_params.get(p["name"]),
            "path": lambda p: request.path_params.get(p["name"].replace("-", "_")),
            "header": lambda p: request.headers.get(p["name"]),
        }
        for location, read in sources.items():
            # connexion appends path-level parameters to the operation's list once per
            # middleware that builds the operation, so the same one can appear repeatedly.
            unique = {p["name"]: p for p in reversed(self.parameters.get(location, []))}
            for param in unique.values():
                error = _parameter_error(param, read(param), location)
                if error is not None:
                    errors.append(error)
        if errors:
            raise validation_failed(errors)


def _parameter_error(param: dict[str, Any], value: Any, location: str) -> FieldError | None:
    name = param["name"]
    if value is None:
        if param.get("required"):
            return FieldError("required", f"{name} is required.", parameter=name, location=location)
        return None
    if is_nullable(param) and is_null(value):
        return None
    schema = param.get("schema", param)
    if _plainly_valid(schema, value):
        return None
    for error in _compiled(schema).iter_errors(value):
        code, detail = _describe(error, name)
        return FieldError(code, detail, parameter=name, location=location)
    return None


_SCALAR_KEYWORDS = frozenset(
    {
        "type",
        "format",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "enum",
        "default",
        "description",
        "example",
    }
)


def _plainly_valid(schema: dict[str, Any], value: Any) -> bool:
    """A quick yes for the common scalar parameter; anything else goes to JSON Schema,
    which also words every error. Never says yes where JSON Schema would say no."""
    if not schema.keys() <= _SCALAR_KEYWORDS:
        return False
    kind = schema.get("type")
    if kind == "integer":
        return (
            type(value) is int
            and schema.get("minimum", value) <= value <= schema.get("maximum", value)
            and ("enum" not in schema or value in schema["enum"])
        )
    if kind == "string" and "format" not in schema:
        return (
            type(value) is str
            and schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
            and ("pattern" not in schema or _pattern(schema["pattern"]).search(value) is not None)
            and ("enum" not in schema or value in schema["enum"])
        )
    return False


@functools.cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


class ReusedValidationOperation(RequestValidationOperation):  # type: ignore[misc]
    """connexion's request validation, with what depends only on the operation (URI
    parser, parameter validator, accepted media types) built once rather than per request."""

    @functools.cached_property
    def _parameter_validator(self) -> Any:
        uri_parser = self._operation._uri_parser_class(
            self._operation.parameters, self._operation.body_definition()
        )
        return self._validator_map["parameter"](
            self._operation.parameters,
            uri_parser=uri_parser,
            strict_validation=self.strict_validation,
            security_query_params=self.security_query_params,
        )

    @functools.cached_property
    def _accepted(self) -> MediaTypeDict | None:
        consumes = self._operation.consumes
        return MediaTypeDict([(c.lower(), None) for c in consumes]) if consumes else None

    def validate_mime_type(self, mime_type: str) -> None:
        if self._accepted is not None and mime_type.lower() not in self._accepted:
            raise self._unsupported()

    def _unsupported(self, why: str = "") -> Problem:
        return Problem(
            "unsupported_media_type",
            f"{why}This operation takes {', '.join(self._operation.consumes)}.",
        )

    def _body_media_type(self, scope: Scope) -> str:
        """The media type the body is validated as, and then read as by the handler.

        connexion validates a body that has no `Content-Type` as the operation's first
        type, and matches types case-sensitively, while the handler parses by the header
        as sent: a body validated as JSON reached it as bytes (a 500). So a body needs a
        `Content-Type` the operation takes, and the handler sees it bare and lower-case."""
        raw = header(scope, b"content-type")
        if raw is None:
            if _has_body(scope):
                raise self._unsupported("The body has no Content-Type. ")
            # No body either: the body validator says that a required one is missing.
            return str(self._operation.consumes[0])
        media, _ = parse_options_header(raw)
        mime_type = media.decode("latin-1")
        self.validate_mime_type(mime_type)
        if raw != media:
            scope["headers"] = [
                *((k, v) for k, v in scope["headers"] if k != b"content-type"),
                (b"content-type", media),
            ]
        return mime_type

    @functools.cached_property
    def _streamed(self) -> bool:
        return spec.operations()[self._operation.operation_id].streamed_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._parameter_validator.validate(scope)
        # Uploads (streamed bodies) are read by their handler as they arrive, never whole
        # here, and take any media type: the contract names application/octet-stream, the
        # one type every generated client sends, and a body of another type is taken as
        # raw bytes of that type (or, as before the contract named one type, as the `file`
        # part of a multipart/form-data body).
        if self._operation.request_body and not self._streamed:
            # As connexion's RequestValidationOperation does it, but no body goes unvalidated.
            mime_type = self._body_media_type(scope)
            schema = self._operation.body_schema(mime_type)
            body_validator = self._validator_map["body"].get(mime_type) if schema else None
            if schema and body_validator is None:
                raise self._unsupported()
            if body_validator is not None:
                validator = body_validator(
                    schema=schema,
                    required=self._operation.request_body.get("required", False),
                    nullable=is_nullable(self._operation.body_definition(mime_type)),
                    encoding="utf-8",  # JSON's (RFC 8259); the validator refuses anything else
                    strict_validation=self.strict_validation,
                    uri_parser=self._parameter_validator.uri_parser,
                )
                receive, scope = await validator.wrap_receive(receive, scope=scope)
        await self.next_app(scope, receive, send)


def _has_body(scope: Scope) -> bool:
    length = header(scope, b"content-length")
    return (length is not None and length.strip() != b"0") or (
        header(scope, b"transfer-encoding") is not None
    )


class _ValidationAPI(RequestValidationAPI):  # type: ignore[misc]
    def make_operation(self, operation: Any) -> ReusedValidationOperation:
        return ReusedValidationOperation(
            self.next_app,
            operation=operation,
            strict_validation=self.strict_validation,
            validator_map=self.validator_map,
        )


class KilnRequestValidationMiddleware(RequestValidationMiddleware):  # type: ignore[misc]
    api_cls = _ValidationAPI


class KilnJSONBodyValidator(JSONRequestBodyValidator):  # type: ignore[misc]
    """JSON bodies: UTF-8 or 400, parsable or 400, every schema error listed."""

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        # Read the body whatever Content-Length says (chunked bodies have none).
        messages: list[Message] = []

        async def stream() -> AsyncIterator[bytes]:
            more = True
            while more:
                message = await receive()
                messages.append(message)
                more = message.get("more_body", False)
                yield message.get("body", b"")

        body = await self._parse(stream(), scope=scope)
        self._validate(body)
        return self._insert_messages(receive, messages=messages), scope

    async def _parse(self, stream: AsyncIterator[bytes], scope: Scope) -> Any:
        raw = b"".join([chunk async for chunk in stream])
        if not raw.strip():
            return _MISSING
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Problem(
                "invalid_encoding", f"The body is not UTF-8 (byte {e.start} is invalid)."
            ) from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise Problem(
                "malformed_json",
                f"The body is not JSON: {e.msg} at line {e.lineno} column {e.colno}.",
            ) from None

    def _validate(self, body: Any) -> None:
        if body is _MISSING:
            if self._required:
                raise validation_failed(
                    [FieldError("required", "A request body is required.", pointer="")]
                )
            return
        if body is None and self._nullable:
            return
        errors = schema_errors(self._schema, body)
        if errors:
            raise validation_failed(errors)


_MISSING = object()


class StreamedTextValidator(AbstractResponseBodyValidator):  # type: ignore[misc]
    """Text answers pass as they are sent: build output streams for as long as a job
    runs, and a text body is a string whatever it holds, so there is nothing to hold
    it back for."""

    def wrap_send(self, send: Send) -> Send:
        return send


VALIDATOR_MAP = {
    "parameter": KilnParameterValidator,
    "body": MediaTypeDict(
        {
            "*/*json": KilnJSONBodyValidator,
            "application/x-www-form-urlencoded": FormDataValidator,
            "multipart/form-data": MultiPartFormDataValidator,
        }
    ),
    "response": MediaTypeDict(
        {"*/*json": JSONResponseBodyValidator, "text/plain": StreamedTextValidator}
    ),
}
