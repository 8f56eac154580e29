"""Baselines for bench/upload.py: bare Starlette endpoints with nothing around them.

* `POST /upload` streams the request body to a file, and `GET /upload` serves that
  file back: the targets' baseline.
* `POST /digested` streams the body through Kiln's storage layer (the same
  temporary file, MD5, SHA-256 and rename as an object upload), to tell what the
  digests cost apart from what Kiln's HTTP layers cost.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from kiln.store.storage import FileSystemStorage

ROOT = Path(os.environ["BARE_UPLOAD_DIR"])
STORE = ROOT / "upload.bin"
storage = FileSystemStorage(ROOT / "digested")


async def upload(request: Request) -> Response:
    size = 0
    with STORE.open("wb") as file:
        async for chunk in request.stream():
            file.write(chunk)
            size += len(chunk)
    return JSONResponse({"size": size}, status_code=201)


async def download(request: Request) -> Response:
    return FileResponse(STORE, media_type="application/octet-stream")


async def digested(request: Request) -> Response:
    target = storage.upload(limit=1 << 40)
    async for chunk in request.stream():
        await target.write(chunk)
    stored = await target.commit()
    storage.delete(stored.key)
    return JSONResponse({"size": stored.size, "md5": stored.md5}, status_code=201)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/upload", upload, methods=["POST"]),
        Route("/upload", download, methods=["GET"]),
        Route("/digested", digested, methods=["POST"]),
        Route("/healthz", health),
    ]
)
