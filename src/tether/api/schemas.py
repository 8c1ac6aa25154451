"""Response shapes, so the OpenAPI document states exactly what each route returns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class FingerprintOut(BaseModel):
    model: str
    model_version: str | None
    prompt_sha256: str | None
    tools_sha256: str | None
    digest: str


class RiskSummary(BaseModel):
    """The agent's risk as monitoring scores it now (tether.monitor): its detail, with the
    rules that hold and why, is ``GET /v1/agents/{id}/risk``."""

    score: int
    level: str  # "low", or the level of the highest threshold reached
    step_up: bool  # every allowed request asks a human until someone clears it


class AgentOut(BaseModel):
    id: str
    spiffe_id: str
    name: str
    owner: str
    owner_username: str
    supervisors: list[str]
    purpose: str
    risk_tier: Literal["minimal", "limited", "high"]
    status: Literal["active", "suspended", "expired", "revoked", "retired"]
    status_reason: str | None
    roles: list[str]
    scopes: list[str]
    attributes: dict[str, Any]
    parent: str | None
    lineage: list[str]
    lineage_kind: str | None
    fingerprint: FingerprintOut | None
    created_at: str
    updated_at: str
    expires_at: str | None
    recertify_by: str | None
    risk: RiskSummary


class AgentPage(BaseModel):
    items: list[AgentOut]
    next_cursor: str | None


class CutOff(BaseModel):
    tokens: int
    keys: int
    approvals: int
    leases: int


class RollbackOffer(BaseModel):
    """What the killed agent did that can still be undone, and how."""

    reversible_actions: int  # its reversible calls in the window, not undone yet
    hours: int
    since: str
    command: str  # the CLI command that shows the plan (then drop --dry-run to run it)
    request: dict[str, Any]  # the same as POST /v1/agents/{id}/rollback


class KillOut(BaseModel):
    revoked: list[str]
    cut_off: CutOff
    rollback: RollbackOffer | None = None


class UserOut(BaseModel):
    id: str
    username: str
    role: Literal["admin", "supervisor", "auditor"]
    email: str | None
    created_at: str


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None


class TokenOut(BaseModel):
    id: str
    user_id: str
    name: str | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class TokenCreated(TokenOut):
    token: str


class TokenList(BaseModel):
    items: list[TokenOut]
    next_cursor: str | None = None


class EventOut(BaseModel):
    seq: int
    id: str
    time: str
    type: str
    actor: str
    agent_id: str | None
    on_behalf_of: str | None
    chain: list[str]
    action: str | None
    resource: dict[str, Any] | None
    decision: str | None
    reasons: list[str]
    policy_version: str | None
    outcome: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str | None


class VerifyOut(BaseModel):
    """README.md ("The ledger") says what each problem and field means."""

    ok: bool
    checked: int
    checkpoints_checked: int
    head_hash: str | None = Field(
        description="The verified chain's newest hash; null when verification failed."
    )
    first_bad_seq: int | None = None
    problem: (
        Literal[
            "edited",
            "missing",
            "reordered",
            "bad_checkpoint_signature",
            "chain_rewritten_before",
            "external_checkpoint_mismatch",
            "truncated",
            "external_checkpoint_invalid",
            "external_checkpoints_missing",
            "db_checkpoints_missing",
            "unanchored_tail",
            "cut_invalid",
        ]
        | None
    ) = None
    message: str | None = None
    after_seq: int | None = Field(
        default=None, description="With a range problem: events after_seq+1..through_seq."
    )
    through_seq: int | None = None
    external_checkpoints: int | None = Field(
        default=None, description="Checkpoints in the data dir's checkpoint file, verified."
    )
    anchored_size: int | None = Field(
        default=None, description="Events covered by the newest verified signed checkpoint."
    )
    unanchored: int | None = Field(
        default=None, description="Events after it, which no signature covers yet."
    )
    max_unanchored: int | None = Field(
        default=None, description="The most events the server leaves unanchored."
    )
    max_unanchored_seconds: float | None = Field(
        default=None, description="The longest an event waits for a checkpoint."
    )
    cut: CheckpointOut | None = Field(
        default=None,
        description="The retention cut the chain was verified from, when events were pruned: "
        "the checkpoint signed at the last pruned event.",
    )


class CheckpointOut(BaseModel):
    size: int
    head_hash: str
    time: str
    key_id: str
    signature: str


class Health(BaseModel):
    status: str


class UpstreamStatus(BaseModel):
    """An upstream MCP server of the gateway, as this worker holds it."""

    name: str
    up: bool
    tools: int
    error: str | None = None


class Ready(BaseModel):
    status: str
    database: bool
    schema_current: bool
    runtime_current: bool
    upstreams: list[UpstreamStatus] = []
