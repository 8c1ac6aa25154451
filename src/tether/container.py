"""Wiring: one :class:`Services` per process, built from :class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass

from tether.agents.service import AgentService
from tether.audit.ledger import Ledger
from tether.audit.service import AuditService
from tether.audit.signing import LedgerSigner
from tether.clock import Clock, SystemClock
from tether.config import Settings
from tether.db import Database
from tether.keyfiles import RootKeys, load_root_keys
from tether.users.service import UserService


@dataclass
class Services:
    settings: Settings
    db: Database
    clock: Clock
    keys: RootKeys
    ledger: Ledger
    users: UserService
    agents: AgentService
    audit: AuditService

    def close(self) -> None:
        self.db.dispose()


def build_services(settings: Settings, *, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url, schema=settings.database_schema)
    keys = load_root_keys(settings)
    ledger = Ledger(
        LedgerSigner(keys.ledger_key),
        checkpoint_every_events=settings.checkpoint_every_events,
        checkpoint_every_seconds=settings.checkpoint_every_seconds,
    )
    agents = AgentService(db, ledger, clock, trust_domain=settings.trust_domain)
    return Services(
        settings=settings,
        db=db,
        clock=clock,
        keys=keys,
        ledger=ledger,
        users=UserService(db, ledger, clock),
        agents=agents,
        audit=AuditService(db, ledger, clock, agent_reader=agents.get),
    )
