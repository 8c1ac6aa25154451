"""The monitor: behaviour windows fed from the decision path, risk scored by rule, the
configured response taken within the decision that crossed the threshold.

**On the hot path** (:meth:`Monitor.before`, :meth:`Monitor.after`; no I/O, a lock held for
a few dict operations): each recorded decision counts in its agent's window; the risk is
scored from the merged window; a response is returned when the agent reached a level not
yet acted on. ``principal.risk`` and ``context.session`` are read from memory
(:meth:`Monitor.principal_entity`, :meth:`Monitor.session_context`).

**Off the hot path**:

- :meth:`Monitor.respond` (before the decision that triggered it is answered) records the
  response under the write lock, where the agent's risk row decides whether another worker
  or node already did (so a spike seen by two nodes is acted on once): the row, an
  ``agent.risk_raised`` ledger event naming the rules and their evidence, a change-feed key
  so every worker knows of a step-up at once; for ``suspend``, the agent is suspended
  (reversible by a human).
- :meth:`Monitor.sync` (every ``sync_seconds`` on every worker) publishes this worker's
  counts, newly seen pairs and session touches, and merges the other workers' and nodes'.
  One row a sync (``monitor_syncs``): counts, newly seen pairs, session touches. A session's
  new *data label* is also a change-feed key: the other workers read it at once (NOTIFY, or
  the FIFO wake-up on one host), not at their next sync; a new tool comes with the merge.
- :class:`MonitorSection` is the runtime section: agents' risk rows and sessions' touches,
  loaded at start and applied as they change.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
from prometheus_client import Counter
from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session

from tether.agents.service import AgentService
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.db import Database
from tether.errors import InvalidTransition, ValidationFailed
from tether.maintenance import Task
from tether.monitor.models import AgentRiskRow, MonitorSyncRow, MonitorTouchRow
from tether.monitor.rules import LOW, SIGNALS, MonitorConfig, Risk, Rules, signals_dict
from tether.monitor.windows import COUNTS, AgentWindow, SessionHistory, pair_digest
from tether.policy.entities import AgentView, with_risk
from tether.policy.values import Ask, Decision, Effect
from tether.principals import SYSTEM, Principal
from tether.runtime import changes
from tether.runtime.changes import Kind

log = logging.getLogger("tether.monitor")
_SYNCS = cast(Table, MonitorSyncRow.__table__)
_TOUCHES = cast(Table, MonitorTouchRow.__table__)
_ANNOUNCED_US = 300_000_000  # how far back a worker looks for the touches just announced
SYNC_SHARE = 0.01  # of a worker's time, at most, spent syncing (Monitor.next_sync)
_SLICE = 500  # entries folded in between two looks at the event loop (Monitor.sync_async)


@dataclass(frozen=True, slots=True)
class _News:
    """What a sync publishes: this worker's changed counts (agent, bucket, *counts), new
    pairs and touches."""

    now_us: int
    rows: list[tuple[Any, ...]]
    pairs: list[tuple[str, str, str, str]]
    touches: list[tuple[str, str, str, str, int]]


RESPONSES = Counter("tether_monitor_responses", "Automatic responses to an agent's risk",
                    ["action"])  # fmt: skip
STEP_UP = "tether.risk-step-up"
SUSPENDED = "tether.risk-suspended"
_SECRET_ACTIONS = frozenset({"secret.read", "secret.lease"})
_MAX_LABELS = 32  # labels taken from one resource
_NO_RATE = (0.0, 0.0)
_SYNC_SLACK_US = 2_000_000  # rows re-read across a sync's boundary (clocks differ a little)


@dataclass(frozen=True, slots=True)
class RiskState:
    """An agent's risk row as every worker holds it."""

    rank: int
    level: str
    score: int
    step_up: bool
    raised_at: int
    evidence: dict[str, Any]
    cleared_at: int | None


@dataclass(frozen=True, slots=True)
class Response:
    """What the decision that crossed a threshold triggers (recorded by :meth:`respond`)."""

    agent_id: str
    risk: Risk
    signals: dict[str, Any]
    decision: str  # the decision's effect, as Cedar (and the step-up) left it
    action: str
    resource: dict[str, str]


@dataclass(slots=True)
class Watch:
    """What :meth:`Monitor.before` found, for :meth:`Monitor.after` (not frozen: built on
    every decision, and a frozen dataclass's constructor costs twice as much)."""

    window: AgentWindow
    off_schedule: bool
    depth: int
    session: dict[str, Any] | None  # context.session as Cedar is given it (None: not read)
    entity: str  # the principal's entity, with its risk
    risk: Risk  # that risk (principal.risk)

    def seen(self) -> dict[str, Any]:
        """What the decision's record keeps of it (for the console and simulations): the
        session Cedar was given and the risk as scored before it (given to Cedar when a
        policy reads it), not what this request made of the risk."""
        risk = self.risk
        out: dict[str, Any] = {} if self.session is None else {"session": self.session}
        if risk.score:
            out["risk"] = {"score": risk.score, "level": risk.level}
        return out


class Monitor:
    def __init__(self, config: MonitorConfig, db: Database, ledger: Ledger, clock: Clock,
                 agents: AgentService) -> None:  # fmt: skip
        self.config = config
        self.enabled = config.enabled
        self.rules = Rules(config.rules, config.thresholds)
        self._quick = self.rules.quick(self._rate)
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.agents = agents
        self.worker = f"wrk_{secrets.token_hex(8)}"
        self._bucket_us = config.bucket_seconds * 1_000_000
        self._alpha = config.baseline_alpha
        self._learn = config.learn_buckets
        self._pairs_cap = config.pairs_per_agent
        self._width = config.window_seconds // config.bucket_seconds
        self._session_us = config.session_window_seconds * 1_000_000
        self._sync_ceiling = max(config.sync_seconds, config.bucket_seconds / 2)
        self._lock = threading.Lock()
        self.windows: dict[str, AgentWindow] = {}
        self._bucket = -1  # the latest bucket's number, one int shared by the windows in it
        self.sessions: dict[str, SessionHistory] = {}
        # Every agent's known (action, resource) pairs in one set (pair_digest), each window
        # counting its own: one object for the collector to walk, not one per agent
        self._pairs: set[int] = set()
        self.states: dict[str, RiskState] = {}
        self._entities: dict[str, tuple[str, tuple[int, str], str]] = {}
        # What this worker has to publish at its next sync
        self._dirty: set[str] = set()  # agents whose current counts changed (AgentWindow.dirty)
        self._rows: list[tuple[Any, ...]] = []  # counts of buckets left: agent, bucket, counts
        self._new_pairs: list[tuple[str, str, str, str]] = []  # agent, action, type, id
        self._new_touches: list[tuple[str, str, str, str, int]] = []
        self._workers: dict[str, int] = {}  # the other workers' ids, numbered (AgentWindow.theirs)
        self._read_until = 0
        self._read_ids: set[int] = set()  # the other workers' syncs already merged
        self.section = MonitorSection(self)

    # -- read by every evaluation ------------------------------------------------------------
    def principal_entity(self, view: AgentView) -> str:
        """The agent's Cedar entity with its current risk (``principal.risk``)."""
        w = self.windows.get(view.id)
        if w is None or w.risk.score == 0:
            return view.entity
        return self._entity(view, w.risk)

    def _entity(self, view: AgentView, risk: Risk) -> str:
        cached = self._entities.get(view.id)
        if (
            cached is not None
            and cached[0] is view.entity
            and cached[1] == (risk.score, risk.level)
        ):
            return cached[2]
        text = with_risk(view.entity, risk.score, risk.level)
        self._entities[view.id] = (view.entity, (risk.score, risk.level), text)
        return text

    def session_context(self, ask: Ask, now_us: int) -> dict[str, Any]:
        """``context.session``: the id, and the labels and tools touched within the window by
        the chain's root (and by the explicit ``context.session_id``, when given)."""
        chain = ask.chain
        root = chain[0] if chain else ask.subject
        if "session_id" not in ask.context:  # the common case, in a few dict look-ups
            hist = self.sessions.get(root)
            if hist is None:
                return {"id": root, "labels": [], "tools": []}
            labels, tools = hist.seen(now_us, self._session_us)
            return {"id": root, "labels": labels, "tools": tools}
        keys = session_keys(ask)
        merged_labels: set[str] = set()
        merged_tools: set[str] = set()
        for key in keys:
            hist = self.sessions.get(key)
            if hist is not None:
                seen_labels, seen_tools = hist.seen(now_us, self._session_us)
                merged_labels.update(seen_labels)
                merged_tools.update(seen_tools)
        return {"id": keys[-1], "labels": sorted(merged_labels), "tools": sorted(merged_tools)}

    # -- the hot path ------------------------------------------------------------------------
    def before(self, ask: Ask, view: AgentView, now_us: int, *, session: bool = True,
               risk: bool = True) -> Watch:  # fmt: skip
        """Count the request in its agent's window (before Cedar is asked); ``session``,
        ``risk``: whether the policies read ``context.session`` (else it is not built) and
        ``principal.risk`` (else the agent's own entity is given)."""
        subject = ask.subject
        b = now_us // self._bucket_us
        w = self.windows.get(subject)
        if w is None:  # keyed by the runtime's own string of the id, not one more per agent
            w = self.windows.setdefault(view.id, AgentWindow())
        if b != w.bucket:
            with self._lock:
                self._roll(subject, w, b)
        w.req += 1
        pair = hash(f"{subject}\x00{ask.action}\x00{ask.resource_type}\x00{ask.resource_id}") >> 4
        pairs = self._pairs  # pair_digest, inlined
        if pair not in pairs and w.known < self._pairs_cap:
            pairs.add(pair)
            w.known += 1
            self._new_pairs.append((subject, ask.action, ask.resource_type, ask.resource_id))
            if w.active >= self._learn:
                w.first += 1
        if not w.dirty:
            w.dirty = True
            self._dirty.add(subject)
        schedule = view.schedule
        scored = w.risk
        return Watch(
            w, schedule is not None and not schedule.allows(now_us),
            len(ask.chain) - 1 if ask.chain else 0,
            self.session_context(ask, now_us) if session else None,
            view.entity if scored.score == 0 or not risk else self._entity(view, scored), scored,
        )  # fmt: skip

    def after(self, ask: Ask, decision: Decision, watch: Watch, now_us: int
              ) -> tuple[Decision, Response | None]:  # fmt: skip
        """Count the answer, score the window, and apply the agent's response: a step-up
        makes an allow an approval checkpoint; a new suspension a deny."""
        w = watch.window
        effect = decision.effect
        if effect is Effect.DENY:
            w.deny += 1
        elif effect is Effect.APPROVAL_REQUIRED:
            w.approval += 1
        elif ask.action in _SECRET_ACTIONS:
            w.secret += 1
        flags = w.flags
        if flags[0] is not watch.off_schedule or flags[1] != watch.depth:
            w.flags = flags = (watch.off_schedule, watch.depth)
        if self._quick(w, flags):  # a rule holds
            signals = self._signals(w, flags)
            risk = self.rules.score(signals)
        else:
            signals, risk = (), LOW
        w.risk = risk
        state = self.states.get(ask.subject)
        response = None
        if risk.rank and risk.rank > w.pending and _new_level(state, risk, now_us, self.config):
            with self._lock:
                if risk.rank > w.pending:
                    w.pending = risk.rank
                    response = Response(
                        ask.subject, risk, dict(signals_dict(signals)), effect.value,
                        ask.action, {"type": ask.resource_type, "id": ask.resource_id},
                    )  # fmt: skip
        allowed = effect is Effect.ALLOW
        if allowed and ("labels" in ask.properties or ask.resource_type == "Tool"):
            self._touched(ask, now_us)
        if response is not None and risk.action == "suspend":
            return _suspended(decision), response
        stepped = (state is not None and state.step_up) or (
            response is not None and risk.action == "require_approval"
        )
        if allowed and stepped:
            return _stepped_up(decision), response
        return decision, response

    def _rate(self, w: AgentWindow, requests: int) -> tuple[float, float]:
        """(rate_ratio, rate_z) as :meth:`_signals` gives them."""
        return w.rate(requests, self._width, self._learn) if w.active >= self._learn else _NO_RATE

    def _signals(self, w: AgentWindow, flags: tuple[bool, int]) -> tuple[float | bool, ...]:
        """The signals (ordered as SIGNALS) of the window: its other counts (``rest``) and
        this worker's in the current bucket, summed in one step."""
        c = w.rest
        req = c[0] + w.req
        denies = c[1] + w.deny
        ratio, z = self._rate(w, req)
        return (req, ratio, z, denies, denies / req if req else 0.0, c[2] + w.first,
                c[3] + w.secret, c[4] + w.approval, flags[0], flags[1])  # fmt: skip

    def _roll(self, agent: str, w: AgentWindow, b: int) -> None:
        """Move ``w`` to bucket ``b`` (under the lock); the counts of the bucket it left, when
        not published yet, go out with the next sync."""
        left = w.roll(self._shared(b), self._width, self._alpha)
        if left is not None:
            self._rows.append((agent, *left))

    def _shared(self, b: int) -> int:
        """One int object for every window in bucket ``b`` (32 B each otherwise)."""
        if b == self._bucket:
            return self._bucket
        self._bucket = b
        return b

    def current_risk(self, agent_id: str) -> tuple[Risk, dict[str, Any]]:
        """The agent's risk now, from its merged window (what a decision now would see,
        every worker's and node's counts as last merged; its latest request's schedule and
        delegation depth), and the signals it was scored from."""
        now_us = to_micros(self.clock.now())
        with self._lock:
            w = self.windows.get(agent_id)
            if w is None:
                return LOW, {}
            b = now_us // self._bucket_us
            if b != w.bucket:
                self._roll(agent_id, w, b)
            signals = self._signals(w, w.flags)
        return self.rules.score(signals), dict(signals_dict(signals))

    def _touched(self, ask: Ask, now_us: int) -> None:
        labels = ask.properties.get("labels")
        if labels is None and ask.resource_type == "Tool" and "session_id" not in ask.context:
            chain = ask.chain
            hist = self.sessions.get(chain[0] if chain else ask.subject)
            if hist is not None and ask.resource_id in hist.tools:
                hist.touch("tool", ask.resource_id, now_us)
                return
        touched: list[tuple[str, str]] = []
        if isinstance(labels, list):
            touched += [("label", x[:200]) for x in labels[:_MAX_LABELS]
                        if isinstance(x, str) and x and "\x00" not in x]  # fmt: skip
        if ask.resource_type == "Tool" and "\x00" not in ask.resource_id:
            touched.append(("tool", ask.resource_id[:200]))
        if not touched:
            return
        keys = session_keys(ask)
        if len(keys) == 1 and (hist := self.sessions.get(keys[0])) is not None:
            books = {"label": hist.labels, "tool": hist.tools}
            if all(value in books[kind] for kind, value in touched):  # known: times only
                for kind, value in touched:
                    hist.touch(kind, value, now_us)
                return
        with self._lock:
            for key in keys:
                hist = self.sessions.get(key)
                if hist is None:
                    hist = self.sessions[key] = SessionHistory()
                for kind, value in touched:
                    if hist.touch(kind, value, now_us):
                        self._new_touches.append((key, kind, value, ask.subject, now_us))

    # -- responses ---------------------------------------------------------------------------
    def respond(self, response: Response) -> bool:
        """Record the response, unless another worker or node already acted on this level:
        the risk row, the ledger event, the change key; then suspend when asked. True when
        this call acted."""
        now = self.clock.now()
        now_us = to_micros(now)
        risk = response.risk
        acted = False
        known: RiskState | None = None
        try:
            with self.db.write() as s:
                row = s.get(AgentRiskRow, response.agent_id)
                state = known = _state(row) if row is not None else None
                if _new_level(state, risk, now_us, self.config):
                    evidence = {**risk.to_json(), "signals": response.signals,
                                "trigger": {"action": response.action,
                                            "resource": response.resource,
                                            "decision": response.decision}}  # fmt: skip
                    step_up = risk.action == "require_approval" or bool(row and row.step_up)
                    event = self.ledger.append(s, [NewEvent(
                        EventType.AGENT_RISK_RAISED, "system", agent_id=response.agent_id,
                        action=response.action, resource=response.resource,
                        details={"score": risk.score, "level": risk.level,
                                 "response": risk.action, "step_up": step_up,
                                 "rules": [h.to_json() for h in risk.hits],
                                 "signals": response.signals},
                    )], now=now)[0]  # fmt: skip
                    if row is None:
                        row = AgentRiskRow(agent_id=response.agent_id)
                        s.add(row)
                    row.level, row.rank, row.score = risk.level, risk.rank, risk.score
                    row.action, row.step_up, row.raised_at = risk.action, step_up, now_us
                    row.event_id, row.evidence = event.id, orjson.dumps(evidence).decode()
                    changes.record(s, Kind.MONITOR, [f"a:{response.agent_id}"], now_us=now_us)
                    acted, known = True, _state(row)
            if acted and risk.action == "suspend":
                rules = ", ".join(h.rule for h in risk.hits)
                try:
                    self.agents.suspend(SYSTEM, response.agent_id, reason=(
                        f"automatic: risk {risk.score} ({risk.level}) by {rules}; a human "
                        f"resumes it with tether agents resume {response.agent_id}"))  # fmt: skip
                except InvalidTransition:  # suspended, killed or retired meanwhile: it stops
                    log.info("agent %s already stopped; not suspended again", response.agent_id)
        except Exception:
            log.exception("response to agent %s's risk not recorded", response.agent_id)
            raise
        finally:
            # What the database holds now (acted on here or by another node) gates this
            # worker's next decisions at once, before the change feed brings it.
            with self._lock:
                if known is not None:
                    self.states[response.agent_id] = known
                w = self.windows.get(response.agent_id)
                if w is not None and w.pending == risk.rank:
                    w.pending = 0
        if acted:
            RESPONSES.labels(risk.action or "none").inc()
        return acted

    def clear(self, actor: Principal, agent_id: str, *, note: str | None) -> dict[str, Any]:
        """A human clears the agent's risk: no more step-up, its windows start again (every
        worker's, through the change feed), and the next rise is acted on afresh."""
        if note is not None and len(note) > 500:
            raise ValidationFailed("note is at most 500 characters", field="note")
        now = self.clock.now()
        now_us = to_micros(now)
        with self.db.write() as s:
            self.agents.authorized_row(s, actor, agent_id, "operate")
            row = s.get(AgentRiskRow, agent_id)
            before = _state(row) if row is not None else None
            if row is None:
                row = AgentRiskRow(agent_id=agent_id, level="low", rank=0, score=0,
                                   action=None, step_up=False, raised_at=now_us,
                                   event_id=None, evidence="{}")  # fmt: skip
                s.add(row)
            row.level, row.rank, row.score, row.step_up = "low", 0, 0, False
            row.cleared_at, row.cleared_by = now_us, actor.ref
            self.ledger.append(s, [NewEvent(
                EventType.AGENT_RISK_CLEARED, actor.ref, agent_id=agent_id,
                details={"note": note, "was": {"level": before.level, "score": before.score,
                                               "step_up": before.step_up} if before else None},
            )], now=now)  # fmt: skip
            changes.record(s, Kind.MONITOR, [f"a:{agent_id}"], now_us=now_us)
        return self.describe(agent_id)

    def describe(self, agent_id: str) -> dict[str, Any]:
        """The agent's risk as this worker sees it: the live score and its explanation, what
        was last raised, whether it is stepped up, and its baseline."""
        live, signals = self.current_risk(agent_id)
        w = self.windows.get(agent_id)
        state = self.states.get(agent_id)
        return {
            "agent_id": agent_id,
            "score": live.score,
            "level": live.level,
            "rules": [h.to_json() for h in live.hits],
            "signals": signals,
            "step_up": bool(state and state.step_up),
            "raised": None if state is None or state.rank == 0 else {
                "level": state.level, "score": state.score,
                "at": to_rfc3339(from_micros(state.raised_at)),
                "rules": state.evidence.get("rules", []),
                "trigger": state.evidence.get("trigger"),
            },
            "cleared_at": to_rfc3339(from_micros(state.cleared_at))
            if state and state.cleared_at else None,
            "baseline": w.to_json() if w is not None else None,
        }  # fmt: skip

    def risk_of(self, agent_id: str) -> dict[str, Any]:
        """``{score, level, step_up}`` for the registry's views."""
        risk, _ = self.current_risk(agent_id)
        state = self.states.get(agent_id)
        return {"score": risk.score, "level": risk.level,
                "step_up": bool(state and state.step_up)}  # fmt: skip

    # -- merging across workers and nodes ----------------------------------------------------
    def next_sync(self, cpu: float) -> float:
        """Seconds until the next sync, given the CPU time the last one took:
        ``sync_seconds``, or longer when syncs are costly — when thousands of agents are busy
        each builds, writes, reads and folds in all their counts — so that syncing takes
        about 1 % of the worker's CPU (:data:`SYNC_SHARE`) and the decisions keep the rest;
        never more than half a bucket, so that the other workers' counts are at most that
        late in a window of whole buckets. (CPU time, not wall time: waiting on the database
        costs the decisions nothing.)"""
        return min(max(self.config.sync_seconds, cpu / SYNC_SHARE), self._sync_ceiling)

    def sync(self) -> float:
        """Publish this worker's news and read the others' (a few statements, off the hot
        path), all in the calling thread; the CPU time it took, for :meth:`next_sync`."""
        if not self.enabled:
            return 0.0
        started = time.thread_time()
        news = self._take()
        synced = self._exchange(news)
        for _ in self._absorb(synced, news.now_us):
            pass
        return time.thread_time() - started

    async def sync_async(self) -> float:
        """:meth:`sync` as a server's worker runs it: what is pure Python (this worker's
        counts gathered, the others' folded in) on the event loop, in slices between the
        requests, and only the statements in a thread — a thread busy with Python for tens of
        milliseconds takes the GIL from the event loop every switch interval, and a loaded
        worker answered ~15 % fewer decisions while it did (bench/README.md, "Monitoring").
        The CPU time the loop's share took (the thread's is waiting on the database)."""
        if not self.enabled:
            return 0.0
        cpu = time.thread_time()
        news = self._take()
        cpu = time.thread_time() - cpu
        synced = await asyncio.to_thread(self._exchange, news)
        steps = self._absorb(synced, news.now_us)
        while True:
            started = time.thread_time()
            done = next(steps, None) is None
            cpu += time.thread_time() - started
            if done:
                return cpu
            await asyncio.sleep(0)  # the requests waiting go first

    def _take(self) -> _News:
        """What this worker has to publish, taken (under the lock)."""
        now_us = to_micros(self.clock.now())
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            rows, self._rows = self._rows, []  # the buckets left: older, first
            for agent in dirty:
                w = self.windows.get(agent)
                if w is not None and w.dirty:
                    w.dirty = False
                    rows.append((agent, w.bucket, *w.counts()))
            pairs, self._new_pairs = self._new_pairs, []
            touches, self._new_touches = self._new_touches, []
        return _News(now_us, rows, pairs, touches)

    def _exchange(self, news: _News) -> list[tuple[str, dict[str, Any]]]:
        """Publish ``news`` and read the other workers' syncs not read yet; on a failure,
        ``news`` goes out with the next sync (counts are absolute: nothing doubles)."""
        try:
            if news.rows or news.pairs or news.touches:
                self._publish(news.rows, news.pairs, news.touches, news.now_us)
            return self._read(news.now_us)
        except Exception:
            with self._lock:
                self._rows[:0] = news.rows  # before any taken since: the latest counts win
                self._new_pairs[:0] = news.pairs
                self._new_touches[:0] = news.touches
            raise

    def _publish(
        self, rows: list[tuple[Any, ...]], pairs: Sequence[tuple[str, str, str, str]],
        touches: Sequence[tuple[str, str, str, str, int]], now_us: int,
    ) -> None:  # fmt: skip
        # No ledger event here: on PostgreSQL, not behind the deployment-wide lock.
        with self.db.write(sequenced=False) as s:
            if rows or pairs or touches:
                data = orjson.dumps(
                    {
                        "counts": rows,
                        "pairs": pairs,
                        "touches": [(key, kind, value, at) for key, kind, value, _, at in touches],
                    }
                ).decode()
                s.execute(insert(_SYNCS), {"worker": self.worker, "at": now_us, "data": data})
            if touches:
                s.execute(insert(_TOUCHES), {"worker": self.worker, "at": now_us,
                                             "data": orjson.dumps(touches).decode()})  # fmt: skip
        # A new data label is news every worker must have at once (PII read here, egress
        # asked there): the change feed, in order under the lock, once the touches are in.
        # Tools come with the next merge.
        labelled = sorted({f"s:{t[0]}" for t in touches if t[1] == "label"})
        if labelled:
            with self.db.write() as s:
                changes.record(s, Kind.MONITOR, labelled, now_us=now_us)

    def _read(self, now_us: int) -> list[tuple[str, dict[str, Any]]]:
        """The other workers' syncs since the last read (with some slack for clocks that
        differ), in their order, parsed."""
        c = _SYNCS.c
        with self.db.read() as s:
            # The rows of the last few seconds (clocks differ a little, and on PostgreSQL a
            # row may commit after one numbered later), each read once: their ids first.
            recent = dict(s.execute(
                select(c.id, c.at)
                .where(c.worker != self.worker, c.at >= max(
                    self._read_until - _SYNC_SLACK_US,  # at start: no older than the window
                    now_us - (self._width + 1) * self._bucket_us))
            ).all())  # fmt: skip
            unseen = sorted(set(recent) - self._read_ids)
            synced = s.execute(
                select(c.worker, c.data).where(c.id.in_(unseen))
                .order_by(c.id)  # one worker's syncs in its order: the latest counts win
            ).all() if unseen else []  # fmt: skip
        self._read_until = now_us
        self._read_ids = set(recent)
        return [(worker, orjson.loads(text)) for worker, text in synced]

    def _absorb(self, synced: list[tuple[str, dict[str, Any]]], now_us: int) -> Iterator[None]:
        """The other workers' counts merged into each agent's window, their pairs and touches
        learnt — a slice of :data:`_SLICE` entries at a time (a generator: :meth:`sync_async`
        lets requests in between)."""
        oldest = now_us // self._bucket_us - self._width - 1
        current = now_us // self._bucket_us
        new_pairs: list[list[str]] = []
        new_touches: list[list[Any]] = []
        for worker, data in synced:
            counts = data.get("counts", ())
            for i in range(0, len(counts), _SLICE):
                self._fold_in(worker, counts[i : i + _SLICE], oldest, current)
                yield
            new_pairs += data.get("pairs", ())
            new_touches += data.get("touches", ())
        for i in range(0, max(len(new_pairs), len(new_touches)), _SLICE):
            with self._lock:
                self._learn_pairs(new_pairs[i : i + _SLICE])
                for key, kind, value, at in new_touches[i : i + _SLICE]:
                    self.sessions.setdefault(key, SessionHistory()).touch(kind, value, at)
            yield

    def _fold_in(self, worker: str, entries: Sequence[list[Any]], oldest: int,
                 current: int) -> None:  # fmt: skip
        """One of the other workers' syncs: each (agent, bucket)'s counts, absolute, replace
        what that worker had said of it in the agent's window — moved to the current bucket
        first, as a request here would move it: what left the window is folded into the
        baseline and dropped, so the counts of an agent only the others serve do not pile
        up."""
        windows, width = self.windows, self._width
        with self._lock:  # the decision path's roll moves these: one at a time
            number = self._workers.setdefault(worker, len(self._workers))
            for agent, b, *counts in entries:
                if (not isinstance(agent, str) or not isinstance(b, int) or b < oldest
                        or len(counts) < COUNTS):  # fmt: skip
                    continue
                w = windows.get(agent)
                if w is None:
                    w = windows[agent] = AgentWindow()
                if w.bucket < 0:  # new here: what the others counted before folds at its roll
                    w.bucket = self._shared(current)
                elif w.bucket < current:
                    self._roll(agent, w, current)
                w.merge(number, b, [int(x) for x in counts[:COUNTS]], width)

    def _learn_pairs(self, new_pairs: Sequence[list[str]]) -> None:
        """Pairs other workers saw first: not first-seen here either (under the lock)."""
        for entry in new_pairs:
            if len(entry) != 4:  # agent, action, type, id
                continue
            agent, action, rtype, rid = entry
            w = self.windows.get(agent)
            if w is None:
                w = self.windows[agent] = AgentWindow()
            key = pair_digest(agent, action, rtype, rid)
            if key not in self._pairs and w.known < self._pairs_cap:
                self._pairs.add(key)
                w.known += 1

    # -- maintenance -------------------------------------------------------------------------
    def maintenance(self) -> list[Task]:
        return [Task("monitor.purge", self.purge)] if self.enabled else []

    def purge(self) -> None:
        """Forget exchanged rows nobody needs any more (idempotent on every node)."""
        now_us = to_micros(self.clock.now())
        with self.db.write() as s:
            s.execute(delete(MonitorSyncRow).where(
                MonitorSyncRow.at < now_us - (self._width + 10) * self._bucket_us))  # fmt: skip
            s.execute(delete(MonitorTouchRow).where(MonitorTouchRow.at < now_us - self._session_us))

        with self._lock:
            for key, hist in list(self.sessions.items()):
                hist.seen(now_us, self._session_us)  # forgets what left the window
                if hist.empty:
                    del self.sessions[key]


class MonitorSection:
    """The runtime section: every agent's risk row and the sessions' touches in the window."""

    kinds = frozenset({Kind.MONITOR.value})
    ready = True

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def load(self, s: Session, now_us: int) -> None:
        m = self.monitor
        states = {r.agent_id: _state(r) for r in s.scalars(select(AgentRiskRow))}
        rows = _touches(s, since=now_us - m._session_us)
        with m._lock:
            m.states = states
            # Merged into what this worker holds, not replacing it: a touch not published yet
            # (the next sync writes it) must not be forgotten by a reload.
            for key, kind, value, at in rows:
                m.sessions.setdefault(key, SessionHistory()).touch(kind, value, at)

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        m = self.monitor
        keys = changed[Kind.MONITOR.value]
        agents = [k[2:] for k in keys if k.startswith("a:")]
        sessions = [k[2:] for k in keys if k.startswith("s:")]
        states = ({r.agent_id: _state(r) for r in s.scalars(
            select(AgentRiskRow).where(AgentRiskRow.agent_id.in_(agents)))}
            if agents else {})  # fmt: skip
        wanted = set(sessions)
        rows = [r for r in _touches(s, since=now_us - _ANNOUNCED_US) if r[0] in wanted
                ] if sessions else []  # fmt: skip
        with m._lock:
            for agent, state in states.items():
                before = m.states.get(agent)
                m.states[agent] = state
                cleared = state.cleared_at and (
                    before is None or before.cleared_at != state.cleared_at
                )
                w = m.windows.get(agent)
                if cleared and w is not None:
                    w.clear()
                    m._rows = [r for r in m._rows if r[0] != agent]  # not published: cleared
            for key, kind, value, at in rows:
                m.sessions.setdefault(key, SessionHistory()).touch(kind, value, at)

    def purge(self, now_us: int) -> None:
        del now_us


def _touches(s: Session, *, since: int) -> list[tuple[str, str, str, int]]:
    """The touches the workers published since ``since``: (session, kind, value, at)."""
    out: list[tuple[str, str, str, int]] = []
    for (data,) in s.execute(select(_TOUCHES.c.data).where(_TOUCHES.c.at >= since)):
        for entry in orjson.loads(data):
            if len(entry) == 5:  # session, kind, value, agent, at
                key, kind, value, _, at = entry
                out.append((str(key), str(kind), str(value), int(at)))
    return out


def session_keys(ask: Ask) -> tuple[str, ...]:
    """The chain's root always (an agent cannot leave its history by naming a new session),
    and the explicit ``context.session_id`` when the caller gives one."""
    root = ask.full_chain[0]
    sid = ask.context.get("session_id")
    if isinstance(sid, str) and sid and sid != root and "\x00" not in sid:
        return (root, f"id:{sid[:190]}")
    return (root,)


def _new_level(state: RiskState | None, risk: Risk, now_us: int, cfg: MonitorConfig) -> bool:
    """Whether reaching ``risk`` is news: a higher level than last raised, or the same level
    again after the cool-down."""
    if state is None or state.rank == 0:
        return True
    if risk.rank > state.rank:
        return True
    return now_us - state.raised_at >= cfg.cooldown_seconds * 1_000_000


def _state(row: AgentRiskRow) -> RiskState:
    return RiskState(row.rank, row.level, row.score, bool(row.step_up), row.raised_at,
                     orjson.loads(row.evidence or "{}"), row.cleared_at)  # fmt: skip


def _stepped_up(decision: Decision) -> Decision:
    return Decision(Effect.APPROVAL_REQUIRED, (*decision.reasons, STEP_UP),
                    decision.policy_version, stage=decision.stage,
                    policy_effect=decision.policy_effect)  # fmt: skip


def _suspended(decision: Decision) -> Decision:
    return Decision(Effect.DENY, (*decision.reasons, SUSPENDED), decision.policy_version,
                    error={"code": "agent_not_active", "message": "the agent's risk reached "
                           "the suspension threshold: suspended until a human resumes it"},
                    stage=decision.stage, policy_effect=decision.policy_effect)  # fmt: skip


__all__ = ["SIGNALS", "Monitor", "MonitorSection", "Response", "Watch"]
