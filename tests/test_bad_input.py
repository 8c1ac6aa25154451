"""Bad input (API.md "Errors"): the right 4xx in the error shape with the field named, nothing
changed (same ledger, same agents), and never a 500."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import AGENT_DEFAULTS, Api, assert_error
from tether.container import Services
from tether.pagination import encode_cursor

UNKNOWN_AGENT = "agt_01JZZZZZZZZZZZZZZZZZZZZZZZ"
JSON = {"Content-Type": "application/json"}


@dataclass
class Case:
    method: str
    path: str  # ``{agent}`` is replaced by a real agent's id
    status: int
    code: str
    field: str | None = None
    kwargs: dict[str, Any] = dataclass_field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.kwargs}"[:200]


def body(method: str, path: str, payload: Any, status: int, code: str, field: str | None) -> Case:
    return Case(method, path, status, code, field, {"json": payload})


def raw(method: str, path: str, content: bytes | str, status: int, code: str) -> Case:
    return Case(method, path, status, code, None, {"content": content, "headers": JSON})


def create(status: int, code: str, field: str | None, /, **fields: Any) -> Case:
    return body("POST", "/v1/agents", {**AGENT_DEFAULTS, **fields}, status, code, field)


def _names(named: str | None, field: str) -> bool:
    """Whether the error's ``details.field`` names ``field``: exactly, or a part of it
    (``roles.0``, ``fingerprint.model``)."""
    if named is None:
        return False
    return named == field or named.startswith(field + ".")


def _run(api: Api, cases: list[Case]) -> None:
    """Send every case; each must fail as described, and together they must change nothing."""
    agent = api.agent(name="target")
    before = api.snapshot()
    for case in cases:
        response = api.client.request(
            case.method, case.path.format(agent=agent["id"]), **case.kwargs
        )
        assert response.status_code == case.status, (str(case), response.text)
        error = assert_error(response, case.status, case.code)
        if case.field is not None:
            assert _names(error["details"].get("field"), case.field), (str(case), error)
    assert api.snapshot() == before
    assert api.get(agent["id"]) == agent


# -- malformed JSON ----------------------------------------------------------------------------


def test_malformed_json_is_400(api: Api) -> None:
    _run(
        api,
        [
            raw("POST", "/v1/agents", '{"name": "a",', 400, "malformed_json"),
            raw("POST", "/v1/agents", "{name: 'a'}", 400, "malformed_json"),
            raw("POST", "/v1/agents", "", 422, "validation_error"),
            raw("PATCH", "/v1/agents/{agent}", '{"name": }', 400, "malformed_json"),
            raw("POST", "/v1/agents/{agent}/suspend", "{'reason': 'x'}", 400, "malformed_json"),
            raw("POST", "/v1/agents/{agent}/resume", "{", 400, "malformed_json"),
            raw("POST", "/v1/agents/{agent}/kill", '{"reason": "x"', 400, "malformed_json"),
            raw("POST", "/v1/agents/{agent}/clone", "[", 400, "malformed_json"),
            raw("POST", "/v1/users", "not json", 400, "malformed_json"),
            raw("POST", "/v1/users/admin/tokens", "{,}", 400, "malformed_json"),
        ],
    )


def test_bodies_that_are_not_objects_are_422(api: Api) -> None:
    _run(
        api,
        [
            body("POST", "/v1/agents", [1, 2], 422, "validation_error", "body"),
            body("POST", "/v1/agents", "agent", 422, "validation_error", "body"),
            body("PATCH", "/v1/agents/{agent}", None, 422, "validation_error", "body"),
            body("POST", "/v1/agents/{agent}/kill", 5, 422, "validation_error", "body"),
            Case("POST", "/v1/agents", 422, "validation_error", "body"),  # no body at all
            Case(
                "POST",
                "/v1/agents",
                422,
                "validation_error",
                "body",
                {"content": b'{"name": "x"}', "headers": {"Content-Type": "text/plain"}},
            ),
        ],
    )


@pytest.mark.parametrize(
    "content",
    [b'{"name": "\xff\xfe"}', ("[" * 100_000 + "]" * 100_000).encode()],
    ids=["invalid utf-8", "nested too deep"],
)
def test_unparseable_bodies_are_400_not_500(api: Api, content: bytes) -> None:
    api.agent(name="target")
    before = api.snapshot()
    response = api.client.post("/v1/agents", content=content, headers=JSON)
    assert_error(response, 400)
    assert api.snapshot() == before


def test_unparseable_body_code_is_malformed_json(api: Api) -> None:
    response = api.client.post("/v1/agents", content=b'{"name": "\xff"}', headers=JSON)
    assert_error(response, 400, "malformed_json")


# -- wrong types, unknown fields, missing fields -----------------------------------------------


def test_wrong_types_are_422_naming_the_field(api: Api) -> None:
    fp = {"model": "m"}
    _run(
        api,
        [
            create(422, "validation_error", "name", name=123),
            create(422, "validation_error", "roles", roles="x"),
            create(422, "validation_error", "risk_tier", risk_tier=5),
            create(422, "validation_error", "risk_tier", risk_tier="extreme"),
            create(422, "validation_error", "owner", owner=["admin"]),
            create(422, "validation_error", "purpose", purpose=None),
            create(422, "validation_error", "attributes", attributes=["a"]),
            create(422, "validation_error", "supervisors", supervisors="admin"),
            create(422, "validation_error", "parent", parent=7),
            create(422, "validation_error", "expires_at", expires_at=1_900_000_000),
            create(422, "validation_error", "fingerprint", fingerprint="gpt"),
            create(
                422,
                "validation_error",
                "fingerprint.prompt_sha256",
                fingerprint={**fp, "prompt_sha256": "not hex"},
            ),
            create(422, "validation_error", "fingerprint.model", fingerprint={"model": 1}),
            body("PATCH", "/v1/agents/{agent}", {"name": 123}, 422, "validation_error", "name"),
            body("PATCH", "/v1/agents/{agent}", {"roles": "x"}, 422, "validation_error", "roles"),
            body(
                "PATCH",
                "/v1/agents/{agent}",
                {"risk_tier": 5},
                422,
                "validation_error",
                "risk_tier",
            ),
            body(
                "POST",
                "/v1/agents/{agent}/suspend",
                {"reason": 5},
                422,
                "validation_error",
                "reason",
            ),
            body(
                "POST",
                "/v1/agents/{agent}/kill",
                {"reason": "r", "cascade": "yes"},
                422,
                "validation_error",
                "cascade",
            ),
            body(
                "POST", "/v1/agents/{agent}/clone", {"name": ["x"]}, 422, "validation_error", "name"
            ),
            body(
                "POST",
                "/v1/users",
                {"username": 5, "role": "admin"},
                422,
                "validation_error",
                "username",
            ),
            body(
                "POST",
                "/v1/users/admin/tokens",
                {"expires_in": "soon"},
                422,
                "validation_error",
                "expires_in",
            ),
        ],
    )


def test_unknown_fields_are_422_naming_the_field(api: Api) -> None:
    _run(
        api,
        [
            create(422, "validation_error", "colour", colour="red"),
            create(422, "validation_error", "status", status="active"),
            create(422, "validation_error", "id", id="agt_mine"),
            create(
                422,
                "validation_error",
                "fingerprint.weights",
                fingerprint={"model": "m", "weights": "x"},
            ),
            body(
                "PATCH",
                "/v1/agents/{agent}",
                {"status": "active"},
                422,
                "validation_error",
                "status",
            ),
            body(
                "PATCH",
                "/v1/agents/{agent}",
                {"spiffe_id": "spiffe://evil/agent/x"},
                422,
                "validation_error",
                "spiffe_id",
            ),
            body(
                "POST",
                "/v1/agents/{agent}/suspend",
                {"reason": "r", "force": True},
                422,
                "validation_error",
                "force",
            ),
            body(
                "POST",
                "/v1/agents/{agent}/clone",
                {"name": "c", "credentials": True},
                422,
                "validation_error",
                "credentials",
            ),
            body(
                "POST",
                "/v1/users",
                {"username": "eve", "role": "admin", "password": "x"},
                422,
                "validation_error",
                "password",
            ),
        ],
    )


def test_missing_and_invalid_values_are_422(api: Api) -> None:
    required = {k: v for k, v in AGENT_DEFAULTS.items() if k != "name"}
    _run(
        api,
        [
            body("POST", "/v1/agents", required, 422, "validation_error", "name"),
            create(422, "validation_error", "name", name=""),
            create(422, "validation_error", "name", name="  padded  "),
            create(422, "validation_error", "name", name="x" * 201),
            create(422, "validation_error", "roles", roles=["has space"]),
            create(422, "validation_error", "attributes", attributes={"1bad": "x"}),
            create(422, "validation_error", "attributes", attributes={"n": 2**70}),
            create(422, "validation_error", "attributes", attributes={"f": 1.5}),
            create(422, "risk_tier_prohibited", "risk_tier", risk_tier="prohibited"),
            create(422, "validation_error", "owner", owner="nobody"),
            create(422, "validation_error", "supervisors", supervisors=["nobody"]),
            create(422, "validation_error", "parent", parent=UNKNOWN_AGENT),
            create(422, "validation_error", "expires_at", expires_at="2000-01-01T00:00:00Z"),
            create(422, "validation_error", "expires_at", expires_at="2099-01-01T00:00:00"),
            create(422, "validation_error", "expires_at", expires_at="tomorrow"),
            create(422, "validation_error", "recertify_by", recertify_by="2099-01-01"),
            body("POST", "/v1/agents/{agent}/suspend", {}, 422, "validation_error", "reason"),
            body(
                "POST",
                "/v1/agents/{agent}/suspend",
                {"reason": ""},
                422,
                "validation_error",
                "reason",
            ),
            body("POST", "/v1/agents/{agent}/kill", {}, 422, "validation_error", "reason"),
            body("POST", "/v1/agents/{agent}/clone", {}, 422, "validation_error", "name"),
            body("PATCH", "/v1/agents/{agent}", {"name": None}, 422, "validation_error", "name"),
            body("PATCH", "/v1/agents/{agent}", {"roles": None}, 422, "validation_error", "roles"),
            body(
                "PATCH",
                "/v1/agents/{agent}",
                {"risk_tier": "prohibited"},
                422,
                "risk_tier_prohibited",
                "risk_tier",
            ),
            body(
                "PATCH", "/v1/agents/{agent}", {"owner": "nobody"}, 422, "validation_error", "owner"
            ),
            body(
                "PATCH",
                "/v1/agents/{agent}",
                {"expires_at": "1999-01-01T00:00:00Z"},
                422,
                "validation_error",
                "expires_at",
            ),
        ],
    )


def test_nul_characters_are_refused_not_a_database_error(api: Api) -> None:
    """PostgreSQL text cannot hold NUL; it must be a 4xx on every backend, never a 500."""
    _run(
        api,
        [
            create(422, "validation_error", "name", name="a\x00b"),
            create(422, "validation_error", "purpose", purpose="a\x00"),
            create(422, "validation_error", "owner", owner="ad\x00min"),
            create(422, "validation_error", "parent", parent="agt_\x00"),
            create(422, "validation_error", "supervisors", supervisors=["\x00"]),
            create(422, "validation_error", "attributes", attributes={"k": "\x00"}),
            body(
                "POST",
                "/v1/agents/{agent}/suspend",
                {"reason": "\x00"},
                422,
                "validation_error",
                "reason",
            ),
            body(
                "PATCH",
                "/v1/agents/{agent}",
                {"purpose": "\x00"},
                422,
                "validation_error",
                "purpose",
            ),
            body(
                "POST",
                "/v1/users",
                {"username": "eve", "role": "auditor", "email": "e\x00@x.org"},
                422,
                "validation_error",
                "email",
            ),
            body(
                "POST", "/v1/users/admin/tokens", {"name": "\x00"}, 422, "validation_error", "name"
            ),
            Case("GET", "/v1/agents/agt_%00", 404, "agent_not_found"),
            Case(
                "POST",
                "/v1/agents/agt_%00/kill",
                404,
                "agent_not_found",
                None,
                {"json": {"reason": "r"}},
            ),
            Case("GET", "/v1/users/%00", 404, "user_not_found"),
            Case("DELETE", "/v1/users/admin/tokens/tok_%00", 404, "token_not_found"),
            # PostgreSQL raised on these (a 500) until the approvals store guarded them
            Case("GET", "/v1/approvals/apr_%00", 404, "approval_not_found"),
            Case(
                "POST",
                "/v1/approvals/apr_%00/approve",
                404,
                "approval_not_found",
                None,
                {"json": {"note": "n"}},
            ),
        ],
    )


def test_nul_characters_in_filters_match_nothing(api: Api) -> None:
    api.agent(roles=["ops"])
    for path, params in [
        ("/v1/agents", {"owner": "ad\x00min"}),
        ("/v1/agents", {"role": "ops\x00"}),
        ("/v1/audit/events", {"agent": "agt_\x00"}),
        ("/v1/audit/events", {"type": "agent.created\x00"}),
        ("/v1/approvals", {"agent": "agt_\x00"}),
    ]:
        response = api.client.get(path, params=params)
        assert response.status_code == 200, (path, params, response.text)
        assert response.json() == {"items": [], "next_cursor": None}


# -- size ----------------------------------------------------------------------------------------


def test_oversize_body_is_413(api: Api, services: Services) -> None:
    big = "x" * (services.settings.max_body_bytes + 1)
    _run(
        api,
        [
            create(413, "payload_too_large", None, purpose=big),
            body("PATCH", "/v1/agents/{agent}", {"purpose": big}, 413, "payload_too_large", None),
            body(
                "POST", "/v1/agents/{agent}/kill", {"reason": big}, 413, "payload_too_large", None
            ),
            body(
                "POST",
                "/v1/users",
                {"username": big, "role": "admin"},
                413,
                "payload_too_large",
                None,
            ),
        ],
    )


def test_oversize_chunked_body_is_413(api: Api, services: Services) -> None:
    chunk = b"x" * 65_536
    count = services.settings.max_body_bytes // len(chunk) + 2
    response = api.client.post("/v1/agents", content=iter([chunk] * count), headers=JSON)
    assert_error(response, 413, "payload_too_large")


def test_oversize_chunked_body_is_refused_not_500(api: Api, services: Services) -> None:
    chunk = b"x" * 65_536
    count = services.settings.max_body_bytes // len(chunk) + 2
    before = api.snapshot()
    response = api.client.post("/v1/agents", content=iter([chunk] * count), headers=JSON)
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)
    assert api.snapshot() == before


# -- ids, cursors, limits, filters ---------------------------------------------------------------


def test_unknown_agent_is_404(api: Api) -> None:
    path = f"/v1/agents/{UNKNOWN_AGENT}"
    _run(
        api,
        [
            Case("GET", path, 404, "agent_not_found"),
            body("PATCH", path, {"name": "x"}, 404, "agent_not_found", None),
            body("POST", path + "/suspend", {"reason": "r"}, 404, "agent_not_found", None),
            body("POST", path + "/resume", {}, 404, "agent_not_found", None),
            body("POST", path + "/retire", {"reason": "r"}, 404, "agent_not_found", None),
            body("POST", path + "/kill", {"reason": "r"}, 404, "agent_not_found", None),
            body("POST", path + "/clone", {"name": "c"}, 404, "agent_not_found", None),
            Case("GET", "/v1/agents/not-even-an-id", 404, "agent_not_found"),
            Case("GET", "/v1/agents/" + "a" * 41, 422, "validation_error", "agent_id"),
        ],
    )


@pytest.mark.parametrize("path", ["/v1/agents", "/v1/audit/events", "/v1/users"])
def test_bad_cursor_is_400(api: Api, path: str) -> None:
    cursors = ["!!!", "%%%", "zzzz", encode_cursor("\x01\x02"), "a" * 250]
    if path == "/v1/audit/events":
        cursors.append(encode_cursor("not-a-seq"))
    _run(
        api,
        [
            Case("GET", path, 400, "invalid_cursor", "cursor", {"params": {"cursor": c}})
            for c in cursors
        ],
    )


@pytest.mark.parametrize("path", ["/v1/agents", "/v1/audit/events", "/v1/users"])
def test_bad_limit_is_422(api: Api, path: str) -> None:
    _run(
        api,
        [
            Case("GET", path, 422, "validation_error", "limit", {"params": {"limit": value}})
            for value in (0, -1, 10_000, "ten", 10**30)
        ],
    )


def test_bad_filters_are_422(api: Api) -> None:
    def get(path: str, field: str, **params: Any) -> Case:
        return Case("GET", path, 422, "validation_error", field, {"params": params})

    _run(
        api,
        [
            get("/v1/agents", "status", status="zombie"),
            get("/v1/agents", "risk_tier", risk_tier="prohibited"),
            get("/v1/agents", "owner", owner="x" * 65),
            get("/v1/audit/events", "since", since="yesterday"),
            get("/v1/audit/events", "since", since="2026-01-01T00:00:00"),
            get("/v1/audit/events", "since", since="0001-01-01T00:00:00+01:00"),
            get("/v1/audit/events", "until", until="9999-12-31T23:59:59-01:00"),
            get("/v1/audit/events", "agent", agent="a" * 41),
            get("/v1/audit/export", "format", format="csv"),
        ],
    )


def test_out_of_range_times_are_422(api: Api) -> None:
    _run(
        api,
        [
            create(422, "validation_error", "expires_at", expires_at="9999-12-31T23:59:59-01:00"),
            create(
                422, "validation_error", "recertify_by", recertify_by="0001-01-01T00:00:00+01:00"
            ),
            body(
                "PATCH",
                "/v1/agents/{agent}",
                {"recertify_by": "0001-01-01T00:00:00+01:00"},
                422,
                "validation_error",
                "recertify_by",
            ),
        ],
    )


# -- never a 500 ---------------------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_FIELD_NAMES = [
    *("name", "owner", "purpose", "risk_tier", "roles", "attributes", "parent", "fingerprint"),
    *("supervisors", "expires_at", "recertify_by", "reason", "cascade", "note", "username"),
    *("role", "email", "expires_in"),
]
_fields = st.sampled_from(_FIELD_NAMES) | st.text(max_size=8)
_endpoints = st.sampled_from(
    [
        ("POST", "/v1/agents"),
        ("PATCH", "/v1/agents/{agent}"),
        ("POST", "/v1/agents/{agent}/suspend"),
        ("POST", "/v1/agents/{agent}/resume"),
        ("POST", "/v1/agents/{agent}/clone"),
        ("POST", "/v1/users"),
        ("POST", "/v1/users/admin/tokens"),
    ]
)


@pytest.fixture
def target(api: Api) -> dict[str, Any]:
    return api.agent(name="target")


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    endpoint=_endpoints, payload=st.dictionaries(_fields, _json, max_size=4), merge=st.booleans()
)
def test_random_bodies_never_500(
    api: Api,
    target: dict[str, Any],
    endpoint: tuple[str, str],
    payload: dict[str, Any],
    merge: bool,
) -> None:
    method, path = endpoint
    sent = {**AGENT_DEFAULTS, **payload} if merge and path == "/v1/agents" else payload
    response = api.client.request(method, path.format(agent=target["id"]), json=sent)
    assert response.status_code < 500, (method, path, sent, response.text)
    if response.status_code >= 400:
        assert_error(response, response.status_code)


def test_field_names_carry_no_validator_labels(api: Api) -> None:
    response = api.client.patch(f"/v1/agents/{api.agent()['id']}", json={"name": 123})
    assert assert_error(response, 422, "validation_error")["details"]["field"] == "name"
    response = api.client.post("/v1/agents", json={**AGENT_DEFAULTS, "attributes": {"k": 1.5}})
    assert assert_error(response, 422, "validation_error")["details"]["field"] == "attributes.k"


def test_method_not_allowed_names_the_allowed_methods(api: Api) -> None:
    response = api.client.put("/v1/agents")
    assert assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "GET, POST"
    response = api.client.delete(f"/v1/agents/{api.agent()['id']}")
    assert response.headers["allow"] == "GET, PATCH"
