"""Wiring: one :class:`Services` per process, built from :class:`Settings`."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import partial

from tether.agents.inventory import AgentInventory
from tether.agents.service import AgentService
from tether.alerts.service import AlertService, derived_secret
from tether.approvals.notify import WebhookNotifier
from tether.approvals.service import ApprovalService
from tether.audit.checkpoint_file import CheckpointFile
from tether.audit.group import GroupCommitter
from tether.audit.ledger import Ledger
from tether.audit.retention import RetentionService
from tether.audit.service import AuditService
from tether.audit.signing import LedgerSigner
from tether.audit.witness import HttpWitness
from tether.clock import Clock, SystemClock
from tether.config import Settings
from tether.credentials.bearer import Bearers
from tether.credentials.dpop_nonce import DPoPNonces, Purpose
from tether.credentials.keys import SigningKeys
from tether.credentials.oauth import OAuthService
from tether.credentials.runtime import RevokedTokens
from tether.credentials.service import CredentialService
from tether.credentials.store import DatabaseCredentialStore
from tether.db import Database
from tether.freeze.gate import IN_FORCE
from tether.freeze.runtime import FreezeSection
from tether.freeze.service import FreezeService
from tether.gateway.calls import CallRecorder
from tether.gateway.front import GatewayHandle
from tether.governance.report import ComplianceReports
from tether.governance.reviews import ReviewService
from tether.governance.rightsizing import MAX_DAYS, RightsizingService
from tether.keyfiles import RootKeys, load_root_keys
from tether.maintenance import Task
from tether.monitor.service import Monitor
from tether.policy.decide import DecisionService
from tether.policy.inputs import drop_through, input_rows
from tether.policy.runtime import AgentSection, DecisionSnapshot, PolicySection
from tether.policy.search import Candidate, SearchService
from tether.policy.service import PolicyService
from tether.revocations.feed import RevocationFeed
from tether.rollback.service import RollbackService
from tether.runtime.snapshot import Runtime
from tether.secrets.databases import DatabaseLogins
from tether.secrets.runtime import RevokedLeases, SecretsSection
from tether.secrets.service import SecretService
from tether.users.runtime import UserSection
from tether.users.service import UserService
from tether.users.signin import SignIn


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
    # Pruning the ledger past its retention period; a domain that references events keeps
    # them with retention.add_hold(name, hold) (tether.audit.retention.RetentionHold).
    retention: RetentionService
    signing_keys: SigningKeys
    credentials: CredentialService
    oauth: OAuthService
    policies: PolicyService
    runtime: Runtime
    committer: GroupCommitter
    approvals: ApprovalService
    decisions: DecisionService
    search: SearchService  # AuthZEN search over the decisions
    bearers: Bearers
    notifier: WebhookNotifier
    freezes: FreezeService
    revocations: RevocationFeed
    secrets: SecretService
    db_logins: DatabaseLogins
    gateway: GatewayHandle  # the MCP gateway; its upstream sessions live in the app's lifespan
    calls: CallRecorder  # tool calls on the record: the gateway's and the SDK guard's
    rollback: RollbackService  # undoing an agent's calls from the compensation journal
    signin: SignIn  # humans' passwords and console sessions
    alerts: AlertService  # notable events raised from the ledger, delivered to webhooks
    monitor: Monitor  # behaviour windows, risk, automatic responses (tether.monitor)
    inventory: AgentInventory  # the AI system register, exported as CSV or JSON
    reports: ComplianceReports  # compliance reports for a period, verifiable offline
    reviews: ReviewService  # access review campaigns (tether.governance.reviews)
    rightsizing: RightsizingService  # least privilege: unused permissions, a narrower set
    maintenance: list[Task]  # each domain's periodic work, in the order the loop runs it

    def close(self) -> None:
        self.db.drain()  # a kill's tokens, revoked after it returned
        self.committer.close()
        if self.audit.witness is not None:
            self.audit.witness.close()
        self.runtime.stop()
        self.notifier.close()
        self.db.dispose()


def webhook_secret(settings: Settings, keys: RootKeys) -> str:
    """The webhooks' signing secret, as text whose UTF-8 bytes are the HMAC key:
    ``TETHER_APPROVAL_WEBHOOK_SECRET``, else derived from the master key (the same on every
    node). ``tether webhooks secret`` prints it for receivers."""
    if settings.approval_webhook_secret:
        return settings.approval_webhook_secret
    return hmac.new(keys.master_key, b"tether approval webhooks v1", hashlib.sha256).hexdigest()


def _held_secrets(section: SecretsSection) -> list[Candidate]:
    """The secrets a resource search of type ``Secret`` looks at: every live one, with the
    properties a read is decided with (tether.secrets.service)."""
    return [Candidate(name, meta.properties) for name, meta in list(section.current.items())]


def _dpop_nonces(settings: Settings, keys: RootKeys, purpose: Purpose) -> DPoPNonces | None:
    if settings.dpop_nonce == "off":
        return None
    return DPoPNonces.derive(keys.master_key, purpose, lifetime=settings.dpop_nonce_seconds)


def _retention_stated(settings: Settings) -> dict[str, str]:
    """What a compliance report says is kept, and for how long (EU AI Act Art. 19, 26(6))."""
    days = settings.ledger_retention_days
    ledger = "every event is kept (TETHER_LEDGER_RETENTION_DAYS unset)"
    if days:
        ledger = (
            f"events older than {days} days are pruned daily, a signed checkpoint kept at the "
            "cut; nothing an open review references is pruned, nor what a report built within "
            "the retention period counted"
        )
    checkpoints = f"also appended to {settings.checkpoint_file_path.name}, outside the database"
    if settings.checkpoint_witness_url:
        checkpoints += ", and sent to a witness"
    return {"ledger": ledger, "checkpoints": checkpoints}


def build_services(settings: Settings, *, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    checkpoint_file = CheckpointFile(settings.checkpoint_file_path)
    checkpoint_file.check_writable()
    witness_url = settings.checkpoint_witness_url
    witness = HttpWitness(witness_url) if witness_url else None
    db = Database(settings.resolved_database_url, schema=settings.database_schema)
    keys = load_root_keys(settings)
    ledger = Ledger(
        LedgerSigner(keys.ledger_key),
        checkpoint_every_events=settings.checkpoint_every_events,
        checkpoint_every_seconds=settings.checkpoint_every_seconds,
    )
    agents = AgentService(db, ledger, clock, trust_domain=settings.trust_domain,
                          recertify_notice_days=settings.recertify_notice_days,
                          recertify_overdue=settings.recertify_responses)  # fmt: skip
    signing_keys = SigningKeys(
        db, ledger, clock, keys.master_key, alg=settings.token_signing_alg,
        max_token_ttl=settings.token_ttl_max_seconds, rotation_days=settings.key_rotation_days,
    )  # fmt: skip
    # Decisions' and token issuance's writes: many per transaction and fsync.
    committer = GroupCommitter(db, ledger, clock, max_batch=settings.decision_batch_max,
                               attach=input_rows)  # fmt: skip
    oauth = OAuthService(db, ledger, clock, signing_keys, settings, committer=committer,
                         dpop_nonces=_dpop_nonces(settings, keys, "token_endpoint"))  # fmt: skip
    agents.cut_offs.append(oauth.revoke_agent_tokens)
    users = UserService(db, ledger, clock)
    policies = PolicyService(db, ledger, clock, memo_capacity=settings.decision_memo_size)
    runtime = Runtime(db, clock, poll_seconds=settings.runtime_poll_seconds,
                      stale_seconds=settings.runtime_stale_seconds,
                      propagation_wait=settings.runtime_propagation_wait_seconds)  # fmt: skip
    # Each domain's part of the runtime snapshot (tether.runtime.sections).
    agent_views, known_users = AgentSection(), UserSection()
    revoked, compiled = RevokedTokens(), PolicySection(policies.compiled)
    freezes, revoked_leases = FreezeSection(), RevokedLeases()
    runtime.register(agent_views, known_users, revoked, compiled, freezes, revoked_leases)
    db.session_info[IN_FORCE] = lambda: freezes.in_force if runtime.waited_for() else None
    snapshot = DecisionSnapshot(runtime, agents=agent_views, users=known_users, tokens=revoked,
                                policies=compiled, freezes=freezes)  # fmt: skip
    notifier = WebhookNotifier(settings.approval_webhooks, webhook_secret(settings, keys).encode())
    approvals = ApprovalService(
        db, ledger, clock, notifier, ttl_seconds=settings.approval_ttl_seconds,
        max_pending_per_agent=settings.approval_max_pending_per_agent,
        allow_self_approval=settings.approval_allow_self_approval, public_url=settings.base_url,
    )  # fmt: skip
    agents.cut_offs.append(approvals.cancel_for_agents)
    bearers = Bearers(
        signing_keys,
        users,
        known_users,
        clock,
        issuer=oauth.endpoints.issuer,
        replay=oauth.dpop_replay,
        dpop_max_age=settings.dpop_max_age_seconds,
        dpop_nonces=_dpop_nonces(settings, keys, "resource"),
    )
    audit = AuditService(db, ledger, clock, agent_reader=agents.get,
                         checkpoint_file=checkpoint_file, witness=witness)  # fmt: skip
    retention = RetentionService(db, ledger, clock, retention_days=settings.ledger_retention_days)
    retention.on_prune.append(drop_through)  # a pruned decision's inputs go with it
    # What a report built within the retention period counted stays, so it verifies
    # against the live ledger (tether.governance.report: forgotten or aged, it holds nothing).
    retention.add_hold("compliance_reports", ComplianceReports.held_from)
    monitor = Monitor(settings.monitor, db, ledger, clock, agents)
    runtime.register(monitor.section)
    decisions = DecisionService(snapshot, committer, clock, approvals,
                                monitor if settings.monitor.enabled else None,
                                recertify_overdue=settings.recertify_responses)  # fmt: skip
    secrets = SecretService(
        db, ledger, clock, root_key=keys.master_key, decisions=decisions, committer=committer,
        max_bytes=settings.secret_max_bytes, versions_kept=settings.secret_versions_kept,
        lease_seconds=settings.secret_lease_seconds,
        lease_max_seconds=settings.secret_lease_max_seconds,
        reads_per_minute=settings.secret_reads_per_minute,
    )  # fmt: skip
    runtime.register(secrets.section)
    agents.cut_offs.append(secrets.revoke_for_agents)
    db_logins = DatabaseLogins(secrets)
    secrets.on_revoke.append(db_logins.after_revoke)
    freeze_service = FreezeService(db, ledger, clock, notifier.notify)
    freeze_service.on_freeze.append(secrets.revoke_frozen)
    calls = CallRecorder(committer, clock)
    search = SearchService(decisions, {"Secret": partial(_held_secrets, secrets.section)})
    gateway = GatewayHandle(settings.gateway_upstreams, decisions, committer,
                            secrets.broker_value, settings.base_url, calls=calls,
                            search=search)  # fmt: skip
    rollback = RollbackService(db, ledger, clock, agents=agents, decisions=decisions,
                               gateway=gateway, redactor=calls.redactor,
                               lease_seconds=settings.rollback_lease_seconds)  # fmt: skip
    credentials = CredentialService(db, ledger, clock, agents)
    reviews = ReviewService(
        db, ledger, clock, agents=agents, credentials=credentials, policies=policies
    )
    # An open access review keeps the events it cites (its start, its lines' last uses).
    retention.add_hold("access_reviews", reviews.lowest_referenced_seq)
    return Services(
        policies=policies,
        runtime=runtime,
        committer=committer,
        approvals=approvals,
        decisions=decisions,
        search=search,
        maintenance=[
            *audit.maintenance(),
            *retention.maintenance(),
            *signing_keys.maintenance(),
            *oauth.maintenance(),
            *approvals.maintenance(),
            *agents.expiry.maintenance(),
            *agents.recertification.maintenance(),
            *runtime.maintenance(),
            *secrets.maintenance(),
            *db_logins.maintenance(),
            *monitor.maintenance(),
        ],
        monitor=monitor,
        bearers=bearers,
        notifier=notifier,
        settings=settings,
        db=db,
        clock=clock,
        keys=keys,
        ledger=ledger,
        users=users,
        agents=agents,
        audit=audit,
        retention=retention,
        signing_keys=signing_keys,
        credentials=credentials,
        reviews=reviews,
        rightsizing=RightsizingService(
            db,
            clock,
            agents=agents,
            credentials=credentials,
            policies=policies,
            decisions=decisions,
            max_days=settings.ledger_retention_days or MAX_DAYS,
        ),
        inventory=AgentInventory(db, ledger, clock, credentials=DatabaseCredentialStore().count_of),
        reports=ComplianceReports(
            db,
            ledger,
            clock,
            audit=audit,
            inventory=AgentInventory(db, ledger, clock),
            policies=policies,
            reviews=reviews,
            retention=_retention_stated(settings),
            retention_days=settings.ledger_retention_days,
        ),
        oauth=oauth,
        freezes=freeze_service,
        revocations=RevocationFeed(db, snapshot, clock, sources=[revoked_leases]),
        secrets=secrets,
        db_logins=db_logins,
        calls=calls,
        gateway=gateway,
        rollback=rollback,
        alerts=AlertService(
            db,
            ledger,
            clock,
            agents=agents,
            webhooks=settings.alert_webhooks,
            secret=settings.alert_webhook_secret or derived_secret(keys.master_key),
            dedup_seconds=settings.alert_dedup_seconds,
            retry_max_seconds=settings.alert_retry_max_seconds,
            dead_after_hours=settings.alert_dead_after_hours,
        ),
        signin=SignIn(
            db,
            ledger,
            clock,
            idle_seconds=settings.console_idle_minutes * 60,
            lifetime_seconds=settings.console_session_hours * 3600,
        ),
    )
