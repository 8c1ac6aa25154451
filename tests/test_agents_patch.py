"""``PATCH /v1/agents/{id}`` is a JSON Merge Patch (RFC 7396): attributes and the fingerprint
merge member by member (null removes one), lists are replaced whole (``[]`` empties them); and
``tether agents update`` follows it (``--attr``, ``--unset-attr``, ``--clear-roles``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BACKENDS, Api, assert_error
from tests.serverproc import module_server, run_cli
from tests.test_agents_lifecycle import expected_digest

FP = {"model": "gpt-5", "model_version": "2026-10", "prompt_sha256": "a" * 64}


# -- attributes --------------------------------------------------------------------------------


def test_an_attribute_patch_changes_one_key_and_keeps_the_others(api: Api) -> None:
    agent = api.agent(attributes={"region": "eu", "tier": 1})
    before = api.events()
    patched = api.ok(agent["id"], "patch", attributes={"c": 2, "tier": 3})
    assert patched["attributes"] == {"region": "eu", "tier": 3, "c": 2}
    assert api.get(agent["id"])["attributes"] == {"region": "eu", "tier": 3, "c": 2}
    [event] = api.new_events(before)
    assert event["type"] == "agent.updated"
    assert event["details"]["changes"] == {
        "attributes": {
            "from": {"region": "eu", "tier": 1},
            "to": {"c": 2, "region": "eu", "tier": 3},
        }
    }


def test_an_attribute_set_to_null_is_removed(api: Api) -> None:
    agent = api.agent(attributes={"region": "eu", "tier": 1})
    patched = api.ok(agent["id"], "patch", attributes={"region": None})
    assert patched["attributes"] == {"tier": 1}


def test_removing_an_absent_attribute_changes_nothing(api: Api) -> None:
    agent = api.agent(attributes={"region": "eu"})
    before = api.snapshot()
    patched = api.ok(agent["id"], "patch", attributes={"nothere": None})
    assert patched["attributes"] == {"region": "eu"}
    assert api.snapshot() == before  # no ledger event, no change


def test_attributes_null_is_refused_with_a_hint(api: Api) -> None:
    agent = api.agent(attributes={"region": "eu"})
    before = api.snapshot()
    error = assert_error(api.act(agent["id"], "patch", attributes=None), 422, "validation_error")
    assert error["details"]["field"] == "attributes"
    assert "set its key to null" in error["message"]
    assert api.snapshot() == before


def test_a_merge_that_leaves_more_than_64_attributes_is_refused(api: Api) -> None:
    agent = api.agent(attributes={f"k{i}": i for i in range(60)})
    before = api.snapshot()
    response = api.act(agent["id"], "patch", attributes={f"n{i}": i for i in range(5)})
    error = assert_error(response, 422, "validation_error")
    assert error["details"]["field"] == "attributes"
    assert "at most 64" in error["message"]
    assert api.snapshot() == before
    # Removing as many as it adds fits.
    swap = {**{f"k{i}": None for i in range(5)}, **{f"n{i}": i for i in range(5)}}
    assert len(api.ok(agent["id"], "patch", attributes=swap)["attributes"]) == 60


def test_the_merge_patch_media_type_is_accepted(api: Api) -> None:
    agent = api.agent(attributes={"region": "eu"})
    response = api.client.patch(
        f"/v1/agents/{agent['id']}",
        content=json.dumps({"attributes": {"c": 2}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["attributes"] == {"region": "eu", "c": 2}


# -- lists -------------------------------------------------------------------------------------


def test_roles_are_replaced_whole_and_an_empty_list_clears_them(api: Api) -> None:
    agent = api.agent(roles=["support", "billing"])
    assert api.ok(agent["id"], "patch", roles=["ops"])["roles"] == ["ops"]
    cleared = api.ok(agent["id"], "patch", roles=[])
    assert cleared["roles"] == []
    assert api.get(agent["id"])["roles"] == []
    assert api.agents(role="ops") == []


# -- fingerprint -------------------------------------------------------------------------------


def test_changing_the_model_keeps_the_model_version(api: Api) -> None:
    agent = api.agent(fingerprint=FP)
    patched = api.ok(agent["id"], "patch", fingerprint={"model": "gpt-5.1"})
    expected = {**FP, "model": "gpt-5.1", "tools_sha256": None}
    assert patched["fingerprint"] == {**expected, "digest": expected_digest(expected)}
    assert patched["status"] == "active"  # a minimal-risk agent is not suspended


def test_a_fingerprint_part_set_to_null_is_removed(api: Api) -> None:
    agent = api.agent(fingerprint=FP)
    patched = api.ok(agent["id"], "patch", fingerprint={"model_version": None})
    expected = {**FP, "model_version": None, "tools_sha256": None}
    assert patched["fingerprint"] == {**expected, "digest": expected_digest(expected)}


def test_fingerprint_null_removes_it(api: Api) -> None:
    agent = api.agent(fingerprint=FP)
    assert api.ok(agent["id"], "patch", fingerprint=None)["fingerprint"] is None


def test_a_first_fingerprint_needs_a_model(api: Api) -> None:
    agent = api.agent()
    before = api.snapshot()
    response = api.act(agent["id"], "patch", fingerprint={"model_version": "1"})
    error = assert_error(response, 422, "validation_error")
    assert error["details"]["field"] == "fingerprint.model"
    assert api.snapshot() == before
    made = api.ok(agent["id"], "patch", fingerprint={"model": "m"})
    assert made["fingerprint"]["model"] == "m"


def test_the_model_cannot_be_removed(api: Api) -> None:
    agent = api.agent(fingerprint=FP)
    error = assert_error(
        api.act(agent["id"], "patch", fingerprint={"model": None}), 422, "validation_error"
    )
    assert error["details"]["field"] == "fingerprint.model"
    assert api.get(agent["id"])["fingerprint"]["model"] == "gpt-5"


def test_a_model_change_suspends_a_high_risk_agent_and_keeps_its_version(api: Api) -> None:
    agent = api.agent(risk_tier="high", fingerprint=FP)
    before = api.events()
    patched = api.ok(agent["id"], "patch", fingerprint={"model": "gpt-5.1"})
    assert patched["status"] == "suspended"
    assert patched["fingerprint"]["model_version"] == "2026-10"
    [event] = api.new_events(before)
    assert event["details"]["changes"]["status"] == {"from": "active", "to": "suspended"}


def test_the_same_parts_again_are_no_change(api: Api) -> None:
    agent = api.agent(risk_tier="high", fingerprint=FP)
    before = api.snapshot()
    patched = api.ok(agent["id"], "patch", fingerprint={"model_version": "2026-10"})
    assert patched["status"] == "active"
    assert api.snapshot() == before


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def cli(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One server per backend for the CLI tests: each makes and changes its own agent."""
    with module_server(request, tmp_path_factory, "patch-cli") as server:
        tmp, served = server.workdir, server.env
        env = {**served, "PATH": f"{Path(sys.executable).parent}:{served.get('PATH', '')}"}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return run_cli(*args, env=env, cwd=tmp)

        yield run


def _ok(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
def test_cli_update_follows_merge_patch(cli: Any) -> None:
    agent = _ok(
        cli(
            "agents", "create", "--name", "bot", "--owner", "admin", "--purpose", "p",
            "--risk-tier", "high", "--role", "support", "--role", "billing",
            "--attr", "region=eu", "--attr", "tier=1",
            "--model", "gpt-5", "--model-version", "2026-10", "--json",
        )
    )  # fmt: skip
    aid = agent["id"]

    # --attr adds or changes one attribute; the others stay.
    patched = _ok(cli("agents", "update", aid, "--attr", "c=2", "--json"))
    assert patched["attributes"] == {"region": "eu", "tier": 1, "c": 2}
    # --unset-attr removes one.
    patched = _ok(cli("agents", "update", aid, "--unset-attr", "region", "--json"))
    assert patched["attributes"] == {"tier": 1, "c": 2}
    # --clear-roles empties the roles.
    patched = _ok(cli("agents", "update", aid, "--clear-roles", "--json"))
    assert patched["roles"] == []
    assert patched["status"] == "active"

    # --model keeps the model version; the suspension it causes is said (on stderr: --json
    # output stays one JSON document).
    result = cli("agents", "update", aid, "--model", "gpt-5.1", "--json")
    patched = _ok(result)
    assert patched["fingerprint"]["model"] == "gpt-5.1"
    assert patched["fingerprint"]["model_version"] == "2026-10"
    assert patched["status"] == "suspended"
    assert "now suspended" in result.stderr
    assert f"tether agents resume {aid}" in result.stderr

    # The table output says it too; a change that does not suspend says nothing.
    _ok(cli("agents", "resume", aid, "--json"))
    shown = cli("agents", "update", aid, "--model-version", "2026-12")
    assert shown.returncode == 0, shown.stderr
    assert "now suspended" in shown.stderr
    quiet = cli("agents", "update", aid, "--attr", "d=4")
    assert quiet.returncode == 0, quiet.stderr
    assert "suspended" not in quiet.stderr


@pytest.mark.slow
def test_cli_update_refuses_contradictions(cli: Any) -> None:
    agent = _ok(cli("agents", "create", "--name", "b", "--owner", "admin", "--purpose", "p",
                    "--json"))  # fmt: skip
    for args, needle in [
        (("--role", "x", "--clear-roles"), "--clear-roles"),
        (("--attr", "a=1", "--unset-attr", "a"), "--unset-attr a"),
        (("--attr", "novalue"), "key=value"),
    ]:
        result = cli("agents", "update", agent["id"], *args)
        assert result.returncode != 0, args
        assert needle in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    result = cli("agents", "update", agent["id"], "--model-version", "1")
    assert result.returncode != 0
    assert "fingerprint.model" in result.stderr
