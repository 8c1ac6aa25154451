"""One settings object, read from ``TETHER_*`` environment variables and an optional TOML file.

Precedence, highest first: explicit keyword arguments, environment, secret files
(``tether_<name>`` in systemd's ``$CREDENTIALS_DIRECTORY`` or ``/run/secrets``),
``tether.toml`` (path in ``TETHER_CONFIG``, default ``./tether.toml``), defaults. The server
and the CLI read the same sources: the CLI's default server URL is :attr:`Settings.client_url`.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from tether.agents.recertification import (
    DEFAULT_OVERDUE,
    OverdueAction,
    TierName,
    default_overdue,
)
from tether.audit.retention_rule import MIN_RETENTION_DAYS, retention_problem
from tether.errors import ConfigurationError
from tether.fields import SCOPE_RE
from tether.gateway_config import Upstream, check_unique
from tether.monitor_config import MonitorConfig

_TRUST_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9.\-_]*[a-z0-9])?$")
# A server listening on every address is reached by a client on its own host at loopback.
_LOOPBACK_FOR = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - not bound


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
    ledger_retention_days: int | None = Field(
        default=None,
        description="Ledger events older than this many days are pruned (daily), a signed "
        f"checkpoint kept at the cut; at least {MIN_RETENTION_DAYS} (six months: EU AI Act "
        "Art. 19, 26(6)). Unset: every event is kept.",
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
    console_idle_minutes: int = Field(
        default=30, ge=1, le=24 * 60,
        description="A console session ends after this long without a request.",
    )  # fmt: skip
    console_session_hours: int = Field(
        default=12, ge=1, le=24 * 30,
        description="A console session ends this long after sign-in, however active.",
    )  # fmt: skip
    console_oidc_issuer: str | None = Field(
        default=None,
        description="An OpenID Connect provider humans may sign in to the console with "
        "(its issuer URL; discovery at /.well-known/openid-configuration). Unset: passwords only.",
    )
    console_oidc_client_id: str | None = Field(
        default=None, description="Tether's client id there."
    )
    console_oidc_client_secret: str | None = Field(
        default=None, description="Tether's client secret there (client_secret_basic)."
    )
    console_oidc_role_claim: str = Field(
        default="groups",
        description="The ID token claim (a string or a list) whose values map to Tether roles.",
    )
    console_oidc_roles: dict[str, Literal["admin", "supervisor", "auditor"]] = Field(
        default_factory=dict,
        description='Claim value -> role, e.g. {"tether-admins": "admin", "support-leads": '
        '"supervisor"}; several: the strongest; none: the sign-in is refused.',
    )
    console_oidc_username_claim: str = Field(
        default="preferred_username", description="The claim that names the Tether user."
    )
    rollback_offer_hours: int = Field(
        default=24, ge=1, le=24 * 90,
        description="A kill's answer counts the reversible calls of this many hours before "
        "it, and gives the command that rolls them back.",
    )  # fmt: skip
    rollback_lease_seconds: int = Field(
        default=120, ge=1, le=3600,
        description="A running rollback's hold on its agent, renewed at each step; one whose "
        "worker went away for this long is interrupted, and the next rollback resumes it.",
    )  # fmt: skip
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
    alert_webhooks: list[str] = Field(
        default_factory=list,
        description="URLs every alert is delivered to (Standard Webhooks: webhook-id, "
        "webhook-timestamp, webhook-signature), in order, retried until delivered.",
    )
    alert_webhook_secret: str | None = Field(
        default=None,
        description="The alert webhooks' signing secret (whsec_…, base64); default: derived "
        "from the master key (tether alerts secret prints it).",
    )
    alert_retry_max_seconds: int = Field(
        default=300, ge=1, le=3600,
        description="The longest wait between two attempts of one alert delivery.",
    )  # fmt: skip
    alert_dead_after_hours: int = Field(
        default=24, ge=1, le=24 * 30,
        description="An alert not delivered this long after it was raised goes to the "
        "dead-letter list (tether alerts replay sends it again).",
    )  # fmt: skip
    alert_poll_seconds: float = Field(
        default=1.0, ge=0.05, le=60,
        description="How often each node raises new alerts from the ledger and delivers them.",
    )  # fmt: skip
    alert_dedup_seconds: int = Field(
        default=300, ge=0, le=86_400,
        description="Alerts of one kind about one agent within this window fold into the "
        "first (its suppressed count grows) until it is acknowledged.",
    )  # fmt: skip
    recertify_notice_days: int = Field(
        default=14, ge=0, le=365,
        description="Days before an agent's recertify_by that its recertification is due "
        "(an agent.recertification_due event and alert, once per due date).",
    )  # fmt: skip
    recertify_overdue: dict[TierName, OverdueAction] = Field(
        default_factory=default_overdue,
        description="What an agent whose recertify_by has passed meets, per risk tier (JSON): "
        "alert (an event and alert only), require_approval (every allow needs a human's "
        "approval until it is recertified) or suspend; a tier left out keeps its default.",
    )
    monitor: MonitorConfig = Field(
        default_factory=MonitorConfig,
        description="Continuous monitoring (tether.toml [monitor], or TETHER_MONITOR as JSON): "
        "behaviour windows, risk rules and thresholds (alert, require_approval, suspend); "
        'see README, "Monitoring".',
    )
    secret_max_bytes: int = Field(
        default=65_536, ge=1, le=1_048_576, description="Largest secret value, in bytes."
    )
    secret_versions_kept: int = Field(
        default=5, ge=1, le=1000, description="Versions of a secret kept (the oldest dropped)."
    )
    secret_lease_seconds: int = Field(
        default=3600, ge=10, le=30 * 86400,
        description="A secret read's lease, unless the secret sets its own.",
    )  # fmt: skip
    secret_lease_max_seconds: int = Field(
        default=86_400, ge=10, le=30 * 86400,
        description="The longest lease a secret may set, and a renewal may reach.",
    )  # fmt: skip
    secret_reads_per_minute: int = Field(
        default=600, ge=0, le=1_000_000,
        description="Secret reads one agent may make per minute on each worker (0: no limit).",
    )  # fmt: skip
    gateway_upstreams: list[Upstream] = Field(
        default_factory=list,
        description="Upstream MCP servers behind /mcp (tether.toml [[gateway_upstreams]]).",
    )
    gateway_scope: str | None = Field(
        default=None,
        description="Scope(s) a token needs at /mcp (space-separated, all required; listed in "
        "its RFC 9728 metadata); a valid token without them gets 403 insufficient_scope. "
        "None: no scope required.",
    )
    gateway_max_message_bytes: int = Field(
        default=1_048_576, ge=1024, le=64 * 1_048_576,
        description="Largest request body /mcp reads (its own limit, in place of "
        "TETHER_MAX_BODY_BYTES); a larger one gets 413 with a JSON-RPC error.",
    )  # fmt: skip
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
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="The server's log lines (one per request among them): 'text', or 'json' "
        "for one JSON object a line.",
    )

    @field_validator("gateway_upstreams")
    @classmethod
    def _unique_upstreams(cls, value: list[Upstream]) -> list[Upstream]:
        return check_unique(value)

    @field_validator("gateway_scope")
    @classmethod
    def _check_gateway_scope(cls, value: str | None) -> str | None:
        if value is not None and not SCOPE_RE.match(value):
            raise ValueError("gateway_scope must be space-separated scope-tokens (RFC 6749 §3.3)")
        return value

    @field_validator("recertify_overdue")
    @classmethod
    def _every_tier(cls, value: dict[str, str]) -> dict[str, str]:
        return {**DEFAULT_OVERDUE, **value}

    @field_validator("trust_domain")
    @classmethod
    def _check_trust_domain(cls, value: str) -> str:
        # SPIFFE: lowercase, no port, path, query or fragment.
        if not _TRUST_DOMAIN.match(value) or ".." in value:
            raise ValueError("trust domain must be a lowercase DNS-like name without a port")
        return value

    @field_validator("ledger_retention_days")
    @classmethod
    def _check_retention(cls, value: int | None) -> int | None:
        if value is not None and (problem := retention_problem(value)):
            raise ValueError(f"ledger_retention_days {problem}")
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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets = _secrets_dir()
        if secrets is not None:
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=secrets))
        toml = _read_config_file(config_file_path())
        return (*sources, InitSettingsSource(settings_cls, init_kwargs=toml))

    @property
    def recertify_responses(self) -> dict[str, str]:
        """:attr:`recertify_overdue` as the agents domain and the decision path take it."""
        return {str(tier): str(action) for tier, action in self.recertify_overdue.items()}

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
    def client_url(self) -> str:
        """Where a client on this host reaches the server: ``public_url`` if set, else the
        listen address, a wildcard host (``0.0.0.0``, ``::``) replaced by loopback."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = _LOOPBACK_FOR.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    @property
    def admin_token_path(self) -> Path:
        return self.data_dir / "admin.token"

    @property
    def checkpoint_file_path(self) -> Path:
        """Every signed ledger checkpoint, one JSON line each, outside the database."""
        return self.data_dir / "checkpoints.jsonl"


def _secrets_dir() -> Path | None:
    """Where secret files are mounted, each named ``tether_<setting>`` (``tether_master_key``):
    systemd's ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``), else ``/run/secrets`` (Docker
    and Compose secrets); None if neither is there."""
    for candidate in (os.environ.get("CREDENTIALS_DIRECTORY"), "/run/secrets"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def config_file_path() -> Path:
    """The TOML file settings are read from: ``TETHER_CONFIG``, else ``./tether.toml``."""
    return Path(os.environ.get("TETHER_CONFIG") or "tether.toml")


def _read_config_file(path: Path) -> dict[str, Any]:
    """The file's keys; ``{}`` if there is no file where ``TETHER_CONFIG`` does not point.
    Raises :class:`ConfigurationError` naming the file (and the line) if it cannot be read."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if os.environ.get("TETHER_CONFIG"):
            raise ConfigurationError(
                f"TETHER_CONFIG names {path}, which does not exist — create it or unset "
                "TETHER_CONFIG"
            ) from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"{path.resolve()}: not valid TOML: {exc} — fix the file"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path.resolve()}: {exc.strerror}") from None


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; keyword arguments win over every other source. Raises
    :class:`ConfigurationError` naming each wrong setting where it was set: the argument, the
    ``TETHER_*`` variable, or the TOML file and its key."""
    try:
        return Settings(**overrides)
    except SettingsError as exc:  # a list or other complex value in the environment, not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"TETHER_{field[1].upper()}" if field else "a TETHER_ variable"
        raise ConfigurationError(
            f"invalid settings: {name} is not valid JSON — give a JSON value, e.g. '[\"…\"]'"
        ) from None
    except ValidationError as exc:
        problems = "; ".join(_where(e, overrides) for e in exc.errors())
        raise ConfigurationError(
            f"invalid settings: {problems} — see README.md, Configuration"
        ) from None


def _where(error: Any, overrides: Mapping[str, Any]) -> str:
    """One validation error, led by where the wrong value came from."""
    key = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:  # a top-level key:
        # only the file can name an unknown one (inside a table, say where, as for any value)
        close = difflib.get_close_matches(key.lower().removeprefix("tether_"), _FIELDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{config_file_path().resolve()}: unknown key '{key}'{hint}"
    if not key:
        return str(error["msg"])
    env_name = f"TETHER_{key.upper()}"
    if key in overrides:
        where = key
    elif any(name.upper() == env_name for name in os.environ):
        where = env_name
    elif key in _read_config_file(config_file_path()):
        where = f"{config_file_path().resolve()}: key '{key}'"
    else:
        where = key
    # Inside a list or table (a gateway upstream): which element, which field.
    inner = "".join(f"[{part}]" if isinstance(part, int) else f".{part}"
                    for part in error["loc"][1:] if part not in _UNION_TAGS)  # fmt: skip
    return f"{where}{inner}: {error['msg']}"


# Pydantic names a tagged union's member in an error's location: not a place a user wrote.
_UNION_TAGS = frozenset({"none", "header", "client_credentials"})


_FIELDS = sorted(Settings.model_fields)
# TETHER_ variables that are not settings: the config file's path, the CLI's own (its options'
# envvars are passed in by the CLI), and the test suite's and benchmarks' (by prefix).
_OTHER_NAMES = frozenset({"TETHER_CONFIG", "TETHER_URL", "TETHER_TOKEN", "TETHER_DEBUG"})
_OTHER_PREFIXES = ("TETHER_TEST_", "TETHER_BENCH_")


def unknown_variables(environ: Mapping[str, str], also_known: Iterable[str] = ()) -> list[str]:
    """One warning line per ``TETHER_*`` variable in ``environ`` that nothing reads (a
    misspelling is otherwise silently ignored), naming the closest known name."""
    known = {f"TETHER_{f.upper()}" for f in _FIELDS} | _OTHER_NAMES | set(also_known)
    lines = []
    for name in sorted(environ):
        upper = name.upper()  # settings are read case-insensitively
        if not upper.startswith("TETHER_") or upper in known or upper.startswith(_OTHER_PREFIXES):
            continue
        closest = difflib.get_close_matches(upper, known, n=1, cutoff=0.0)
        lines.append(
            f"warning: {name} is not a Tether setting and is ignored "
            f"(closest known name: {closest[0]})"
        )
    return lines
