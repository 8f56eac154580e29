"""Upload bodies read as they arrive: the raw body, or the `file` part of a
multipart/form-data body, parsed incrementally so that no upload is held whole.

The contract names one type for uploads, raw `application/octet-stream`, the one
every generated client sends; a raw body of another type is kept with that type, and
a multipart body is still read for clients written before the contract named one."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from kiln.core.problems import FieldError, validation_failed

FILE_FIELD = "file"
# type/subtype, each an RFC 9110 token: what a Content-Type may be, and so be stored as.
MEDIA_TYPE = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]+/[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _missing_file() -> Exception:
    return validation_failed(
        [FieldError("required", "A multipart upload needs a `file` part.", pointer="/file")]
    )


class UploadBody:
    """What an upload request carries. `open()` first; then iterate for the bytes."""

    def __init__(self, receive: Receive, content_type: str | None) -> None:
        self._receive = receive
        media, options = parse_options_header(content_type or "application/octet-stream")
        self.multipart = media == b"multipart/form-data"
        self.content_type = media.decode("latin-1") or "application/octet-stream"
        self.filename: str | None = None
        self._boundary = options.get(b"boundary")
        self._ready: list[bytes] = []  # file bytes parsed but not yet handed out
        self._parser: MultipartParser | None = None
        self._in_file = self._file_done = self._headers_done = False
        self._header_field = b""
        self._headers: dict[bytes, bytes] = {}
        self._finished = False
        self._bad_type = False

    async def _next_message(self) -> bytes | None:
        """The next piece of the request body, None at its end."""
        if self._finished:
            return None
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        if not message.get("more_body", False):
            self._finished = True
        body: bytes = message.get("body", b"")
        return body

    async def open(self) -> None:
        """For multipart bodies, read up to the file part so its name and type are known."""
        if not self.multipart:
            return
        if not self._boundary:
            raise _missing_file()
        self._parser = MultipartParser(
            self._boundary,
            {
                "on_part_begin": self._part_begins,
                "on_header_field": self._header_name,
                "on_header_value": self._header_value,
                "on_header_end": self._header_ends,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_ends,
            },
        )
        while not self._in_file and not self._file_done:
            if not await self._feed():
                raise _missing_file()
        if self._bad_type:
            raise validation_failed(
                [
                    FieldError(
                        "pattern",
                        "The file part's Content-Type is not a media type (type/subtype).",
                        pointer="/file",
                    )
                ]
            )

    async def _feed(self) -> bool:
        """Parse one more piece of the body; False at the end of it."""
        chunk = await self._next_message()
        if chunk is None:
            return False
        assert self._parser is not None
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise _missing_file() from None
        return True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if not self.multipart:
            while (chunk := await self._next_message()) is not None:
                if chunk:
                    yield chunk
            return
        while True:
            while self._ready:
                yield self._ready.pop(0)
            if self._file_done:
                return
            if not await self._feed():
                raise _missing_file()

    # python-multipart callbacks

    def _part_begins(self) -> None:
        self._headers = {}

    def _header_name(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        field = self._header_field.lower()
        self._headers[field] = self._headers.get(field, b"") + data[start:end]

    def _header_ends(self) -> None:
        self._header_field = b""

    def _headers_finished(self) -> None:
        if self._file_done or self._in_file:
            return
        _, disposition = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition.get(b"name") == FILE_FIELD.encode():
            self._in_file = True
            filename = disposition.get(b"filename")
            self.filename = filename.decode("utf-8", "replace") if filename else None
            media, _ = parse_options_header(self._headers.get(b"content-type", b""))
            if media and not MEDIA_TYPE.fullmatch(media):
                self._bad_type = True
            self.content_type = media.decode("latin-1") or "application/octet-stream"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self._ready.append(data[start:end])

    def _part_ends(self) -> None:
        if self._in_file:
            self._in_file = False
            self._file_done = True
