"""Input shapes for the registry, shared by the API (request bodies) and the service."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

RiskTierIn = Literal["minimal", "limited", "high", "prohibited"]
RoleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,100}$")]
AttrKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
AttrValue = (
    Annotated[str, StringConstraints(max_length=1000)]
    | bool
    | Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
    | Annotated[list[Annotated[str, StringConstraints(max_length=200)]], Field(max_length=100)]
)
UserRef = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")]
Purpose = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
AwareDatetime = Annotated[datetime, Field(strict=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class FingerprintIn(_Strict):
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    model_version: Annotated[str, StringConstraints(max_length=200)] | None = None
    prompt_sha256: Sha256Hex | None = None
    tools_sha256: Sha256Hex | None = None


class AgentCreate(_Strict):
    name: Name
    owner: UserRef
    purpose: Purpose
    risk_tier: RiskTierIn
    roles: Annotated[list[RoleName], Field(max_length=50)] = []
    attributes: Annotated[dict[AttrKey, AttrValue], Field(max_length=64)] = {}
    parent: Annotated[str, StringConstraints(max_length=40)] | None = None
    fingerprint: FingerprintIn | None = None
    supervisors: Annotated[list[UserRef], Field(max_length=50)] = []
    expires_at: AwareDatetime | None = None
    recertify_by: AwareDatetime | None = None


class AgentUpdate(_Strict):
    """Only the fields present are changed; ``null`` clears an optional field."""

    name: Name | None = None
    owner: UserRef | None = None
    purpose: Purpose | None = None
    risk_tier: RiskTierIn | None = None
    roles: Annotated[list[RoleName], Field(max_length=50)] | None = None
    attributes: Annotated[dict[AttrKey, AttrValue], Field(max_length=64)] | None = None
    fingerprint: FingerprintIn | None = None
    supervisors: Annotated[list[UserRef], Field(max_length=50)] | None = None
    expires_at: AwareDatetime | None = None
    recertify_by: AwareDatetime | None = None


class SuspendRequest(_Strict):
    reason: Reason


class ResumeRequest(_Strict):
    note: Annotated[str, StringConstraints(max_length=1000)] | None = None


class RetireRequest(_Strict):
    reason: Reason


class KillRequest(_Strict):
    reason: Reason
    cascade: bool = True


class CloneRequest(_Strict):
    name: Name
