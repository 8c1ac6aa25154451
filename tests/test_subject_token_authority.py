"""Who may hand an agent a subject token (issue 10, item 7), on SQLite and PostgreSQL.

Decided: a supervisor delegates only to an agent they own or supervise; an admin to any
active agent. Delegating is directing an agent's work, which is its owner's and supervisors'
responsibility — a supervisor could otherwise have any agent in the deployment act in their
name. An agent that does not exist gets the same 403 as someone else's, so a supervisor
cannot probe for agents they may not see.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api, assert_error, bearer

UNKNOWN = "agt_" + "0" * 26  # well formed, never issued


@pytest.fixture
def people(api: Api) -> dict[str, Any]:
    sam = api.user("sam", "supervisor")
    olga = api.user("olga", "supervisor")
    return {
        "sam": sam,
        "owned": api.agent(name="sams-own", owner="sam"),
        "supervised": api.agent(name="olgas-supervised-by-sam", owner="olga", supervisors=["sam"]),
        "foreign": api.agent(name="olgas-only", owner=olga["id"]),
    }


def _mint(api: Api, user: dict[str, Any] | None, agent: str) -> Any:
    who = user["id"] if user else "admin"
    headers = bearer(user["token"]) if user else None
    return api.client.post(f"/v1/users/{who}/subject-tokens", json={"agent": agent},
                           headers=headers)  # fmt: skip


@pytest.mark.parametrize("agent", ["owned", "supervised"])
def test_a_supervisor_delegates_to_agents_they_answer_for(
    api: Api, people: dict[str, Any], agent: str
) -> None:
    minted = _mint(api, people["sam"], people[agent]["id"])
    assert minted.status_code == 201, minted.text
    assert minted.json()["may_act"] == people[agent]["id"]


def test_a_supervisor_cannot_delegate_to_someone_elses_agent(
    api: Api, people: dict[str, Any]
) -> None:
    before = api.events()
    refused = _mint(api, people["sam"], people["foreign"]["id"])
    error = assert_error(refused, 403, "forbidden")
    assert error["details"]["field"] == "agent"
    assert api.new_events(before) == []  # nothing minted, nothing recorded as issued


def test_an_unknown_agent_looks_like_someone_elses_to_a_supervisor(
    api: Api, people: dict[str, Any]
) -> None:
    assert_error(_mint(api, people["sam"], UNKNOWN), 403, "forbidden")


def test_an_admin_delegates_to_any_active_agent(api: Api, people: dict[str, Any]) -> None:
    minted = _mint(api, None, people["foreign"]["id"])
    assert minted.status_code == 201, minted.text
    assert_error(_mint(api, None, UNKNOWN), 422, "validation_error")
