"""Field types every request model shares: text PostgreSQL can store, names, RFC 3339
times, JSON integers — each stated so the OpenAPI document and the validator agree."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
)
from pydantic import (
    AwareDatetime as _AwareDatetime,
)

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
# A username: lower-case letters, digits and ``._-``, starting with a letter or digit.
USERNAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"

# RFC 6749 §3.3, the one definition of the scope grammar:
#   scope       = scope-token *( SP scope-token )
#   scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_CHAR = r"[\x21\x23-\x5b\x5d-\x7e]"
# A ``scope`` parameter (unanchored, to be embedded in a pattern) and the same, compiled whole.
SCOPE = rf"{SCOPE_CHAR}+(?: {SCOPE_CHAR}+)*"
SCOPE_RE = re.compile(rf"^{SCOPE}$")
# One scope-token as request bodies list them (at most 200 characters each).
ScopeToken = Annotated[str, StringConstraints(pattern=rf"^{SCOPE_CHAR}{{1,200}}$")]


# Integers a JSON number carries exactly everywhere (RFC 7493 I-JSON, section 2.2): beyond
# 2**53 - 1, JavaScript clients and float-based JSON Schema validators read a different number
# than the one sent, so a document bounding a value at 2**63 - 1 cannot be checked by them.
SAFE_INT = 2**53 - 1


def integral(value: Any) -> Any:
    """JSON has one number type: ``5.0`` is the integer 5 (as JSON Schema's ``integer`` says)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


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


class StrictModel(BaseModel):
    """Unknown fields, coercions and NUL characters are refused (422 naming the field)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # PostgreSQL text cannot hold NUL (0x00): refuse it as a 422 naming the field, on every
        # backend alike, instead of a driver error (a 500) on PostgreSQL only.
        if _has_nul(value):
            raise ValueError("must not contain NUL (\\x00) characters")
        return value


# Any JSON a store can hold (a tool call's arguments and result): no NUL in any string or key,
# said in the document too (``additionalProperties: false`` beside the keys' pattern, or the
# document would admit the keys the validator refuses).
_NoNulKey = Annotated[str, StringConstraints(pattern=NO_NUL)]
if TYPE_CHECKING:
    JsonData = Any
else:
    from typing_extensions import TypeAliasType

    JsonData = TypeAliasType(
        "JsonData",
        Union[  # noqa: UP007 - a recursive alias needs the explicit Union
            StrictBool,
            StrictInt,
            StrictFloat,
            Annotated[StrictStr, StringConstraints(pattern=NO_NUL)],
            list["JsonData"],
            Annotated[
                dict[_NoNulKey, "JsonData"],
                Field(json_schema_extra={"additionalProperties": False}),
            ],
            None,
        ],
    )
JsonObject = Annotated[
    dict[_NoNulKey, JsonData], Field(json_schema_extra={"additionalProperties": False})
]
