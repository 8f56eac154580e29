"""The contract's version: `info.version` is a semantic version with its section in
CHANGELOG.md, and openapi.yaml keeps every promise of the last released contract
(the newest `contracts/<version>.yaml`) unless its major version moved.

The comparison is Optic's (`@useoptic/optic`, installed by `npm ci` from the root
package.json, run as `npx --no-install optic diff OLD NEW --check`): its breaking-change
rules cover operations and status codes removed, parameters and request properties
added or made required, response properties removed, types changed and enums narrowed.
A generated client also breaks where Optic does not look: an operationId (a method's
name) changed, a component schema (a model) gone, a security scheme (what the client's
configuration sets) gone from the contract or from an operation; `names_gone` compares
those.

Releasing a version: date its CHANGELOG.md section and copy openapi.yaml to
`contracts/<version>.yaml`, which then becomes the contract the next one is held to.
"""

from __future__ import annotations

import copy
import fcntl
import functools
import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

# No database, no server. Optic takes minutes on a contract this size, and npm ci may
# come first: more than the suite's default timeout per test (npm ci 600 s at most,
# Optic 1100 s).
pytestmark = [pytest.mark.no_database, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT / "openapi.yaml"
CONTRACTS = ROOT / "contracts"
CHANGELOG = ROOT / "CHANGELOG.md"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# semver.org's own expression for a version
SEMVER = re.compile(
    r"(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?"
)
# Keep a Changelog's headings: "## [2.0.0] - 2026-12-01", or "- Unreleased" before release
SECTION = re.compile(r"^## \[(?P<version>[^\]]+)\](?: - (?P<date>\d{4}-\d{2}-\d{2}|Unreleased))?$")


@dataclass(frozen=True)
class Version:
    text: str
    major: int
    minor: int
    patch: int
    pre: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Version:
        m = SEMVER.fullmatch(text)
        if m is None:
            raise ValueError(f"{text!r} is not a semantic version (semver.org)")
        pre = tuple(m["pre"].split(".")) if m["pre"] else ()
        return cls(text, int(m["major"]), int(m["minor"]), int(m["patch"]), pre)

    @property
    def precedence(self) -> tuple[Any, ...]:
        # A pre-release comes before its release; its identifiers compare as numbers
        # when numeric, as text otherwise, numbers first; build metadata counts for nothing.
        ids = tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in self.pre)
        return (self.major, self.minor, self.patch, not self.pre, ids)


@functools.cache
def _parsed(path: Path, mtime_ns: int) -> dict[str, Any]:
    document: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    return document


def load(path: Path) -> dict[str, Any]:
    """The document at `path`, parsed (a copy: callers may change it)."""
    return copy.deepcopy(_parsed(path, path.stat().st_mtime_ns))


def released_contracts() -> list[tuple[Version, Path]]:
    """The released contracts kept in the repository, oldest first."""
    found = [(Version.parse(p.stem), p) for p in CONTRACTS.glob("*.yaml")]
    return sorted(found, key=lambda vp: vp[0].precedence)


def last_release() -> tuple[Version, Path]:
    releases = released_contracts()
    assert releases, f"no released contract in {CONTRACTS}"
    return releases[-1]


def changelog_sections() -> dict[str, str | None]:
    """Each version CHANGELOG.md has a section for, with the section's date."""
    lines = CHANGELOG.read_text(encoding="utf-8").splitlines()
    return {m["version"]: m["date"] for m in map(SECTION.fullmatch, lines) if m}


def operations(contract: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in contract["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def names_gone(released: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What a client generated from `released` names that `current` no longer has.

    Optic leaves these alone; each changes generated code that calls or configures the
    client. Operations removed are Optic's to report.
    """
    gone = []
    now = {(m, p): op for m, p, op in operations(current)}
    for method, path, op in operations(released):
        new = now.get((method, path))
        if new is None:
            continue
        if new.get("operationId") != op.get("operationId"):
            gone.append(
                f"{method.upper()} {path}: operationId {op.get('operationId')!r} is now "
                f"{new.get('operationId')!r} (the method of every generated client)"
            )
        schemes = _schemes(new, current)
        for scheme in sorted(_schemes(op, released) - schemes):
            gone.append(
                f"{method.upper()} {path} no longer takes {scheme!r} credentials, "
                f"only {sorted(schemes)} (client setup)"
            )
    for kind, what in (("schemas", "a generated model"), ("securitySchemes", "client setup")):
        kept = current.get("components", {}).get(kind, {})
        for name in released.get("components", {}).get(kind, {}):
            if name not in kept:
                gone.append(f"components.{kind}.{name} is gone ({what})")
    return gone


def _schemes(op: dict[str, Any], contract: dict[str, Any]) -> set[str]:
    """The security schemes an operation takes credentials of."""
    return {name for need in op.get("security", contract.get("security", [])) for name in need}


def version_problems(released: Version, current: Version, breaking: list[str]) -> list[str]:
    """Why `current` may not follow `released`, given the breaking changes between them."""
    if breaking and current.major <= released.major:
        return [
            f"{len(breaking)} breaking changes since {released.text}, but info.version is "
            f"{current.text}: move the major version and say what broke in CHANGELOG.md",
            *breaking,
        ]
    return []


# --- Optic -----------------------------------------------------------------------------


def _npm_lock_path() -> Path:
    # Outside node_modules, which npm ci deletes; one per checkout.
    digest = hashlib.sha256(str(ROOT).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"kiln-npm-ci-{digest}.lock"


def _node_modules_match_the_lock() -> bool:
    """Whether node_modules holds exactly what package-lock.json pins (npm's own record
    of what it installed, node_modules/.package-lock.json, against the lock)."""
    installed_record = ROOT / "node_modules" / ".package-lock.json"
    if not installed_record.exists():
        return False
    locked = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    installed = json.loads(installed_record.read_text())["packages"]
    locked.pop("", None)
    if set(installed) - set(locked):
        return False
    # optional packages for other platforms (fsevents) are left out of an install
    return all(
        installed[name] == entry if name in installed else entry.get("optional", False)
        for name, entry in locked.items()
    )


@pytest.fixture(scope="session")
def optic() -> list[str]:
    """The command that runs Optic, after `npm ci` if node_modules is not the locked one
    (tox's lint environment installs it; the sqlite one does not). One process at a time
    installs: xdist's workers share the checkout."""
    with _npm_lock_path().open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _node_modules_match_the_lock():
            install = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert install.returncode == 0, f"npm ci failed:\n{install.stdout}{install.stderr}"
            assert _node_modules_match_the_lock(), "npm ci did not install package-lock.json"
    return ["npx", "--no-install", "optic"]


# Optic's telemetry (Sentry, Segment) and update check off: nothing leaves the machine.
OPTIC_ENV = {
    "OPTIC_TELEMETRY_LEVEL": "off",
    "NO_UPDATE_NOTIFIER": "1",
    "NO_COLOR": "1",
    "FORCE_COLOR": "0",
}
# "x [prevent operation removal] cannot remove an operation. This is a breaking change."
FINDING = re.compile(r"^\s*x \[(?P<rule>[^\]]+)\] (?P<message>.+)$", re.MULTILINE)


@dataclass(frozen=True)
class OpticDiff:
    old: str
    new: str
    returncode: int
    output: str

    @property
    def findings(self) -> list[str]:
        """Optic's failed checks, `[rule] message` each."""
        return [f"[{m['rule']}] {m['message']}" for m in FINDING.finditer(self.output)]

    @property
    def breaking(self) -> list[str]:
        return self.findings if self.returncode != 0 else []


# Optic's breaking-change rules, told not to skip themselves when info.version's major
# moved (they do by default, and so `optic diff --check` by hand gates the same way):
# the test decides with `version_problems`, and shows what broke either way.
STANDARD = """\
ruleset:
  - breaking-changes:
      skip_when_major_version_changes: false
"""


def start_optic(optic: list[str], old: Path, new: Path, standard: Path) -> subprocess.Popen[str]:
    # --validation loose: 1.0.0's links carry requestBody objects, which strict
    # validation refuses before comparing (the defect 2.0.0 fixed).
    command = ["diff", str(old), str(new), "--check", "--validation", "loose"]
    return subprocess.Popen(
        [*optic, *command, "--standard", str(standard)],
        cwd=ROOT,
        env={**os.environ, **OPTIC_ENV},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish_optic(process: subprocess.Popen[str], old: str, new: str) -> OpticDiff:
    try:
        output, _ = process.communicate(timeout=1100)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    diff = OpticDiff(old, new, process.returncode, output)
    # A run that compared says how many operations changed and, when some did, how many
    # checks passed; one that did not (a crash, a file it could not read, rules that did
    # not run) is no verdict either way, and neither is a failure without a failed check.
    compared = re.search(r"^Operations: (?P<no>No operations changed)?", output, re.MULTILINE)
    checks = re.search(r"Checks: \d+/(?P<total>\d+) passed", output)
    checked = compared is not None and (compared["no"] or (checks and int(checks["total"])))
    if not checked or (diff.returncode != 0 and not diff.findings):
        raise AssertionError(f"optic diff {old} {new} failed ({diff.returncode}):\n{output}")
    return diff


def as_json(contract: dict[str, Any], path: Path) -> Path:
    # Optic reads JSON faster than YAML: a quarter of its time goes on parsing YAML here.
    path.write_text(json.dumps(contract, indent=1), encoding="utf-8")
    return path


def _json_body_schema(op: dict[str, Any]) -> str | None:
    """The component schema an operation's JSON request body is, if it is one."""
    media = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    ref = media.get("schema", {}).get("$ref", "")
    prefix = "#/components/schemas/"
    return ref.removeprefix(prefix) if ref.startswith(prefix) else None


def probe_pair(contract: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str, str]:
    """Two cuts of `contract` for Optic to compare, and the changes between them, described.

    Both are `contract` with only the two paths that the probe changes (Optic's time
    grows with the operations: minutes for all of them), components and all. The second
    has the last operation removed, and a required property added to the first JSON
    request body that is a component schema with properties.
    """
    *_, (method, path, _) = operations(contract)
    schemas = contract["components"]["schemas"]
    body_method, body_path, name = next(
        (m, p, name)
        for m, p, op in operations(contract)
        if p != path and (name := _json_body_schema(op)) and "properties" in schemas[name]
    )
    before = {**contract, "paths": {p: contract["paths"][p] for p in (body_path, path)}}
    after = copy.deepcopy(before)
    del after["paths"][path][method]
    changed = after["components"]["schemas"][name]
    changed["properties"]["contract_probe"] = {"type": "string", "maxLength": 8}
    changed["required"] = [*changed.get("required", []), "contract_probe"]
    removed = f"{method.upper()} {path}"
    return before, after, removed, f"{body_method.upper()} {body_path} ({name})"


@dataclass(frozen=True)
class Runs:
    release: OpticDiff  # the last release against openapi.yaml
    probe: OpticDiff  # a cut of openapi.yaml against a copy of it with two breaking changes
    removed: str
    required_in: str


@pytest.fixture(scope="module")
def runs(optic: list[str], tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """Both of Optic's runs, side by side (each takes minutes)."""
    workdir = tmp_path_factory.mktemp("contract-versions")
    version, path = last_release()
    current = load(CONTRACT)
    before, after, removed, required_in = probe_pair(current)
    released_json = as_json(load(path), workdir / f"released-{version.text}.json")
    current_json = as_json(current, workdir / "openapi.json")
    before_json = as_json(before, workdir / "probe-before.json")
    after_json = as_json(after, workdir / "probe-after.json")
    standard = workdir / "optic.dev.yml"
    standard.write_text(STANDARD, encoding="utf-8")
    release = start_optic(optic, released_json, current_json, standard)
    probing = start_optic(optic, before_json, after_json, standard)
    try:
        release_diff = finish_optic(release, f"contracts/{path.name}", "openapi.yaml")
        probe_diff = finish_optic(probing, "a cut of openapi.yaml", "its probe copy")
    finally:
        for process in (release, probing):
            if process.poll() is None:
                process.kill()
                process.communicate()
    return Runs(release_diff, probe_diff, removed, required_in)


# --- the version and the changelog -----------------------------------------------------


def test_info_version_is_a_semantic_version() -> None:
    Version.parse(load(CONTRACT)["info"]["version"])


def test_released_contracts_carry_their_version_and_a_dated_changelog_section() -> None:
    sections = changelog_sections()
    for version, path in released_contracts():
        assert load(path)["info"]["version"] == version.text, path
        assert sections.get(version.text) not in (None, "Unreleased"), (
            f"CHANGELOG.md has no dated section for released {version.text}"
        )


def test_info_version_is_not_below_the_last_release() -> None:
    released, path = last_release()
    current = Version.parse(load(CONTRACT)["info"]["version"])
    assert current.precedence >= released.precedence, (current.text, released.text)
    if current.precedence == released.precedence:
        # a released contract never changes: a change is a new version
        assert load(CONTRACT) == load(path), f"openapi.yaml changed, still {current.text}"


def test_changelog_has_a_section_for_info_version() -> None:
    version = load(CONTRACT)["info"]["version"]
    assert version in changelog_sections(), f"CHANGELOG.md has no '## [{version}]' section"


# --- breaking changes --------------------------------------------------------------------


def test_no_breaking_change_since_the_last_release_unless_the_major_version_moved(
    runs: Runs,
) -> None:
    released_version, path = last_release()
    current = load(CONTRACT)
    breaking = runs.release.breaking + names_gone(load(path), current)
    problems = version_problems(
        released_version, Version.parse(current["info"]["version"]), breaking
    )
    assert not problems, "\n".join(problems)


def test_optic_reports_an_operation_removed_and_a_required_request_property_added(
    runs: Runs,
) -> None:
    # The check can fail: Optic, run as above, calls both changes of the probe breaking,
    # and they would refuse a probe that kept openapi.yaml's version.
    assert runs.probe.returncode != 0, runs.probe.output
    rules = {finding.partition("]")[0].lstrip("[") for finding in runs.probe.breaking}
    assert "prevent operation removal" in rules, (runs.removed, runs.probe.output)
    assert f"{runs.removed}: removed" in runs.probe.output
    assert any(
        "required request property 'contract_probe'" in finding for finding in runs.probe.breaking
    ), (runs.required_in, runs.probe.output)
    version = Version.parse(load(CONTRACT)["info"]["version"])
    assert version_problems(version, version, runs.probe.breaking)
    next_major = Version.parse(f"{version.major + 1}.0.0")
    assert not version_problems(version, next_major, runs.probe.breaking)


def test_names_gone_reports_a_renamed_operation_and_a_removed_model() -> None:
    current = load(CONTRACT)
    renamed = copy.deepcopy(current)
    method, path, op = next(operations(renamed))
    op["operationId"] += "Renamed"
    model = next(iter(renamed["components"]["schemas"]))
    del renamed["components"]["schemas"][model]
    assert names_gone(current, current) == []
    gone = names_gone(current, renamed)
    assert len(gone) == 2, gone
    assert gone[0].startswith(f"{method.upper()} {path}: operationId"), gone
    assert gone[1] == f"components.schemas.{model} is gone (a generated model)", gone


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0.0", "2.0.0"),
        ("1.9.0", "1.10.0"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.2", "1.0.0-alpha.10"),
        ("1.0.0-2", "1.0.0-alpha"),
    ],
)
def test_versions_compare_as_semver_says(lower: str, higher: str) -> None:
    assert Version.parse(lower).precedence < Version.parse(higher).precedence


@pytest.mark.parametrize("text", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0-01"])
def test_versions_that_are_not_semantic_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a semantic version"):
        Version.parse(text)
