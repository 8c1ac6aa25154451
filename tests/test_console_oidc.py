"""The console's optional OpenID Connect sign-in (issue 18): the authorization code flow with
PKCE through Authlib's client against a provider on a real port (tests/oidc_provider.py), the
ID token verified, the provider's group mapped to a Tether role — and each way it must fail:
a forged or replayed state, a tampered flow cookie, another nonce, audience or issuer, an
expired token, one signed by a key not in the JWKS or not signed at all, no mapped group, a
local user's name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient

from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, Provider
from tests.serverproc import free_port, served_in_thread
from tether.api.app import create_app
from tether.container import Services

ROLES = {"tether-admins": "admin", "support-leads": "supervisor", "auditors": "auditor"}


class Flow:
    def __init__(self, services: Services, provider: Provider) -> None:
        self.services, self.provider = services, provider
        self.browser = TestClient(create_app(services), base_url="http://testserver",
                                  follow_redirects=False)  # fmt: skip

    def sign_in(self, user: dict[str, Any], *, tamper: Callable[[str], str] | None = None,
                state: str | None = None) -> Any:  # fmt: skip
        """Start at Tether, sign in at the provider as ``user``, come back with the code."""
        self.provider.user = user
        started = self.browser.get("/console/sign-in/oidc?next=/console/agents")
        assert started.status_code == 303, started.text
        at_provider = started.headers["location"]
        assert at_provider.startswith(self.provider.issuer + "/authorize?")
        sent = parse_qs(urlsplit(at_provider).query)
        assert sent["code_challenge_method"] == ["S256"]
        assert sent["nonce"]
        assert sent["state"]
        with httpx.Client(follow_redirects=False) as http:
            back = http.get(at_provider)
        assert back.status_code == 302, back.text
        callback = urlsplit(back.headers["location"])
        query = callback.query
        if state is not None:
            query = query.replace(f"state={sent['state'][0]}", f"state={state}")
        headers = {}
        if tamper is not None:  # sent instead of the jar's (an explicit header wins)
            cookie = self.browser.cookies.get("tether_oidc")
            assert cookie
            headers["cookie"] = f"tether_oidc={tamper(cookie)}"
        return self.browser.get(f"{callback.path}?{query}", headers=headers)


@pytest.fixture
def provider() -> Iterator[Provider]:
    port = free_port()
    found = Provider(f"http://127.0.0.1:{port}")
    with served_in_thread(found.app(), port):
        yield found


@pytest.fixture
def flow(make_services: Callable[..., Services], provider: Provider) -> Iterator[Flow]:
    services = make_services(
        public_url="http://testserver", console_oidc_issuer=provider.issuer,
        console_oidc_client_id=CLIENT_ID, console_oidc_client_secret=CLIENT_SECRET,
        console_oidc_roles=ROLES,
    )  # fmt: skip
    made = Flow(services, provider)
    yield made
    made.browser.close()


def _signed_in(flow: Flow, answer: Any) -> str:
    assert answer.status_code == 200, answer.text
    assert 'http-equiv="refresh"' in answer.text
    assert "/console/agents" in answer.text
    page = flow.browser.get("/console/agents")
    assert page.status_code == 200, page.text
    return page.text


def _events(flow: Flow, kind: str) -> list[Any]:
    from tether.principals import SYSTEM

    return list(flow.services.audit.events(SYSTEM, type_=kind, limit=100).items)


def test_a_provider_sign_in_creates_the_human_with_the_mapped_role(flow: Flow) -> None:
    alice = {"sub": "u-1", "preferred_username": "Alice", "groups": ["staff", "support-leads"]}
    page = _signed_in(flow, flow.sign_in(alice))
    assert "alice" in page
    assert "(supervisor)" in page
    created = _events(flow, "user.created")[-1]
    assert created.details["via"] == "oidc"
    assert created.details["role"] == "supervisor"
    signed = _events(flow, "user.signed_in")[-1]
    assert signed.details["via"] == "oidc"
    # the next sign-in finds her by the provider's subject; a new group, a new role
    again = {**alice, "groups": ["support-leads", "tether-admins"]}
    assert "(admin)" in _signed_in(flow, flow.sign_in(again))
    changed = _events(flow, "user.role_changed")[-1]
    assert (changed.details["from"], changed.details["to"]) == ("supervisor", "admin")
    assert len(_events(flow, "user.created")) == 1  # alice, once


@pytest.mark.parametrize("bad", ["nonce", "aud", "iss", "expired", "key", "none"])
def test_an_id_token_that_does_not_hold_signs_nobody_in(flow: Flow, bad: str) -> None:
    flow.provider.misbehave = bad
    answer = flow.sign_in({"sub": "u-2", "preferred_username": "mallory",
                           "groups": ["tether-admins"]})  # fmt: skip
    assert answer.status_code == 401, answer.text
    assert "tether_session" not in (answer.headers.get("set-cookie") or "")
    assert flow.browser.get("/console").status_code == 303
    assert not [e for e in _events(flow, "user.created") if e.details.get("via") == "oidc"]


def test_a_forged_state_or_a_tampered_flow_is_refused(flow: Flow) -> None:
    user = {"sub": "u-3", "preferred_username": "bob", "groups": ["auditors"]}
    forged = flow.sign_in(user, state="forged-state")
    assert forged.status_code == 401
    assert "state" in forged.text

    def flip(cookie: str) -> str:
        body, _, mac = cookie.rpartition(".")
        return f"{body}x.{mac}"

    tampered = flow.sign_in(user, tamper=flip)
    assert tampered.status_code == 401
    assert "tampered" in tampered.text
    assert flow.browser.get("/console").status_code == 303
    ok = flow.sign_in(user)
    _signed_in(flow, ok)
    # the code and its flow are spent: the same callback again signs nobody in anew
    again = flow.browser.get(urlsplit(str(ok.request.url)).path + "?" + str(ok.request.url.query))
    assert again.status_code == 401


def test_no_mapped_group_or_a_local_users_name_is_refused(flow: Flow) -> None:
    nobody = flow.sign_in({"sub": "u-4", "preferred_username": "carol", "groups": ["staff"]})
    assert nobody.status_code == 401
    assert "no Tether role" in nobody.text
    takeover = flow.sign_in({"sub": "u-5", "preferred_username": "admin",
                             "groups": ["tether-admins"]})  # fmt: skip
    assert takeover.status_code == 401
    assert "exists in Tether" in takeover.text
    assert flow.browser.get("/console").status_code == 303


def test_without_a_provider_the_console_offers_passwords_only(
    make_services: Callable[..., Services],
) -> None:
    services = make_services()
    with TestClient(create_app(services), follow_redirects=False) as browser:
        assert "Sign in with" not in browser.get("/console/sign-in").text
        assert browser.get("/console/sign-in/oidc").status_code == 404
