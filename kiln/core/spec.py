"""The contract, loaded once: where it is and what each operation declares."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln.core import cache

_PACKAGED = Path(__file__).parents[1] / "openapi.yaml"
_SOURCE = Path(__file__).parents[2] / "openapi.yaml"
SPEC_PATH = _PACKAGED if _PACKAGED.exists() else _SOURCE

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@dataclass(frozen=True)
class OperationInfo:
    operation_id: str
    handler: str  # the dotted name of the function that serves it
    method: str
    path: str
    produces: tuple[str, ...]
    scopes: tuple[str, ...]
    idempotent_create: bool
    anonymous: bool
    streamed_body: bool


@functools.cache
def load() -> dict[str, Any]:
    return read(SPEC_PATH)


def read(path: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """The contract at `path` as parsed, kept in the cache until the file changes."""
    return cache.kept("contract", path, functools.partial(parse, path), directory=cache_dir)


def parse(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's is 10x faster
    with path.open("rb") as f:
        spec: dict[str, Any] = yaml.load(f, Loader=loader)  # noqa: S506  (a safe loader)
    return spec


def handler_name(operation_id: str, tag: str) -> str:
    """Where an operation's handler is: the snake_case of its camelCase operationId, in
    the module of its (one) tag: `submitBuild` of `Builds` is `handlers.builds.submit_build`."""
    function = re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()
    return f"handlers.{tag.lower().replace(' ', '_')}.{function}"


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow local `$ref`s until a real node comes out."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


@functools.cache
def operations() -> dict[str, OperationInfo]:
    spec = load()
    out: dict[str, OperationInfo] = {}
    for path, item in spec["paths"].items():
        shared_params = item.get("parameters", [])
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            params = [resolve(spec, p) for p in [*shared_params, *op.get("parameters", [])]]
            security = op.get("security", spec.get("security", []))
            produces: list[str] = []
            for status, response in op.get("responses", {}).items():
                if status.startswith(("2", "3")):
                    for media in resolve(spec, response).get("content", {}):
                        if media not in produces:
                            produces.append(media)
            out[op["operationId"]] = OperationInfo(
                operation_id=op["operationId"],
                handler=handler_name(op["operationId"], op["tags"][0]),
                method=method.upper(),
                path=path,
                produces=tuple(produces),
                scopes=tuple(op.get("x-kiln-scopes", ())),
                idempotent_create=any(
                    p["in"] == "header" and p["name"] == "Idempotency-Key" for p in params
                ),
                anonymous={} in security or not security,
                streamed_body=bool(op.get("x-kiln-streamed-body", False)),
            )
    return out


def declared_scopes() -> frozenset[str]:
    """Every scope there is: those of the `oauth2` scheme (operations name theirs in
    `x-kiln-scopes`, and take the tokens as `bearer` or `basic` credentials)."""
    flows = load()["components"]["securitySchemes"]["oauth2"]["flows"]
    return frozenset(s for flow in flows.values() for s in flow["scopes"])


def problem_codes() -> tuple[str, ...]:
    return tuple(load()["components"]["schemas"]["ProblemCode"]["enum"])


@functools.cache
def _path_patterns() -> list[tuple[re.Pattern[str], tuple[str, ...]]]:
    patterns = []
    for path, item in load()["paths"].items():
        regex = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))
        methods = [m.upper() for m in METHODS if m in item]
        if "GET" in methods:
            methods.append("HEAD")
        patterns.append((re.compile(f"^{regex}$"), tuple(methods)))
    return patterns


def allowed_methods(path: str) -> tuple[str, ...]:
    """The methods the contract declares for the path a request went to."""
    for pattern, methods in _path_patterns():
        if pattern.match(path):
            return methods
    return ()
