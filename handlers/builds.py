"""Builds: submitted manifests, run by workers, with their jobs, output, artifacts and tags."""

from __future__ import annotations

from typing import Any

from connexion.lifecycle import ConnexionResponse
from sqlmodel import col, delete, select
from sqlmodel.sql.expression import SelectOfScalar

from kiln import builds, events, hal, output, resources
from kiln.access import caller_params
from kiln.auth import current_principal
from kiln.blobs import serve_file
from kiln.build_views import (
    build_view,
    build_views,
    represent_artifact,
    represent_job,
    represent_tag,
)
from kiln.db import after_commit, session
from kiln.operations import current_app, read
from kiln.pagination import paginate
from kiln.problems import Problem, not_found
from models import Artifact, Build, BuildKey, BuildObject, BuildTag, BuildVariable, Job

NOUN = "Build"
MASK = "xxxxxx"


def list_builds(
    limit: int = 25,
    after: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    search: str | None = None,
    namespace_id: int | None = None,
) -> ConnexionResponse:
    principal = current_principal()
    query = resources.listing(
        Build,
        principal,
        members_only=False,
        namespace_id=namespace_id,
        search=search,
        search_column=Build.comment,
    )
    return _page_of_builds(query, limit=limit, after=after, status=status, tag=tag)


def list_namespace_builds(
    id: int,
    limit: int = 25,
    after: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    search: str | None = None,
) -> ConnexionResponse:
    return list_builds(limit, after, status, tag, search, namespace_id=id)


def submit_build(body: dict[str, Any]) -> ConnexionResponse:
    principal, app = current_principal(), current_app()
    checked = builds.check(body["manifest"], principal, app.settings)
    build = builds.submit(
        checked,
        principal,
        source=body["manifest"],
        trigger="manual" if principal.token_id is None else "api",
        comment=body.get("comment"),
        tags=body.get("tags") or (),
    )
    view = build_view(build)
    events.emit(build.namespace_id, "build.submitted", view)
    after_commit(lambda: app.nudge("worker"))
    return hal.accepted(view)


def get_build(id: int) -> ConnexionResponse:
    return hal.resource(build_view(_find(id)))


def kill_build(id: int) -> ConnexionResponse:
    build = _find(id, change=True)
    if build.status in builds.TERMINAL:
        raise Problem("build_finished", f"Build {id} has finished ({build.status}).")
    if build.status == "queued":
        builds.finish_unstarted(build, "killed")
    else:
        build.kill_requested = True
        app = current_app()
        after_commit(lambda: app.nudge(f"kill-{id}"))
    session().flush()
    return hal.accepted(build_view(build))


def list_build_jobs(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    _find(id)
    page = paginate(select(Job).where(Job.build_id == id), Job.id, limit=limit, after=after)
    return hal.collection("jobs", [represent_job(j) for j in page.rows], page.links)


def get_build_job(id: int, job_id: int) -> ConnexionResponse:
    _find(id)
    return hal.resource(represent_job(_job(id, job_id)))


async def get_build_job_output(id: int, job_id: int, follow: bool = False) -> Any:
    def find() -> Job:
        _find(id)
        return _job(id, job_id)

    job = await read(find)
    return output.response(current_app().services, job, follow=follow)


def list_build_artifacts(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    _find(id)
    page = paginate(
        select(Artifact).where(Artifact.build_id == id), Artifact.id, limit=limit, after=after
    )
    return hal.collection("artifacts", [represent_artifact(a) for a in page.rows], page.links)


def get_build_artifact(id: int, artifact_id: int) -> ConnexionResponse:
    _find(id)
    return hal.resource(represent_artifact(_artifact(id, artifact_id)))


async def get_build_artifact_content(id: int, artifact_id: int) -> Any:
    def find() -> Artifact:
        _find(id)
        return _artifact(id, artifact_id)

    artifact = await read(find)
    return serve_file(
        current_app().storage.local_path(artifact.storage_key),
        name=artifact.name,
        size=artifact.size,
        sha256=artifact.sha256,
        noun="artifact",
    )


def list_build_tags(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    _find(id)
    page = paginate(
        select(BuildTag).where(BuildTag.build_id == id), BuildTag.id, limit=limit, after=after
    )
    return hal.collection("tags", [represent_tag(t) for t in page.rows], page.links)


def add_build_tag(id: int, body: dict[str, Any]) -> ConnexionResponse:
    build = _find(id, change=True)
    tag = BuildTag(build_id=id, name=body["name"])
    session().add(tag)
    resources.flush_unique(f"Build {id} is tagged {body['name']} already.")
    events.emit(
        build.namespace_id, "build.tagged", {"tag": body["name"], "build": build_view(build)}
    )
    return hal.created(represent_tag(tag))


def remove_build_tag(id: int, name: str) -> ConnexionResponse:
    _find(id, change=True)
    removed = session().exec(
        delete(BuildTag).where(col(BuildTag.build_id) == id, col(BuildTag.name) == name)
    )
    if removed.rowcount == 0:
        raise Problem("not_found", f"Build {id} has no tag {name}.")
    return hal.no_content()


def list_build_objects(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    _find(id)
    page = paginate(
        select(BuildObject).where(BuildObject.build_id == id),
        BuildObject.id,
        limit=limit,
        after=after,
    )
    items = [
        {
            "id": o.id,
            "object_id": o.object_id,
            "name": o.name,
            "destination": o.destination,
            "size": o.size,
            "sha256": o.sha256,
            "_links": _given_links(id, "objects", o.object_id),
        }
        for o in page.rows
    ]
    return hal.collection("objects", items, page.links)


def list_build_variables(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    _find(id, members_only=True)
    page = paginate(
        select(BuildVariable).where(BuildVariable.build_id == id),
        BuildVariable.id,
        limit=limit,
        after=after,
    )
    secrets = current_app().secrets
    items = [
        {
            "id": v.id,
            "variable_id": v.variable_id,
            "key": v.key,
            "value": MASK if v.masked else secrets.decrypt(v.value),
            "masked": v.masked,
            "_links": _given_links(id, "variables", v.variable_id),
        }
        for v in page.rows
    ]
    return hal.collection("variables", items, page.links)


def list_build_keys(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    _find(id, members_only=True)
    page = paginate(
        select(BuildKey).where(BuildKey.build_id == id), BuildKey.id, limit=limit, after=after
    )
    items = [
        {
            "id": k.id,
            "key_id": k.key_id,
            "name": k.name,
            "fingerprint": k.fingerprint,
            "_links": _given_links(id, "keys", k.key_id),
        }
        for k in page.rows
    ]
    return hal.collection("keys", items, page.links)


def _page_of_builds(
    query: SelectOfScalar[Build],
    *,
    limit: int,
    after: str | None,
    status: str | None = None,
    tag: str | None = None,
) -> ConnexionResponse:
    """A newest-first page of builds, filtered by status and tag."""
    if status is not None:
        query = query.where(Build.status == status)
    if tag is not None:
        query = query.where(
            col(Build.id).in_(select(BuildTag.build_id).where(BuildTag.name == tag))
        )
    page = paginate(
        query,
        Build.id,
        limit=limit,
        after=after,
        params=caller_params(current_principal()),
        newest_first=True,
    )
    return hal.collection("builds", build_views(list(page.rows)), page.links)


def page_of_builds_where(condition: Any, limit: int, after: str | None) -> ConnexionResponse:
    """The builds the caller may see among those matching `condition`, newest first."""
    query = resources.listing(Build, current_principal(), members_only=False).where(condition)
    return _page_of_builds(query, limit=limit, after=after)


def _find(id: int, *, change: bool = False, members_only: bool = False) -> Build:
    principal = current_principal()
    if change:
        return resources.find_for_change(Build, id, principal, members_only=members_only, noun=NOUN)
    return resources.find(Build, id, principal, members_only=members_only, noun=NOUN)


def _job(build_id: int, job_id: int) -> Job:
    job = session().exec(select(Job).where(Job.id == job_id, Job.build_id == build_id)).first()
    if job is None:
        raise not_found("Job", job_id)
    return job


def _artifact(build_id: int, artifact_id: int) -> Artifact:
    artifact = (
        session()
        .exec(select(Artifact).where(Artifact.id == artifact_id, Artifact.build_id == build_id))
        .first()
    )
    if artifact is None:
        raise not_found("Artifact", artifact_id)
    return artifact


def _given_links(build_id: int, plural: str, resource_id: int | None) -> dict[str, Any]:
    links: dict[str, Any] = {"build": hal.link(f"/api/v1/builds/{build_id}")}
    if resource_id is not None:
        links[plural[:-1]] = hal.link(f"/api/v1/{plural}/{resource_id}")
    return links
