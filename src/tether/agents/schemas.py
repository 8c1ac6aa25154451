"""Input shapes for the registry, shared by the API (request bodies) and the service."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime as _AwareDatetime,
)
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema

# ``prohibited`` is parsed so the service can refuse it with its own error
# (422 ``risk_tier_prohibited``, API.md), but the OpenAPI document lists only the tiers that can
# actually be registered: a request with ``prohibited`` is not a valid request.
RiskTierIn = Annotated[
    Literal["minimal", "limited", "high", "prohibited"],
    WithJsonSchema(
        {
            "type": "string",
            "enum": ["minimal", "limited", "high"],
            "description": "'prohibited' (EU AI Act Art. 5) is refused with 422 risk_tier_prohibited",
        }
    ),
]
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
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _rfc3339(value: Any) -> Any:
    """Only an RFC 3339 date-time string, as the schema says (lax parsing would also take
    numbers, dates and offset-less times)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("expected an RFC 3339 date-time with an offset, e.g. 2026-11-29T14:38:02Z")
    return value


AwareDatetime = Annotated[_AwareDatetime, Field(strict=False), BeforeValidator(_rfc3339)]


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


def _drop_null_defaults(schema: dict[str, Any]) -> None:
    """``default: null`` on a property whose schema does not admit null would be a lie."""
    for prop in schema.get("properties", {}).values():
        if prop.get("default", ...) is None and "anyOf" not in prop and "type" in prop:
            del prop["default"]


class AgentUpdate(_Strict):
    """Only the fields present are changed; ``null`` clears an optional field.

    The fields an agent always has cannot be cleared: ``None`` below only means "absent",
    so it is left out of the JSON schema and an explicit ``null`` is refused (422).
    """

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_drop_null_defaults)

    name: Name | SkipJsonSchema[None] = None
    owner: UserRef | SkipJsonSchema[None] = None
    purpose: Purpose | SkipJsonSchema[None] = None
    risk_tier: RiskTierIn | SkipJsonSchema[None] = None
    roles: Annotated[list[RoleName], Field(max_length=50)] | SkipJsonSchema[None] = None
    attributes: Annotated[dict[AttrKey, AttrValue], Field(max_length=64)] | SkipJsonSchema[None] = (
        None
    )
    fingerprint: FingerprintIn | None = None
    supervisors: Annotated[list[UserRef], Field(max_length=50)] | SkipJsonSchema[None] = None
    expires_at: AwareDatetime | None = None
    recertify_by: AwareDatetime | None = None

    @field_validator(
        "name",
        "owner",
        "purpose",
        "risk_tier",
        "roles",
        "attributes",
        "supervisors",
        mode="before",
    )
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value


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
