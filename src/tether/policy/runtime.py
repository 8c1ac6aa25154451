"""The decision path's sections of the runtime snapshot, and the snapshot it reads.

:class:`AgentSection` holds every agent's view (its Cedar entity, built here from the
registry's records, once per change of the agent); :class:`PolicySection` the compiled
policy version. With the users', the revoked tokens' and the freezes' sections (their
domains'), they make
the :class:`DecisionSnapshot` the decision service reads — in memory, never the database.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from sqlalchemy.orm import Session

from tether.agents import directory
from tether.agents.directory import AgentRecord
from tether.credentials.runtime import RevokedTokens
from tether.freeze.runtime import FreezeSection
from tether.freeze.values import Freeze
from tether.policy.engine import CompiledPolicies
from tether.policy.entities import AgentView, agent_view
from tether.runtime.changes import Kind
from tether.runtime.snapshot import Runtime
from tether.users.runtime import UserSection, UserView


def view_of(record: AgentRecord) -> AgentView:
    return agent_view(
        id=record.id, name=record.name, owner_id=record.owner_id, purpose=record.purpose,
        risk_tier=record.risk_tier, status=record.status, attributes=record.attributes,
        expires_at=record.expires_at, roles=record.roles, supervisors=record.supervisors,
        recertify_by=record.recertify_by,
    )  # fmt: skip


class AgentSection:
    """Every agent's view, by id: a live map, changed in place.

    A sync costs what changed, not the registry's size: the changed agents are read in one
    batch (three queries whatever their number) and each new view, built whole beforehand
    (an :class:`AgentView` is immutable), replaces the old one with one dict assignment,
    atomic under the GIL. So a reader never sees half of an agent's view; within one sync it
    may see agent A's new view and agent B's old one for a moment, as if B had changed a
    moment later. Agents are never removed (a killed one must stay refused). A reader that
    iterates takes :meth:`all` (a live map that gains an agent mid-iteration would raise).

    Copying the map instead, as before, made every sync at 100,000 agents cost 3 ms for one
    changed agent instead of 0.9 (SQLite; bench/README.md, "Propagation"). A sync that
    changed more than half the registry reloads it whole: no dearer, by then.
    """

    kinds = frozenset({Kind.AGENT.value})

    def __init__(self) -> None:
        self.views: dict[str, AgentView] = {}
        self.ready = True  # an empty registry is a registry

    def load(self, s: Session, now_us: int) -> None:
        # Built whole as the rows come, then swapped in: a reader sees the old map or this.
        self.views = {r.id: view_of(r) for r in directory.every_record(s)}

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        ids = changed[Kind.AGENT.value]
        if len(ids) * 2 > len(self.views):  # most of it: reading everything is no dearer
            self.load(s, now_us)
            return
        fresh = [(r.id, view_of(r)) for r in directory.records(s, ids)]
        self.views.update(fresh)

    def all(self) -> list[AgentView]:
        """Every view as of one instant (copied within one C call, holding the GIL)."""
        return list(self.views.values())

    def purge(self, now_us: int) -> None:
        del now_us  # agents are never forgotten: a killed one must stay refused


class PolicySection:
    kinds = frozenset({Kind.POLICY.value})

    def __init__(self, load_policies: Callable[[Session], CompiledPolicies]) -> None:
        self._load_policies = load_policies
        self.compiled: CompiledPolicies | None = None

    @property
    def ready(self) -> bool:
        return self.compiled is not None

    def load(self, s: Session, now_us: int) -> None:
        self.compiled = self._load_policies(s)

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        self.compiled = self._load_policies(s)

    def purge(self, now_us: int) -> None:
        del now_us


class DecisionSnapshot:
    """What the decision path reads, by the names it uses: the sections' current values and
    whether this worker is current. ``agents``, ``users`` and ``revoked_jtis`` are live maps
    a sync changes in place (one key at a time, each whole): look keys up; to go through all
    of them, take :meth:`agent_views` or :meth:`revoked_tokens`."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        agents: AgentSection,
        users: UserSection,
        tokens: RevokedTokens,
        policies: PolicySection,
        freezes: FreezeSection,
    ) -> None:
        self.runtime = runtime
        self._agents = agents
        self._users = users
        self._tokens = tokens
        self._policies = policies
        self._freezes = freezes

    @property
    def agents(self) -> Mapping[str, AgentView]:
        return self._agents.views

    @property
    def users(self) -> Mapping[str, UserView]:
        return self._users.views

    @property
    def revoked_jtis(self) -> Mapping[str, int]:
        return self._tokens.jtis

    def agent_views(self) -> list[AgentView]:
        return self._agents.all()

    def revoked_tokens(self) -> list[tuple[str, int]]:
        return self._tokens.all()

    @property
    def policies(self) -> CompiledPolicies | None:
        return self._policies.compiled

    @property
    def freezes(self) -> tuple[Freeze, ...]:
        return self._freezes.in_force

    def current(self) -> bool:
        return self.runtime.current()

    def fresh(self) -> bool:
        return self.runtime.fresh()

    def ensure_current(self) -> bool:
        return self.runtime.ensure_current()
