"""Settings, read once from the environment (pydantic-settings)."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DataRoots", "Settings", "get_settings", "is_loopback"]


class Settings(BaseSettings):
    """Every setting of the service; each maps to the environment variable in its alias."""

    # An empty variable is an unset one: a deployment may list every setting (the Kubernetes
    # ConfigMap does) and leave some at their defaults.
    model_config = SettingsConfigDict(
        env_prefix="GAT_TUNE_", extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    database_url: str | None = Field(
        default=None,
        alias="DATABASE_URL",
        description="PostgreSQL URL; unset: an embedded PostgreSQL under the data directory",
    )
    data_dir: Path = Field(default=Path(".gat-tune"), description="embedded database, artifacts, caches, runs")
    token: str | None = Field(default=None, description="admin bearer token (all scopes)")
    host: str = Field(default="127.0.0.1", description="address `gat-tune serve` listens on")
    port: int = Field(default=8000, description="port `gat-tune serve` listens on")
    public_url: str | None = Field(default=None, description="base URL for links (default http://host:port)")
    max_trials: int = Field(default=10_000, ge=1, description="largest n_trials a study may ask for")
    max_body_bytes: int = Field(default=1_000_000, ge=1, description="largest request body")
    pool_size: int = Field(default=5, ge=1, description="database connections per process")
    artifact_dir: Path | None = Field(default=None, description="Optuna artifact store (default DATA_DIR/artifacts)")
    artifact_s3_bucket: str | None = Field(default=None, description="store artifacts in this S3 bucket instead")
    lease_seconds: float = Field(default=60, gt=0, description="a trial's lease; a heartbeat renews it at 1/3")
    poll_seconds: float = Field(default=2, gt=0, description="how often an idle slot looks for a trial")
    max_pack: int | None = Field(
        default=None, ge=1, description="trials a slot trains at once as one packed model, at most (1: no packing)"
    )
    data_roots: str | None = Field(
        default=None,
        description="directories a study's folder: dataset may lie under (os.pathsep- or comma-separated); "
        "default DATA_DIR/datasets",
    )
    read_cache_entries: int = Field(
        default=256,
        ge=0,
        description="study and trial-page responses kept per server process (service.readcache); 0: none",
    )

    @field_validator("database_url")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        # SQLAlchemy wants postgresql://; Heroku-style URLs say postgres://.
        if value.startswith("postgres://"):
            value = "postgresql://" + value[len("postgres://") :]
        if not value.startswith("postgresql"):
            raise ValueError("DATABASE_URL must be a PostgreSQL URL (postgresql://user@host:port/db)")
        # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; we ship psycopg2.
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg2://" + value[len("postgresql://") :]
        return value

    @property
    def artifacts(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    @property
    def folder_roots(self) -> DataRoots:
        """Where a study's ``folder:`` dataset may lie: the configured roots (or the data
        directory's datasets folder), never the run, artifact or database directories."""
        given = [r for r in re.split(rf"[,{re.escape(os.pathsep)}]", self.data_roots or "") if r.strip()]
        roots = [Path(r.strip()) for r in given] or [self.data_dir / "datasets"]
        excluded = [self.data_dir / "runs", self.artifacts, self.data_dir / "pgdata"]
        return DataRoots(tuple(_real(r) for r in roots), tuple(_real(e) for e in excluded))

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


def _real(path: Path | str) -> Path:
    """The path with symlinks followed and '..' collapsed, whether or not it exists."""
    return Path(os.path.realpath(path))


@dataclass(frozen=True)
class DataRoots:
    """The directories a study's ``folder:PATH`` dataset may lie under, and those it may not."""

    allowed: tuple[Path, ...]
    excluded: tuple[Path, ...] = ()

    def admits(self, path: str) -> bool:
        """Whether ``path`` (relative to this process' directory) is inside an allowed root
        and outside every excluded one. Symlinks are followed first, so a link out of a root
        does not count as inside it; the answer does not depend on whether the path exists."""
        real = _real(path)
        inside = any(real.is_relative_to(root) for root in self.allowed)
        return inside and not any(real.is_relative_to(e) for e in self.excluded)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache
def get_settings() -> Settings:
    return Settings()
