"""The OpenAPI document says what the server refuses wherever a JSON Schema can (issue 10,
item 6): cursors, ids, policy documents, AuthZEN's reserved names. Read from ``app.openapi()``,
so generated clients and fuzzers see the same contract the server applies."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import Api, assert_error
from tether.api.routes import agents, decisions, oauth
from tether.pagination import encode_cursor
from tether.policy.service import MAX_DOCUMENT, MAX_SCHEMA

LISTS = [
    "/v1/agents",
    "/v1/users",
    "/v1/users/{user}/tokens",
    "/v1/agents/{agent_id}/credentials",
    "/v1/keys",
    "/v1/approvals",
]
SEQ_LISTS = ["/v1/audit/events", "/v1/policies/versions"]  # cursors that encode a number
JUNK_CURSORS = ["!!not-ours!!", "a", "AA", "zzzz", "YQ==", encode_cursor("\x01"), "a" * 250]


@pytest.fixture(scope="module")
def built() -> dict[str, dict[str, Any]]:
    """The document, built once per module (~0.7 s each time): it depends on the routes,
    which every app shares, not on the app's backend."""
    return {}


@pytest.fixture
def doc(client: TestClient, built: dict[str, dict[str, Any]]) -> dict[str, Any]:
    if "doc" not in built:
        built["doc"] = dict(client.app.openapi())  # type: ignore[attr-defined]
    return copy.deepcopy(built["doc"])


def _parameter(doc: dict[str, Any], path: str, name: str, method: str = "get") -> dict[str, Any]:
    (param,) = [p for p in doc["paths"][path][method]["parameters"] if p["name"] == name]
    schema = param["schema"]
    strings = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    return dict(strings[0])


def _body(doc: dict[str, Any], path: str, method: str = "post") -> dict[str, Any]:
    ref = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return dict(doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]])


@pytest.mark.parametrize("path", [*LISTS, *SEQ_LISTS])
def test_a_cursor_has_the_pattern_the_server_reads(
    api: Api, doc: dict[str, Any], path: str
) -> None:
    cursor = _parameter(doc, path, "cursor")
    pattern = re.compile(cursor["pattern"])
    assert cursor["maxLength"] <= 267
    # every cursor the server issues fits; the junk it refuses does not
    real = encode_cursor("1234") if path in SEQ_LISTS else encode_cursor("agt_x:1")
    assert pattern.fullmatch(real)
    assert pattern.fullmatch("")  # the first page
    for junk in JUNK_CURSORS:
        assert not pattern.fullmatch(junk), junk
    if "{" not in path:
        for junk in JUNK_CURSORS:
            assert_error(api.client.get(path, params={"cursor": junk}), 400, "invalid_cursor")
    if path in SEQ_LISTS:
        assert not pattern.fullmatch(encode_cursor("not-a-seq"))
        assert not pattern.fullmatch(encode_cursor("v1"))
        assert not pattern.fullmatch(encode_cursor("9" * 19))  # beyond a 64-bit seq


def test_issued_cursors_match_and_any_admitted_cursor_is_read(
    api: Api, doc: dict[str, Any]
) -> None:
    for _ in range(3):
        api.agent()
    for path in ("/v1/agents", "/v1/audit/events", "/v1/keys", "/v1/users"):
        if path == "/v1/users":
            api.user("pager")
        page = api.client.get(path, params={"limit": 1}).json()
        issued = page["next_cursor"]
        assert issued, path
        assert re.fullmatch(_parameter(doc, path, "cursor")["pattern"], issued), path
    # a cursor the document admits that this server never issued is still a place to start
    for path in ("/v1/agents", "/v1/keys", "/v1/users", "/v1/approvals"):
        response = api.client.get(path, params={"cursor": encode_cursor("~ not issued ~")})
        assert response.status_code == 200, (path, response.text)
    for path in SEQ_LISTS:  # any number is a place to start, up to 18 digits
        response = api.client.get(path, params={"cursor": encode_cursor("9" * 18)})
        assert response.status_code == 200, (path, response.text)


def test_limits_and_ids_are_stated(doc: dict[str, Any]) -> None:
    for path in LISTS:
        limit = _parameter(doc, path, "limit")
        assert (limit["minimum"], limit["maximum"]) == (1, 500)
    agent_id = _parameter(doc, "/v1/agents/{agent_id}", "agent_id")
    assert agent_id["pattern"] == "^agt_[0-9A-HJKMNP-TV-Z]{26}$"
    assert _parameter(doc, "/v1/approvals/{approval_id}", "approval_id")["pattern"].startswith(
        "^apr_"
    )
    credential = "/v1/agents/{agent_id}/credentials/{credential_id}"
    assert _parameter(doc, credential, "credential_id", "delete")["pattern"].startswith("^crd_")
    token = "/v1/users/{user}/tokens/{token_id}"
    assert _parameter(doc, token, "token_id", "delete")["pattern"].startswith("^tok_")
    user = re.compile(_parameter(doc, "/v1/users/{user}", "user")["pattern"])
    assert user.fullmatch("admin")
    assert user.fullmatch("usr_01JZZZZZZZZZZZZZZZZZZZZZZZ")
    assert not user.fullmatch("Admin")
    assert not user.fullmatch("no one")
    agent = _body(doc, "/v1/agents")
    owner = re.compile(agent["properties"]["owner"]["pattern"])
    assert owner.fullmatch("admin")
    assert not owner.fullmatch("no one")
    assert agent["properties"]["expires_at"]["anyOf"][0]["format"] == "date-time"
    parent = agent["properties"]["parent"]["anyOf"][0]
    assert parent["pattern"] == "^agt_[0-9A-HJKMNP-TV-Z]{26}$"
    subject = _body(doc, "/v1/users/{user}/subject-tokens")
    assert subject["properties"]["agent"]["pattern"] == "^agt_[0-9A-HJKMNP-TV-Z]{26}$"


def test_policy_documents_have_their_maximum_length(doc: dict[str, Any]) -> None:
    for path, method in (("/v1/policies", "put"), ("/v1/policies/simulate", "post")):
        body = _body(doc, path, method)
        assert body["properties"]["policies"]["maxLength"] == MAX_DOCUMENT
        assert body["properties"]["schema"]["anyOf"][0]["maxLength"] == MAX_SCHEMA


def test_authzen_reserved_names_are_stated(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    context = schemas["Evaluation"]["properties"]["context"]
    reserved = ["chain", "delegated", "on_behalf_of", "session"]  # session: monitoring's
    assert context["propertyNames"]["not"] == {"enum": reserved}
    kind = schemas["Resource"]["properties"]["type"]
    assert {"enum": ["Role", "User"]} in kind["not"]["anyOf"]
    batch = schemas["Evaluations"]
    assert len(batch["allOf"]) == 3  # subject, action, resource: a default or in every item


def test_every_app_serves_the_routes_built_once_at_import(client: TestClient) -> None:
    """The routers' own routes sit on the app, not a per-app copy of each (FastAPI's
    ``include_router`` rebuilds every route's request handling for every app on its first
    request: 20-250 ms a router, tether.api.app._add_routes); nothing else is lost: every
    route of every router is there, once."""
    served = list(client.app.router.routes)  # type: ignore[attr-defined]
    for module in (decisions, oauth, agents):
        for route in module.router.routes:
            assert sum(r is route for r in served) == 1, route
