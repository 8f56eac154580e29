"""What happens to a connection before the app sees a request.

With TLS on, uvicorn listens on a plain socket and each connection is looked at before
anyone reads from it: one that opens with a TLS handshake gets TLS and uvicorn's HTTP
exactly as `ssl=` would have given it; one that opens with anything else is plain HTTP
sent to the TLS port, and gets `403 https_required` and is closed, as nginx does.

uvicorn's HTTP has no limit of its own on a request's headers nor on how slowly they
and its body may come: GuardedHttp adds them (`431 headers_too_large`, and
disconnection after `header_timeout` or `body_timeout`).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, Literal

import uvicorn
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from kiln.core.problems import Problem, render
from kiln.core.readiness import readable
from kiln.http.asgi import new_request_id, send_problem
from kiln.http.https import SECURITY_HEADERS
from kiln.http.request_log import RequestLogMiddleware

log = logging.getLogger(__name__)
TLS_HANDSHAKE = 0x16  # the content type of the TLS record a ClientHello comes in
BODY_PACE = 1024  # bytes of a request body that must come in each body_timeout
# After a 431, what the client still sends is read and dropped for a moment before the
# connection is closed: closed with unread data, it would be reset, and the reset can
# destroy the 431 before the client has read it.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024
_TLS_PORTS: set[int] = set()
_handing_on: set[asyncio.Task[None]] = set()  # held, or they could be collected mid-way


class HttpsPortConfig(uvicorn.Config):
    """A uvicorn configuration whose TLS port answers plain HTTP with `https_required`,
    with the limits GuardedHttp applies."""

    tls: ssl.SSLContext | None = None
    https_protocol_class: Callable[..., asyncio.Protocol]
    refusing: HttpsPortConfig

    def __init__(
        self,
        app: Any,
        *,
        max_header_size: int,
        header_timeout: float,
        body_timeout: float,
        **options: Any,
    ) -> None:
        super().__init__(app, **options)
        self.max_header_size = max_header_size
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout

    def load(self) -> None:
        super().load()
        if self.ssl is None:
            return
        # uvicorn listens without TLS and HttpsPort starts it per connection.
        self.tls, self.ssl = self.ssl, None
        self.https_protocol_class = self.http_protocol_class
        self.http_protocol_class = HttpsPort
        # Plain-HTTP connections are served by uvicorn too, with an app that only refuses.
        self.refusing = copy.copy(self)
        self.refusing.loaded_app = RequestLogMiddleware(_refuse)
        self.refusing.ws_protocol_class = None
        _TLS_PORTS.add(self.port)
        logging.getLogger("uvicorn.error").addFilter(_STARTED_OVER_TLS)


class HttpsPort(asyncio.Protocol):
    """The first protocol of every connection to the TLS port: it hands the connection
    on to uvicorn's HTTP, over TLS or refusing, once its first byte has come."""

    def __init__(
        self,
        config: HttpsPortConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The transport starts reading as soon as this returns, but the first bytes
        # must stay unread for whoever serves the connection: it goes on over a socket
        # of its own, and this transport is closed (the connection stays open while
        # that socket holds it).
        given = transport.get_extra_info("socket")
        try:
            sock = socket.fromfd(given.fileno(), given.family, given.type, given.proto)
        except OSError:  # out of file descriptors: this connection cannot be served
            transport.close()
            return
        sock.setblocking(False)
        transport.close()
        task = asyncio.get_running_loop().create_task(self._hand_on(sock))
        _handing_on.add(task)
        task.add_done_callback(_handing_on.discard)

    async def _hand_on(self, sock: socket.socket) -> None:
        handed = False
        loop = asyncio.get_running_loop()
        # The first byte, the TLS handshake and the first request's headers all count
        # against one header_timeout.
        deadline = loop.time() + self.config.header_timeout
        try:
            first = await asyncio.wait_for(_peek(sock), self.config.header_timeout)
            if not first:  # closed without a word
                return
            tls = first[0] == TLS_HANDSHAKE
            config = self.config if tls else self.config.refusing
            protocol_class = self.config.https_protocol_class

            def protocol() -> asyncio.Protocol:
                made = protocol_class(
                    config=config, server_state=self.server_state, app_state=self.app_state
                )
                if isinstance(made, GuardedHttp):
                    made.head_deadline = deadline
                return made

            handed = True  # from here on, the transport closes the socket
            if tls:
                await loop.connect_accepted_socket(
                    protocol,
                    sock,
                    ssl=self.config.tls,
                    ssl_handshake_timeout=max(deadline - loop.time(), 0.001),
                )
            else:
                await loop.connect_accepted_socket(protocol, sock)
        except Exception as exc:  # silent for too long, a failed handshake, a client gone
            log.debug("connection ended before its first request: %r", exc)
        finally:
            if not handed:
                sock.close()


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 with the limits it lacks.

    httptools gathers a header's value, however long, before it says anything about it,
    so the bytes of a request's line and headers are counted as they are handed to it:
    past `max_header_size` the request is answered `431 headers_too_large` and nothing
    more of it is parsed. The line and headers must all have come within
    `header_timeout` of the request's first byte (for a connection's first request, of
    the connection being accepted), and while its body is being read each next
    BODY_PACE bytes of it within `body_timeout`; a client slower than that is
    disconnected.
    """

    config: HttpsPortConfig

    def __init__(
        self,
        config: HttpsPortConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.head_deadline: float | None = None  # given by HttpsPort
        self.phase: Literal["head", "body", "idle"] = "head"
        self.head_bytes = 0
        self.paced_from = 0.0  # when the body last made BODY_PACE bytes of progress
        self.paced_bytes = 0
        self.guard: asyncio.TimerHandle | None = None
        self.discarding: int | None = None  # after a 431: bytes still to read and drop

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        deadline = self.head_deadline or self.loop.time() + self.config.header_timeout
        self._guard_at(deadline)

    def connection_lost(self, exc: Exception | None) -> None:
        self._unguard()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.discarding is not None:
            self.discarding -= len(data)
            if self.discarding < 0:
                self.transport.close()
            return
        while data:
            if self.phase == "body":
                piece, data = data, b""
            else:
                room = self.config.max_header_size - self.head_bytes
                if room <= 0:
                    self._headers_too_large()
                    return
                piece, data = data[:room], data[room:]
                self.head_bytes += len(piece)
            super().data_received(piece)
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.phase != "head":  # a later request of the connection
            self.phase = "head"
            self._guard_at(self.loop.time() + self.config.header_timeout)

    def on_headers_complete(self) -> None:
        self.phase, self.head_bytes = "body", 0
        self.paced_from, self.paced_bytes = self.loop.time(), 0
        self._guard_at(self.paced_from + self.config.body_timeout)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.paced_bytes += len(body)
        if self.paced_bytes >= BODY_PACE:
            self.paced_from, self.paced_bytes = self.loop.time(), 0
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.phase, self.head_bytes = "idle", 0
        self._unguard()
        super().on_message_complete()

    def _guard_at(self, when: float) -> None:
        self._unguard()
        self.guard = self.loop.call_at(when, self._check_pace)

    def _unguard(self) -> None:
        if self.guard is not None:
            self.guard.cancel()
            self.guard = None

    def _check_pace(self) -> None:
        self.guard = None
        if self.transport.is_closing() or self.phase == "idle":
            return
        now = self.loop.time()
        if self.phase == "body":
            cycle = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                # Waiting for the app to read on, or for the 100 Continue it sends then.
                self.paced_from, self.paced_bytes = now, 0
            if now < self.paced_from + self.config.body_timeout:
                self._guard_at(self.paced_from + self.config.body_timeout)
                return
        log.debug("closing %s: its request's %s came too slowly", self.client, self.phase)
        self.transport.close()

    def _headers_too_large(self) -> None:
        self._unguard()
        limit = self.config.max_header_size
        problem = Problem(
            "headers_too_large", f"The request line and headers are over {limit} bytes."
        )
        request_id = new_request_id()
        status, headers, body = render(problem, request_id=request_id, instance="")
        lines = [b"HTTP/1.1 %d Request Header Fields Too Large" % status]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in headers.items()]
        lines += [b"content-length: %d" % len(body), b"connection: close"]
        lines += [b"x-request-id: " + request_id.encode()]
        if self.scheme == "https":
            lines += [name + b": " + value for name, value in SECURITY_HEADERS]
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        log.info("refused a request from %s: headers over %d bytes", self.client, limit)
        self.discarding = LINGER_BYTES
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


async def _peek(sock: socket.socket) -> bytes:
    """The connection's first byte once it has come, left unread; none at its end."""
    await readable(sock)
    return sock.recv(1, socket.MSG_PEEK)


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    """Every request of a plain-HTTP connection to the TLS port: 403, then the
    connection is closed."""
    if scope["type"] != "http":
        return

    async def closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), (b"connection", b"close")]
        await send(message)

    await send_problem(scope, closing, Problem("https_required", "Use https:// for every request."))


class _StartedOverTls(logging.Filter):
    """uvicorn names the scheme in its `running on` line after its own TLS, which is off
    on a port where HttpsPort starts TLS."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            str(record.msg).startswith("Uvicorn running on %s://")
            and isinstance(args, tuple)
            and len(args) == 3
            and args[2] in _TLS_PORTS
        ):
            record.args = ("https", *args[1:])
        return True


_STARTED_OVER_TLS = _StartedOverTls()
