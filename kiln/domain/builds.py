"""Build submission: a manifest checked against what the submitter may use, turned
into a queued build with its jobs and everything it was given to run with.

Used by `POST /builds` and by the cron scheduler, and (without writing) to check a
cron job's manifest, so all three refuse the same manifests the same way.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import text
from sqlmodel import col, select

from kiln.core.config import Settings
from kiln.core.principal import Principal
from kiln.core.problems import FieldError, Problem
from kiln.domain import access, build_targets, manifest, namespaces, resources
from kiln.domain.manifest import Manifest, Placement
from kiln.store.db import session, utcnow
from models import (
    Build,
    BuildKey,
    BuildObject,
    BuildTag,
    BuildVariable,
    Job,
    Namespace,
    Owned,
    SshKey,
    StoredObject,
    User,
    Variable,
    owner_key,
)

IMPLEMENTED_DRIVERS = {"local", "docker", "ssh"}
TERMINAL = ("passed", "passed_with_failures", "failed", "killed", "timed_out")
REASON_LENGTH = 64  # of the builds.reason column, and in the contract

T = TypeVar("T", bound=Owned)


@dataclass(frozen=True)
class Checked:
    """A manifest that passed every check, and what it resolved to."""

    manifest: Manifest
    namespace_id: int | None
    timeout_seconds: int
    objects: list[tuple[Placement, StoredObject]]
    keys: list[SshKey]


def check(
    text_: str,
    principal: Principal,
    settings: Settings,
    *,
    default_namespace_id: int | None = None,
    create_namespaces: bool = True,
    root: str = "/manifest",
) -> Checked:
    """400 for schema problems, 422 for what the submitter cannot use, 501 for a driver
    this deployment does not run."""
    parsed = manifest.parse(text_, root)
    driver = parsed.driver.type
    if driver not in settings.enabled_drivers & IMPLEMENTED_DRIVERS:
        raise Problem("driver_not_enabled", f"This server does not run the {driver} driver.")
    namespace_id = default_namespace_id
    if parsed.namespace is not None:
        namespace_id = _namespace(parsed.namespace, principal, create_namespaces, root)
    try:
        resources.placement(principal, namespace_id)
    except Problem as problem:
        if problem.type.code != "not_found":
            raise
        detail = f"No namespace {namespace_id} that you can see."
        raise _refused(f"{root}/namespace", detail) from None
    errors: list[FieldError] = []
    timeout = _timeout(parsed, settings, root, errors)
    objects = []
    for i, placement in enumerate(manifest.placements(parsed)):
        found = _named(StoredObject, StoredObject.name, placement.name, principal, namespace_id)
        if found is None:
            errors.append(_missing(f"{root}/objects/{i}", f"No object {placement.name}."))
        else:
            objects.append((placement, found))
    keys = []
    wanted = [(f"{root}/keys/{i}", name) for i, name in enumerate(parsed.keys)]
    if parsed.driver.key is not None and parsed.driver.key not in parsed.keys:
        wanted.append((f"{root}/driver/key", parsed.driver.key))  # to log in with, not for jobs
    for pointer, name in wanted:
        key = _named(SshKey, SshKey.name, name, principal, namespace_id)
        if key is None:
            errors.append(_missing(pointer, f"No SSH key {name}."))
        else:
            keys.append(key)
    errors += _unreachable(parsed, settings, root)
    if errors:
        raise Problem("manifest_refused", _summary(errors), errors=errors)
    return Checked(parsed, namespace_id, timeout, objects, keys)


def submit(
    checked: Checked,
    principal: Principal,
    *,
    source: str,
    trigger: str,
    comment: str | None = None,
    tags: Sequence[str] = (),
    cron_job_id: int | None = None,
    cron_due_at: dt.datetime | None = None,
) -> Build:
    """Queue the build `checked` describes, with its jobs, tags and what it was given."""
    assert principal.user_id is not None
    place = resources.placement(principal, checked.namespace_id)
    parsed = checked.manifest
    build = Build(
        number=next_number(place["owner_key"]),
        manifest=source,
        comment=comment,
        trigger=trigger,
        driver=parsed.driver.type,
        timeout_seconds=checked.timeout_seconds,
        submitter_id=principal.user_id,
        cron_job_id=cron_job_id,
        cron_due_at=cron_due_at,
        **place,
    )
    db = session()
    db.add(build)
    db.flush()
    assert build.id is not None
    for position, (spec, name) in enumerate(zip(parsed.jobs, parsed.job_names(), strict=True)):
        artifacts = [{"path": a.path, "name": a.name} for a in manifest.artifact_paths(spec)]
        db.add(
            Job(
                build_id=build.id,
                position=position,
                stage=spec.stage,
                name=name,
                commands=json.dumps(spec.commands),
                artifacts=json.dumps(artifacts),
            )
        )
    for tag in dict.fromkeys(tags):
        db.add(BuildTag(build_id=build.id, name=tag))
    for placement, stored in checked.objects:
        db.add(
            BuildObject(
                build_id=build.id,
                object_id=stored.id,
                name=stored.name,
                destination=placement.destination,
                size=stored.size,
                sha256=stored.sha256,
                storage_key=stored.storage_key,
            )
        )
    for variable in _variables(principal, checked.namespace_id):
        db.add(
            BuildVariable(
                build_id=build.id,
                variable_id=variable.id,
                key=variable.key,
                value=variable.value,
                masked=variable.masked,
            )
        )
    for key in checked.keys:
        db.add(
            BuildKey(
                build_id=build.id,
                key_id=key.id,
                name=key.name,
                fingerprint=key.fingerprint,
                private_key=key.private_key,
                config=key.config,
            )
        )
    db.flush()
    return build


def _unreachable(parsed: Manifest, settings: Settings, root: str) -> list[FieldError]:
    """Sources and hosts this server does not let builds reach (kiln.domain.build_targets)."""
    errors = []
    for i, source in enumerate(manifest.sources(parsed)):
        said = build_targets.source_refusal(
            source.url,
            allow_local=settings.sources_allow_local,
            allow_private=settings.builds_allow_private,
        )
        if said is not None:
            errors.append(FieldError("not_allowed", said, pointer=f"{root}/sources/{i}"))
    if parsed.driver.address is not None:
        said = build_targets.ssh_refusal(
            parsed.driver.address, allow_private=settings.builds_allow_private
        )
        if said is not None:
            errors.append(FieldError("not_allowed", said, pointer=f"{root}/driver/address"))
    return errors


def _refused(pointer: str, detail: str) -> Problem:
    return Problem("manifest_refused", detail, errors=[_missing(pointer, detail)])


def _missing(pointer: str, detail: str) -> FieldError:
    return FieldError("not_found", detail, pointer=pointer)


def _summary(errors: list[FieldError]) -> str:
    if len(errors) == 1:
        return errors[0].detail
    return f"{len(errors)} things the manifest names cannot be used."


def _timeout(parsed: Manifest, settings: Settings, root: str, errors: list[FieldError]) -> int:
    longest = manifest.seconds(settings.max_build_timeout)
    if parsed.timeout is None:
        return min(manifest.seconds(settings.build_timeout), longest)
    asked = manifest.seconds(parsed.timeout)
    if not 0 < asked <= longest:
        errors.append(
            FieldError(
                "out_of_range",
                f"The timeout must be more than 0 and at most {settings.max_build_timeout}.",
                pointer=f"{root}/timeout",
            )
        )
    return asked


def _namespace(path: str, principal: Principal, create: bool, root: str) -> int | None:
    """The namespace a manifest names: a path the submitter can see, or one of its own
    (`project/child` is `<submitter>/project/child`), made on the fly if missing."""
    found = _by_path(path, principal)
    if found is not None:
        return found
    username = principal.username or ""
    first = path.split("/", 1)[0]
    if first != username and session().exec(select(User.id).where(User.username == first)).first():
        # Another user's path: theirs to make, not ours.
        raise _refused(f"{root}/namespace", f"No namespace {path} that you can write to.")
    own = path if path.startswith(f"{username}/") else f"{username}/{path}"
    found = _by_path(own, principal)
    if found is not None:
        return found
    if not create:  # checking only: submitting will make it
        return None
    parent_id: int | None = None
    segments = own.split("/")[1:]
    for depth in range(1, len(segments) + 1):
        prefix = "/".join([username, *segments[:depth]])
        existing = _by_path(prefix, principal)
        if existing is None:
            created, _ = namespaces.create(principal, name=segments[depth - 1], parent_id=parent_id)
            existing = created.id
        parent_id = existing
    return parent_id


def _by_path(path: str, principal: Principal) -> int | None:
    query = select(Namespace.id).where(Namespace.path == path, access.readable(principal))
    found: int | None = session().exec(query, params=access.caller_params(principal)).one_or_none()
    return found


def _named(
    model: type[T], column: Any, name: str, principal: Principal, namespace_id: int | None
) -> T | None:
    """The resource with this name where the build lives; for a namespace's build, the
    submitter's own resource of that name when the namespace has none."""
    owners = [owner_key(None, namespace_id)] if namespace_id is not None else []
    if not principal.is_narrowed:
        owners.append(owner_key(principal.user_id, None))
    rows = (
        session().exec(select(model).where(column == name, col(model.owner_key).in_(owners))).all()
    )
    return min(rows, key=lambda r: owners.index(r.owner_key), default=None)


def _variables(principal: Principal, namespace_id: int | None) -> list[Variable]:
    """The submitter's own variables, overridden by the namespace's (namespace wins)."""
    owners = [] if principal.is_narrowed else [owner_key(principal.user_id, None)]
    if namespace_id is not None:
        owners.append(owner_key(None, namespace_id))
    rows = session().exec(select(Variable).where(col(Variable.owner_key).in_(owners))).all()
    chosen: dict[str, Variable] = {}
    for variable in sorted(rows, key=lambda v: owners.index(v.owner_key)):
        chosen[variable.key] = variable
    return list(chosen.values())


_NEXT_NUMBER = text(
    "INSERT INTO build_counters (owner_key, last_number) VALUES (:owner, 1) "
    "ON CONFLICT (owner_key) DO UPDATE SET last_number = build_counters.last_number + 1 "
    "RETURNING last_number"
)


def next_number(owner: str) -> int:
    """The owner's next build number; the upsert's row lock orders concurrent submits."""
    number: int = session().execute(_NEXT_NUMBER, {"owner": owner}).scalar_one()
    return number


def because(code: str, detail: str | None = None) -> str:
    """Why a build ended as it did: a stable code, then for people `: detail`, cut to
    fit the column."""
    if not detail:
        return code
    said = f"{code}: {' '.join(detail.split())}"
    return said if len(said) <= REASON_LENGTH else said[: REASON_LENGTH - 3] + "..."


def job_failed(name: str, exit_code: int | None) -> str:
    """`job_failed: unit exited with code 3`."""
    if exit_code is None:
        return because("job_failed", f"{name} failed")
    return because("job_failed", f"{name} exited with code {exit_code}")


def finish_unstarted(build: Build, status: str, reason: str | None = None) -> None:
    """End a build and its jobs that have not finished (a kill, a lost worker)."""
    now = utcnow()
    build.status, build.reason, build.finished_at = status, reason, now
    build.lease_expires_at = None
    jobs = session().exec(select(Job).where(Job.build_id == build.id))
    for job in jobs:
        if job.status in ("queued", "running"):
            job.status = status if job.status == "running" or status == "killed" else "skipped"
            job.finished_at = now
