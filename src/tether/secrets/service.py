"""The secrets broker: who may keep, see, read and lease what, and the record of each.

- Admins put, delete and rotate; admins and auditors see metadata and leases — never a value.
- An agent reads a value only when policy permits ``secret.read`` on ``Secret::"<name>"``
  (its labels and ``broker_only`` are the resource's attributes; approval checkpoints apply;
  the decision is a ledger event like any other), within its per-worker read rate, and never a
  broker-only secret (the gateway injects those into upstream calls). The read hands out a
  lease, recorded (``secret.read``: name, version, lease) before the value leaves.
- Leases end by expiry, one by one, and all of an agent's at once through the agents' cut-off
  hook (kill, expiry) and suspension and freeze; each revocation is in the change feed, so the
  revocation feed names it and a renewal is refused.
- ``rotate_master_key`` re-wraps every data key under a new secrets master key, a batch per
  write transaction, while reads go on: each version names the key that wraps it.

No value, data key or generated password appears in an event, a log line, a metric or an
error: events carry names, versions and lease ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from prometheus_client import Counter
from sqlalchemy import Table
from sqlalchemy.orm import Session

from tether.agents import authority, directory
from tether.agents.cutoff import Why
from tether.audit.events import EventType, NewEvent
from tether.audit.group import Chain, GroupCommitter
from tether.audit.ledger import Ledger
from tether.clock import Clock, to_micros
from tether.db import Database
from tether.errors import (
    Forbidden,
    LeaseNotFound,
    LeaseRevoked,
    SecretBrokerOnly,
    SecretNotFound,
    SecretUnreadable,
    SecretVersionNotFound,
    ValidationFailed,
)
from tether.freeze.gate import frozen_among
from tether.freeze.values import Scope
from tether.ids import IdPrefix, new_id
from tether.jsonutil import canonical_text
from tether.maintenance import Task
from tether.pagination import Page, decode_cursor, page_of
from tether.policy.decide import DecisionService
from tether.policy.values import AgentCaller, Ask, Decision, Effect
from tether.principals import Principal, Role
from tether.runtime import changes
from tether.secrets import envelope
from tether.secrets.keyring import Keyring
from tether.secrets.limits import ReadLimiter
from tether.secrets.models import LeaseRow, SecretRow, SecretVersionRow
from tether.secrets.runtime import SecretsSection
from tether.secrets.store import DatabaseSecretStore
from tether.secrets.values import (
    MAX_DESCRIPTION,
    Lease,
    SecretInfo,
    SecretMeta,
    SecretValue,
    VersionInfo,
    check_labels,
    check_name,
    check_value,
)

log = logging.getLogger("tether.secrets")
READS = Counter("tether_secret_reads", "Secret reads by outcome", ["outcome"])
ACTION = "secret.read"
RESOURCE_TYPE = "Secret"
_LEASES = cast(Table, LeaseRow.__table__)
_REWRAP_BATCH = 200


Caller = AgentCaller  # who reads: an agent, as a transport authenticated it


class SecretReadDenied(Forbidden):
    """Policy did not permit the read (the decision's reasons and event in the details)."""

    code = "access_denied"


class SecretApprovalRequired(SecretReadDenied):
    """Policy wants a human's approval first: its id in the details; ask again once granted."""

    code = "approval_required"


@dataclass(frozen=True, slots=True)
class SecretInput:
    """A ``PUT``: ``None`` keeps what an existing secret has (or the default for a new one)."""

    value: bytes
    description: str | None = None
    labels: list[str] | None = None
    broker_only: bool | None = None
    lease_seconds: int | None = None


def _admin(actor: Principal, what: str) -> None:
    if not actor.is_admin:
        raise Forbidden(f"only an admin may {what}", required_role="admin")


def _reader(actor: Principal) -> None:
    """Metadata and leases: admins and auditors (never a value)."""
    if actor.is_admin or (actor.kind == "user" and actor.role is Role.AUDITOR):
        return
    raise Forbidden("only admins and auditors see secrets' metadata and leases")


class SecretService:
    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        clock: Clock,
        *,
        root_key: bytes,
        decisions: DecisionService,
        committer: GroupCommitter,
        max_bytes: int,
        versions_kept: int,
        lease_seconds: int,
        lease_max_seconds: int,
        reads_per_minute: int,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.keyring = Keyring(root_key)
        self.decisions = decisions
        self.committer = committer
        self.store = DatabaseSecretStore()
        self.max_bytes = max_bytes
        self.versions_kept = versions_kept
        self.lease_seconds = lease_seconds
        self.lease_max_seconds = lease_max_seconds
        self.limiter = ReadLimiter(reads_per_minute)
        self.section = SecretsSection()  # registered with the runtime by the wiring
        self.monotonic: Callable[[], float] = time.monotonic
        # Called in the transaction that ends leases (a database login's is dropped after it).
        self.on_revoke: list[Callable[[Session, list[LeaseRow]], None]] = []

    # -- management (admins) --------------------------------------------------------------------
    def put(self, actor: Principal, name: str, given: SecretInput) -> tuple[SecretInfo, bool]:
        """A new version of ``name`` (the secret made if it is new or was deleted); True when
        the secret was made. The oldest versions beyond the kept count are dropped."""
        _admin(actor, "put secrets")
        check_name(name)
        value = check_value(given.value, self.max_bytes)
        self._check_text(value)
        labels = check_labels(given.labels) if given.labels is not None else None
        if given.description is not None and len(given.description) > MAX_DESCRIPTION:
            raise ValidationFailed(f"at most {MAX_DESCRIPTION} characters", field="description")
        lease = given.lease_seconds
        if lease is not None and not 1 <= lease <= self.lease_max_seconds:
            raise ValidationFailed(
                f"lease_seconds must be 1-{self.lease_max_seconds} "
                "(TETHER_SECRET_LEASE_MAX_SECONDS)",
                field="lease_seconds",
            )
        now = self.clock.now()
        now_us = to_micros(now)
        with self.db.write() as s:
            row = self.store.secret(s, name, live=False)
            created = row is None or row.deleted_at is not None
            if row is None:
                row = SecretRow(name=name, description=None, labels="[]", broker_only=False,
                                lease_seconds=None, version=0, created_at=now_us,
                                updated_at=now_us, deleted_at=None)  # fmt: skip
                s.add(row)
            elif row.deleted_at is not None:  # put again: a new life, numbering goes on
                row.description, row.labels, row.broker_only = None, "[]", False
                row.lease_seconds, row.created_at, row.deleted_at = None, now_us, None
            if given.description is not None:
                row.description = given.description or None
            if labels is not None:
                row.labels = canonical_text(labels)
            if given.broker_only is not None:
                row.broker_only = given.broker_only
            if lease is not None:
                row.lease_seconds = lease
            row.version += 1
            row.updated_at = now_us
            key_id, key = self.keyring.current(s, now)
            sealed = envelope.encrypt(key_id, key, name, row.version, value)
            s.add(SecretVersionRow(name=name, version=row.version, key_id=key_id,
                                   data_key=sealed.data_key, ciphertext=sealed.ciphertext,
                                   size=len(value), created_by=actor.ref,
                                   created_at=now_us))  # fmt: skip
            s.flush()
            dropped = self.store.drop_versions(s, name, below=row.version - self.versions_kept + 1)
            changes.record(s, changes.Kind.SECRET, name, now_us=now_us)  # every worker's section
            info = SecretInfo.of(row, self._kept(s, name))
            self.ledger.append(s, [NewEvent(
                EventType.SECRET_PUT, actor.ref, action="secret.put",
                resource={"type": RESOURCE_TYPE, "id": name}, outcome="success",
                details={"version": row.version, "created": created, "labels": info.labels,
                         "broker_only": row.broker_only, "key_id": key_id,
                         "versions_dropped": dropped},
            )], now=now)  # fmt: skip
        return info, created

    @staticmethod
    def _check_text(value: bytes) -> None:
        try:
            value.decode()
        except UnicodeDecodeError:
            raise ValidationFailed("the value must be UTF-8 text", field="value") from None

    def _kept(self, s: Session, name: str) -> list[int]:
        return [v.version for v in self.store.versions(s, [name])[name]]

    def page(self, actor: Principal, *, cursor: str | None, limit: int) -> Page[SecretInfo]:
        _reader(actor)
        after = decode_cursor(cursor)
        with self.db.read() as s:
            rows = self.store.page(s, after=after, limit=limit + 1)
            versions = self.store.versions(s, [r.name for r in rows])
            infos = [SecretInfo.of(r, [v.version for v in versions[r.name]]) for r in rows]
        return page_of(infos, limit, key=lambda i: i.name)

    def get(self, actor: Principal, name: str) -> SecretInfo:
        _reader(actor)
        with self.db.read() as s:
            row = self._live(s, name)
            return SecretInfo.of(row, self._kept(s, name))

    def versions(self, actor: Principal, name: str) -> list[VersionInfo]:
        _reader(actor)
        with self.db.read() as s:
            row = self._live(s, name)
            return [VersionInfo.of(v, row.version) for v in self.store.versions(s, [name])[name]]

    def _live(self, s: Session, name: str) -> SecretRow:
        check_name(name)
        row = self.store.secret(s, name)
        if row is None:
            raise SecretNotFound(f"no secret named {name!r}", name=name)
        return row

    def delete(self, actor: Principal, name: str) -> SecretInfo:
        """Every version dropped (the values are gone for good), its live leases revoked; the
        name stays as a tombstone so a later put goes on numbering."""
        _admin(actor, "delete secrets")
        now = self.clock.now()
        now_us = to_micros(now)
        with self.db.write() as s:
            row = self._live(s, name)
            info = SecretInfo.of(row, self._kept(s, name))
            dropped = self.store.drop_versions(s, name)
            row.deleted_at = row.updated_at = now_us
            changes.record(s, changes.Kind.SECRET, name, now_us=now_us)
            leases = self.store.live_leases_of(s, name=name, now_us=now_us)
            self._revoke(s, leases, now, by=actor.ref, why=f"secret {name} deleted")
            self.ledger.append(s, [NewEvent(
                EventType.SECRET_DELETED, actor.ref, action="secret.delete",
                resource={"type": RESOURCE_TYPE, "id": name}, outcome="success",
                details={"version": row.version, "versions_dropped": dropped,
                         "leases_revoked": len(leases)},
            )], now=now)  # fmt: skip
        return info

    # -- agent reads -----------------------------------------------------------------------------
    async def read(
        self, caller: Caller, name: str, *, version: int | None = None,
        request_id: str | None = None,
    ) -> SecretValue:  # fmt: skip
        """The value for an agent that policy lets read it, under a new lease.

        Raises :class:`Forbidden` for a human; :class:`RateLimited` past the agent's rate;
        :class:`SecretReadDenied` when policy denies (or wants an approval first: its id in
        the details); :class:`SecretNotFound` for an unknown secret only once the read was
        allowed (an agent cannot probe for names it may not read); :class:`SecretBrokerOnly`
        for a broker-only secret; :class:`SecretUnreadable` if it does not decrypt."""
        agent = caller.principal
        if agent.kind != "agent":
            raise Forbidden("secret values are read by agents with their access token; humans "
                            "see metadata (GET /v1/secrets/{name})")  # fmt: skip
        check_name(name)
        self.limiter.take(agent.id, self.monotonic())
        meta = await asyncio.to_thread(self._meta, name, version)  # the version too: one read
        properties = meta.properties if meta else {}
        ask = Ask.of(caller, ACTION, RESOURCE_TYPE, name, properties=properties, context={},
                     request_id=request_id)  # fmt: skip
        if meta is None or meta.broker_only:  # allowed or not, nothing to lease
            decision = await self.decisions.decide(ask)
            if not decision.allowed:
                READS.labels("denied").inc()
                raise denied(name, decision)
            if meta is None:
                READS.labels("missing").inc()
                raise SecretNotFound(f"no secret named {name!r}", name=name)
            READS.labels("broker_only").inc()
            await self._record_refusal(agent, name, "broker_only", decision)
            raise SecretBrokerOnly(
                f"secret {name!r} is broker-only: the gateway injects it into upstream calls, "
                "it is never returned to an agent",
                name=name,
            )
        wanted = version if version is not None else meta.version
        lease_for = meta.lease_seconds or self.lease_seconds
        # The decision's event, the lease and its secret.read event: one durable commit.
        decision, lease = await self.decisions.decide_then(
            ask, self.lease_job(caller, name, wanted, lease_for)
        )
        if not decision.allowed:
            READS.labels("denied").inc()
            raise denied(name, decision)
        try:
            if meta.sealed is None or (key := self.keyring.cached(meta.sealed.key_id)) is None:
                value = await asyncio.to_thread(self._decrypt, name, wanted)
            else:  # the usual case: the row came with the metadata, its key is in memory
                value = envelope.decrypt(key, meta.sealed, name, wanted)
        except (SecretUnreadable, SecretVersionNotFound) as exc:
            await asyncio.to_thread(self._void, cast(Lease, lease).id, type(exc).__name__)
            if isinstance(exc, SecretUnreadable):
                READS.labels("unreadable").inc()
                await self._record_refusal(agent, name, "unreadable", decision, version=wanted)
            raise
        READS.labels("allowed").inc()
        return SecretValue(name, value, wanted, cast(Lease, lease), lease_for)

    def broker_value(self, name: str) -> str:
        """A secret's current value for the broker itself — the gateway injecting it into an
        upstream call, broker-only or not. Never to be handed to an agent: the caller records
        the use (by name) with the call it served. Raises :class:`SecretNotFound` and
        :class:`SecretUnreadable`."""
        check_name(name)
        meta = self._meta(name)
        if meta is None:
            raise SecretNotFound(f"no secret named {name!r}", name=name)
        return self._decrypt(name, meta.version).decode()

    def _void(self, lease_id: str, why: str) -> None:
        """End a lease whose value could not be given after all."""
        with self.db.write() as s:
            row = self.store.lease(s, lease_id)
            if row is not None and row.revoked_at is None:
                self._revoke(s, [row], self.clock.now(), by="system", why=f"not read: {why}")

    def _meta(self, name: str, version: int | None = None) -> SecretMeta | None:
        """The secret's metadata and the sealed version wanted (default: the current one):
        from this worker's runtime section when it holds the current version (no database
        read), else in one statement outside a transaction."""
        known, held = self.section.lookup(name, version)
        if known:
            return held
        with self.db.read(transaction=False) as s:
            row = self.store.current(s, name, version)
        return SecretMeta.of(row) if row is not None else None

    def _decrypt(self, name: str, version: int) -> bytes:
        with self.db.read() as s:
            row = self.store.version(s, name, version)
            if row is None:
                raise SecretVersionNotFound(
                    f"secret {name!r} has no version {version} (kept: "
                    f"{', '.join(map(str, self._kept(s, name))) or 'none'})",
                    field="version", name=name, version=version,
                )  # fmt: skip
            key = self.keyring.key(s, row.key_id)
            sealed = envelope.Sealed(row.key_id, row.data_key, row.ciphertext)
        return envelope.decrypt(key, sealed, name, version)

    def lease_job(
        self, caller: Caller, name: str, version: int, seconds: int, login: str | None = None
    ) -> _LeaseJob:
        """What records a lease and its ``secret.read`` event, given the decision that allowed
        it: ``job(session, decision)`` (a ``then`` of :meth:`DecisionService.decide_then`)."""
        return _LeaseJob(self, caller, name, version, seconds, login)

    def _lease(self, s: Session, job: _LeaseJob, decision: Decision) -> Chain:
        """Under the write lock: the agent still live and not frozen (a kill or freeze that
        committed since the decision cuts this read off too; the batch's agents read in one
        statement by :meth:`_LeaseJob.prepare`), then the lease and its event."""
        caller, name, version, login = job.caller, job.name, job.version, job.login
        agent_id = caller.principal.id
        now = self.clock.now()
        now_us = to_micros(now)
        known: dict[str, Any] = s.info.get(_LIVENESS) or directory.liveness(s, [agent_id])
        live = known.get(agent_id)
        if live is None or authority.not_live(live, now_us) is not None:
            raise SecretReadDenied(f"agent {agent_id} is not active", name=name)
        if s.info.get(_SOME_FROZEN, True) and (frozen := frozen_among(s, [agent_id])):
            raise SecretReadDenied(f"agent {agent_id} is frozen ({frozen.freeze.reason})",
                                   name=name)  # fmt: skip
        lease_id = new_id(IdPrefix.LEASE)
        expires = now_us + job.seconds * 1_000_000
        row = lease_row(id=lease_id, name=name, version=version, agent_id=agent_id,
                        issued_at=now_us, expires_at=expires, login=login)  # fmt: skip
        lease = Lease(lease_id, name, version, agent_id, now_us, expires, None, None, None, None,
                      login)  # fmt: skip
        event = NewEvent(
            EventType.SECRET_READ, caller.principal.ref, agent_id=agent_id,
            on_behalf_of=caller.on_behalf_of, chain=caller.chain, action=ACTION,
            resource={"type": RESOURCE_TYPE, "id": name}, outcome="success",
            # decision_event: the allow recorded before this lease's transaction (in the same
            # transaction, the allow is the event right before this one, and no id is known)
            details={"version": version, "lease_id": lease_id, "expires_in": job.seconds,
                     **({"decision_event": decision.event_id} if decision.event_id else {}),
                     **({"login": login} if login else {})},
        )  # fmt: skip
        return Chain([event], finish=lambda _events: lease, rows=[(_LEASES, row)])

    async def _record_refusal(
        self, agent: Principal, name: str, why: str, decision: Decision,
        version: int | None = None,
    ) -> None:  # fmt: skip
        details: dict[str, Any] = {"why": why, "decision_event": decision.event_id}
        if version is not None:
            details["version"] = version
        kind = EventType.SECRET_UNREADABLE if why == "unreadable" else EventType.SECRET_REFUSED
        try:
            await self.committer.submit_async(NewEvent(
                kind, agent.ref, agent_id=agent.id, action=ACTION,
                resource={"type": RESOURCE_TYPE, "id": name}, outcome="refused", details=details,
            ))  # fmt: skip
        except Exception:  # the refusal stands; its record failing must not turn into a value
            log.exception("secret %s: the refusal (%s) could not be recorded", name, why)

    # -- leases -------------------------------------------------------------------------------
    def leases(
        self, actor: Principal, *, agent: str | None, name: str | None, active: bool,
        cursor: str | None, limit: int,
    ) -> tuple[Page[Lease], int]:  # fmt: skip
        """Leases by id (oldest first), of one agent or one secret; ``active``: only live ones.
        An agent sees its own only. Also returns ``now_us`` for their state."""
        if actor.kind == "agent":
            if agent not in (None, actor.id):
                raise Forbidden("an agent sees its own leases only", field="agent")
            agent = actor.id
        else:
            _reader(actor)
        after = decode_cursor(cursor)
        now_us = to_micros(self.clock.now())
        with self.db.read() as s:
            rows = self.store.leases(s, agent_id=agent, name=name,
                                     live_at=now_us if active else None, after=after,
                                     limit=limit + 1)  # fmt: skip
            found = [Lease.of(r) for r in rows]
        return page_of(found, limit, key=lambda lease: lease.id), now_us

    def lease(self, actor: Principal, lease_id: str) -> tuple[Lease, int]:
        now_us = to_micros(self.clock.now())
        with self.db.read() as s:
            row = self._lease_for(s, actor, lease_id)
            return Lease.of(row), now_us

    def _lease_for(self, s: Session, actor: Principal, lease_id: str) -> LeaseRow:
        row = self.store.lease(s, lease_id)
        if actor.kind == "agent":
            if row is None or row.agent_id != actor.id:
                raise LeaseNotFound(f"no lease {lease_id} of yours", lease_id=lease_id)
        else:
            _reader(actor)
            if row is None:
                raise LeaseNotFound(f"no lease {lease_id}", lease_id=lease_id)
        return row

    def revoke_lease(self, actor: Principal, lease_id: str, *, reason: str | None) -> Lease:
        """Admins, or the agent holding it (giving it back). Revoking a revoked lease is
        no change (200 with it)."""
        if actor.kind != "agent":
            _admin(actor, "revoke leases")
        now = self.clock.now()
        with self.db.write() as s:
            row = self._lease_for(s, actor, lease_id)
            if row.revoked_at is None:
                self._revoke(s, [row], now, by=actor.ref, why=reason or "revoked")
            return Lease.of(row)

    async def renew(self, caller: Caller, lease_id: str, *, request_id: str | None = None) -> Lease:
        """Another lease period for the agent holding it, asked of policy again; a revoked or
        expired lease is refused (:class:`LeaseRevoked`)."""
        agent = caller.principal
        if agent.kind != "agent":
            raise Forbidden("a lease is renewed by the agent holding it")
        self.limiter.take(agent.id, self.monotonic())
        lease, now_us = await asyncio.to_thread(self.lease, agent, lease_id)
        if lease.login is not None:
            raise LeaseRevoked(f"lease {lease_id} is a database login's, which lives as long "
                               "as its lease: lease a new login", lease_id=lease_id)  # fmt: skip
        if lease.state(now_us) != "active":
            raise LeaseRevoked(f"lease {lease_id} is {lease.state(now_us)}: read the secret "
                               "again for a new one", lease_id=lease_id)  # fmt: skip
        meta = await asyncio.to_thread(self._meta, lease.name)
        ask = Ask.of(caller, ACTION, RESOURCE_TYPE, lease.name,
                     properties=meta.properties if meta else {}, context={},
                     request_id=request_id)  # fmt: skip
        decision = await self.decisions.decide(ask)
        if not decision.allowed:
            raise denied(lease.name, decision)
        seconds = (meta.lease_seconds if meta else None) or self.lease_seconds
        return cast(Lease, await self.committer.run_async(
            lambda s: self._renew_job(s, caller, lease_id, seconds)
        ))  # fmt: skip

    def _renew_job(self, s: Session, caller: Caller, lease_id: str, seconds: int) -> Chain:
        now = self.clock.now()
        now_us = to_micros(now)
        row = self.store.lease(s, lease_id)
        if row is None or row.revoked_at is not None or row.expires_at <= now_us:
            raise LeaseRevoked(f"lease {lease_id} ended meanwhile", lease_id=lease_id)
        cap = row.issued_at + self.lease_max_seconds * 1_000_000
        row.expires_at = min(now_us + seconds * 1_000_000, max(cap, row.expires_at))
        row.renewed_at = now_us
        lease = Lease.of(row)
        return Chain([NewEvent(
            EventType.LEASE_RENEWED, caller.principal.ref, agent_id=row.agent_id, action=ACTION,
            resource={"type": RESOURCE_TYPE, "id": row.name}, outcome="success",
            details={"lease_id": lease_id, "version": row.version,
                     "expires_in": (row.expires_at - now_us) // 1_000_000},
        )], finish=lambda _events: lease)  # fmt: skip

    def _revoke(
        self, s: Session, rows: list[LeaseRow], now: datetime, *, by: str, why: str
    ) -> None:
        """Revoke ``rows`` (live leases): one event each, and the change feed names them."""
        if not rows:
            return
        now_us = to_micros(now)
        self.store.revoke(s, [r.id for r in rows], now_us=now_us, by=by, why=why)
        for r in rows:
            r.revoked_at, r.revoked_by, r.revoked_why = now_us, by, why[:200]
        changes.record(s, changes.Kind.LEASE, [r.id for r in rows], now_us=now_us)
        for hook in self.on_revoke:
            hook(s, rows)
        self.ledger.append(s, [NewEvent(
            EventType.LEASE_REVOKED, by, agent_id=r.agent_id, action="lease.revoke",
            resource={"type": RESOURCE_TYPE, "id": r.name}, outcome="success",
            details={"lease_id": r.id, "version": r.version, "why": why[:200]},
        ) for r in rows], now=now)  # fmt: skip

    def revoke_for_agents(
        self, s: Session, agent_ids: list[str], now: datetime, *, why: Why
    ) -> dict[str, int]:
        """Cut-off hook: every live lease of these agents ends — on a kill, an expiry, a
        suspension or a freeze (a value handed out cannot be taken back, but its lease, its
        renewal and what the gateway injects under it end here)."""
        if not agent_ids:
            return {"leases": 0}
        rows = self.store.live_leases_of(s, agent_ids=agent_ids, now_us=to_micros(now))
        self._revoke(s, rows, now, by="system", why=f"agent {why}")
        return {"leases": len(rows)}

    def revoke_frozen(self, s: Session, scope: Scope, now: datetime) -> dict[str, int]:
        """Freeze hook: the live leases of every agent the freeze's scope holds end."""
        rows = self.store.live_leases_of(s, now_us=to_micros(now))
        if rows and not scope.everything:
            held = {r.id for r in directory.records(s, sorted({row.agent_id for row in rows}))
                    if scope.holds(r.owner_id, r.roles, r.risk_tier)}  # fmt: skip
            rows = [row for row in rows if row.agent_id in held]
        self._revoke(s, rows, now, by="system", why="agent frozen")
        return {"leases": len(rows)}

    # -- the master key -------------------------------------------------------------------------
    def rotate_master_key(self, actor: Principal) -> dict[str, Any]:
        """A new secrets master key wraps every data key from now on; the existing ones are
        re-wrapped under it a batch per write transaction (reads go on: each version names its
        key), then the old keys are retired. Returns the new key id and the count."""
        _admin(actor, "rotate the secrets master key")
        now = self.clock.now()
        with self.db.write() as s:
            new_id_, _ = self.keyring.create(s, now)
        rewrapped = 0
        while True:
            with self.db.write() as s:
                new_key = self.keyring.key(s, new_id_)
                old_ids = self.keyring.others(s, new_id_)
                rows = self.store.versions_under(s, old_ids, limit=_REWRAP_BATCH) if old_ids else []
                for row in rows:
                    old = self.keyring.key(s, row.key_id)
                    sealed = envelope.rewrap(
                        old, (new_id_, new_key),
                        envelope.Sealed(row.key_id, row.data_key, row.ciphertext),
                        row.name, row.version,
                    )  # fmt: skip
                    row.key_id, row.data_key = sealed.key_id, sealed.data_key
                if rows:  # every worker's section takes the re-wrapped keys
                    changes.record(s, changes.Kind.SECRET, sorted({r.name for r in rows}),
                                   now_us=to_micros(self.clock.now()))  # fmt: skip
                rewrapped += len(rows)
                if len(rows) < _REWRAP_BATCH:
                    retired = self.keyring.retire_all_but(s, new_id_, self.clock.now())
                    self.ledger.append(s, [NewEvent(
                        EventType.SECRETS_KEY_ROTATED, actor.ref, action="secrets.rotate",
                        outcome="success",
                        details={"key_id": new_id_, "retired": retired, "rewrapped": rewrapped},
                    )], now=self.clock.now())  # fmt: skip
                    return {"key_id": new_id_, "retired": retired, "rewrapped": rewrapped}

    # -- maintenance ------------------------------------------------------------------------------
    def maintenance(self) -> list[Task]:
        def purge_leases() -> int:
            # Ended leases are kept a day for the revocation feed and the listings.
            cutoff = to_micros(self.clock.now()) - 86_400 * 1_000_000
            with self.db.write() as s:
                return self.store.purge_leases(s, ended_before=cutoff)

        return [Task("secrets.purge_leases", purge_leases)]


# What a batch's lease jobs read once (session.info), instead of a statement each under the lock.
_LIVENESS = "tether.secrets.liveness"
_SOME_FROZEN = "tether.secrets.some_frozen"


@dataclass(frozen=True, slots=True)
class _LeaseJob:
    service: SecretService
    caller: Caller
    name: str
    version: int
    seconds: int
    login: str | None = None

    def __call__(self, s: Session, decision: Decision) -> Chain:
        return self.service._lease(s, self, decision)

    @staticmethod
    def prepare(s: Session, jobs: Sequence[_LeaseJob]) -> None:
        """The batch's agents' liveness in one statement, and whether any of them is frozen
        in another (one indexed query when nothing is)."""
        ids = sorted({job.caller.principal.id for job in jobs})
        s.info[_LIVENESS] = directory.liveness(s, ids)
        s.info[_SOME_FROZEN] = frozen_among(s, ids) is not None


def lease_row(**values: Any) -> tuple[Any, ...]:
    """A lease's row in the table's column order (what a group-commit job's rows are), every
    column not given None."""
    return tuple(values.get(column.name) for column in _LEASES.columns)


def denied(name: str, decision: Decision) -> SecretReadDenied:
    details: dict[str, Any] = {"name": name, "reasons": list(decision.reasons),
                               "policy_version": decision.policy_version,
                               "event_id": decision.event_id}  # fmt: skip
    if decision.effect is Effect.APPROVAL_REQUIRED:
        details["approval_id"] = decision.approval_id
        return SecretApprovalRequired(
            f"reading secret {name!r} needs a human's approval ({decision.approval_id}); "
            "ask again once it is approved", **details,
        )  # fmt: skip
    return SecretReadDenied(f"policy does not permit reading secret {name!r}", **details)
