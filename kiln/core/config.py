"""Server settings: flags, `KILN_*` environment variables, defaults, in that order."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    data_dir: Path = Path(".kiln")
    database_url: str | None = None
    cert: Path | None = None
    key: Path | None = None
    tls: bool = True
    forwarded_allow_ips: str = ""

    rate_limit: str = "5000/hour"
    anonymous_rate_limit: str = "600/hour"
    password_rate_limit: str = "10/minute"  # noqa: S105 (a rate, not a password)
    rate_limit_storage: str = "memory://"

    secret_key: str | None = None
    webhooks_allow_private: bool = False
    webhooks_allow_http: bool = False

    # A client's request line and headers, and its pace: one slower than these timeouts
    # is disconnected, so that idle connections cannot pile up.
    max_header_size: int = Field(default=64 * 1024, ge=1024)  # in bytes, all headers together
    header_timeout: float = Field(default=30.0, gt=0)  # seconds for a request line and headers
    body_timeout: float = Field(default=30.0, gt=0)  # seconds for each next KiB of a body
    max_json_body: int = 1024 * 1024
    max_object_size: int = 1024**3
    max_image_size: int = 10 * 1024**3
    validate_responses: bool = False
    log_level: str = "info"

    # Background work: build workers, the cron scheduler, webhook delivery.
    workers: int = Field(default=1, ge=0, le=64)
    scheduler: bool = True
    deliveries: bool = True
    drivers: str = "local"  # the driver types this deployment runs, comma-separated
    # Where builds run. Every job of the local driver is confined (bubblewrap) unless the
    # operator of a single-user install turns that off.
    local_driver_unconfined: bool = False
    local_driver_network: Literal["none", "host"] = "none"
    docker_host: str | None = None  # unix:///var/run/docker.sock, tcp://...; None: DOCKER_HOST
    docker_network: str = "bridge"
    docker_pull: Literal["if-not-present", "always", "never"] = "if-not-present"
    job_memory_mb: int = Field(default=2048, ge=16)  # per docker container
    job_cpus: float = Field(default=1.0, gt=0)
    job_pids: int = Field(default=512, ge=16)
    # Source URLs and ssh driver addresses are chosen by whoever submits a build: local
    # paths and file:// would read the server's disk, and private addresses its network.
    sources_allow_local: bool = False
    builds_allow_private: bool = False
    build_timeout: str = "1h"  # for manifests that name none
    max_build_timeout: str = "24h"
    poll_interval: float = Field(default=0.25, gt=0)  # seconds between looks at the queues
    lease_seconds: float = Field(default=30.0, gt=0)  # a worker's hold on a build it runs
    grace_seconds: float = Field(default=30.0, ge=0)  # for running jobs when told to stop
    kill_grace_seconds: float = Field(default=5.0, ge=0)  # SIGTERM, then SIGKILL after this
    # CPU niceness of build work (jobs, and `kiln worker` itself), so that on a shared
    # machine the API answers first and builds take what is left.
    worker_nice: int = Field(default=10, ge=0, le=19)
    webhook_retry_seconds: float = Field(default=10.0, gt=0)  # first retry; doubles after
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("data_dir", "cert", "key")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def resolved_database_url(self) -> str:
        """The database the app uses: given, or SQLite in the data directory."""
        if self.database_url:
            return normalize_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'kiln.db').resolve()}"

    @property
    def enabled_drivers(self) -> set[str]:
        return {d.strip() for d in self.drivers.split(",") if d.strip()}

    @property
    def trusted_proxies(self) -> list[str]:
        return [ip.strip() for ip in self.forwarded_allow_ips.split(",") if ip.strip()]


def normalize_url(url: str) -> str:
    """SQLAlchemy URL with the driver this project ships for its database."""
    if url.startswith(("postgresql:", "postgres:")):
        return "postgresql+psycopg:" + url.split(":", 1)[1]
    return url
