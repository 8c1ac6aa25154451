"""The AI system register: every agent an actor may see, as CSV or JSON.

The inventory a deployer of AI systems keeps (EU AI Act Art. 26; NIST AI RMF GOVERN 1.6):
for each agent who it is (id, name, SPIFFE id), who answers for it (owner, supervisors), what
it is for and how risky (purpose, risk tier), what it may do (status, roles, scopes), when it
ends or must be recertified, where it came from (lineage: its kind and its ancestors, nearest
first), what it is made of (fingerprint: digest and parts), how many credentials it holds,
and the registry's attributes. The last decision time is left out: the ledger has no index
that answers it for a page of agents without reading their every event.

Who sees what is the registry's read rule (:mod:`tether.agents.authority`): admins and
auditors every agent, a supervisor the agents they own or supervise; an agent nothing.

The registry is read in pages of ``page_size`` agents in id order, each in its own read
transaction, and each page is written out before the next is read: 100,000 agents stream
without the export ever holding more than a page. Statuses are those of the moment the export
began; an agent created meanwhile may appear or not (after the page it would fall in).

The export is itself recorded: one ``inventory.exported`` event (who, the format, how many
agents, the SHA-256 of the body and its length) **written when the stream finishes**, so its
digest is of the bytes sent. An export abandoned before its end records nothing: the reader
has not received a register to rely on.

CSV cells a spreadsheet would run as a formula (starting ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return) are prefixed with ``'``, as OWASP's "CSV Injection" advises.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy.orm import Session

from tether.agents import read_model
from tether.agents.fingerprint import PARTS
from tether.agents.store import DatabaseAgentStore
from tether.agents.values import Agent
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, to_micros, to_rfc3339
from tether.db import Database
from tether.errors import Forbidden
from tether.jsonutil import canonical_text
from tether.principals import Principal, Role

# How many credentials each of a page's agents holds (the credentials domain answers).
CountOf = Callable[[Session, list[str]], Mapping[str, int]]

PAGE_SIZE = 500
# A cell a spreadsheet reads as a formula starts with one of these (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_LIST_SEPARATOR = ";"  # a list in one CSV cell (ids, roles and scopes hold none)

COLUMNS = (
    "id", "name", "spiffe_id", "owner_id", "owner_username", "supervisors", "purpose",
    "risk_tier", "status", "status_reason", "roles", "scopes", "created_at", "updated_at",
    "expires_at", "recertify_by", "lineage_kind", "lineage",
    "fingerprint_digest", *(f"fingerprint_{part}" for part in PARTS),
    "credentials", "attributes",
)  # fmt: skip


class Format(StrEnum):
    CSV = "csv"
    JSON = "json"

    @property
    def media_type(self) -> str:
        return "text/csv; charset=utf-8" if self is Format.CSV else "application/json"


@dataclass(frozen=True, slots=True)
class Entry:
    """One agent of the register, with what other domains add to it."""

    agent: Agent
    credentials: int

    def to_json(self) -> dict[str, Any]:
        a = self.agent
        return {
            "id": a.id,
            "name": a.name,
            "spiffe_id": a.spiffe_id,
            "owner": {"id": a.owner, "username": a.owner_username},
            "supervisors": a.supervisors,
            "purpose": a.purpose,
            "risk_tier": a.risk_tier.value,
            "status": a.status.value,
            "status_reason": a.status_reason,
            "roles": a.roles,
            "scopes": a.scopes,
            "created_at": to_rfc3339(a.created_at),
            "updated_at": to_rfc3339(a.updated_at),
            "expires_at": _time(a.expires_at),
            "recertify_by": _time(a.recertify_by),
            "lineage": {"kind": a.lineage_kind, "ancestors": a.lineage},
            "fingerprint": a.fingerprint,
            "credentials": self.credentials,
            "attributes": a.attributes,
        }

    def to_row(self) -> list[str]:
        """The CSV row, in :data:`COLUMNS` order, every cell neutralised."""
        a, fp = self.agent, self.agent.fingerprint or {}
        cells: list[Any] = [
            a.id, a.name, a.spiffe_id, a.owner, a.owner_username,
            _LIST_SEPARATOR.join(a.supervisors), a.purpose, a.risk_tier.value, a.status.value,
            a.status_reason, _LIST_SEPARATOR.join(a.roles), " ".join(a.scopes),
            to_rfc3339(a.created_at), to_rfc3339(a.updated_at), _time(a.expires_at),
            _time(a.recertify_by), a.lineage_kind, _LIST_SEPARATOR.join(a.lineage),
            fp.get("digest"), *(fp.get(part) for part in PARTS),
            self.credentials, canonical_text(a.attributes),
        ]  # fmt: skip
        return [neutralise("" if c is None else str(c)) for c in cells]


def neutralise(cell: str) -> str:
    """``cell``, prefixed with ``'`` if a spreadsheet would read it as a formula."""
    return "'" + cell if cell.startswith(_FORMULA_STARTS) else cell


@dataclass(frozen=True, slots=True)
class InventoryExport:
    """An export about to stream: iterate ``body`` once, to its end, to send it and record it."""

    format: Format
    filename: str
    body: Iterator[bytes]


class AgentInventory:
    """The register of :mod:`tether.agents.inventory`, read from the registry in pages."""

    def __init__(
        self,
        db: Database,
        ledger: Ledger,
        clock: Clock,
        *,
        credentials: CountOf | None = None,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.store = DatabaseAgentStore()
        self.credentials = credentials
        self.page_size = page_size

    def export(self, actor: Principal, fmt: Format) -> InventoryExport:
        """The register of the agents ``actor`` may see, in ``fmt``; raises :class:`Forbidden`
        (before any byte) for an agent or anyone who is not a user. The body records the
        ``inventory.exported`` event once its last byte is produced."""
        if actor.kind != "system" and actor.role is None:
            raise Forbidden("only users may export the agent inventory")
        now = self.clock.now()
        visible_to = actor.id if actor.role is Role.SUPERVISOR and not actor.is_admin else None
        body = self._recorded(actor, fmt, _render(fmt, self.entries(visible_to, now=now), now))
        return InventoryExport(fmt, f"tether-inventory-{now.date().isoformat()}.{fmt}", body)

    def entries(self, visible_to: str | None, *, now: datetime) -> Iterator[Entry]:
        """Every agent (or those ``visible_to`` owns or supervises) in id order, a page per
        read transaction, with their status at ``now``."""
        after: str | None = None
        while True:
            with self.db.read() as s:
                rows = self.store.page(s, after=after, limit=self.page_size,
                                       visible_to=visible_to, now_us=to_micros(now))  # fmt: skip
                agents = read_model.to_agents(self.store, s, rows, now=now)
                ids = [a.id for a in agents]
                counts = self.credentials(s, ids) if self.credentials and ids else {}
            yield from (Entry(a, counts.get(a.id, 0)) for a in agents)
            if len(rows) < self.page_size:
                return
            after = rows[-1].id

    def _recorded(self, actor: Principal, fmt: Format, chunks: Iterator[tuple[bytes, int]]
                  ) -> Iterator[bytes]:  # fmt: skip
        """The chunks' bytes; once the last is sent, the ledger event with their digest."""
        digest, size, agents = hashlib.sha256(), 0, 0
        for chunk, n in chunks:
            digest.update(chunk)
            size += len(chunk)
            agents += n
            yield chunk
        event = NewEvent(
            EventType.INVENTORY_EXPORTED,
            actor.ref,
            action=str(EventType.INVENTORY_EXPORTED),
            resource={"type": "Inventory", "id": "agents"},
            outcome="success",
            details={"format": str(fmt), "agents": agents, "bytes": size,
                     "sha256": digest.hexdigest()},
        )  # fmt: skip
        with self.db.write() as s:
            self.ledger.append(s, [event], now=self.clock.now())


def _render(fmt: Format, entries: Iterator[Entry], now: datetime) -> Iterator[tuple[bytes, int]]:
    """The body in chunks, each with how many agents it holds."""
    return _csv(entries) if fmt is Format.CSV else _json(entries, now)


def _csv(entries: Iterator[Entry]) -> Iterator[tuple[bytes, int]]:
    """RFC 4180 CSV: a header line, then a line per agent (CRLF endings), a chunk a page."""
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(COLUMNS)
    n = 0
    for entry in entries:
        out.writerow(entry.to_row())
        n += 1
        if n == PAGE_SIZE:
            yield buf.getvalue().encode(), n
            buf.seek(0)
            buf.truncate()
            n = 0
    yield buf.getvalue().encode(), n


def _json(entries: Iterator[Entry], now: datetime) -> Iterator[tuple[bytes, int]]:
    """``{"exported_at", "agents": [...], "count"}``, an agent a line, a chunk a page."""
    head = orjson.dumps({"exported_at": to_rfc3339(now)})[:-1] + b',"agents":['
    parts, n, total = [head], 0, 0
    for entry in entries:
        parts.append((b"\n" if total == 0 else b",\n") + orjson.dumps(entry.to_json()))
        n += 1
        total += 1
        if n == PAGE_SIZE:
            yield b"".join(parts), n
            parts, n = [], 0
    parts.append(b"\n]," + orjson.dumps({"count": total})[1:] + b"\n")
    yield b"".join(parts), n


def _time(value: datetime | None) -> str | None:
    return to_rfc3339(value) if value is not None else None
