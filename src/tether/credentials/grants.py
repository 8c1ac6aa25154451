"""What a token request may ask for, and who a token may still speak for.

The rules both grants share (client_credentials and RFC 8693 token exchange): the scope
within the agent's ceiling (RFC 6749 §3.3), the audience from ``resource`` (RFC 8707) or
``audience`` (RFC 8693), a lifetime that never outlives the agent, and a delegation chain
whose every member is still live — checked inside the issuing transaction.
"""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether.agents import authority, directory
from tether.agents.directory import AgentFacts
from tether.clock import to_micros
from tether.credentials.errors import InvalidScope, InvalidTarget, UnauthorizedClient
from tether.fields import SCOPE_RE as _SCOPE
from tether.freeze.gate import frozen_among
from tether.users.models import UserRow

_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")  # RFC 3986 URIs and RFC 8693 audiences: no spaces


def still_active(
    s: Session, agent_id: str, now: datetime, *, read: AgentFacts | None = None
) -> AgentFacts:
    """The agent, re-checked inside the issuing transaction: a kill between authentication
    and issuance must not yield a token. An expired agent is :func:`capped_ttl`'s to refuse
    (with its own message). ``read``: the agent's facts as this transaction has just read
    them (:func:`tether.credentials.clients.unchanged`), not read again."""
    agent = read if read is not None else directory.facts(s, agent_id)
    why = authority.not_live(agent.liveness if agent else None, to_micros(now))
    if agent is None or why in (authority.NotLive.MISSING, authority.NotLive.INACTIVE):
        raise UnauthorizedClient("the agent is not active")
    if (frozen := frozen_among(s, [agent_id])) is not None:
        raise UnauthorizedClient(f"the agent is frozen ({frozen.freeze.reason})")
    return agent


def scopes(requested: str | None, ceiling: frozenset[str]) -> frozenset[str]:
    """The scope to grant: what was asked for, within ``ceiling``, or all of it."""
    if requested is None or requested == "":
        return ceiling  # RFC 6749 §3.3: the default is everything the client may hold
    if not _SCOPE.match(requested):
        raise InvalidScope("scope must be space-separated scope-tokens (RFC 6749 §3.3)")
    wanted = frozenset(requested.split(" "))
    if not wanted <= ceiling:
        raise InvalidScope(f"scope {sorted(wanted - ceiling)} exceeds what the agent may hold")
    return wanted


def audience(form: dict[str, str], *, default: str) -> list[str]:
    """RFC 8707 ``resource`` (absolute URI, no fragment) and RFC 8693 ``audience``."""
    values = [v for v in (form.get("resource"), form.get("audience")) if v]
    for value in values:
        if len(value) > 500:
            raise InvalidTarget("resource/audience too long")
        if not _PRINTABLE.match(value):
            raise InvalidTarget("resource/audience may not hold spaces or control characters")
        if value == form.get("resource"):
            try:
                parts = urlsplit(value)
            except ValueError as exc:
                raise InvalidTarget("resource is not a URI") from exc
            if not parts.scheme or not parts.netloc or parts.fragment:
                raise InvalidTarget("resource must be an absolute URI without a fragment")
    return sorted(set(values)) or [default]


def capped_ttl(ttl: int, agent: AgentFacts, now: datetime) -> int:
    """No token outlives its agent's ``expires_at``."""
    if agent.expires_at is None:
        return ttl
    left = (agent.expires_at - to_micros(now)) // 1_000_000
    if left <= 0:
        raise UnauthorizedClient("the agent has expired")
    return min(ttl, int(left))


def chain_problem(s: Session, ids: list[str], now_us: int) -> str | None:
    """Why a token naming these principals (subject and actors) must not be honoured: the
    agents domain's liveness rule (:func:`tether.agents.authority.chain_problem`) over what
    exists now, then the freezes in force (:func:`tether.freeze.gate.frozen_among`)."""
    agents = directory.liveness(s, [i for i in ids if not i.startswith("usr_")])
    wanted = {i for i in ids if i.startswith("usr_")}
    humans = set(s.scalars(select(UserRow.id).where(UserRow.id.in_(wanted)))) if wanted else set()
    problem = authority.chain_problem(ids, agents, humans, now_us)
    if problem is None and (frozen := frozen_among(s, ids)) is not None:
        return frozen.describe()
    return problem


def ref(subject: str) -> str:
    """The ledger's reference for a token subject: a human or an agent."""
    return f"user:{subject}" if subject.startswith("usr_") else f"agent:{subject}"
