"""What the API says to a newcomer's mistakes, and ``me`` as the caller in ``/v1/users/me…``:
each message says what was wrong in words, never a regex or a parser's jargon."""

from __future__ import annotations

import pytest

from tests.conftest import Api, assert_error, bearer

ASK = {
    "subject": {"type": "agent", "id": "agt_01HZZZZZZZZZZZZZZZZZZZZZZZ"},
    "action": {"name": "read"},
    "resource": {"type": "doc", "id": "d1"},
}


# -- email -------------------------------------------------------------------------------------


@pytest.mark.parametrize("email", ["nope", "a@", "@b", "a b@c", "a@b@c", "a@b\n"])
def test_a_bad_email_is_said_in_words(api: Api, email: str) -> None:
    response = api.client.post(
        "/v1/users", json={"username": "bob", "role": "supervisor", "email": email}
    )
    error = assert_error(response, 422, "validation_error")
    assert error["message"] == "email: not a valid email address (expected name@domain)"
    assert error["details"]["field"] == "email"
    assert "pattern" not in str(error)
    assert "\\x" not in str(error)


def test_a_good_email_is_kept(api: Api) -> None:
    response = api.client.post(
        "/v1/users", json={"username": "bob", "role": "supervisor", "email": "bob@example.com"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["email"] == "bob@example.com"


def test_the_document_still_states_the_email_rule(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()["components"]["schemas"]["UserCreate"]
    email = schema["properties"]["email"]["anyOf"][0]
    assert email["maxLength"] == 254
    assert email["pattern"].startswith("^[^@")


# -- a body that is not JSON -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/access/v1/evaluation", "/access/v1/evaluations"])
def test_a_form_body_is_told_to_send_json(api: Api, path: str) -> None:
    response = api.client.post(path, data={"subject": "x"})
    error = assert_error(response, 422, "validation_error")
    assert error["message"] == "body: send a JSON body (Content-Type: application/json)"
    assert "dictionary" not in str(error)


@pytest.mark.parametrize("path", ["/access/v1/evaluation", "/v1/agents"])
def test_a_json_body_that_is_not_an_object_says_so(api: Api, path: str) -> None:
    response = api.client.post(path, json=[ASK])
    error = assert_error(response, 422, "validation_error")
    assert error["message"] == "body: the body must be a JSON object"


def test_a_json_evaluation_still_decides(api: Api) -> None:
    agent = api.agent()
    ask = {**ASK, "subject": {"type": "agent", "id": agent["id"]}}
    response = api.client.post("/access/v1/evaluation", json=ask)
    assert response.status_code == 200, response.text
    assert response.json()["decision"] is False


# -- risk_tier ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tier", ["bogus", "HIGH", 3, None])
def test_the_risk_tier_error_lists_only_what_is_accepted(api: Api, tier: object) -> None:
    body = {"name": "a", "owner": "admin", "purpose": "p", "risk_tier": tier}
    error = assert_error(api.client.post("/v1/agents", json=body), 422, "validation_error")
    assert error["message"] == "risk_tier: Input should be 'minimal', 'limited' or 'high'"
    assert "prohibited" not in str(error)


def test_a_patch_to_a_bad_tier_says_the_same(api: Api) -> None:
    agent = api.agent()
    error = assert_error(api.act(agent["id"], "patch", risk_tier="extreme"), 422)
    assert error["message"] == "risk_tier: Input should be 'minimal', 'limited' or 'high'"


def test_prohibited_is_still_refused_with_its_own_code(api: Api) -> None:
    body = {"name": "a", "owner": "admin", "purpose": "p", "risk_tier": "prohibited"}
    assert_error(api.client.post("/v1/agents", json=body), 422, "risk_tier_prohibited")


# -- me ----------------------------------------------------------------------------------------


def test_an_admin_mints_a_subject_token_for_themself_as_me(api: Api) -> None:
    agent = api.agent()
    response = api.client.post("/v1/users/me/subject-tokens", json={"agent": agent["id"]})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["may_act"] == agent["id"]
    assert body["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"


def test_a_supervisor_mints_one_as_me_but_not_for_another(api: Api) -> None:
    alice = api.user("alice")
    agent = api.agent(owner="alice")
    mine = api.client.post(
        "/v1/users/me/subject-tokens", json={"agent": agent["id"]}, headers=bearer(alice["token"])
    )
    assert mine.status_code == 201, mine.text
    by_name = api.client.post(
        "/v1/users/alice/subject-tokens",
        json={"agent": agent["id"]},
        headers=bearer(alice["token"]),
    )
    assert by_name.status_code == 201, by_name.text
    error = assert_error(
        api.client.post(
            "/v1/users/admin/subject-tokens",
            json={"agent": agent["id"]},
            headers=bearer(alice["token"]),
        ),
        403,
        "forbidden",
    )
    assert "/v1/users/me/subject-tokens" in error["message"]


def test_me_names_the_caller_elsewhere_too(api: Api) -> None:
    alice = api.user("alice")
    me = api.client.get("/v1/users/me", headers=bearer(alice["token"]))
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "alice"
    tokens = api.client.get("/v1/users/me/tokens", headers=bearer(alice["token"]))
    assert tokens.status_code == 200, tokens.text
    assert len(tokens.json()["items"]) == 1
    made = api.client.post("/v1/users/me/tokens", json={}, headers=bearer(alice["token"]))
    assert made.status_code == 201, made.text
    assert made.json()["user_id"] == alice["id"]


def test_no_user_may_be_named_me(api: Api) -> None:
    response = api.client.post("/v1/users", json={"username": "me", "role": "auditor"})
    error = assert_error(response, 422, "validation_error")
    assert error["details"]["field"] == "username"
    assert "reserved" in error["message"]


def test_another_users_tokens_are_refused_in_one_sentence(api: Api) -> None:
    alice = api.user("alice")
    api.user("bob")
    error = assert_error(
        api.client.get("/v1/users/bob/tokens", headers=bearer(alice["token"])), 403, "forbidden"
    )
    assert error["message"] == "only an admin may list another user's tokens"
