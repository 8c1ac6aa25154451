"""The agent SDK (``AgentClient``) against the real app in-process, on both backends:
client_secret_basic and private_key_jwt, the token cache, DPoP binding checked by the server's
own verifier, token exchange, one fetch for concurrent callers. Edge cases of the DPoP nonce
handshake and malformed answers are checked against scripted transports (the server's own
nonces: test_dpop_nonce.py); one test runs against a real server process."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from starlette.testclient import TestClient

import tether
import tether.sdk
from tests.conftest import Backend
from tests.serverproc import running_server
from tether.agents.schemas import AgentCreate
from tether.api.app import create_app
from tether.clock import FrozenClock
from tether.container import Services
from tether.credentials.dpop import access_token_hash, verify_proof
from tether.principals import SYSTEM
from tether.sdk import AgentClient, JWKSCache, TokenError, verify_access_token

BASE = "http://testserver"  # the TestClient's origin, made the issuer via public_url
START = 1_800_000_000
TOKEN_URL = f"{BASE}/oauth/token"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


# -- the real app, in-process ------------------------------------------------------------------


class Recorder(httpx.BaseTransport):
    """Hands every request to the app (through a TestClient) and records it."""

    def __init__(self, app: TestClient) -> None:
        self.app = app
        self.requests: list[httpx.Request] = []
        self.token_delay = 0.0
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.requests.append(request)
        if request.url.path == "/oauth/token":
            time.sleep(self.token_delay)  # widens the window for concurrent callers
        return self.app.send(request)

    def token_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/oauth/token"]


@dataclass
class Server:
    services: Services
    clock: FrozenClock
    app: TestClient
    transport: Recorder
    http: httpx.Client

    def now(self) -> float:
        return self.clock.now().timestamp()

    def agent(self, scopes: tuple[str, ...] = ("read", "write")) -> str:
        spec = AgentCreate(
            name="bot", owner="admin", purpose="p", risk_tier="minimal", scopes=list(scopes)
        )
        return self.services.agents.create(SYSTEM, spec).id

    def api_key(self, agent_id: str) -> str:
        return self.services.credentials.create_api_key(SYSTEM, agent_id)[1]

    def register(self, agent_id: str, key: ECKey | OKPKey | RSAKey) -> None:
        self.services.credentials.create_public_key(
            SYSTEM, agent_id, jwk=dict(key.as_dict(private=False))
        )

    def client(self, client_id: str, **kwargs: Any) -> AgentClient:
        return AgentClient(BASE, client_id, http=self.http, clock=self.now, **kwargs)

    def claims(self, token: str, audience: str = BASE) -> Any:
        return verify_access_token(
            token,
            issuer=BASE,
            audience=audience,
            now=int(self.now()),
            jwks=JWKSCache.from_static(self.services.signing_keys.jwks()),
            dpop=lambda _token, _claims: None,  # the proof is checked separately
        )


@pytest.fixture
def server(make_services: Callable[..., Services]) -> Iterator[Server]:
    clock = FrozenClock(datetime.fromtimestamp(START, UTC))
    services = make_services(clock=clock, public_url=BASE)
    with TestClient(create_app(services)) as app:
        transport = Recorder(app)
        with httpx.Client(transport=transport) as http:
            yield Server(services, clock, app, transport, http)


def _form(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))


def test_client_secret_basic(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    agent_id = server.agent()
    secret = server.api_key(agent_id)
    caplog.set_level(logging.DEBUG)
    agent = server.client(
        agent_id, client_secret=secret, scope=["read"], resource="https://tools.example/mcp"
    )
    token = agent.access_token()
    claims = server.claims(token, audience="https://tools.example/mcp")
    assert (claims.sub, claims.client_id, claims.scopes) == (agent_id, agent_id, {"read"})
    assert agent.auth_headers("GET", "https://tools.example/mcp") == {
        "Authorization": f"Bearer {token}"
    }
    (request,) = server.transport.token_requests()
    scheme, _, encoded = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == f"{agent_id}:{secret}"
    assert _form(request) == {
        "grant_type": "client_credentials",
        "scope": "read",
        "resource": "https://tools.example/mcp",
    }
    assert token not in caplog.text
    assert secret not in caplog.text


@pytest.mark.parametrize("kind", ["p256-pem", "ed25519-key", "rsa-pem-str", "rsa-ps256-key"])
def test_private_key_jwt(server: Server, kind: str) -> None:
    key: ECKey | OKPKey | RSAKey
    if kind == "p256-pem":
        key = ECKey.generate_key("P-256", private=True)
        private: Any = key.as_pem(private=True)
    elif kind == "ed25519-key":
        key = private = OKPKey.generate_key("Ed25519", private=True)
    elif kind == "rsa-pem-str":
        key = RSAKey.generate_key(2048, private=True)
        private = key.as_pem(private=True).decode()
    else:
        key = private = RSAKey.import_key(
            RSAKey.generate_key(2048, private=True).as_dict(private=True),
            parameters={"alg": "PS256"},
        )
    expected_alg = {
        "p256-pem": "ES256",
        "ed25519-key": "Ed25519",
        "rsa-pem-str": "RS256",
        "rsa-ps256-key": "PS256",
    }[kind]
    agent_id = server.agent()
    server.register(agent_id, key)
    agent = server.client(agent_id, private_key=private)
    first = agent.access_token()
    agent.invalidate()
    second = agent.access_token()
    assert first != second
    assert server.claims(second).sub == agent_id

    assertions = [_form(r) for r in server.transport.token_requests()]
    jtis = set()
    for form in assertions:
        assert form["client_id"] == agent_id
        assert form["client_assertion_type"] == (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        )
        decoded = jwt.decode(form["client_assertion"], key, algorithms=[expected_alg])
        assert decoded.header["alg"] == expected_alg
        c = decoded.claims
        assert (c["iss"], c["sub"], c["aud"]) == (agent_id, agent_id, BASE)
        assert (c["iat"], c["exp"]) == (START, START + 60)
        jtis.add(c["jti"])
    assert len(jtis) == 2  # a fresh assertion per request


def test_cache_until_the_refresh_margin(server: Server) -> None:
    agent_id = server.agent()
    agent = server.client(agent_id, client_secret=server.api_key(agent_id), refresh_margin=30)
    ttl = server.services.settings.token_ttl_seconds
    first = agent.access_token()
    server.clock.advance(ttl - 30 - 1)
    assert agent.access_token() == first
    assert len(server.transport.token_requests()) == 1
    server.clock.advance(1)  # now within refresh_margin of expiry
    second = agent.access_token()
    assert second != first
    assert agent.access_token() == second
    assert len(server.transport.token_requests()) == 2
    metadata = [r for r in server.transport.requests if "well-known" in r.url.path]
    assert len(metadata) == 1  # fetched once, lazily


def test_concurrent_callers_make_one_request(server: Server) -> None:
    agent_id = server.agent()
    agent = server.client(agent_id, client_secret=server.api_key(agent_id))
    server.transport.token_delay = 0.05
    barrier = threading.Barrier(8)
    tokens: list[str] = []

    def call() -> None:
        barrier.wait()
        tokens.append(agent.access_token())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(tokens) == 8
    assert len(set(tokens)) == 1
    assert len(server.transport.token_requests()) == 1


def test_bad_secret_is_invalid_client(server: Server) -> None:
    agent_id = server.agent()
    server.api_key(agent_id)
    agent = server.client(agent_id, client_secret="tk_wrong-secret")
    with pytest.raises(TokenError) as caught:
        agent.access_token()
    assert (caught.value.error, caught.value.status) == ("invalid_client", 401)
    assert "tk_wrong-secret" not in str(caught.value)


def test_dpop_bound_token(server: Server) -> None:
    key = ECKey.generate_key("P-256", private=True)
    agent_id = server.agent()
    server.register(agent_id, key)
    agent = server.client(agent_id, private_key=key, dpop_key=True)
    token = agent.access_token()  # the client itself refuses any token_type but DPoP
    claims = server.claims(token)
    assert claims.cnf_jkt is not None
    assert claims.cnf_jkt == agent.dpop_jkt
    (request,) = server.transport.token_requests()
    sent = verify_proof(request.headers.get_list("dpop"), method="POST", url=TOKEN_URL, now=START)
    assert (sent.jkt, sent.ath, sent.nonce) == (claims.cnf_jkt, None, None)

    headers = agent.auth_headers("get", "https://tools.example/mcp?q=1#f")
    scheme, _, presented = headers["Authorization"].partition(" ")
    assert (scheme, presented) == ("DPoP", token)
    proof = verify_proof(
        [headers["DPoP"]],
        method="GET",
        url="https://tools.example/mcp",
        now=START,
        access_token=token,
    )
    assert proof.jkt == claims.cnf_jkt
    assert proof.ath == access_token_hash(token)
    assert proof.htu == "https://tools.example/mcp"
    assert "d" not in proof.jwk
    assert proof.jti != sent.jti


def test_exchange_acts_for_the_subject(server: Server) -> None:
    subject_id, actor_id = server.agent(), server.agent()
    subject = server.client(subject_id, client_secret=server.api_key(subject_id))
    agent = server.client(actor_id, client_secret=server.api_key(actor_id))
    result = agent.exchange(subject.access_token(), scope="read")
    assert result["issued_token_type"] == ACCESS
    assert (result["token_type"], result["scope"]) == ("Bearer", "read")
    claims = server.claims(result["access_token"])
    assert (claims.sub, claims.client_id, claims.chain) == (subject_id, actor_id, (actor_id,))
    form = _form(server.transport.token_requests()[-1])
    assert form["actor_token"] == agent.access_token()  # its own, cached token
    with pytest.raises(TokenError) as caught:  # scope beyond the subject's: refused
        agent.exchange(subject.access_token(), scope="admin")
    assert caught.value.error == "invalid_scope"

    bound = server.client(actor_id, client_secret=server.api_key(actor_id), dpop_key=True)
    result = bound.exchange(subject.access_token())
    assert result["token_type"] == "DPoP"
    assert server.claims(result["access_token"]).cnf_jkt == bound.dpop_jkt


@pytest.mark.slow
def test_against_a_server_process(backend: Backend, tmp_path: Path) -> None:
    """Over a socket, with the client's own HTTP client and the server's default issuer."""
    with running_server(backend, tmp_path) as (url, _env):
        admin_token = (tmp_path / ".tether" / "admin.token").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"}) as a:

            def credentials() -> dict[str, Any]:
                body = {
                    "name": "bot",
                    "owner": "admin",
                    "purpose": "p",
                    "risk_tier": "minimal",
                    "scopes": ["read", "write"],
                }
                agent = a.post("/v1/agents", json=body)
                assert agent.status_code == 201, agent.text
                cred = a.post(
                    f"/v1/agents/{agent.json()['id']}/credentials", json={"type": "api_key"}
                )
                assert cred.status_code == 201, cred.text
                return dict(cred.json())

            actor, subject = credentials(), credentials()
        with AgentClient(url, subject["client_id"], client_secret=subject["client_secret"]) as s:
            subject_token = s.access_token()
        with AgentClient(url, actor["client_id"], client_secret=actor["client_secret"]) as agent:
            assert agent.metadata()["issuer"] == url
            result = agent.exchange(subject_token, scope="read")
        with JWKSCache(f"{url}/.well-known/jwks.json") as jwks:
            claims = verify_access_token(
                result["access_token"], issuer=url, audience=url, jwks=jwks
            )
    assert (result["issued_token_type"], result["scope"]) == (ACCESS, "read")
    assert claims.sub == subject["client_id"]
    assert claims.chain == (actor["client_id"],)


# -- scripted authorization servers ------------------------------------------------------------

FAKE = "https://as.example"
FAKE_TOKEN_URL = f"{FAKE}/oauth/token"


class FakeAS:
    """Serves metadata for FAKE and answers token requests from a script, recording them."""

    def __init__(self, *script: httpx.Response, metadata: dict[str, Any] | None = None) -> None:
        self.script = list(script)
        self.token_requests: list[httpx.Request] = []
        self.metadata = metadata or {"issuer": FAKE, "token_endpoint": FAKE_TOKEN_URL}
        self.http = httpx.Client(transport=httpx.MockTransport(self.handle))

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/oauth-authorization-server":
            return httpx.Response(200, json=self.metadata)
        self.token_requests.append(request)
        return self.script.pop(0)

    def client(self, **kwargs: Any) -> AgentClient:
        kwargs.setdefault("client_secret", "s3cret")
        return AgentClient(FAKE, "agt_1", http=self.http, clock=lambda: START, **kwargs)


def _token(token: str = "tok-1", token_type: str = "Bearer", **extra: Any) -> httpx.Response:
    return httpx.Response(
        200, json={"access_token": token, "token_type": token_type, "expires_in": 300, **extra}
    )


def _proof_claims(request: httpx.Request) -> dict[str, Any]:
    proof = verify_proof(
        request.headers.get_list("dpop"), method="POST", url=FAKE_TOKEN_URL, now=START
    )
    return {"jti": proof.jti, "nonce": proof.nonce, "jkt": proof.jkt, "ath": proof.ath}


def test_use_dpop_nonce_is_retried_once_with_the_nonce() -> None:
    nonce_error = {"error": "use_dpop_nonce", "error_description": "send a nonce"}
    fake = FakeAS(
        httpx.Response(400, json=nonce_error, headers={"DPoP-Nonce": "n-1"}),
        _token("tok-1", "DPoP"),
        _token("tok-2", "DPoP"),
        httpx.Response(400, json=nonce_error, headers={"DPoP-Nonce": "n-2"}),
        httpx.Response(400, json=nonce_error, headers={"DPoP-Nonce": "n-3"}),
    )
    agent = fake.client(dpop_key=True)
    assert agent.access_token() == "tok-1"
    first, retried = (_proof_claims(r) for r in fake.token_requests)
    assert (first["nonce"], retried["nonce"]) == (None, "n-1")
    assert first["jti"] != retried["jti"]
    assert first["jkt"] == retried["jkt"] == agent.dpop_jkt
    assert first["ath"] is None
    agent.invalidate()
    assert agent.access_token() == "tok-2"
    assert _proof_claims(fake.token_requests[2])["nonce"] == "n-1"  # remembered (§8)
    # A resource server's nonce (§9) goes into that request's proof only.
    resource = agent.auth_headers("POST", "https://rs.example/x", nonce="rs-n")
    proof = verify_proof(
        [resource["DPoP"]],
        method="POST",
        url="https://rs.example/x",
        now=START,
        access_token="tok-2",
    )
    assert proof.nonce == "rs-n"
    agent.invalidate()
    with pytest.raises(TokenError) as caught:  # a second use_dpop_nonce is not retried again
        agent.access_token()
    assert caught.value.error == "use_dpop_nonce"
    assert len(fake.token_requests) == 5
    assert _proof_claims(fake.token_requests[4])["nonce"] == "n-2"


def test_exchange_request_shape() -> None:
    exchanged = {
        "access_token": "delegated",
        "issued_token_type": ACCESS,
        "token_type": "Bearer",
        "expires_in": 120,
        "scope": "read",
    }
    fake = FakeAS(_token("actor-tok"), httpx.Response(200, json=exchanged))
    agent = fake.client(client_secret="s3 cret:+")
    result = agent.exchange(
        "subject-tok", scope=["read"], resource="https://rs.example/", audience="billing"
    )
    assert result == exchanged
    request = fake.token_requests[1]
    assert _form(request) == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "subject-tok",
        "subject_token_type": ACCESS,
        "actor_token": "actor-tok",
        "actor_token_type": ACCESS,
        "scope": "read",
        "resource": "https://rs.example/",
        "audience": "billing",
    }
    scheme, _, encoded = request.headers["Authorization"].partition(" ")
    raw = base64.b64decode(encoded).decode()
    assert scheme == "Basic"
    assert raw == "agt_1:s3+cret%3A%2B"  # RFC 6749 §2.3.1: form-urlencoded, then base64
    assert unquote_plus(raw.split(":")[1]) == "s3 cret:+"


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (_token(token_type="DPoP"), "invalid_response"),  # asked for Bearer
        (
            httpx.Response(200, json={"access_token": "t", "token_type": "Bearer"}),
            "invalid_response",
        ),  # no expires_in
        (httpx.Response(200, text="<html>"), "invalid_response"),
        (httpx.Response(503, text="down"), "temporarily_unavailable"),
        (
            httpx.Response(400, json={"error": "invalid_scope", "error_description": "no"}),
            "invalid_scope",
        ),
    ],
)
def test_bad_token_responses(response: httpx.Response, error: str) -> None:
    with pytest.raises(TokenError) as caught:
        FakeAS(response).client().access_token()
    assert caught.value.error == error


def test_dpop_token_type_is_required_when_asked() -> None:
    with pytest.raises(TokenError, match="expected token_type DPoP"):
        FakeAS(_token(token_type="Bearer")).client(dpop_key=True).access_token()


def test_metadata_with_another_issuer_is_refused() -> None:
    fake = FakeAS(metadata={"issuer": "https://evil.example", "token_endpoint": FAKE_TOKEN_URL})
    with pytest.raises(TokenError, match="issuer") as caught:
        fake.client().access_token()
    assert caught.value.error == "invalid_response"
    assert fake.token_requests == []


def test_network_errors_are_wrapped() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with httpx.Client(transport=httpx.MockTransport(refuse)) as http:
        agent = AgentClient(FAKE, "agt_1", client_secret="s", http=http)
        with pytest.raises(TokenError, match="ConnectError") as caught:
            agent.access_token()
    assert caught.value.error == "temporarily_unavailable"
    assert caught.value.status is None


def test_short_lived_tokens_are_still_reused() -> None:
    now = [float(START)]
    short = httpx.Response(
        200, json={"access_token": "a", "token_type": "Bearer", "expires_in": 20}
    )
    fake = FakeAS(short, _token("b"))
    agent = AgentClient(FAKE, "agt_1", client_secret="s", http=fake.http, clock=lambda: now[0])
    assert agent.access_token() == "a"
    now[0] += 9  # refresh at half the lifetime when the margin (30 s) exceeds it
    assert agent.access_token() == "a"
    now[0] += 1
    assert agent.access_token() == "b"


# -- construction ------------------------------------------------------------------------------


def test_exactly_one_credential() -> None:
    key = ECKey.generate_key("P-256", private=True)
    with pytest.raises(ValueError, match="exactly one"):
        AgentClient(FAKE, "agt_1")
    with pytest.raises(ValueError, match="exactly one"):
        AgentClient(FAKE, "agt_1", client_secret="s", private_key=key)


def test_key_arguments_are_checked_and_nothing_is_fetched_early() -> None:
    def no_requests(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected request to {request.url}")

    http = httpx.Client(transport=httpx.MockTransport(no_requests))
    public = ECKey.import_key(ECKey.generate_key("P-256").as_dict(private=False))
    with pytest.raises(ValueError, match="private key"):
        AgentClient(FAKE, "agt_1", private_key=public, http=http)
    with pytest.raises(ValueError, match="PEM"):
        AgentClient(FAKE, "agt_1", private_key=b"not a key", http=http)
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="2048"):
        AgentClient(FAKE, "agt_1", private_key=weak, http=http)
    with pytest.raises(TypeError):
        AgentClient(FAKE, "agt_1", private_key=OctKey.generate_key(256), http=http)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot sign"):
        AgentClient(
            FAKE,
            "agt_1",
            http=http,
            private_key=ECKey.import_key(
                ECKey.generate_key("P-256").as_dict(private=True), parameters={"alg": "ES384"}
            ),
        )
    assert AgentClient(FAKE, "agt_1", client_secret="s", http=http).dpop_jkt is None
    pem = ECKey.generate_key("P-384", private=True).as_pem(private=True)
    with_key = AgentClient(FAKE, "agt_1", client_secret="s", dpop_key=pem, http=http)
    assert with_key.dpop_jkt == ECKey.import_key(pem).thumbprint()
    assert AgentClient(FAKE, "agt_1", client_secret="s", dpop_key=True, http=http).dpop_jkt


def test_an_eddsa_key_signs_with_the_name_it_asks_for() -> None:
    # Ed25519 keys sign as "Ed25519" (RFC 9864) unless their JWK names the RFC 8037 "EdDSA".
    key = OKPKey.import_key(
        OKPKey.generate_key("Ed25519", private=True).as_dict(private=True),
        parameters={"alg": "EdDSA"},
    )
    fake = FakeAS(_token())
    fake.client(client_secret=None, private_key=key).access_token()
    assertion = _form(fake.token_requests[0])["client_assertion"]
    with pytest.warns(SecurityWarning, match="RFC 9864"):
        decoded = jwt.decode(assertion, key, algorithms=["EdDSA"])
    assert decoded.header["alg"] == "EdDSA"
    assert decoded.claims["aud"] == FAKE


def test_public_surface() -> None:
    assert "AgentClient" in tether.__all__
    assert "__version__" in tether.__all__
    assert {"AgentClient", "TokenError"} <= set(tether.sdk.__all__)
    assert tether.AgentClient is AgentClient
    assert all(getattr(tether, name) is not None for name in tether.__all__)
    assert json.dumps(sorted(set(tether.sdk.__all__) - set(tether.__all__))) == "[]"
