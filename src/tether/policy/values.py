"""The decision's values: what is asked (:class:`Ask`), what is answered (:class:`Decision`,
:class:`Effect`), the reasons Tether gives before Cedar is asked, and what a request may hold.

Decisions are values, never bare booleans: a deny always says why (policy ids, or a
``tether.`` reason), with the policy version it was decided under.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from tether.errors import ValidationFailed

if TYPE_CHECKING:
    from tether.principals import Principal


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVAL_REQUIRED = "approval_required"


RESERVED_CONTEXT = frozenset({"chain", "delegated", "on_behalf_of", "session"})
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
_MAX_DEPTH = 16

# Reasons Tether gives before Cedar is asked (they read like policy ids, and are in the ledger).
STALE = "tether.runtime-not-current"
REVOKED_TOKEN = "tether.token-revoked"  # noqa: S105 - a reason, not a secret
UNKNOWN_AGENT = "tether.unknown-agent"
INACTIVE_AGENT = "tether.agent-not-active"
INACTIVE_CHAIN = "tether.chain-member-not-active"
UNKNOWN_ACTION = "tether.unknown-action"
LEDGER_DOWN = "tether.ledger-unavailable"
# An operator's request whose action the schema does not declare: allowed by the authority
# Tether checked (tether.agents.authority), not by Cedar.
OPERATOR_AUTHORITY = "tether.operator-authority"
# An allow turned into an approval checkpoint: the agent's recertification is overdue and its
# tier's response is require_approval (tether.agents.recertification).
RECERTIFICATION_OVERDUE = "tether.recertification-overdue"


class AgentCaller(Protocol):
    """An agent as a transport authenticated it: the acting agent and the delegation chain of
    its token (the shape of :class:`tether.credentials.bearer.Caller`)."""

    @property
    def principal(self) -> Principal: ...

    @property
    def chain(self) -> tuple[str, ...]: ...

    @property
    def on_behalf_of(self) -> str | None: ...

    @property
    def jti(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Ask:
    """One request: ``subject`` is the acting agent; ``chain`` every principal from the
    original subject to the acting agent (just the subject when nobody is delegating)."""

    subject: str
    action: str
    resource_type: str
    resource_id: str
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    chain: tuple[str, ...] = ()
    on_behalf_of: str | None = None
    jti: str | None = None
    caller: str = "system"
    request_id: str | None = None  # the HTTP request's X-Request-ID, kept in the ledger event

    @classmethod
    def of(
        cls, caller: AgentCaller, action: str, resource_type: str, resource_id: str, *,
        properties: dict[str, Any], context: dict[str, Any], request_id: str | None = None,
    ) -> Ask:  # fmt: skip
        """What ``caller`` asks about itself, with its token's chain."""
        agent = caller.principal
        chain, behalf = caller.chain, caller.on_behalf_of
        return cls(agent.id, action, resource_type, resource_id, properties, context, chain,
                   behalf, caller.jti, agent.ref, request_id)  # fmt: skip

    @property
    def full_chain(self) -> tuple[str, ...]:
        return self.chain or (self.subject,)

    def digest(self) -> str:
        """What an approval is bound to: subject, chain, action, resource and context."""
        return hashlib.sha256(orjson.dumps({
            "subject": self.subject, "chain": list(self.full_chain), "action": self.action,
            "resource": {"type": self.resource_type, "id": self.resource_id,
                         "properties": self.properties},
            "context": self.context,
        }, option=orjson.OPT_SORT_KEYS)).hexdigest()  # fmt: skip

    def context_digest(self) -> str:
        return hashlib.sha256(orjson.dumps(self.context, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class Decision:
    effect: Effect
    reasons: tuple[str, ...]
    policy_version: str
    event_id: str | None = None
    approval_id: str | None = None
    approval_status: str | None = None
    error: dict[str, str] | None = None
    stage: str = "cedar"  # "runtime" when Tether refused before Cedar was asked
    # What the policies decided (after failing closed on an erroring forbid), before the
    # approval workflow; recorded when it differs from the answer, and what simulations compare.
    policy_effect: Effect | None = None

    @property
    def allowed(self) -> bool:
        return self.effect is Effect.ALLOW

    def to_authzen(self) -> dict[str, Any]:
        ctx: dict[str, Any] = {
            "decision": self.effect.value,
            "reasons": list(self.reasons),
            "policy_version": self.policy_version,
            "event_id": self.event_id,
        }
        if self.effect is Effect.APPROVAL_REQUIRED:
            ctx |= {"approval_required": True, "approval_id": self.approval_id,
                    "approval_status": self.approval_status}  # fmt: skip
        elif self.approval_id:
            ctx["approval_id"] = self.approval_id
        if self.error:
            ctx["error"] = self.error
        return {"decision": self.allowed, "context": ctx}


def check_cedar_value(value: Any, path: str, depth: int = 0) -> None:
    """Cedar has strings, booleans, 64-bit integers, sets and records — nothing else."""
    if depth > _MAX_DEPTH:
        raise ValidationFailed(f"{path} is nested too deeply", field=path)
    if isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValidationFailed(f"{path} is outside Cedar's 64-bit integers", field=path)
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_cedar_value(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            check_cedar_value(item, f"{path}.{key}", depth + 1)
        return
    kind = "null" if value is None else type(value).__name__
    raise ValidationFailed(
        f"{path} is a {kind}; Cedar values are strings, booleans, integers, lists and objects",
        field=path,
    )


def validate_ask(ask: Ask) -> None:
    check_cedar_value(ask.properties, "resource.properties")
    check_cedar_value(ask.context, "context")
    if reserved := RESERVED_CONTEXT.intersection(ask.context):
        name = sorted(reserved)[0]
        raise ValidationFailed(f"context.{name} is set by Tether, not by the caller",
                               field=f"context.{name}")  # fmt: skip
    if ask.resource_type.endswith("Action") or ask.resource_type in {"Role", "User"}:
        raise ValidationFailed(f"resource type {ask.resource_type!r} cannot be acted on",
                               field="resource.type")  # fmt: skip
