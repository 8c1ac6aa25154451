"""The console's governance pages in a real browser (issue 20, item 7): Tether served on a port
of its own over a frozen clock, Debian's headless ``chromium`` driven by Playwright (its own
browser downloads never used), on both backends.

* An owner signs in, answers a credential's review line "reduce", confirms it, and the
  credential is gone.
* An overdue agent is recertified from the governance page, and its right-sizing is read.
* An admin downloads the compliance report as a PDF (and a period in the future is refused
  with the error page naming ``to``).
* Every page: no console error, no serious or critical axe-core violation, every control
  reachable with Tab, a screenshot in ``test-artifacts/console/<backend>/`` (the checks of
  tests/test_console_browser.py, reused).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, admin_client
from tests.test_console_browser import (
    PASSWORD,
    Console,
    Site,
    browser,  # noqa: F401 - the module's Chromium, a fixture reused by name
    pytestmark,  # noqa: F401 - skipped alike where chromium is missing
    serve,
    watched,
)
from tether.clock import FrozenClock, to_rfc3339
from tether.container import Services

# A frozen clock in the past, so the report's period ends before the real now too.
START = datetime.now(UTC).replace(microsecond=0) - timedelta(days=200)


@dataclass
class World:
    site: Site
    clock: FrozenClock
    overdue: str  # olive's agent, limited risk, a day past its recertification
    keyed: str  # olive's agent with an API key
    key: str


@pytest.fixture
def world(make_services: Callable[..., Services]) -> Iterator[World]:
    clock = FrozenClock(START)
    svc = make_services(clock=clock)
    with admin_client(svc) as client:
        api = Api(client)
        api.user("olive", "supervisor")
        got = client.put("/v1/users/olive/password", json={"password": PASSWORD})
        assert got.status_code == 204, got.text
        overdue = api.agent(owner="olive", name="night-shift", risk_tier="limited")["id"]
        keyed = api.agent(owner="olive", name="refunds")["id"]
        key = client.post(f"/v1/agents/{keyed}/credentials", json={"type": "api_key"})
        assert key.status_code == 201, key.text
    clock.advance(timedelta(days=181).total_seconds())
    with serve(svc) as site:
        yield World(site, clock, overdue, keyed, key.json()["id"])


@pytest.fixture
def console(world: World, browser: Any) -> Iterator[Console]:  # noqa: F811 - the fixture imported above
    with watched(world.site, browser) as seen:
        yield seen


def _sign_in(console: Console, username: str) -> None:
    console.go("/console/sign-in")
    console.page.get_by_label("Username").fill(username)
    console.page.get_by_label("Password").fill(PASSWORD)
    with console.page.expect_navigation():
        console.page.get_by_role("button", name="Sign in").click()
    assert console.page.url == console.site.url + "/console", console.page.url


def test_an_owner_answers_reduce_and_confirms_it_and_the_credential_is_revoked(
    world: World, console: Console
) -> None:
    site, page = world.site, console.page
    started = site.api.post("/v1/reviews", json={"agents": [world.keyed], "note": "Q4"})
    assert started.status_code == 201, started.text
    review = started.json()
    line = next(x for x in review["lines"] if x["kind"] == "credential")
    _sign_in(console, "olive")
    page.get_by_role("link", name="Governance").click()
    page.wait_for_url("**/console/governance")
    page.get_by_role("link", name=re.compile("Access reviews: your inbox")).click()
    page.wait_for_url("**/console/reviews")
    card = page.locator(f"article[id='line-{line['id']}']")
    assert "credential" in card.inner_text()
    assert "never" in card.inner_text()  # its last use: the key was never used
    console.check("reviews-inbox")
    card.get_by_label("Answer").select_option("reduce")
    card.get_by_label("Note").fill("never used: the agent has another key")
    with page.expect_navigation():
        card.get_by_role("button", name="Answer").click()
    assert "Answer recorded" in console.flash()
    card = page.locator(f"article[id='line-{line['id']}']")
    assert "answered reduce" in card.inner_text()
    console.check("reviews-answered")
    listed = site.api.get(f"/v1/agents/{world.keyed}/credentials").json()["items"]
    assert [c["id"] for c in listed] == [world.key]  # nothing done before the confirmation
    with page.expect_navigation():
        card.get_by_role("button", name=f"Confirm: remove credential {world.key}").click()
    assert "Confirmed and carried out" in console.flash()
    assert page.locator(f"article[id='line-{line['id']}']").count() == 0
    console.check("reviews-confirmed")
    assert site.api.get(f"/v1/agents/{world.keyed}/credentials").json()["items"] == []
    (applied,) = site.api.get("/v1/audit/events", params={"type": "review.applied"}).json()["items"]
    assert applied["details"]["outcome"] == "credential_revoked"
    assert applied["details"]["credential"] == world.key
    console.go(f"/console/reviews/{review['id']}")
    assert "credential revoked" in page.inner_text("main")
    console.check("review-campaign")


def test_recertify_an_overdue_agent_from_the_governance_page(
    world: World, console: Console
) -> None:
    site, page = world.site, console.page
    assert site.ask(world.overdue)["decision"] == "approval_required"  # limited, overdue
    _sign_in(console, "olive")
    console.go("/console/governance")
    row = page.locator(f"#overdue tr[id='due-{world.overdue}']")
    assert "night-shift" in row.inner_text()
    assert "limited" in row.inner_text()
    console.check("governance")
    row.get_by_role("link", name="Right-sizing of night-shift").click()
    page.wait_for_url(f"**/console/agents/{world.overdue}/rightsizing")
    assert "Proposal and simulation" in page.inner_text("main")
    console.check("rightsizing")
    page.go_back()
    row = page.locator(f"#overdue tr[id='due-{world.overdue}']")
    row.get_by_label("Why it still needs what it has").fill("still covers the night queue")
    with page.expect_navigation():
        row.get_by_role("button", name="Recertify night-shift").click()
    assert "Recertified" in console.flash()
    assert page.locator(f"#overdue tr[id='due-{world.overdue}']").count() == 0
    console.check("governance-recertified")
    agent = site.api.get(f"/v1/agents/{world.overdue}").json()
    assert agent["recertify_by"] == to_rfc3339(world.clock.now() + timedelta(days=180))
    (event,) = site.api.get("/v1/audit/events", params={"type": "agent.recertified"}).json()[
        "items"
    ]
    assert event["details"]["note"] == "still covers the night queue"
    assert site.ask(world.overdue)["decision"] == "allow"  # the overdue response lifted


def test_an_admin_downloads_the_report_as_a_pdf(world: World, console: Console) -> None:
    page = console.page
    _sign_in(console, "admin")
    console.go("/console/reports")
    console.check("reports")
    today = world.clock.now().date()
    page.get_by_label("From (included)").fill((today - timedelta(days=190)).isoformat())
    page.get_by_label("Format").select_option("pdf")
    with page.expect_download() as downloading:
        page.get_by_role("button", name="Download the report").click()
    download = downloading.value
    assert download.suggested_filename.endswith(f"-{today.isoformat()}.pdf")
    saved = Path(download.path())
    assert saved.read_bytes().startswith(b"%PDF")
    assert console.errors == []
    # A period that ends in the future: the error page, naming the field.
    page.get_by_label("To (excluded, not in the future)").fill(
        (today + timedelta(days=3)).isoformat()
    )
    with page.expect_navigation():
        page.get_by_role("button", name="Download the report").click()
    assert re.search(r"to \(.*\) is in the future", page.inner_text("p.error"))
    # The browser reports the refusal's status (422) in its console; that one is expected.
    assert [e for e in console.errors if "status of 422" not in e] == [], console.errors
    console.errors.clear()
    console.check("reports-error")
    # The admin's review page: campaigns and the form to start one.
    console.go("/console/reviews")
    page.get_by_label("Whose agents").select_option("owner")
    page.get_by_label(re.compile("^Owner")).fill("olive")
    with page.expect_navigation():
        page.get_by_role("button", name="Start the review").click()
    assert "Access review started" in console.flash()
    assert "refunds" in page.inner_text("main")
    console.check("review-started")
