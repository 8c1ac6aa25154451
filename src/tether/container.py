"""Wiring: one :class:`Services` per process, built from :class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass

from tether.agents.service import AgentService
from tether.audit.ledger import Ledger
from tether.audit.service import AuditService
from tether.audit.signing import LedgerSigner
from tether.clock import Clock, SystemClock
from tether.config import Settings
from tether.credentials.keys import SigningKeys
from tether.credentials.oauth import OAuthService
from tether.credentials.service import CredentialService
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
    signing_keys: SigningKeys
    credentials: CredentialService
    oauth: OAuthService

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
    signing_keys = SigningKeys(
        db, ledger, clock, keys.master_key, alg=settings.token_signing_alg,
        max_token_ttl=settings.token_ttl_max_seconds, rotation_days=settings.key_rotation_days,
    )  # fmt: skip
    oauth = OAuthService(db, ledger, clock, signing_keys, settings)
    agents.kill_hooks.append(oauth.revoke_agent_tokens)
    return Services(
        settings=settings,
        db=db,
        clock=clock,
        keys=keys,
        ledger=ledger,
        users=UserService(db, ledger, clock),
        agents=agents,
        audit=AuditService(db, ledger, clock, agent_reader=agents.get),
        signing_keys=signing_keys,
        credentials=CredentialService(db, ledger, clock, agents),
        oauth=oauth,
    )
