"""Build manifests: YAML read safely (no aliases, so no expansion bombs) into pydantic
models. Every schema problem is reported at once, each with a JSON pointer into the
manifest (`/manifest/jobs/0/stage`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic import ValidationError as PydanticError
from pydantic_core import PydanticCustomError

from kiln.core.problems import FieldError, validation_failed

MAX_BYTES = 64 * 1024
MAX_DEPTH = 32  # collections in collections; a real manifest needs 4
ARROW = "=>"


def _no_nul(text: str) -> str:
    # YAML's "\0" escape makes a NUL, which would end a command early (`echo a\0b` runs
    # `echo a`) and which PostgreSQL cannot store: refused as in any string of a request.
    if "\x00" in text:
        raise PydanticCustomError("string_nul", "String should not contain NUL (U+0000)")
    return text


NoNul = AfterValidator(_no_nul)
Text = Annotated[str, StringConstraints(min_length=1, max_length=1000), NoNul]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")]
Command = Annotated[str, StringConstraints(min_length=1, max_length=10_000), NoNul]
EnvEntry = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}=", max_length=10_000), NoNul
]
Duration = Annotated[str, StringConstraints(pattern=r"^(\d+[dhms])+$", max_length=32)]
NamespacePath = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,100}(/[A-Za-z0-9_-]{1,100}){0,20}$")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Image = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")]
AbsolutePath = Annotated[str, StringConstraints(pattern=r"^/[A-Za-z0-9._/-]{0,254}$")]
Address = Annotated[
    str, StringConstraints(pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(:\d{1,5})?$")
]
RemoteUser = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")]
HostKey = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9@.-]{1,64} [A-Za-z0-9+/]{1,8192}={0,3}( .{0,200})?$"),
    NoNul,
]

# Which `driver:` fields each type takes, and which of them it needs.
DRIVER_FIELDS: dict[str, tuple[set[str], set[str]]] = {
    "local": (set(), set()),
    "docker": ({"image", "workspace"}, {"image"}),
    "qemu": ({"image", "memory", "cpus"}, {"image"}),
    "ssh": ({"address", "user", "key", "host_key"}, {"address", "user", "key", "host_key"}),
}


class DriverSpec(_Strict):
    type: Literal["local", "docker", "qemu", "ssh"]
    image: Image | None = None
    workspace: AbsolutePath | None = None
    address: Address | None = None
    user: RemoteUser | None = None
    key: Name | None = None
    host_key: HostKey | None = None
    memory: Annotated[int, Field(ge=64, le=1024 * 1024)] | None = None
    cpus: Annotated[int, Field(ge=1, le=64)] | None = None


class JobSpec(_Strict):
    stage: Name
    name: Name | None = None
    commands: list[Command] = Field(min_length=1, max_length=100)
    artifacts: list[Text] = Field(default_factory=list, max_length=100)


class Manifest(_Strict):
    namespace: NamespacePath | None = None
    driver: DriverSpec
    timeout: Duration | None = None
    env: list[EnvEntry] = Field(default_factory=list, max_length=200)
    objects: list[Text] = Field(default_factory=list, max_length=100)
    sources: list[Text] = Field(default_factory=list, max_length=20)
    keys: list[Name] = Field(default_factory=list, max_length=20)
    stages: list[Name] = Field(min_length=1, max_length=20)
    allow_failures: list[Name] = Field(default_factory=list, max_length=20)
    jobs: list[JobSpec] = Field(min_length=1, max_length=100)

    def job_names(self) -> list[str]:
        """Each job's name: its own, or `<stage>.<n>` counting within the stage."""
        counts: dict[str, int] = {}
        names = []
        for job in self.jobs:
            counts[job.stage] = counts.get(job.stage, 0) + 1
            names.append(job.name or f"{job.stage}.{counts[job.stage]}")
        return names

    def environment(self) -> dict[str, str]:
        return dict(entry.split("=", 1) for entry in self.env)


@dataclass(frozen=True)
class Placement:
    """`name [=> destination]`: an object and where it goes."""

    name: str
    destination: str


@dataclass(frozen=True)
class Source:
    """`url [ref] [=> directory]`."""

    url: str
    ref: str | None
    directory: str | None


@dataclass(frozen=True)
class ArtifactPath:
    """`path [=> name]`."""

    path: str
    name: str


def placements(manifest: Manifest) -> list[Placement]:
    return [_placement(entry) for entry in manifest.objects]


def sources(manifest: Manifest) -> list[Source]:
    return [_source(entry) for entry in manifest.sources]


def artifact_paths(job: JobSpec) -> list[ArtifactPath]:
    return [_artifact(entry) for entry in job.artifacts]


def _split(entry: str) -> tuple[str, str | None]:
    left, arrow, right = entry.partition(ARROW)
    return left.strip(), (right.strip() if arrow else None)


def _placement(entry: str) -> Placement:
    name, destination = _split(entry)
    return Placement(name, destination or name)


def _source(entry: str) -> Source:
    spec, directory = _split(entry)
    url, _, ref = spec.partition(" ")
    return Source(url, ref.strip() or None, directory)


def _artifact(entry: str) -> ArtifactPath:
    path, name = _split(entry)
    return ArtifactPath(path, name or path.rstrip("/").rsplit("/", 1)[-1])


def seconds(duration: str) -> int:
    """`1h30m` in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([dhms])", duration))


class _TooDeep(yaml.MarkedYAMLError):
    pass


class _NoAliasLoader(yaml.SafeLoader):
    def fetch_more_tokens(self) -> None:
        super().fetch_more_tokens()
        # Counted as the scanner goes, before anything recursive (the composer) sees the
        # document and before the scanner's look-ahead, which slows with each level, runs
        # far: `[[[[...` is refused after MAX_DEPTH brackets, whatever follows them.
        if self.flow_level + len(self.indents) > MAX_DEPTH:
            raise _TooDeep(problem_mark=self.get_mark())

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.MarkedYAMLError(
                problem="aliases are not allowed", problem_mark=event.start_mark
            )
        return super().compose_node(parent, index)


def _at(mark: Any) -> str:
    return "" if mark is None else f" at line {mark.line + 1} column {mark.column + 1}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's whole message on one line, each place as `at line L column C` (1-based),
    without the quoted source lines it would print under them."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return str(exc)
    parts = []
    if exc.context is not None:
        # PyYAML too names the place once when context and problem are at the same one.
        where = _at(exc.context_mark)
        parts.append(exc.context + ("" if where == _at(exc.problem_mark) else where))
    if exc.problem is not None:
        parts.append(exc.problem + _at(exc.problem_mark))
    if exc.note is not None:
        parts.append(exc.note)
    return ": ".join(parts)


def load(text: str, pointer: str = "/manifest") -> dict[str, Any]:
    """The manifest as a mapping, or 400 with a pointer to what is wrong."""

    def refuse(detail: str) -> Exception:
        return validation_failed([FieldError("invalid", detail, pointer=pointer)])

    if len(text.encode()) > MAX_BYTES:
        raise refuse(f"The manifest is over {MAX_BYTES} bytes.")
    try:
        document = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader subclass)
    except _TooDeep as exc:
        detail = f"The manifest nests collections over {MAX_DEPTH} deep{_at(exc.problem_mark)}."
        raise refuse(detail) from None
    except yaml.YAMLError as exc:
        raise refuse(f"The manifest is not YAML: {_yaml_problem(exc)}.") from None
    if not isinstance(document, dict):
        raise refuse("The manifest must be a YAML mapping.")
    return document


def parse(text: str, pointer: str = "/manifest") -> Manifest:
    """The manifest, or 400 listing every schema problem with a pointer into it."""
    document = load(text, pointer)
    try:
        manifest = Manifest.model_validate(document)
    except PydanticError as exc:
        raise validation_failed([_field_error(e, pointer) for e in exc.errors()]) from None
    problems = list(_consistency(manifest, pointer))
    if problems:
        raise validation_failed(problems)
    return manifest


def _consistency(manifest: Manifest, root: str) -> Iterable[FieldError]:
    """What the models alone cannot say: names that must agree with each other."""
    stages = manifest.stages
    for i, stage in enumerate(stages):
        if stage in stages[:i]:
            yield FieldError("duplicate", f"Stage {stage} is listed twice.", f"{root}/stages/{i}")
    for i, stage in enumerate(manifest.allow_failures):
        if stage not in stages:
            yield FieldError(
                "unknown_stage", f"{stage} is not one of stages.", f"{root}/allow_failures/{i}"
            )
    seen: set[str] = set()
    for i, (job, name) in enumerate(zip(manifest.jobs, manifest.job_names(), strict=True)):
        if job.stage not in stages:
            yield FieldError(
                "unknown_stage", f"{job.stage} is not one of stages.", f"{root}/jobs/{i}/stage"
            )
        if name in seen:
            yield FieldError("duplicate", f"Two jobs are named {name}.", f"{root}/jobs/{i}/name")
        seen.add(name)
        for j, artifact in enumerate(artifact_paths(job)):
            if not artifact.path or not artifact.name or "/" in artifact.name:
                yield FieldError(
                    "invalid",
                    "An artifact is `path [=> name]`, the name without `/`.",
                    f"{root}/jobs/{i}/artifacts/{j}",
                )
    for i, placement in enumerate(placements(manifest)):
        if not placement.name or not placement.destination:
            yield FieldError(
                "invalid", "An object is `name [=> destination]`.", f"{root}/objects/{i}"
            )
    for i, source in enumerate(sources(manifest)):
        if not source.url or (source.directory is not None and not source.directory):
            yield FieldError(
                "invalid", "A source is `url [ref] [=> directory]`.", f"{root}/sources/{i}"
            )
    yield from _driver_fields(manifest.driver, f"{root}/driver")
    for i, placement in enumerate(placements(manifest)):
        if placement.destination and workspace_relative(placement.destination) is None:
            yield FieldError(
                "outside_workspace",
                f"{placement.destination} is outside the workspace.",
                f"{root}/objects/{i}",
            )


def _driver_fields(driver: DriverSpec, root: str) -> Iterable[FieldError]:
    allowed, required = DRIVER_FIELDS[driver.type]
    given = {name for name in driver.model_fields_set if name != "type"}
    for name in sorted(required - given):
        yield FieldError("required", f"The {driver.type} driver needs {name}.", f"{root}/{name}")
    for name in sorted(given - allowed):
        yield FieldError(
            "unknown_field", f"The {driver.type} driver takes no {name}.", f"{root}/{name}"
        )


def workspace_relative(destination: str) -> str | None:
    """Where an object placed at `destination` goes, relative to the workspace: an
    absolute path is taken from the workspace's top. None if it would leave it (`..`)."""
    parts = [part for part in destination.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


_CODES = {
    "missing": "required",
    "extra_forbidden": "unknown_field",
    "literal_error": "enum",
    "string_pattern_mismatch": "pattern",
    "string_nul": "pattern",
    "string_too_long": "too_long",
    "string_too_short": "too_short",
    "too_long": "too_many_items",
    "too_short": "too_few_items",
}


def _field_error(error: Any, root: str) -> FieldError:
    where = root + "".join(f"/{part}" for part in error["loc"])
    kind = error["type"]
    code = _CODES.get(kind, "type" if kind.endswith("_type") else "invalid")
    return FieldError(code, f"{where.removeprefix('/')}: {error['msg']}.", where)
