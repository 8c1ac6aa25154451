"""Policy versions: read, validate, push. Every accepted document is a new immutable version.

The base policies (``policy/base/base.cedar``) are always in force and validated together
with the operator's; version ``v0`` is the state before any push: the base schema and no
operator policy, so everything but what the base allows is denied.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import cedarpy
from sqlalchemy.orm import Session

from tether.audit.chain import Event
from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, from_micros, to_micros
from tether.db import Database
from tether.errors import Conflict, Forbidden, PolicyInvalid, PolicyVersionNotFound
from tether.pagination import Page, decode_seq_cursor, page_of
from tether.policy import inputs, source
from tether.policy.engine import MEMO_MAX, CompiledPolicies
from tether.policy.models import PolicyVersionRow
from tether.policy.store import MAX_NUMBER, DatabasePolicyVersionStore
from tether.principals import Principal
from tether.runtime import changes

log = logging.getLogger("tether.policy")
_BASE = resources.files("tether.policy") / "base"
BASE_SCHEMA = (_BASE / "schema.cedarschema").read_text()
BASE_POLICIES_TEXT = (_BASE / "base.cedar").read_text()
BASE_POLICIES = source.parse(BASE_POLICIES_TEXT, base=True)
# The base permit for an operator's undo, in force when the schema declares "tool.undo" (a
# schema pushed before that action existed keeps validating, without it).
UNDO_POLICIES_TEXT = (_BASE / "undo.cedar").read_text()
UNDO_POLICIES = source.parse(UNDO_POLICIES_TEXT, base=True)
# Both fit one request body (TETHER_MAX_BODY_BYTES, 1 MiB) even fully \u-escaped.
MAX_DOCUMENT = 60_000
MAX_SCHEMA = 20_000


def version_name(number: int) -> str:
    return f"v{number}"


def version_number(name: str) -> int | None:
    """The number of a version name ``v<n>``; None if ``name`` cannot name a version."""
    if name.startswith("v") and name[1:].isdigit() and len(name) < 12:
        number = int(name[1:])
        return number if number <= MAX_NUMBER else None
    return None


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    version: str
    policies: str
    schema: str
    digest: str
    policy_count: int
    created_at: datetime | None
    created_by: str | None
    note: str | None

    def to_json(self, *, full: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "digest": self.digest,
            "policy_count": self.policy_count,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "note": self.note,
        }
        if full:
            out |= {"policies": self.policies, "schema": self.schema,
                    "base_policies": f"{BASE_POLICIES_TEXT}\n{UNDO_POLICIES_TEXT}"}  # fmt: skip
        return out


@dataclass(frozen=True, slots=True)
class Checked:
    """A document that passed every check, ready to compile or store."""

    policies: list[source.Policy]
    text: str
    schema_text: str
    schema: cedarpy.Schema
    digest: str
    base: list[source.Policy]


def base_policies(schema: cedarpy.Schema) -> list[source.Policy]:
    """The base policies in force under ``schema``: always :data:`BASE_POLICIES`, and the
    operators' undo permit when the schema declares its action."""
    if source.validate(UNDO_POLICIES, schema):
        return list(BASE_POLICIES)
    return [*BASE_POLICIES, *UNDO_POLICIES]


def _digest(policies: str, schema: str) -> str:
    return hashlib.sha256(f"{len(policies)}:{policies}\x00{schema}".encode()).hexdigest()


def check(policies: str, schema: str | None = None) -> Checked:
    """Parse and validate ``policies`` (with the base policies) against ``schema`` (default:
    the base schema); :class:`PolicyInvalid` lists every problem with policy id and line."""
    schema_text = BASE_SCHEMA if schema is None else schema
    problems: list[source.Problem] = []
    try:
        parsed_schema = source.parse_schema(schema_text)
    except source.PolicyDocumentError as exc:
        raise PolicyInvalid("the schema does not parse", errors=_errors(exc.problems)) from exc
    try:
        parsed = source.parse(policies)
    except source.PolicyDocumentError as exc:
        problems.extend(exc.problems)
        parsed = exc.parsed
    # Type-check what parsed even when something else did not: every problem, in one answer.
    base = base_policies(parsed_schema)
    problems.extend(source.validate([*base, *parsed], parsed_schema))
    problems.sort(key=lambda p: p.line or 0)
    if problems:
        n = len(problems)
        raise PolicyInvalid(
            f"{n} problem{'s' if n != 1 else ''} in the policy document; nothing was changed",
            errors=_errors(problems),
        )
    return Checked(
        parsed, policies, schema_text, parsed_schema, _digest(policies, schema_text), base
    )


def _errors(problems: list[source.Problem]) -> list[dict[str, Any]]:
    return [p.to_json() for p in problems]


def compile_checked(
    version: str, checked: Checked, *, memo_capacity: int = MEMO_MAX
) -> CompiledPolicies:
    compiled = CompiledPolicies.build(version, [*checked.base, *checked.policies], checked.schema)
    compiled.set_memo_capacity(memo_capacity)
    return compiled


class PolicyService:
    def __init__(
        self, db: Database, ledger: Ledger, clock: Clock, *, memo_capacity: int = MEMO_MAX
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self.memo_capacity = memo_capacity
        self._compiled: dict[str, CompiledPolicies] = {}
        self.store = DatabasePolicyVersionStore()

    # -- reading ---------------------------------------------------------------------------
    def current(self, actor: Principal | None = None) -> PolicyVersion:
        del actor  # every authenticated human may read the policies
        with self.db.read() as s:
            return self._current(s)

    def _current(self, s: Session) -> PolicyVersion:
        row = self.store.current(s)
        return _version(row) if row else _v0()

    def get(self, actor: Principal, name: str) -> PolicyVersion:
        del actor
        number = version_number(name)
        if number == 0:
            return _v0()
        with self.db.read() as s:
            row = self.store.get(s, number) if number is not None else None
            if row is None:
                raise PolicyVersionNotFound(f"no policy version {name!r}", version=name)
            return _version(row)

    def versions(self, actor: Principal, *, cursor: str | None, limit: int) -> Page[PolicyVersion]:
        """Newest first; ``v0`` (the base) is the last item."""
        del actor
        before = decode_seq_cursor(cursor)  # a version number: every cursor it admits is one
        if before is not None and before > MAX_NUMBER:  # past the INTEGER column: every
            before = None  # version is older, as from the newest
        with self.db.read() as s:
            rows: builtins.list[PolicyVersion] = [
                _version(r) for r in self.store.page(s, before=before, limit=limit + 1)
            ]
        if len(rows) <= limit and before != 0:
            rows.append(_v0())
        return page_of(rows, limit, key=lambda v: v.version[1:])

    def recorded_inputs(self, event: Event) -> dict[str, Any] | None:
        """What a decision event was asked, kept beside it: the resource's properties, the
        context and chain, and what monitoring gave Cedar (``session``: the labels and tools
        the session had touched; ``risk`` when not 0). For an event the caller has read (who
        may is :meth:`AuditService.event`'s to say); None for another type of event, or when
        retention dropped its inputs."""
        if event.type != EventType.DECISION:
            return None
        with self.db.read() as s:
            return inputs.recorded(s, event.seq)

    def compiled(self, s: Session) -> CompiledPolicies:
        """The current version, compiled (cached per version); the runtime's loader."""
        current = self._current(s)
        found = self._compiled.get(current.version)
        if found is None:
            try:
                checked = check(current.policies, current.schema)
            except PolicyInvalid as exc:
                # Stored before a bound of this release (tether.policy.limits) existed, and
                # over it: Cedar must not see it. Fail closed — the base policies alone, which
                # deny everything else — but start, so that an admin can push a fixed version.
                log.error("policy version %s no longer passes validation (%s); deciding with "  # noqa: TRY400 - the problems say it all
                          "the base policies only until a new version is pushed",
                          current.version, exc.details.get("errors"))  # fmt: skip
                checked = check("", BASE_SCHEMA)
            found = compile_checked(current.version, checked, memo_capacity=self.memo_capacity)
            self._compiled = {current.version: found}
        return found

    # -- changing --------------------------------------------------------------------------
    def push(
        self, actor: Principal, *, policies: str, schema: str | None, note: str | None,
        expect_version: str | None = None,
    ) -> PolicyVersion:  # fmt: skip
        """A new version; with ``expect_version``, only if that is still the current one
        (:class:`Conflict` otherwise: a document derived from it would undo the newer)."""
        if not actor.is_admin:
            raise Forbidden("only an admin may change the policies")
        now = self.clock.now()
        with self.db.write() as s:
            current = self._current(s)
            if expect_version is not None and current.version != expect_version:
                raise Conflict(f"the policies changed ({expect_version} is no longer current: "
                               f"{current.version} is); nothing was pushed",
                               version=current.version)  # fmt: skip
            checked = check(policies, current.schema if schema is None else schema)
            number = self.store.next_number(s)
            row = PolicyVersionRow(
                number=number, policies=checked.text, schema=checked.schema_text,
                digest=checked.digest, policy_count=len(checked.policies),
                created_at=to_micros(now), created_by=actor.ref, note=note,
            )  # fmt: skip
            self.store.add(s, row)
            name = version_name(number)
            changes.record(s, changes.Kind.POLICY, name, now_us=row.created_at)
            self.ledger.append(s, [NewEvent(
                EventType.POLICY_UPDATED, actor.ref, action="policy.push",
                resource={"type": "PolicySet", "id": name}, policy_version=name,
                outcome="success",
                details={"digest": checked.digest, "previous": current.version,
                         "policies": [p.id for p in checked.policies],
                         "schema_changed": checked.schema_text != current.schema, "note": note},
            )], now=now)  # fmt: skip
            self._compiled[name] = compile_checked(name, checked,
                                                   memo_capacity=self.memo_capacity)  # fmt: skip
            return _version(row)


def _version(row: PolicyVersionRow) -> PolicyVersion:
    return PolicyVersion(version_name(row.number), row.policies, row.schema, row.digest,
                         row.policy_count, from_micros(row.created_at), row.created_by,
                         row.note)  # fmt: skip


def _v0() -> PolicyVersion:
    return PolicyVersion("v0", "", BASE_SCHEMA, _digest("", BASE_SCHEMA), 0, None, None,
                         "the base policies only; nothing else is allowed")  # fmt: skip
