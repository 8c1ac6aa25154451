"""Access reviews (issue 20, item 1): a campaign's lines are what each agent holds (permissions,
roles, credentials, delegations) with their last use; answers are ledger events; reduce and
retire act only once confirmed, and a reduce removes exactly the line it names; who may see
and answer what; bad input refused with nothing written; the CLI."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import Api, assert_error, bearer
from tests.pdp import credential, env_of, push_policies, token
from tests.serverproc import free_port, run_cli, served_in_thread
from tether.api.app import create_app
from tether.clock import to_micros
from tether.container import Services
from tether.credentials.models import AccessTokenRow
from tether.policy.values import Ask, Effect
from tether.principals import Principal, Role

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"
POLICIES = """
@id("reader-read")
permit (principal in Role::"reader", action == Action::"resource.read", resource);
@id("writer-write")
permit (principal in Role::"writer", action == Action::"dataset.write", resource);
@id("datasets") permit (principal, action == Action::"dataset.read", resource);
"""


def _decide(svc: Services, ask: Ask) -> None:
    svc.runtime.ensure_current()
    decision = asyncio.run(svc.decisions.decide(ask))
    assert decision.effect is Effect.ALLOW, decision


@pytest.fixture
def world(services: Services, api: Api) -> dict[str, Any]:
    """alice owns ``agent`` (roles reader and writer, two API keys of which one was used, one
    decision under reader-read, a delegation from alice used once) and ``spare``; bob owns
    ``bobs``; carol supervises ``agent``; an auditor."""
    alice, bob = api.user("alice"), api.user("bob")
    carol, auditor = api.user("carol"), api.user("aud", role="auditor")
    agent = api.agent(
        name="main",
        owner=alice["id"],
        roles=["reader", "writer"],
        scopes=["read"],
        supervisors=[carol["id"]],
    )
    spare = api.agent(name="spare", owner=alice["id"])
    bobs = api.agent(name="bobs", owner=bob["id"], roles=["reader"])
    push_policies(api.client, POLICIES)
    with env_of(services, api.client) as e:
        used, unused = credential(e, agent["id"]), credential(e, agent["id"])
        own = token(e, used)
    _decide(services, Ask(agent["id"], "resource.read", "Resource", "docs"))
    # alice delegates to the agent (a subject token), which exchanges it and acts for her.
    who = Principal("user", alice["id"], "alice", Role.SUPERVISOR)
    minted = services.oauth.subject_token(who, actor=agent["id"], scopes=["read"])
    exchanged = services.oauth.token(
        {
            "grant_type": EXCHANGE,
            "client_id": agent["id"],
            "client_secret": used.secret,
            "subject_token": minted["subject_token"],
            "subject_token_type": minted["subject_token_type"],
            "actor_token": own,
            "actor_token_type": AT,
        },
        None,
    )
    _decide(
        services,
        Ask(
            agent["id"],
            "dataset.read",
            "Dataset",
            "d1",
            chain=(alice["id"], agent["id"]),
            on_behalf_of=alice["id"],
        ),
    )
    creds = {
        c["id"]: c for c in api.client.get(f"/v1/agents/{agent['id']}/credentials").json()["items"]
    }
    used_id = next(i for i, c in creds.items() if c["last_used_at"] is not None)
    unused_id = next(i for i in creds if i != used_id)
    del unused
    return {
        "alice": alice,
        "bob": bob,
        "carol": carol,
        "auditor": auditor,
        "agent": agent,
        "spare": spare,
        "bobs": bobs,
        "used": used_id,
        "unused": unused_id,
        "exchanged": exchanged["access_token"],
    }


def _start(api: Api, **body: Any) -> dict[str, Any]:
    got = api.client.post("/v1/reviews", json=body)
    assert got.status_code == 201, got.text
    return dict(got.json())


def _lines(review: dict[str, Any], agent_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(x["kind"], x["subject"]): x for x in review["lines"] if x["agent_id"] == agent_id}


def _answer(
    api: Api, review: str, line: str, answer: str, tok: str | None = None, note: str = "checked"
) -> Any:
    return api.client.post(
        f"/v1/reviews/{review}/lines/{line}/answer",
        json={"answer": answer, "note": note},
        headers=bearer(tok) if tok else None,
    )


def _confirm(api: Api, review: str, line: str, tok: str | None = None) -> Any:
    return api.client.post(
        f"/v1/reviews/{review}/lines/{line}/confirm", json={}, headers=bearer(tok) if tok else None
    )


def test_lines_are_what_the_agent_holds_with_last_use(api: Api, world: dict[str, Any]) -> None:
    agent = world["agent"]
    review = _start(api, owners=["alice"], due="2099-01-01T00:00:00Z", note="Q1")
    assert review["status"] == "open"
    assert {x["agent_id"] for x in review["lines"]} == {agent["id"], world["spare"]["id"]}
    lines = _lines(review, agent["id"])
    assert set(lines) == {
        ("permission", "reader-read"),
        ("permission", "writer-write"),
        ("permission", "datasets"),
        ("role", "reader"),
        ("role", "writer"),
        ("credential", world["used"]),
        ("credential", world["unused"]),
        ("delegation", f"user:{world['alice']['id']}"),
    }
    decisions = api.events(type="decision", agent=agent["id"])
    read, acted_for = decisions[0], decisions[1]
    assert lines[("permission", "reader-read")]["last_used_seq"] == read["seq"]
    assert lines[("permission", "reader-read")]["last_used_at"] == read["time"]
    assert lines[("permission", "reader-read")]["detail"]["grants"] == (
        "resource.read on any resource"
    )
    assert lines[("permission", "writer-write")]["last_used_at"] is None
    assert lines[("permission", "datasets")]["last_used_seq"] == acted_for["seq"]
    assert lines[("role", "reader")]["last_used_seq"] == read["seq"]
    assert lines[("role", "reader")]["detail"]["policies"] == ["reader-read"]
    assert lines[("role", "writer")]["last_used_at"] is None
    creds = {
        c["id"]: c for c in api.client.get(f"/v1/agents/{agent['id']}/credentials").json()["items"]
    }
    assert (
        lines[("credential", world["used"])]["last_used_at"] == creds[world["used"]]["last_used_at"]
    )
    assert lines[("credential", world["used"])]["last_used_at"] is not None
    assert lines[("credential", world["unused"])]["last_used_at"] is None
    delegation = lines[("delegation", f"user:{world['alice']['id']}")]
    assert delegation["last_used_seq"] == acted_for["seq"]
    assert delegation["detail"]["grants"] == 2  # the subject token, the exchange
    spare = _lines(review, world["spare"]["id"])
    assert set(spare) == {("permission", "datasets")}
    assert all(x["state"] == "open" and x["owner"] == world["alice"]["id"] for x in review["lines"])
    assert review["progress"] == {"lines": 9, "open": 9, "awaiting_confirmation": 0, "settled": 0}
    (started,) = api.events(type="review.started")
    assert started["seq"] == review["started_seq"]
    assert started["details"]["lines"] == 9
    assert started["details"]["scope"] == {"owners": [world["alice"]["id"]], "agents": []}
    # The default scope: every active agent.
    everyone = _start(api)
    assert {x["agent_id"] for x in everyone["lines"]} >= {agent["id"], world["bobs"]["id"]}


def test_answers_are_ledger_events_and_keep_settles(api: Api, world: dict[str, Any]) -> None:
    review = _start(api, agents=[world["spare"]["id"]])
    (line,) = review["lines"]
    got = _answer(api, review["id"], line["id"], "reduce", world["alice"]["token"], "too wide")
    assert got.status_code == 200, got.text
    assert (got.json()["state"], got.json()["answer"]) == ("answered", "reduce")
    got = _answer(api, review["id"], line["id"], "keep", world["alice"]["token"], "needed")
    assert got.status_code == 200, got.text
    answers = api.events(type="review.answered")
    assert [
        (e["details"]["answer"], e["details"]["note"], e["details"]["previous"]) for e in answers
    ] == [("reduce", "too wide", None), ("keep", "needed", "reduce")]
    assert answers[-1]["actor"] == f"user:{world['alice']['id']}"
    assert answers[-1]["agent_id"] == world["spare"]["id"]
    assert got.json()["answer_seq"] == answers[-1]["seq"]
    # The only line is settled: the campaign closed by itself.
    shown = api.client.get(f"/v1/reviews/{review['id']}").json()
    assert shown["status"] == "closed"
    (closed,) = api.events(type="review.closed")
    assert closed["details"]["how"] == "all_settled"
    assert shown["closed_seq"] == closed["seq"]
    assert_error(_answer(api, review["id"], line["id"], "retire"), 409, "review_closed")


def test_reduce_a_credential_removes_exactly_it(api: Api, world: dict[str, Any]) -> None:
    agent = world["agent"]
    review = _start(api, agents=[agent["id"]])
    line = _lines(review, agent["id"])[("credential", world["unused"])]
    assert _answer(api, review["id"], line["id"], "reduce").status_code == 200
    # Not before the confirmation.
    listed = api.client.get(f"/v1/agents/{agent['id']}/credentials").json()["items"]
    assert {c["id"] for c in listed} == {world["used"], world["unused"]}
    before = api.agents()
    done = _confirm(api, review["id"], line["id"], world["alice"]["token"])
    assert done.status_code == 200, done.text
    assert (done.json()["state"], done.json()["outcome"]) == ("settled", "credential_revoked")
    listed = api.client.get(f"/v1/agents/{agent['id']}/credentials").json()["items"]
    assert [c["id"] for c in listed] == [world["used"]]
    after = api.agents()
    assert after == before  # roles, status, everything else of every agent untouched
    (deleted,) = api.events(type="credential.deleted")
    assert deleted["resource"]["id"] == world["unused"]
    (applied,) = api.events(type="review.applied")
    assert applied["details"]["outcome"] == "credential_revoked"
    assert applied["seq"] > deleted["seq"]
    assert done.json()["applied_seq"] == applied["seq"]
    assert_error(_confirm(api, review["id"], line["id"]), 409, "review_line_not_confirmable")


def test_reduce_a_role_drops_exactly_it(api: Api, world: dict[str, Any]) -> None:
    agent = world["agent"]
    review = _start(api, agents=[agent["id"], world["bobs"]["id"]])
    line = _lines(review, agent["id"])[("role", "writer")]
    assert (
        _answer(api, review["id"], line["id"], "reduce", world["alice"]["token"]).status_code == 200
    )
    creds_before = api.client.get(f"/v1/agents/{agent['id']}/credentials").json()["items"]
    done = _confirm(api, review["id"], line["id"])
    assert done.status_code == 200, done.text
    assert done.json()["outcome"] == "role_dropped"
    assert api.get(agent["id"])["roles"] == ["reader"]
    assert api.get(world["bobs"]["id"])["roles"] == ["reader"]  # another agent's same role
    assert api.client.get(f"/v1/agents/{agent['id']}/credentials").json()["items"] == creds_before
    updated = api.events(type="agent.updated", agent=agent["id"])[-1]
    assert updated["details"]["changes"] == {
        "roles": {"from": ["reader", "writer"], "to": ["reader"]}
    }
    others = [
        x
        for x in api.client.get(f"/v1/reviews/{review['id']}").json()["lines"]
        if x["id"] != line["id"]
    ]
    assert {x["state"] for x in others} == {"open"}


def test_reduce_a_delegation_and_a_permission(
    services: Services, api: Api, world: dict[str, Any]
) -> None:
    agent = world["agent"]
    review = _start(api, agents=[agent["id"]])
    lines = _lines(review, agent["id"])
    delegation = lines[("delegation", f"user:{world['alice']['id']}")]
    assert _answer(api, review["id"], delegation["id"], "reduce").status_code == 200
    done = _confirm(api, review["id"], delegation["id"])
    assert done.status_code == 200, done.text
    revoked = done.json()
    assert revoked["outcome"] == "delegation_revoked"
    with services.db.read() as s:
        live = {
            r.jti
            for r in s.scalars(
                select(AccessTokenRow).where(
                    AccessTokenRow.agent_id == agent["id"],
                    AccessTokenRow.revoked_at.is_(None),
                    AccessTokenRow.expires_at > to_micros(datetime.now(UTC)),
                )
            )
        }
    applied = api.events(type="review.applied")[-1]
    gone = applied["details"]["tokens_revoked"]
    assert len(gone) == 2  # the subject token and the exchanged token
    assert not set(gone) & live
    assert live  # the agent's own token is untouched
    assert services.oauth.introspect(world["exchanged"], services_principal())["active"] is False
    permission = lines[("permission", "writer-write")]
    assert _answer(api, review["id"], permission["id"], "reduce").status_code == 200
    done = _confirm(api, review["id"], permission["id"])
    assert done.json()["outcome"] == "rightsizing_requested"
    (request,) = api.events(type="review.rightsizing_requested")
    assert request["resource"] == {"type": "Policy", "id": "writer-write"}
    assert request["details"]["agent"] == agent["id"]
    assert api.client.get("/v1/policies").json()["policies"].count("@id(") == 3  # unchanged


def services_principal() -> Principal:
    return Principal("system", "system", "tether")


def test_retire_acts_only_once_confirmed(api: Api, world: dict[str, Any]) -> None:
    agent = world["agent"]
    review = _start(api, agents=[agent["id"], world["spare"]["id"]])
    line = _lines(review, agent["id"])[("role", "reader")]
    assert (
        _answer(api, review["id"], line["id"], "retire", world["alice"]["token"]).status_code == 200
    )
    assert api.get(agent["id"])["status"] == "active"
    done = _confirm(api, review["id"], line["id"], world["alice"]["token"])
    assert done.status_code == 200, done.text
    assert done.json()["outcome"] == "agent_retired"
    assert api.get(agent["id"])["status"] == "retired"
    assert api.events(type="agent.retired", agent=agent["id"])
    shown = api.client.get(f"/v1/reviews/{review['id']}").json()
    mine = [x for x in shown["lines"] if x["agent_id"] == agent["id"]]
    assert {(x["state"], x["outcome"]) for x in mine} == {("settled", "agent_retired")}
    assert shown["status"] == "open"  # spare's line is still open
    assert api.get(world["spare"]["id"])["status"] == "active"


def test_confirmation_is_required_and_only_for_reduce_or_retire(
    api: Api, world: dict[str, Any]
) -> None:
    review = _start(api, agents=[world["agent"]["id"]])
    lines = _lines(review, world["agent"]["id"])
    open_line, kept = lines[("role", "reader")], lines[("role", "writer")]
    assert_error(_confirm(api, review["id"], open_line["id"]), 409, "review_line_not_confirmable")
    assert _answer(api, review["id"], kept["id"], "keep").status_code == 200
    assert_error(_confirm(api, review["id"], kept["id"]), 409, "review_line_not_confirmable")
    assert api.get(world["agent"]["id"])["roles"] == ["reader", "writer"]


def test_who_sees_and_answers_what(api: Api, world: dict[str, Any]) -> None:
    review = _start(api)
    agent, bobs = world["agent"], world["bobs"]
    mine = {
        x["agent_id"]
        for x in api.client.get(
            f"/v1/reviews/{review['id']}", headers=bearer(world["bob"]["token"])
        ).json()["lines"]
    }
    assert mine == {bobs["id"]}
    inbox = api.client.get("/v1/reviews/inbox", headers=bearer(world["carol"]["token"])).json()
    assert {x["agent_id"] for x in inbox["items"]} == {agent["id"]}  # she supervises it
    inbox = api.client.get("/v1/reviews/inbox", headers=bearer(world["alice"]["token"])).json()
    assert {x["agent_id"] for x in inbox["items"]} == {agent["id"], world["spare"]["id"]}
    line = _lines(review, agent["id"])[("role", "reader")]
    assert_error(_answer(api, review["id"], line["id"], "keep", world["bob"]["token"]), 403)
    assert_error(_answer(api, review["id"], line["id"], "keep", world["auditor"]["token"]), 403)
    assert_error(_confirm(api, review["id"], line["id"], world["auditor"]["token"]), 403)
    assert api.events(type="review.answered") == []
    # The auditor reads everything, answers nothing; a supervisor starts nothing.
    seen = api.client.get(f"/v1/reviews/{review['id']}", headers=bearer(world["auditor"]["token"]))
    assert len(seen.json()["lines"]) == len(review["lines"])
    assert_error(
        api.client.post("/v1/reviews", json={}, headers=bearer(world["alice"]["token"])), 403
    )
    # carol supervises: she answers; confirming a role drop is the owner's (manage).
    assert (
        _answer(api, review["id"], line["id"], "reduce", world["carol"]["token"]).status_code == 200
    )
    assert_error(_confirm(api, review["id"], line["id"], world["carol"]["token"]), 403)
    assert api.get(agent["id"])["roles"] == ["reader", "writer"]
    # A supervisor sees only the reviews with their lines; another's review is not found.
    only_spare = _start(api, agents=[world["spare"]["id"]])
    assert_error(
        api.client.get(f"/v1/reviews/{only_spare['id']}", headers=bearer(world["bob"]["token"])),
        404,
        "review_not_found",
    )
    listed = api.client.get("/v1/reviews", headers=bearer(world["bob"]["token"])).json()
    assert [r["id"] for r in listed["items"]] == [review["id"]]


def test_bad_input_names_the_field_and_writes_nothing(api: Api, world: dict[str, Any]) -> None:
    before = api.events()
    cases = [
        ({"agents": ["agt_00000000000000000000000000"]}, 422, "agents"),
        ({"owners": ["nobody"]}, 422, "owners"),
        (
            {
                "owners": ["alice"],
                "agents": [world["agent"]["id"], "agt_00000000000000000000000000"],
            },
            422,
            "agents",
        ),
        ({"due": "2001-01-01T00:00:00Z"}, 422, "due"),
    ]
    for body, status, field in cases:
        error = assert_error(api.client.post("/v1/reviews", json=body), status)
        assert error["details"].get("field") == field or field in json.dumps(error), error
    api.ok(world["spare"]["id"], "retire", reason="gone")
    error = assert_error(
        api.client.post("/v1/reviews", json={"agents": [world["spare"]["id"]]}), 409
    )
    assert error["details"]["field"] == "agents"
    assert api.new_events(before)[-1]["type"] == "agent.retired"  # no review event, no lines
    assert api.client.get("/v1/reviews").json()["items"] == []
    review = _start(api, agents=[world["agent"]["id"]])
    line = review["lines"][0]
    error = assert_error(_answer(api, review["id"], line["id"], "shrink"), 422)
    assert "answer" in json.dumps(error)
    assert_error(
        _answer(api, review["id"], "rvl_00000000000000000000000000", "keep"),
        404,
        "review_line_not_found",
    )
    assert_error(
        api.client.get("/v1/reviews/rvw_00000000000000000000000000"), 404, "review_not_found"
    )
    closed = api.client.post(f"/v1/reviews/{review['id']}/close", json={"note": "enough"})
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "closed"
    assert_error(_answer(api, review["id"], line["id"], "keep"), 409, "review_closed")
    assert_error(api.client.post(f"/v1/reviews/{review['id']}/close", json={}), 409)


def test_overdue_and_the_period_a_report_reads(
    services: Services, api: Api, world: dict[str, Any]
) -> None:
    soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat().replace("+00:00", "Z")
    late = _start(api, agents=[world["spare"]["id"]], due=soon)
    on_time = _start(api, agents=[world["bobs"]["id"]])
    for line in on_time["lines"]:
        assert _answer(api, on_time["id"], line["id"], "keep").status_code == 200
    later = datetime.now(UTC) + timedelta(days=1)
    period = services.reviews.period(datetime.now(UTC) - timedelta(days=1), later, now=later)
    assert {r.id for r in period.started} == {late["id"], on_time["id"]}
    assert [(r.id, r.on_time) for r in period.done] == [(on_time["id"], True)]
    assert [r.id for r in period.overdue] == [late["id"]]
    assert period.overdue[0].started_seq == late["started_seq"]
    with services.db.read() as s:
        assert services.reviews.lowest_referenced_seq(s) == late["started_seq"]
    api.client.post(f"/v1/reviews/{late['id']}/close", json={})
    with services.db.read() as s:
        assert services.reviews.lowest_referenced_seq(s) is None


def test_cli_json_and_tables(
    services: Services, api: Api, world: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    env = {
        "TETHER_URL": f"http://127.0.0.1:{port}",
        "TETHER_TOKEN": services.settings.admin_token_path.read_text().strip(),
        "TETHER_DATA_DIR": str(tmp_path / "cli-data"),
    }
    alice = {**env, "TETHER_TOKEN": world["alice"]["token"]}
    with served_in_thread(create_app(services), port):
        done = run_cli(
            "reviews",
            "start",
            "--owner",
            "alice",
            "--due",
            "2099-12-31",
            "--json",
            env=env,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        review = json.loads(done.stdout)
        assert review["due"] == "2099-12-31T23:59:59Z"
        assert len(review["lines"]) == 9
        table = run_cli("reviews", "show", review["id"], env=env, cwd=tmp_path)
        assert table.returncode == 0, table.stderr
        assert "reader-read" in table.stdout
        assert "credential" in table.stdout
        inbox = run_cli("reviews", "inbox", "--json", env=alice, cwd=tmp_path)
        assert inbox.returncode == 0, inbox.stderr
        line = next(
            x
            for x in json.loads(inbox.stdout)
            if x["kind"] == "credential" and x["subject"] == world["unused"]
        )
        answered = run_cli(
            "reviews",
            "answer",
            review["id"],
            line["id"],
            "reduce",
            "--note",
            "never used",
            env=alice,
            cwd=tmp_path,
        )
        assert answered.returncode == 0, answered.stderr
        assert "reduce" in answered.stdout
        confirmed = run_cli(
            "reviews", "confirm", review["id"], line["id"], "--json", env=alice, cwd=tmp_path
        )
        assert confirmed.returncode == 0, confirmed.stderr
        assert json.loads(confirmed.stdout)["outcome"] == "credential_revoked"
        listed = run_cli("reviews", "list", env=env, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert review["id"] in listed.stdout
        bad = run_cli(
            "reviews",
            "answer",
            review["id"],
            line["id"],
            "shrink",
            "--note",
            "x",
            env=alice,
            cwd=tmp_path,
        )
        assert bad.returncode != 0
        assert "Traceback" not in bad.stderr
        bad = run_cli(
            "reviews", "start", "--agent", "agt_00000000000000000000000000", env=env, cwd=tmp_path
        )
        assert bad.returncode != 0
        assert "agents" in bad.stderr
        assert "Traceback" not in bad.stderr
