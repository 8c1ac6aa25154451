"""One settings object, read from ``TETHER_*`` environment variables and an optional TOML file.

Precedence, highest first: explicit keyword arguments, environment, ``tether.toml``
(path in ``TETHER_CONFIG``, default ``./tether.toml``), defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from tether.errors import ConfigurationError

_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.\-_]*[a-z0-9])?$")


class Settings(BaseSettings):
    """Deployment configuration. Every field maps to ``TETHER_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="TETHER_", extra="forbid")

    data_dir: Path = Field(default=Path(".tether"), description="Keys, tokens and the SQLite db.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default SQLite in the data dir."
    )
    database_schema: str | None = Field(
        default=None, description="PostgreSQL schema to use (search_path); default public."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=1, le=65535)
    public_url: str | None = Field(
        default=None, description="Base URL clients use; default http://host:port."
    )
    trust_domain: str = Field(default="tether.local", description="SPIFFE trust domain.")
    master_key: str | None = Field(
        default=None, description="Base64 32-byte master key; default: file in the data dir."
    )
    ledger_signing_key: str | None = Field(
        default=None, description="PEM Ed25519 key signing checkpoints; default: file."
    )
    checkpoint_every_events: int = Field(default=1000, ge=1)
    checkpoint_every_seconds: float = Field(default=60.0, gt=0)
    checkpoint_witness_url: str | None = Field(
        default=None,
        description="http(s) URL each signed checkpoint is POSTed to as JSON (best effort, "
        "retried on the next maintenance tick); a copy of the ledger's head off this host.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    token_ttl_seconds: int = Field(default=300, ge=10, description="Default access token TTL.")
    token_ttl_max_seconds: int = Field(default=3600, ge=10, description="TTL ceiling.")
    token_retention_seconds: int = Field(
        default=86_400, ge=0,
        description="How long an expired access token's row is kept before it is purged "
        "(the ledger keeps every issuance).",
    )  # fmt: skip
    token_signing_alg: Literal["ES256", "EdDSA"] = "ES256"  # noqa: S105 - an algorithm name
    key_rotation_days: float = Field(default=30, gt=0, description="Scheduled key rotation.")
    delegation_max_depth: int = Field(default=3, ge=1, le=10)
    dpop_max_age_seconds: int = Field(default=300, ge=10, le=3600)
    dpop_nonce: Literal["off", "required"] = Field(
        default="off",
        description="'required': DPoP proofs must carry a nonce this server issued (RFC 9449 "
        "§8, §9), at the token endpoint and with DPoP-bound tokens. Off by default, since "
        "clients without nonce support would be refused.",
    )
    dpop_nonce_seconds: int = Field(
        default=300, ge=10, le=3600,
        description="A nonce window; a nonce is accepted in its window and the next.",
    )  # fmt: skip
    approval_ttl_seconds: int = Field(
        default=900, ge=10, le=7 * 86400, description="How long an approval stays open."
    )
    approval_max_pending_per_agent: int = Field(
        default=20, ge=1, description="Pending approvals one agent may have; more are denied."
    )
    approval_allow_self_approval: bool = Field(
        default=False,
        description="Let the human an agent acts for approve that agent's request.",
    )
    approval_webhooks: list[str] = Field(
        default_factory=list, description="URLs notified of approvals (JSON, HMAC-signed)."
    )
    approval_webhook_secret: str | None = Field(
        default=None, description="HMAC-SHA256 key for webhook signatures; default: derived."
    )
    runtime_poll_seconds: float = Field(
        default=0.25, gt=0, le=10, description="How often a worker checks for changes."
    )
    runtime_stale_seconds: float = Field(
        default=5.0, gt=0, description="A worker not current for this long denies everything."
    )
    runtime_propagation_wait_seconds: float = Field(
        default=1.0,
        ge=0,
        le=30,
        description="A write that changed agents, tokens, users, policies or freezes returns "
        "once every live worker applied it, or after this long (0: do not wait).",
    )
    decision_batch_max: int = Field(
        default=256, ge=1, le=10_000, description="Most decision events in one commit."
    )
    decision_memo_size: int = Field(
        default=32_768, ge=0, le=1_000_000,
        description="Cedar outcomes a worker remembers per policy version, by exact input "
        "(0: decide every request with Cedar).",
    )  # fmt: skip
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's OpenTelemetry instrumentation (to the globally configured "
        "providers); off, a request does not look the providers up.",
    )
    log_level: str = "info"

    @field_validator("trust_domain")
    @classmethod
    def _check_trust_domain(cls, value: str) -> str:
        # SPIFFE: lowercase, no port, path, query or fragment.
        if not _TRUST_DOMAIN.match(value) or ".." in value:
            raise ValueError("trust domain must be a lowercase DNS-like name without a port")
        return value

    @field_validator("checkpoint_witness_url")
    @classmethod
    def _check_witness_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/?#\s]+", value):
            raise ValueError("checkpoint_witness_url must be an absolute http(s) URL")
        return value

    @model_validator(mode="after")
    def _check_ttls(self) -> Settings:
        if self.token_ttl_seconds > self.token_ttl_max_seconds:
            raise ValueError("token_ttl_seconds must not exceed token_ttl_max_seconds")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("TETHER_CONFIG", "tether.toml"))
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=toml_path),
        )

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'tether.db').resolve()}"

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def checkpoint_file_path(self) -> Path:
        """Every signed ledger checkpoint, one JSON line each, outside the database."""
        return self.data_dir / "checkpoints.jsonl"


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; keyword arguments win over every other source. Raises
    :class:`ConfigurationError` naming each setting that is wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from exc
