"""The web console (issue 18): sign-in with a password, sessions, CSRF, the security headers,
and every page as each role sees it — through the real app, on both backends. The browser's
side (Playwright driving Debian's chromium, axe-core) is tests/test_console_browser.py."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import Api, Backend, Prebuilt, _Templates, admin_client
from tests.serverproc import free_port
from tether.api.app import create_app
from tether.clock import FrozenClock
from tether.container import Services
from tether.monitor.rules import MonitorConfig, RuleConfig, ThresholdConfig
from tether.principals import SYSTEM
from tether.users import signin

PASSWORD = "correct horse battery staple"
PAGES = [
    "/console", "/console/agents", "/console/approvals", "/console/activity",
    "/console/policies", "/console/ledger", "/console/secrets", "/console/gateway",
]  # fmt: skip


class Console:
    """A browser-like client of the console (its own cookie jar)."""

    def __init__(self, app: Any) -> None:
        self.http = TestClient(app, base_url="http://testserver", follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def sign_in(self, username: str, password: str = PASSWORD) -> Any:
        page = self.http.get("/console/sign-in")
        assert page.status_code == 200, page.text
        token = _csrf(page.text)
        form = {"csrf": token, "username": username, "password": password, "next": "/console"}
        return self.http.post("/console/sign-in", data=form)

    def csrf(self, path: str = "/console") -> str:
        page = self.http.get(path)
        assert page.status_code == 200, page.text
        return _csrf(page.text)


def _session_of(response: Any) -> str:
    cookie = next(h for h in response.headers.get_list("set-cookie")
                  if h.startswith("tether_session="))  # fmt: skip
    return str(cookie.split(";")[0].split("=", 1)[1])


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def _people(svc: Services) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"admin": {"username": "admin"}}
    with admin_client(svc) as client:
        api = Api(client)
        for name, role in (("sam", "supervisor"), ("sue", "supervisor"), ("audrey", "auditor")):
            out[name] = api.user(name, role)
        for name in out:
            got = client.put(f"/v1/users/{name}/password", json={"password": PASSWORD})
            assert got.status_code == 204, got.text
    return out


# Made once per test process and backend through the API, then copied for each test that asks
# for ``people`` (tests.conftest.Prebuilt): its four argon2id hashes were most of such a test's CPU.
PEOPLE = Prebuilt("console-people", _people)


@pytest.fixture
def prebuilt(request: pytest.FixtureRequest) -> Prebuilt | None:
    return PEOPLE if "people" in request.fixturenames else None


@pytest.fixture
def people(services: Services, backend: Backend, schema_templates: _Templates) -> dict[str, Any]:
    """An admin, two supervisors and an auditor, each with a console password (and a bearer
    token under ``"token"``, the admin aside)."""
    return copy.deepcopy(schema_templates.prebuilt(PEOPLE, backend.name)[2])


@pytest.fixture
def console(services: Services) -> Iterator[Any]:
    made: list[Console] = []
    app = create_app(services)

    def factory() -> Console:
        made.append(Console(app))
        return made[-1]

    yield factory
    for c in made:
        c.close()


def test_sign_in_sets_a_strict_session_cookie_and_each_page_answers(
    people: dict[str, Any], console: Any, api: Api
) -> None:
    c = console()
    assert c.http.get("/console").status_code == 303  # to the sign-in page
    signed = c.sign_in("admin")
    assert signed.status_code == 303, signed.text
    assert signed.headers["location"] == "/console"
    cookie = next(
        h for h in signed.headers.get_list("set-cookie") if h.startswith("tether_session=")
    )
    flags = {part.strip().lower() for part in cookie.split(";")}
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert "path=/console" in flags
    for path in PAGES:
        page = c.http.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["cache-control"] == "no-store"
        assert "<script>" not in page.text  # no inline script: every script is a file
        assert re.search(r"\son[a-z]+=", page.text) is None  # no inline handlers
    signed_in = api.events(type="user.signed_in")
    assert [e["actor"] for e in signed_in] == [f"user:{api.client.get('/v1/whoami').json()['id']}"]
    assert signed_in[0]["details"]["via"] == "password"


def test_an_unknown_users_sign_in_verifies_a_hash_of_the_same_cost() -> None:
    """The dummy an unknown username is checked against is a real hash under the hasher's
    own parameters (written out, not hashed at import): its verification costs what a user's
    does."""
    assert not signin._HASHER.check_needs_rehash(signin._DUMMY)
    assert signin._HASHER.verify(signin._DUMMY, "tether: a password nobody has")


def test_wrong_passwords_are_refused_alike_then_the_account_locks(
    people: dict[str, Any], console: Any, api: Api
) -> None:
    c = console()
    unknown = c.sign_in("nobody", "whatever-password")
    wrong = c.sign_in("sam", "not-the-password")
    assert unknown.status_code == wrong.status_code == 401
    assert "wrong username or password" in unknown.text
    assert "wrong username or password" in wrong.text
    assert "tether_session" not in (wrong.headers.get("set-cookie") or "")
    for _ in range(4):
        c.sign_in("sam", "not-the-password")
    locked = c.sign_in("sam")  # the right password, now too late
    assert locked.status_code == 429, locked.text
    assert "locked" in locked.text
    assert int(locked.headers["retry-after"]) > 0
    failed = api.events(type="user.sign_in_failed")
    assert len(failed) >= 6
    assert {e["details"]["reason"] for e in failed} >= {"unknown_user", "wrong_password",
                                                        "locked"}  # fmt: skip
    for event in failed:  # the passwords tried are never on the record
        assert "not-the-password" not in str(event["details"])
        assert PASSWORD not in str(event["details"])
    # an admin setting a new password unlocks it
    assert api.client.put("/v1/users/sam/password", json={"password": PASSWORD + "!"}
                          ).status_code == 204  # fmt: skip
    assert c.sign_in("sam", PASSWORD + "!").status_code == 303


def test_forms_without_or_with_another_sessions_csrf_token_are_403(
    people: dict[str, Any], console: Any, api: Api
) -> None:
    agent = api.agent()
    a, b = console(), console()
    a.sign_in("admin")
    b.sign_in("admin")
    theirs = b.csrf()
    for data in ({"reason": "x"}, {"reason": "x", "csrf": theirs}, {"reason": "x", "csrf": ""}):
        got = a.http.post(f"/console/agents/{agent['id']}/suspend", data=data)
        assert got.status_code == 403, got.text
    assert api.get(agent["id"])["status"] == "active"
    mine = a.csrf()
    done = a.http.post(f"/console/agents/{agent['id']}/suspend", data={"reason": "x",
                                                                       "csrf": mine})  # fmt: skip
    assert done.status_code == 303, done.text
    assert api.get(agent["id"])["status"] == "suspended"
    # the sign-in form too: without its cookie's value, no session
    fresh = console()
    refused = fresh.http.post("/console/sign-in", data={"username": "admin",
                                                        "password": PASSWORD})  # fmt: skip
    assert refused.status_code == 403
    assert "tether_session" not in (refused.headers.get("set-cookie") or "")


def test_a_sign_in_always_starts_a_new_session_and_sign_out_ends_it(
    people: dict[str, Any], console: Any
) -> None:
    planted = console()
    page = planted.http.get("/console/sign-in")
    pre = planted.http.cookies.get("tether_signin")
    form = {"csrf": _csrf(page.text), "username": "admin", "password": PASSWORD}
    cookie = f"tether_signin={pre}; tether_session=tcs_planted-by-an-attacker"
    session = _session_of(planted.http.post("/console/sign-in", data=form,
                                            headers={"cookie": cookie}))  # fmt: skip
    assert session.startswith("tcs_")
    assert session != "tcs_planted-by-an-attacker"  # a session id given is never kept
    c = console()
    old = _session_of(c.sign_in("admin"))
    assert old != session  # a new secret every time
    token = c.csrf()
    out = c.http.post("/console/sign-out", data={"csrf": token})
    assert out.status_code == 303
    replay = console()
    again = replay.http.get("/console", headers={"cookie": f"tether_session={old}"})
    assert again.status_code == 303  # the old cookie is worth nothing
    live = console()
    fresh = _session_of(live.sign_in("admin"))
    shown = replay.http.get("/console", headers={"cookie": f"tether_session={fresh}"})
    assert shown.status_code == 200  # (the header does carry a session when there is one)


def test_an_auditor_reads_but_cannot_act(people: dict[str, Any], console: Any, api: Api) -> None:
    agent = api.agent()
    c = console()
    c.sign_in("audrey")
    page = c.http.get(f"/console/agents/{agent['id']}")
    assert page.status_code == 200
    assert "Kill" not in page.text
    assert "Suspend" not in page.text
    assert "Freeze every agent" not in c.http.get("/console").text
    token = c.csrf()
    for path, data in ((f"/console/agents/{agent['id']}/kill", {"confirm": agent["id"]}),
                       (f"/console/agents/{agent['id']}/suspend", {}),
                       ("/console/freeze", {"reason": "audit"})):  # fmt: skip
        got = c.http.post(path, data={**data, "csrf": token})
        assert got.status_code == 403, (path, got.text[:300])
    assert api.get(agent["id"])["status"] == "active"
    assert api.client.get("/v1/freeze").json()["frozen"] is False
    # nor decide an approval: no button, and the POST refused
    held = '@id("held")\n@approval("required")\npermit (principal, action, resource);'
    assert api.client.put("/v1/policies", json={"policies": held}).status_code == 200
    asked = api.client.post("/access/v1/evaluation", json={
        "subject": {"type": "agent", "id": agent["id"]}, "action": {"name": "tool.call"},
        "resource": {"type": "Tool", "id": "refund"}})  # fmt: skip
    approval = asked.json()["context"]["approval_id"]
    inbox = c.http.get("/console/approvals")
    assert approval in inbox.text
    assert "Approve" not in inbox.text
    got = c.http.post(f"/console/approvals/{approval}/approve", data={"csrf": token})
    assert got.status_code == 403, got.text[:300]
    assert api.client.get(f"/v1/approvals/{approval}").json()["status"] == "pending"


def test_a_supervisor_sees_and_acts_on_their_agents_only(
    people: dict[str, Any], console: Any, api: Api
) -> None:
    mine = api.agent(owner="sam", name="sams-agent")
    theirs = api.agent(owner="sue", name="sues-agent")
    c = console()
    c.sign_in("sam")
    listed = c.http.get("/console/agents").text
    assert "sams-agent" in listed
    assert "sues-agent" not in listed
    assert c.http.get(f"/console/agents/{theirs['id']}").status_code == 403
    token = c.csrf()
    got = c.http.post(f"/console/agents/{theirs['id']}/kill",
                      data={"csrf": token, "confirm": theirs["id"], "reason": "x"})  # fmt: skip
    assert got.status_code == 403
    assert api.get(theirs["id"])["status"] == "active"
    form = {"csrf": token, "confirm": mine["id"], "reason": "rogue"}
    killed = c.http.post(f"/console/agents/{mine['id']}/kill", data=form)
    assert killed.status_code == 303
    assert api.get(mine["id"])["status"] == "revoked"
    ledger = c.http.get("/console/ledger")
    assert ledger.status_code == 403  # the ledger is for admins and auditors, as in the API


def test_a_kill_needs_the_agents_id_typed(people: dict[str, Any], console: Any, api: Api) -> None:
    agent = api.agent()
    c = console()
    c.sign_in("admin")
    token = c.csrf()
    got = c.http.post(f"/console/agents/{agent['id']}/kill",
                      data={"csrf": token, "confirm": "yes", "reason": "x"})  # fmt: skip
    assert got.status_code == 422
    assert api.get(agent["id"])["status"] == "active"


def test_sign_in_redirects_only_within_the_console(people: dict[str, Any], console: Any) -> None:
    c = console()
    page = c.http.get("/console/sign-in?next=https://evil.example/")
    token = _csrf(page.text)
    got = c.http.post("/console/sign-in", data={"csrf": token, "username": "admin",
                                                 "password": PASSWORD,
                                                 "next": "//evil.example/"})  # fmt: skip
    assert got.headers["location"] == "/console"


def test_an_agents_page_lists_the_policies_that_may_apply_to_it(
    people: dict[str, Any], console: Any, api: Api
) -> None:
    policies = """
@id("payers-pay")
permit (principal in Role::"payer", action == Action::"tool.call", resource);

@id("nobody-reads-keys")
forbid (principal, action == Action::"secret.read", resource);
"""
    assert api.client.put("/v1/policies", json={"policies": policies}).status_code == 200
    payer = api.agent(roles=["payer"], name="payer")
    other = api.agent(roles=["support"], name="other")
    c = console()
    c.sign_in("admin")
    shown = c.http.get(f"/console/agents/{payer['id']}").text
    assert "payers-pay" in shown
    assert "nobody-reads-keys" in shown
    assert "tether.active-only" in shown
    elsewhere = c.http.get(f"/console/agents/{other['id']}").text
    assert "payers-pay" not in elsewhere
    assert "nobody-reads-keys" in elsewhere


# -- alerts (issue 19) ----------------------------------------------------------------------------


def _alerted(api: Api, services: Services) -> tuple[dict[str, Any], dict[str, Any]]:
    """Sam's agent and Sue's, each suspended: an open alert about each."""
    mine = api.agent(owner="sam", name="sams-agent")
    theirs = api.agent(owner="sue", name="sues-agent")
    for agent in (mine, theirs):
        assert api.act(agent["id"], "suspend", reason="watch it").status_code == 200
    services.alerts.project()
    return mine, theirs


def _alert_about(api: Api, agent_id: str) -> dict[str, Any]:
    found = api.client.get("/v1/alerts", params={"agent": agent_id}).json()["items"]
    assert len(found) == 1, found
    return dict(found[0])


def test_the_alerts_page_as_each_role_sees_it(
    people: dict[str, Any], console: Any, api: Api, services: Services
) -> None:
    mine, theirs = _alerted(api, services)
    admin = console()
    admin.sign_in("admin")
    page = admin.http.get("/console/alerts")
    assert page.status_code == 200, page.text[:300]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text
    assert re.search(r"\son[a-z]+=", page.text) is None
    for agent in (mine, theirs):
        assert f'href="/console/agents/{agent["id"]}"' in page.text
    assert page.text.index(theirs["id"]) < page.text.index(mine["id"])  # newest first
    assert "agent.suspended" in page.text
    assert "watch it" in page.text
    assert page.text.count(">Acknowledge</button>") == 2
    assert "Dead-lettered deliveries (0)" in page.text
    assert 'data-alerts="/console/alerts/stream?after=' in page.text  # the live feed
    assert '>Alerts <span class="count">(2<' in page.text  # the nav's open count
    overview = admin.http.get("/console").text
    assert "Open alerts (2)" in overview
    assert "sues-agent" not in overview  # the summaries name agents by id
    assert overview.count('href="/console/alerts#alr_') == 2

    auditor = console()
    auditor.sign_in("audrey")
    read = auditor.http.get("/console/alerts").text
    assert mine["id"] in read
    assert theirs["id"] in read
    assert ">Acknowledge</button>" not in read  # reads only
    assert '/ack"' not in read
    assert "Dead-lettered deliveries" in read
    assert "Replay" not in read

    sam = console()
    sam.sign_in("sam")
    own = sam.http.get("/console/alerts").text
    assert mine["id"] in own
    assert theirs["id"] not in own  # only the agents they supervise
    assert own.count(">Acknowledge</button>") == 1
    assert "Dead-lettered deliveries" not in own  # for admins and auditors
    assert "Open alerts (1)" in sam.http.get("/console").text
    assert sam.http.get("/console/alerts?status=acked").text.count("<article") == 0
    # the live feed wants a session
    assert console().http.get("/console/alerts/stream").status_code == 401


def test_acknowledge_an_alert_from_the_console(
    people: dict[str, Any], console: Any, api: Api, services: Services
) -> None:
    mine, theirs = _alerted(api, services)
    alert, other = _alert_about(api, mine["id"]), _alert_about(api, theirs["id"])
    sam = console()
    sam.sign_in("sam")
    token = sam.csrf("/console/alerts")
    ack = f"/console/alerts/{alert['id']}/ack"
    assert sam.http.post(ack, data={"note": "no csrf"}).status_code == 403
    assert sam.http.post(ack, data={"note": "x", "csrf": "0" * 64}).status_code == 403
    refused = sam.http.post(f"/console/alerts/{other['id']}/ack", data={"csrf": token})
    assert refused.status_code == 403  # not their agent's
    auditor = console()
    auditor.sign_in("audrey")
    refused = auditor.http.post(ack, data={"csrf": auditor.csrf(), "note": "mine now"})
    assert refused.status_code == 403, refused.text[:300]
    assert "acknowledges" in refused.text
    assert api.events(type="alert.acknowledged") == []

    done = sam.http.post(ack, data={"csrf": token, "note": "  a planned drill  "})
    assert done.status_code == 303, done.text[:300]
    assert done.headers["location"] == "/console/alerts?flash=acked"
    recorded = api.events(type="alert.acknowledged")
    assert [(e["actor"], e["details"]["note"]) for e in recorded] == [
        (f"user:{people['sam']['id']}", "a planned drill")]  # fmt: skip
    assert recorded[0]["resource"] == {"type": "Alert", "id": alert["id"]}
    after = sam.http.get("/console/alerts?flash=acked").text
    assert "Alert acknowledged." in after
    assert alert["id"] not in after  # no longer open
    acked = sam.http.get("/console/alerts?status=acked").text
    assert alert["id"] in acked
    assert "a planned drill" in acked
    assert "Acknowledge</button>" not in acked
    assert _alert_about(api, theirs["id"])["acked_at"] is None
    missing = sam.http.post("/console/alerts/alr_nope/ack", data={"csrf": token})
    assert missing.status_code == 404


def test_dead_lettered_deliveries_an_admin_replays_from_the_console(
    make_services: Callable[..., Services],
) -> None:
    clock = FrozenClock(datetime(2026, 12, 6, 12, 0, tzinfo=UTC))
    hook = f"http://127.0.0.1:{free_port()}/hooks/s3cr3t-path-token"  # nobody listens there
    svc = make_services(clock=clock, alert_webhooks=[hook], alert_dead_after_hours=1)
    with admin_client(svc) as http:
        agent = http.post("/v1/agents", json={"name": "lost", "owner": "admin",
                                               "purpose": "p", "risk_tier": "minimal"})  # fmt: skip
        assert agent.status_code == 201, agent.text
        assert http.post(f"/v1/agents/{agent.json()['id']}/kill",
                         json={"reason": "unheard"}).status_code == 200  # fmt: skip
        assert http.post("/v1/users", json={"username": "audrey", "role": "auditor"}
                         ).status_code == 201  # fmt: skip
    for name in ("admin", "audrey"):
        svc.signin.set_password(SYSTEM, name, PASSWORD)
    svc.alerts.project()
    svc.alerts.deliver()  # refused: retried later
    clock.advance(2 * 3600)
    svc.alerts.deliver()  # too late: a dead letter
    assert len(svc.alerts.dead_letters(SYSTEM)) == 1
    app = create_app(svc)
    auditor, admin = Console(app), Console(app)
    try:
        auditor.sign_in("audrey")
        read = auditor.http.get("/console/alerts").text
        assert "Dead-lettered deliveries (1)" in read
        assert "agent.killed" in read
        assert "Replay" not in read
        refused = auditor.http.post("/console/alerts/replay", data={"csrf": auditor.csrf()})
        assert refused.status_code == 403
        admin.sign_in("admin")
        page = admin.http.get("/console/alerts").text
        assert "Dead-lettered deliveries (1)" in page
        assert "http://127.0.0.1<" in page.replace("</td>", "<")  # the receiver's host…
        assert "s3cr3t" not in page  # …never its path
        assert admin.http.post("/console/alerts/replay", data={}).status_code == 403  # no CSRF
        bad = admin.http.post("/console/alerts/replay", data={"csrf": admin.csrf(), "id": "x"})
        assert bad.status_code == 422
        done = admin.http.post("/console/alerts/replay", data={"csrf": admin.csrf()})
        assert done.status_code == 303, done.text[:300]
        assert svc.alerts.dead_letters(SYSTEM) == []
        assert "Dead-lettered deliveries (0)" in admin.http.get("/console/alerts").text
    finally:
        auditor.close()
        admin.close()


def test_a_nul_in_an_id_is_a_clear_not_found_not_a_server_error(
    people: dict[str, Any], console: Any
) -> None:
    c = console()
    c.sign_in("admin")
    token = c.csrf()
    for path in ("/console/alerts/alr_x%00y/ack", "/console/approvals/apr_x%00y/approve",
                 "/console/agents/agt_x%00y/suspend"):  # fmt: skip
        got = c.http.post(path, data={"csrf": token})
        assert got.status_code == 404, (path, got.status_code, got.text[:200])
    assert c.http.get("/console/agents/agt_x%00y").status_code == 404


# -- risk and session history (issue 19) -----------------------------------------------------------

SESSION_POLICIES = """
@id("read") permit (principal, action in [Action::"resource.read", Action::"tool.call"], resource);
@id("pii-then-egress") forbid (principal, action == Action::"tool.call", resource) when {
  context.session.labels.contains("pii") && resource has egress && resource.egress };
"""
BURST = RuleConfig(name="burst", when={"requests": ">= 3"}, score=70,
                   because="{requests} requests in the window")  # fmt: skip
THRESHOLDS = [ThresholdConfig(score=40, level="elevated", action="alert"),
              ThresholdConfig(score=70, level="high", action="require_approval")]  # fmt: skip


def _evaluate(http: TestClient, agent_id: str, action: str, kind: str, rid: str,
              properties: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """An AuthZEN decision about the agent (asked by the admin); its answer's context."""
    body = {"subject": {"type": "agent", "id": agent_id}, "action": {"name": action},
            "resource": {"type": kind, "id": rid, "properties": properties or {}}}  # fmt: skip
    got = http.post("/access/v1/evaluation", json=body)
    assert got.status_code == 200, got.text
    return dict(got.json()["context"])


def _pii_then_egress(http: TestClient, agent_id: str) -> list[dict[str, Any]]:
    """A tool call, a read of PII (both allowed), then an email out: denied."""
    return [
        _evaluate(http, agent_id, "tool.call", "Tool", "search"),
        _evaluate(http, agent_id, "resource.read", "Resource", "crm/customers",
                  {"labels": ["pii"]}),
        _evaluate(http, agent_id, "tool.call", "Tool", "mail.send", {"egress": True}),
    ]  # fmt: skip


def _between(html: str, start: str, end: str) -> str:
    """The part of a page from ``start`` up to ``end`` (a section, by its heading's id)."""
    at = html.index(start)
    return html[at : html.index(end, at)]


def _decisions_of(http: TestClient, agent_id: str) -> list[dict[str, Any]]:
    got = http.get("/v1/audit/events", params={"agent": agent_id, "type": "decision"})
    assert got.status_code == 200, got.text
    return list(got.json()["items"])


def test_an_agents_risk_panel_and_clearing_it(make_services: Callable[..., Services]) -> None:
    clock = FrozenClock(datetime(2026, 12, 7, 10, 0, tzinfo=UTC))
    svc = make_services(clock=clock, monitor=MonitorConfig(rules=[BURST], thresholds=THRESHOLDS))
    with admin_client(svc) as http:
        assert http.put("/v1/policies", json={"policies": SESSION_POLICIES}).status_code == 200
        for name, role in (("sam", "supervisor"), ("audrey", "auditor")):
            assert http.post("/v1/users", json={"username": name, "role": role}
                             ).status_code == 201  # fmt: skip
        made = http.post("/v1/agents", json={"name": "bursty", "owner": "sam", "purpose": "p",
                                              "risk_tier": "minimal"})  # fmt: skip
        assert made.status_code == 201, made.text
        agent = made.json()["id"]
        answers = _pii_then_egress(http, agent)
        # the third request crossed: denied by the policies, and the agent stepped up
        assert [a["decision"] for a in answers] == ["allow", "allow", "deny"]
        again = _evaluate(http, agent, "tool.call", "Tool", "mail.send", {"egress": True})
        assert again["decision"] == "deny"  # decided with the risk the third one raised
        decided = _decisions_of(http, agent)
    for name in ("admin", "sam", "audrey"):
        svc.signin.set_password(SYSTEM, name, PASSWORD)
    assert svc.monitor.describe(agent)["step_up"] is True
    app = create_app(svc)
    auditor, sam = Console(app), Console(app)
    try:
        auditor.sign_in("audrey")
        page = auditor.http.get(f"/console/agents/{agent}")
        assert page.status_code == 200, page.text[:300]
        panel = _between(page.text, 'id="risk-h"', 'id="perm-h"')
        assert '<span class="badge risk-high">high</span> score 70' in panel
        assert "Stepped up:" in panel
        assert "<code>burst</code>" in panel
        assert "4 requests in the window" in panel  # the rule's explanation now…
        assert "<code>requests = 4</code>" in panel  # …and its evidence
        # what was last raised: at the third request, by the decision that crossed
        assert "by a tool.call on Tool::mail.send (deny): <code>burst</code> — 3 requests" in panel
        assert "2026-12-07 10:00:00" in panel
        assert "Clear risk" not in panel  # an auditor reads
        forged = auditor.http.post(f"/console/agents/{agent}/clear-risk",
                                   data={"csrf": auditor.csrf(), "note": "mine"})  # fmt: skip
        assert forged.status_code == 403, forged.text[:300]
        assert svc.monitor.describe(agent)["step_up"] is True

        sam.sign_in("sam")
        own = sam.http.get(f"/console/agents/{agent}").text
        assert ">Clear risk</button>" in own
        clear = f"/console/agents/{agent}/clear-risk"
        assert sam.http.post(clear, data={"note": "no csrf"}).status_code == 403
        long = sam.http.post(clear, data={"csrf": sam.csrf(), "note": "x" * 501})
        assert long.status_code == 422
        assert svc.monitor.describe(agent)["step_up"] is True
        done = sam.http.post(clear, data={"csrf": sam.csrf(), "note": "  a load test  "})
        assert done.status_code == 303, done.text[:300]
        assert done.headers["location"] == f"/console/agents/{agent}?flash=risk-cleared"
        risk = svc.monitor.describe(agent)
        assert (risk["step_up"], risk["score"], risk["raised"]) == (False, 0, None)
        assert risk["cleared_at"] is not None
        after = sam.http.get(done.headers["location"]).text
        assert "Risk cleared" in after
        assert "Stepped up:" not in after
        assert '<span class="badge risk-low">low</span> score 0' in after
        assert ">Clear risk</button>" not in after  # nothing left to clear
        with admin_client(svc) as http:
            cleared = http.get("/v1/audit/events", params={"type": "agent.risk_cleared"})
        items = cleared.json()["items"]
        assert [(e["agent_id"], e["details"]["note"]) for e in items] == [(agent, "a load test")]
        # A decision while at that risk: the risk it was decided with is on its page.
        stepped = auditor.http.get(f"/console/events/{decided[-1]['id']}").text
        touched = _between(stepped, 'id="session-h"', 'id="asked-h"')
        assert '<span class="badge label">pii</span>' in touched
        assert '<span class="badge risk-high">high</span> score 70' in touched
    finally:
        auditor.close()
        sam.close()


def test_a_denials_page_shows_what_its_session_had_touched(
    people: dict[str, Any], console: Any, api: Api
) -> None:
    assert api.client.put("/v1/policies", json={"policies": SESSION_POLICIES}).status_code == 200
    agent = api.agent(owner="sam", name="mailer")["id"]
    answers = _pii_then_egress(api.client, agent)
    assert [a["decision"] for a in answers] == ["allow", "allow", "deny"]
    searched, read, denied = _decisions_of(api.client, agent)
    assert denied["reasons"] == ["pii-then-egress"]
    admin = console()
    admin.sign_in("admin")
    listed = admin.http.get(f"/console/agents/{agent}").text
    for event in (searched, read, denied):  # each decision opens its own page
        assert f'href="/console/events/{event["id"]}"' in listed
    assert f'href="/console/events/{denied["id"]}"' in admin.http.get("/console/ledger").text
    page = admin.http.get(f"/console/events/{denied['id']}")
    assert page.status_code == 200, page.text[:300]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text
    text = page.text
    assert '<span class="badge deny">deny</span>' in text
    assert "<code>pii-then-egress</code>" in text
    touched = _between(text, 'id="session-h"', 'id="asked-h"')
    assert "What this session had touched when decided" in touched
    assert f"<code>{agent}</code>" in touched  # the session: the chain's root
    assert '<span class="badge label">pii</span>' in touched
    assert "<code>search</code>" in touched
    assert "mail.send" not in touched  # not touched before: this request is what was denied
    assert "score 0: below every threshold" in touched
    assert "&#34;egress&#34;: true" in text  # what it was asked
    # Before the read, the session had touched no data label.
    first = admin.http.get(f"/console/events/{read['id']}").text
    before = _between(first, 'id="session-h"', 'id="asked-h"')
    assert "pii" not in before.split("Data labels touched")[1].split("</dd>")[0]
    # Another kind of event has no session; a missing one is a 404.
    created = api.events(type="agent.created", agent=agent)[0]
    other = admin.http.get(f"/console/events/{created['id']}")
    assert other.status_code == 200
    assert 'id="session-h"' not in other.text
    for missing in ("evt_nope", "evt_x%00y"):
        assert admin.http.get(f"/console/events/{missing}").status_code == 404
    # Who may read it: as the agent's events (its owner, auditors, admins), nobody else.
    for who, status in (("sam", 200), ("audrey", 200), ("sue", 403)):
        c = console()
        c.sign_in(who)
        got = c.http.get(f"/console/events/{denied['id']}")
        assert got.status_code == status, (who, got.text[:300])
        if status == 200:
            assert '<span class="badge label">pii</span>' in got.text
    sue = console()
    sue.sign_in("sue")
    first_event = api.events()[0]  # about no agent: for the ledger's readers only
    assert sue.http.get(f"/console/events/{first_event['id']}").status_code == 403
