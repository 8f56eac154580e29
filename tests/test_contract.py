"""The contract itself: valid, complete, and in step with the code that serves it."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from openapi_spec_validator import validate

from kiln.core import spec
from kiln.core.problems import CATALOGUE

SPEC = spec.load()
OPERATIONS = spec.operations()


def _operations() -> Iterator[tuple[str, str, dict[str, Any], list[dict[str, Any]]]]:
    for path, item in SPEC["paths"].items():
        for method in spec.METHODS:
            if method in item:
                op = item[method]
                params = [
                    spec.resolve(SPEC, p)
                    for p in [*item.get("parameters", []), *op.get("parameters", [])]
                ]
                yield path, method, op, params


OPS = list(_operations())
IDS = [f"{m.upper()} {p}" for p, m, _, _ in OPS]


def test_spec_passes_openapi_spec_validator() -> None:
    validate(SPEC)


@pytest.mark.parametrize(("path", "method", "op", "params"), OPS, ids=IDS)
def test_operation_id_resolves_to_a_handler_of_its_tag(
    path: str, method: str, op: dict[str, Any], params: list[dict[str, Any]]
) -> None:
    module_name, _, function_name = op["operationId"].rpartition(".")
    assert len(op["tags"]) == 1
    assert module_name == "handlers." + op["tags"][0].lower().replace(" ", "_")
    handler = getattr(importlib.import_module(module_name), function_name)
    assert callable(handler)
    accepted = set(inspect.signature(handler).parameters)
    for param in params:
        if param["in"] in ("path", "query"):
            assert param["name"] in accepted, f"{function_name} does not take {param['name']}"
    if "requestBody" in op and not op.get("x-kiln-streamed-body"):
        assert "body" in accepted


def test_every_scope_used_is_declared() -> None:
    declared = spec.declared_scopes()
    used = {scope for op in OPERATIONS.values() for scope in op.scopes}
    assert used <= declared, used - declared


def test_problem_codes_match_the_catalogue() -> None:
    assert set(spec.problem_codes()) == set(CATALOGUE)


@pytest.mark.parametrize(("path", "method", "op", "params"), OPS, ids=IDS)
def test_operation_documents_itself_and_every_status_it_can_return(
    path: str, method: str, op: dict[str, Any], params: list[dict[str, Any]]
) -> None:
    assert op.get("summary")
    assert op.get("description")
    assert "security" in op, "every operation states its security"
    statuses = set(op["responses"])
    names = {p["name"] for p in params}
    required = {"406", "429"}
    if params or "requestBody" in op:
        required.add("400")
    if op["security"] and op["security"] != [{}]:
        required.add("401")
    if OPERATIONS[op["operationId"]].scopes:
        required.add("403")
    if "{" in path or "namespace_id" in names:
        required.add("404")
    if "requestBody" in op:
        required |= {"413", "415"}
    if path.startswith("/api/"):
        required.add("503")
    if "If-Match" in names:
        required.add("412")
    if "If-None-Match" in names:
        required.add("304")
    if "after" in names or "Idempotency-Key" in names:
        required.add("422")
    if "Idempotency-Key" in names:
        required |= {"200", "409"}
    assert required <= statuses, f"missing {sorted(required - statuses)}"


@pytest.mark.parametrize(("path", "method", "op", "params"), OPS, ids=IDS)
def test_bodies_have_examples_and_closed_schemas(
    path: str, method: str, op: dict[str, Any], params: list[dict[str, Any]]
) -> None:
    for media, content in op.get("requestBody", {}).get("content", {}).items():
        assert "example" in content or "examples" in content, f"request {media}"
        schema = spec.resolve(SPEC, content["schema"])
        if media.endswith("json") and not op.get("x-kiln-streamed-body"):
            assert schema.get("additionalProperties") is False
            _assert_strings_bounded(schema)
    for status, response in op["responses"].items():
        if not status.startswith("2"):
            continue
        for media, content in spec.resolve(SPEC, response).get("content", {}).items():
            assert "example" in content or "examples" in content, f"{status} {media}"


def _assert_strings_bounded(schema: dict[str, Any], where: str = "") -> None:
    schema = spec.resolve(SPEC, schema)
    if schema.get("type") == "string" and "enum" not in schema and "format" not in schema:
        assert "maxLength" in schema, f"{where or 'body'} has no maxLength"
    for name, sub in schema.get("properties", {}).items():
        _assert_strings_bounded(sub, f"{where}/{name}")
    if "items" in schema:
        _assert_strings_bounded(schema["items"], f"{where}/0")
    for sub in schema.get("allOf", []):
        _assert_strings_bounded(sub, where)
