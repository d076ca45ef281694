"""One typed settings object, read from the environment (prefix MLPIPE_) at the entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything mlpipe can be configured with; see .env.example for each variable."""

    model_config = SettingsConfigDict(env_prefix="MLPIPE_", env_file=".env", extra="ignore")

    database_url: SecretStr | None = Field(
        default=None, description="PostgreSQL 14+ URL; unset starts the embedded server under home."
    )
    home: Path = Field(default=Path.home() / ".mlpipe", description="Embedded database and artifacts.")
    artifacts_dir: Path | None = Field(default=None, description="Model artifact store; may be shared.")
    jobs_path: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Extra folders holding job specs: a PATH-like list (dir1:dir2) or a JSON list.",
    )
    workers: int = Field(default=2, ge=1, description="Chunk tasks run at once (thread runner).")
    chunk_rows: int = Field(
        default=100_000,
        ge=100,
        description="Entities per scoring chunk (memory follows it, not the population).",
    )
    dask_address: str | None = Field(default=None, description="Run chunk tasks on this Dask scheduler.")
    lock_timeout_ms: int = Field(
        default=50, ge=1, description="Publish waits this long for readers (and new lookups wait on it)."
    )
    publish_retries: int = Field(default=50, ge=1, description="Publish attempts before giving up.")
    pushgateway_url: str | None = Field(
        default=None, description="Prometheus Pushgateway that each score and monitor run pushes to."
    )
    metrics_file: Path | None = Field(
        default=None, description="node-exporter textfile (.prom) holding the newest metrics of every job."
    )

    @field_validator("jobs_path", mode="before")
    @classmethod
    def _path_list(cls, value: object) -> object:
        """MLPIPE_JOBS_PATH as a shell user writes it (`dir1:dir2`, like PATH) or as a JSON list."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"not a JSON list ({exc.msg}); or give folders separated by {os.pathsep!r}"
                ) from None
        return [part for part in text.split(os.pathsep) if part]

    @property
    def artifact_store(self) -> Path:
        """Folder that holds model artifacts: <job>/<sha256>.<suffix>, never overwritten."""
        return self.artifacts_dir or self.home / "artifacts"

    @property
    def pgdata(self) -> Path:
        """Data folder of the embedded PostgreSQL."""
        return self.home / "pgdata"
