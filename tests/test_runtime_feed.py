"""Every worker process learns of a change: the runtime snapshot follows the change feed.

A real 2-worker server on one database: a suspension or a new policy version made through
one worker must govern the decisions of every worker within the poll bound, and concurrent
decisions from many clients all land in one verified chain (group commit per worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.conftest import Backend
from tests.serverproc import http_client, running_server
from tether.agents.schemas import AgentCreate
from tether.container import Services
from tether.policy.runtime import AgentSection, PolicySection
from tether.runtime.models import ChangeRow
from tether.runtime.snapshot import Runtime

POLL_BOUND = 1.0  # TETHER_RUNTIME_POLL_SECONDS is 0.25 by default; NOTIFY is faster on PG


def _decide(url: str, headers: dict[str, str], agent: str) -> dict[str, Any]:
    body = {"subject": {"type": "agent", "id": agent}, "action": {"name": "tool.call"},
            "resource": {"type": "Tool", "id": "search"}}  # fmt: skip
    # A fresh connection each time, so the requests spread over both workers.
    with http_client(base_url=url, headers=headers, timeout=30) as c:
        r = c.post("/access/v1/evaluation", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


Answers = list[dict[str, Any]]


def _once_every_worker_knows(
    url: str,
    headers: dict[str, str],
    agent: str,
    knows: Callable[[Answers], bool],
    every_answer: Answers,
) -> Answers:
    """Rounds of 24 concurrent decisions until one round is all ``knows``; returns that round.

    A change must reach every worker within ``POLL_BOUND``: a round begun after the bound
    that is not all ``knows`` fails. Every answer is appended to ``every_answer`` (each is an
    event of the chain the test reads back).
    """
    deadline = time.monotonic() + POLL_BOUND
    while True:
        late = time.monotonic() > deadline
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _decide(url, headers, agent), range(24)))
        every_answer += answers
        if knows(answers):
            return answers
        assert not late, answers
        time.sleep(0.05)


@pytest.mark.slow
def test_a_change_reaches_every_worker(backend: Backend, tmp_path: Path) -> None:
    with running_server(backend, tmp_path, workers=2) as (url, _env):
        token = (tmp_path / ".tether" / "admin.token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        with http_client(base_url=url, headers=headers, timeout=30) as c:
            spec = {"name": "feed", "owner": "admin", "purpose": "feed", "risk_tier": "minimal"}
            agent = c.post("/v1/agents", json=spec)
            agent_id = agent.json()["id"]
            calls = '@id("calls") permit(principal, action == Action::"tool.call", resource);'
            pushed = c.put("/v1/policies", json={"policies": calls})
            assert pushed.json()["version"] == "v1"
        decided: Answers = []

        def v1_allows(answers: Answers) -> bool:
            return {(d["decision"], d["context"]["policy_version"]) for d in answers} == {
                (True, "v1")
            }

        before = _once_every_worker_knows(url, headers, agent_id, v1_allows, decided)
        assert {(d["decision"], d["context"]["policy_version"]) for d in before} == {(True, "v1")}

        with http_client(base_url=url, headers=headers, timeout=30) as c:
            c.post(
                f"/v1/agents/{agent_id}/suspend", json={"reason": "feed test"}
            ).raise_for_status()

        def suspended(answers: Answers) -> bool:
            return all(d["decision"] is False for d in answers)

        after = _once_every_worker_knows(url, headers, agent_id, suspended, decided)
        assert all(d["decision"] is False for d in after)
        assert {tuple(d["context"]["reasons"]) for d in after} == {("tether.agent-not-active",)}

        with http_client(base_url=url, headers=headers, timeout=30) as c:
            c.post(f"/v1/agents/{agent_id}/resume", json={}).raise_for_status()
            c.put(
                "/v1/policies",
                json={"policies": '@id("nothing") forbid(principal, action, resource);'},
            )

        def resumed_under_v2(answers: Answers) -> bool:
            return {(d["decision"], d["context"]["policy_version"]) for d in answers} == {
                (False, "v2")
            }

        later = _once_every_worker_knows(url, headers, agent_id, resumed_under_v2, decided)
        assert {(d["decision"], d["context"]["policy_version"]) for d in later} == {(False, "v2")}
        assert {tuple(d["context"]["reasons"]) for d in later} == {("nothing",)}

        # Every answer (72 or more), each a durable event of one chain written by two group
        # committers.
        with http_client(base_url=url, headers=headers, timeout=60) as c:
            verified = c.get("/v1/audit/verify").json()
            assert verified["ok"] is True, verified
            ids = {d["context"]["event_id"] for d in decided}
            seen: set[str] = set()
            cursor = None
            while True:
                page = c.get("/v1/audit/events", params={"type": "decision", "limit": 500,
                                                         "cursor": cursor}).json()  # fmt: skip
                seen |= {e["id"] for e in page["items"]}
                cursor = page["next_cursor"]
                if not cursor:
                    break
            assert seen == ids


def test_old_changes_are_purged_and_a_worker_behind_them_reloads(
    services: Services, admin_token: str
) -> None:
    admin = services.users.authenticate(admin_token)
    made = [services.agents.create(admin, AgentCreate.model_validate(
        {"name": f"p{i}", "owner": "admin", "purpose": "purge", "risk_tier": "minimal"}
    )).id for i in range(3)]  # fmt: skip
    services.runtime.sync()
    behind = Runtime(services.db, services.clock)
    behind_agents = AgentSection()
    behind.register(behind_agents, PolicySection(services.policies.compiled))
    services.db.after_change.remove(behind.changed)  # a worker in another process: no hook
    behind.load()
    services.agents.suspend(admin, made[0], reason="while the other worker was away")
    services.runtime.sync()
    with services.db.write() as s:  # an hour passes for every row
        s.execute(update(ChangeRow).values(time=0))
    services.runtime.purge()
    with services.db.read() as s:
        left = s.scalars(select(ChangeRow.seq)).all()
    assert left == [services.runtime.last_seq]  # only the newest row stays
    assert behind_agents.views[made[0]].status == "active"  # it missed the suspension...
    behind.last_seq = 1  # ...and the rows that told of it are gone
    behind.sync()
    assert behind_agents.views[made[0]].status == "suspended"  # it reloaded everything
    assert behind.last_seq == services.runtime.last_seq
