"""Acceptance: "schemathesis over the whole OpenAPI with all checks: 0 server errors, responses
conform".

This is ``st run --checks all --mode all`` done in-process: schemathesis' own engine (the one its
CLI drives) runs against the ASGI app built by :func:`tether.api.app.create_app` (no server, no
network), authenticated through the ``HTTPBearer`` security scheme that the OpenAPI document
declares, once as the bootstrap admin and once as an auditor (read-only: every write it tries is
a documented 403, with fewer examples since most of its requests stop there), with

* every check schemathesis has (``test_every_check_is_enabled`` fails if an upgrade adds one this
  file does not know about, so nothing is left out silently);
* positive and negative data in every phase: examples, coverage (boundary values, missing and
  malformed parameters and bodies, undeclared methods, requests without or with bad
  credentials), fuzzing, and stateful sequences over the links schemathesis infers from the
  document (create an agent, then patch / suspend / resume / retire / kill / clone it, read it
  back; create a user, mint and revoke its tokens, ...);
* some existing state handed over by name, as to any client (``Existing``): an agent's API key
  for the token endpoint, and agents and credentials in the states the agent operations need.

The engine is used rather than ``schemathesis.pytest.from_fixture`` + ``case.call_and_validate``
because that lazy-fixture integration (schemathesis 4.32) reads ``Function._nodeid``, which
pytest 9.2 no longer has; the engine also gives the stateful phase the same link inference and
feedback as the CLI.

Like every storage test it runs on SQLite and on PostgreSQL (the ``services`` fixture is
parametrized by ``backend``): over the 101 operations of 2026-12-07, per backend about 80 s of
CPU as the admin (coverage 35, fuzzing 35, stateful 10) and 30-38 s as the auditor (this
2-CPU machine), most of it schemathesis generating data: together over a fifth of the suite's
CPU. (Ten fuzzing examples instead of 15 left ``POST /oauth/token`` without a 200.)
Everything is derandomized (``generation.deterministic`` is Hypothesis' ``derandomize=True``;
fixed seed; no example database) and bounded by ``MAX_EXAMPLES``, ``AUDITOR_*`` and
``STATEFUL_*``, not by time.

Exactly one thing is excused, narrowly and per response: see ``_state_dependent_rejection``.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
import schemathesis
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.result import Ok
from schemathesis.engine import Status, StopReason, events, from_schema
from schemathesis.openapi.checks import RejectedPositiveData

from tether.agents.schemas import AgentCreate
from tether.api.app import create_app
from tether.clock import to_rfc3339
from tether.container import Services
from tether.credentials.bearer import Caller
from tether.errors import Unauthenticated
from tether.governance.review_schemas import ReviewCreate
from tether.policy.values import Ask
from tether.principals import SYSTEM, Principal, Role
from tether.rollback.values import Window
from tether.secrets.service import SecretInput

SEED = 20_261_129
MAX_EXAMPLES = 15  # fuzzing examples per operation, positive and negative together
STATEFUL_EXAMPLES = 20  # stateful scenarios
STATEFUL_STEPS = 10  # requests per scenario, at most
# The auditor's run: most of what it sends is a write refused before the body is looked at
# (403), so fewer examples find what there is to find (its reads, the 403s' documentation).
AUDITOR_EXAMPLES = 6
AUDITOR_STATEFUL_EXAMPLES = 8
# The writes an auditor may make (their own tokens and password, the read-only policy and
# report tools, the OAuth endpoints, which take no bearer token). Every other write is refused
# (403), or its body refused first exactly as for the admin (422): the coverage phase's
# boundary and malformed inputs for it are the admin's run's, so the auditor's run leaves
# them to it (51 -> 29 s of CPU on SQLite, 52 -> 38 s on PostgreSQL, 2026-12-07, this
# machine) and fuzzes those writes, 403 and 422, as before.
AUDITOR_WRITES = (
    "DELETE /v1/users/{user}/tokens/{token_id}",
    "POST /oauth/introspect",
    "POST /oauth/revoke",
    "POST /oauth/token",
    "POST /v1/policies/simulate",
    "POST /v1/policies/validate",
    "POST /v1/reports",
    "POST /v1/reports/compliance/verify",
    "POST /v1/users/{user}/tokens",
    "PUT /v1/users/{user}/password",
)

KNOWN_CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "ensure_resource_availability",
    "ignored_auth",
    # Compares what two identities may read; it needs schemathesis' WFC multi-user auth. The two
    # identities here, admin and auditor, both read the whole registry by design (API.md
    # "Roles"), so they are not peers whose objects must stay apart; the identities that are
    # (supervisors, each seeing their own agents) are tested by test_agents_authz.py.
    "object_level_authorization",
}


def _body_of(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# OAuth refusals (``{"error", "error_description"}``, RFC 6749 §5.2) that depend on what the
# server holds: the scopes an agent may hold, and which tokens it issued and are still live.
_OAUTH_STATE_REFUSALS = {
    "invalid_scope": ("exceeds what the agent may hold",),
    "invalid_grant": (
        "is not an active access token",  # subject or actor token unknown, expired or revoked
        "is not a valid subject token",
        "must be the agent's own, not a delegated token",
        "may_act does not name this agent",
        "in the delegation chain is not active",
        "in the delegation chain has expired",
        "the subject token has expired",
        "the human in the delegation chain no longer exists",
        "exceeds the maximum depth",
        "is frozen (",  # an agent of the chain under a freeze the run itself put in force
    ),
    "invalid_target": ("the subject token does not reach that audience",),
}
# A public JWK the document admits (the right members, base64url of the right lengths, RSA
# numbers of the right size and parity) that is still not a key: an EC point off its curve.
# Checked by the key import (the cryptography library's message); no JSON Schema can state it.
_UNUSABLE_KEY = ("Point is not on the curve",)


def _state_dependent_rejection(status: int, content: bytes) -> bool:
    """A schema-valid request that the API refuses for a reason no JSON Schema can state.

    ``positive_data_acceptance`` expects every request that fits the document to be accepted
    (2xx, or 401/403/404/409). These refusals are correct, documented (400/422 with the field
    named, API.md "Errors"; OAuth errors as their RFCs say) and depend on server state or on
    the clock, so no document can exclude them and schemathesis cannot avoid generating them:

    * 422 for an ``owner`` / ``supervisors`` entry that names no user (or an auditor), a
      ``parent`` agent that does not exist, an ``expires_at`` / ``recertify_by`` that is
      not in the future, a recertification's ``until`` not in the future or past the
      agent's tier's period, a credential's ``scopes`` ceiling beyond what the agent may hold, or
      a subject token for an ``agent`` that is not an active agent (or is frozen: the run
      freezes and unfreezes too); a freeze ``scope`` naming no user, or a role no agent has;
      a merge patch's ``fingerprint`` without ``model`` for an agent that has no fingerprint
      yet (the patch merges into the agent's: only its state says whether ``model`` is new);
      an access review's ``owners`` or ``agents`` entry naming no user or agent, or a
      ``due`` not in the future.
    * 422 on a secret's ``lease_seconds`` or ``value`` (a database role's ``ttl_seconds``)
      beyond the deployment's configured bounds (``TETHER_SECRET_LEASE_MAX_SECONDS``,
      ``TETHER_SECRET_MAX_BYTES``): settings, which one static document cannot state for
      every deployment; a database connection's ``dsn_secret`` naming no secret, a role's
      ``connection`` naming no connection, and a
      role template with a placeholder other than the ones it may use (``{{name}}``…).
    * 422 on field ``jwk`` for an EC key whose coordinates the document admits but that is not
      a point on its curve (``_UNUSABLE_KEY``): not server state, but like it a property of
      the value no JSON Schema can state.
    * 422 ``policy_invalid``: a Cedar document (or schema) that does not parse or validate —
      Cedar's grammar and type checker, not JSON Schema, define it; ``details.errors`` lists
      Cedar's findings, not the request model's.
    * 422 on an AuthZEN ``context`` or ``properties`` nested deeper than Cedar takes: the
      document's ``CedarValue`` is recursive, and JSON Schema bounds no recursion depth
      short of spelling out every level.
    * 422 on a rollback's ``since`` after its ``until`` (two fields' order: JSON Schema
      compares no two values), or a window holding more calls than one rollback takes.
    * 422 on a compliance report's period: ``from`` not before ``to`` (two fields' order), a
      ``to`` in the future (the clock), or a time whose offset takes it outside years 1-9999
      in UTC (``date-time`` admits ``0001-01-01T00:00:00+01:00``).
    * 422 on a prune's ``retention_days`` left out when the deployment configures no
      retention period (``TETHER_LEDGER_RETENTION_DAYS``): a setting again.
    * OAuth 400s at the token endpoint (``_OAUTH_STATE_REFUSALS``): a ``scope`` beyond the
      agent's, and token-exchange subject / actor tokens the server did not issue or that are
      no longer live.

    What a schema can say, the document says, and nothing of it is excused here: cursors have
    the exact pattern the server reads (``tether.pagination``), ids and usernames theirs, and
    AuthZEN requests their reserved context keys, the resource types that cannot be acted on
    and the batch's need of a subject, action and resource (test_openapi_contract.py).

    Only that one check is excused, and only for such a response: every other check still
    judges it (documented status, error shape, headers). A 422 from the request model itself
    (``details.errors`` present) is never excused, since it would mean the document admits what
    the model refuses: a real defect.
    """
    body = _body_of(content)
    if status == 422 and _cedar_refusal(body):
        return True
    oauth_error, description = body.get("error"), body.get("error_description")
    if isinstance(oauth_error, str) and isinstance(description, str):
        return status == 400 and any(
            marker in description for marker in _OAUTH_STATE_REFUSALS.get(oauth_error, ())
        )
    error = oauth_error if isinstance(oauth_error, dict) else {}
    details = error.get("details")
    if not isinstance(details, dict) or "errors" in details:
        return False
    where, code, message = details.get("field"), error.get("code"), str(error.get("message"))
    if status == 422 and code == "validation_error":
        if where in {"owner", "supervisors"}:
            return message.startswith("no user ") or "must be admins or supervisors" in message
        if where == "owners":  # an access review's scope
            return message.startswith("no user ")
        if where == "agents":
            return message.startswith("no agent ")
        if where == "parent":
            return message.endswith("does not exist")
        if where in {"expires_at", "recertify_by", "due"}:
            return message.endswith("must be in the future")
        if where == "until":  # a recertification: in the future, within the tier's period
            return message.endswith("must be in the future") or "recertification period" in message
        if where == "scopes":
            return "exceed what the agent may hold" in message
        if where == "agent":  # not an active agent, or one under a freeze the run put in force
            return message.endswith("is not an active agent") or " is frozen (" in message
        if where == "scope.owner":
            return message.startswith("no user ")
        if where == "scope.role":
            return message.startswith("no agent has role ")
        if where == "fingerprint.model":
            return message.startswith("the agent has no fingerprint yet")
        if where == "jwk":
            return message.startswith("jwk: ") and any(m in message for m in _UNUSABLE_KEY)
        if where in {"lease_seconds", "value", "ttl_seconds"}:  # bounded by the settings
            return any(m in message for m in _CONFIGURED_BOUNDS)
        if where == "dsn_secret":
            return message.startswith("no secret named ")
        if where == "connection":
            return message.startswith("no database connection ")
        if where in {"from", "to"}:  # a report's period: from before to, to not in the future
            return (message == "from must be before to" or " is in the future: " in message
                    or message.endswith("is out of range (years 1 to 9999 UTC)"))  # fmt: skip
        if where == "since":  # a rollback's window: since after until, or too many calls
            return message == "since is after until" or message.startswith("more than ")
        if where in {"creation", "revocation"}:  # {{x}}: a template's own grammar
            return message.startswith("unknown placeholder")
        if where == "retention_days":  # a prune with no period: none given, none configured
            return message.startswith("no retention period")
    return False


# A secret's lease and size are bounded by settings (TETHER_SECRET_*), not by the document.
_CONFIGURED_BOUNDS = ("TETHER_SECRET_LEASE_MAX_SECONDS", "TETHER_SECRET_MAX_BYTES")


_CEDAR_MESSAGES = ("nested too deeply",)
# Operations only an agent's own access token may use: a human's token is refused (403).
AGENT_ONLY = {
    "GET /v1/secrets/{name}/value",
    "POST /v1/secrets/leases/{lease_id}/renew",
    "POST /v1/secrets/db/{role}/lease",
    "POST /v1/tool-calls",
}


def _cedar_refusal(body: dict[str, Any]) -> bool:
    error = body.get("error")
    if not isinstance(error, dict):
        return False
    if error.get("code") == "policy_invalid":
        return True
    details = error.get("details")
    return (
        error.get("code") == "validation_error"
        and isinstance(details, dict)
        and "errors" not in details
        and any(m in str(error.get("message")) for m in _CEDAR_MESSAGES)
    )


@dataclass
class Run:
    """What one schemathesis run did and found."""

    phases: dict[str, str] = field(default_factory=dict)
    tested: dict[str, set[str]] = field(default_factory=dict)  # phase -> operations
    checks_run: set[str] = field(default_factory=set)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)  # operation -> statuses
    failures: dict[tuple[str, str, str], str] = field(default_factory=dict)
    excused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop_reason: StopReason | None = None

    def report(self) -> str:
        lines = [f"phases: {self.phases}", f"stop: {self.stop_reason}"]
        lines += [f"ERROR {e}" for e in self.errors]
        for (phase, check, operation), detail in sorted(self.failures.items()):
            lines.append(f"--- [{phase}] {check} on {operation}\n{detail}")
        return "\n".join(lines)


# The agent operations that change an agent's state, each with the state it needs.
_TRANSITIONS = {"suspend": "active", "resume": "suspended", "retire": "active", "kill": "active"}


@dataclass(frozen=True)
class Existing:
    """State the run is handed by name, as a client would be: an agent with an API key, so the
    token endpoint can answer 200 (and introspection and revocation see live tokens), and for
    each state-changing agent operation a few agents in the state it needs, and credentials to
    delete. A random id names nothing, and which ids the stateful phase carries from one call
    to the next is chance: without these, an operation may never see a resource it can change,
    and its success body would go unchecked."""

    # Placeholders for a run that is only configured, not started (test_every_check_is_enabled).
    client_id: str = "agt_none"
    client_secret: str = "tsk_none"
    agents: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: dict.fromkeys(_TRANSITIONS, ("agt_none",))
    )
    keyholder: str = "agt_none"  # an agent with credentials to delete
    credentials: tuple[str, ...] = ("crd_none",)
    approvals: tuple[str, ...] = ("apr_none", "apr_nothing")  # pending, to approve, deny and show
    secret_names: tuple[str, ...] = ("none",)  # secrets to show, read, version and put again
    secrets_to_delete: tuple[str, ...] = ("none",)
    leases: tuple[str, ...] = ("lse_none",)  # leases to show, renew and revoke
    rollbacks: tuple[str, ...] = ("rbk_none",)  # rollbacks to read
    alerts: tuple[str, ...] = ("alr_none",)  # alerts to acknowledge
    reviews: tuple[str, ...] = ("rvw_none",)  # an access review to read and close
    to_confirm: tuple[str, ...] = ("rvw_none",)  # a review whose credential lines are reduced
    lines_to_confirm: tuple[str, ...] = ("rvl_none",)  # ... those lines, to carry out
    to_answer: tuple[str, ...] = ("rvw_none",)  # a review to answer
    lines_to_answer: tuple[str, ...] = ("rvl_none",)
    reports: tuple[str, ...] = ("evt_none",)  # compliance reports on record, to forget


def _existing(services: Services, admin_token: str) -> Existing:
    admin = services.users.authenticate(admin_token)

    def agent(name: str) -> str:
        spec = {"name": name, "owner": "admin", "purpose": "schemathesis",
                "risk_tier": "minimal", "scopes": ["tools:read", "tools:write"],
                "roles": ["ops"]}  # fmt: skip
        return services.agents.create(admin, AgentCreate.model_validate(spec)).id

    client_id = agent("schemathesis-client")
    _, secret = services.credentials.create_api_key(admin, client_id)
    pools: dict[str, tuple[str, ...]] = {}
    for op, state in _TRANSITIONS.items():
        pools[op] = tuple(agent(f"schemathesis-{op}-{i}") for i in range(3))
        for agent_id in pools[op] if state == "suspended" else ():
            services.agents.suspend(admin, agent_id, reason="to be resumed")
    keyholder = agent("schemathesis-keyholder")
    keys = tuple(services.credentials.create_api_key(admin, keyholder)[0].id for _ in range(3))
    approvals = _pending_approvals(services, admin)  # pushes a policy that permits every read
    names = tuple(f"schemathesis-secret-{i}" for i in range(3))
    doomed = tuple(f"schemathesis-doomed-{i}" for i in range(3))
    for name in names + doomed:
        services.secrets.put(admin, name, SecretInput(b"value", labels=["ops"]))
    # a database connection and a role to register again (nothing is minted: no agent leases)
    services.secrets.put(admin, "schemathesis-dsn", SecretInput(b"postgresql://nowhere/x"))
    services.db_logins.put_connection(admin, "schemathesis-db", dsn_secret="schemathesis-dsn")
    reader = Caller(Principal("agent", client_id, client_id), None, (client_id,), None)
    leases = tuple(
        asyncio.run(services.secrets.read(reader, names[i % len(names)])).lease.id for i in range(4)
    )
    # rollbacks to read (of an agent that made no call: nothing runs)
    rollbacks = tuple(
        asyncio.run(services.rollback.run(admin, Window(keyholder))).rollback_id or ""
        for _ in range(2)
    )
    # alerts to acknowledge: suspensions of agents of their own, raised from the ledger
    for i in range(3):
        services.agents.suspend(admin, agent(f"schemathesis-alerted-{i}"), reason="alert")
    services.alerts.project()
    alerts = tuple(a.id for a in services.alerts.list(admin, limit=10).items)
    # access reviews, each over an agent of its own with API keys: one to read and close, one
    # whose credential lines are answered reduce (to confirm), one to answer
    reviews: list[tuple[str, tuple[str, ...]]] = []
    for i in range(3):
        reviewed = agent(f"schemathesis-reviewed-{i}")
        for _ in range(3):
            services.credentials.create_api_key(admin, reviewed)
        review = services.reviews.start(admin, ReviewCreate(agents=[reviewed]))
        lines = services.reviews.get(admin, review.id).lines or []
        keys_lines = tuple(line.id for line in lines if line.kind == "credential")
        reviews.append((review.id, keys_lines if i == 1 else tuple(x.id for x in lines)))
    for line_id in reviews[1][1]:
        services.reviews.answer(admin, reviews[1][0], line_id, "reduce", note="schemathesis")
    # compliance reports on record (each an id to forget)
    until = to_rfc3339(services.clock.now())
    reports = tuple(
        str(services.reports.build(admin, start="2020-01-01", end=until)["binding"]["event"]["id"])
        for _ in range(3)
    )
    return Existing(client_id, secret, pools, keyholder, keys, approvals, names, doomed, leases,
                    rollbacks, alerts, (reviews[0][0],), (reviews[1][0],), reviews[1][1],
                    (reviews[2][0],), reviews[2][1], reports)  # fmt: skip


def _pending_approvals(services: Services, admin: Any) -> tuple[str, ...]:
    """A high-risk agent asked for a mutating action a few times: approvals to decide."""
    spec = {"name": "schemathesis-risky", "owner": "admin", "purpose": "schemathesis",
            "risk_tier": "high"}  # fmt: skip
    risky = services.agents.create(admin, AgentCreate.model_validate(spec)).id
    services.policies.push(admin, note=None, schema=None,
                           policies='@id("w") permit(principal, action, resource);')  # fmt: skip
    asks = [Ask(risky, "tool.write", "Tool", f"t{i}") for i in range(16)]
    return tuple(str(services.decisions.decide_sync(a).approval_id) for a in asks)


def _config(existing: Existing | None = None, who: Identity | None = None) -> schemathesis.Config:
    existing = existing or Existing()
    who = who or Identity("admin", "tth_none")
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "suppress-health-check": [
                # Each example is a round trip through the app and a database write, and the agent
                # body strategies (patterns inside nested unions) legitimately filter a lot.
                "too_slow",
                "filter_too_much",
                "data_too_large",
            ],
            # Values that name existing state, mixed into generated bodies (positive data
            # only takes those that fit the schema). Without them every generated agent names
            # a random owner and is refused (422), so patch / suspend / kill / clone would
            # never see an agent.
            "dictionaries": {
                "humans": {"values": ["admin"]},
                "people": {"values": ["admin", who.username]},  # whose tokens to list
                "roles": {"values": ["ops"]},
                "future": {"values": ["2099-01-01T00:00:00Z", "2098-06-30T12:00:00.5+02:00"]},
                # a report's period: from before to, to not in the future
                "period_from": {"values": ["2020-01-01", "2021-06-30T00:00:00Z"]},
                "period_to": {"values": ["2025-01-01", "2025-06-30T12:00:00+02:00"]},
                "clients": {"values": [existing.client_id]},
                "secrets": {"values": [existing.client_secret]},
                "scope": {"values": ["tools:read", "tools:read tools:write", ""]},
                **{f"to_{op}": {"values": list(ids)} for op, ids in existing.agents.items()},
                "keyholder": {"values": [existing.keyholder]},
                "credentials": {"values": list(existing.credentials)},
                "approvals": {"values": list(existing.approvals)},
                "to_approve": {"values": list(existing.approvals[::2])},
                "to_deny": {"values": list(existing.approvals[1::2])},
                "versions": {"values": ["v0", "v1"]},
                "waits": {"values": [0, 0.05]},
                "secret_names": {"values": list(existing.secret_names)},
                "secrets_to_delete": {"values": list(existing.secrets_to_delete)},
                "leases": {"values": list(existing.leases)},
                "rollbacks": {"values": list(existing.rollbacks)},
                "alerts": {"values": list(existing.alerts)},
                "reviews": {"values": list(existing.reviews)},
                "to_confirm": {"values": list(existing.to_confirm)},
                "lines_to_confirm": {"values": list(existing.lines_to_confirm)},
                "to_answer": {"values": list(existing.to_answer)},
                "lines_to_answer": {"values": list(existing.lines_to_answer)},
                "reports": {"values": list(existing.reports)},
                "dsn_secrets": {"values": ["schemathesis-dsn"]},
                "db_connections": {"values": ["schemathesis-db"]},
            },
            "parameters": {
                "body.owner": {"dictionary": "humans", "probability": 0.6},
                "body.supervisors[*]": {"dictionary": "humans", "probability": 0.6},
                "body.expires_at": {"dictionary": "future", "probability": 0.5},
                "body.recertify_by": {"dictionary": "future", "probability": 0.5},
                "body.until": {"dictionary": "future", "probability": 0.3},
                # Whenever a token request authenticates with client_secret_post, it is as the
                # client handed over; it asks for some or all of that agent's scopes.
                "body.client_id": {"dictionary": "clients", "probability": 1.0},
                "body.client_secret": {"dictionary": "secrets", "probability": 1.0},
                "body.scope": {"dictionary": "scope", "probability": 0.6},
                # A freeze's scope names an owner there is (a role: "ops" is the clients').
                "body.scope.owner": {"dictionary": "humans", "probability": 0.6},
                "body.scope.role": {"dictionary": "roles", "probability": 0.6},
                "query.owner": {"dictionary": "humans", "probability": 0.6},
                "body.period.from": {"dictionary": "period_from", "probability": 0.5},
                "body.period.to": {"dictionary": "period_to", "probability": 0.5},
                "query.from": {"dictionary": "period_from", "probability": 0.5},
                "query.to": {"dictionary": "period_to", "probability": 0.5},
                "query.role": {"dictionary": "roles", "probability": 0.6},
            },
            "generation": {
                "mode": "all",  # positive and negative
                "deterministic": True,
                "database": "none",
                "max-examples": who.max_examples,
            },
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {
                    "enabled": True,
                    "max-steps": STATEFUL_STEPS,
                    "generation": {"max-examples": who.stateful_examples},
                },
            },
            "checks": {"enabled": True},
            "operations": [
                *(
                    [
                        {
                            "exclude-method": "GET",
                            "exclude-name": list(who.covered_writes),
                            "phases": {"coverage": {"enabled": False}},
                        }
                    ]
                    if who.covered_writes is not None
                    else []
                ),
                *(
                    {
                        "include-path": f"/v1/agents/{{agent_id}}/{op}",
                        "parameters": {
                            "path.agent_id": {"dictionary": f"to_{op}", "probability": 0.4}
                        },
                        # Not an id seen in a response: lists and searches name every agent,
                        # the token client among them, and once it is suspended, retired or
                        # killed nothing that needs it (tokens, subject tokens) can succeed.
                        "phases": {
                            "coverage": {"extra-data-sources": {"responses": False}},
                            "fuzzing": {"extra-data-sources": {"responses": False}},
                        },
                    }
                    for op in _TRANSITIONS
                ),
                *(
                    {
                        "include-path": path,
                        "parameters": {
                            "path.approval_id": {"dictionary": pool, "probability": 0.6},
                            # a long poll holds the request for up to ``wait`` seconds
                            "query.wait": {"dictionary": "waits", "probability": 1.0},
                        },
                    }
                    # approve and deny each get pending approvals of their own: one must not
                    # decide all of them before the other is tried
                    for path, pool in (
                        ("/v1/approvals/{approval_id}", "approvals"),
                        ("/v1/approvals/{approval_id}/approve", "to_approve"),
                        ("/v1/approvals/{approval_id}/deny", "to_deny"),
                    )
                ),
                *(
                    {
                        # reviews and lines there are (a random id names nothing: 404 only)
                        "include-name": name,
                        "parameters": {
                            "path.review_id": {"dictionary": review, "probability": 0.6},
                            **(
                                {"path.line_id": {"dictionary": lines, "probability": 0.6}}
                                if lines
                                else {}
                            ),
                        },
                        # Not an id seen in a response: GET /v1/reviews names every review,
                        # and a close (or a keep) of the one to confirm or answer would leave
                        # those operations nothing they can do (409 only).
                        "phases": {
                            "coverage": {"extra-data-sources": {"responses": False}},
                            "fuzzing": {"extra-data-sources": {"responses": False}},
                        },
                    }
                    for name, review, lines in (
                        ("GET /v1/reviews/{review_id}", "reviews", None),
                        ("POST /v1/reviews/{review_id}/close", "reviews", None),
                        (
                            "POST /v1/reviews/{review_id}/lines/{line_id}/confirm",
                            "to_confirm",
                            "lines_to_confirm",
                        ),
                        (
                            "POST /v1/reviews/{review_id}/lines/{line_id}/answer",
                            "to_answer",
                            "lines_to_answer",
                        ),
                    )
                ),
                {
                    "include-name": "DELETE /v1/reports/{report_id}",
                    "parameters": {"path.report_id": {"dictionary": "reports", "probability": 0.6}},
                },
                {
                    "include-path": "/v1/alerts/{alert_id}/ack",
                    "parameters": {"path.alert_id": {"dictionary": "alerts", "probability": 0.6}},
                },
                {"include-path": "/v1/alerts/stream", "max-stream-events": 1},
                {
                    "include-path": "/v1/rollbacks/{rollback_id}",
                    "parameters": {
                        "path.rollback_id": {"dictionary": "rollbacks", "probability": 0.6}
                    },
                },
                {
                    # The stream never ends: schemathesis reads it until max-stream-events
                    # events have come (default 20). What is there comes at once (a reset,
                    # the items, a "current"), then one "current" every 2 s: ~20 s of waiting
                    # per run. The document gives no event schema, so the checks judge the
                    # status, headers and content type, all there with the first event.
                    "include-path": "/v1/revocations/stream",
                    "max-stream-events": 1,
                },
                *(
                    {
                        # secrets that exist (a random name names nothing: 404 only)
                        "include-name": name,
                        "parameters": {"path.name": {"dictionary": pool, "probability": 0.6}},
                    }
                    for name, pool in (
                        ("GET /v1/secrets/{name}", "secret_names"),
                        ("GET /v1/secrets/{name}/versions", "secret_names"),
                        ("GET /v1/secrets/{name}/value", "secret_names"),
                        ("PUT /v1/secrets/{name}", "secret_names"),
                        ("DELETE /v1/secrets/{name}", "secrets_to_delete"),
                    )
                ),
                *(
                    {
                        "include-path": path,
                        "parameters": {
                            "path.lease_id": {"dictionary": "leases", "probability": 0.6}
                        },
                    }
                    for path in (
                        "/v1/secrets/leases/{lease_id}",
                        "/v1/secrets/leases/{lease_id}/renew",
                        "/v1/secrets/leases/{lease_id}/revoke",
                    )
                ),
                {
                    # a connection names a secret there is, a role a connection there is
                    "include-path-regex": "^/v1/secrets/db/(connections|roles)/",
                    "parameters": {
                        "body.dsn_secret": {"dictionary": "dsn_secrets", "probability": 0.7},
                        "body.connection": {"dictionary": "db_connections", "probability": 0.7},
                    },
                },
                {
                    # A user lists its own tokens (an admin anyone's): the caller's name, not
                    # left to chance (the auditor's run must see a 200 too).
                    "include-name": "GET /v1/users/{user}/tokens",
                    "parameters": {"path.user": {"dictionary": "people", "probability": 0.6}},
                },
                {
                    "include-path": "/v1/policies/versions/{version}",
                    "parameters": {"path.version": {"dictionary": "versions", "probability": 0.6}},
                },
                {
                    # credentials need an agent that exists: not left to the stateful phase
                    "include-path": "/v1/agents/{agent_id}/credentials",
                    "parameters": {
                        "path.agent_id": {"dictionary": "keyholder", "probability": 0.6},
                    },
                },
                {
                    "include-path": "/v1/agents/{agent_id}/credentials/{credential_id}",
                    "parameters": {
                        "path.agent_id": {"dictionary": "keyholder", "probability": 0.6},
                        "path.credential_id": {"dictionary": "credentials", "probability": 0.6},
                    },
                },
                {
                    # A human mints subject tokens for themselves, for an active agent.
                    "include-path": "/v1/users/{user}/subject-tokens",
                    "parameters": {
                        "path.user": {"dictionary": "humans", "probability": 0.6},
                        "body.agent": {"dictionary": "clients", "probability": 0.6},
                    },
                },
                {
                    # Schemathesis reuses values it saw in responses; for a new username that
                    # is always "admin", so every create would be a (correct) 409 and no 201
                    # would be checked. One key: separate include-* keys are alternatives
                    # (include-path plus include-method selected every POST and GET /v1/users).
                    "include-name": "POST /v1/users",
                    "phases": {
                        "coverage": {"extra-data-sources": {"responses": False}},
                        "fuzzing": {"extra-data-sources": {"responses": False}},
                    },
                },
            ],
        }
    )


def _authenticate_as(schema: Any, services: Services, who: Identity) -> None:
    """Send ``Authorization: Bearer <token>`` of ``who`` where the document declares
    ``HTTPBearer``.

    The token is kept alive: a user may revoke their own token (an admin any token), and the
    run finds its token id in ``GET /v1/users/{user}/tokens`` and revokes it (correctly, 200).
    Every later request would then be a correct 401 and test nothing, so a revoked token is
    replaced by a fresh token of the same user, minted in-process.
    """

    class UserToken:
        token = who.token

        def get(self, _case: Any, _ctx: Any) -> str:
            try:
                # What the server itself would answer, from its in-memory snapshot (emptied
                # whenever a user or token changes): no database read per request.
                services.bearers.user(UserToken.token)
            except Unauthenticated:
                _, UserToken.token = services.users.create_token(
                    SYSTEM, who.username, name="schemathesis"
                )
            return UserToken.token

        def set(self, case: Any, data: str, _ctx: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    schema.auth(refresh_interval=None)(UserToken)


def _record(run: Run, ev: events.ScenarioFinished) -> None:
    phase = ev.phase.value
    if ev.label:
        run.tested.setdefault(phase, set()).add(ev.label)
    recorder = ev.recorder
    for case_id, interaction in recorder.interactions.items():
        if interaction.response is not None:
            label = recorder.cases[case_id].value.operation.label
            run.statuses.setdefault(label, Counter())[interaction.response.status_code] += 1
    for case_id, nodes in recorder.checks.items():
        interaction = recorder.interactions.get(case_id)
        response = interaction.response if interaction is not None else None
        for node in nodes:
            run.checks_run.add(node.name)
            info = node.failure_info
            if info is None:
                continue
            answer = (
                f"-> {response.status_code} {response.content[:300]!r}"
                if response is not None
                else "-> no response"
            )
            detail = f"{info.failure.title}: {info.failure.message}\n{info.code_sample}"
            key = (phase, node.name, info.failure.operation or ev.label or "?")
            run.failures.setdefault(key, f"{detail}\n{answer}")


@dataclass(frozen=True)
class Identity:
    """Who the run is: a user, a token of theirs, and how much of the API to try as them."""

    username: str
    token: str
    max_examples: int = MAX_EXAMPLES
    stateful_examples: int = STATEFUL_EXAMPLES
    # If given, the only writes the coverage phase tries (all of them if None).
    covered_writes: tuple[str, ...] | None = None


def _auditor(services: Services) -> Identity:
    """A read-only user (API.md "Humans"): every write it tries is a documented 403."""
    services.users.create(SYSTEM, username="auditor", role=Role.AUDITOR)
    _, token = services.users.create_token(SYSTEM, "auditor", name="schemathesis")
    return Identity("auditor", token, AUDITOR_EXAMPLES, AUDITOR_STATEFUL_EXAMPLES, AUDITOR_WRITES)


# Schemathesis spells a string's length bounds into its pattern for generation
# (``^[^\x00]*$`` with maxLength 60000 becomes ``^[^\x00]{0,60000}$``); jsonschema_rs then
# takes 0.5-1 s to canonicalize each schema holding such a counted repetition, and negative
# generation builds a new schema for every mutation it draws: ~8 s of a 30 s run went to the
# policy documents' 60000 and 20000 alone. Bounds up to ``_FOLDED_LENGTH`` are still spelled
# into the pattern; longer ones stay ``maxLength`` / ``minLength`` beside it. Either schema
# admits exactly the same strings, and responses are validated against the document as
# written either way. (Should a schemathesis upgrade rename what is patched here,
# ``mock.patch.object`` fails the run loudly.)
_FOLDED_LENGTH = 1000


@contextmanager
def _length_bounds_kept_apart() -> Iterator[None]:
    from schemathesis.core.jsonschema.patterns import update_quantifier as fold
    from schemathesis.specs.openapi import converter
    from schemathesis.specs.openapi.coverage import _operation as coverage

    def update_quantifier(pattern: str, min_length: int | None, max_length: int | None) -> str:
        if any(b is not None and b > _FOLDED_LENGTH for b in (min_length, max_length)):
            return pattern
        return fold(pattern, min_length, max_length)

    with (
        mock.patch.object(converter, "update_quantifier", update_quantifier),
        mock.patch.object(coverage, "update_quantifier", update_quantifier),
    ):
        yield


def run_schemathesis(services: Services, admin_token: str, who: Identity) -> tuple[Run, Any]:
    with _length_bounds_kept_apart():
        return _run_schemathesis(services, admin_token, who)


def _run_schemathesis(services: Services, admin_token: str, who: Identity) -> tuple[Run, Any]:
    config = _config(_existing(services, admin_token), who)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(services), config=config)
    _authenticate_as(schema, services, who)
    run = Run()

    @schema.hook
    def filter_failure(_ctx: Any, failure: Any, _case: Any, response: Any) -> bool:
        # Dropped here rather than after the run, so an excused response does not end the
        # operation's fuzzing the way a real failure does.
        if isinstance(failure, RejectedPositiveData) and _state_dependent_rejection(
            response.status_code, response.content
        ):
            run.excused.append(f"{failure.operation}: {response.content[:160]!r}")
            return False
        return True

    for ev in from_schema(schema).execute():
        if isinstance(ev, events.PhaseFinished):
            run.phases[ev.phase.name.value] = ev.status.value
        elif isinstance(ev, events.ScenarioFinished):
            _record(run, ev)
        elif isinstance(ev, events.NonFatalError):
            # e.g. an exception escaping the app, which the in-process transport re-raises
            run.errors.append(f"{ev.label}: {ev.info.format()}")
        elif isinstance(ev, events.FatalError):
            run.errors.append(f"fatal: {ev.exception!r}")
        elif isinstance(ev, events.EngineFinished):
            run.stop_reason = ev.stop_reason
            for failure in ev.failures:
                key = ("after_run", failure.title, failure.operation or "?")
                run.failures.setdefault(key, failure.message)
    return run, schema


def test_every_check_is_enabled() -> None:
    load_all_checks()
    names = {c.__name__ for c in CHECKS.get_all() if not isinstance(c, type)}
    assert names == KNOWN_CHECKS, (
        f"schemathesis checks changed: new {sorted(names - KNOWN_CHECKS)}, "
        f"gone {sorted(KNOWN_CHECKS - names)}; review them and update KNOWN_CHECKS"
    )
    config = _config().projects.get_default()
    assert all(config.checks.get_by_name(name=n).enabled for n in KNOWN_CHECKS)


# A run is bounded by its examples, not by time; the suite's 120 s per test is for tests that
# hang. On a loaded machine (other suites running alongside) a run has been seen to take 119 s.
_RUN_TIMEOUT = pytest.mark.timeout(300)


@_RUN_TIMEOUT
def test_schemathesis_finds_nothing(services: Services, admin_token: str) -> None:
    run, schema = run_schemathesis(services, admin_token, Identity("admin", admin_token))
    assert not run.errors, run.report()
    assert not run.failures, run.report()
    assert run.stop_reason is StopReason.COMPLETED, run.report()
    for phase in ("coverage", "fuzzing", "stateful"):
        assert run.phases.get(phase) == Status.SUCCESS.value, run.report()

    # ... and the run really exercised the API, so that "nothing found" means something:
    operations = {r.ok().label for r in schema.get_all_operations() if isinstance(r, Ok)}
    assert len(operations) >= 24, sorted(operations)
    for phase in ("coverage", "fuzzing"):
        assert run.tested.get(phase, set()) >= operations, (phase, operations - run.tested[phase])
    # every operation answered 2xx at least once, so its success body was checked against the
    # document too, not only its errors (a run that lost its credentials fails here);
    # (but an agent's own operations, which a human's token is refused: 403, documented)
    never_succeeded = sorted(
        op for op in operations - AGENT_ONLY
        if not any(200 <= s < 300 for s in run.statuses.get(op, ()))
    )  # fmt: skip
    assert not never_succeeded, {op: dict(run.statuses.get(op, {})) for op in never_succeeded}
    assert all(403 in run.statuses.get(op, {}) for op in AGENT_ONLY), run.statuses
    # and every check got the requests it needs (no or bad credentials, undeclared methods,
    # schema-violating data, missing headers, create-then-read sequences).
    assert run.checks_run >= KNOWN_CHECKS, KNOWN_CHECKS - run.checks_run


@_RUN_TIMEOUT
def test_schemathesis_finds_nothing_as_an_auditor(services: Services, admin_token: str) -> None:
    """The same run as a read-only user: every read answers, every write is a documented 403,
    and nothing else is found (no server error, no unexcused rejection)."""
    run, schema = run_schemathesis(services, admin_token, _auditor(services))
    assert not run.errors, run.report()
    assert not run.failures, run.report()
    assert run.stop_reason is StopReason.COMPLETED, run.report()
    for phase in ("coverage", "fuzzing", "stateful"):
        assert run.phases.get(phase) == Status.SUCCESS.value, run.report()
    operations = {r.ok().label for r in schema.get_all_operations() if isinstance(r, Ok)}
    statuses = {op: dict(run.statuses.get(op, {})) for op in sorted(operations)}
    # every operation fuzzed; the coverage phase over every read and the writes it may make
    assert set(AUDITOR_WRITES) <= operations, set(AUDITOR_WRITES) - operations
    assert run.tested.get("fuzzing", set()) >= operations, operations - run.tested["fuzzing"]
    covered = {op for op in operations if op.startswith("GET ")} | set(AUDITOR_WRITES)
    assert run.tested.get("coverage", set()) >= covered, covered - run.tested["coverage"]
    # every read answered 2xx at least once (the auditor's token held to the end) ...
    # (the revocation feed is for admins and resource servers, API.md: an auditor gets 403)
    feed = {"GET /v1/revocations", "GET /v1/revocations/stream"}
    reads = {op for op in operations if op.startswith("GET ")} - feed - AGENT_ONLY
    assert not [op for op in reads if not any(200 <= s < 300 for s in statuses[op])], statuses
    assert all(403 in statuses[op] for op in feed), statuses
    assert not [op for op in feed if any(200 <= s < 300 for s in statuses[op])], statuses
    # ... and the auditor really was refused writes (403, which the document lists).
    refused = {op for op in operations if 403 in statuses[op]}
    assert {"POST /v1/agents", "PUT /v1/policies", "POST /v1/users"} <= refused, statuses
