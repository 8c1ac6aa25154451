"""The ledger's vocabulary: event types shared by services, policy and docs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    SYSTEM_BOOTSTRAPPED = "system.bootstrapped"
    # ``tether admin recover``: a token minted on the server host, with the database and the
    # master key, for an admin locked out (details: the OS user and host that ran it).
    ADMIN_RECOVERED = "admin.recovered"
    USER_CREATED = "user.created"
    USER_TOKEN_CREATED = "user.token_created"  # noqa: S105 - a name, not a secret
    USER_TOKEN_REVOKED = "user.token_revoked"  # noqa: S105 - a name, not a secret
    # The web console: a password set, a sign-in (or a refused one: why, and from where), a
    # sign-out or a session ended by its idle timeout.
    USER_PASSWORD_SET = "user.password_set"  # noqa: S105 - a name, not a secret
    USER_SIGNED_IN = "user.signed_in"
    USER_SIGN_IN_FAILED = "user.sign_in_failed"
    USER_SIGNED_OUT = "user.signed_out"
    USER_ROLE_CHANGED = "user.role_changed"  # an identity provider gave another role
    AGENT_CREATED = "agent.created"
    AGENT_CLONED = "agent.cloned"
    AGENT_UPDATED = "agent.updated"
    AGENT_SUSPENDED = "agent.suspended"
    AGENT_RESUMED = "agent.resumed"
    AGENT_RETIRED = "agent.retired"
    AGENT_KILLED = "agent.killed"
    AGENT_EXPIRED = "agent.expired"
    # Recertification (tether.agents.recertification): a steward confirmed the agent (note,
    # previous and new recertify_by, by whom); the date is near; the date has passed (the
    # tier's response: alert, require_approval or suspend).
    AGENT_RECERTIFIED = "agent.recertified"
    AGENT_RECERTIFICATION_DUE = "agent.recertification_due"
    AGENT_RECERTIFICATION_OVERDUE = "agent.recertification_overdue"
    # Monitoring (tether.monitor): an agent's risk reached a level not yet acted on — the
    # score, level and response, every rule that held with its evidence; a human cleared it.
    AGENT_RISK_RAISED = "agent.risk_raised"
    AGENT_RISK_CLEARED = "agent.risk_cleared"
    CREDENTIAL_CREATED = "credential.created"
    CREDENTIAL_DELETED = "credential.deleted"
    CLIENT_AUTH_FAILED = "client.auth_failed"
    DPOP_NONCE_REQUIRED = "dpop.nonce_required"  # a token request told to use a server nonce
    TOKEN_ISSUED = "token.issued"  # noqa: S105 - a name, not a secret
    TOKEN_EXCHANGED = "token.exchanged"  # noqa: S105 - a name, not a secret
    TOKEN_REVOKED = "token.revoked"  # noqa: S105 - a name, not a secret
    KEY_CREATED = "key.created"
    KEYS_ROTATED = "keys.rotated"
    POLICY_UPDATED = "policy.updated"
    # `audit verify` found the chain, a checkpoint or the checkpoint file wrong (an alert).
    LEDGER_VERIFICATION_FAILED = "ledger.verification_failed"
    # Retention (tether.audit.retention) deleted the events before a cut: which, how many, why
    # (the period, the cutoff, a hold that stopped it) and the checkpoint signed at the cut.
    LEDGER_PRUNED = "ledger.pruned"
    DECISION = "decision"
    # An AuthZEN search (subjects, resources or actions): one event per search, not per
    # candidate evaluated (details: what was searched, how many results, their digest).
    DECISION_SEARCH = "decision.search"
    APPROVAL_REQUESTED = "approval.requested"
    APPROVAL_APPROVED = "approval.approved"
    APPROVAL_DENIED = "approval.denied"
    APPROVAL_EXPIRED = "approval.expired"
    APPROVAL_CANCELLED = "approval.cancelled"
    APPROVAL_FLOOD = "approval.flood"
    FREEZE_STARTED = "freeze.started"
    FREEZE_LIFTED = "freeze.lifted"
    # The secrets broker: never the value, never a generated password — names and versions.
    SECRET_PUT = "secret.put"  # noqa: S105 - a name, not a secret
    SECRET_DELETED = "secret.deleted"  # noqa: S105 - a name, not a secret
    SECRET_READ = "secret.read"  # noqa: S105 - a lease handed out (the decision is its own event)
    SECRET_REFUSED = "secret.refused"  # noqa: S105 - allowed by policy, refused by the broker
    SECRET_UNREADABLE = "secret.unreadable"  # noqa: S105 - a version failed to decrypt
    LEASE_RENEWED = "lease.renewed"
    LEASE_REVOKED = "lease.revoked"
    SECRETS_KEY_ROTATED = "secrets.master_key_rotated"
    # The MCP gateway: a tool call it forwarded (or refused), linked to its decision.
    TOOL_CALLED = "tool.called"
    # A rollback (tether.rollback): its start (the window and the plan), each step (an undo
    # run, refused or failed, linked to its decision and to the call it undoes), its end.
    ROLLBACK_STARTED = "rollback.started"
    ROLLBACK_STEP = "rollback.step"
    ROLLBACK_FINISHED = "rollback.finished"
    # Alerts (tether.alerts): one acknowledged by a human, dead-lettered deliveries replayed.
    ALERT_ACKNOWLEDGED = "alert.acknowledged"
    ALERTS_REPLAYED = "alerts.replayed"
    # The AI system register exported (tether.agents.inventory): who, in which format, how
    # many agents, and the SHA-256 of the body they received.
    INVENTORY_EXPORTED = "inventory.exported"
    # A compliance report built (tether.governance.report): the period, the ledger range its
    # figures were counted from, and the SHA-256 of its JSON — the signed head after it binds
    # the report to the ledger.
    REPORT_BUILT = "report.built"
    # A built report's record forgotten by an admin (its retention hold released; the report
    # still verifies against an export taken before a prune).
    REPORT_FORGOTTEN = "report.forgotten"
    # How long a kill, suspension or freeze took to reach every live worker, measured by the
    # runtime (tether.runtime.propagation): the change's event type and seq, the seconds,
    # whether every worker confirmed within the wait, how many it waited for.
    RUNTIME_PROPAGATED = "runtime.propagated"
    # Access reviews (tether.governance.reviews): a campaign started (its scope, due date and
    # lines); an owner's answer to one line (keep, reduce or retire, with a note); a confirmed
    # reduce or retire carried out (what it did, beside the domain's own event); a reduce of
    # a permission handed to right-sizing (the policy named); the campaign closed.
    REVIEW_STARTED = "review.started"
    REVIEW_ANSWERED = "review.answered"
    REVIEW_APPLIED = "review.applied"
    REVIEW_RIGHTSIZING_REQUESTED = "review.rightsizing_requested"
    REVIEW_CLOSED = "review.closed"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """What a service records; the ledger adds ``seq``, ``id``, ``time`` and the hashes."""

    type: EventType | str
    actor: str
    agent_id: str | None = None
    on_behalf_of: str | None = None
    chain: tuple[str, ...] = ()
    action: str | None = None
    resource: dict[str, Any] | None = None
    decision: str | None = None
    reasons: tuple[str, ...] = ()
    policy_version: str | None = None
    outcome: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
