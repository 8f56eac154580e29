"""The contract itself: valid, complete, and in step with the code that serves it."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from typing import Any

import pytest
from openapi_spec_validator import validate

from kiln.core import spec
from kiln.core.problems import CATALOGUE

pytestmark = pytest.mark.no_database  # the contract, the sources, key parsing: no server

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


def test_operation_ids_are_unique() -> None:
    ids = [op["operationId"] for _, _, op, _ in OPS]
    assert len(ids) == len(set(ids)) == len(OPERATIONS)


@pytest.mark.parametrize(("path", "method", "op", "params"), OPS, ids=IDS)
def test_operation_id_resolves_to_a_handler_of_its_tag(
    path: str, method: str, op: dict[str, Any], params: list[dict[str, Any]]
) -> None:
    # camelCase words (no acronyms, digits or dots): the method name of every generated
    # client, and one spelling of the handler's snake_case name
    operation_id = op["operationId"]
    assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)+", operation_id), operation_id
    assert len(op["tags"]) == 1
    module_name, _, function_name = OPERATIONS[operation_id].handler.rpartition(".")
    assert module_name == "handlers." + op["tags"][0].lower().replace(" ", "_")
    assert re.sub(r"_([a-z])", lambda m: m[1].upper(), function_name) == operation_id
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


@pytest.mark.parametrize(("path", "method", "op", "params"), OPS, ids=IDS)
def test_credentials_are_bearer_or_basic_and_scopes_are_x_kiln_scopes(
    path: str, method: str, op: dict[str, Any], params: list[dict[str, Any]]
) -> None:
    """Requirements name the `bearer` and `basic` schemes (OAS 3.0: with no scopes);
    an operation that takes credentials lists the scopes it needs in `x-kiln-scopes`.
    An `oauth2` requirement would make typescript-fetch send the token without `Bearer `."""
    security = op["security"]
    if not security:
        assert "x-kiln-scopes" not in op
        return
    assert [r for r in security if r] == [{"bearer": []}, {"basic": []}]
    assert security[-1] in ({}, {"basic": []}), "anonymous access, if any, comes last"
    assert isinstance(op.get("x-kiln-scopes"), list)


def test_the_oauth2_scheme_holds_the_scopes_and_no_operation_requires_it() -> None:
    """It is named at the top level only (so linters see it used); operations override."""
    assert SPEC["security"] == [{"bearer": []}, {"basic": []}, {"oauth2": []}]
    schemes = SPEC["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["basic"] == {**schemes["basic"], "type": "http", "scheme": "basic"}
    assert spec.declared_scopes()


def test_links_name_operations_and_carry_bodies_aside() -> None:
    """openapi-generator takes a link's `requestBody` only as one runtime expression, so a
    body built from the response lives in `x-kiln-request-body` (tests/schemathesis_hooks)."""
    links = SPEC["components"]["links"]
    assert links
    for name, link in links.items():
        assert link["operationId"] in OPERATIONS, name
        assert "requestBody" not in link, name
        assert link.get("description"), name
        for expression in link.get("x-kiln-request-body", {}).values():
            assert expression.startswith("$response.body#/"), name


def _schemas_in(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _schemas_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schemas_in(value)


def test_links_and_embedded_are_named_schemas() -> None:
    """So generators name their types after the contract (`BuildLinks`, `EmbeddedJobs`)
    instead of inventing names (`CronJobAllOfLinks`) or sharing wrong ones."""
    for node in _schemas_in(SPEC):
        properties = node.get("properties")
        if isinstance(properties, dict):
            for name in ("_links", "_embedded"):
                if name in properties:
                    assert set(properties[name]) == {"$ref"}, properties[name]


# Names that generators rename to keep clear of their language (`Object` became
# `ModelObject` in TypeScript and `object_.py` in Python).
RESERVED = {"Object", "Date", "File", "Blob", "Error", "Array", "String", "Number"}
RESERVED |= {"Boolean", "Function", "Promise", "Map", "Set", "Response", "Request"}
RESERVED |= {"List", "Dict", "Type", "Any", "Configuration"}


def test_no_schema_is_named_after_a_language_type() -> None:
    assert not RESERVED & set(SPEC["components"]["schemas"])
    assert "StoredObject" in SPEC["components"]["schemas"]


def test_every_collection_has_a_next_cursor() -> None:
    schemas = SPEC["components"]["schemas"]
    collections = [
        name
        for name, schema in schemas.items()
        if "_embedded" in schema.get("properties", {})
        and "next" in spec.resolve(SPEC, schema["properties"]["_links"]).get("properties", {})
    ]
    assert len(collections) > 10
    for name in collections:
        schema = schemas[name]
        assert "next_cursor" in schema["required"], name
        assert schema["properties"]["next_cursor"] == {"$ref": "#/components/schemas/NextCursor"}


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
