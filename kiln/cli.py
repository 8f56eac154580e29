"""`kiln`: serve the API, and administer users and tokens offline."""

from __future__ import annotations

import kiln.core.bytecode  # noqa: F401  (first: what is imported after it is compiled once)

# isort: split
import asyncio
import getpass
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console

from kiln.core.config import Settings
from kiln.domain.accounts import create_user, find_user, issue_token, parse_duration
from kiln.domain.bootstrap import ADMIN, first_admin_token
from kiln.store import files, migrate, secrets
from kiln.store.db import Database, session, utcnow
from models import Namespace

app = typer.Typer(
    help="Kiln: a CI service whose HTTP API is the product.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
users = typer.Typer(help="Manage users.", no_args_is_help=True)
tokens = typer.Typer(help="Manage tokens.", no_args_is_help=True)
app.add_typer(users, name="users")
app.add_typer(tokens, name="tokens")
secret_keys = typer.Typer(
    help="Manage the key that encrypts secrets at rest.", no_args_is_help=True
)
app.add_typer(secret_keys, name="secrets")
err = Console(stderr=True)

# Help texts are rich markup: `\\[` is a literal `[`, which rich would otherwise take for
# the start of a tag and drop with what follows.
DataDir = Annotated[
    Path | None,
    typer.Option(
        help="Where the SQLite database, TLS certificate, secrets key, uploads and job output"
        " live. \\[env: KILN_DATA_DIR]",
        show_default="./.kiln",
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        help="The database, such as postgresql+psycopg://user@host/db for PostgreSQL."
        " \\[env: KILN_DATABASE_URL]",
        show_default="SQLite in the data directory",
    ),
]


def _settings(**given: Any) -> Settings:
    """Flags win over KILN_* variables, which win over defaults."""
    return Settings(**{k: v for k, v in given.items() if v is not None})


ADMIN_TOKEN_FILE = "admin-token"  # noqa: S105  (a file name)


def _hand_over_admin_token(settings: Settings, secret: str) -> None:
    """The first admin token goes into a file only Kiln's user can read, and to the
    terminal if there is one: never into a stream that log collectors keep."""
    path = settings.data_dir / ADMIN_TOKEN_FILE
    files.write(path, f"{secret}\n".encode())
    # Plain print: rich would wrap a long path across lines.
    print(
        f"Created the administrator {ADMIN!r}; its token is in {path} (mode 0600).", file=sys.stderr
    )
    if sys.stderr.isatty():
        print(f"The token, shown here this once:\n{secret}", file=sys.stderr, flush=True)


def _prepare(settings: Settings) -> Database:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.resolved_database_url)
    return Database(settings.resolved_database_url)


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Address to listen on. \\[env: KILN_HOST]", show_default="127.0.0.1"),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help="Port to listen on. \\[env: KILN_PORT]", show_default="8443"),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    cert: Annotated[
        Path | None,
        typer.Option(
            help="TLS certificate (PEM), with --key. \\[env: KILN_CERT]",
            show_default="self-signed, in the data directory",
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            help="TLS private key (PEM), with --cert. \\[env: KILN_KEY]",
            show_default="self-signed, in the data directory",
        ),
    ] = None,
    tls: Annotated[
        bool | None,
        typer.Option(
            "--tls/--no-tls",
            help="Speak TLS. --no-tls serves plain HTTP to a TLS-terminating proxy; requests"
            " are still refused unless that proxy is trusted (--forwarded-allow-ips) and sends"
            " X-Forwarded-Proto: https. \\[env: KILN_TLS]",
            show_default="on",
        ),
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            help="Proxies whose X-Forwarded-For and X-Forwarded-Proto headers are trusted,"
            " comma-separated. \\[env: KILN_FORWARDED_ALLOW_IPS]",
            show_default="none",
        ),
    ] = None,
    rate_limit_storage: Annotated[
        str | None,
        typer.Option(
            help="Where rate-limit counters live: memory://, or redis://host:port to share them"
            " between processes. \\[env: KILN_RATE_LIMIT_STORAGE]",
            show_default="memory://",
        ),
    ] = None,
    validate_responses: Annotated[
        bool | None,
        typer.Option(
            help="Check every response against the contract. \\[env: KILN_VALIDATE_RESPONSES]",
            show_default="off",
        ),
    ] = None,
    webhooks_allow_private: Annotated[
        bool | None,
        typer.Option(
            help="Let webhooks call loopback, private, link-local and multicast addresses."
            " \\[env: KILN_WEBHOOKS_ALLOW_PRIVATE]",
            show_default="off",
        ),
    ] = None,
    webhooks_allow_http: Annotated[
        bool | None,
        typer.Option(
            help="Let webhooks use http:// payload URLs. \\[env: KILN_WEBHOOKS_ALLOW_HTTP]",
            show_default="off",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Build workers to run in this process; 0 for none. \\[env: KILN_WORKERS]",
            show_default="1",
        ),
    ] = None,
    drivers: Annotated[
        str | None,
        typer.Option(
            help="The build drivers this deployment runs, comma-separated: local, docker, ssh."
            " \\[env: KILN_DRIVERS]",
            show_default="local",
        ),
    ] = None,
    local_driver_unconfined: Annotated[
        bool | None,
        typer.Option(
            help="Run local jobs as Kiln's own user with nothing between them and the server:"
            " only for a single-user install on a host where bubblewrap cannot confine them."
            " \\[env: KILN_LOCAL_DRIVER_UNCONFINED]",
            show_default="off",
        ),
    ] = None,
    local_driver_network: Annotated[
        str | None,
        typer.Option(
            help="none: local jobs get a network of their own with only loopback; host: they"
            " share the host's, loopback services included. \\[env: KILN_LOCAL_DRIVER_NETWORK]",
            show_default="none",
        ),
    ] = None,
    docker_host: Annotated[
        str | None,
        typer.Option(
            help="The Docker Engine the docker driver uses. \\[env: KILN_DOCKER_HOST]",
            show_default="DOCKER_HOST, or the local socket",
        ),
    ] = None,
    sources_allow_local: Annotated[
        bool | None,
        typer.Option(
            help="Let manifests clone sources from local paths and file:// URLs."
            " \\[env: KILN_SOURCES_ALLOW_LOCAL]",
            show_default="off",
        ),
    ] = None,
    builds_allow_private: Annotated[
        bool | None,
        typer.Option(
            help="Let sources and the ssh driver reach loopback, private and link-local"
            " addresses. \\[env: KILN_BUILDS_ALLOW_PRIVATE]",
            show_default="off",
        ),
    ] = None,
    header_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a client has to send a request line and headers (for a connection's"
            " first request, from when it connects); slower ones are disconnected."
            " \\[env: KILN_HEADER_TIMEOUT]",
            show_default="30.0",
        ),
    ] = None,
    body_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a client has to send each next KiB of a request body being read;"
            " slower ones are disconnected. \\[env: KILN_BODY_TIMEOUT]",
            show_default="30.0",
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="debug, info, warning, error or critical. \\[env: KILN_LOG_LEVEL]",
            show_default="info",
        ),
    ] = None,
) -> None:
    """Apply migrations and serve the API over HTTPS, with build workers, the cron
    scheduler and webhook delivery beside it.

    Every flag can also be set as its KILN_* environment variable; flags win.
    """
    from kiln.app import Kiln
    from kiln.server import configure_logging, uvicorn_config

    settings = _settings(
        host=host,
        port=port,
        data_dir=data_dir,
        database_url=database_url,
        cert=cert,
        key=key,
        tls=tls,
        forwarded_allow_ips=forwarded_allow_ips,
        rate_limit_storage=rate_limit_storage,
        validate_responses=validate_responses,
        webhooks_allow_private=webhooks_allow_private,
        webhooks_allow_http=webhooks_allow_http,
        workers=workers,
        drivers=drivers,
        local_driver_unconfined=local_driver_unconfined,
        local_driver_network=local_driver_network,
        docker_host=docker_host,
        sources_allow_local=sources_allow_local,
        builds_allow_private=builds_allow_private,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
        log_level=log_level,
    )
    configure_logging(settings.log_level)
    db = _prepare(settings)
    try:
        secret = first_admin_token(db)
    finally:
        db.dispose()
    if secret is not None:
        _hand_over_admin_token(settings, secret)
    config = uvicorn_config(Kiln(settings), settings)
    scheme = "https" if settings.tls else "http"
    err.print(f"Kiln listening on {scheme}://{settings.host}:{settings.port} (docs at /docs)")
    uvicorn.Server(config).run()


@users.command("create")
def users_create(
    name: Annotated[str, typer.Argument(help="The new user's name.")],
    email: Annotated[str | None, typer.Option(help="E-mail address.", show_default="none")] = None,
    admin: Annotated[bool, typer.Option(help="Make the user an administrator.")] = False,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a user; the password is read from standard input."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            err.print("[red]The passwords differ.[/red]")
            raise typer.Exit(1)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        err.print("[red]A password is required.[/red]")
        raise typer.Exit(1)
    db = _prepare(_settings(data_dir=data_dir, database_url=database_url))
    try:
        with db.transaction():
            if find_user(name) is not None:
                err.print(f"[red]The user {name!r} exists already.[/red]")
                raise typer.Exit(1)
            create_user(name, password=password, email=email, admin=admin)
    except ValueError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    err.print(f"Created the user {name!r}.")


@tokens.command("create")
def tokens_create(
    user: Annotated[str, typer.Option(help="The user the token acts for.")],
    scope: Annotated[
        list[str],
        typer.Option(help="A scope such as build:read or build:read,write; repeat for more."),
    ],
    namespace: Annotated[
        int | None,
        typer.Option(help="Narrow the token to this namespace id.", show_default="not narrowed"),
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="Lifetime such as 30d, 12h or 15m.", show_default="never")
    ] = None,
    name: Annotated[str, typer.Option(help="A name to recognise the token by.")] = "cli",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Mint a token and print only its secret on standard output."""
    from kiln.core import spec
    from kiln.domain.credentials import expand_scopes

    known = spec.declared_scopes()
    unknown = [s for s in expand_scopes(scope) if s not in known]
    if unknown:
        err.print(f"[red]Unknown scopes: {', '.join(unknown)}[/red]")
        raise typer.Exit(2)
    try:
        expires_at = utcnow() + parse_duration(expires_in) if expires_in else None
    except ValueError as e:
        err.print(f"[red]{e}[/red]")
        raise typer.Exit(2) from None
    db = _prepare(_settings(data_dir=data_dir, database_url=database_url))

    try:
        with db.transaction():
            account = find_user(user)
            if account is None or account.id is None:
                err.print(f"[red]No user {user!r}.[/red]")
                raise typer.Exit(1)
            if namespace is not None and session().get(Namespace, namespace) is None:
                err.print(f"[red]No namespace {namespace}.[/red]")
                raise typer.Exit(1)
            _, secret = issue_token(
                account.id, name=name, scopes=scope, namespace_id=namespace, expires_at=expires_at
            )
    finally:
        db.dispose()
    print(secret)


@app.command()
def worker(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    workers: Annotated[int, typer.Option(help="Builds to run at once.")] = 1,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="debug, info, warning, error or critical. \\[env: KILN_LOG_LEVEL]",
            show_default="info",
        ),
    ] = None,
) -> None:
    """Run build workers against the same database and data directory as `kiln serve`.
    SIGTERM lets running jobs finish (within KILN_GRACE_SECONDS) before it exits. It runs
    at niceness KILN_WORKER_NICE (10), below the API on a shared machine."""
    from kiln.background import worker as build_worker
    from kiln.drivers.base import niceness_increment

    settings = _settings(data_dir=data_dir, database_url=database_url, log_level=log_level)
    os.nice(niceness_increment(settings.worker_nice))
    _run_background(settings, [(f"worker-{n}", build_worker.run) for n in range(workers)])


@app.command()
def scheduler(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            help="debug, info, warning, error or critical. \\[env: KILN_LOG_LEVEL]",
            show_default="info",
        ),
    ] = None,
) -> None:
    """Run the cron scheduler (and webhook delivery) on its own."""
    from kiln.background import deliveries
    from kiln.background import scheduler as cron

    settings = _settings(data_dir=data_dir, database_url=database_url, log_level=log_level)
    _run_background(settings, [("scheduler", cron.run), ("deliveries", deliveries.run)])


def _run_background(settings: Settings, loops: list[tuple[str, Any]]) -> None:
    from kiln.background.loops import run_until_signalled
    from kiln.server import configure_logging

    configure_logging(settings.log_level)
    _prepare(settings).dispose()
    asyncio.run(run_until_signalled(settings, loops))


@secret_keys.command("rotate")
def secrets_rotate(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Encrypt every stored secret with a new key; older keys still decrypt.

    With KILN_SECRET_KEY set, put the new key first in it and run this to re-encrypt;
    otherwise a new key is added to the data directory's key file.
    """
    settings = _settings(data_dir=data_dir, database_url=database_url)
    db = _prepare(settings)
    try:
        if settings.secret_key:
            box = secrets.load(settings.secret_key, settings.data_dir)
        else:
            secrets.load(None, settings.data_dir)  # make the file if it is not there yet
            box = secrets.add_key(settings.data_dir)
        count = secrets.reencrypt(db, box)
    except ValueError as e:
        err.print(f"[red]{e}; nothing was changed.[/red]")
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    err.print(f"Re-encrypted {count} secrets with the new key ({len(box.keys)} keys in all).")


def main() -> None:
    app()
