"""A compliance report's figures and the one rule that counts them from ledger events.

Every figure names its **source**: the ledger sequence range it was counted from
(``seq_from``..``seq_to``, both included; empty when ``seq_from > seq_to``) and the query —
event types (``types``, or every type starting with ``type_prefix``), optional equalities on
event fields (``where``: ``{"actor": "system"}``, ``{"details.response": "suspend"}``), and the
measure:

* ``count``: the events;
* ``distinct:<field>``: the different non-null values of the field;
* ``max:<field>`` / ``median:<field>``: the largest / the median number (0 with none; a
  measured time in seconds, ``details.seconds``, stays a fraction);
* ``open:<field>``: keys (the field's value, ``resource.id``) opened by an event of the first
  of ``types`` and not closed by an event of another of ``types`` within the range — with
  ``due_by`` (``{"field": "details.due", "at": <RFC 3339>}``) only openers whose time field is
  at or before ``at`` count: what was due by then and still open (an access review overdue at
  the period's end).

The report is built by running these queries over the range, and ``tether report verify`` runs
the very same ones over the live ledger or an export: :class:`Tally` is the only code that
turns events into figures.
"""

from __future__ import annotations

import hashlib
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from tether.audit.chain import Event
from tether.errors import ValidationFailed
from tether.jsonutil import canonical

KIND = "tether.compliance_report/1"  # the envelope's kind (tether.governance.report)

_MEASURES = ("count", "distinct:", "max:", "median:", "open:")
_EVENT_FIELDS = frozenset(f.name for f in fields(Event)) - {"details"}


@dataclass(frozen=True, slots=True)
class Source:
    """What a figure was counted from (see the module's docstring)."""

    seq_from: int
    seq_to: int
    types: tuple[str, ...] = ()
    type_prefix: str | None = None
    where: tuple[tuple[str, Any], ...] = ()
    measure: str = "count"
    due_by: tuple[str, str] | None = None  # (time field, RFC 3339): ``open:`` openers only

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq_from": self.seq_from, "seq_to": self.seq_to}
        if self.types:
            out["types"] = list(self.types)
        if self.type_prefix is not None:
            out["type_prefix"] = self.type_prefix
        if self.where:
            out["where"] = dict(self.where)
        out["measure"] = self.measure
        if self.due_by is not None:
            out["due_by"] = {"field": self.due_by[0], "at": self.due_by[1]}
        return out

    @classmethod
    def from_json(cls, obj: Any, *, figure: str) -> Source:
        """Raises :class:`ValidationFailed` naming the figure if ``obj`` is not a source."""
        try:
            due = obj.get("due_by")
            source = cls(
                int(obj["seq_from"]),
                int(obj["seq_to"]),
                tuple(str(t) for t in obj.get("types", ())),
                None if obj.get("type_prefix") is None else str(obj["type_prefix"]),
                tuple((str(k), v) for k, v in dict(obj.get("where", {})).items()),
                str(obj.get("measure", "count")),
                None if due is None else (str(due["field"]), str(due["at"])),
            )
            if source.due_by is not None:
                _time(source.due_by[1])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValidationFailed(
                f"figure {figure}: its source is unreadable", field=figure
            ) from exc
        if not source.measure.startswith(_MEASURES):
            raise ValidationFailed(
                f"figure {figure}: unknown measure {source.measure!r}", field=figure
            )
        if source.measure.startswith("open:") and not source.types:
            raise ValidationFailed(
                f"figure {figure}: an open: measure needs its opening event type", field=figure
            )
        return source

    def matches(self, ev: Event) -> bool:
        if not self.seq_from <= ev.seq <= self.seq_to:
            return False
        if self.types and ev.type not in self.types:
            return False
        if self.type_prefix is not None and not ev.type.startswith(self.type_prefix):
            return False
        return all(_field(ev, path) == value for path, value in self.where)

    def due(self, ev: Event) -> bool:
        """Without ``due_by``, True; with it, the event's time field is a time at or before
        ``due_by``'s (False if it is missing or unreadable)."""
        if self.due_by is None:
            return True
        path, at = self.due_by
        value = _field(ev, path)
        try:
            return isinstance(value, str) and _time(value) <= _time(at)
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class Figure:
    """One number of the report: ``id`` (stable, dotted: ``oversight.approvals.granted``), a
    human ``label``, its ``value`` and its ``source``."""

    id: str
    label: str
    value: int | float
    source: Source

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "value": self.value,
            "source": self.source.to_json(),
        }


@dataclass(slots=True)
class Tally:
    """Runs every source over events fed in any order, once each; :meth:`value` answers."""

    sources: dict[str, Source]
    _counts: dict[str, int] = field(default_factory=dict)
    _seen: dict[str, set[str]] = field(default_factory=dict)  # distinct values; opened keys
    _closed: dict[str, set[str]] = field(default_factory=dict)
    _numbers: dict[str, list[int | float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.sources:
            self._counts[key] = 0
            self._seen[key] = set()
            self._closed[key] = set()
            self._numbers[key] = []

    def feed(self, ev: Event) -> None:
        for key, source in self.sources.items():
            if not source.matches(ev):
                continue
            measure = source.measure
            if measure == "count":
                self._counts[key] += 1
            elif measure.startswith("distinct:"):
                value = _field(ev, measure.removeprefix("distinct:"))
                if value is not None:
                    self._seen[key].add(str(value))
            elif measure.startswith("open:"):
                value = _field(ev, measure.removeprefix("open:"))
                if value is None:
                    continue
                if ev.type != source.types[0]:
                    self._closed[key].add(str(value))
                elif source.due(ev):
                    self._seen[key].add(str(value))
            else:
                value = _field(ev, measure.partition(":")[2])
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._numbers[key].append(value)

    def feed_all(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.feed(ev)

    def value(self, key: str) -> int | float:
        measure = self.sources[key].measure
        if measure.startswith("distinct:"):
            return len(self._seen[key])
        if measure.startswith("open:"):
            return len(self._seen[key] - self._closed[key])
        numbers = self._numbers[key]
        if measure.startswith("max:"):
            return max(numbers, default=0)
        if measure.startswith("median:"):
            return statistics.median(numbers) if numbers else 0
        return self._counts[key]


def _field(ev: Event, path: str) -> Any:
    """``type``, ``actor``, ``agent_id``…, or ``details.a.b`` / ``resource.id`` (None where it
    is missing)."""
    head, _, rest = path.partition(".")
    if head not in ("details", "resource"):
        return getattr(ev, head) if head in _EVENT_FIELDS and not rest else None
    value: Any = ev.details if head == "details" else ev.resource
    for part in rest.split(".") if rest else ():
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _time(value: str) -> datetime:
    """An RFC 3339 time with an offset (``Z`` for UTC); raises ValueError otherwise."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return parsed


def digest_of(report: Any) -> str:
    """The SHA-256 (hex) of a report's canonical JSON: what its report.built event holds."""
    return hashlib.sha256(canonical(report)).hexdigest()
