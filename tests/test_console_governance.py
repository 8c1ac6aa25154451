"""The console's governance pages (issue 20, item 7) through the real app, on both backends:
recertifications due and overdue (and recertifying from the page), the access-review inbox
and campaigns, an agent's right-sizing, and the compliance report's download — each page as
each role sees it, CSRF on every form, an auditor's POSTs refused, a supervisor kept to their
agents. The browser's side is tests/test_console_governance_browser.py."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, Backend, Prebuilt, _Templates, admin_client, at_prebuilt
from tests.test_console import PASSWORD, Console, _csrf
from tether.api.app import create_app
from tether.clock import FrozenClock, to_rfc3339
from tether.container import Services

START = datetime(2026, 9, 1, 10, 0, tzinfo=UTC)
POLICIES = '@id("reads") permit (principal, action == Action::"resource.read", resource);'


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


def _governance(svc: Services) -> dict[str, Any]:
    clock = svc.clock
    assert isinstance(clock, FrozenClock)
    with admin_client(svc) as client:
        api = Api(client)
        for name, role in (("sam", "supervisor"), ("sue", "supervisor"), ("audrey", "auditor")):
            api.user(name, role)
        for name in ("admin", "sam", "sue", "audrey"):
            got = client.put(f"/v1/users/{name}/password", json={"password": PASSWORD})
            assert got.status_code == 204, got.text
        assert client.put("/v1/policies", json={"policies": POLICIES}).status_code == 200
        sams = api.agent(owner="sam", name="sams-agent", risk_tier="limited")
        sues = api.agent(owner="sue", name="sues-agent", risk_tier="limited")
        key = client.post(f"/v1/agents/{sams['id']}/credentials", json={"type": "api_key"})
        assert key.status_code == 201, key.text
        clock.advance((timedelta(days=181)).total_seconds())
        soon = api.agent(owner="sam", name="sams-soon", risk_tier="high",
                         recertify_by=to_rfc3339(clock.now() + timedelta(days=10)))  # fmt: skip
        review = client.post("/v1/reviews", json={"note": "quarterly"})
        assert review.status_code == 201, review.text
    return {"sams": sams, "sues": sues, "soon": soon, "key": key.json()["id"],
            "review": review.json(), "now": clock.now()}  # fmt: skip


# Made once per test process and backend on its own frozen clock, then copied for each test
# (tests.conftest.Prebuilt): four argon2id hashes, a policy push, three agents and a review
# were most of a test's CPU.
GOVERNANCE = Prebuilt("console-governance", _governance, clock=lambda: FrozenClock(START))


@pytest.fixture
def world(
    make_services: Callable[..., Services], clock: FrozenClock, backend: Backend,
    tmp_path: Path, schema_templates: _Templates,
) -> Iterator[dict[str, Any]]:  # fmt: skip
    """On a frozen clock: an admin, supervisors sam and sue, auditor audrey (each with a console
    password); sam's agent (with an API key) and sue's, limited risk (180 days) and overdue by
    a day; a high-risk agent of sam's due within 30 days; an open review of every agent; and a
    console client factory."""
    built = copy.deepcopy(at_prebuilt(backend, schema_templates, tmp_path / "data", GOVERNANCE))
    clock.advance((built.pop("now") - clock.now()).total_seconds())  # where the build left it
    svc = make_services(clock=clock)
    with admin_client(svc) as client:
        api = Api(client)
        app = create_app(svc)
        made: list[Console] = []

        def console(username: str) -> Console:
            made.append(Console(app))
            signed = made[-1].sign_in(username)
            assert signed.status_code == 303, signed.text
            return made[-1]

        yield {"svc": svc, "api": api, **built, "console": console}
        for c in made:
            c.close()


def _pages(w: dict[str, Any]) -> list[str]:
    return ["/console/governance", "/console/reviews", f"/console/reviews/{w['review']['id']}",
            f"/console/agents/{w['sams']['id']}/rightsizing", "/console/reports"]  # fmt: skip


def _line(w: dict[str, Any], agent: str, kind: str) -> dict[str, Any]:
    return next(x for x in w["review"]["lines"] if x["agent_id"] == w[agent]["id"]
                and x["kind"] == kind)  # fmt: skip


def _acts(w: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """Every form of the governance pages: (where it posts, what it sends besides its token);
    the report's last."""
    review, line = w["review"]["id"], _line(w, "sams", "credential")["id"]
    agent = w["sams"]["id"]
    return [
        (f"/console/governance/{agent}/recertify", {"note": "x"}),
        (f"/console/reviews/{review}/lines/{line}/answer", {"answer": "reduce", "note": "x"}),
        (f"/console/reviews/{review}/lines/{line}/confirm", {}),
        ("/console/reviews", {"scope": "all"}),
        (f"/console/reviews/{review}/close", {}),
        (f"/console/agents/{agent}/rightsizing/apply", {}),
        ("/console/reports", {"from": "2026-09-01", "to": "2026-10-01"}),
    ]


def _post(c: Console, path: str, **data: str) -> Any:
    return c.http.post(path, data={"csrf": c.csrf("/console/governance"), **data})


def test_each_page_renders_for_an_admin_with_the_csp_and_no_inline_script(
    world: dict[str, Any],
) -> None:
    c = world["console"]("admin")
    for path in _pages(world):
        page = c.http.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "<script>" not in page.text
        assert re.search(r"<script(?![^>]*\ssrc=)", page.text) is None, path
        assert re.search(r"\son[a-z]+=", page.text) is None, path
        assert re.search(r"\sstyle=", page.text) is None, path
        assert 'href="/console/governance" aria-current="page"' in page.text or (
            "rightsizing" in path)  # fmt: skip
    overview = c.http.get("/console/governance").text
    overdue = overview.split('id="overdue"')[1].split("</table>")[0]
    soon = overview.split('id="soon"')[1].split("</table>")[0]
    assert "sams-agent" in overdue
    assert "sues-agent" in overdue
    assert "sams-soon" not in overdue
    assert "sams-soon" in soon
    assert "sams-agent" not in soon
    assert overdue.count(">Recertify</button>") == 2
    assert f"/console/agents/{world['sams']['id']}/rightsizing" in overview
    assert 'href="/console/reviews"' in overview
    assert 'href="/console/reports"' in overview
    reviews = c.http.get("/console/reviews").text
    assert world["review"]["id"] in reviews
    assert "Start the review" in reviews
    assert "Close the review" in c.http.get(f"/console/reviews/{world['review']['id']}").text
    agent = c.http.get(f"/console/agents/{world['sams']['id']}").text
    assert f'href="/console/agents/{world["sams"]["id"]}/rightsizing"' in agent
    sizing = c.http.get(f"/console/agents/{world['sams']['id']}/rightsizing").text
    assert "Proposal and simulation" in sizing
    assert "flip" in sizing


def test_an_auditor_reads_every_page_without_a_button_and_their_posts_are_refused(
    world: dict[str, Any],
) -> None:
    c = world["console"]("audrey")
    for path in _pages(world):
        page = c.http.get(path)
        assert page.status_code == 200, (path, page.text[:300])
        for button in (">Recertify<", ">Answer<", "Confirm:", "Start the review",
                       "Close the review", "Apply:"):  # fmt: skip
            assert button not in page.text, (path, button)
    assert "Download the report" in c.http.get("/console/reports").text  # reading is theirs
    before = world["api"].snapshot()
    for path, data in _acts(world)[:-1]:  # all but the report: an auditor may build one
        got = _post(c, path, **data)
        assert got.status_code == 403, (path, got.text[:300])
    assert world["api"].snapshot() == before


def test_a_supervisor_sees_their_agents_and_lines_only_and_no_report(
    world: dict[str, Any],
) -> None:
    c = world["console"]("sam")
    overview = c.http.get("/console/governance")
    assert overview.status_code == 200
    assert "sams-agent" in overview.text
    assert "sams-soon" in overview.text
    assert "sues-agent" not in overview.text
    assert 'href="/console/reports"' not in overview.text
    inbox = c.http.get("/console/reviews").text
    assert _line(world, "sams", "credential")["id"] in inbox
    assert world["sues"]["id"] not in inbox
    campaign = c.http.get(f"/console/reviews/{world['review']['id']}").text
    assert world["sams"]["id"] in campaign
    assert world["sues"]["id"] not in campaign
    assert "Start the review" not in inbox
    assert "Close the review" not in campaign
    refused = c.http.get("/console/reports")
    assert refused.status_code == 403
    assert "admins and auditors" in refused.text
    assert c.http.get(f"/console/agents/{world['sues']['id']}/rightsizing").status_code == 403
    before = world["api"].snapshot()
    sues_line = _line(world, "sues", "permission")["id"]
    for path, data in ((f"/console/governance/{world['sues']['id']}/recertify", {"note": "x"}),
                       (f"/console/reviews/{world['review']['id']}/lines/{sues_line}/answer",
                        {"answer": "keep", "note": "x"}),
                       ("/console/reports", {"from": "2026-09-01", "to": "2026-10-01"}),
                       ("/console/reviews", {"scope": "all"})):  # fmt: skip
        got = _post(c, path, **data)
        assert got.status_code == 403, (path, got.text[:300])
    assert world["api"].snapshot() == before


def test_every_form_without_or_with_another_sessions_csrf_token_is_refused(
    world: dict[str, Any],
) -> None:
    a, b = world["console"]("admin"), world["console"]("admin")
    theirs = b.csrf()
    before = world["api"].snapshot()
    for path, data in _acts(world):
        for token in ({}, {"csrf": theirs}, {"csrf": ""}):
            got = a.http.post(path, data={**data, **token})
            assert got.status_code == 403, (path, token, got.text[:300])
    assert world["api"].snapshot() == before


def test_recertify_an_overdue_agent_from_the_page(world: dict[str, Any]) -> None:
    svc, api, agent = world["svc"], world["api"], world["sams"]
    c = world["console"]("sam")
    was = api.get(agent["id"])["recertify_by"]
    path = f"/console/governance/{agent['id']}/recertify"
    missing = _post(c, path, note="  ")
    assert missing.status_code == 422
    assert "note" in missing.text
    assert api.get(agent["id"])["recertify_by"] == was
    done = _post(c, path, note="still answers the support queue")
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/console/governance?flash=recertified"
    moved = api.get(agent["id"])["recertify_by"]
    assert moved == to_rfc3339(svc.clock.now() + timedelta(days=180))
    assert moved > was
    (event,) = api.events(type="agent.recertified")
    assert event["agent_id"] == agent["id"]
    assert event["details"]["note"] == "still answers the support queue"
    assert event["actor"].startswith("user:")
    page = c.http.get("/console/governance?flash=recertified").text
    assert "Recertified" in page
    overdue = page.split('id="overdue"')[1].split("</table>")[0]
    assert "sams-agent" not in overdue


def test_answer_reduce_then_confirm_revokes_exactly_the_credential(world: dict[str, Any]) -> None:
    api, agent, review = world["api"], world["sams"], world["review"]["id"]
    line = _line(world, "sams", "credential")
    c = world["console"]("sam")
    base = f"/console/reviews/{review}/lines/{line['id']}"
    assert _post(c, f"{base}/answer", answer="reduce", note="").status_code == 422
    assert _post(c, f"{base}/answer", answer="shrink", note="x").status_code == 422
    answered = _post(c, f"{base}/answer", answer="reduce", note="never used")
    assert answered.status_code == 303, answered.text
    assert answered.headers["location"] == "/console/reviews?flash=answered"
    inbox = c.http.get("/console/reviews").text
    assert f'action="{base}/confirm"' in inbox
    listed = api.client.get(f"/v1/agents/{agent['id']}/credentials").json()["items"]
    assert [x["id"] for x in listed] == [world["key"]]  # not before the confirmation
    confirmed = c.http.post(f"{base}/confirm", data={"csrf": _csrf(inbox), "from": "campaign"})
    assert confirmed.status_code == 303, confirmed.text
    assert confirmed.headers["location"] == f"/console/reviews/{review}?flash=confirmed"
    assert api.client.get(f"/v1/agents/{agent['id']}/credentials").json()["items"] == []
    (applied,) = api.events(type="review.applied")
    assert applied["details"]["outcome"] == "credential_revoked"
    assert applied["details"]["line"] == line["id"]
    assert line["id"] not in c.http.get("/console/reviews").text  # settled: out of the inbox
    assert api.get(agent["id"])["status"] == "active"


def test_start_and_close_a_review_as_an_admin(world: dict[str, Any]) -> None:
    c = world["console"]("admin")
    unknown = _post(c, "/console/reviews", scope="owner", owner="nobody")
    assert unknown.status_code == 422
    assert "owners" in unknown.text
    assert _post(c, "/console/reviews", scope="owner", owner="").status_code == 422
    past = _post(c, "/console/reviews", scope="all", due="2020-01-01")
    assert past.status_code == 422
    assert "due" in past.text
    started = _post(c, "/console/reviews", scope="owner", owner="sue", note="sue's turn")
    assert started.status_code == 303, started.text
    review_id = started.headers["location"].split("/")[-1].split("?")[0]
    page = c.http.get(f"/console/reviews/{review_id}").text
    assert world["sues"]["id"] in page
    assert world["sams"]["id"] not in page
    closed = _post(c, f"/console/reviews/{review_id}/close", note="enough")
    assert closed.status_code == 303, closed.text
    shown = world["api"].client.get(f"/v1/reviews/{review_id}").json()
    assert shown["status"] == "closed"


@pytest.mark.parametrize("role", ["admin", "audrey"])
def test_the_report_downloads_as_a_pdf_or_json(world: dict[str, Any], role: str) -> None:
    c = world["console"](role)
    page = c.http.get("/console/reports").text
    today = world["svc"].clock.now().date()
    assert f'value="{today.isoformat()}"' in page
    period = {"from": (today - timedelta(days=200)).isoformat(), "to": today.isoformat()}
    pdf = _post(c, "/console/reports", format="pdf", **period)
    assert pdf.status_code == 200, pdf.text[:300]
    assert pdf.content.startswith(b"%PDF")
    assert pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["content-disposition"] == (
        f'attachment; filename="tether-compliance-{period["from"]}-{period["to"]}.pdf"'
    )
    got = _post(c, "/console/reports", format="json", **period)
    assert got.status_code == 200
    assert got.headers["content-disposition"].endswith('.json"')
    envelope = json.loads(got.content)
    assert envelope["report"]["period"]["to"].startswith(period["to"])
    built = world["api"].events(type="report.built")
    assert len(built) == 2


def test_a_report_for_the_future_or_in_another_format_is_the_error_page_naming_the_field(
    world: dict[str, Any],
) -> None:
    c = world["console"]("admin")
    later = (world["svc"].clock.now() + timedelta(days=2)).date().isoformat()
    future = _post(c, "/console/reports", **{"from": "2026-09-01", "to": later, "format": "pdf"})
    assert future.status_code == 422
    assert "text/html" in future.headers["content-type"]
    assert "content-disposition" not in future.headers
    assert "to (" in future.text
    assert "is in the future" in future.text
    odd = _post(c, "/console/reports", **{"from": "2026-09-01", "to": "2026-10-01",
                                          "format": "docx"})  # fmt: skip
    assert odd.status_code == 422
    assert "format" in odd.text
    backwards = _post(c, "/console/reports", **{"from": "2026-10-01", "to": "2026-09-01"})
    assert backwards.status_code == 422
    assert "from must be before to" in backwards.text
    assert world["api"].events(type="report.built") == []


def test_a_page_about_nothing_is_a_clear_not_found(world: dict[str, Any]) -> None:
    c = world["console"]("admin")
    assert c.http.get("/console/reviews/rev_nothing").status_code == 404
    assert c.http.get("/console/agents/agt_nothing/rightsizing").status_code == 404
    assert c.http.get(f"/console/agents/{world['sams']['id']}/rightsizing?days=x"
                      ).status_code == 422  # fmt: skip


def test_an_admin_applies_a_safe_right_sizing_from_its_page(world: dict[str, Any]) -> None:
    api = world["api"]
    roles = POLICIES + '\n@id("writers") permit (principal in Role::"writer", ' + (
        'action == Action::"dataset.write", resource);')  # fmt: skip
    assert api.client.put("/v1/policies", json={"policies": roles}).status_code == 200
    agent = api.agent(owner="sam", name="scribe", roles=["writer"])
    path = f"/console/agents/{agent['id']}/rightsizing"
    sam = world["console"]("sam")
    shown = sam.http.get(path).text
    assert "role <code>writer</code> dropped" in shown
    assert "Apply:" not in shown  # an admin's to apply
    assert _post(sam, f"{path}/apply").status_code == 403
    c = world["console"]("admin")
    page = c.http.get(path).text
    assert "0 flips" in page
    assert "Apply:" in page
    done = _post(c, f"{path}/apply")
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"{path}?flash=rightsized"
    assert api.get(agent["id"])["roles"] == []
    assert "Nothing to remove" in c.http.get(f"{path}?flash=rightsized").text
