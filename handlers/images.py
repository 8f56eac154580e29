"""Images: QCOW2 disk images for the qemu driver, uploaded and served like objects."""

from __future__ import annotations

from typing import Any

from connexion.lifecycle import ConnexionResponse

from kiln.domain import resources
from kiln.http import blobs, hal, pagination
from kiln.http.auth import current_principal
from models import Image

NOUN = "Image"
QCOW2_MAGIC = b"QFI\xfb"


def represent_image(image: Image) -> hal.Body:
    href = f"/api/v1/images/{image.id}"
    return {
        "id": image.id,
        "name": image.name,
        "type": image.content_type,
        "driver": image.driver,
        "size": image.size,
        "md5": image.md5,
        "sha256": image.sha256,
        **resources.owner_fields(image),
        "_links": {
            "self": hal.link(href),
            "content": hal.link(f"{href}/content"),
            **resources.owner_links(image),
        },
    }


KIND = blobs.BlobKind(
    model=Image,
    noun=NOUN,
    limit=lambda settings: settings.max_image_size,
    represent=represent_image,
    magic=QCOW2_MAGIC,
)


def list_images(
    limit: int = 25,
    after: str | None = None,
    namespace_id: int | None = None,
    search: str | None = None,
) -> ConnexionResponse:
    page = pagination.page_of(
        Image,
        current_principal(),
        members_only=False,
        search_column=Image.name,
        namespace_id=namespace_id,
        search=search,
        limit=limit,
        after=after,
    )
    return hal.collection("images", [represent_image(i) for i in page.rows], page)


def list_namespace_images(
    id: int, limit: int = 25, after: str | None = None, search: str | None = None
) -> ConnexionResponse:
    return list_images(limit=limit, after=after, namespace_id=id, search=search)


async def create_image(
    name: str | None = None, namespace_id: int | None = None
) -> ConnexionResponse:
    return await blobs.upload(KIND, name=name, namespace_id=namespace_id)


def get_image(id: int) -> ConnexionResponse:
    return hal.resource(represent_image(blobs.find(KIND, id)))


def update_image(id: int, body: dict[str, Any]) -> ConnexionResponse:
    return hal.resource(represent_image(blobs.rename(KIND, id, body)))


def delete_image(id: int) -> ConnexionResponse:
    blobs.delete(KIND, id)
    return hal.no_content()


async def get_image_content(id: int) -> Any:
    return await blobs.content(KIND, id)
