"""Objects: files placed into builds, uploaded as a stream and downloaded with Range."""

from __future__ import annotations

from typing import Any

from connexion.lifecycle import ConnexionResponse
from sqlmodel import col, select

from handlers.builds import page_of_builds_where
from kiln.domain import resources
from kiln.http import blobs, hal, pagination
from kiln.http.auth import current_principal
from models import Blob, Build, BuildObject, StoredObject

NOUN = "Object"


def represent_object(obj: Blob) -> hal.Body:
    href = f"/api/v1/objects/{obj.id}"
    return {
        "id": obj.id,
        "name": obj.name,
        "type": obj.content_type,
        "size": obj.size,
        "md5": obj.md5,
        "sha256": obj.sha256,
        **resources.owner_fields(obj),
        "_links": {
            "self": hal.link(href),
            "content": hal.link(f"{href}/content"),
            "builds": hal.link(f"{href}/builds"),
            **resources.owner_links(obj),
        },
    }


KIND = blobs.BlobKind(
    model=StoredObject,
    noun=NOUN,
    limit=lambda settings: settings.max_object_size,
    represent=represent_object,
)


def list_objects(
    limit: int = 25,
    after: str | None = None,
    namespace_id: int | None = None,
    search: str | None = None,
) -> ConnexionResponse:
    page = pagination.page_of(
        StoredObject,
        current_principal(),
        members_only=False,
        search_column=StoredObject.name,
        namespace_id=namespace_id,
        search=search,
        limit=limit,
        after=after,
    )
    return hal.collection("objects", [represent_object(o) for o in page.rows], page)


def list_namespace_objects(
    id: int, limit: int = 25, after: str | None = None, search: str | None = None
) -> ConnexionResponse:
    return list_objects(limit=limit, after=after, namespace_id=id, search=search)


async def create_object(
    name: str | None = None, namespace_id: int | None = None
) -> ConnexionResponse:
    return await blobs.upload(KIND, name=name, namespace_id=namespace_id)


def get_object(id: int) -> ConnexionResponse:
    return hal.resource(represent_object(blobs.find(KIND, id)))


def update_object(id: int, body: dict[str, Any]) -> ConnexionResponse:
    return hal.resource(represent_object(blobs.rename(KIND, id, body)))


def delete_object(id: int) -> ConnexionResponse:
    blobs.delete(KIND, id)
    return hal.no_content()


async def get_object_content(id: int) -> Any:
    return await blobs.content(KIND, id)


def list_object_builds(id: int, limit: int = 25, after: str | None = None) -> ConnexionResponse:
    blobs.find(KIND, id)
    placed = select(BuildObject.build_id).where(BuildObject.object_id == id)
    return page_of_builds_where(col(Build.id).in_(placed), limit, after)
