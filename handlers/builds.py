"""Builds: submitted manifests, run by workers, with their jobs, output, artifacts and tags."""

from __future__ import annotations

from typing import Any, TypeVar

from connexion.lifecycle import ConnexionResponse
from sqlmodel import col, delete, select
from sqlmodel.sql.expression import SelectOfScalar

from handlers.variables import shown_value
from kiln.core.problems import Problem, not_found
from kiln.domain import builds, events, resources
from kiln.domain.access import caller_params
from kiln.domain.build_views import (
    build_view,
    build_views,
    represent_artifact,
    represent_job,
    represent_tag,
)
from kiln.http import hal, output
from kiln.http.auth import current_principal
from kiln.http.blobs import serve_file
from kiln.http.context import current_app
from kiln.http.operations import read
from kiln.http.pagination import Page, paginate
from kiln.store.db import after_commit, session
from models import Artifact, Build, BuildKey, BuildObject, BuildTag, BuildVariable, Job

NOUN = "Build"
T = TypeVar("T")


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
    build.kill_requested = True
    if build.status == "queued":
        builds.finish_unstarted(build, "killed", "killed")
    else:
        app = current_app()
        after_commit(lambda: app.nudge(f"kill-{id}"))
    session().flush()
    return hal.accepted(build_view(build))


def list_build_jobs(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    page = _page_of_build_rows(Job, id, limit, after)
    return hal.collection("jobs", [represent_job(j) for j in page.rows], page)


def get_build_job(id: int, job_id: int) -> ConnexionResponse:
    return hal.resource(represent_job(_of_build(Job, id, job_id, "Job")))


async def get_build_job_output(id: int, job_id: int, follow: bool = False) -> Any:
    job = await read(lambda: _of_build(Job, id, job_id, "Job"))
    return output.response(current_app().services, job, follow=follow)


def list_build_artifacts(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    page = _page_of_build_rows(Artifact, id, limit, after)
    return hal.collection("artifacts", [represent_artifact(a) for a in page.rows], page)


def get_build_artifact(id: int, artifact_id: int) -> ConnexionResponse:
    return hal.resource(represent_artifact(_of_build(Artifact, id, artifact_id, "Artifact")))


async def get_build_artifact_content(id: int, artifact_id: int) -> Any:
    artifact = await read(lambda: _of_build(Artifact, id, artifact_id, "Artifact"))
    return serve_file(
        current_app().storage.local_path(artifact.storage_key),
        name=artifact.name,
        size=artifact.size,
        sha256=artifact.sha256,
        noun="artifact",
    )


def list_build_tags(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    page = _page_of_build_rows(BuildTag, id, limit, after)
    return hal.collection("tags", [represent_tag(t) for t in page.rows], page)


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
    page = _page_of_build_rows(BuildObject, id, limit, after)
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
    return hal.collection("objects", items, page)


def list_build_variables(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    page = _page_of_build_rows(BuildVariable, id, limit, after, members_only=True)
    items = [
        {
            "id": v.id,
            "variable_id": v.variable_id,
            "key": v.key,
            "value": shown_value(v.masked, v.value),
            "masked": v.masked,
            "_links": _given_links(id, "variables", v.variable_id),
        }
        for v in page.rows
    ]
    return hal.collection("variables", items, page)


def list_build_keys(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    page = _page_of_build_rows(BuildKey, id, limit, after, members_only=True)
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
    return hal.collection("keys", items, page)


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
    return hal.collection("builds", build_views(list(page.rows)), page)


def page_of_builds_where(condition: Any, limit: int, after: str | None) -> ConnexionResponse:
    """The builds the caller may see among those matching `condition`, newest first."""
    query = resources.listing(Build, current_principal(), members_only=False).where(condition)
    return _page_of_builds(query, limit=limit, after=after)


def _page_of_build_rows(
    model: Any, id: int, limit: int, after: str | None, *, members_only: bool = False
) -> Page:
    """A page of build `id`'s rows of `model`, once the caller may see the build."""
    _find(id, members_only=members_only)
    query = select(model).where(model.build_id == id)
    return paginate(query, model.id, limit=limit, after=after)


def _find(id: int, *, change: bool = False, members_only: bool = False) -> Build:
    principal = current_principal()
    if change:
        return resources.find_for_change(Build, id, principal, members_only=members_only, noun=NOUN)
    return resources.find(Build, id, principal, members_only=members_only, noun=NOUN)


def _of_build(model: type[T], build_id: int, row_id: int, noun: str) -> T:
    """One of build `build_id`'s rows of `model`, once the caller may see the build."""
    _find(build_id)
    columns: Any = model  # every build row has `id` and `build_id`
    query = select(model).where(columns.id == row_id, columns.build_id == build_id)
    row = session().exec(query).first()
    if row is None:
        raise not_found(noun, row_id)
    return row


def _given_links(build_id: int, plural: str, resource_id: int | None) -> dict[str, Any]:
    links: dict[str, Any] = {"build": hal.link(f"/api/v1/builds/{build_id}")}
    if resource_id is not None:
        links[plural[:-1]] = hal.link(f"/api/v1/{plural}/{resource_id}")
    return links
