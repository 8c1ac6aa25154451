"""The runtime snapshot: what the decision path reads, in memory, never from the database.

Agents (status, tier, roles, owner, supervisors and their prebuilt Cedar entity), users,
revoked token ids and the compiled policy version. A full load at start; afterwards the
change feed (``runtime_changes``) is applied incrementally — at once in the process that
made the change, on a NOTIFY from PostgreSQL, and by a poll every ``poll_seconds`` as the
safety net. Each view is immutable and replaced whole, so readers never see half a change.

A worker that has not confirmed it is current for ``stale_seconds`` is *stale*: the decision
path then denies everything (fail closed) and ``/readyz`` says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from prometheus_client import Counter, Gauge
from sqlalchemy import delete, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from tether.agents.models import AgentRoleRow, AgentRow, AgentSupervisorRow
from tether.clock import Clock, to_micros
from tether.credentials.models import AccessTokenRow
from tether.db import Database
from tether.maintenance import Task
from tether.policy.engine import CompiledPolicies
from tether.policy.entities import AgentView, agent_view
from tether.runtime.changes import Kind, channel
from tether.runtime.models import ChangeRow
from tether.users.models import UserRow

log = logging.getLogger("tether.runtime")
SYNCS = Counter("tether_runtime_syncs", "Change-feed syncs applied", ["result"])
LAG = Gauge("tether_runtime_seconds_since_sync", "Seconds since this worker was last current")
_FULL_RELOAD_AT = 2_000
_FEED_KEEP_US = 3600 * 1_000_000  # more changed agents than this in one sync: reload them all


@dataclass(frozen=True, slots=True)
class UserView:
    id: str
    username: str
    role: str


def view_of_row(row: Any, roles: Iterable[str], supervisors: Iterable[str]) -> AgentView:
    """The decision path's view of an agent from its registry row (the columns it reads)."""
    return agent_view(
        id=row.id, name=row.name, owner_id=row.owner_id, purpose=row.purpose,
        risk_tier=row.risk_tier, status=row.status,
        attributes=orjson.loads(row.attributes or "{}"), expires_at=row.expires_at,
        roles=roles, supervisors=supervisors,
    )  # fmt: skip


class Runtime:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        load_policies: Callable[[Session], CompiledPolicies],
        *,
        poll_seconds: float = 0.25,
        stale_seconds: float = 5.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self._load_policies = load_policies
        self.poll_seconds = poll_seconds
        self.stale_seconds = stale_seconds
        self.agents: dict[str, AgentView] = {}
        self.users: dict[str, UserView] = {}
        self.revoked_jtis: dict[str, int] = {}
        self.user_tokens: dict[str, tuple[str, int | None]] = {}  # digest -> (user, expiry)
        self.policies: CompiledPolicies | None = None
        self.last_seq = 0
        self._synced_at = 0.0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        db.after_change.append(self.sync)

    # -- state -----------------------------------------------------------------------------
    def current(self) -> bool:
        return self.policies is not None and time.monotonic() - self._synced_at < self.stale_seconds

    def fresh(self) -> bool:
        """Synced within a few poll intervals (the poller is keeping up): no I/O needed."""
        return (
            self.policies is not None and time.monotonic() - self._synced_at < self.poll_seconds * 4
        )

    def ensure_current(self) -> bool:
        """Current, or catch up now (the poller may be lagging or not running): one cheap
        query at most once per poll interval; False if the database cannot be reached."""
        if self.fresh():
            return True
        try:
            self.sync()
        except Exception:
            SYNCS.labels("failed").inc()
            log.warning("runtime sync failed", exc_info=True)
        return self.current()

    def compiled(self) -> CompiledPolicies:
        if self.policies is None:
            self.load()
        assert self.policies is not None
        return self.policies

    def load(self) -> None:
        """Everything from scratch (start-up, or after a large batch of changes)."""
        with self._lock, self.db.read() as s:
            seq = s.scalar(select(func.max(ChangeRow.seq))) or 0
            self.agents = self._agents(s, None)
            self.users = {
                u.id: UserView(u.id, u.username, u.role) for u in s.scalars(select(UserRow))
            }
            now_us = to_micros(self.clock.now())
            self.revoked_jtis = dict(s.execute(
                select(AccessTokenRow.jti, AccessTokenRow.expires_at)
                .where(AccessTokenRow.revoked_at.is_not(None), AccessTokenRow.expires_at > now_us)
            ).all())  # fmt: skip
            self.user_tokens = {}
            self.policies = self._load_policies(s)
            self.last_seq = seq
            self._synced_at = time.monotonic()

    def sync(self) -> None:
        """Apply the change feed since the last sync; thread-safe, cheap when nothing moved."""
        if self.policies is None:
            self.load()
            return
        with self._lock, self.db.read() as s:
            rows = s.execute(
                select(ChangeRow.seq, ChangeRow.kind, ChangeRow.key)
                .where(ChangeRow.seq > self.last_seq).order_by(ChangeRow.seq).limit(10_000)
            ).all()  # fmt: skip
            oldest = s.scalar(select(func.min(ChangeRow.seq)))
            if oldest is not None and oldest > self.last_seq + 1 and self.last_seq:
                rows = []  # changes we never saw were purged: start over
                gap = True
            else:
                gap = False
            if rows:
                self._apply(s, rows)
                self.last_seq = rows[-1][0]
            self._synced_at = time.monotonic()
        if gap:
            self.load()
        SYNCS.labels("changes" if rows else "idle").inc()

    def _apply(self, s: Session, rows: Sequence[tuple[int, str, str]]) -> None:
        kinds: dict[str, set[str]] = {}
        for _, kind, key in rows:
            kinds.setdefault(kind, set()).add(key)
        agent_ids = kinds.get(Kind.AGENT, set())
        if len(agent_ids) > _FULL_RELOAD_AT:
            self.agents = self._agents(s, None)
        elif agent_ids:
            fresh = self._agents(s, agent_ids)
            merged = dict(self.agents)
            merged.update(fresh)
            self.agents = merged
        if Kind.USER in kinds:
            self.users = {
                u.id: UserView(u.id, u.username, u.role) for u in s.scalars(select(UserRow))
            }
            self.user_tokens = {}
        if jtis := kinds.get(Kind.TOKEN):
            found = s.execute(
                select(AccessTokenRow.jti, AccessTokenRow.expires_at)
                .where(AccessTokenRow.jti.in_(jtis), AccessTokenRow.revoked_at.is_not(None))
            ).all()  # fmt: skip
            merged_jtis = dict(self.revoked_jtis)
            merged_jtis.update(found)
            self.revoked_jtis = merged_jtis
        if Kind.POLICY in kinds:
            self.policies = self._load_policies(s)

    @staticmethod
    def _agents(s: Session, ids: set[str] | None) -> dict[str, AgentView]:
        agents = select(AgentRow)
        roles = select(AgentRoleRow.agent_id, AgentRoleRow.role)
        sups = select(AgentSupervisorRow.agent_id, AgentSupervisorRow.user_id)
        if ids is not None:
            agents = agents.where(AgentRow.id.in_(ids))
            roles = roles.where(AgentRoleRow.agent_id.in_(ids))
            sups = sups.where(AgentSupervisorRow.agent_id.in_(ids))
        by_roles: dict[str, list[str]] = {}
        for agent_id, role in s.execute(roles):
            by_roles.setdefault(agent_id, []).append(role)
        by_sups: dict[str, list[str]] = {}
        for agent_id, user_id in s.execute(sups):
            by_sups.setdefault(agent_id, []).append(user_id)
        return {
            row.id: view_of_row(row, by_roles.get(row.id, ()), by_sups.get(row.id, ()))
            for row in s.scalars(agents)
        }

    def maintenance(self) -> list[Task]:
        return [Task("runtime.purge", self.purge)]

    def purge(self) -> None:
        """Maintenance: forget revoked token ids past their expiry (they fail verification
        anyway) and change-feed rows an hour old (every worker has long applied them; one
        that was away that long reloads everything when it finds a gap)."""
        now_us = to_micros(self.clock.now())
        self.revoked_jtis = {j: exp for j, exp in self.revoked_jtis.items() if exp > now_us}
        with self.db.write() as s:
            s.execute(delete(ChangeRow).where(ChangeRow.time < now_us - _FEED_KEEP_US,
                                              ChangeRow.seq < self.last_seq))  # fmt: skip

    # -- background ------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        poller = threading.Thread(target=self._poll, name="tether-runtime-poll", daemon=True)
        self._threads.append(poller)
        if self.db.dialect == "postgresql":
            listener = threading.Thread(target=self._listen, name="tether-runtime-listen",
                                        daemon=True)  # fmt: skip
            self._threads.append(listener)
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            # The listener notices within its notifies() timeout; it holds nothing, so it is
            # not waited for (a daemon thread; shutdown should not take a second).
            if thread.name != "tether-runtime-listen":
                thread.join(timeout=5)
        self._threads = []

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except Exception:  # the database may be away; we go stale and fail closed
                SYNCS.labels("failed").inc()
                log.warning("runtime sync failed", exc_info=True)
            LAG.set(time.monotonic() - self._synced_at)

    def _listen(self) -> None:
        url = make_url(self.db.url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        name = channel(self.db.schema)
        while not self._stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f'LISTEN "{name}"')
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._wake.set()
            except psycopg.Error:
                log.warning("runtime LISTEN connection lost; polling meanwhile", exc_info=True)
                self._stop.wait(1.0)
