"""``tether report verify``: a compliance report checked against the ledger it was built from.

What is checked, for a report in any of its three formats (:func:`load` finds the envelope
in the JSON, in the HTML's ``<script type="application/json" id="tether-report">`` block, or
in the PDF's embedded file ``tether-report.json``):

1. the checkpoint it embeds is signed by the ledger's key (the server's own key online; the
   key the auditor holds offline — never one that came with the files checked);
2. the ledger — live, or an export (``tether audit export``) — has, at the checkpoint's size,
   the head the checkpoint signed (the chain recomputed up to there,
   :func:`tether.audit.chain.verify_chain`);
3. the report's digest is the one its ``report.built`` event holds, and that event is the one
   the binding names (so the signed head vouches for the whole report);
4. every figure, recounted from its source range (:class:`~tether.governance.report_figures.
   Tally`), equals the figure printed; the range is the period's (every event in it stamped
   in the period, the one before it stamped before).

A problem names what it is about: the figure's id, ``checkpoint``, ``ledger``, ``binding`` or
``period``. Time is not involved: a report verifies the same way years later.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from tether.audit.chain import Checkpoint, Event, verify_chain
from tether.audit.signing import LedgerVerifier
from tether.clock import to_micros
from tether.errors import ValidationFailed
from tether.governance.report_figures import KIND, Source, Tally, digest_of

_SCRIPT = re.compile(
    rb'<script type="application/json" id="tether-report">(.*?)</script>', re.DOTALL
)
_EMBEDDED = re.compile(rb"/Type\s*/EmbeddedFile\b")
_STREAM = re.compile(rb"stream\r?\n")


@dataclass(slots=True)
class Verdict:
    ok: bool = True
    figures_checked: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)
    checkpoint: dict[str, Any] = field(default_factory=dict)

    def fail(self, about: str, message: str) -> None:
        self.ok = False
        self.problems.append({"about": about, "message": message})

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "figures_checked": self.figures_checked,
            "problems": self.problems,
            "checkpoint": self.checkpoint,
        }


def load(data: bytes, *, name: str = "FILE") -> Any:
    """The envelope in a report file's bytes (JSON, HTML or PDF). Raises
    :class:`ValidationFailed` naming ``name`` if there is none."""
    if data.startswith(b"%PDF-"):
        for body in _attachments(data):
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict) and doc.get("kind") == KIND:
                return doc
        raise ValidationFailed("the PDF embeds no Tether report (tether-report.json)", field=name)
    found = _SCRIPT.search(data)
    try:
        return orjson.loads(found.group(1) if found else data)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed(
            "not a Tether report: neither its JSON, HTML nor PDF", field=name
        ) from exc


def _attachments(pdf: bytes) -> Iterator[bytes]:
    """The content of each embedded file stream (PDF 32000-1 §7.11.4): its dictionary is a
    direct object before ``stream``, with a direct ``/Length`` as WeasyPrint writes it."""
    for hit in _EMBEDDED.finditer(pdf):
        start = _STREAM.search(pdf, hit.end())
        length = re.search(
            rb"/Length\s+(\d+)\b(?!\s+\d+\s+R)", pdf[hit.end() : start.start()] if start else b""
        )
        if start is None or length is None:
            continue
        raw = pdf[start.end() : start.end() + int(length.group(1))]
        if b"/FlateDecode" in pdf[hit.start() - 200 : start.start()]:
            try:
                raw = zlib.decompress(raw)
            except zlib.error:
                continue
        yield raw


def check(
    envelope: Any,
    events: Iterable[Event],
    *,
    check_signature: Callable[[Checkpoint], bool],
    cut_at: Callable[[int], Checkpoint | None] | None = None,
) -> Verdict:
    """The verdict on ``envelope`` against ``events``: the ledger in ``seq`` order, from
    event 1 or from just after a retention cut (``cut_at(size)`` gives its signed checkpoint,
    as :func:`~tether.audit.chain.verify_chain` takes it)."""
    verdict = Verdict()
    report, binding, cp = _parts(envelope)
    verdict.checkpoint = {"size": cp.size, "key_id": cp.key_id, "head_hash": cp.head_hash}
    digest = digest_of(report)
    if digest != binding.get("sha256"):
        verdict.fail(
            "binding",
            "the report's content is not what was built: its SHA-256 "
            f"is {digest}, the binding says {binding.get('sha256')}",
        )
    if not check_signature(cp):
        verdict.fail(
            "checkpoint",
            f"the checkpoint at size {cp.size} is not signed by the "
            f"ledger's key (key id {cp.key_id})",
        )
        return verdict
    figures = _figures(report)
    tally = Tally({fid: source for fid, (_, source) in figures.items()})
    walk = _Walk(report, tally, int(binding.get("event", {}).get("seq", 0)))
    chain = verify_chain(
        walk.events(events, cp.size),
        seq_of_hash=walk.seq_of.get,
        external=[cp],
        check_signature=check_signature,
        cut_at=cut_at,
    )
    if not chain.ok:
        verdict.fail(
            "ledger",
            f"the ledger does not match the report's checkpoint: {chain.problem} — {chain.message}",
        )
        return verdict
    _check_binding(verdict, walk.built, binding, digest)
    for problem in walk.period_problems[:1]:
        verdict.fail("period", problem)
    for fid, (value, _source) in figures.items():
        verdict.figures_checked += 1
        recount = tally.value(fid)
        if recount != value:
            verdict.fail(fid, f"figure {fid} says {value}; its source range counts {recount}")
    return verdict


def _parts(envelope: Any) -> tuple[dict[str, Any], dict[str, Any], Checkpoint]:
    if not isinstance(envelope, dict) or envelope.get("kind") != KIND:
        raise ValidationFailed(f"not a Tether compliance report (kind {KIND})", field="report")
    report, binding, raw = (
        envelope.get("report"),
        envelope.get("binding"),
        envelope.get("checkpoint"),
    )
    if not isinstance(report, dict) or not isinstance(binding, dict) or not isinstance(raw, dict):
        raise ValidationFailed("the report lacks its report, binding or checkpoint", field="report")
    try:
        when = datetime.fromisoformat(str(raw["time"]).replace("Z", "+00:00"))
        cp = Checkpoint(
            int(raw["size"]),
            str(raw["head_hash"]),
            to_micros(when),
            str(raw["key_id"]),
            str(raw["signature"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ValidationFailed("the report's checkpoint is unreadable", field="checkpoint") from exc
    return report, binding, cp


def _figures(report: dict[str, Any]) -> dict[str, tuple[Any, Source]]:
    out: dict[str, tuple[Any, Source]] = {}
    for section in report.get("sections") or []:
        for fig in (section.get("figures") if isinstance(section, dict) else None) or []:
            fid = str(fig.get("id")) if isinstance(fig, dict) else "?"
            if not isinstance(fig, dict) or fid in out:
                raise ValidationFailed(f"figure {fid} is unreadable or repeated", field=fid)
            out[fid] = (fig.get("value"), Source.from_json(fig.get("source"), figure=fid))
    return out


def _check_binding(
    verdict: Verdict, built: Event | None, binding: dict[str, Any], digest: str
) -> None:
    named = binding.get("event") or {}
    if built is None or built.type != "report.built":
        verdict.fail("binding", f"the ledger has no report.built event at seq {named.get('seq')}")
        return
    if built.id != named.get("id") or built.hash != named.get("hash"):
        verdict.fail("binding", f"event {built.seq} is not the report.built event the report names")
    elif built.details.get("sha256") != digest:
        verdict.fail(
            "binding",
            f"the report.built event at seq {built.seq} holds digest "
            f"{built.details.get('sha256')}, not this report's {digest}",
        )


class _Walk:
    """What one pass over the ledger learns besides the chain: the tally, the report.built
    event, the period's bounds held to the range."""

    def __init__(self, report: dict[str, Any], tally: Tally, built_seq: int) -> None:
        self.tally = tally
        self.built_seq = built_seq
        self.built: Event | None = None
        self.seq_of: dict[str, int] = {}
        self.period_problems: list[str] = []
        ledger, period = report.get("ledger") or {}, report.get("period") or {}
        try:
            self.seq_from, self.seq_to = int(ledger["seq_from"]), int(ledger["seq_to"])
            self.start = to_micros(datetime.fromisoformat(period["from"].replace("Z", "+00:00")))
            self.end = to_micros(datetime.fromisoformat(period["to"].replace("Z", "+00:00")))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ValidationFailed(
                "the report's period or range is unreadable", field="period"
            ) from exc

    def events(self, events: Iterable[Event], size: int) -> Iterator[Event]:
        for ev in events:
            if ev.seq > size:
                return
            self.seq_of.setdefault(ev.hash, ev.seq)
            self.tally.feed(ev)
            if ev.seq == self.built_seq:
                self.built = ev
            if self.seq_from <= ev.seq <= self.seq_to and not self.start <= ev.time_us < self.end:
                self.period_problems.append(
                    f"event {ev.seq} is in the report's range but not stamped in its period"
                )
            elif ev.seq == self.seq_from - 1 and ev.time_us >= self.start:
                self.period_problems.append(
                    f"event {ev.seq}, just before the range, is stamped "
                    "in the period: the range leaves it out"
                )
            yield ev


def check_export(
    envelope: Any, export: Path, *, verifier: LedgerVerifier, cuts: Iterable[Checkpoint] = ()
) -> Verdict:
    """:func:`check` offline, against an export (``tether audit export``) and the ledger's
    public key the auditor holds; ``cuts``: signed checkpoints (``checkpoints.jsonl``), for an
    export that starts after a retention cut."""
    from tether.audit.offline import read_events

    by_size = {c.size: c for c in cuts}
    return check(envelope, read_events(export), check_signature=verifier.check, cut_at=by_size.get)
