"""The README and docs/conventions.md, held to what they describe: the CLI, tox.ini,
the contract and the problem catalogue. Nothing here starts a server."""

from __future__ import annotations

import configparser
import functools
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from kiln.cli import app
from kiln.core.config import Settings
from kiln.core.problems import CATALOGUE
from kiln.http.idempotency import RETENTION

pytestmark = pytest.mark.no_database  # the contract, the sources, key parsing: no server

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
CONVENTIONS = ROOT / "docs" / "conventions.md"
# Wide and plain, so that rich neither wraps nor colours the help.
HELP_ENV = {"COLUMNS": "200", "TERM": "dumb", "NO_COLOR": "1"}


# Markdown


def readme() -> str:
    return README.read_text()


def section(text: str, title: str) -> str:
    """The body of the `## title` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def fenced(text: str, *languages: str) -> list[str]:
    """The bodies of the fenced code blocks in these languages."""
    blocks = re.findall(r"^```([\w-]*)\n(.*?)^```", text, re.M | re.S)
    return [body for language, body in blocks if language in languages]


def prose(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(text))


def table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def unquote(cell: str) -> str:
    return cell.replace("`", "")


def links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", prose(text))


# Shell


SEPARATORS = {";", "|", "||", "&", "&&", "(", ")", "|&", ";;"}
BUILTINS = {"echo", "cd", "export", "printf", "read", "set", "test", "true", "false"}


def shell_commands(script: str) -> Iterator[list[str]]:
    """Every simple command of a script, as its words, variable assignments first."""
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in lexer:
            if token in SEPARATORS:
                if words:
                    yield words
                words = []
            elif words or token not in ("{", "}", "$", "!"):  # groups, `$(`
                words.append(token)
        if words:
            yield words


def command_word(words: list[str]) -> tuple[str, list[str]] | None:
    """The program a command runs and its arguments, past `NAME=value` assignments."""
    rest = list(words)
    while rest and re.match(r"^[A-Za-z_]\w*=", rest[0]):
        rest.pop(0)
    return (rest[0], rest[1:]) if rest else None


def run_by_uv(words: list[str]) -> str | None:
    """What `uv run` runs in this command (`python3 -m uv run ...` or `uv run ...`)."""
    found = command_word(words)
    if found is None:
        return None
    program, args = found
    if program in ("python3", "python") and args[:2] == ["-m", "uv"]:
        args = args[2:]
    elif program != "uv":
        return None
    if args[:1] != ["run"]:
        return None
    rest = [a for a in args[1:] if not a.startswith("-")]
    return rest[0] if rest else None


def readme_commands() -> list[list[str]]:
    return [words for block in fenced(readme(), "sh") for words in shell_commands(block)]


# Help


@dataclass
class HelpRow:
    names: tuple[str, ...]
    text: str
    env: str | None
    default: str | None
    required: bool


def help_rows(output: str) -> dict[str, HelpRow]:
    """The Options and Arguments panels of a rich `--help`, keyed by the first name.

    A row is its names, its metavar (`<str>`) and its help, which may wrap onto more lines.
    """
    rows: list[tuple[tuple[str, ...], str]] = []
    in_panel = False
    for line in output.splitlines():
        stripped = line.strip()
        if stripped.startswith(("╭", "╰")):
            in_panel = stripped.startswith("╭") and (
                "Options" in stripped or "Arguments" in stripped
            )
            continue
        if not in_panel or not stripped.startswith("│"):
            continue
        cells = [c for c in re.split(r"\s{2,}", stripped.strip("│").strip()) if c]
        if cells[:1] == ["*"]:  # required
            cells = cells[1:]
        metavar = next((i for i, c in enumerate(cells) if re.fullmatch(r"<.*>", c)), None)
        if metavar:
            rows.append((tuple(cells[:metavar]), " ".join(cells[metavar + 1 :])))
        elif rows:
            names, text = rows[-1]
            rows[-1] = (names, f"{text} {' '.join(cells)}".strip())
    out = {}
    for names, text in rows:
        env = re.search(r"\[env: (\w+)\]", text)
        default = re.search(r"\[default: (.*)\]\s*$", text)
        shown = default.group(1) if default else None
        if shown is not None and shown.startswith("(") and shown.endswith(")"):
            shown = shown[1:-1]  # typer's brackets round a description of the default
        plain = re.sub(r"\s*\[(env|default): [^]]*\]|\s*\[required\]", "", text).strip()
        out[names[0]] = HelpRow(
            names, plain, env.group(1) if env else None, shown, text.endswith("[required]")
        )
    return out


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command and group under `command` (typer's own click), with its path."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


def help_of(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env=HELP_ENV, prog_name="kiln")
    assert result.exit_code == 0, result.output
    return result.output


# The contract


def contract() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    return spec


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def declared_headers(spec: dict[str, Any]) -> set[str]:
    names = set()
    for node in walk(spec):
        if isinstance(node.get("headers"), dict):
            names.update(node["headers"])
        if node.get("in") == "header":
            names.add(node["name"])
    return {n.lower() for n in names}


def parameters(spec: dict[str, Any], where: str) -> set[str]:
    return {node["name"] for node in walk(spec) if node.get("in") == where and "name" in node}


def words_of(spec: dict[str, Any]) -> set[str]:
    """Names a client meets in bodies and parameters: properties, parameters, enum values."""
    words: set[str] = set()
    for node in walk(spec):
        if isinstance(node.get("properties"), dict):
            words.update(node["properties"])
        if isinstance(node.get("enum"), list):
            words.update(str(v) for v in node["enum"])
        if "in" in node and "name" in node:
            words.add(node["name"])
    return words


def media_types(spec: dict[str, Any]) -> set[str]:
    return {
        m for node in walk(spec) if isinstance(node.get("content"), dict) for m in node["content"]
    }


def statuses(spec: dict[str, Any]) -> set[str]:
    return {
        status
        for item in spec["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "responses" in op
        for status in op["responses"]
    }


def path_pattern(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", r"(\\{[^}]+\\}|[^/]+)", re.escape(path)) + "$")


def scopes(spec: dict[str, Any]) -> set[str]:
    flows = spec["components"]["securitySchemes"]["oauth2"]["flows"]
    return {s for flow in flows.values() for s in flow["scopes"]}


# Headers the contract neither declares nor mentions, which the conventions still name:
# where Kiln handles each, and what in that file shows it.
BEYOND_THE_CONTRACT = {
    "allow": ("kiln/http/errors.py", 'headers["Allow"]'),
    "strict-transport-security": ("kiln/http/https.py", "strict-transport-security"),
    "x-forwarded-proto": ("kiln/server.py", "proxy_headers"),
    "x-forwarded-for": ("kiln/server.py", "proxy_headers"),
}
# Served by connexion beside the operations of the contract.
SERVED_BESIDE = {"/openapi.json", "/openapi.yaml", "/docs/"}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


# 1. Every `kiln` in the README runs where a newcomer has it


def test_every_kiln_command_in_the_readme_runs_through_uv() -> None:
    bare = [" ".join(w) for w in readme_commands() if (command_word(w) or ("",))[0] == "kiln"]
    assert not bare, f"`kiln` is not on PATH; run these through `python3 -m uv run`: {bare}"
    through_uv = {run_by_uv(words) for words in readme_commands()}
    assert "kiln" in through_uv


def test_the_shell_parser_finds_a_bare_kiln() -> None:
    script = "echo 's3cret' | kiln users create alice\nX=$(kiln tokens create --user a)\n"
    found = [command_word(w) for w in shell_commands(script)]
    assert [f[0] for f in found if f] == ["echo", "kiln", "kiln"]
    assert run_by_uv(["python3", "-m", "uv", "run", "--locked", "kiln", "serve"]) == "kiln"


# 2. The conventions are in the repository, and true to the contract


def test_links_stay_inside_the_repository() -> None:
    assert "../" not in readme(), "the README points outside the repository"
    assert "docs/conventions.md" in links(readme())
    for document in (README, *sorted((ROOT / "docs").glob("*.md"))):
        for target in links(document.read_text()):
            if re.match(r"^(https?:|mailto:|#)", target):
                continue
            resolved = (document.parent / target.split("#")[0]).resolve()
            assert resolved.is_relative_to(ROOT), f"{document.name}: {target} is outside"
            assert resolved.exists(), f"{document.name}: {target} does not exist"


def test_the_conventions_name_only_what_the_contract_has() -> None:
    spec = contract()
    text = CONVENTIONS.read_text()
    headers, types, codes = declared_headers(spec), media_types(spec), statuses(spec)
    paths = [path_pattern(p) for p in spec["paths"]]
    query = parameters(spec, "query")
    known_words = (
        words_of(spec)
        | set(CATALOGUE)
        | {part for scope in scopes(spec) for part in scope.split(":")}
        | set(spec["components"]["securitySchemes"])
        | {"security"}  # where an operation names its scopes
    )
    # Statuses the framework answers for any operation (405) are the catalogue's.
    codes |= {str(problem.status) for problem in CATALOGUE.values()}
    methods = {m.upper() for item in spec["paths"].values() for m in item} | {"HEAD"}
    spec_text = (ROOT / "openapi.yaml").read_text().lower()
    wrong = []
    for span in code_spans(text):
        if re.fullmatch(rf"({'|'.join(METHODS)})( /\S*)?", span):
            method, _, path = span.partition(" ")
            if method not in methods:
                wrong.append(f"method {method}")
            elif path and not any(
                p.match(path) and method.lower() in spec["paths"][raw]
                for p, raw in zip(paths, spec["paths"], strict=True)
            ):
                wrong.append(f"operation {span}")
        elif re.fullmatch(r"[1-5]\d\d", span):
            if span not in codes:
                wrong.append(f"status {span}")
        elif re.fullmatch(r"[a-z*]+/[a-z0-9.+*-]+(; .*)?", span):
            if span.split(";")[0] not in types:
                wrong.append(f"media type {span}")
        elif re.fullmatch(r"[A-Z][A-Za-z0-9]*(-[A-Za-z0-9]+)*(: .*)?", span):
            name = span.split(":")[0]
            if name in spec["components"]["schemas"]:
                continue
            beyond = BEYOND_THE_CONTRACT.get(name.lower())
            if beyond is not None:
                file, evidence = beyond
                if evidence not in (ROOT / file).read_text():
                    wrong.append(f"header {name} (not in {file})")
            elif name.lower() not in headers and f"`{name.lower()}" not in spec_text:
                wrong.append(f"header {name}")
        elif span.startswith("/"):
            path = span.split("?")[0]
            if not (
                path in SERVED_BESIDE
                or any(p.match(path) for p in paths)
                or any(p.startswith(path + "/") for p in spec["paths"])
            ):
                wrong.append(f"path {span}")
        elif span.startswith("?"):
            if span.strip("?=") not in query:
                wrong.append(f"query parameter {span}")
        elif re.fullmatch(r"[a-z]+:[a-z]+(,[a-z]+)*", span):
            resource, permissions = span.split(":")
            if any(f"{resource}:{p}" not in scopes(spec) for p in permissions.split(",")):
                wrong.append(f"scope {span}")
        elif re.fullmatch(r"_?[a-z][a-z0-9_]*", span) and span not in known_words:
            wrong.append(f"name {span}")
    assert not wrong, f"docs/conventions.md names what the contract does not have: {wrong}"


def test_problem_codes_in_the_conventions_are_the_catalogue() -> None:
    text = CONVENTIONS.read_text()
    rows = table(section(text, "Problems"), "| code | status |")
    assert {unquote(code): int(status) for code, status, _ in rows} == {
        code: problem.status for code, problem in CATALOGUE.items()
    }
    for status, code in re.findall(r"`(\d{3})` `([a-z_]+)`", prose(text)):
        assert code in CATALOGUE, code
        assert CATALOGUE[code].status == int(status), f"{code} is {CATALOGUE[code].status}"
    problem_schema = contract()["components"]["schemas"]["Problem"]["properties"]
    for block in fenced(text, "json"):
        body = json.loads(block)
        if "code" not in body:
            continue
        problem = CATALOGUE[body["code"]]
        assert set(body) <= set(problem_schema)
        assert (body["type"], body["title"], body["status"]) == (
            problem.type_uri,
            problem.title,
            problem.status,
        )


def test_figures_in_the_conventions_are_the_contracts_and_the_servers() -> None:
    spec = contract()
    text = " ".join(prose(CONVENTIONS.read_text()).split())
    params = spec["components"]["parameters"]
    limit, key = params["Limit"]["schema"], params["IdempotencyKey"]["schema"]
    request_id = spec["components"]["headers"]["X-Request-Id"]["schema"]
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    per = {"hour": "an hour", "minute": "a minute", "second": "a second", "day": "a day"}

    def rate(limit: str) -> str:
        amount, unit = limit.split("/")
        return f"{amount} {per[unit]}"

    def size(n: int) -> str:
        unit = next(u for u, s in (("GiB", 1024**3), ("MiB", 1024**2)) if n % s == 0)
        return f"{n // {'GiB': 1024**3, 'MiB': 1024**2}[unit]} {unit}"

    expected = [
        f"`limit` ({limit['minimum']} to {limit['maximum']}, default {limit['default']})",
        f"any string of {key['minLength']} to {key['maxLength']} visible ASCII characters",
        f"kept for {int(RETENTION.total_seconds() // 3600)} hours",
        f"(1 to {request_id['maxLength']} letters",
        f"({rate(defaults['rate_limit']).replace(' ', ' requests ', 1)} by default)",
        f"({rate(defaults['anonymous_rate_limit'])})",
        f"{rate(defaults['password_rate_limit'])} by default per user name",
        f"JSON body over {size(defaults['max_json_body'])}",
        f"({size(defaults['max_object_size'])} for objects,"
        f" {size(defaults['max_image_size'])} for images",
    ]
    missing = [phrase for phrase in expected if phrase not in text]
    assert not missing, f"docs/conventions.md does not say: {missing}"


def test_the_conventions_list_every_scope() -> None:
    text = " ".join(prose(CONVENTIONS.read_text()).split())
    resources = re.search(r"the resources ((`[a-z]+`(, | and )?)+)", text)
    permissions = re.search(r"the permissions ((`[a-z]+`(, | and )?)+)", text)
    assert resources, "docs/conventions.md does not list the scopes' resources"
    assert permissions, "docs/conventions.md does not list the scopes' permissions"
    declared = [scope.split(":") for scope in scopes(contract())]
    assert set(re.findall(r"`([a-z]+)`", resources.group(1))) == {r for r, _ in declared}
    assert set(re.findall(r"`([a-z]+)`", permissions.group(1))) == {p for _, p in declared}


def test_collections_embed_under_the_last_segment_of_their_path() -> None:
    """As docs/conventions.md says; a contract that breaks it should change the page."""
    spec = contract()
    schemas = spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        last = path.rsplit("/", 1)[1]
        response = item.get("get", {}).get("responses", {}).get("200")
        if response is None or last.startswith("{"):
            continue
        while "$ref" in response:
            response = spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        for media in response.get("content", {}).values():
            ref = media["schema"].get("$ref", "")
            embedded = schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
            if "_embedded" in embedded:
                named = schemas[embedded["_embedded"]["$ref"].rsplit("/", 1)[1]]
                assert list(named["properties"]) == [last], path


# 3. What else the examples and the tests need


def tox() -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tox.ini")
    return config


def listed(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,\n]", value) if v.strip()]


def postgres_environments(config: configparser.ConfigParser) -> dict[str, str]:
    """tox environments that need PostgreSQL, and the database URL each uses."""
    found = {}
    for name in config.sections():
        url = re.search(r"postgres\S*://\S+", config[name].get("set_env", ""))
        if name.startswith("testenv:") and url:
            found[name.removeprefix("testenv:")] = url.group(0)
    return found


def test_the_readme_names_every_tool_its_examples_run() -> None:
    needs = section(readme(), "What you need")
    defined = set(re.findall(r"^\s*(\w+)\(\)", "\n".join(fenced(readme(), "sh")), re.M))
    programs = {found[0] for w in readme_commands() if (found := command_word(w))}
    assert "Python" in needs
    assert "pip" in needs
    for program in programs - BUILTINS - defined - {"python3", "kiln"}:
        assert f"`{program}`" in needs, f"the README runs {program} but does not say to get it"


def test_the_readme_names_what_the_tox_environments_need() -> None:
    needs = " ".join(section(readme(), "What you need").split())
    config = tox()
    for name in config.sections():
        for tool in listed(config[name].get("allowlist_externals", "")):
            tool = {"npx": "npm"}.get(tool, tool)  # npx comes with npm
            assert re.search(rf"\b{tool}\b", needs), f"{name} runs {tool}"
            if tool == "npm":
                assert "Node.js" in needs
    databases = postgres_environments(config)
    assert databases, "tox.ini has no PostgreSQL environment any more: update the README"
    for environment, raw in databases.items():
        url = make_url(raw)
        assert f"`{environment}`" in needs
        assert f"`{url.host}:{url.port}`" in needs
        assert f"user `{url.username}`" in needs
        assert f"database `{url.database}`" in needs
        if not url.password:
            assert "without a password" in needs
            assert "`trust`" in needs


def test_the_readme_says_how_to_test_without_postgresql() -> None:
    config = tox()
    everything = listed(config["tox"]["env_list"])
    without = [env for env in everything if env not in postgres_environments(config)]
    command = f"python3 -m uv run --locked tox -e {','.join(without)}"
    assert any(command in block for block in fenced(section(readme(), "Test it"), "sh"))
    assert f"`{command}`" in section(readme(), "What you need").replace("\n  ", " ")
    for words in readme_commands():
        if run_by_uv(words) == "tox" and "-e" in words:
            named = words[words.index("-e") + 1].split(",")
            assert set(named) <= set(everything), f"no tox environment {named}"


# 4. `--help` and the README's table say the same


@functools.cache
def serve_help() -> str:
    """`kiln serve --help` as a newcomer's terminal shows it."""
    env = {**os.environ, **HELP_ENV}
    result = subprocess.run(
        [sys.executable, "-m", "kiln", "serve", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_serve_help_and_the_readme_table_agree() -> None:
    shown = {
        frozenset(row.names): row
        for name, row in help_rows(serve_help()).items()
        if name != "--help"
    }
    documented = {
        frozenset(unquote(n).strip() for n in flags.split(",")): (unquote(default), unquote(what))
        for flags, default, what in table(section(readme(), "Configure it"), "| flag |")
    }
    assert set(shown) == set(documented), "flags differ between kiln serve --help and the README"
    for names, row in shown.items():
        default, what = documented[names]
        assert row.default == default, f"{sorted(names)}: --help says {row.default}"
        assert row.text == what, f"{sorted(names)}: --help says {row.text!r}"


def test_serve_flags_say_their_variable_and_the_settings_default() -> None:
    fields = Settings.model_fields
    for name, row in help_rows(serve_help()).items():
        if name == "--help":
            continue
        field = name.removeprefix("--").replace("-", "_")
        assert row.env == f"KILN_{field.upper()}", f"{name} does not name its variable"
        default = fields[field].default
        if isinstance(default, bool):
            assert row.default == ("on" if default else "off"), name
        elif isinstance(default, Path):
            assert row.default is not None, name
            assert Path(row.default) == default, name
        elif default is not None:
            assert row.default == (str(default) or "none"), name


def test_every_option_of_every_command_has_help_and_a_default() -> None:
    checked = 0
    for path, command in commands(typer.main.get_command(app)):
        where = " ".join(("kiln", *path))
        assert command.help or command.short_help, f"{where} has no help"
        for name, row in help_rows(help_of(path)).items():
            checked += 1
            assert row.text, f"{where} {name} has no help"
            if path and name.startswith("--") and name != "--help" and not row.required:
                assert row.default, f"{where} {name} shows no default"
    assert checked > 40
