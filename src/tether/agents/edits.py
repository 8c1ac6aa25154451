"""A PATCH to an agent, a JSON Merge Patch (RFC 7396), field by field: what may not be null,
how the two objects (attributes, fingerprint) merge, what changed (for the audit event), and
the one field with a side effect — a new fingerprint suspends a high-risk agent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tether.agents import schedule
from tether.agents.fingerprint import normalize
from tether.agents.models import AgentRow
from tether.agents.schemas import MAX_ATTRIBUTES, AgentUpdate
from tether.agents.values import RiskTier, Status
from tether.clock import to_micros
from tether.errors import ValidationFailed
from tether.jsonutil import canonical_text, loads

_NOT_NULL = ("name", "owner", "purpose", "roles", "scopes", "attributes", "supervisors")


def refuse_nulls(patch: AgentUpdate) -> None:
    """JSON ``null`` removes only ``fingerprint``, ``expires_at`` and ``recertify_by`` (and
    members inside ``attributes`` and ``fingerprint``)."""
    fields = patch.model_fields_set
    if "risk_tier" in fields and patch.risk_tier is None:
        raise ValidationFailed("risk_tier cannot be null", field="risk_tier")
    for required in _NOT_NULL:
        if required in fields and getattr(patch, required) is None:
            raise ValidationFailed(f"{required} cannot be null", field=required)


def apply_columns(
    row: AgentRow, patch: AgentUpdate, tier: RiskTier | None, changes: dict[str, Any]
) -> None:
    """The agent's own columns: set what the patch changes, note it in ``changes``."""
    required = {
        "name": patch.name,
        "purpose": patch.purpose,
        "risk_tier": tier.value if tier else None,
    }
    for name, value in required.items():
        if value is not None and record(changes, name, getattr(row, name), value):
            setattr(row, name, value)
    for name in ("expires_at", "recertify_by"):  # null clears these
        if name in patch.model_fields_set:
            when: datetime | None = getattr(patch, name)
            micros = to_micros(when) if when else None
            if record(changes, name, getattr(row, name), micros):
                setattr(row, name, micros)
    if patch.attributes is not None:
        current = loads(row.attributes)
        merged = merge(current, patch.attributes)
        if len(merged) > MAX_ATTRIBUTES:
            raise ValidationFailed(
                f"an agent has at most {MAX_ATTRIBUTES} attributes; this patch would leave "
                f"{len(merged)} (set a key to null to remove it)",
                field="attributes",
            )
        check_schedule(merged)
        if record(changes, "attributes", current, merged):
            row.attributes = canonical_text(merged)
    if patch.scopes is not None:
        scopes = sorted(set(patch.scopes))
        if record(changes, "scopes", loads(row.scopes), scopes):
            row.scopes = canonical_text(scopes)


def apply_fingerprint(row: AgentRow, patch: AgentUpdate, changes: dict[str, Any]) -> None:
    """Merge the patch's fingerprint into the agent's (``null`` removes it). A new fingerprint
    (its digest differs) suspends a high-risk agent until resumed.

    Raises :class:`ValidationFailed` if the agent has no fingerprint and the patch names no
    ``model``."""
    new_fp: dict[str, Any] | None = None
    if patch.fingerprint is not None:
        current = loads(row.fingerprint) if row.fingerprint else {}
        current.pop("digest", None)
        parts = merge(current, patch.fingerprint.model_dump(exclude_unset=True))
        if parts.get("model") is None:
            raise ValidationFailed(
                "the agent has no fingerprint yet: a new one needs fingerprint.model",
                field="fingerprint.model",
            )
        new_fp = normalize(parts)
    new_digest = new_fp["digest"] if new_fp else None
    if not record(changes, "fingerprint_digest", row.fingerprint_digest, new_digest):
        return
    row.fingerprint = canonical_text(new_fp) if new_fp else None
    row.fingerprint_digest = new_digest
    if row.risk_tier == RiskTier.HIGH and row.status != Status.EXPIRED:
        # (An expired agent needs a resume anyway, which is the re-approval.)
        # A new model, prompt or toolset is a different agent in all but name.
        changes["status"] = {"from": row.status, "to": Status.SUSPENDED.value}
        row.status = Status.SUSPENDED.value
        row.status_reason = (
            "fingerprint changed on a high-risk agent; a supervisor must re-approve it (resume)"
        )


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7396 §2 MergePatch for the flat objects an agent has (attribute values and
    fingerprint parts are never objects): a member set to null is removed, any other is set,
    members the patch leaves out are kept. Returns a new dict."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def record(changes: dict[str, Any], field: str, old: Any, new: Any) -> bool:
    """Note ``field`` as changed (for the audit event) if ``new`` differs from ``old``."""
    if old == new:
        return False
    changes[field] = {"from": old, "to": new}
    return True


def check_schedule(attributes: dict[str, Any]) -> None:
    """The ``schedule`` attribute, when set, is one monitoring can read
    (:mod:`tether.monitor.schedule`)."""
    value = attributes.get("schedule")
    if value is None:
        return
    if not isinstance(value, str):
        raise ValidationFailed(
            'attributes.schedule is text like "mon-fri 08:00-18:00 UTC"',
            field="attributes.schedule",
        )
    try:
        schedule.parse(value)
    except ValueError as exc:
        raise ValidationFailed(f"attributes.schedule: {exc}", field="attributes.schedule") from None
