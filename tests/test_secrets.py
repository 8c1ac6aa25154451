"""The secrets broker over HTTP, on SQLite and PostgreSQL (issue 15): keeping secrets, agents
reading what policy allows under leases, and everything that must end or fail closed.

Every read of a value is an agent's, with its access token, decided by Cedar (``secret.read``
on ``Secret::"<name>"``, labels visible) and recorded; humans see metadata only; a
broker-only secret is never returned; kill, suspension, freeze and expiry end leases (a
renewal is refused and the revocation feed names them); a tampered, swapped or foreign-keyed
ciphertext fails closed with ``secret_unreadable`` and no value.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.conftest import BACKENDS, admin_client, assert_error, backend_for, bearer, make_settings
from tests.pdp import Env, credential, env_of, push_policies, token
from tether.bootstrap import prepare
from tether.clock import FrozenClock
from tether.container import Services, build_services
from tether.errors import SecretUnreadable
from tether.secrets.models import SecretVersionRow

POLICIES = """
@id("read-team-secrets")
permit (principal, action == Action::"secret.read", resource)
when { resource has labels && resource.labels.contains("team") };
"""


def _deploy(services: Services) -> Iterator[Env]:
    with admin_client(services) as http, env_of(services, http) as e:
        push_policies(http, POLICIES)
        yield e


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp(f"secrets-{request.param}")
    with backend_for(request.param, tmp) as backend:
        services = build_services(make_settings(backend, tmp / "data"))
        try:
            prepare(services)
            yield from _deploy(services)
        finally:
            services.close()


@pytest.fixture
def deploy(make_services: Callable[..., Services]) -> Iterator[Callable[..., Env]]:
    stack: list[Iterator[Env]] = []

    def build(**options: Any) -> Env:
        gen = _deploy(make_services(**options))
        stack.append(gen)
        return next(gen)

    yield build
    for gen in reversed(stack):
        next(gen, None)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def put(e: Env, name: str, value: str, **fields: Any) -> dict[str, Any]:
    got = e.http.put(f"/v1/secrets/{name}", json={"value": value, **fields})
    assert got.status_code in (200, 201), got.text
    return dict(got.json())


def agent_token(e: Env, **fields: Any) -> tuple[str, str]:
    body = {"name": "reader", "owner": "admin", "purpose": "secrets tests",
            "risk_tier": "minimal", **fields}  # fmt: skip
    made = e.http.post("/v1/agents", json=body)
    assert made.status_code == 201, made.text
    agent_id = str(made.json()["id"])
    return agent_id, token(e, credential(e, agent_id))


def read(e: Env, name: str, access: str, **params: Any) -> Any:
    return e.anon.get(f"/v1/secrets/{name}/value", headers=bearer(access), params=params)


def lease_of(e: Env, lease_id: str) -> dict[str, Any]:
    got = e.http.get(f"/v1/secrets/leases/{lease_id}")
    assert got.status_code == 200, got.text
    return dict(got.json())


def events_of(e: Env, type_: str) -> list[dict[str, Any]]:
    return e.api.events(type=type_)


# -- keeping secrets --------------------------------------------------------------------------


def test_put_makes_versions_and_metadata_never_carries_the_value(env: Env) -> None:
    name = unique("db.password")
    made = env.http.put(f"/v1/secrets/{name}", json={
        "value": "s3cr3t-v1", "description": "the orders db", "labels": ["team", "db"],
    })  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["version"] == 1
    assert made.json()["labels"] == ["db", "team"]
    again = env.http.put(f"/v1/secrets/{name}", json={"value": "s3cr3t-v2"})
    assert again.status_code == 200
    assert again.json()["version"] == 2
    assert again.json()["labels"] == ["db", "team"]  # omitted: kept
    assert again.json()["description"] == "the orders db"
    shown = env.http.get(f"/v1/secrets/{name}")
    listed = [s for s in env.api._all("/v1/secrets") if s["name"] == name]
    versions = env.http.get(f"/v1/secrets/{name}/versions").json()["items"]
    for body in (made.text, again.text, shown.text, str(listed), str(versions)):
        assert "s3cr3t" not in body
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["current"] for v in versions] == [False, True]
    assert shown.json()["versions"] == [1, 2]
    (event,) = [ev for ev in events_of(env, "secret.put")
                if ev["resource"]["id"] == name and ev["details"]["version"] == 2]  # fmt: skip
    assert "s3cr3t" not in str(event)


def test_old_versions_beyond_the_kept_count_are_dropped(deploy: Callable[..., Env]) -> None:
    e = deploy(secret_versions_kept=2)
    name = unique("rotating")
    for i in range(4):
        put(e, name, f"value-{i}", labels=["team"])
    versions = e.http.get(f"/v1/secrets/{name}/versions").json()["items"]
    assert [v["version"] for v in versions] == [3, 4]
    _agent, access = agent_token(e)
    gone = read(e, name, access, version=1)
    assert_error(gone, 404, "secret_version_not_found")
    assert read(e, name, access, version=3).json()["value"] == "value-2"


def test_only_admins_keep_secrets_and_only_admins_and_auditors_see_them(env: Env) -> None:
    name = unique("guarded")
    put(env, name, "v", labels=["team"])
    sup = env.api.user(unique("sup"), role="supervisor")
    aud = env.api.user(unique("aud"), role="auditor")
    assert_error(env.anon.put(f"/v1/secrets/{name}", json={"value": "x"},
                              headers=bearer(sup["token"])), 403)  # fmt: skip
    assert_error(env.anon.put(f"/v1/secrets/{name}", json={"value": "x"},
                              headers=bearer(aud["token"])), 403)  # fmt: skip
    assert_error(env.anon.get(f"/v1/secrets/{name}", headers=bearer(sup["token"])), 403)
    assert env.anon.get(f"/v1/secrets/{name}", headers=bearer(aud["token"])).status_code == 200
    assert_error(env.anon.delete(f"/v1/secrets/{name}", headers=bearer(aud["token"])), 403)
    # A human never reads a value, whatever the role.
    assert_error(env.http.get(f"/v1/secrets/{name}/value"), 403)


def test_delete_drops_every_version_and_a_new_put_goes_on_numbering(env: Env) -> None:
    name = unique("retired")
    put(env, name, "old-1", labels=["team"])
    put(env, name, "old-2", labels=["team"])
    agent, access = agent_token(env)
    lease = read(env, name, access).json()["lease_id"]
    gone = env.http.delete(f"/v1/secrets/{name}")
    assert gone.status_code == 200, gone.text
    assert_error(env.http.get(f"/v1/secrets/{name}"), 404, "secret_not_found")
    assert lease_of(env, lease)["state"] == "revoked"
    with env.services.db.read() as s:
        assert s.scalars(select(SecretVersionRow).where(SecretVersionRow.name == name)).all() == []
    again = put(env, name, "new", labels=["team"])
    assert again["version"] == 3  # never 1 again: (name, version) binds one value for good
    assert read(env, name, access).json()["value"] == "new"
    del agent


@pytest.mark.parametrize(
    ("path_name", "body", "field"),
    [
        ("bad name", {"value": "x"}, "name"),
        ("a" * 129, {"value": "x"}, "name"),
        ("ok-name", {"value": ""}, "value"),
        ("ok-name", {"value": "x", "labels": ["no spaces"]}, "labels"),
        ("ok-name", {"value": "x", "lease_seconds": 0}, "lease_seconds"),
        ("ok-name", {"value": "x", "lease_seconds": 10**9}, "lease_seconds"),
        ("ok-name", {"value": "x", "colour": "red"}, "colour"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(
    env: Env, path_name: str, body: dict[str, Any], field: str
) -> None:
    before = env.api.events()
    got = env.http.put(f"/v1/secrets/{path_name}", json=body)
    assert got.status_code in (400, 404, 422), got.text
    error = got.json()["error"]
    assert field in str(error), error
    assert env.api.new_events(before) == []
    assert_error(env.http.get("/v1/secrets/ok-name"), 404)


def test_a_value_over_the_configured_size_is_refused(deploy: Callable[..., Env]) -> None:
    e = deploy(secret_max_bytes=16)
    got = e.http.put("/v1/secrets/big", json={"value": "x" * 17})
    error = assert_error(got, 422)
    assert error["details"]["field"] == "value"
    assert "TETHER_SECRET_MAX_BYTES" in error["message"]
    assert_error(e.http.get("/v1/secrets/big"), 404)


# -- agents reading ---------------------------------------------------------------------------


def test_an_allowed_read_returns_the_value_under_a_lease_on_the_record(env: Env) -> None:
    name = unique("api-key")
    put(env, name, "key-123", labels=["team"], lease_seconds=120)
    agent, access = agent_token(env)
    got = read(env, name, access)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["value"] == "key-123"
    assert body["version"] == 1
    assert body["expires_in"] == 120
    assert got.headers["cache-control"] == "no-store"
    lease = lease_of(env, body["lease_id"])
    assert lease["agent"] == agent
    assert lease["state"] == "active"
    decisions = [ev for ev in events_of(env, "decision")
                 if ev["agent_id"] == agent and ev["action"] == "secret.read"]  # fmt: skip
    assert [d["decision"] for d in decisions] == ["allow"]
    (recorded,) = [ev for ev in events_of(env, "secret.read") if ev["agent_id"] == agent]
    assert recorded["details"]["lease_id"] == body["lease_id"]
    # one transaction: the allow, then right after it the lease's record
    assert recorded["seq"] == decisions[0]["seq"] + 1
    assert recorded["details"]["version"] == 1
    assert "key-123" not in str(recorded)
    mine = env.anon.get("/v1/secrets/leases", headers=bearer(access)).json()["items"]
    assert [x["id"] for x in mine] == [body["lease_id"]]


def test_a_denied_read_is_403_and_on_the_record(env: Env) -> None:
    name = unique("other-team")
    put(env, name, "not-yours", labels=["finance"])
    agent, access = agent_token(env)
    got = read(env, name, access)
    error = assert_error(got, 403, "access_denied")
    assert "not-yours" not in got.text
    assert error["details"]["event_id"]
    (denied,) = [ev for ev in events_of(env, "decision")
                 if ev["agent_id"] == agent and ev["action"] == "secret.read"]  # fmt: skip
    assert denied["decision"] == "deny"
    assert denied["resource"]["id"] == name
    # Nothing to probe: an unknown name is denied alike (its labels are none).
    assert_error(read(env, unique("no-such"), access), 403, "access_denied")


def test_a_broker_only_secret_is_never_returned(env: Env) -> None:
    name = unique("upstream-token")
    put(env, name, "only-for-the-gateway", labels=["team"], broker_only=True)
    agent, access = agent_token(env)
    for _ in range(2):
        got = read(env, name, access)
        assert_error(got, 403, "secret_broker_only")
        assert "only-for-the-gateway" not in got.text
    refused = [ev for ev in events_of(env, "secret.refused") if ev["agent_id"] == agent]
    assert [ev["details"]["why"] for ev in refused] == ["broker_only", "broker_only"]
    assert env.anon.get("/v1/secrets/leases", headers=bearer(access)).json()["items"] == []


def test_reads_past_the_agent_rate_are_429_with_retry_after(deploy: Callable[..., Env]) -> None:
    e = deploy(secret_reads_per_minute=2)
    name = unique("hot")
    put(e, name, "v", labels=["team"])
    _agent, access = agent_token(e)
    assert read(e, name, access).status_code == 200
    assert read(e, name, access).status_code == 200
    limited = read(e, name, access)
    assert_error(limited, 429, "rate_limited")
    assert int(limited.headers["retry-after"]) >= 1


# -- leases ending ----------------------------------------------------------------------------


def _lease(e: Env, access: str, name: str) -> str:
    got = read(e, name, access)
    assert got.status_code == 200, got.text
    return str(got.json()["lease_id"])


def _feed_leases(e: Env) -> dict[str, str]:
    page = e.http.get("/v1/revocations").json()
    return {i["id"]: i["state"] for i in page["items"] if i["type"] == "lease"}


@pytest.mark.parametrize("how", ["kill", "suspend", "freeze", "revoke", "give-back"])
def test_every_way_an_agent_stops_ends_its_leases(env: Env, how: str) -> None:
    name = unique("leased")
    put(env, name, "v", labels=["team"])
    role = unique("role")
    agent, access = agent_token(env, roles=[role])
    lease = _lease(env, access, name)
    renewed = env.anon.post(f"/v1/secrets/leases/{lease}/renew", headers=bearer(access))
    assert renewed.status_code == 200, renewed.text
    if how == "kill":
        assert env.api.act(agent, "kill", reason="rogue").status_code == 200
    elif how == "suspend":
        assert env.api.act(agent, "suspend", reason="look").status_code == 200
    elif how == "freeze":
        frozen = env.http.post("/v1/freeze", json={"reason": "incident", "scope": {"role": role}})
        assert frozen.status_code == 201, frozen.text
    elif how == "revoke":
        assert env.http.post(f"/v1/secrets/leases/{lease}/revoke", json={}).status_code == 200
    else:
        given = env.anon.post(f"/v1/secrets/leases/{lease}/revoke", headers=bearer(access))
        assert given.status_code == 200, given.text
    assert lease_of(env, lease)["state"] == "revoked"
    assert _feed_leases(env).get(lease) == "revoked"
    again = env.anon.post(f"/v1/secrets/leases/{lease}/renew", headers=bearer(access))
    assert again.status_code in (401, 403, 409), again.text
    if how in ("revoke", "give-back"):
        assert_error(again, 409, "lease_revoked")
    (ended,) = [ev for ev in events_of(env, "lease.revoked") if ev["details"]["lease_id"] == lease]
    assert ended["agent_id"] == agent
    if how == "freeze":
        env.http.delete("/v1/freeze", params={"role": role})


def test_an_expired_agent_loses_its_leases(deploy: Callable[..., Env]) -> None:
    clock = FrozenClock(datetime(2026, 12, 6, 12, tzinfo=UTC))
    e = deploy(clock=clock)
    name = unique("expiring")
    put(e, name, "v", labels=["team"])
    agent, access = agent_token(e, expires_at=(clock.now() + timedelta(minutes=5)).isoformat())
    lease = _lease(e, access, name)
    clock.advance(360)
    e.services.agents.expiry.expire_due()
    assert lease_of(e, lease)["state"] == "revoked"
    assert lease_of(e, lease)["revoked_why"] == "agent expired"
    assert _feed_leases(e).get(lease) == "revoked"
    renewed = e.anon.post(f"/v1/secrets/leases/{lease}/renew", headers=bearer(access))
    assert renewed.status_code in (401, 403, 409), renewed.text  # the token died with it
    assert e.services.secrets.leases(e.services.users.authenticate(
        e.services.settings.admin_token_path.read_text().strip()), agent=agent, name=None,
        active=True, cursor=None, limit=10)[0].items == []  # fmt: skip


APPROVAL_POLICIES = """
@id("read-vault-with-approval")
@approval("required")
permit (principal, action == Action::"secret.read", resource)
when { resource has labels && resource.labels.contains("vault") };
"""


def test_an_approval_checkpoint_holds_the_read_until_a_human_approves(
    deploy: Callable[..., Env],
) -> None:
    e = deploy()
    push_policies(e.http, POLICIES + APPROVAL_POLICIES)
    name = unique("vaulted")
    put(e, name, "needs-a-human", labels=["vault"])
    _agent, access = agent_token(e)
    held = read(e, name, access)
    error = assert_error(held, 403, "approval_required")
    assert "needs-a-human" not in held.text
    approval = error["details"]["approval_id"]
    approved = e.http.post(f"/v1/approvals/{approval}/approve", json={"note": "ok"})
    assert approved.status_code == 200, approved.text
    got = read(e, name, access)
    assert got.status_code == 200, got.text
    assert got.json()["value"] == "needs-a-human"
    assert_error(read(e, name, access), 403, "approval_required")  # used once


# -- failing closed ---------------------------------------------------------------------------


def _tamper(e: Env, name: str, **values: Any) -> None:
    """Edit a version's row behind Tether's back, then have the worker read its secrets
    again (as after a restart: a worker keeps each secret's current version as it read it,
    and a put or delete makes every worker read that secret again)."""
    with e.services.db.write() as s:
        s.execute(update(SecretVersionRow).where(SecretVersionRow.name == name).values(**values))
    e.services.runtime.load()


def test_a_tampered_ciphertext_fails_closed(env: Env) -> None:
    name = unique("tampered")
    put(env, name, "precious", labels=["team"])
    with env.services.db.read() as s:
        row = s.get(SecretVersionRow, (name, 1))
        assert row is not None
        blob = row.ciphertext
    flipped = blob[:-3] + ("A" if blob[-3] != "A" else "B") + blob[-2:]
    _tamper(env, name, ciphertext=flipped)
    agent, access = agent_token(env)
    got = read(env, name, access)
    error = assert_error(got, 500, "secret_unreadable")
    assert "precious" not in got.text
    assert error["details"]["name"] == name
    (logged,) = [ev for ev in events_of(env, "secret.unreadable") if ev["agent_id"] == agent]
    assert logged["details"]["version"] == 1


def test_a_row_swapped_with_another_secrets_does_not_open(env: Env) -> None:
    a, b = unique("swap-a"), unique("swap-b")
    put(env, a, "value-of-a", labels=["team"])
    put(env, b, "value-of-b", labels=["team"])
    with env.services.db.read() as s:
        row_a = s.get(SecretVersionRow, (a, 1))
        assert row_a is not None
        stolen = {"key_id": row_a.key_id, "data_key": row_a.data_key,
                  "ciphertext": row_a.ciphertext}  # fmt: skip
    _tamper(env, b, **stolen)
    _agent, access = agent_token(env)
    got = read(env, b, access)
    assert_error(got, 500, "secret_unreadable")
    assert "value-of-a" not in got.text
    assert read(env, a, access).json()["value"] == "value-of-a"


def test_a_wrong_master_key_reads_nothing(make_services: Callable[..., Services]) -> None:
    right = make_services()
    with admin_client(right) as http, env_of(right, http) as e:
        push_policies(http, POLICIES)
        put(e, "vault-item", "under-the-right-key", labels=["team"])
        _agent, access = agent_token(e)
        assert read(e, "vault-item", access).json()["value"] == "under-the-right-key"
    wrong = make_services(master_key="A" * 43 + "=")  # another 32-byte key, same database
    with admin_client(wrong) as http, env_of(wrong, http) as e:
        got = read(e, "vault-item", access)
        # The node cannot even open its token signing keys: it says why, and gives nothing.
        error = assert_error(got, 500)
        assert "under-the-right-key" not in got.text
        assert "TETHER_MASTER_KEY" in error["message"]
    # The broker itself, asked directly on that node: the secrets master key does not open.
    with pytest.raises(SecretUnreadable, match="TETHER_MASTER_KEY") as caught:
        wrong.secrets._decrypt("vault-item", 1)
    assert "under-the-right-key" not in str(caught.value)


def test_master_key_rotation_keeps_every_secret_readable_on_two_nodes(
    make_services: Callable[..., Services],
) -> None:
    one, two = make_services(), make_services()
    with admin_client(one) as http1, env_of(one, http1) as n1, admin_client(two) as http2, \
            env_of(two, http2) as n2:  # fmt: skip
        push_policies(http1, POLICIES)
        names = [unique("rot") for _ in range(5)]
        for i, name in enumerate(names):
            put(n1, name, f"value-{i}", labels=["team"])
            put(n1, name, f"value-{i}-b", labels=["team"])
        _agent, access = agent_token(n1)
        assert read(n2, names[0], access).json()["value"] == "value-0-b"  # node 2 knows the key
        rotated = http2.post("/v1/secrets/rotate-master-key")
        assert rotated.status_code == 200, rotated.text
        assert rotated.json()["rewrapped"] >= 10
        new_key = rotated.json()["key_id"]
        for i, name in enumerate(names):
            for node in (n1, n2):
                assert read(node, name, access).json()["value"] == f"value-{i}-b"
                assert read(node, name, access, version=1).json()["value"] == f"value-{i}"
        versions = http1.get(f"/v1/secrets/{names[0]}/versions").json()["items"]
        assert {v["key_id"] for v in versions} == {new_key}
        put(n1, names[0], "after", labels=["team"])
        assert read(n2, names[0], access).json()["value"] == "after"
        (event,) = n1.api.events(type="secrets.master_key_rotated")
        assert event["details"]["key_id"] == new_key
