"""OpenID AuthZEN Authorization API 1.0 §8, the search APIs, on the decision engine: which
resources of a type an agent may act on, which actions it may take on a resource, which agents
may take an action on a resource.

A search is evaluations over candidates Tether knows, never a guess: each candidate is asked
as :meth:`DecisionService.evaluate` asks one request (the runtime checks, then Cedar), so a
result is what a single evaluation of it answers (§8.1). What can be found:

* **subjects**: the agents of the runtime snapshot that the asker may ask about (an agent:
  itself, with its token's chain; an admin: every agent; a supervisor: the agents they own or
  supervise; an auditor may not search, as it may not evaluate);
* **actions**: every action of the policy version's schema except action groups (such as
  ``mutating``: other actions are in it, nobody performs it);
* **resources of a type**: for ``Agent``, the agents of the runtime snapshot; the resources a
  registered source holds for that type (``Secret``: the secrets broker's live secrets); and
  every entity of that type the policies name, in a scope or a condition. Tether holds no
  other resources: a caller that knows its own candidates (the MCP gateway, its tools) passes
  them to :meth:`SearchService.resources` in-process; over HTTP that is an evaluations batch.

Only ids an evaluation request can name are candidates (1 to 200 characters, no NUL).

**Approvals.** ``results`` are the allowed candidates (``Effect.ALLOW``). A candidate that
needs a human's approval is not allowed yet: it is listed apart
(:attr:`SearchPage.approval_required`). A search decides nothing, so it neither opens nor
uses an approval (an evaluation of such a candidate opens one; once approved, the identical
evaluation is allowed once, and a search still lists it apart).

**Properties.** Each candidate is decided with the properties it is returned with: one that
Tether holds with its own (a secret's labels) with those, an agent as its registry entity,
anything else with the request's ``resource.properties``. Evaluating a result as returned
answers allow, unless something changed in between.

**Pages** (§8.2). Candidates are taken in the byte order of their ids' UTF-8; the token is the
unpadded base64url of the last id a page looked at, and the next page starts after it. Any
such string is a place to start, so no well-formed token is refused, and the token does not
bind the rest of the request (a SHOULD of §8.2): a changed request goes on from that place in
its own candidates. A page holds up to ``limit`` results and ends early, with a token, once
it has looked at ``SCAN_BUDGET`` candidates — a page's cost is bounded however many agents
there are, and a page may hold fewer results than ``limit``, even none: follow ``next_token``
until it is empty.

**Recording.** One search is one ledger event (``decision.search``: who asked, about what, how
many results and their digest), durable before the answer leaves, as each evaluation's is; a
ledger that cannot be written fails the search (:class:`tether.errors.LedgerUnavailable`) and
nothing is answered. The evaluations are in memory: no event per candidate.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, TypeVar

import orjson

from tether.audit.events import EventType, NewEvent
from tether.errors import Forbidden, ValidationFailed
from tether.policy.decide import DecisionService
from tether.policy.engine import CompiledPolicies
from tether.policy.slices import scope_uids, uid_of
from tether.policy.source import Policy
from tether.policy.values import Ask, Decision, Effect, validate_ask
from tether.principals import Principal, Role

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SCAN_BUDGET = 2000  # candidates one page evaluates at most (~30-100 ms of Cedar)
_CHUNK = 250  # candidates evaluated in one batch
_ID_MAX = 200  # what an evaluation request can name (tether.policy.authzen)
# A token is the unpadded base64url of an id's UTF-8 (up to 4 bytes a character).
TOKEN_PATTERN = r"^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$"  # noqa: S105 - a pattern
TOKEN_MAX_LENGTH = -(-4 * _ID_MAX * 4 // 3)
_TOKEN = re.compile(TOKEN_PATTERN)
T = TypeVar("T")


class SearchKind(StrEnum):
    SUBJECT = "subject"
    RESOURCE = "resource"
    ACTION = "action"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A resource a search looks at: its id and, when its holder knows them, its properties
    (None: decided with the request's ``resource.properties``)."""

    id: str
    properties: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """A candidate the search kept: ``id`` is the agent's id, the action's name or the
    resource's id; ``ask`` is exactly what was evaluated, ``decision`` its answer."""

    id: str
    ask: Ask
    decision: Decision


@dataclass(frozen=True, slots=True)
class SearchPage:
    """One page: the allowed candidates, those that need an approval, and ``next_token``
    ("" when nothing is left). ``refused`` is Tether's refusal of the whole search before
    Cedar (the subject not active, say), when there was one: then nothing was found."""

    kind: SearchKind
    results: list[Found]
    approval_required: list[Found]
    next_token: str
    policy_version: str
    refused: Decision | None = None
    event_id: str | None = None


Source = Callable[[], Iterable[Candidate]]


class SearchService:
    """The search APIs over a :class:`DecisionService`. ``sources`` hold candidates by
    resource type (what Tether holds of that type besides agents); cheap to build, so an
    in-process caller with candidates of its own may build one over its decision service."""

    def __init__(
        self, decisions: DecisionService, sources: Mapping[str, Source] | None = None
    ) -> None:
        self.decisions = decisions
        self.sources: dict[str, Source] = dict(sources or {})
        self._named: tuple[CompiledPolicies, dict[str, frozenset[str]]] | None = None

    async def resources(
        self, ask: Ask, *, candidates: Iterable[Candidate] | None = None, token: str = "",
        limit: int | None = DEFAULT_LIMIT, record: bool = True,
    ) -> SearchPage:  # fmt: skip
        """The resources of type ``ask.resource_type`` on which ``ask.subject`` may
        ``ask.action`` in ``ask.context`` (``ask.resource_id`` is ignored). ``candidates``:
        look at these instead of what Tether knows of the type. ``limit=None``: every result
        in one page. ``record=False``: no ledger event (for an in-process caller that records
        what it does itself). Raises :class:`ValidationFailed` for a bad ask, candidate or
        token."""
        validate_ask(ask)
        after = _start(token, limit)
        await self._current()
        refused = self.decisions.refusal(ask)  # the same for every candidate
        if refused is not None:
            page = _refused(SearchKind.RESOURCE, refused)
        else:
            if candidates is None:
                pool = self._resources_of(ask.resource_type)
            else:
                given: dict[str, Candidate] = {}
                for c in candidates:  # the first of an id counts
                    if _nameable(c.id) and c.id not in given:
                        _check_candidate(ask, c)
                        given[c.id] = c
                pool = list(given.values())

            def ask_for(c: Candidate) -> Ask:
                props = ask.properties if c.properties is None else c.properties
                return replace(ask, resource_id=c.id, properties=props)

            page = self._page(SearchKind.RESOURCE, _ordered(pool, lambda c: c.id), ask_for,
                              after, limit)  # fmt: skip
        return await self._recorded(page, ask) if record else page

    async def actions(
        self, ask: Ask, *, token: str = "", limit: int | None = DEFAULT_LIMIT, record: bool = True
    ) -> SearchPage:
        """The actions ``ask.subject`` may take on ``ask.resource`` in ``ask.context``
        (``ask.action`` is ignored). As :meth:`resources` otherwise."""
        validate_ask(ask)
        after = _start(token, limit)
        await self._current()
        compiled = self.decisions.runtime.policies
        names = _actions_of(compiled) if compiled is not None else []
        # The runtime checks do not depend on which (known) action is asked.
        refused = self.decisions.refusal(replace(ask, action=names[0]) if names else ask)
        if refused is not None:
            page = _refused(SearchKind.ACTION, refused)
        else:
            page = self._page(SearchKind.ACTION, _ordered(names, str),
                              lambda name: replace(ask, action=name), after, limit)  # fmt: skip
        return await self._recorded(page, ask) if record else page

    async def subjects(
        self, asker: Principal, ask: Ask, *, token: str = "", limit: int | None = DEFAULT_LIMIT,
        record: bool = True,
    ) -> SearchPage:  # fmt: skip
        """The agents that may ``ask.action`` on ``ask.resource`` in ``ask.context``, among
        those ``asker`` may ask about: an agent asks about itself only (``ask`` carries its
        token's chain), an admin about every agent, a supervisor about the agents they own
        or supervise. ``ask.subject`` is ignored. Raises :class:`Forbidden` for anyone else
        (auditors), as an evaluation would."""
        validate_ask(ask)
        after = _start(token, limit)
        await self._current()
        ids = self._askable(asker)
        page = self._page(SearchKind.SUBJECT, _ordered(ids, str),
                          lambda agent: replace(ask, subject=agent), after, limit)  # fmt: skip
        return await self._recorded(page, ask) if record else page

    # -- candidates ------------------------------------------------------------------------
    def _askable(self, asker: Principal) -> list[str]:
        if asker.kind == "agent":
            return [asker.id]
        ids = [view.id for view in self.decisions.runtime.agent_views()]
        if asker.is_admin:
            return ids
        if asker.role is not Role.SUPERVISOR:
            raise Forbidden("auditors read; a search is recorded like the evaluations it makes")
        return [agent for agent in ids if _may_ask(self.decisions, asker, agent)]

    def _resources_of(self, resource_type: str) -> list[Candidate]:
        found: dict[str, Candidate] = {}
        if resource_type == "Agent":  # decided with the agent's entity, whatever the request
            for view in self.decisions.runtime.agent_views():
                found[view.id] = Candidate(view.id, {})
        source = self.sources.get(resource_type)
        for candidate in source() if source is not None else ():
            found.setdefault(candidate.id, candidate)
        for named in self._named_of(resource_type):
            found.setdefault(named, Candidate(named))
        return [c for c in found.values() if _nameable(c.id)]

    def _named_of(self, entity_type: str) -> frozenset[str]:
        compiled = self.decisions.runtime.policies
        if compiled is None:
            return frozenset()
        cached = self._named
        if cached is None or cached[0] is not compiled:  # once per policy version
            cached = (compiled, _named_entities(compiled.policies))
            self._named = cached
        return cached[1].get(entity_type, frozenset())

    # -- paging ----------------------------------------------------------------------------
    def _page(
        self, kind: SearchKind, pool: list[tuple[bytes, T]], ask_for: Callable[[T], Ask],
        after: bytes | None, limit: int | None,
    ) -> SearchPage:  # fmt: skip
        """Evaluate ``pool`` (ordered by key) from after ``after`` until ``limit`` results
        and the next hit, the budget, or the end: the next page starts after the last
        candidate this one took."""
        compiled = self.decisions.runtime.policies
        start = bisect_right([key for key, _ in pool], after) if after is not None else 0
        stop = len(pool) if limit is None else min(len(pool), start + SCAN_BUDGET)
        results: list[Found] = []
        approvals: list[Found] = []
        taken, full = start, False  # taken: the index after the last candidate looked at
        while taken < stop and not full:
            asks = [ask_for(item) for _, item in pool[taken : min(taken + _CHUNK, stop)]]
            for ask, decision in zip(asks, self.decisions.evaluate_many(asks), strict=True):
                hit = decision.effect is not Effect.DENY
                if hit and limit is not None and len(results) >= limit:
                    full = True  # a hit beyond the limit: the next page starts with it
                    break
                found = Found(_key_id(kind, ask), ask, decision)
                if decision.effect is Effect.ALLOW:
                    results.append(found)
                elif hit:
                    approvals.append(found)
                taken += 1
        # limit >= 1: a page that stops early has taken at least one candidate
        next_token = _token(pool[taken - 1][0]) if taken < len(pool) else ""
        version = compiled.version if compiled is not None else "unknown"
        return SearchPage(kind, results, approvals, next_token, version)

    # -- recording -------------------------------------------------------------------------
    async def _recorded(self, page: SearchPage, ask: Ask) -> SearchPage:
        recorded = await self.decisions.committer.submit_async(self._event(page, ask))
        return replace(page, event_id=recorded.id)

    def _event(self, page: SearchPage, ask: Ask) -> NewEvent:
        kind = page.kind
        known = kind is not SearchKind.SUBJECT and ask.subject in self.decisions.runtime.agents
        ids = [found.id for found in page.results]
        details: dict[str, Any] = {
            "search": kind.value, "caller": ask.caller, "count": len(ids),
            "results_digest": hashlib.sha256(orjson.dumps(ids)).hexdigest(),
            "approval_required": len(page.approval_required), "more": bool(page.next_token),
            "context_digest": ask.context_digest(),
        }  # fmt: skip
        if kind is not SearchKind.SUBJECT and not known:
            details["subject"] = ask.subject[:200]
        if page.refused is not None and page.refused.error:
            details["error"] = page.refused.error["code"]
        if ask.jti:
            details["jti"] = ask.jti
        if ask.request_id:
            details["request_id"] = ask.request_id
        resource = {"type": ask.resource_type}
        if kind is not SearchKind.RESOURCE:
            resource["id"] = ask.resource_id
        return NewEvent(
            EventType.DECISION_SEARCH, f"agent:{ask.subject}" if known else ask.caller,
            agent_id=ask.subject if known else None, on_behalf_of=ask.on_behalf_of,
            chain=ask.full_chain if known else (),
            action=None if kind is SearchKind.ACTION else ask.action[:200], resource=resource,
            reasons=page.refused.reasons if page.refused is not None else (),
            policy_version=page.policy_version, details=details,
        )  # fmt: skip

    async def _current(self) -> None:
        runtime = self.decisions.runtime
        if not runtime.fresh():  # the poller is behind (or not running): catch up
            await asyncio.to_thread(runtime.ensure_current)


def _refused(kind: SearchKind, refused: Decision) -> SearchPage:
    return SearchPage(kind, [], [], "", refused.policy_version, refused=refused)


def _may_ask(decisions: DecisionService, asker: Principal, agent: str) -> bool:
    try:
        decisions.may_ask(asker, agent)
    except Forbidden:
        return False
    return True


def _key_id(kind: SearchKind, ask: Ask) -> str:
    if kind is SearchKind.SUBJECT:
        return ask.subject
    return ask.action if kind is SearchKind.ACTION else ask.resource_id


def _nameable(value: str) -> bool:
    return 0 < len(value) <= _ID_MAX and "\x00" not in value


def _ordered(items: Iterable[T], id_of: Callable[[T], str]) -> list[tuple[bytes, T]]:
    """``items`` by the UTF-8 of their ids (code point order), each with that key."""
    return sorted(((id_of(item).encode(), item) for item in items), key=lambda pair: pair[0])


def _token(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def _start(token: str, limit: int | None) -> bytes | None:
    """Where a page starts: after the id ``token`` encodes (None: at the beginning)."""
    if limit is not None and limit < 1:
        raise ValidationFailed("page.limit is at least 1", field="page.limit")
    if not token:
        return None
    if len(token) > TOKEN_MAX_LENGTH or not _TOKEN.fullmatch(token):
        raise ValidationFailed("page.token is not a token this server issued",
                               field="page.token")  # fmt: skip
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _check_candidate(ask: Ask, candidate: Candidate) -> None:
    if candidate.properties is None:
        return
    try:
        validate_ask(replace(ask, properties=candidate.properties))
    except ValidationFailed as exc:
        raise ValidationFailed(f"candidate {candidate.id!r}: {exc.message}",
                               field="candidates") from exc  # fmt: skip


def _actions_of(compiled: CompiledPolicies) -> list[str]:
    """The schema's actions that are not groups of other actions."""
    groups = {g for action, ancestors in compiled.actions.items() for g in ancestors - {action}}
    return [a for a in compiled.actions if a not in groups and _nameable(a)]


def _named_entities(policies: Sequence[Policy]) -> dict[str, frozenset[str]]:
    """Every entity the policies name, by type: in a principal or resource scope, or as a
    literal in a condition (``resource == Tool::"refund"``, ``[Tool::"a"].contains(...)``).
    An explicit stack, not recursion: how deep a policy is must not reach Python's limit."""
    named: dict[str, set[str]] = {}
    for policy in policies:
        uids = [*scope_uids(policy.est["principal"]), *scope_uids(policy.est["resource"])]
        stack: list[Any] = [policy.est.get("conditions") or []]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                uid = uid_of(node.get("__entity"))
                if uid is not None:
                    uids.append(uid)
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
        for entity_type, entity_id in uids:
            named.setdefault(entity_type, set()).add(entity_id)
    return {entity_type: frozenset(ids) for entity_type, ids in named.items()}
