"""Agents as the decision path sees them: a prebuilt Cedar entity and the facts checked before
Cedar is asked (liveness, owner, supervisors).

Built once per change of the agent (by the runtime snapshot, from the registry; by
``tether policy test``, from a case file), never per decision. The entity's JSON is kept in
parts, most of them shared between agents, and joined when asked (:attr:`AgentView.entity`):
the engine decides on the text — in Python, or by Cedar, which caches the parsed entity per
text (``tether.policy.engine``).
"""

from __future__ import annotations

import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import orjson

from tether.agents import schedule as schedules
from tether.agents.authority import Liveness, is_live
from tether.policy.slices import Uid


@dataclass(frozen=True, slots=True)
class AgentView:
    id: str
    status: str
    risk_tier: str
    owner_id: str
    supervisors: frozenset[str]
    roles: frozenset[str]
    expires_at: int | None  # microseconds
    parents: frozenset[Uid]
    liveness: Liveness
    schedule: schedules.Schedule | None = None  # its ``schedule`` attribute, parsed
    recertify_by: int | None = None  # microseconds (tether.agents.recertification)
    # Its Cedar entity's JSON in parts (see :meth:`entity`): status, tier and owner; purpose
    # and name; the parents' list; the tags — all but the second shared between agents.
    _head: str = ""
    _named: str = ""
    _parents: str = "[]"
    _tags: str = "{}"

    def active_at(self, now_us: int) -> bool:
        """The agents domain's liveness rule (:func:`tether.agents.authority.is_live`)."""
        return is_live(self.liveness, now_us)

    @property
    def entity(self) -> str:
        """Its Cedar entity (JSON): joined from its parts when asked, and kept for a while
        (up to ``_TEXTS_MAX`` texts, forgotten together when full). A view holds ~150 bytes
        of its own instead of the ~400 of the text (at 100,000 agents, ~25 MiB of each
        worker), and joining costs ~1 µs when the text is not kept."""
        kept = _TEXTS.get(id(self))
        if kept is not None and kept[0] is self:
            return kept[1]
        text = (
            f'{{"uid":{{"type":"Agent","id":{_text(self.id)}}},"attrs":{{{self._head},'
            f'{self._named},"risk":{_NO_RISK_TEXT}}},"parents":{self._parents},'
            f'"tags":{self._tags}}}'
        )
        if len(_TEXTS) >= _TEXTS_MAX:
            _TEXTS.clear()
        _TEXTS[id(self)] = (self, text)  # the view held: its id is not reused meanwhile
        return text


# The entity texts of the views asked for lately, by the view's id(): the decision path asks
# for one once or twice a request, a repeated request (the outcome memo) for the same agent's.
# Cleared when full, as the engine's caches are (8,192: ~4 MiB of texts per worker).
_TEXTS_MAX = 8_192
_TEXTS: dict[int, tuple[AgentView, str]] = {}


def _text(value: Any) -> str:
    return orjson.dumps(value).decode()


NO_RISK = {"score": 0, "level": "low"}
_NO_RISK_TEXT = _text(NO_RISK)

# At 100,000 agents every byte per agent is 100 kB of each worker's memory, and most of a
# view is what many agents have in common: the same role sets, no supervisors, no expiry, a
# handful of statuses, tiers and owners. Those parts are built once and shared (the views are
# immutable); only the id, the entity text and the dates are the agent's own. With the
# batched load (tether.agents.directory.every_record) a worker holding 100,000 agents went
# from 357 to 193 MiB after the runtime's load (SQLite; 440 to 200 on PostgreSQL).
# Role and supervisor sets are remembered by the tuple they came as, the _SHARED most recently
# used (the benchmark's 100,000 agents, 1-3 of 40 roles each, have 5,668 role sets): past that
# the least recent is forgotten, so churn cannot grow the caches (a set held is about 1 kB of
# objects); a view built afterwards gets equal, unshared sets.
_SHARED = 4096
_NOBODY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Roles:
    """A set of roles as a view holds it: the names, the Cedar parents, and the entity's
    ``parents`` (in name order). One per set of roles, shared by the views that hold it."""

    names: frozenset[str]
    parents: frozenset[Uid]
    listed: str  # the entity's "parents" (JSON)


def _canonical(held: tuple[str, ...]) -> tuple[str, ...]:
    """``held`` sorted, without repeats, its strings interned (one copy per process)."""
    return tuple(sorted({sys.intern(str(name)) for name in held}))


@lru_cache(maxsize=_SHARED)
def _roles(held: tuple[str, ...]) -> _Roles:
    canonical = _canonical(held)
    if canonical != held:  # another order of a set seen before: the same objects
        return _roles(canonical)
    return _Roles(
        frozenset(canonical),
        frozenset(("Role", r) for r in canonical),
        _text([{"type": "Role", "id": r} for r in canonical]),
    )


@lru_cache(maxsize=_SHARED)
def _supervisors(held: tuple[str, ...]) -> frozenset[str]:
    if not held:
        return _NOBODY
    canonical = _canonical(held)
    return _supervisors(canonical) if canonical != held else frozenset(canonical)


@lru_cache(maxsize=_SHARED)
def _head(status: str, risk_tier: str, owner_id: str) -> tuple[str, str, str, str]:
    """The three, interned, and the entity's attributes they make (JSON, without braces):
    one per status, tier and owner, shared by the views that have them."""
    status, risk_tier, owner_id = sys.intern(status), sys.intern(risk_tier), sys.intern(owner_id)
    head = _text({"status": status, "risk_tier": risk_tier, "owner": owner_id})[1:-1]
    return status, risk_tier, owner_id, sys.intern(head)


@lru_cache(maxsize=64)
def _undated(status: str) -> Liveness:
    """The liveness of every agent with this status and no expiry."""
    return Liveness(status)


def _tag(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


_STRINGS = frozenset({str})


def _tags(attributes: Mapping[str, Any]) -> Mapping[str, Any]:
    """The registry attributes as Cedar tags (strings; anything else as its JSON): the
    attributes themselves when they are all strings already, as they usually are."""
    if type(attributes) is dict and _STRINGS.issuperset(map(type, attributes.values())):
        return attributes
    return {str(k): _tag(v) for k, v in attributes.items()}


def agent_view(
    *,
    id: str,
    name: str,
    owner_id: str,
    purpose: str,
    risk_tier: str,
    status: str,
    attributes: Mapping[str, Any],
    expires_at: int | None,
    roles: Iterable[str],
    supervisors: Iterable[str],
    recertify_by: int | None = None,
) -> AgentView:
    """The view of an agent: its Cedar entity (status, tier, owner, purpose and name as
    attributes, its risk — 0 here, monitoring sets it per request; its roles as parents; its
    registry attributes as tags) and its facts. The entity's parts that many agents have
    alike (status, tier and owner; roles; tags) are shared, only purpose and name are its own
    (:attr:`AgentView.entity` joins them)."""
    held = _roles(tuple(roles))
    status, risk_tier, owner_id, head = _head(str(status), str(risk_tier), str(owner_id))
    liveness = _undated(status) if expires_at is None else Liveness(status, expires_at)
    return AgentView(id, status, risk_tier, owner_id, _supervisors(tuple(supervisors)),
                     held.names, expires_at, held.parents, liveness,
                     _schedule(attributes.get("schedule")), recertify_by, head,
                     _text({"purpose": purpose, "name": name})[1:-1], held.listed,
                     sys.intern(_text(_tags(attributes))))  # fmt: skip


def _schedule(value: Any) -> schedules.Schedule | None:
    if not isinstance(value, str):
        return None
    try:
        return schedules.parse(value)
    except ValueError:  # refused when set (tether.agents.edits); an older row: no schedule
        return None


def with_risk(entity: str, score: int, level: str) -> str:
    """The agent's entity text with its current risk (``principal.risk``); the view's own has
    :data:`NO_RISK`."""
    data = orjson.loads(entity)
    data["attrs"]["risk"] = {"score": score, "level": level}
    return orjson.dumps(data).decode()


def without_roles(view: AgentView, roles: Collection[str]) -> AgentView:
    """The view as it would be without ``roles`` (their parents gone from its entity): what a
    right-sizing proposal that drops them is simulated with (tether.governance)."""
    keep = _roles(tuple(view.roles.difference(roles)))
    return replace(view, roles=keep.names, parents=keep.parents, _parents=keep.listed)
