"""Response shapes, so the OpenAPI document states exactly what each route returns."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class FingerprintOut(BaseModel):
    model: str
    model_version: str | None
    prompt_sha256: str | None
    tools_sha256: str | None
    digest: str


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


class AgentPage(BaseModel):
    items: list[AgentOut]
    next_cursor: str | None


class CutOff(BaseModel):
    tokens: int
    keys: int
    approvals: int
    leases: int


class KillOut(BaseModel):
    revoked: list[str]
    cut_off: CutOff


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
    ok: bool
    checked: int
    checkpoints_checked: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: (
        Literal["edited", "missing", "reordered", "bad_checkpoint_signature", "checkpoint_mismatch"]
        | None
    ) = None
    message: str | None = None


class CheckpointOut(BaseModel):
    size: int
    head_hash: str
    time: str
    key_id: str
    signature: str


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    database: bool
    schema_current: bool
    runtime_current: bool
