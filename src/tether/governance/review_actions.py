"""What a confirmed answer does, inside the confirmation's write transaction: it commits, or
rolls back, with the line's record and its ``review.applied`` event.

Each ``reduce`` removes exactly what its line names and nothing else:

* a **credential** line: that credential is deleted (``credential.deleted``); the agent's
  other credentials are untouched;
* a **role** line: that role is taken from the agent (``agent.updated``, the roles before and
  after); its other roles are kept;
* a **delegation** line: every live token by which the agent acts for that subject — the
  subject tokens the human minted for it and the tokens it obtained by exchange for them — is
  revoked (``token.revoked``); its own tokens and other delegations are untouched. A new
  delegation needs a new subject token from that human (or a new exchange for that agent);
* a **permission** line: a policy can apply to many agents (a role, anyone), so removing it
  for one agent cannot be done by deleting it. The reduce is recorded as a right-sizing
  request naming the policy and the agent (``review.rightsizing_requested``), for whoever
  narrows the policy set (right-sizing proposes the Cedar diff and simulates it).

A ``retire`` retires the agent (``agent.retired``, what it held cut off as for any
retirement); the agent's other unsettled lines in the review are settled with it.

What a line names may have gone meanwhile (deleted by hand, the role changed, the agent
retired): the outcome says so (``already_gone``) and nothing else is touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.agents.service import AgentService
from tether.agents.values import TERMINAL, Status
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.audit.models import EventRow
from tether.clock import to_micros
from tether.credentials.models import AccessTokenRow
from tether.credentials.service import CredentialNotFound, CredentialService
from tether.credentials.store import DatabaseCredentialStore
from tether.governance.review_holdings import bare
from tether.governance.review_models import ReviewLineRow
from tether.governance.review_values import Answer, LineKind, Outcome
from tether.jsonutil import loads
from tether.principals import Principal
from tether.runtime import changes


@dataclass(frozen=True, slots=True)
class Applied:
    outcome: Outcome
    details: dict[str, Any]


class LineActions:
    """Carries out confirmed answers through the domains that own what a line names."""

    def __init__(
        self, ledger: Ledger, agents: AgentService, credentials: CredentialService
    ) -> None:
        self.ledger = ledger
        self.agents = agents
        self.credentials = credentials
        self.tokens = DatabaseCredentialStore()

    def apply(
        self, s: Session, actor: Principal, line: ReviewLineRow, *, now: datetime, reason: str
    ) -> Applied:
        """Do what ``line``'s answer says (reduce or retire); the domains check the actor's
        authority over the agent (``manage`` to retire, delete a credential or drop a role;
        ``operate`` for a delegation or a right-sizing request)."""
        if line.answer == Answer.RETIRE:
            return self._retire(s, actor, line, now=now, reason=reason)
        return self._reduce(s, actor, line, now=now, reason=reason)

    def _reduce(
        self, s: Session, actor: Principal, line: ReviewLineRow, *, now: datetime, reason: str
    ) -> Applied:
        kind = LineKind(line.kind)
        if kind is LineKind.CREDENTIAL:
            try:
                self.credentials.delete_within(
                    s, actor, line.agent_id, line.subject, now=now, reason=reason
                )
            except CredentialNotFound:
                return Applied(Outcome.ALREADY_GONE, {})
            return Applied(Outcome.CREDENTIAL_REVOKED, {"credential": line.subject})
        if kind is LineKind.ROLE:
            dropped = self.agents.drop_role_within(
                s, actor, line.agent_id, line.subject, now=now, reason=reason
            )
            if not dropped:
                return Applied(Outcome.ALREADY_GONE, {})
            return Applied(Outcome.ROLE_DROPPED, {"role": line.subject})
        self.agents.authorized_row(s, actor, line.agent_id, "operate")
        if kind is LineKind.DELEGATION:
            revoked = self._revoke_delegation(s, actor, line, now=now)
            return Applied(
                Outcome.DELEGATION_REVOKED,
                {"on_behalf_of": line.subject, "tokens_revoked": revoked},
            )
        self.ledger.append(
            s,
            [
                NewEvent(
                    EventType.REVIEW_RIGHTSIZING_REQUESTED,
                    actor.ref,
                    agent_id=line.agent_id,
                    action=str(EventType.REVIEW_RIGHTSIZING_REQUESTED),
                    resource={"type": "Policy", "id": line.subject},
                    outcome="success",
                    details={
                        "policy": line.subject,
                        "agent": line.agent_id,
                        "review": line.review_id,
                        "line": line.id,
                        "note": reason,
                    },
                )
            ],
            now=now,
        )
        return Applied(Outcome.RIGHTSIZING_REQUESTED, {"policy": line.subject})

    def _retire(
        self, s: Session, actor: Principal, line: ReviewLineRow, *, now: datetime, reason: str
    ) -> Applied:
        row = self.agents.authorized_row(s, actor, line.agent_id, "manage")
        if Status(row.status) in TERMINAL:
            return Applied(Outcome.ALREADY_GONE, {"status": row.status})
        self.agents.retire_within(s, actor, line.agent_id, reason=reason, now=now)
        return Applied(Outcome.RETIRED, {"agent": line.agent_id})

    def _revoke_delegation(
        self, s: Session, actor: Principal, line: ReviewLineRow, *, now: datetime
    ) -> list[str]:
        """Revoke the agent's live tokens that act for the line's subject; their ids."""
        now_us = to_micros(now)
        live = list(
            s.scalars(
                select(AccessTokenRow).where(
                    AccessTokenRow.agent_id == line.agent_id,
                    AccessTokenRow.revoked_at.is_(None),
                    AccessTokenRow.expires_at > now_us,
                )
            )
        )
        if not live:
            return []
        subject = bare(line.subject)
        live_ids = {t.jti for t in live}
        # Subject tokens: minted by the human for this agent (their client_id is the human's).
        jtis = {t.jti for t in live if t.client_id == subject}
        # Exchanged tokens: the exchange's event names the subject and the token's jti; an
        # event is never older than the token it records.
        exchanged = select(EventRow.details).where(
            EventRow.agent_id == line.agent_id,
            EventRow.type == EventType.TOKEN_EXCHANGED,
            EventRow.on_behalf_of == line.subject,
            EventRow.time >= min(t.issued_at for t in live),
        )
        for details in s.scalars(exchanged):
            jti = loads(details).get("jti")
            if jti in live_ids:
                jtis.add(jti)
        revoked = self.tokens.revoke_unrevoked(s, sorted(jtis), now_us)
        if revoked:
            changes.record(s, changes.Kind.TOKEN, revoked, now_us=now_us)
            self.ledger.append(
                s,
                [
                    NewEvent(
                        EventType.TOKEN_REVOKED,
                        actor.ref,
                        agent_id=line.agent_id,
                        action="review.delegation_revoked",
                        resource={"type": "AccessToken", "id": jti},
                        outcome="success",
                        details={
                            "jti": jti,
                            "on_behalf_of": line.subject,
                            "review": line.review_id,
                            "line": line.id,
                        },
                    )
                    for jti in sorted(revoked)
                ],
                now=now,
            )
        return sorted(revoked)
