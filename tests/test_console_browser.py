"""The web console in a real browser (issue 18's acceptance): Tether served by uvicorn on a port
of its own, Debian's headless ``chromium`` driven by Playwright (its own browser downloads are
never used), on both backends.

* A human signs in, finds an agent (filter, click through), approves a held request from the
  inbox with a note (the identical request then goes through), kills an agent from its page
  (its next decision is denied), freezes and unfreezes everything from the overview, verifies
  the ledger, and watches a decision arrive on the activity page without a reload.
* Every page: no JavaScript error and nothing the Content-Security-Policy refused (the
  browser's console and uncaught exceptions), no serious or critical axe-core violation, a
  screenshot in ``test-artifacts/console/<backend>/`` (git-ignored), and every link, button,
  field and disclosure reachable with Tab. Signing in and acting work with the keyboard alone.
* The session cookie is out of script's reach (HttpOnly), every page carries the CSP, and an
  inline script injected into a page does not run.

The server-side half (roles, CSRF, lockout, redirects) is tests/test_console.py.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.pdp import EVAL
from tests.serverproc import free_port, http_client, served_in_thread
from tether.api.app import create_app
from tether.container import Services
from tether.monitor.rules import MonitorConfig, RuleConfig, ThresholdConfig

CHROMIUM = shutil.which("chromium")
# CI installs chromium (.ci/run); a developer machine without it skips, CI never does.
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
PASSWORD = "correct horse battery staple"
POLICIES = """
@id("tools")
permit (principal, action == Action::"tool.call", resource);

@id("writes-need-a-human")
@approval("required")
permit (principal, action == Action::"tool.write", resource);
"""
# What axe-core may report: nothing serious or critical.
SEVERE = {"serious", "critical"}
# What may take focus, and what Tab must reach (hidden fields and closed disclosures aside).
FOCUSABLE = "a[href], button, input:not([type=hidden]), select, textarea, summary"


@dataclass
class Site:
    """Tether served over HTTP, and the bootstrap admin's client of its API."""

    url: str
    backend: str
    services: Services
    api: httpx.Client

    def agent(self, name: str, **fields: Any) -> str:
        body = {"name": name, "owner": "admin", "purpose": "console browser tests",
                "risk_tier": "minimal", **fields}  # fmt: skip
        made = self.api.post("/v1/agents", json=body)
        assert made.status_code == 201, made.text
        return str(made.json()["id"])

    def ask(
        self,
        agent_id: str,
        action: str = "tool.call",
        rid: str = "tickets",
        *,
        kind: str = "Tool",
        properties: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An AuthZEN decision about ``agent_id`` (asked by the admin); its answer's context."""
        given = {"server": "pay"} if properties is None else properties
        body = {"subject": {"type": "agent", "id": agent_id}, "action": {"name": action},
                "resource": {"type": kind, "id": rid, "properties": given},
                "context": {"amount": 120, "currency": "EUR"}}  # fmt: skip
        got = self.api.post(EVAL, json=body)
        assert got.status_code == 200, got.text
        answer = got.json()
        assert answer["decision"] is (answer["context"]["decision"] == "allow"), answer
        return dict(answer["context"])


@contextmanager
def serve(services: Services, policies: str = POLICIES) -> Iterator[Site]:
    """Tether over ``services`` on a port of its own, with ``policies`` pushed, the admin's
    console password set and a broker-only secret stored."""
    token = services.settings.admin_token_path.read_text().strip()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        served_in_thread(create_app(services), port),
        http_client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as api,
    ):
        pushed = api.put("/v1/policies", json={"policies": policies})
        assert pushed.status_code == 200, pushed.text
        password = api.put("/v1/users/admin/password", json={"password": PASSWORD})
        assert password.status_code == 204, password.text
        stored = api.put("/v1/secrets/payments-key", json={"value": "k-123", "broker_only": True})
        assert stored.status_code == 201, stored.text
        yield Site(url, "sqlite" if services.settings.database_schema is None else "postgresql",
                   services, api)  # fmt: skip


@pytest.fixture
def site(services: Services) -> Iterator[Site]:
    with serve(services) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None, "CI must have chromium (see .ci/run)"
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                      args=["--no-sandbox"])  # fmt: skip
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Console:
    """One browser context (its own cookies) on the console, watching for errors."""

    site: Site
    page: Any
    errors: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    def go(self, path: str) -> Any:
        response = self.page.goto(self.site.url + path, wait_until="load")
        assert response is not None
        assert response.status == 200, (path, response.status)
        return response

    def sign_in(self) -> None:
        self.go("/console/sign-in")
        self.page.get_by_label("Username").fill("admin")
        self.page.get_by_label("Password").fill(PASSWORD)
        with self.page.expect_navigation():
            self.page.get_by_role("button", name="Sign in").click()
        assert self.page.url == self.site.url + "/console", self.page.url

    def flash(self) -> str:
        return str(self.page.locator("p.flash").inner_text())

    def check(self, name: str) -> None:
        """The page as it stands: no errors so far, nothing serious or critical for axe-core,
        every interactive element reachable with Tab, and a screenshot."""
        from axe_playwright_python.sync_playwright import Axe

        assert self.errors == [], f"{name}: {self.errors}"
        found = Axe().run(self.page).response["violations"]
        severe = [f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']]}"
                  for v in found if v["impact"] in SEVERE]  # fmt: skip
        assert severe == [], f"{name}: {severe}"
        missed = tab_through(self.page)
        assert missed == [], f"{name}: Tab never reaches {missed}"
        shot = ARTIFACTS / self.site.backend / f"{name}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(shot), full_page=True)
        assert self.errors == [], f"{name}: {self.errors}"
        self.checked.append(name)


@contextmanager
def watched(site: Site, browser: Any) -> Iterator[Console]:
    """A new browser context on ``site``, its console errors and uncaught exceptions kept."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    seen = Console(site, page)

    def on_console(message: Any) -> None:
        if message.type == "error":
            seen.errors.append(f"console: {message.text} ({message.location.get('url')})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: seen.errors.append(f"pageerror: {exc}"))
    try:
        yield seen
        assert seen.errors == []
    finally:
        context.close()


@pytest.fixture
def console(site: Site, browser: Any) -> Iterator[Console]:
    with watched(site, browser) as seen:
        yield seen


def tab_through(page: Any) -> list[str]:
    """Press Tab from the top of the page until focus leaves it: every element that may take
    focus (:data:`FOCUSABLE`, rendered) must have had it. Returns the ones that never did."""
    total = page.evaluate(
        """(selector) => {
            const all = Array.from(document.querySelectorAll(selector)).filter(
                (el) => !el.disabled && el.checkVisibility({visibilityProperty: true}));
            all.forEach((el, i) => { el.dataset.kb = String(i); });
            // Start from the top: focus a mark placed before everything else.
            const top = document.createElement('span');
            top.id = 'kb-top';
            top.tabIndex = -1;
            document.body.prepend(top);
            top.focus();
            return all.length;
        }""",
        FOCUSABLE,
    )
    reached: set[str] = set()
    for _ in range(total + 5):
        page.keyboard.press("Tab")
        at = page.evaluate("() => document.activeElement && document.activeElement.dataset.kb")
        if at is None:
            if reached:
                break  # past the last element: focus went back to the browser
            continue
        if at in reached:
            break
        reached.add(at)
    missed = page.evaluate(
        """(reached) => Array.from(document.querySelectorAll('[data-kb]'))
            .filter((el) => !reached.includes(el.dataset.kb))
            .map((el) => el.outerHTML.slice(0, 120))""",
        sorted(reached),
    )
    page.evaluate("""() => { document.getElementById('kb-top').remove();
        document.querySelectorAll('[data-kb]').forEach((el) => { delete el.dataset.kb; }); }""")
    return list(missed)


def tab_to(page: Any, selector: str, limit: int = 60) -> None:
    """Tab until the element ``selector`` names has focus."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


# ===========================================================================================


def test_sign_in_find_an_agent_and_every_page_is_clean(site: Site, console: Console) -> None:
    wanted = site.agent("needle-finder", roles=["support"])
    for k in range(3):
        site.agent(f"haystack-{k}")
    site.ask(wanted)  # a decision on its page and in the ledger
    page = console.page
    console.go("/console/sign-in")
    console.check("sign-in")
    console.sign_in()
    figures = page.locator("section[aria-labelledby='hour-h'] dl").inner_text().split()
    assert figures[:2] == ["Allowed", "1"], figures  # the last hour's decisions
    console.check("overview")

    # Find the agent: filter by name, then click through to its page.
    page.get_by_role("link", name="Agents", exact=True).click()
    page.wait_for_url("**/console/agents")
    assert page.locator("tbody tr").count() == 4
    console.check("agents")
    page.get_by_label("Name or id").fill("needle")
    page.get_by_label("Status").select_option("active")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    rows = page.locator("tbody tr")
    assert rows.count() == 1
    assert "needle-finder" in rows.inner_text()
    rows.get_by_role("link", name="needle-finder").click()
    page.wait_for_url(f"**/console/agents/{wanted}")
    assert page.locator("h1").inner_text().startswith("needle-finder")
    assert "tool.call" in page.locator("section[aria-labelledby='dec-h']").inner_text()
    console.check("agent")
    page.get_by_role("link", name="Plan a rollback of what it did…").click()
    page.wait_for_url("**plan=rollback**")
    assert "Nothing it did can or needs to be undone" in page.inner_text("main")
    console.check("agent-rollback-plan")

    for name, path in (("approvals", "/console/approvals"), ("activity", "/console/activity"),
                       ("policies", "/console/policies"), ("ledger", "/console/ledger"),
                       ("secrets", "/console/secrets"), ("gateway", "/console/gateway"),
                       ("policies-diff", "/console/policies?a=v0&b=v1")):  # fmt: skip
        console.go(path)
        console.check(name)
        if name == "secrets":  # metadata only: the value never reaches the browser
            assert "payments-key" in page.inner_text("main")
            assert "k-123" not in page.content()
    assert "writes-need-a-human" in page.locator("pre.diff").inner_text()

    # Validate a draft policy (a form post) and a page answered with an error.
    console.go("/console/policies")
    page.get_by_label(re.compile("Cedar policies")).fill("permit (principal, action, resource")
    with page.expect_navigation():
        page.get_by_role("button", name="Validate").click()
    assert page.locator("p.error[role=status]").count() == 1
    console.check("policies-validated")


def test_security_in_the_browser(site: Site, console: Console) -> None:
    console.sign_in()
    page = console.page
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["tether_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/console"
    assert "tether_session" not in page.evaluate("() => document.cookie")
    for path in ("/console", "/console/agents", "/console/ledger", "/console/sign-in"):
        response = console.go(path)
        headers = response.all_headers()
        assert "script-src 'self'" in headers["content-security-policy"], path
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert headers["x-frame-options"] == "DENY"
    assert page.evaluate("() => document.cookie") == ""  # not even the sign-in form's value
    # An inline script put into the page is refused by the CSP: it never runs.
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if m.type == "error" else None)
    page.evaluate("""() => { const s = document.createElement('script');
                             s.textContent = 'window.__ran = true';
                             document.body.appendChild(s); }""")  # fmt: skip
    page.wait_for_timeout(100)
    assert page.evaluate("() => window.__ran === true") is False
    assert any("Content Security Policy" in text for text in refused), refused
    console.errors.clear()  # that refusal was the point


def test_approve_a_held_request_from_the_inbox(site: Site, console: Console) -> None:
    agent = site.agent("payer", risk_tier="high")
    console.sign_in()
    page = console.page
    # Its live feed reads the ledger from where it stood when the stream answered.
    with page.expect_response(lambda r: r.url.endswith("/console/stream")):
        console.go("/console/approvals")
    assert "No pending approvals" in page.inner_text("#approvals")
    held = site.ask(agent, "tool.write", "ledger-db")
    assert held["decision"] == "approval_required", held
    approval_id = held["approval_id"]
    # The inbox shows it without a reload.
    card = page.locator(f"article[id='{approval_id}']")
    card.wait_for(timeout=10_000)
    assert "tool.write on Tool::ledger-db" in card.inner_text()
    card.get_by_text("The exact request").click()
    assert '"amount": 120' in card.locator("pre").inner_text()
    console.check("approvals-pending")
    card.get_by_label("Note").fill("checked with finance")
    with page.expect_navigation():
        card.get_by_role("button", name="Approve").click()
    assert "Approved" in console.flash()
    assert "No pending approvals" in page.inner_text("#approvals")
    console.check("approvals-after")
    decided = site.api.get(f"/v1/approvals/{approval_id}").json()
    assert (decided["status"], decided["note"]) == ("approved", "checked with finance")
    again = site.ask(agent, "tool.write", "ledger-db")
    assert again["decision"] == "allow", again
    assert again["approval_id"] == approval_id
    console.go("/console/approvals?status=approved")  # used now: not approved any more
    console.go("/console/approvals?status=cancelled")
    console.check("approvals-cancelled")


def test_kill_an_agent_from_its_page(site: Site, console: Console) -> None:
    agent = site.agent("rogue")
    assert site.ask(agent)["decision"] == "allow"
    console.sign_in()
    page = console.page
    console.go(f"/console/agents/{agent}")
    page.get_by_text("Kill…").click()
    page.get_by_label("Why", exact=True).fill("it went rogue")
    page.get_by_label(re.compile("Type the agent's id")).fill("not-its-id")
    with page.expect_navigation():
        page.get_by_role("button", name="Kill rogue").click()
    assert "type the agent's id" in page.inner_text("main")  # refused: the id was not typed
    # The browser reports the refusal's status (422) in its console; that one is expected.
    assert [e for e in console.errors if "status of 422" not in e] == [], console.errors
    console.errors.clear()
    console.check("error")
    assert site.api.get(f"/v1/agents/{agent}").json()["status"] == "active"
    console.go(f"/console/agents/{agent}")
    page.get_by_text("Kill…").click()
    page.get_by_label("Why", exact=True).fill("it went rogue")
    page.get_by_label(re.compile("Type the agent's id")).fill(agent)
    console.check("agent-kill-open")
    with page.expect_navigation():
        page.get_by_role("button", name="Kill rogue").click()
    assert "Agent killed" in console.flash()
    assert "revoked" in page.locator("h1").inner_text()
    console.check("agent-killed")
    after = site.ask(agent)
    assert after["decision"] == "deny", after
    assert after["reasons"] == ["tether.agent-not-active"]
    assert site.api.get(f"/v1/agents/{agent}").json()["status"] == "revoked"


def test_freeze_and_unfreeze_from_the_overview(site: Site, console: Console) -> None:
    agent = site.agent("steady")
    console.sign_in()
    page = console.page
    try:
        page.get_by_label("Why freeze every agent").fill("incident 42")
        with page.expect_navigation():
            page.get_by_role("button", name="Freeze every agent").click()
        assert "Frozen" in console.flash()
        assert "incident 42" in page.locator("section[aria-labelledby='freeze-h']").inner_text()
        assert site.api.get("/v1/freeze").json()["frozen"] is True
        assert site.ask(agent)["decision"] == "deny"
        console.check("overview-frozen")
        page.get_by_label("Why lift it").fill("resolved")
        with page.expect_navigation():
            page.get_by_role("button", name="Unfreeze everything").click()
        assert "Freeze lifted" in console.flash()
        assert "Nothing is frozen" in page.inner_text("main")
    finally:
        if site.api.get("/v1/freeze").json()["frozen"]:
            site.api.delete("/v1/freeze")
    assert site.api.get("/v1/freeze").json()["frozen"] is False
    assert site.ask(agent)["decision"] == "allow"


def test_verify_the_ledger(site: Site, console: Console) -> None:
    site.ask(site.agent("recorded"))
    console.sign_in()
    page = console.page
    console.go("/console/ledger")
    assert "decision" in page.locator("table").inner_text()
    with page.expect_navigation():
        page.get_by_role("button", name="Verify the ledger now").click()
    status = page.locator("section[aria-labelledby='verify-h'] p[role=status]")
    assert status.inner_text().startswith("Verified"), status.inner_text()
    console.check("ledger-verified")


def test_a_decision_appears_live_on_the_activity_page(site: Site, console: Console) -> None:
    agent = site.agent("watched")
    console.sign_in()
    page = console.page
    console.go("/console/activity")
    page.wait_for_function("() => document.getElementById('live-state').textContent === 'Live.'")
    page.evaluate("() => { window.__same_page = true; }")  # gone if the page reloads
    assert page.locator("#activity tbody tr").count() == 0
    site.ask(agent, "tool.call", "search")
    row = page.locator("#activity tbody tr", has_text=agent).filter(has_text="decision")
    row.first.wait_for(timeout=10_000)
    cells = row.first.locator("td").all_inner_texts()
    assert cells[2:] == ["decision", agent, "tool.call", "Tool::search", "allow"], cells
    assert page.evaluate("() => window.__same_page") is True
    console.check("activity-live")


def test_sign_in_and_act_with_the_keyboard_alone(site: Site, console: Console) -> None:
    agent = site.agent("keyboarded")
    page = console.page
    console.go("/console/sign-in")
    # The username field has focus on arrival.
    assert page.evaluate("() => document.activeElement.id") == "username"
    page.keyboard.type("admin")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url == site.url + "/console"
    # The skip link comes first and lands on the content.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    # To the agent's page by links alone.
    tab_to(page, "nav a[href='/console/agents']")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    tab_to(page, f"a[href='/console/agents/{agent}']")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    # Suspend it, then open the kill disclosure and kill it, all with the keyboard.
    tab_to(page, "#suspend-reason")
    page.keyboard.type("keyboard test")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Agent suspended" in console.flash()
    assert site.api.get(f"/v1/agents/{agent}").json()["status"] == "suspended"
    tab_to(page, "details.kill summary")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.id") == "kill-reason"
    page.keyboard.type("done with it")
    page.keyboard.press("Tab")
    page.keyboard.type(agent)
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Kill keyboarded"
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Agent killed" in console.flash()
    assert site.ask(agent)["decision"] == "deny"
    # Signing out with the keyboard.
    tab_to(page, "form.whoami button")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.url.startswith(site.url + "/console/sign-in")


def test_an_alert_appears_live_and_is_acknowledged_with_the_keyboard(
    site: Site, console: Console
) -> None:
    agent = site.agent("flaky")
    console.sign_in()
    page = console.page
    console.go("/console/alerts")
    page.wait_for_function("() => document.getElementById('alerts-state').textContent === 'Live.'")
    page.evaluate("() => { window.__same_page = true; }")  # gone if the page reloads
    assert "No open alerts yet" in page.inner_text("#alerts")
    console.check("alerts-none")
    # The server's own loop raises the alert from the ledger (every second); the page's feed
    # shows it without a reload.
    suspended = site.api.post(f"/v1/agents/{agent}/suspend", json={"reason": "drill 7"})
    assert suspended.status_code == 200, suspended.text
    card = page.locator("#alerts article", has_text=agent)
    card.wait_for(timeout=10_000)
    assert page.evaluate("() => window.__same_page") is True
    assert page.locator("#alerts-none").count() == 0
    alert_id = card.get_attribute("id")
    assert alert_id is not None
    assert alert_id.startswith("alr_")
    shown = card.inner_text()
    for part in ("warning", "agent.suspended", "drill 7", "not yet"):
        assert part in shown, shown
    assert card.get_by_role("link", name=agent).get_attribute("href") == f"/console/agents/{agent}"
    assert "New alert: agent.suspended" in page.inner_text("#alerts-state")
    console.check("alerts-live")
    # Acknowledge it with the keyboard: its note, then its button.
    tab_to(page, f"[id='{alert_id}-note']")
    page.keyboard.type("a drill, expected")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Acknowledge"
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Alert acknowledged" in console.flash()
    assert "No open alerts" in page.inner_text("#alerts")
    acked = site.api.get("/v1/alerts", params={"status": "acked"}).json()["items"]
    assert [(a["id"], a["ack_note"]) for a in acked] == [(alert_id, "a drill, expected")]
    console.go("/console/alerts?status=acked")
    assert "a drill, expected" in page.inner_text(f"[id='{alert_id}']")
    console.check("alerts-acked")


MONITORED = """
@id("read") permit (principal, action in [Action::"resource.read", Action::"tool.call"], resource);
@id("pii-then-egress") forbid (principal, action == Action::"tool.call", resource) when {
  context.session.labels.contains("pii") && resource has egress && resource.egress };
"""


def test_an_agents_risk_a_denials_session_and_clearing_the_risk(
    make_services: Callable[..., Services], browser: Any
) -> None:
    burst = RuleConfig(name="burst", when={"requests": ">= 3"}, score=70,
                       because="{requests} requests in the window")  # fmt: skip
    svc = make_services(monitor=MonitorConfig(rules=[burst], thresholds=[
        ThresholdConfig(score=40, level="elevated", action="alert"),
        ThresholdConfig(score=70, level="high", action="require_approval"),
    ]))  # fmt: skip
    with serve(svc, MONITORED) as site, watched(site, browser) as console:
        agent = site.agent("mailer")
        # A tool, PII read, then an email out: denied; that third request also steps it up.
        assert site.ask(agent, "tool.call", "search", properties={})["decision"] == "allow"
        read = site.ask(agent, "resource.read", "crm/customers", kind="Resource",
                        properties={"labels": ["pii"]})  # fmt: skip
        assert read["decision"] == "allow"
        denied = site.ask(agent, "tool.call", "mail.send", properties={"egress": True})
        assert (denied["decision"], denied["reasons"]) == ("deny", ["pii-then-egress"])
        console.sign_in()
        page = console.page
        console.go(f"/console/agents/{agent}")
        panel = page.locator("section[aria-labelledby='risk-h']")
        shown = panel.inner_text()
        for part in ("high", "score 70", "Stepped up:", "burst", "3 requests in the window",
                     "requests = 3", "by a tool.call on Tool::mail.send (deny)"):  # fmt: skip
            assert part in shown, (part, shown)
        console.check("agent-risk")

        # The denial's page: what its session had touched when it was decided.
        row = page.locator("section[aria-labelledby='dec-h'] tbody tr", has_text="mail.send")
        with page.expect_navigation():
            row.get_by_role("link").click()
        assert "/console/events/" in page.url
        assert page.locator("h1").inner_text().endswith("decision deny")
        touched = page.locator("section[aria-labelledby='session-h']")
        assert touched.locator("h2").inner_text() == "What this session had touched when decided"
        facts = touched.inner_text()
        assert "pii" in facts
        assert "search" in facts
        assert "mail.send" not in facts
        assert "Risk then" in facts  # the agent's risk it was decided with
        assert "pii-then-egress" in page.inner_text("main")
        console.check("event-denied")

        # Clear the risk from the agent's page.
        page.get_by_role("link", name=agent).first.click()
        page.wait_for_url(f"**/console/agents/{agent}")
        page.get_by_label("Why it is fine").fill("a planned export test")
        with page.expect_navigation():
            page.get_by_role("button", name="Clear risk").click()
        assert "Risk cleared" in console.flash()
        shown = page.locator("section[aria-labelledby='risk-h']").inner_text()
        assert "Stepped up" not in shown
        assert "low score 0" in shown
        assert page.get_by_role("button", name="Clear risk").count() == 0
        assert svc.monitor.describe(agent)["step_up"] is False
        console.check("agent-risk-cleared")
        # No more step-up: what the policies allow goes through again.
        assert site.ask(agent, "tool.call", "search", properties={})["decision"] == "allow"
