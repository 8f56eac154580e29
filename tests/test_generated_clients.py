"""Clients generated from the contract, used as the teams that build on Kiln use them.

Three generators make clients of openapi.yaml: openapi-generator's `python` and
`typescript-fetch`, and openapi-typescript for openapi-fetch. Each client is checked
strictly by its language's type checker (`mypy --strict` on the Python that uses it,
`tsc --strict` on the TypeScript), then runs the examples in examples/ against a real
`kiln serve` (TLS with its own certificate, the admin's token), and reads a build and
a problem carrying values no contract has listed from a stand-in server.

Generating, installing and compiling take most of the time, so they run once for the
module, side by side, in a temporary directory (nothing generated lands in the
repository); each test waits for the steps it needs and reports the first that failed.
"""

from __future__ import annotations

import copy
import functools
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kiln.core import spec
from tests.processes import REPO, KilnServe, kiln_env

SPEC = spec.load()
CONTRACT = REPO / "openapi.yaml"
EXAMPLES = REPO / "examples"
GENERATOR = Path(sys.executable).parent / "openapi-generator-cli"
# openapi-generator runs for seconds: the JVM's quick compiler alone finishes sooner.
JAVA_OPTS = "-XX:TieredStopAtLevel=1"
# openapi-generator logs this for every contract, a one-operation one included (its
# ModelUtils asking for the name of a schema that has none): not about Kiln's contract.
GENERATOR_NOISE = "o.o.codegen.utils.ModelUtils - Failed to get the schema name: null"

# What the stand-in server sends: values that no enum of the contract lists.
FAKE_TOKEN = "kiln_stand-in"
STATUS, TRIGGER, DRIVER, CODE = "paused", "webhook", "firecracker", "build_archived"
UNSEEN = {"status": STATUS, "trigger": TRIGGER, "driver": DRIVER, "jobs": [STATUS], "code": CODE}
UNSEEN_BUILD = 1  # the build examples/*/open_enums read; any other is a 404
CLIENTS = ("python", "openapi-fetch", "typescript-fetch")


# 1. The contract: what generators need from it


def _responses() -> Iterator[tuple[str, Any]]:
    for path, item in SPEC["paths"].items():
        for method in spec.METHODS:
            for status, response in item.get(method, {}).get("responses", {}).items():
                for media, content in spec.resolve(SPEC, response).get("content", {}).items():
                    yield f"{method.upper()} {path} {status} {media}", content.get("schema")


def _closed_enums(node: Any, where: str, seen: set[str], opened: bool = False) -> list[str]:
    """Enums reached from `node` that are not one branch of an `anyOf` with a string."""
    if not isinstance(node, dict):
        return []
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        key = f"{name}:{opened}"
        if key in seen:
            return []
        seen.add(key)
        return _closed_enums(spec.resolve(SPEC, node), f"{where} > {name}", seen, opened)
    found = [where] if "enum" in node and not opened else []
    branches = node.get("anyOf", [])
    open_here = any(
        spec.resolve(SPEC, b).get("type") == "string" and "enum" not in spec.resolve(SPEC, b)
        for b in branches
    )
    for branch in branches:
        found += _closed_enums(branch, where, seen, open_here)
    for sub in [*node.get("allOf", []), *node.get("oneOf", [])]:
        found += _closed_enums(sub, where, seen)
    for name, sub in node.get("properties", {}).items():
        found += _closed_enums(sub, f"{where}.{name}", seen)
    for key in ("items", "additionalProperties"):
        found += _closed_enums(node.get(key), f"{where}[]", seen)
    return found


@pytest.mark.no_database
def test_every_enum_a_response_carries_is_open() -> None:
    """A client generated today must still read a value added tomorrow (issue 12, 9):
    an enum in a response is `anyOf: [{$ref: Known}, {type: string}]`, its known values
    still named and typed. Requests keep closed enums: the server refuses what it does
    not know."""
    closed: list[str] = []
    seen: set[str] = set()
    for where, schema in _responses():
        closed += _closed_enums(schema, where, seen)
    assert not closed, "\n".join(closed)


@pytest.mark.no_database
def test_uploads_take_raw_bytes_and_downloads_are_bytes() -> None:
    """One media type per upload, raw bytes, which every generator sends; no form
    schema that typescript-fetch imports without generating it (issue 12, 5 and 6)."""
    streamed = [op for op in spec.operations().values() if op.streamed_body]
    assert {op.operation_id for op in streamed} == {"createObject", "createImage"}
    for op in streamed:
        body = SPEC["paths"][op.path][op.method.lower()]["requestBody"]
        assert list(body["content"]) == ["application/octet-stream"], op.operation_id
        schema = spec.resolve(SPEC, body["content"]["application/octet-stream"]["schema"])
        assert (schema["type"], schema["format"]) == ("string", "binary")
    downloads = [(w, s) for w, s in _responses() if "application/octet-stream" in w]
    assert len(downloads) >= 6  # objects, images, artifacts: 200 and 206 each
    for where, schema in downloads:
        assert spec.resolve(SPEC, schema).get("format") == "binary", where
    assert "UploadForm" not in SPEC["components"]["schemas"]


# 2. The clients, generated, compiled and run


@dataclass(frozen=True)
class Step:
    name: str
    command: Sequence[str] = ()
    returncode: int | None = None  # None: never run, because `blocked_by` failed
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    blocked_by: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def report(self) -> str:
        if self.returncode is None:
            return f"{self.name} did not run: {self.blocked_by}"
        return (
            f"{self.name} exited {self.returncode} after {self.seconds:.1f}s: "
            f"{' '.join(self.command)}\n--- stdout\n{self.stdout[-8000:]}\n"
            f"--- stderr\n{self.stderr[-8000:]}"
        )


def run(
    name: str,
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> Step:
    start = time.monotonic()
    try:
        done = subprocess.run(
            list(command),
            cwd=cwd,
            env={**kiln_env(), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return Step(name, command, -1, out, f"timed out after {timeout}s", timeout)
    except OSError as exc:  # the program is not there: Node.js, npm or Java missing
        return Step(name, command, -1, "", f"could not run it: {exc}")
    return Step(name, command, done.returncode, done.stdout, done.stderr, time.monotonic() - start)


class FakeKiln(http.server.BaseHTTPRequestHandler):
    """A stand-in for a newer Kiln: build 1 in a status, from a trigger, on a driver that
    no contract lists yet, and a 404 whose problem code is as new."""

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {FAKE_TOKEN}":
            self._send(401, "application/problem+json", _problem(401, "unauthenticated"))
        elif self.path == f"/api/v1/builds/{UNSEEN_BUILD}":
            self._send(200, "application/hal+json", _unseen_build())
        else:
            self._send(404, "application/problem+json", _problem(404, CODE))

    def _send(self, status: int, media_type: str, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _unseen_build() -> dict[str, Any]:
    build: dict[str, Any] = copy.deepcopy(SPEC["components"]["examples"]["Build"]["value"])
    build.update(id=UNSEEN_BUILD, status=STATUS, trigger=TRIGGER, driver=DRIVER)
    for job in build["_embedded"]["jobs"]:
        job.update(build_id=UNSEEN_BUILD, status=STATUS)
    return build


def _problem(status: int, code: str) -> dict[str, Any]:
    return {
        "type": f"/problems/{code.replace('_', '-')}",
        "title": "A problem of a newer Kiln",
        "status": status,
        "code": code,
        "request_id": "stand-in",
    }


class Clients:
    """Every step of every client, started at once; each a Future that waits for the
    steps before it, and is not run (`blocked_by`) if one of them failed."""

    def __init__(self, root: Path, server: Future[KilnServe], fake_url: str) -> None:
        self.root, self.server, self.fake_url = root, server, fake_url
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="clients")
        self.steps: dict[str, Future[Step]] = {}
        python, typescript = root / "python", root / "typescript"
        shutil.copytree(
            EXAMPLES / "typescript",
            typescript,
            ignore=shutil.ignore_patterns("node_modules", "generated", "dist"),
        )
        generate = [str(GENERATOR), "generate", "-i", str(CONTRACT)]
        java = {"JAVA_OPTS": JAVA_OPTS}
        python_config = EXAMPLES / "python" / "openapi-generator.yaml"
        typescript_config = typescript / "openapi-generator.yaml"
        fetch = typescript / "generated" / "typescript-fetch"
        mypy_config = EXAMPLES / "python" / "mypy.ini"
        python_examples = sorted(str(f) for f in (EXAMPLES / "python").glob("*.py"))
        mypy = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(root / "mypy-cache")]
        builds: dict[str, tuple[list[str], list[str], Path, dict[str, str]]] = {
            "generate python": (
                [],
                [*generate, "-g", "python", "-c", str(python_config), "-o", str(python)],
                root,
                java,
            ),
            "generate typescript-fetch": (
                [],
                [
                    *generate,
                    "-g",
                    "typescript-fetch",
                    "-c",
                    str(typescript_config),
                    "-o",
                    str(fetch),
                ],
                root,
                java,
            ),
            "npm ci": (
                [],
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error", "--prefer-offline"],
                typescript,
                {},
            ),
            "generate openapi-typescript": (
                ["npm ci"],
                ["node", "generate.mjs", str(CONTRACT), "generated"],
                typescript,
                {},
            ),
            "mypy --strict": (
                ["generate python"],
                [*mypy, "--config-file", str(mypy_config), *python_examples],
                REPO,
                {"MYPYPATH": str(python)},
            ),
            "tsc --strict": (
                ["generate typescript-fetch", "generate openapi-typescript"],
                ["npx", "--no-install", "tsc", "--strict", "-p", "tsconfig.json"],
                typescript,
                {},
            ),
        }
        for name, (after, command, cwd, env) in builds.items():
            self.add(name, after, functools.partial(run, name, command, cwd=cwd, env=env))
        examples = {
            "python": ("generate python", [sys.executable, str(EXAMPLES / "python" / "{}.py")]),
            "openapi-fetch": ("tsc --strict", ["node", "dist/src/openapi-fetch/{}.js"]),
            "typescript-fetch": ("tsc --strict", ["node", "dist/src/typescript-fetch/{}.js"]),
        }
        for client, (built, program) in examples.items():
            cwd = REPO if client == "python" else typescript
            for example, live in (("scenario", True), ("open-enums", False)):
                file = example.replace("-", "_") if client == "python" else example
                command = [part.replace("{}", file) for part in program]
                name = f"{client} {example}"
                runner = self._runner(name, command, cwd, python, live)
                self.add(name, [built], runner, needs_server=live)

    def _runner(
        self, name: str, command: list[str], cwd: Path, python: Path, live: bool
    ) -> Callable[[], Step]:
        def go() -> Step:
            env = {"PYTHONPATH": str(python), "KILN_URL": self.fake_url, "KILN_TOKEN": FAKE_TOKEN}
            if live:
                server = self.server.result()
                env |= {"KILN_URL": server.base_url, "KILN_TOKEN": server.admin_token()}
                env |= {"KILN_CA_CERT": str(server.cert), "NODE_EXTRA_CA_CERTS": str(server.cert)}
            return run(name, command, cwd=cwd, env=env, timeout=180)

        return go

    def add(
        self,
        name: str,
        after: list[str],
        step: Callable[[], Step],
        *,
        needs_server: bool = False,
    ) -> None:
        before = [self.steps[a] for a in after]

        def when_ready() -> Step:
            for earlier in before:
                result = earlier.result()
                if not result.ok:
                    return Step(name, blocked_by=f"{result.name} failed")
            if needs_server and self.server.exception() is not None:
                return Step(name, blocked_by=f"kiln serve did not start: {self.server.exception()}")
            return step()

        self.steps[name] = self.pool.submit(when_ready)

    def __getitem__(self, name: str) -> Step:
        return self.steps[name].result(timeout=540)

    def close(self) -> None:
        for future in self.steps.values():
            future.cancel()
        self.pool.shutdown(wait=True)
        done = [f.result() for f in self.steps.values() if f.done() and f.exception() is None]
        print("client steps:", ", ".join(f"{s.name} {s.seconds:.1f}s" for s in done))


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clients]:
    root = tmp_path_factory.mktemp("clients")
    serve = KilnServe(root / "kiln" / "data", "--workers", "2", env=kiln_env())
    starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-serve")
    starting = starter.submit(serve.__enter__)  # starts while the clients are generated
    fake = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeKiln)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    made = Clients(root, starting, f"http://127.0.0.1:{fake.server_address[1]}")
    try:
        yield made
    finally:
        made.close()
        fake.shutdown()
        starter.shutdown(wait=True)
        if serve.process is not None:
            serve.__exit__(None, None, None)
        assert "Traceback" not in serve.output, serve.output[-20000:]


def _warnings(step: Step) -> list[str]:
    lines = (step.stdout + step.stderr).splitlines()
    return [
        line
        for line in lines
        if re.search(r"\b(WARN|WARNING|ERROR|SEVERE)\b", line, re.IGNORECASE)
        and GENERATOR_NOISE not in line
    ]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "generator", ["generate python", "generate typescript-fetch", "generate openapi-typescript"]
)
def test_each_generator_takes_the_contract_without_a_warning(
    clients: Clients, generator: str
) -> None:
    step = clients[generator]
    assert step.ok, step.report()
    assert not _warnings(step), "\n".join(_warnings(step))


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("checker", ["mypy --strict", "tsc --strict"])
def test_the_code_that_uses_each_client_type_checks_strictly(
    clients: Clients, checker: str
) -> None:
    step = clients[checker]
    assert step.ok, step.report()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_runs_the_scenario_against_kiln_serve(clients: Clients, client: str) -> None:
    """user; a namespace, its create replayed with an Idempotency-Key and a stale If-Match
    refused with 412; a build followed to `passed`, its jobs page by page (next_cursor),
    a job's output, its artifact's bytes and SHA-256; an object up and a Range of it back;
    a missing build's problem code, from the client's typed error."""
    step = clients[f"{client} scenario"]
    assert step.ok, step.report()
    said = step.stdout.splitlines()
    assert said[-1] == "scenario passed", step.report()
    assert said[0] == "signed in as admin", step.report()


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("client", CLIENTS)
def test_each_client_reads_values_no_contract_listed(clients: Clients, client: str) -> None:
    schemas = SPEC["components"]["schemas"]
    assert STATUS not in schemas["BuildStatus"]["enum"] + schemas["JobStatus"]["enum"]
    assert TRIGGER not in schemas["BuildTrigger"]["enum"]
    assert DRIVER not in schemas["DriverType"]["enum"]
    assert CODE not in spec.problem_codes()
    step = clients[f"{client} open-enums"]
    assert step.ok, step.report()
    said = step.stdout.splitlines()
    assert json.loads(said[-1]) == UNSEEN, step.report()
    assert said[0] == f'build {UNSEEN_BUILD} is "{STATUS}", which this client does not know yet'
