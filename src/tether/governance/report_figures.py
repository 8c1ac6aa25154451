"""A compliance report's figures and the one rule that counts them from ledger events.

Every figure names its **source**: the ledger sequence range it was counted from
(``seq_from``..``seq_to``, both included; empty when ``seq_from > seq_to``) and the query —
event types (``types``, or every type starting with ``type_prefix``), optional equalities on
event fields (``where``: ``{"actor": "system"}``, ``{"details.response": "suspend"}``), and the
measure: ``count`` (events), ``distinct:<field>`` (different non-null values) or
``max:<field>`` (the largest number, 0 with none). The report is built by running these
queries over the range, and ``tether report verify`` runs the very same ones over the live
ledger or an export: :class:`Tally` is the only code that turns events into figures.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from tether.audit.chain import Event
from tether.errors import ValidationFailed
from tether.jsonutil import canonical

KIND = "tether.compliance_report/1"  # the envelope's kind (tether.governance.report)

_MEASURES = ("count", "distinct:", "max:")
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

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq_from": self.seq_from, "seq_to": self.seq_to}
        if self.types:
            out["types"] = list(self.types)
        if self.type_prefix is not None:
            out["type_prefix"] = self.type_prefix
        if self.where:
            out["where"] = dict(self.where)
        out["measure"] = self.measure
        return out

    @classmethod
    def from_json(cls, obj: Any, *, figure: str) -> Source:
        """Raises :class:`ValidationFailed` naming the figure if ``obj`` is not a source."""
        try:
            source = cls(
                int(obj["seq_from"]),
                int(obj["seq_to"]),
                tuple(str(t) for t in obj.get("types", ())),
                None if obj.get("type_prefix") is None else str(obj["type_prefix"]),
                tuple((str(k), v) for k, v in dict(obj.get("where", {})).items()),
                str(obj.get("measure", "count")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValidationFailed(
                f"figure {figure}: its source is unreadable", field=figure
            ) from exc
        if not source.measure.startswith(_MEASURES):
            raise ValidationFailed(
                f"figure {figure}: unknown measure {source.measure!r}", field=figure
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


@dataclass(frozen=True, slots=True)
class Figure:
    """One number of the report: ``id`` (stable, dotted: ``oversight.approvals.granted``), a
    human ``label``, its ``value`` and its ``source``."""

    id: str
    label: str
    value: int
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
    _seen: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in self.sources:
            self._counts[key] = 0
            self._seen[key] = set()

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
            else:
                value = _field(ev, measure.removeprefix("max:"))
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._counts[key] = max(self._counts[key], round(value))

    def feed_all(self, events: Iterable[Event]) -> None:
        for ev in events:
            self.feed(ev)

    def value(self, key: str) -> int:
        if self.sources[key].measure.startswith("distinct:"):
            return len(self._seen[key])
        return self._counts[key]


def _field(ev: Event, path: str) -> Any:
    """``type``, ``actor``, ``agent_id``…, or ``details.a.b`` (None where it is missing)."""
    head, _, rest = path.partition(".")
    if head != "details":
        return getattr(ev, head) if head in _EVENT_FIELDS and not rest else None
    value: Any = ev.details
    for part in rest.split(".") if rest else ():
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def digest_of(report: Any) -> str:
    """The SHA-256 (hex) of a report's canonical JSON: what its report.built event holds."""
    return hashlib.sha256(canonical(report)).hexdigest()
