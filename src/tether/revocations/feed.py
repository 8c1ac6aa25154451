"""The revocation feed (API.md "Revocation feed"), read from this worker's runtime snapshot.

A resource server that verifies Tether's tokens offline learns here what it must stop
honouring before the tokens expire: revoked token ids (with their ``exp``, after which the
signature check refuses them anyway), agents that are not active (killed, suspended,
retired, expired) or frozen, whether everything is frozen, and the revoked ids of what other
domains register as sources (secret leases). Ids only, never tokens.

The feed is a projection of the change feed (``runtime_changes``) through the snapshot every
worker already holds: an item says the *current* state of what changed, so a reader applies
items in order and is right. A cursor is a change-feed position; a reader without one, or
behind what the change feed still holds, gets the whole current state (``reset``) and a cursor
to follow from. Items come only from changes this worker has applied, so nothing the reader
is told can be older than what the worker itself enforces.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tether.agents.authority import NotLive, not_live
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.db import Database
from tether.errors import Forbidden, InvalidCursor
from tether.freeze.store import DatabaseFreezeStore
from tether.freeze.values import Freeze, holding
from tether.policy.entities import AgentView
from tether.policy.runtime import DecisionSnapshot
from tether.principals import Principal
from tether.runtime import changes
from tether.runtime.changes import Kind

FOLLOW_SCOPE = "tether:revocations"
# A resource server allowed to introspect tokens may also follow what would make them inactive.
_FOLLOWER_SCOPES = frozenset({FOLLOW_SCOPE, "tether:introspect"})


def may_follow(principal: Principal, claims: dict[str, Any] | None) -> None:
    """Readers: an admin, or a resource-server credential (an agent token carrying
    ``tether:revocations`` or ``tether:introspect``). Raises :class:`Forbidden`."""
    if principal.kind == "user":
        if principal.is_admin:
            return
        raise Forbidden("only admins and resource-server credentials may read the feed")
    scopes = set(str((claims or {}).get("scope", "")).split())
    if not scopes & _FOLLOWER_SCOPES:
        raise Forbidden(f"a resource-server credential needs scope {FOLLOW_SCOPE}")


def parse_cursor(cursor: str | None, *, field: str = "since") -> int | None:
    if cursor is None or cursor == "":
        return None
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 18:
        raise InvalidCursor(f"{field} must be a cursor this feed returned (digits)", field=field)
    return int(cursor)


class FeedSource(Protocol):
    """A runtime section whose revoked ids the feed names (secret leases): ``item_type`` is
    the items' ``type``, ``kind`` the change-feed kind that announces them."""

    kind: Kind
    item_type: str

    def revoked(self) -> list[tuple[str, int]]:
        """Every revoked, unexpired ``(id, expiry in microseconds)``."""
        ...

    def expiry_of(self, key: str) -> int | None:
        """``key``'s expiry if it is revoked (and unexpired), else None."""
        ...


@dataclass(frozen=True, slots=True)
class Item:
    type: str  # "agent", "token", "all" or a source's (FeedSource.item_type: "lease")
    id: str
    state: str  # agent: active, suspended, revoked, retired, expired, frozen; token: revoked
    time_us: int
    exp: int | None = None  # a token's (or a source's item's) expiry (NumericDate)
    reason: str | None = None  # a freeze's

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "id": self.id, "state": self.state,
                               "time": to_rfc3339(from_micros(self.time_us))}  # fmt: skip
        if self.exp is not None:
            out["exp"] = self.exp
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True, slots=True)
class FeedPage:
    items: list[Item]
    cursor: int
    reset: bool = False
    current: bool = True
    more: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "items": [i.to_json() for i in self.items],
            "next_cursor": str(self.cursor),
            "reset": self.reset,
            "more": self.more,
        }


def agent_state(view: AgentView, freezes: Iterable[Freeze], now_us: int) -> tuple[str, str | None]:
    """What a resource server must know of an agent: its status as the decision path sees it
    (``expired`` once past ``expires_at``), ``frozen`` if it is active but a freeze holds it."""
    why = not_live(view.liveness, now_us)
    if why is NotLive.EXPIRED:
        return "expired", None
    if why is not None:
        return view.status, None
    freeze = holding(freezes, view.owner_id, view.roles, view.risk_tier)
    return ("frozen", freeze.reason) if freeze is not None else ("active", None)


class RevocationFeed:
    def __init__(
        self, db: Database, snapshot: DecisionSnapshot, clock: Clock,
        sources: Sequence[FeedSource] = (),
    ) -> None:  # fmt: skip
        self.db = db
        self.snapshot = snapshot
        self.clock = clock
        self.sources = {source.kind.value: source for source in sources}
        self._freezes = DatabaseFreezeStore()

    def read(self, since: int | None, *, limit: int = 1000) -> FeedPage:
        """Items after ``since`` (at most about ``limit`` changes' worth), or the whole current
        state when ``since`` is None or older than what the change feed still holds."""
        current = self.snapshot.ensure_current()
        upto = self.snapshot.runtime.last_seq  # what this worker has applied
        now_us = to_micros(self.clock.now())
        if since is None or since > upto:  # new, or a cursor this worker cannot place
            return self._everything(upto, now_us, current)
        if since == upto:
            return FeedPage([], upto, current=current)
        with self.db.read() as s:
            found = changes.since(s, since, limit=limit)
            if found.gap:
                return self._everything(upto, now_us, current)
            rows = [r for r in found.rows if r[0] <= upto]
            items = self._items(s, rows, now_us)
        cursor = rows[-1][0] if rows else upto
        more = cursor < upto
        return FeedPage(items, cursor, current=current, more=more)

    # -- projections -----------------------------------------------------------------------
    def _everything(self, upto: int, now_us: int, current: bool) -> FeedPage:
        snap = self.snapshot
        freezes = snap.freezes
        items = [self._all(freezes, now_us)]
        for view in snap.agent_views():  # a copy: a sync may add an agent meanwhile
            state, reason = agent_state(view, freezes, now_us)
            if state != "active":
                items.append(Item("agent", view.id, state, now_us, reason=reason))
        for jti, exp_us in snap.revoked_tokens():
            items.append(Item("token", jti, "revoked", now_us, exp=exp_us // 1_000_000))
        for source in self.sources.values():
            for key, exp_us in source.revoked():
                items.append(Item(source.item_type, key, "revoked", now_us,
                                  exp=exp_us // 1_000_000))  # fmt: skip
        return FeedPage(items, upto, reset=True, current=current)

    @staticmethod
    def _all(freezes: Iterable[Freeze], time_us: int) -> Item:
        everything = next((f for f in freezes if f.scope.everything), None)
        if everything is None:
            return Item("all", "*", "active", time_us)
        return Item("all", "*", "frozen", time_us, reason=everything.reason)

    def _items(self, s: Any, rows: Iterable[tuple[int, str, str, int]], now_us: int) -> list[Item]:
        snap = self.snapshot
        freezes = snap.freezes
        out: list[Item] = []
        seen: set[tuple[str, str]] = set()

        def agent(agent_id: str, time_us: int) -> None:
            view = snap.agents.get(agent_id)
            if view is None or ("agent", agent_id) in seen:
                return
            seen.add(("agent", agent_id))
            state, reason = agent_state(view, freezes, now_us)
            out.append(Item("agent", agent_id, state, time_us, reason=reason))

        for _seq, kind, key, time_us in rows:
            if kind == Kind.AGENT:
                agent(key, time_us)
            elif kind == Kind.TOKEN:
                exp_us = snap.revoked_jtis.get(key)
                if exp_us is not None and ("token", key) not in seen:
                    seen.add(("token", key))
                    out.append(Item("token", key, "revoked", time_us, exp=exp_us // 1_000_000))
            elif (source := self.sources.get(kind)) is not None:
                exp_us = source.expiry_of(key)
                if exp_us is not None and (kind, key) not in seen:
                    seen.add((kind, key))
                    out.append(Item(source.item_type, key, "revoked", time_us,
                                    exp=exp_us // 1_000_000))  # fmt: skip
            elif kind == Kind.FREEZE:
                freeze = self._freezes.get(s, key)
                if freeze is None:
                    continue
                if freeze.scope.everything:
                    out.append(self._all(freezes, time_us))
                    continue
                for view in snap.agent_views():
                    if freeze.scope.holds(view.owner_id, view.roles, view.risk_tier):
                        agent(view.id, time_us)
        return out
