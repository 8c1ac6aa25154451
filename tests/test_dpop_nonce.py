"""DPoP server nonces (RFC 9449 §8 at the token endpoint, §9 on resource requests).

Layers: the nonce primitive and ``verify_proof`` (pure, fixed ``now``); the token endpoint
over HTTP and at the service; resource requests through a FastAPI route
(``GET /v1/approvals/{id}``) and through the decision fast path (``POST
/access/v1/evaluation``), which must answer alike; ``AgentClient``'s transparent retries;
and a deployment with nonces off, where nothing changes. Every attack asserts the refusal,
and at the token endpoint that nothing was issued and the refusal was audited.

Storage-touching cases run on SQLite and PostgreSQL. They share one deployment per backend
(module scope, frozen clock); time only moves forward, so cases read ``env.now`` afresh.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
import pytest
from joserfc import jws
from joserfc.jwk import ECKey
from sqlalchemy import func, select
from starlette.testclient import TestClient

from tests.conftest import BACKENDS, Backend, backend_for, make_settings
from tests.pdp import Cred
from tether.agents.schemas import AgentCreate
from tether.api.app import create_app
from tether.audit.chain import Event
from tether.bootstrap import prepare
from tether.clock import FrozenClock
from tether.container import Services, build_services
from tether.credentials.dpop import (
    InvalidDPoPProof,
    MemoryDPoPReplayCache,
    UseDPoPNonce,
    access_token_hash,
    verify_proof,
)
from tether.credentials.dpop_nonce import DPoPNonces
from tether.credentials.models import AccessTokenRow
from tether.principals import SYSTEM
from tether.sdk import AgentClient

START = 1_800_000_000  # a window boundary for LIFETIME: 1_800_000_000 % 300 == 0
LIFETIME = 300
BASE = "http://testserver"  # the TestClient's origin, made the issuer via public_url
TOKEN_URL = f"{BASE}/oauth/token"
EVALUATION = "/access/v1/evaluation"
MASTER = bytes(range(32))
DROP = object()


# ===========================================================================================
# 1. The nonce primitive — pure, time passed in
# ===========================================================================================


def _nonces(master: bytes = MASTER, purpose: Any = "token_endpoint") -> DPoPNonces:
    return DPoPNonces.derive(master, purpose, lifetime=LIFETIME)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_nonce_is_accepted_in_its_window_and_the_next_only() -> None:
    nonces = _nonces()
    nonce = nonces.issue(START)
    assert nonces.issue(START + LIFETIME - 1) == nonce  # one nonce per window
    assert nonces.issue(START + LIFETIME) != nonce
    for now in (START, START + LIFETIME - 1, START + LIFETIME, START + 2 * LIFETIME - 1):
        assert nonces.problem(nonce, now) is None, now
    assert nonces.problem(nonce, START + 2 * LIFETIME) == "nonce_expired"
    assert nonces.problem(nonce, START + 100 * LIFETIME) == "nonce_expired"
    # Issued by a node whose clock is ahead, checked by one up to 5 s behind: accepted.
    assert nonces.problem(nonce, START - 5) is None
    assert nonces.problem(nonce, START - 6) == "nonce_expired"
    assert nonces.problem(nonce, START - LIFETIME) == "nonce_expired"


def test_nodes_sharing_the_master_key_issue_and_accept_the_same_nonces() -> None:
    node_a, node_b = _nonces(), _nonces()
    assert node_a.issue(START) == node_b.issue(START)
    assert node_b.problem(node_a.issue(START), START + LIFETIME) is None
    assert len(node_a.issue(START)) == 55


def _forged(name: str) -> str:
    genuine = _nonces().issue(START)
    raw = _unb64(genuine)
    if name == "mac-flipped":
        return _b64(raw[:-1] + bytes([raw[-1] ^ 1]))
    if name == "window-moved-forward":  # the attacker extends a nonce's life, keeps its MAC
        window = int.from_bytes(raw[1:9], "big") + 1
        return _b64(raw[:1] + window.to_bytes(8, "big") + raw[9:])
    if name == "another-deployment":
        return _nonces(master=secrets.token_bytes(32)).issue(START)
    if name == "the-resource-servers-nonce":
        return _nonces(purpose="resource").issue(START)
    if name == "unknown-version-with-a-valid-mac":
        key = _nonces()._key  # what a version-2 nonce under our own key would look like
        message = b"\x02" + (START // LIFETIME).to_bytes(8, "big")
        return _b64(message + hmac.new(key, message, hashlib.sha256).digest())
    if name == "non-canonical-base64":  # the same bytes, spelt with nonzero unused bits
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        spelt = genuine[:-1] + alphabet[alphabet.index(genuine[-1]) | 1]
        assert _unb64(spelt) == raw
        return spelt
    return {
        "empty": "",
        "padded": genuine + "=",
        "truncated": genuine[:-1],
        "extended": genuine + "A",
        "not-base64url": genuine[:-1] + "+",
        "a-window-number": str(START // LIFETIME),
        "whitespace": f" {genuine}",
    }[name]


FORGERIES = [
    "mac-flipped",
    "window-moved-forward",
    "another-deployment",
    "the-resource-servers-nonce",
    "unknown-version-with-a-valid-mac",
    "non-canonical-base64",
    "empty",
    "padded",
    "truncated",
    "extended",
    "not-base64url",
    "a-window-number",
    "whitespace",
]


@pytest.mark.parametrize("name", FORGERIES)
def test_a_nonce_this_deployment_did_not_issue_is_invalid(name: str) -> None:
    forged = _forged(name)
    assert forged != _nonces().issue(START)
    assert _nonces().problem(forged, START) == "nonce_invalid"


def test_no_nonce_is_missing() -> None:
    assert _nonces().problem(None, START) == "nonce_missing"


def test_bad_construction_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DPoPNonces(b"short", lifetime=LIFETIME)
    with pytest.raises(ValueError, match="lifetime"):
        DPoPNonces(MASTER, lifetime=0)


# -- verify_proof with nonces -----------------------------------------------------------------


def proof(
    key: ECKey, *, htm: str, htu: str, now: int, jti: str | None = None, **claims: Any
) -> str:
    """A DPoP proof (RFC 9449 §4.2); ``claims`` add to or (``DROP``) remove the defaults."""
    body = {"jti": jti or uuid.uuid4().hex, "htm": htm, "htu": htu, "iat": now, **claims}
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
    payload = json.dumps({k: v for k, v in body.items() if v is not DROP}).encode()
    return jws.serialize_compact(header, payload, key, algorithms=["ES256"])


def test_verify_proof_requires_the_nonce_before_it_spends_the_jti() -> None:
    key, nonces = ECKey.generate_key("P-256"), _nonces()
    cache = MemoryDPoPReplayCache(FrozenClock(datetime.fromtimestamp(START, UTC)))

    def verify(value: str) -> Any:
        return verify_proof(
            [value], method="POST", url=TOKEN_URL, now=START, replay_cache=cache, nonces=nonces
        )

    with pytest.raises(UseDPoPNonce) as refused:
        verify(proof(key, htm="POST", htu=TOKEN_URL, now=START, jti="j-1"))
    assert refused.value.code == "use_dpop_nonce"
    assert refused.value.details == {"reason": "nonce_missing", "jkt": key.thumbprint()}
    assert len(cache) == 0  # the refused proof's jti is not spent
    good = proof(key, htm="POST", htu=TOKEN_URL, now=START, jti="j-1", nonce=nonces.issue(START))
    assert verify(good).nonce == nonces.issue(START)
    with pytest.raises(InvalidDPoPProof) as replayed:  # and then it is
        verify(good)
    assert replayed.value.details["reason"] == "replay"


@pytest.mark.parametrize("value", [12345, ["n"], {"n": 1}, True])
def test_a_nonce_claim_of_another_json_type_is_refused(value: Any) -> None:
    key = ECKey.generate_key("P-256")
    with pytest.raises(InvalidDPoPProof) as refused:
        verify_proof(
            [proof(key, htm="POST", htu=TOKEN_URL, now=START, nonce=value)],
            method="POST",
            url=TOKEN_URL,
            now=START,
            nonces=_nonces(),
        )
    assert refused.value.details["reason"] == "malformed_nonce"


# ===========================================================================================
# 2. A deployment requiring nonces — token endpoint (HTTP and SERVICE)
# ===========================================================================================


@dataclass
class Env:
    services: Services
    clock: FrozenClock
    http: TestClient  # sends no credentials by default

    @property
    def now(self) -> int:
        return int(self.clock.now().timestamp())

    @property
    def as_nonces(self) -> DPoPNonces:
        assert self.services.oauth.dpop_nonces is not None
        return self.services.oauth.dpop_nonces

    @property
    def rs_nonces(self) -> DPoPNonces:
        assert self.services.bearers.dpop_nonces is not None
        return self.services.bearers.dpop_nonces


def _deployment(backend: Backend, data_dir: Any, **settings: Any) -> Iterator[Env]:
    clock = FrozenClock(datetime.fromtimestamp(START, UTC))
    config = make_settings(backend, data_dir, public_url=BASE, **settings)
    services = build_services(config, clock=clock)
    try:
        prepare(services)
        with TestClient(create_app(services), base_url=BASE) as http:
            yield Env(services, clock, http)
    finally:
        services.close()


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp(f"nonce-{request.param}")
    with backend_for(request.param, tmp) as backend:
        yield from _deployment(
            backend, tmp / "data", dpop_nonce="required", dpop_nonce_seconds=LIFETIME
        )


Client = Cred


def _form(client: Client) -> dict[str, str]:
    return {"grant_type": "client_credentials", **client.form}


def new_client(e: Env) -> Client:
    spec = AgentCreate(
        name="bot", owner="admin", purpose="nonce tests", risk_tier="minimal", scopes=["read"]
    )
    agent_id = e.services.agents.create(SYSTEM, spec).id
    return Client(agent_id, e.services.credentials.create_api_key(SYSTEM, agent_id)[1])


def ledger(e: Env) -> list[Event]:
    return list(e.services.audit.export(SYSTEM))


def token_rows(e: Env) -> int:
    with e.services.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(AccessTokenRow)) or 0)


def post_token(e: Env, client: Client, *proofs: str) -> Any:
    return e.http.post("/oauth/token", data=_form(client), headers=[("DPoP", p) for p in proofs])


def token_proof(e: Env, key: ECKey, **claims: Any) -> str:
    return proof(key, htm="POST", htu=TOKEN_URL, now=e.now, **claims)


def claims_of(token: str) -> dict[str, Any]:
    return dict(json.loads(_unb64(token.split(".")[1])))


def refused(e: Env, client: Client, key: ECKey, value: str, reason: str) -> None:
    """Send ``value`` as the proof: 400 use_dpop_nonce with a fresh nonce (RFC 9449 §8),
    nothing issued, and one audited refusal naming the client, the key and the reason."""
    before_rows, before = token_rows(e), ledger(e)
    response = post_token(e, client, value)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "use_dpop_nonce", body
    assert "nonce" in body["error_description"]
    assert "access_token" not in body
    assert response.headers["cache-control"] == "no-store"
    assert e.as_nonces.problem(response.headers["dpop-nonce"], e.now) is None
    assert token_rows(e) == before_rows
    after = ledger(e)
    assert after[: len(before)] == before
    (event,) = after[len(before) :]
    assert event.type == "dpop.nonce_required"
    assert (event.actor, event.agent_id, event.outcome) == (
        f"client:{client.agent_id}",
        client.agent_id,
        "failure",
    )
    assert event.details == {
        "client_id": client.agent_id,
        "reason": reason,
        "jkt": key.thumbprint(),
    }
    assert client.secret not in json.dumps(event.to_json())


def test_a_proof_without_a_nonce_gets_use_dpop_nonce_and_the_retry_is_bound(env: Env) -> None:
    client, key = new_client(env), ECKey.generate_key("P-256")
    refused(env, client, key, token_proof(env, key), "nonce_missing")
    nonce = post_token(env, client, token_proof(env, key)).headers["dpop-nonce"]

    issued = post_token(env, client, token_proof(env, key, nonce=nonce))
    assert issued.status_code == 200, issued.text
    body = issued.json()
    assert body["token_type"] == "DPoP"
    assert claims_of(body["access_token"])["cnf"] == {"jkt": key.thumbprint()}
    # Every answer carries the current nonce (§8.2), the success too.
    assert env.as_nonces.problem(issued.headers["dpop-nonce"], env.now) is None


def test_a_proof_refused_for_its_nonce_does_not_spend_its_jti(env: Env) -> None:
    """The nonce is checked before the replay cache: a retry may even reuse the jti."""
    client, key = new_client(env), ECKey.generate_key("P-256")
    jti = uuid.uuid4().hex
    first = post_token(env, client, token_proof(env, key, jti=jti))
    assert first.json()["error"] == "use_dpop_nonce"
    retry = token_proof(env, key, jti=jti, nonce=first.headers["dpop-nonce"])
    assert post_token(env, client, retry).status_code == 200
    replayed = post_token(env, client, retry)
    assert replayed.json()["error"] == "invalid_dpop_proof"
    assert "already used" in replayed.json()["error_description"]


NONCE_ATTACKS: dict[str, tuple[Callable[[Env], str], str]] = {
    "forged-mac": (lambda e: _flip(e.as_nonces.issue(e.now)), "nonce_invalid"),
    "window-moved-forward": (lambda e: _moved(e.as_nonces.issue(e.now)), "nonce_invalid"),
    "another-deployments-nonce": (
        lambda e: DPoPNonces.derive(
            secrets.token_bytes(32), "token_endpoint", lifetime=LIFETIME
        ).issue(e.now),
        "nonce_invalid",
    ),
    "the-resource-nonce": (lambda e: e.rs_nonces.issue(e.now), "nonce_invalid"),
    "made-up": (lambda _e: "eyJ7S_zG.eyJH0-Z.HX4w-7v", "nonce_invalid"),
}


def _flip(nonce: str) -> str:
    raw = _unb64(nonce)
    return _b64(raw[:-1] + bytes([raw[-1] ^ 0x80]))


def _moved(nonce: str) -> str:
    raw = _unb64(nonce)
    window = int.from_bytes(raw[1:9], "big") + 5
    return _b64(raw[:1] + window.to_bytes(8, "big") + raw[9:])


@pytest.mark.parametrize("name", list(NONCE_ATTACKS))
def test_a_nonce_the_token_endpoint_did_not_issue_is_refused(env: Env, name: str) -> None:
    client, key = new_client(env), ECKey.generate_key("P-256")
    build, reason = NONCE_ATTACKS[name]
    refused(env, client, key, token_proof(env, key, nonce=build(env)), reason)


def test_an_expired_nonce_is_refused_after_time_passes(env: Env) -> None:
    client, key = new_client(env), ECKey.generate_key("P-256")
    nonce = post_token(env, client, token_proof(env, key)).headers["dpop-nonce"]
    env.clock.advance(LIFETIME)  # the next window: still good
    assert post_token(env, client, token_proof(env, key, nonce=nonce)).status_code == 200
    env.clock.advance(LIFETIME)  # two windows on: gone
    refused(env, client, key, token_proof(env, key, nonce=nonce), "nonce_expired")


@pytest.mark.parametrize("value", [12345, ["n"], True])
def test_a_nonce_of_another_json_type_is_an_invalid_proof(env: Env, value: Any) -> None:
    """Refused as a malformed proof (not audited, like other bad proofs), with a fresh nonce."""
    client, key = new_client(env), ECKey.generate_key("P-256")
    before_rows = token_rows(env)
    response = post_token(env, client, token_proof(env, key, nonce=value))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_dpop_proof"
    assert "nonce must be a string" in response.json()["error_description"]
    assert env.as_nonces.problem(response.headers["dpop-nonce"], env.now) is None
    assert token_rows(env) == before_rows


def test_the_service_refuses_too(env: Env) -> None:
    client, key = new_client(env), ECKey.generate_key("P-256")
    with pytest.raises(UseDPoPNonce) as caught:
        env.services.oauth.token(_form(client), None, dpop=[token_proof(env, key)])
    assert caught.value.to_dict()["error"] == "use_dpop_nonce"
    assert caught.value.http_status == 400


def test_bearer_tokens_and_other_errors_are_unchanged_but_carry_a_nonce(env: Env) -> None:
    client = new_client(env)
    plain = env.http.post("/oauth/token", data=_form(client))
    assert plain.status_code == 200
    assert plain.json()["token_type"] == "Bearer"
    assert "dpop-nonce" in plain.headers
    wrong = env.http.post("/oauth/token", data={**_form(client), "client_secret": "nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert "dpop-nonce" in wrong.headers


def test_the_metadata_has_no_nonce_member(env: Env) -> None:
    document = env.http.get("/.well-known/oauth-authorization-server").json()
    assert not [name for name in document if "nonce" in name]


# ===========================================================================================
# 3. Resource requests with a DPoP-bound token — a FastAPI route and the decision fast path
# ===========================================================================================


def bound_token(e: Env, client: Client, key: ECKey) -> str:
    nonce = post_token(e, client, token_proof(e, key)).headers["dpop-nonce"]
    issued = post_token(e, client, token_proof(e, key, nonce=nonce))
    assert issued.status_code == 200, issued.text
    return str(issued.json()["access_token"])


def resource_request(
    e: Env, where: str, token: str, key: ECKey, client: Client, **claims: Any
) -> Any:
    """The request at ``where`` ("route" or "fastpath") with a proof made of ``claims``."""
    if where == "route":
        method, path = "GET", "/v1/approvals/apr_00000000000000000000000000"
    else:
        method, path = "POST", EVALUATION
    value = proof(
        key, htm=method, htu=BASE + path, now=e.now, ath=access_token_hash(token), **claims
    )
    headers = {"Authorization": f"DPoP {token}", "DPoP": value}
    if where == "route":
        return e.http.get(path, headers=headers)
    body = {
        "subject": {"type": "agent", "id": client.agent_id},
        "action": {"name": "tool.call"},
        "resource": {"type": "Tool", "id": "search"},
    }
    return e.http.post(path, json=body, headers=headers)


def assert_nonce_challenge(e: Env, response: Any, reason: str) -> str:
    """401 use_dpop_nonce in the API's error shape, the DPoP challenge and a fresh nonce."""
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('DPoP error="use_dpop_nonce", error_description="')
    nonce = str(response.headers["dpop-nonce"])
    assert e.rs_nonces.problem(nonce, e.now) is None
    assert response.json() == {
        "error": {
            "code": "use_dpop_nonce",
            "message": response.json()["error"]["message"],
            "details": {"reason": reason},
        }
    }
    return nonce


def assert_passed(where: str, response: Any) -> None:
    """Authenticated: the route looks the approval up (none), the fast path decides."""
    if where == "route":
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "approval_not_found"
    else:
        assert response.status_code == 200, response.text
        assert isinstance(response.json()["decision"], bool)
    assert "dpop-nonce" not in response.headers


WHERE = ["route", "fastpath"]


@pytest.mark.parametrize("where", WHERE)
def test_a_resource_request_without_a_nonce_is_challenged_then_passes(env: Env, where: str) -> None:
    client, key = new_client(env), ECKey.generate_key("P-256")
    token = bound_token(env, client, key)
    nonce = assert_nonce_challenge(
        env, resource_request(env, where, token, key, client), "nonce_missing"
    )
    assert_passed(where, resource_request(env, where, token, key, client, nonce=nonce))


RS_NONCE_ATTACKS: dict[str, tuple[Callable[[Env], Any], str]] = {
    "forged-mac": (lambda e: _flip(e.rs_nonces.issue(e.now)), "nonce_invalid"),
    "window-moved-forward": (lambda e: _moved(e.rs_nonces.issue(e.now)), "nonce_invalid"),
    "another-deployments-nonce": (
        lambda e: DPoPNonces.derive(secrets.token_bytes(32), "resource", lifetime=LIFETIME).issue(
            e.now
        ),
        "nonce_invalid",
    ),
    "the-token-endpoints-nonce": (lambda e: e.as_nonces.issue(e.now), "nonce_invalid"),
    "expired": (lambda e: e.rs_nonces.issue(e.now - 2 * LIFETIME), "nonce_expired"),
}


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("name", list(RS_NONCE_ATTACKS))
def test_a_resource_request_with_a_bad_nonce_is_challenged(env: Env, name: str, where: str) -> None:
    client, key = new_client(env), ECKey.generate_key("P-256")
    token = bound_token(env, client, key)
    build, reason = RS_NONCE_ATTACKS[name]
    response = resource_request(env, where, token, key, client, nonce=build(env))
    assert_nonce_challenge(env, response, reason)


@pytest.mark.parametrize("where", WHERE)
def test_a_resource_nonce_expires_as_time_passes(env: Env, where: str) -> None:
    client, key = new_client(env), ECKey.generate_key("P-256")
    nonce = env.rs_nonces.issue(env.now)
    env.clock.advance(2 * LIFETIME)
    token = bound_token(env, client, key)  # a token that is still valid now
    response = resource_request(env, where, token, key, client, nonce=nonce)
    assert_nonce_challenge(env, response, "nonce_expired")


@pytest.mark.parametrize("where", WHERE)
def test_a_nonce_does_not_rescue_a_stolen_token(env: Env, where: str) -> None:
    """The nonce is not an authenticator: another key's proof is still refused."""
    client, holder = new_client(env), ECKey.generate_key("P-256")
    token = bound_token(env, client, holder)
    thief = ECKey.generate_key("P-256")
    response = resource_request(
        env, where, token, thief, client, nonce=env.rs_nonces.issue(env.now)
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "invalid_dpop_proof"
    assert "not the key the token is bound to" in response.json()["error"]["message"]
    assert response.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    assert "dpop-nonce" not in response.headers  # a wrong key is not a nonce problem


def test_bearer_tokens_need_no_nonce_on_resource_requests(env: Env) -> None:
    client = new_client(env)
    token = env.http.post("/oauth/token", data=_form(client)).json()["access_token"]
    response = env.http.get(
        "/v1/approvals/apr_00000000000000000000000000", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 404, response.text


def test_a_second_node_accepts_the_first_nodes_nonces(env: Env) -> None:
    """Stateless: another process on the same database and master key takes the nonces."""
    settings = env.services.settings.model_copy()
    node_b = build_services(settings, clock=env.clock)
    try:
        client, key = new_client(env), ECKey.generate_key("P-256")
        nonce = post_token(env, client, token_proof(env, key)).headers["dpop-nonce"]
        body = node_b.oauth.token(_form(client), None, dpop=[token_proof(env, key, nonce=nonce)])
        assert body["token_type"] == "DPoP"
        token = body["access_token"]
        rs_nonce = assert_nonce_challenge(
            env, resource_request(env, "fastpath", token, key, client), "nonce_missing"
        )
        assert node_b.bearers.dpop_nonces is not None
        assert node_b.bearers.dpop_nonces.problem(rs_nonce, env.now) is None
    finally:
        node_b.close()


# ===========================================================================================
# 4. The SDK retries on its own
# ===========================================================================================


class Recorder(httpx.BaseTransport):
    """Hands every request to the app and records (path, status, the proof's nonce)."""

    def __init__(self, app: TestClient) -> None:
        self.app = app
        self.seen: list[tuple[str, int, Any]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.app.send(request)
        proofs = request.headers.get_list("dpop")
        nonce = claims_of(proofs[0]).get("nonce") if proofs else None
        with self._lock:
            self.seen.append((request.url.path, response.status_code, nonce))
        return response

    def take(self) -> list[tuple[str, int, Any]]:
        seen, self.seen = self.seen, []
        return [s for s in seen if not s[0].startswith("/.well-known")]


def test_the_sdk_retries_with_the_servers_nonces(env: Env) -> None:
    client = new_client(env)
    recorder = Recorder(env.http)
    with httpx.Client(transport=recorder) as http:
        agent = AgentClient(
            BASE,
            client.agent_id,
            client_secret=client.secret,
            dpop_key=True,
            http=http,
            clock=lambda: env.clock.now().timestamp(),
        )
        first = agent.authorize("tool.call", resource="search")
        assert first.decision in ("allow", "deny")
        as_nonce, rs_nonce = env.as_nonces.issue(env.now), env.rs_nonces.issue(env.now)
        assert recorder.take() == [
            ("/oauth/token", 400, None),
            ("/oauth/token", 200, as_nonce),
            (EVALUATION, 401, None),
            (EVALUATION, 200, rs_nonce),
        ]
        agent.authorize("tool.call", resource="search")  # remembered: no more round trips
        assert recorder.take() == [(EVALUATION, 200, rs_nonce)]

        env.clock.advance(2 * LIFETIME)  # the token and both nonces have expired
        agent.authorize("tool.call", resource="search")
        assert recorder.take() == [
            ("/oauth/token", 400, as_nonce),
            ("/oauth/token", 200, env.as_nonces.issue(env.now)),
            (EVALUATION, 401, rs_nonce),
            (EVALUATION, 200, env.rs_nonces.issue(env.now)),
        ]
        token = agent.access_token()
        assert claims_of(token)["cnf"] == {"jkt": agent.dpop_jkt}


# ===========================================================================================
# 5. Nonces off (the default): nothing changes
# ===========================================================================================


@pytest.fixture
def plain(backend: Backend, tmp_path: Any) -> Iterator[Env]:
    yield from _deployment(backend, tmp_path / "data")


def test_with_nonces_off_proofs_need_none_and_no_nonce_is_sent(plain: Env) -> None:
    assert plain.services.settings.dpop_nonce == "off"
    assert plain.services.oauth.dpop_nonces is None
    assert plain.services.bearers.dpop_nonces is None
    client, key = new_client(plain), ECKey.generate_key("P-256")
    issued = post_token(plain, client, token_proof(plain, key))
    assert issued.status_code == 200, issued.text
    assert issued.json()["token_type"] == "DPoP"
    assert "dpop-nonce" not in issued.headers
    token = issued.json()["access_token"]
    for where in WHERE:
        response = resource_request(plain, where, token, key, client)
        assert_passed(where, response)
        # A nonce is ignored when the server does not use them.
        assert_passed(where, resource_request(plain, where, token, key, client, nonce="x"))
    assert not [e for e in ledger(plain) if e.type == "dpop.nonce_required"]
