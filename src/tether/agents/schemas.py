"""Input shapes for the registry, shared by the API (request bodies) and the service."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)
from pydantic import (
    AwareDatetime as _AwareDatetime,
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
            "description": "'prohibited' (EU AI Act Art. 5) is refused: 422 risk_tier_prohibited",
        }
    ),
]

# Patterns are written so that they mean the same to every engine that reads them: ECMA-262
# (what JSON Schema and so the OpenAPI document specify), Rust's regex (pydantic) and Python's re
# (schemathesis/hypothesis). Hence explicit classes instead of ``.``, ``\s`` and ``\S``, whose
# line-terminator and Unicode-space sets differ between the three.
#
# NO_NUL: PostgreSQL text cannot hold NUL (0x00), so no free-text field accepts one (the
# ``_no_nul`` validator below); the pattern says so in the document too.
NO_NUL = r"^[^\x00]*$"
# SPACES: the union of what ECMA-262, Rust and Python each call white space.
SPACES = r"\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_LINE_END = r"\n\r\u2028\u2029"
# A name: no leading or trailing space, no line breaks, no NUL.
NAME = rf"^[^{SPACES}\x00]([^{_LINE_END}\x00]*[^{SPACES}\x00])?$"


# Integers a JSON number carries exactly everywhere (RFC 7493 I-JSON, section 2.2): beyond
# 2**53 - 1, JavaScript clients and float-based JSON Schema validators read a different number
# than the one sent, so a document bounding a value at 2**63 - 1 cannot be checked by them.
SAFE_INT = 2**53 - 1


def integral(value: Any) -> Any:
    """JSON has one number type: ``5.0`` is the integer 5 (as JSON Schema's ``integer`` says)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


RoleName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,100}$")]
AttrKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
AttrValue = (
    Annotated[str, StringConstraints(max_length=1000, pattern=NO_NUL)]
    | bool
    | Annotated[int, Field(ge=-SAFE_INT, le=SAFE_INT), BeforeValidator(integral)]
    | Annotated[
        list[Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)]],
        Field(max_length=100),
    ]
)
# ``additionalProperties: false``: keys that do not match AttrKey are refused, and the document
# has to say so (``patternProperties`` alone would admit any other key with any value).
Attributes = Annotated[
    dict[AttrKey, AttrValue],
    Field(max_length=64, json_schema_extra={"additionalProperties": False}),
]
UserRef = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=NO_NUL)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NAME)]
Purpose = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=NO_NUL)]
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


def _utc(value: datetime) -> datetime:
    # An offset can push a representable local time outside datetime's range in UTC
    # (0001-01-01T00:00:00+01:00); refuse it here rather than fail when it is stored.
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("date-time is out of range once converted to UTC") from exc


AwareDatetime = Annotated[
    _AwareDatetime, Field(strict=False), BeforeValidator(_rfc3339), AfterValidator(_utc)
]


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text cannot hold NUL (0x00): refuse it as a 422 naming the field, on every
        # backend alike, instead of a driver error (a 500) on PostgreSQL only.
        if _has_nul(value):
            raise ValueError("must not contain NUL (\\x00) characters")
        return value


class FingerprintIn(_Strict):
    model: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
    model_version: Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)] | None = None
    prompt_sha256: Sha256Hex | None = None
    tools_sha256: Sha256Hex | None = None


class AgentCreate(_Strict):
    name: Name
    owner: UserRef
    purpose: Purpose
    risk_tier: RiskTierIn
    roles: Annotated[list[RoleName], Field(max_length=50)] = []
    attributes: Attributes = {}
    parent: Annotated[str, StringConstraints(max_length=40, pattern=NO_NUL)] | None = None
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
    attributes: Attributes | SkipJsonSchema[None] = None
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
    note: Annotated[str, StringConstraints(max_length=1000, pattern=NO_NUL)] | None = None


class RetireRequest(_Strict):
    reason: Reason


class KillRequest(_Strict):
    reason: Reason
    cascade: bool = True


class CloneRequest(_Strict):
    name: Name
