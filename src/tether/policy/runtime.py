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

_FULL_RELOAD_AT = 2_000  # more changed agents than this in one sync: reload them all


def view_of(record: AgentRecord) -> AgentView:
    return agent_view(
        id=record.id, name=record.name, owner_id=record.owner_id, purpose=record.purpose,
        risk_tier=record.risk_tier, status=record.status, attributes=record.attributes,
        expires_at=record.expires_at, roles=record.roles, supervisors=record.supervisors,
    )  # fmt: skip


class AgentSection:
    kinds = frozenset({Kind.AGENT.value})

    def __init__(self) -> None:
        self.views: dict[str, AgentView] = {}
        self.ready = True  # an empty registry is a registry

    def load(self, s: Session, now_us: int) -> None:
        self.views = {r.id: view_of(r) for r in directory.records(s)}

    def apply(self, s: Session, changed: Mapping[str, set[str]], now_us: int) -> None:
        ids = changed[Kind.AGENT.value]
        if len(ids) > _FULL_RELOAD_AT:
            self.load(s, now_us)
            return
        merged = dict(self.views)
        merged.update((r.id, view_of(r)) for r in directory.records(s, ids))
        self.views = merged

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
    """What the decision path reads, by the names it uses: the sections' current values
    (each replaced whole on a change) and whether this worker is current."""

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
    def agents(self) -> dict[str, AgentView]:
        return self._agents.views

    @property
    def users(self) -> dict[str, UserView]:
        return self._users.views

    @property
    def revoked_jtis(self) -> dict[str, int]:
        return self._tokens.jtis

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
