"""Serving: uvicorn, with Kiln's connection handling (`kiln.http.connections`), in front
of the Kiln app; and how the server logs."""

from __future__ import annotations

import logging
import sys

import uvicorn

from kiln.app import Kiln
from kiln.core.config import Settings
from kiln.http.connections import GuardedHttp, HttpsPortConfig
from kiln.tls import ensure_self_signed


def configure_logging(level: str) -> None:
    """Access lines are JSON objects on their own; everything else is plain text."""
    plain = logging.StreamHandler(sys.stderr)
    plain.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    raw = logging.StreamHandler(sys.stderr)
    raw.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [plain]
    root.setLevel(level.upper())
    access = logging.getLogger("kiln.access")
    access.handlers[:] = [raw]
    access.propagate = False
    # connexion narrates every routine 4xx at INFO and WARNING; our access line says enough.
    logging.getLogger("connexion").setLevel(logging.ERROR)


def uvicorn_config(app: Kiln, settings: Settings) -> uvicorn.Config:
    tls: dict[str, str] = {}
    if settings.tls:
        if settings.cert and settings.key:
            cert, key = settings.cert, settings.key
        else:
            cert, key = ensure_self_signed(settings.data_dir, settings.host)
        tls = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    trusted = settings.trusted_proxies
    return HttpsPortConfig(
        app,
        max_header_size=settings.max_header_size,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        http=GuardedHttp,
        host=settings.host,
        port=settings.port,
        # X-Forwarded-* only from the proxies named; uvicorn would otherwise trust 127.0.0.1.
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        access_log=False,
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=30,
        **tls,
    )
