"""Input shapes for the registry, shared by the API (request bodies) and the service."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from tether.agents.values import RiskTier
from tether.fields import (
    NAME,
    NO_NUL,
    SAFE_INT,
    USERNAME,
    AwareDatetime,
    ScopeToken,
    StrictModel,
    integral,
)
from tether.ids import IdPrefix, id_pattern

_TIERS = tuple(tier.value for tier in RiskTier)  # what may be registered
_TIERS_TEXT = ", ".join(repr(t) for t in _TIERS[:-1]) + f" or {_TIERS[-1]!r}"


def _known_tier(value: Any) -> Any:
    """Anything but a tier or ``prohibited`` is told only the tiers that can be registered:
    ``prohibited`` is parsed (to be refused with its own error), never offered."""
    if value not in (*_TIERS, "prohibited"):
        raise PydanticCustomError("literal_error", f"Input should be {_TIERS_TEXT}")
    return value


# ``prohibited`` is parsed so the service can refuse it with its own error
# (422 ``risk_tier_prohibited``, API.md), but the OpenAPI document and the error for any other
# value list only the tiers that can actually be registered: ``prohibited`` is never valid.
RiskTierIn = Annotated[
    Literal["minimal", "limited", "high", "prohibited"],
    BeforeValidator(_known_tier),
    WithJsonSchema(
        {
            "type": "string",
            "enum": list(_TIERS),
            "description": "'prohibited' (EU AI Act Art. 5) is refused: 422 risk_tier_prohibited",
        }
    ),
]

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
MAX_ATTRIBUTES = 64
Attributes = Annotated[
    dict[AttrKey, AttrValue],
    Field(max_length=MAX_ATTRIBUTES, json_schema_extra={"additionalProperties": False}),
]
# A merge patch of the attributes (RFC 7396): a key set to null is removed, any other is set.
# A patch may remove as many keys as it adds; the merged map is held to 64 (tether.agents.edits).
AttributesPatch = Annotated[
    dict[AttrKey, AttrValue | None],
    Field(max_length=2 * MAX_ATTRIBUTES, json_schema_extra={"additionalProperties": False}),
]
# A user by id or by username (the service looks the id up first, then the name).
USER_REF = rf"^(?:{id_pattern(IdPrefix.USER, anchored=False)}|{USERNAME[1:-1]})$"
UserRef = Annotated[str, StringConstraints(pattern=USER_REF)]
AgentId = Annotated[str, StringConstraints(pattern=id_pattern(IdPrefix.AGENT))]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=1000, pattern=NO_NUL)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NAME)]
Purpose = Annotated[str, StringConstraints(min_length=1, max_length=2000, pattern=NO_NUL)]


class FingerprintIn(StrictModel):
    model: Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
    model_version: Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)] | None = None
    prompt_sha256: Sha256Hex | None = None
    tools_sha256: Sha256Hex | None = None


def _drop_null_defaults(schema: dict[str, Any]) -> None:
    """``default: null`` on a property whose schema does not admit null would be a lie."""
    for prop in schema.get("properties", {}).values():
        if prop.get("default", ...) is None and "anyOf" not in prop and "type" in prop:
            del prop["default"]


class FingerprintPatch(StrictModel):
    """A merge patch of the fingerprint (RFC 7396): the parts present are set, a part set to
    null is removed, the others are kept. ``model`` cannot be removed (a fingerprint names its
    model; send ``"fingerprint": null`` to drop the whole fingerprint), and an agent without a
    fingerprint needs one: the service refuses a patch that leaves none."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_drop_null_defaults)

    model: (
        Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]
        | SkipJsonSchema[None]
    ) = None
    model_version: Annotated[str, StringConstraints(max_length=200, pattern=NO_NUL)] | None = None
    prompt_sha256: Sha256Hex | None = None
    tools_sha256: Sha256Hex | None = None

    @field_validator("model", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(
                "cannot be null; leave it out to keep the model, or send fingerprint: null to "
                "remove the whole fingerprint"
            )
        return value


class AgentCreate(StrictModel):
    name: Name
    owner: UserRef
    purpose: Purpose
    risk_tier: RiskTierIn
    roles: Annotated[list[RoleName], Field(max_length=50)] = Field(default_factory=list)
    scopes: Annotated[list[ScopeToken], Field(max_length=100)] = Field(default_factory=list)
    attributes: Attributes = Field(default_factory=dict)
    parent: AgentId | None = None
    fingerprint: FingerprintIn | None = None
    supervisors: Annotated[list[UserRef], Field(max_length=50)] = Field(default_factory=list)
    expires_at: AwareDatetime | None = None
    recertify_by: AwareDatetime | None = None


class AgentUpdate(StrictModel):
    """A JSON Merge Patch of the agent (RFC 7396), ``PATCH /v1/agents/{id}``.

    Fields left out keep their value. ``attributes`` and ``fingerprint`` are objects and merge
    member by member: a member set to ``null`` is removed, any other is set, members left out
    are kept (changing ``fingerprint.model`` keeps ``model_version`` unless the patch gives it).
    Lists (``roles``, ``scopes``, ``supervisors``) are replaced whole: ``[]`` empties one.
    ``null`` removes ``fingerprint``, ``expires_at`` and ``recertify_by``; the fields an agent
    always has cannot be removed, so ``None`` below only means "absent": it is left out of the
    JSON schema and an explicit ``null`` is refused (422).
    """

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_drop_null_defaults)

    name: Name | SkipJsonSchema[None] = None
    owner: UserRef | SkipJsonSchema[None] = None
    purpose: Purpose | SkipJsonSchema[None] = None
    risk_tier: RiskTierIn | SkipJsonSchema[None] = None
    roles: Annotated[list[RoleName], Field(max_length=50)] | SkipJsonSchema[None] = None
    scopes: Annotated[list[ScopeToken], Field(max_length=100)] | SkipJsonSchema[None] = None
    attributes: AttributesPatch | SkipJsonSchema[None] = None
    fingerprint: FingerprintPatch | None = None
    supervisors: Annotated[list[UserRef], Field(max_length=50)] | SkipJsonSchema[None] = None
    expires_at: AwareDatetime | None = None
    recertify_by: AwareDatetime | None = None

    @field_validator(
        "name",
        "owner",
        "purpose",
        "risk_tier",
        "roles",
        "scopes",
        "attributes",
        "supervisors",
        mode="before",
    )
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            if info.field_name == "attributes":
                raise ValueError("cannot be null; to remove one attribute, set its key to null")
            raise ValueError("cannot be null; leave the field out to keep its value")
        return value


class SuspendRequest(StrictModel):
    reason: Reason


class ResumeRequest(StrictModel):
    note: Annotated[str, StringConstraints(max_length=1000, pattern=NO_NUL)] | None = None


class RecertifyRequest(StrictModel):
    """``POST /v1/agents/{id}/recertify``: why the agent still needs what it has, and until
    when (in the future, at most its risk tier's period from now; default: that period)."""

    note: Reason
    until: AwareDatetime | None = None


class RetireRequest(StrictModel):
    reason: Reason


class KillRequest(StrictModel):
    reason: Reason
    cascade: bool = True


class CloneRequest(StrictModel):
    name: Name
