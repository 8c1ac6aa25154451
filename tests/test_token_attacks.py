"""The attack suite: every case is an attack on Tether's OAuth 2 surface, and every case
asserts that the attack is refused — and, where it applies, that nothing was issued or
changed and that the failure was audited without the secret.

Layers exercised, named in each section:

* HTTP: ``POST /oauth/token``, ``/oauth/introspect``, ``/oauth/revoke`` in-process
  (Starlette TestClient on ``create_app(services)``), form-encoded as RFC 6749 §3.2 wants.
* SERVICE: ``services.oauth.token(form, None, dpop=[...])`` and friends — the DPoP cases at
  the token endpoint run at both layers, and a few defence-in-depth cases pin what the
  service itself must refuse whatever the route in front of it checks.
* SDK: ``tether.sdk.verify_access_token`` and ``TetherAuthMiddleware`` on a small resource
  server (``JWKSCache.from_static(services.signing_keys.jwks())``).

Every case runs on SQLite and on PostgreSQL. Cases touch only agents, credentials and
tokens they create themselves, so they share one deployment per backend (``env``, module
scope, frozen clock); the few that move the clock get a deployment of their own (``fresh``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets as pysecrets
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, Key
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.conftest import BACKENDS, Backend, backend_for, make_settings
from tether.agents.schemas import AgentCreate
from tether.api.app import create_app
from tether.audit.chain import Event
from tether.bootstrap import prepare
from tether.clock import FrozenClock
from tether.container import Services, build_services
from tether.credentials.clients import ASSERTION_TYPE, ClientAuthError
from tether.credentials.dpop import (
    InvalidDPoPProof,
    MemoryDPoPReplayCache,
    access_token_hash,
    require_binding,
    verify_proof,
)
from tether.credentials.errors import InvalidDPoPProofError, InvalidTarget
from tether.credentials.models import AccessTokenRow
from tether.principals import SYSTEM
from tether.sdk import (
    AccessTokenClaims,
    DPoPRequest,
    InvalidToken,
    JWKSCache,
    JWKSUnavailable,
    TetherAuthMiddleware,
    verify_access_token,
)

START = 1_800_000_000  # the frozen "now" of every deployment here (2027-01-15)
RS = "https://rs.example"  # the resource server: its audience and its public origin
RS_URL = f"{RS}/mcp"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
DROP = object()  # a claim or header member to leave out


# -- deployments ----------------------------------------------------------------------------


@dataclass
class Env:
    """One deployment: services on a frozen clock and an in-process HTTP client for it."""

    services: Services
    clock: FrozenClock
    http: TestClient  # sends no credentials by default
    admin: dict[str, str]  # the bootstrap admin's bearer header
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.services.settings.base_url

    @property
    def token_url(self) -> str:
        return self.services.oauth.endpoints.token

    @property
    def now(self) -> int:
        return int(self.clock.now().timestamp())


@contextmanager
def _deployment(backend: Backend, data_dir: Path) -> Iterator[Env]:
    clock = FrozenClock(datetime.fromtimestamp(START, UTC))
    services = build_services(make_settings(backend, data_dir), clock=clock)
    try:
        prepare(services)
        admin = services.settings.admin_token_path.read_text().strip()
        with TestClient(create_app(services)) as http:
            yield Env(services, clock, http, {"Authorization": f"Bearer {admin}"})
    finally:
        services.close()


@pytest.fixture
def fresh(backend: Backend, tmp_path: Path) -> Iterator[Env]:
    """A deployment of its own, for the tests that advance the clock."""
    with _deployment(backend, tmp_path / "data") as e:
        yield e


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One deployment per backend, shared by the module: each test creates the agents it
    attacks. ``extra`` holds a client, a Bearer token for the resource server, and a
    DPoP-bound one whose key is ``holder``. Its clock never moves."""
    tmp = tmp_path_factory.mktemp(f"env-{request.param}")
    with backend_for(request.param, tmp) as backend, _deployment(backend, tmp / "data") as e:
        client = new_client(e, scopes=["read", "write"])
        bearer_token = e.services.oauth.token({**client.form, "resource": RS}, None)
        holder = ECKey.generate_key("P-256")
        bound = e.services.oauth.token(
            {**client.form, "resource": RS}, None, dpop=[token_proof(e, holder)]
        )
        assert bearer_token["token_type"] == "Bearer"
        assert bound["token_type"] == "DPoP"
        e.extra.update(
            client=client,
            token=bearer_token["access_token"],
            holder=holder,
            bound=bound["access_token"],
        )
        yield e


# -- agents, credentials, requests ----------------------------------------------------------


@dataclass(frozen=True)
class Client:
    agent_id: str
    secret: str
    credential_id: str

    @property
    def form(self) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_id": self.agent_id,
            "client_secret": self.secret,
        }


def new_agent(e: Env, scopes: list[str] | None = None, **extra: Any) -> str:
    spec = AgentCreate(
        name="bot",
        owner="admin",
        purpose="attack suite",
        risk_tier="minimal",
        scopes=scopes if scopes is not None else ["read", "write"],
        **extra,
    )
    return e.services.agents.create(SYSTEM, spec).id


def new_client(e: Env, scopes: list[str] | None = None, **key_options: Any) -> Client:
    agent_id = new_agent(e, scopes)
    cred, secret = e.services.credentials.create_api_key(SYSTEM, agent_id, **key_options)
    return Client(agent_id, secret, cred.id)


def keyed_agent(e: Env, **key_options: Any) -> tuple[str, ECKey, str]:
    """An agent authenticating with ``private_key_jwt``: (agent id, its private key, cred id)."""
    agent_id = new_agent(e)
    key = ECKey.generate_key("P-256")
    cred = e.services.credentials.create_public_key(
        SYSTEM, agent_id, jwk=key.as_dict(private=False), **key_options
    )
    return agent_id, key, cred.id


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def post_token(
    e: Env, data: dict[str, str], *, auth: str | None = None, path: str = "/oauth/token"
) -> Any:
    headers = {"Authorization": auth} if auth else {}
    return e.http.post(path, data=data, headers=headers)


def introspect(e: Env, token: str) -> dict[str, Any]:
    response = e.http.post("/oauth/introspect", data={"token": token}, headers=e.admin)
    assert response.status_code == 200, response.text
    return dict(response.json())


def ledger(e: Env) -> list[Event]:
    return list(e.services.audit.export(SYSTEM))


def token_rows(e: Env) -> int:
    with e.services.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(AccessTokenRow)) or 0)


@dataclass(frozen=True)
class Snapshot:
    """What a refused request must leave alone: issued tokens and the ledger."""

    tokens: int
    events: list[Event]

    @classmethod
    def of(cls, e: Env) -> Snapshot:
        return cls(token_rows(e), ledger(e))

    def new_events(self, e: Env) -> list[Event]:
        after = ledger(e)
        assert after[: len(self.events)] == self.events  # nothing rewritten
        return after[len(self.events) :]


def assert_nothing_issued(e: Env, before: Snapshot, response: Any = None) -> list[Event]:
    """No token row, no token.issued event, no access_token in the body; returns new events."""
    if response is not None:
        assert "access_token" not in response.json()
        assert response.headers.get("cache-control") == "no-store"
    assert token_rows(e) == before.tokens
    new = before.new_events(e)
    assert not [ev for ev in new if ev.type == "token.issued"]
    return new


def assert_oauth_error(response: Any, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"] == error, response.text


# -- JOSE by hand ---------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def unsegment(value: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A compact JWS's decoded header and claims, and its signature as sent."""
    head, body, sig = token.split(".")
    return unsegment(head), unsegment(body), sig


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{segment(header)}.{segment(claims)}."


def hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    signing_input = f"{segment(header)}.{segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def signed(header: dict[str, Any], claims: dict[str, Any], key: Key) -> str:
    """A compact JWS with exactly this header (joserfc adds no ``typ``)."""
    header = {k: v for k, v in header.items() if v is not DROP}
    payload = json.dumps({k: v for k, v in claims.items() if v is not DROP}).encode()
    return jws.serialize_compact(header, payload, key, algorithms=[header["alg"]])


def assertion(
    key: Key,
    client_id: str,
    aud: str,
    now: int,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """An RFC 7523 client assertion; ``claims`` override (``DROP`` removes) the defaults."""
    body = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "iat": now,
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    return signed({"alg": "ES256", **(header or {})}, body, key)


def assertion_form(token: str, client_id: str | None = None) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token,
    }
    if client_id is not None:
        form["client_id"] = client_id
    return form


def proof(
    key: Key,
    *,
    htm: str,
    htu: str,
    now: int,
    header: dict[str, Any] | None = None,
    signer: Key | None = None,
    **claims: Any,
) -> str:
    """A DPoP proof (RFC 9449 §4.2); ``signer`` signs it instead of ``key``."""
    head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False), **(header or {})}
    body = {"jti": uuid.uuid4().hex, "htm": htm, "htu": htu, "iat": now, **claims}
    return signed(head, body, signer or key)


def token_proof(e: Env, key: Key, **options: Any) -> str:
    options.setdefault("htm", "POST")
    options.setdefault("htu", e.token_url)
    options.setdefault("now", e.now)
    return proof(key, **options)


# -- the resource server --------------------------------------------------------------------


def sdk_verify(e: Env, token: str, now: int | None = None, **options: Any) -> AccessTokenClaims:
    return verify_access_token(
        token,
        issuer=e.issuer,
        audience=RS,
        now=now if now is not None else e.now,
        jwks=JWKSCache.from_static(e.services.signing_keys.jwks()),
        **options,
    )


def dpop_verifier(now: int, cache: MemoryDPoPReplayCache) -> Callable[..., None]:
    """The middleware's DPoP hook built from Tether's own checks: ``verify_proof`` (§4.3,
    with ``ath``) then ``require_binding`` (§7.1); failures become the SDK's InvalidToken."""

    def check(request: DPoPRequest, token: str, claims: AccessTokenClaims) -> None:
        try:
            found = verify_proof(
                request.proofs,
                method=request.method,
                url=request.url,
                now=now,
                access_token=token,
                replay_cache=cache,
            )
            require_binding(found, claims.cnf_jkt)
        except InvalidDPoPProof as exc:
            raise InvalidToken(exc.message, error="invalid_dpop_proof") from exc

    return check


@contextmanager
def resource_server(e: Env, now: int | None = None) -> Iterator[TestClient]:
    """A Starlette app at https://rs.example guarded by TetherAuthMiddleware."""
    at = now if now is not None else e.now

    async def mcp(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.state.tether_claims.sub})

    app = Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST"])])
    app.add_middleware(
        TetherAuthMiddleware,
        issuer=e.issuer,
        audience=RS,
        jwks=JWKSCache.from_static(e.services.signing_keys.jwks()),
        clock=lambda: at,
        dpop_verifier=dpop_verifier(
            at, MemoryDPoPReplayCache(FrozenClock(datetime.fromtimestamp(at, UTC)))
        ),
    )
    with TestClient(app, base_url=RS) as rs:
        yield rs


def assert_rs_refuses(response: Any, error: str = "invalid_token") -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == error
    assert f'error="{error}"' in response.headers["www-authenticate"]
    assert "sub" not in response.json()


# ===========================================================================================
# 1. Presented-token forgeries — SDK (verify_access_token + middleware) and HTTP introspection
# ===========================================================================================


def forge(e: Env, token: str, name: str) -> str:
    """The forgery ``name`` of a genuine token (real kid, real jti that introspects active).

    "ours-*" cases are signed with Tether's real private key, so only the one broken rule can
    make them fail: defence in depth (a token from a buggy issuer), not attacker power.
    """
    header, claims, signature = parts(token)
    head_b64, body_b64, _sig = token.split(".")
    kid = header["kid"]
    ours = e.services.signing_keys.signer()
    attacker = ECKey.generate_key("P-256")
    widened = {**claims, "scope": "read write admin"}
    if name == "alg-none":
        return unsigned({**header, "alg": "none"}, widened)
    if name == "alg-none-keeping-signature":
        return f"{segment({**header, 'alg': 'none'})}.{body_b64}.{signature}"
    if name == "hs256-keyed-with-our-public-pem":
        public = e.services.signing_keys.public_key(kid)
        assert public is not None
        return hs256({**header, "alg": "HS256"}, widened, public.as_pem(private=False))
    if name == "hs256-keyed-with-our-public-jwk-json":
        jwk = next(k for k in e.services.signing_keys.jwks()["keys"] if k["kid"] == kid)
        return hs256({**header, "alg": "HS256"}, widened, json.dumps(jwk).encode())
    if name == "attacker-key-with-our-kid":
        return signed(header, {**claims, "sub": "agt_attacker"}, attacker)
    if name == "attacker-key-with-unknown-kid":
        return signed({**header, "kid": "attacker-kid"}, claims, attacker)
    if name == "attacker-key-embedded-as-jwk-and-jku":
        evil = {"jwk": attacker.as_dict(private=False), "jku": "https://evil.example/jwks"}
        return signed({**header, **evil}, claims, attacker)
    if name == "kid-swapped-to-our-next-key":
        other = next(k["kid"] for k in e.services.signing_keys.jwks()["keys"] if k["kid"] != kid)
        return f"{segment({**header, 'kid': other})}.{body_b64}.{signature}"
    if name == "alg-swapped-to-es384":
        return f"{segment({**header, 'alg': 'ES384'})}.{body_b64}.{signature}"
    if name == "ours-kid-missing":
        return signed({**header, "kid": DROP}, claims, ours)
    if name == "ours-typ-missing":
        return signed({**header, "typ": DROP}, claims, ours)
    if name == "ours-typ-JWT":
        return signed({**header, "typ": "JWT"}, claims, ours)
    if name == "ours-typ-dpop+jwt":
        return signed({**header, "typ": "dpop+jwt"}, claims, ours)
    if name == "ours-wrong-iss":
        return signed(header, {**claims, "iss": "https://evil.example"}, ours)
    if name == "ours-nbf-in-the-future":
        return signed(header, {**claims, "nbf": START + 3600, "exp": START + 7200}, ours)
    if name == "ours-already-expired":
        old = {"iat": START - 600, "nbf": START - 600, "exp": START - 60}
        return signed(header, {**claims, **old}, ours)
    if name == "tampered-scope-widened":
        return f"{head_b64}.{segment(widened)}.{signature}"
    if name == "tampered-sub-changed":
        return f"{head_b64}.{segment({**claims, 'sub': 'agt_someone_else'})}.{signature}"
    if name == "tampered-exp-extended":
        return f"{head_b64}.{segment({**claims, 'exp': START + 365 * 86_400})}.{signature}"
    if name == "signature-truncated":
        return token[:-4]
    if name == "signature-empty":
        return f"{head_b64}.{body_b64}."
    if name == "signature-bitflipped":
        return token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    if name == "signature-from-another-token":
        return f"{head_b64}.{body_b64}.{e.extra['bound'].rsplit('.', 1)[1]}"
    assert name == "not-a-jwt"
    return "not-a-jwt"


# Each forgery, with the words of the SDK's refusal: the check that must catch it.
FORGERIES = {
    "alg-none": "algorithm is not allowed",
    "alg-none-keeping-signature": "algorithm is not allowed",
    "hs256-keyed-with-our-public-pem": "algorithm is not allowed",
    "hs256-keyed-with-our-public-jwk-json": "algorithm is not allowed",
    "attacker-key-with-our-kid": "signature is invalid",
    "attacker-key-with-unknown-kid": "no signing key of the issuer matches",
    "attacker-key-embedded-as-jwk-and-jku": "signature is invalid",
    "kid-swapped-to-our-next-key": "signature is invalid",
    "alg-swapped-to-es384": "does not fit its algorithm",
    "ours-kid-missing": "names no signing key",
    "ours-typ-missing": "'typ' is not at+jwt",
    "ours-typ-JWT": "'typ' is not at+jwt",
    "ours-typ-dpop+jwt": "'typ' is not at+jwt",
    "ours-wrong-iss": "issued by another issuer",
    "ours-nbf-in-the-future": "not valid yet",
    "ours-already-expired": "has expired",
    "tampered-scope-widened": "signature is invalid",
    "tampered-sub-changed": "signature is invalid",
    "tampered-exp-extended": "signature is invalid",
    "signature-truncated": "signature is invalid",
    "signature-empty": "signature is invalid",
    "signature-bitflipped": "signature is invalid",
    "signature-from-another-token": "signature is invalid",
    "not-a-jwt": "not a signed JWT",
}


def test_control_the_genuine_token_is_accepted_everywhere(env: Env) -> None:
    """The baseline the forgeries are measured against: unforged, everything accepts it."""
    token = env.extra["token"]
    assert sdk_verify(env, token).sub == env.extra["client"].agent_id
    info = introspect(env, token)
    assert info["active"] is True
    assert info["sub"] == env.extra["client"].agent_id
    with resource_server(env) as rs:
        ok = rs.get("/mcp", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200
    assert ok.json() == {"sub": env.extra["client"].agent_id}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_forged_token_is_refused_by_the_sdk_the_middleware_and_introspection(
    env: Env, name: str
) -> None:
    genuine = env.extra["token"]
    forged = forge(env, genuine, name)
    assert forged != genuine
    # SDK: InvalidToken, and not JWKSUnavailable (the keys are right there).
    with pytest.raises(InvalidToken) as refused:
        sdk_verify(env, forged)
    assert not isinstance(refused.value, JWKSUnavailable)
    assert refused.value.error == "invalid_token"
    assert FORGERIES[name] in refused.value.description
    # Middleware: 401 invalid_token, the endpoint never runs.
    with resource_server(env) as rs:
        assert_rs_refuses(rs.get("/mcp", headers={"Authorization": f"Bearer {forged}"}))
    # Introspection (HTTP): exactly {"active": false}, nothing about the genuine token leaks.
    assert introspect(env, forged) == {"active": False}


def test_token_for_another_audience_is_refused_by_the_sdk(env: Env) -> None:
    """A genuine token for another resource server, replayed to ours (RFC 8707 / 9068 §4).
    SDK only: introspection reports ``aud`` and leaves the comparison to the RS."""
    other = env.services.oauth.token(
        {**env.extra["client"].form, "resource": "https://other-rs.example"}, None
    )["access_token"]
    with pytest.raises(InvalidToken, match="audience"):
        sdk_verify(env, other)
    with resource_server(env) as rs:
        assert_rs_refuses(rs.get("/mcp", headers={"Authorization": f"Bearer {other}"}))
    assert introspect(env, other)["aud"] == "https://other-rs.example"  # not RS


def test_token_of_the_default_audience_is_refused_by_a_resource_server(env: Env) -> None:
    """Without ``resource`` the token is for Tether itself (aud = issuer), not for any RS."""
    own = env.services.oauth.token(env.extra["client"].form, None)["access_token"]
    assert parts(own)[1]["aud"] == env.issuer
    with pytest.raises(InvalidToken, match="audience"):
        sdk_verify(env, own)


def test_a_humans_subject_token_is_not_an_access_token(env: Env) -> None:
    """Token-type confusion: the subject token a human mints for one agent (RFC 8693 input,
    signed by Tether's key, ``typ`` JWT) must not work as an access token anywhere."""
    admin = env.services.users.authenticate(env.admin["Authorization"].removeprefix("Bearer "))
    agent = env.extra["client"].agent_id
    subject = env.services.oauth.subject_token(admin, actor=agent, scopes=["read"])["subject_token"]
    header, claims, _ = parts(subject)
    assert header["kid"] in {k["kid"] for k in env.services.signing_keys.jwks()["keys"]}
    assert claims["iss"] == env.issuer  # genuine, and ours
    with pytest.raises(InvalidToken, match="at\\+jwt"):
        sdk_verify(env, subject)
    with resource_server(env) as rs:
        assert_rs_refuses(rs.get("/mcp", headers={"Authorization": f"Bearer {subject}"}))
    assert introspect(env, subject) == {"active": False}


def test_expired_token_is_refused_and_introspects_inactive(fresh: Env) -> None:
    client = new_client(fresh)
    token = fresh.services.oauth.token({**client.form, "resource": RS}, None)["access_token"]
    exp = parts(token)[1]["exp"]
    assert sdk_verify(fresh, token).jti  # control: valid now
    with pytest.raises(InvalidToken, match="expired"):
        sdk_verify(fresh, token, now=exp + 31)  # past the 30 s leeway
    with resource_server(fresh, now=exp + 31) as rs:
        assert_rs_refuses(rs.get("/mcp", headers={"Authorization": f"Bearer {token}"}))
    assert introspect(fresh, token)["active"] is True
    fresh.clock.advance(exp - fresh.now)  # exactly at exp
    assert introspect(fresh, token) == {"active": False}


# ===========================================================================================
# 2. Tokens whose subject lost its rights — HTTP introspection / revocation
# ===========================================================================================


def _issued(e: Env, client: Client) -> str:
    response = post_token(e, {**client.form, "resource": RS})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert introspect(e, token)["active"] is True  # control
    return str(token)


@pytest.mark.parametrize("op", ["kill", "suspend", "retire"])
def test_token_of_a_stopped_agent_introspects_inactive(env: Env, op: str) -> None:
    client = new_client(env)
    token = _issued(env, client)
    agents = env.services.agents
    if op == "kill":
        cut = agents.kill(SYSTEM, client.agent_id, reason="rogue")
        assert cut["cut_off"]["tokens"] == 1  # the row itself is revoked, too
    elif op == "suspend":
        agents.suspend(SYSTEM, client.agent_id, reason="investigating")
    else:
        agents.retire(SYSTEM, client.agent_id, reason="decommissioned")
    assert introspect(env, token) == {"active": False}
    # ...and it cannot fetch a replacement (audited; see section 3 for the reasons).
    assert_oauth_error(post_token(env, client.form), 401, "invalid_client")


def test_revoked_token_introspects_inactive(env: Env) -> None:
    client = new_client(env)
    token = _issued(env, client)
    revoked = env.http.post(
        "/oauth/revoke",
        data={"token": token, "client_id": client.agent_id, "client_secret": client.secret},
    )
    assert revoked.status_code == 200
    assert introspect(env, token) == {"active": False}
    assert [ev.type for ev in ledger(env)].count("token.revoked") == 1


def test_another_agent_cannot_revoke_my_token(env: Env) -> None:
    """Revocation is not a weapon: B's revoke of A's token is a silent no-op (RFC 7009 §2.2)."""
    victim, attacker = new_client(env), new_client(env)
    token = _issued(env, victim)
    before = Snapshot.of(env)
    response = env.http.post(
        "/oauth/revoke",
        data={
            "token": token,
            "client_id": attacker.agent_id,
            "client_secret": attacker.secret,
        },
    )
    assert response.status_code == 200
    assert introspect(env, token)["active"] is True
    assert before.new_events(env) == []


def test_a_non_admin_user_cannot_revoke_an_agent_token(env: Env) -> None:
    client = new_client(env)
    token = _issued(env, client)
    username = f"sup{uuid.uuid4().hex[:8]}"
    user = env.http.post(
        "/v1/users", json={"username": username, "role": "supervisor"}, headers=env.admin
    ).json()
    user_token = env.http.post(f"/v1/users/{user['id']}/tokens", json={}, headers=env.admin).json()[
        "token"
    ]
    before = Snapshot.of(env)
    response = env.http.post(
        "/oauth/revoke", data={"token": token}, headers={"Authorization": f"Bearer {user_token}"}
    )
    assert response.status_code == 200
    assert introspect(env, token)["active"] is True
    assert before.new_events(env) == []


@pytest.mark.parametrize("caller", ["nobody", "wrong-secret", "access-token-as-bearer"])
def test_introspection_requires_an_authenticated_caller(env: Env, caller: str) -> None:
    """Token scanning without credentials: 401, and the token's claims do not leak."""
    client = new_client(env)
    token = _issued(env, client)
    data = {"token": token}
    headers: dict[str, str] = {}
    if caller == "wrong-secret":
        data.update(client_id=client.agent_id, client_secret="tsk_guess")
    elif caller == "access-token-as-bearer":
        headers["Authorization"] = f"Bearer {token}"  # an agent token is not a user token
    response = env.http.post("/oauth/introspect", data=data, headers=headers)
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] in ("invalid_client", "invalid_request")
    assert "active" not in response.json()
    assert client.agent_id not in response.text


def test_token_of_an_expired_agent_introspects_inactive(fresh: Env) -> None:
    agent_id = new_agent(fresh, expires_at=datetime.fromtimestamp(START + 60, UTC))
    _cred, secret = fresh.services.credentials.create_api_key(SYSTEM, agent_id)
    client = Client(agent_id, secret, _cred.id)
    token = _issued(fresh, client)
    fresh.clock.advance(120)  # the agent expired 60 s ago; the token's exp is START + 300
    assert_oauth_error(post_token(fresh, client.form), 401, "invalid_client")  # holds today
    assert introspect(fresh, token) == {"active": False}


# ===========================================================================================
# 3. Client authentication at the token endpoint — HTTP; each is 401 invalid_client, no
#    token, one client.auth_failed event with the reason and without the secret/assertion
# ===========================================================================================


@dataclass
class Attempt:
    data: dict[str, str]
    client_id: str | None
    method: str
    reason: str
    auth: str | None = None
    never_logged: tuple[str, ...] = ()


def _wrong_secret_post(e: Env) -> Attempt:
    c = new_client(e)
    guess = "tsk_" + pysecrets.token_urlsafe(32)
    return Attempt(
        {**c.form, "client_secret": guess},
        c.agent_id,
        "client_secret_post",
        "unknown client or credential",
        never_logged=(guess, c.secret),
    )


def _wrong_secret_basic(e: Env) -> Attempt:
    c = new_client(e)
    guess = "tsk_" + pysecrets.token_urlsafe(32)
    return Attempt(
        {"grant_type": "client_credentials"},
        c.agent_id,
        "client_secret_basic",
        "unknown client or credential",
        auth=basic(c.agent_id, guess),
        never_logged=(guess, c.secret),
    )


def _secret_of_a_with_id_of_b(e: Env) -> Attempt:
    a, b = new_client(e), new_client(e, scopes=["read", "write", "admin"])
    return Attempt(
        {**a.form, "client_id": b.agent_id},
        b.agent_id,
        "client_secret_post",
        "unknown client or credential",
        never_logged=(a.secret, b.secret),
    )


def _secret_of_a_with_id_of_b_basic(e: Env) -> Attempt:
    a, b = new_client(e), new_client(e)
    return Attempt(
        {"grant_type": "client_credentials"},
        b.agent_id,
        "client_secret_basic",
        "unknown client or credential",
        auth=basic(b.agent_id, a.secret),
        never_logged=(a.secret,),
    )


def _deleted_credential(e: Env) -> Attempt:
    c = new_client(e)
    e.services.credentials.delete(SYSTEM, c.agent_id, c.credential_id)
    return Attempt(
        c.form, c.agent_id, "client_secret_post", "credential deleted", never_logged=(c.secret,)
    )


def _expired_credential(e: Env) -> Attempt:
    c = new_client(e, expires_in=60)
    assert post_token(e, c.form).status_code == 200  # control: valid until it expires
    e.clock.advance(60)
    return Attempt(
        c.form, c.agent_id, "client_secret_post", "credential expired", never_logged=(c.secret,)
    )


def _expired_agent(e: Env) -> Attempt:
    agent_id = new_agent(e, expires_at=datetime.fromtimestamp(START + 60, UTC))
    cred, secret = e.services.credentials.create_api_key(SYSTEM, agent_id)
    e.clock.advance(61)
    return Attempt(
        Client(agent_id, secret, cred.id).form,
        agent_id,
        "client_secret_post",
        "agent expired",
        never_logged=(secret,),
    )


def _stopped(op: str, status: str) -> Callable[[Env], Attempt]:
    def build(e: Env) -> Attempt:
        c = new_client(e)
        if op == "kill":
            e.services.agents.kill(SYSTEM, c.agent_id, reason="rogue")
        else:
            getattr(e.services.agents, op)(SYSTEM, c.agent_id, reason="stop")
        return Attempt(
            c.form, c.agent_id, "client_secret_post", f"agent is {status}", never_logged=(c.secret,)
        )

    return build


def _unknown_client(e: Env) -> Attempt:
    return Attempt(
        {
            "grant_type": "client_credentials",
            "client_id": "agt_nobody",
            "client_secret": "tsk_nothing",
        },
        "agt_nobody",
        "client_secret_post",
        "unknown client or credential",
        never_logged=("tsk_nothing",),
    )


def _pkjwt(
    reason: str,
    *,
    aud: str = "issuer",
    header: dict[str, Any] | None = None,
    sign: str = "own",
    **claims: Any,
) -> Callable[[Env], Attempt]:
    """A private_key_jwt attempt with one thing wrong."""

    def build(e: Env) -> Attempt:
        agent_id, key, _cred = keyed_agent(e)
        endpoints = e.services.oauth.endpoints
        audience = {"issuer": e.issuer, "introspection": endpoints.introspection}.get(aud, aud)
        if sign == "unregistered":
            token = assertion(ECKey.generate_key("P-256"), agent_id, audience, e.now, **claims)
        elif sign == "other-agent":
            _other, other_key, _ = keyed_agent(e)
            token = assertion(other_key, agent_id, audience, e.now, **claims)
        elif sign == "none":
            body = {
                "iss": agent_id,
                "sub": agent_id,
                "aud": audience,
                "iat": e.now,
                "exp": e.now + 60,
                "jti": uuid.uuid4().hex,
            }
            token = unsigned({"alg": "none"}, body)
        elif sign == "hs256-public-jwk":
            body = {
                "iss": agent_id,
                "sub": agent_id,
                "aud": audience,
                "iat": e.now,
                "exp": e.now + 60,
                "jti": uuid.uuid4().hex,
            }
            token = hs256({"alg": "HS256"}, body, json.dumps(key.as_dict(private=False)).encode())
        else:
            token = assertion(key, agent_id, audience, e.now, header=header, **claims)
        return Attempt(
            assertion_form(token, agent_id),
            agent_id,
            "private_key_jwt",
            reason,
            never_logged=tuple(filter(None, (token, token.rsplit(".", 1)[1]))),
        )

    return build


def _pkjwt_replayed(e: Env) -> Attempt:
    agent_id, key, _cred = keyed_agent(e)
    token = assertion(key, agent_id, e.issuer, e.now)
    first = post_token(e, assertion_form(token, agent_id))
    assert first.status_code == 200, first.text  # the first use is legitimate
    return Attempt(
        assertion_form(token, agent_id),
        agent_id,
        "private_key_jwt",
        "assertion jti already used (replay)",
        never_logged=(token,),
    )


def _pkjwt_replayed_after_introspection(e: Env) -> Attempt:
    """Spent at /oauth/introspect, replayed at /oauth/token: one jti space for all endpoints."""
    agent_id, key, _cred = keyed_agent(e)
    token = assertion(key, agent_id, e.issuer, e.now)
    form = {
        "token": "x",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": token,
        "client_id": agent_id,
    }
    assert e.http.post("/oauth/introspect", data=form).json() == {"active": False}
    return Attempt(
        assertion_form(token, agent_id),
        agent_id,
        "private_key_jwt",
        "assertion jti already used (replay)",
        never_logged=(token,),
    )


def _pkjwt_deleted_key(e: Env) -> Attempt:
    agent_id, key, cred_id = keyed_agent(e)
    e.services.credentials.delete(SYSTEM, agent_id, cred_id)
    token = assertion(key, agent_id, e.issuer, e.now)
    return Attempt(
        assertion_form(token, agent_id),
        agent_id,
        "private_key_jwt",
        "assertion signature does not verify with a registered key",
        never_logged=(token,),
    )


def _pkjwt_expired_key(e: Env) -> Attempt:
    agent_id, key, _cred = keyed_agent(e, expires_in=60)
    e.clock.advance(61)
    token = assertion(key, agent_id, e.issuer, e.now)
    return Attempt(
        assertion_form(token, agent_id),
        agent_id,
        "private_key_jwt",
        "credential expired",
        never_logged=(token,),
    )


def _pkjwt_iss_of_another_agent(e: Env) -> Attempt:
    """No client_id in the form: the server picks keys by the (unverified) iss, so the
    attacker names the victim and signs with its own key."""
    victim, _vkey, _ = keyed_agent(e)
    _attacker, akey, _ = keyed_agent(e)
    token = assertion(akey, victim, e.issuer, e.now)
    return Attempt(
        assertion_form(token),
        victim,
        "private_key_jwt",
        "assertion signature does not verify with a registered key",
        never_logged=(token,),
    )


CLIENT_AUTH_ATTACKS: dict[str, Callable[[Env], Attempt]] = {
    "wrong-secret-post": _wrong_secret_post,
    "wrong-secret-basic": _wrong_secret_basic,
    "unknown-client-id": _unknown_client,
    "secret-of-agent-a-with-client-id-of-b": _secret_of_a_with_id_of_b,
    "secret-of-agent-a-with-client-id-of-b-basic": _secret_of_a_with_id_of_b_basic,
    "deleted-credential": _deleted_credential,
    "expired-credential": _expired_credential,
    "suspended-agent": _stopped("suspend", "suspended"),
    "killed-agent": _stopped("kill", "revoked"),
    "retired-agent": _stopped("retire", "retired"),
    "expired-agent": _expired_agent,
    "pkjwt-replayed-jti": _pkjwt_replayed,
    "pkjwt-replayed-jti-across-endpoints": _pkjwt_replayed_after_introspection,
    "pkjwt-wrong-aud": _pkjwt(
        "assertion aud must be the issuer or the token endpoint",
        aud="https://evil.example/oauth/token",
    ),
    "pkjwt-aud-introspection-endpoint": _pkjwt(
        "assertion aud must be the issuer or the token endpoint", aud="introspection"
    ),
    "pkjwt-iss-differs-from-sub": _pkjwt(
        "assertion iss and sub must both be the client_id", sub="agt_someone_else"
    ),
    "pkjwt-iss-of-another-agent-signed-by-own-key": _pkjwt_iss_of_another_agent,
    "pkjwt-unregistered-key": _pkjwt(
        "assertion signature does not verify with a registered key", sign="unregistered"
    ),
    "pkjwt-key-of-another-agent": _pkjwt(
        "assertion signature does not verify with a registered key", sign="other-agent"
    ),
    "pkjwt-deleted-key": _pkjwt_deleted_key,
    "pkjwt-expired-key": _pkjwt_expired_key,
    "pkjwt-exp-too-far-in-the-future": _pkjwt(
        "assertion exp is more than 3600s away", exp=START + 3600 + 31
    ),
    "pkjwt-expired": _pkjwt("assertion expired", iat=START - 600, exp=START - 31),
    "pkjwt-no-exp": _pkjwt("assertion has no exp", exp=DROP),
    "pkjwt-nbf-in-the-future": _pkjwt("assertion not yet valid (nbf)", nbf=START + 600),
    "pkjwt-iat-in-the-future": _pkjwt("assertion issued in the future (iat)", iat=START + 600),
    "pkjwt-no-jti": _pkjwt("assertion needs a jti of 8-200 characters", jti=DROP),
    "pkjwt-alg-none": _pkjwt(
        "assertion signature does not verify with a registered key", sign="none"
    ),
    "pkjwt-hs256-keyed-with-registered-public-jwk": _pkjwt(
        "assertion signature does not verify with a registered key", sign="hs256-public-jwk"
    ),
}


# These advance the clock, so they run on a deployment of their own.
MOVES_THE_CLOCK = ("expired-credential", "expired-agent", "pkjwt-expired-key")


@pytest.mark.parametrize("name", [n for n in CLIENT_AUTH_ATTACKS if n not in MOVES_THE_CLOCK])
def test_client_authentication_attack_is_refused_and_audited(env: Env, name: str) -> None:
    _refused_and_audited(env, CLIENT_AUTH_ATTACKS[name](env))


@pytest.mark.parametrize("name", MOVES_THE_CLOCK)
def test_client_authentication_attack_after_time_passed_is_refused_and_audited(
    fresh: Env, name: str
) -> None:
    _refused_and_audited(fresh, CLIENT_AUTH_ATTACKS[name](fresh))


def _refused_and_audited(env: Env, attempt: Attempt) -> None:
    before = Snapshot.of(env)
    response = post_token(env, attempt.data, auth=attempt.auth)

    assert_oauth_error(response, 401, "invalid_client")
    if attempt.method == "client_secret_basic":  # RFC 6749 §5.2
        assert response.headers["www-authenticate"].startswith("Basic")
    new = assert_nothing_issued(env, before, response)
    assert [ev.type for ev in new] == ["client.auth_failed"]
    event = new[0]
    assert event.outcome == "failure"
    assert event.details == {
        "client_id": attempt.client_id,
        "method": attempt.method,
        "reason": attempt.reason,
    }
    dumped = json.dumps(event.to_json())
    for secret in attempt.never_logged:
        assert secret not in dumped


def test_concurrent_replays_of_one_assertion_yield_exactly_one_token(env: Env) -> None:
    """SERVICE layer, 8 threads racing one private_key_jwt assertion (the Hydra bug)."""
    agent_id, key, _cred = keyed_agent(env)
    form = assertion_form(assertion(key, agent_id, env.issuer, env.now), agent_id)
    before = Snapshot.of(env)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def race() -> None:
        barrier.wait()
        try:
            env.services.oauth.token(dict(form), None)
            result = "token"
        except ClientAuthError as exc:
            result = exc.failure.reason
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["assertion jti already used (replay)"] * 7 + ["token"]
    assert token_rows(env) == before.tokens + 1
    assert [ev.type for ev in before.new_events(env)].count("client.auth_failed") == 7


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
def test_no_client_authentication_at_all_is_refused(env: Env, path: str) -> None:
    """A client_id alone proves nothing (RFC 6749 §2.3): no token, no introspection."""
    victim = new_client(env)
    token = _issued(env, victim)
    before = Snapshot.of(env)
    data = {"grant_type": "client_credentials", "client_id": victim.agent_id, "token": token}
    response = env.http.post(path, data=data)
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] in ("invalid_client", "invalid_request")
    assert "active" not in response.json()
    assert_nothing_issued(env, before, response)
    assert introspect(env, token)["active"] is True  # the revoke did not happen


@pytest.mark.parametrize(
    "combo",
    ["basic+post", "post+private_key_jwt", "basic+private_key_jwt", "basic-body-id-differs"],
)
def test_ambiguous_client_authentication_is_invalid_request(env: Env, combo: str) -> None:
    """Two authentication methods at once (RFC 6749 §2.3): 400, never a token."""
    c = new_client(env)
    agent_id, key, _cred = keyed_agent(env)
    pkjwt = assertion_form(assertion(key, agent_id, env.issuer, env.now), agent_id)
    auth: str | None = basic(c.agent_id, c.secret)
    if combo == "basic+post":
        data = c.form
    elif combo == "post+private_key_jwt":
        data, auth = {**pkjwt, "client_secret": c.secret}, None
    elif combo == "basic+private_key_jwt":
        data = pkjwt
    else:
        data = {"grant_type": "client_credentials", "client_id": agent_id}
    before = Snapshot.of(env)
    response = post_token(env, data, auth=auth)
    assert_oauth_error(response, 400, "invalid_request")
    assert_nothing_issued(env, before, response)


@pytest.mark.parametrize(
    ("path", "how"),
    [("/oauth/token", "post"), ("/oauth/token", "basic"), ("/oauth/token", "private_key_jwt"),
     ("/oauth/introspect", "post"), ("/oauth/introspect", "basic")],
    ids=["token-post", "token-basic", "token-private_key_jwt", "introspect-post",
         "introspect-basic"],
)  # fmt: skip
def test_nul_byte_in_client_id_is_refused_never_a_500(env: Env, path: str, how: str) -> None:
    """HTTP. PostgreSQL refuses NUL in text: a NUL that reaches a query is a 500 and an
    unaudited failure. Either the route refuses the request as malformed (400), or the
    failed authentication is a 401 with its client.auth_failed event."""
    c = new_client(env)
    evil = c.agent_id + "\x00"
    headers: dict[str, str] = {}
    if how == "post":
        data = {**c.form, "client_id": evil, "token": "x"}
    elif how == "basic":
        data = {"grant_type": "client_credentials", "token": "x"}
        headers["Authorization"] = basic(evil, c.secret)
    else:
        data = assertion_form("e30.e30.e30", evil)
    before = Snapshot.of(env)
    with TestClient(create_app(env.services), raise_server_exceptions=False) as http:
        response = http.post(path, data=data, headers=headers)
    assert response.status_code in (400, 401), response.text
    new = assert_nothing_issued(env, before, response)
    if response.status_code == 400:
        assert response.json()["error"] == "invalid_request"
        assert new == []
    else:
        assert response.json()["error"] == "invalid_client"
        assert [ev.type for ev in new] == ["client.auth_failed"]


@pytest.mark.parametrize("how", ["service-post", "service-private_key_jwt"])
def test_service_refuses_and_audits_a_nul_byte_in_client_id(env: Env, how: str) -> None:
    """SERVICE layer, defence in depth: whatever transport sits in front of it."""
    c = new_client(env)
    evil = c.agent_id + "\x00"
    if how == "service-post":
        form = {**c.form, "client_id": evil}
    else:
        form = assertion_form("e30.e30.e30", evil)
    before = Snapshot.of(env)
    with pytest.raises(ClientAuthError):
        env.services.oauth.token(form, None)
    new = assert_nothing_issued(env, before)
    assert [ev.type for ev in new] == ["client.auth_failed"]


# ===========================================================================================
# 4. Token request abuse — HTTP; the client authenticates fine, the request is still refused
#    and changes nothing (not even the ledger)
# ===========================================================================================


def _abuse(
    e: Env,
    extra: dict[str, str],
    *,
    scopes: list[str] | None = None,
    ceiling: list[str] | None = None,
) -> tuple[Any, Snapshot]:
    agent_id = new_agent(e, scopes if scopes is not None else ["read", "write"])
    _cred, secret = e.services.credentials.create_api_key(SYSTEM, agent_id, scopes=ceiling)
    form = {"grant_type": "client_credentials", "client_id": agent_id, "client_secret": secret}
    before = Snapshot.of(e)
    return post_token(e, {**form, **extra}), before


@pytest.mark.parametrize(
    "scope",
    ["read admin", "admin", "read write admin", "READ", "read*"],
    ids=["one-extra", "foreign", "superset", "case-variant", "wildcard"],
)
def test_scope_beyond_the_agents_scopes_is_invalid_scope(env: Env, scope: str) -> None:
    response, before = _abuse(env, {"scope": scope})
    assert_oauth_error(response, 400, "invalid_scope")
    assert assert_nothing_issued(env, before, response) == []


def test_scope_beyond_the_credentials_ceiling_is_invalid_scope(env: Env) -> None:
    """The agent may hold read and write; this API key may only ever yield read."""
    response, before = _abuse(env, {"scope": "write"}, ceiling=["read"])
    assert_oauth_error(response, 400, "invalid_scope")
    assert assert_nothing_issued(env, before, response) == []
    # Control and the default: no scope asked, the ceiling (not the agent's scopes) applies.
    ok, _ = _abuse(env, {}, ceiling=["read"])
    assert ok.json()["scope"] == "read"


@pytest.mark.parametrize(
    "scope",
    ["read\twrite", "read  write", " read", "read\nwrite", '"read"', "read\\write"],
    ids=["tab", "double-space", "leading-space", "newline", "quotes", "backslash"],
)
def test_malformed_scope_is_invalid_scope(env: Env, scope: str) -> None:
    response, before = _abuse(env, {"scope": scope})
    assert_oauth_error(response, 400, "invalid_scope")
    assert assert_nothing_issued(env, before, response) == []


NOT_A_RESOURCE = {
    "bare-word": "not-a-uri",
    "relative": "/relative/path",
    "fragment": "https://rs.example/#fragment",
    "no-host": "https://",
    "no-authority": "urn:no-authority",
    "too-long": "https://rs.example/" + "a" * 500,
    "space-in-host": "https://rs.exa mple/",
    "space-in-path": "https://rs.example/a b",
    "control-char": "https://rs.example/\x01",
    "nul": "https://rs.example/\x00",
}


@pytest.mark.parametrize("name", list(NOT_A_RESOURCE))
def test_malformed_resource_is_invalid_target(env: Env, name: str) -> None:
    """HTTP. RFC 8707 §2: ``resource`` is an absolute URI without a fragment, else
    invalid_target (a NUL may be refused earlier, as a malformed request)."""
    response, before = _abuse(env, {"resource": NOT_A_RESOURCE[name]})
    expected = ("invalid_target", "invalid_request") if name == "nul" else ("invalid_target",)
    assert response.status_code == 400, response.text
    assert response.json()["error"] in expected
    assert assert_nothing_issued(env, before, response) == []


@pytest.mark.parametrize("name", ["space-in-host", "space-in-path", "control-char"])
def test_service_refuses_a_resource_that_is_not_a_uri(env: Env, name: str) -> None:
    """SERVICE layer, defence in depth."""
    form = {**new_client(env).form, "resource": NOT_A_RESOURCE[name]}
    before = Snapshot.of(env)
    with pytest.raises(InvalidTarget):
        env.services.oauth.token(form, None)
    assert_nothing_issued(env, before)


@pytest.mark.parametrize("name", ["scope", "client_secret", "grant_type", "resource"])
def test_repeated_parameter_is_invalid_request(env: Env, name: str) -> None:
    """RFC 6749 §3.2: parameters must not repeat (a second scope must not widen the first)."""
    c = new_client(env, scopes=["read", "write"])
    values = {
        "scope": ("read", "write"),
        "client_secret": (c.secret, "tsk_other"),
        "grant_type": ("client_credentials", "client_credentials"),
        "resource": (RS, "https://other-rs.example"),
    }[name]
    body = "&".join(f"{k}={v}" for k, v in {**c.form, name: values[0]}.items())
    body += f"&{name}={values[1]}"
    before = Snapshot.of(env)
    response = env.http.post(
        "/oauth/token",
        content=body.encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_oauth_error(response, 400, "invalid_request")
    assert assert_nothing_issued(env, before, response) == []


@pytest.mark.parametrize(
    "grant",
    [
        "password",
        "authorization_code",
        "refresh_token",
        "implicit",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "CLIENT_CREDENTIALS",
        "",
    ],
)
def test_unsupported_grant_type_is_refused(env: Env, grant: str) -> None:
    c = new_client(env)
    extra = {"username": "admin", "password": "x", "code": "x", "refresh_token": "x"}
    before = Snapshot.of(env)
    response = post_token(env, {**c.form, **extra, "grant_type": grant})
    assert_oauth_error(response, 400, "unsupported_grant_type")
    assert_nothing_issued(env, before, response)


def test_token_exchange_without_an_actor_token_is_refused(env: Env) -> None:
    """HTTP. The brief for this suite had RFC 8693 answering unsupported_grant_type; token
    exchange landed meanwhile (commit 1093667), so this case now pins the refusal of a
    half-formed exchange: another agent's token as subject_token, no actor_token, and a
    widened scope. The exchange attack family (scope widening, delegation depth, revoked
    actor anywhere in the chain, may_act, audience escape) lives with that feature, in
    tests/test_token_exchange.py."""
    victim, attacker = new_client(env, scopes=["read"]), new_client(env, ["read", "write"])
    subject = _issued(env, victim)
    before = Snapshot.of(env)
    response = post_token(
        env,
        {
            **attacker.form,
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject,
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "scope": "read write",
        },
    )
    assert_oauth_error(response, 400, "invalid_request")
    assert assert_nothing_issued(env, before, response) == []
    assert not [ev for ev in before.new_events(env) if ev.type == "token.exchanged"]


@pytest.mark.parametrize("kind", ["json", "multipart", "no-content-type", "query-string"])
def test_token_request_that_is_not_a_form_is_invalid_request(env: Env, kind: str) -> None:
    c = new_client(env)
    before = Snapshot.of(env)
    if kind == "json":
        response = env.http.post("/oauth/token", json=c.form)
    elif kind == "multipart":
        response = env.http.post("/oauth/token", files={k: (None, v) for k, v in c.form.items()})
    elif kind == "no-content-type":
        body = "&".join(f"{k}={v}" for k, v in c.form.items()).encode()
        response = env.http.post("/oauth/token", content=body)
    else:  # credentials in the URL (RFC 6749 §2.3.1 forbids it)
        response = env.http.post("/oauth/token", params=c.form)
    assert_oauth_error(response, 400, "invalid_request")
    assert assert_nothing_issued(env, before, response) == []


@pytest.mark.parametrize(
    "header",
    ["Basic !!!notbase64", "Basic " + base64.b64encode(b"nocolon").decode()],
    ids=["not-base64", "no-colon"],
)
def test_malformed_basic_header_is_invalid_client(env: Env, header: str) -> None:
    """RFC 6749 §5.2: Basic credentials that cannot even be read are a failed client
    authentication — 401 ``invalid_client`` with the Basic challenge (issue 10, item 2)."""
    before = Snapshot.of(env)
    response = post_token(env, {"grant_type": "client_credentials"}, auth=header)
    assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["www-authenticate"].startswith("Basic")
    assert_nothing_issued(env, before, response)


# ===========================================================================================
# 5. DPoP at the token endpoint — HTTP and SERVICE layers, each case at both (the route
#    started handing the DPoP header to the service while this suite was written)
# ===========================================================================================


def dpop_token_request(e: Env, layer: str, proofs: list[str]) -> dict[str, Any]:
    """A client_credentials request with these DPoP header values, at one layer: the token
    or the OAuth error, as a dict."""
    form = e.extra["client"].form
    if layer == "service":
        try:
            return e.services.oauth.token(form, None, dpop=proofs)
        except InvalidDPoPProofError as exc:
            return exc.to_dict()
    response = e.http.post("/oauth/token", data=form, headers=[("DPoP", p) for p in proofs])
    assert response.status_code in (200, 400), response.text
    return dict(response.json())


def _dpop_attack(e: Env, layer: str, name: str) -> list[str]:
    key = ECKey.generate_key("P-256")
    if name == "replayed-proof":
        first = token_proof(e, key)
        assert dpop_token_request(e, layer, [first])["token_type"] == "DPoP"  # first use
        return [first]
    if name == "two-proofs":
        return [token_proof(e, key), token_proof(e, key)]
    if name == "garbage":
        return ["not.a.proof"]
    builders: dict[str, Callable[[], str]] = {
        "proof-for-another-url": lambda: token_proof(
            e, key, htu="https://evil.example/oauth/token"
        ),
        "proof-for-another-path": lambda: token_proof(e, key, htu=e.issuer + "/oauth/introspect"),
        "proof-for-get": lambda: token_proof(e, key, htm="GET"),
        "proof-for-lowercase-post": lambda: token_proof(e, key, htm="post"),
        "signed-by-a-key-other-than-its-jwk": lambda: token_proof(
            e, key, signer=ECKey.generate_key("P-256")
        ),
        "private-key-in-jwk": lambda: token_proof(
            e, key, header={"jwk": key.as_dict(private=True)}
        ),
        "alg-none": lambda: unsigned(
            {"typ": "dpop+jwt", "alg": "none", "jwk": key.as_dict(private=False)},
            {"jti": uuid.uuid4().hex, "htm": "POST", "htu": e.token_url, "iat": e.now},
        ),
        "alg-none-with-a-signature": lambda: (
            unsigned(
                {"typ": "dpop+jwt", "alg": "none", "jwk": key.as_dict(private=False)},
                {"jti": uuid.uuid4().hex, "htm": "POST", "htu": e.token_url, "iat": e.now},
            )
            + b64(b"not a signature")
        ),
        "hs256-keyed-with-its-jwk": lambda: hs256(
            {"typ": "dpop+jwt", "alg": "HS256", "jwk": key.as_dict(private=False)},
            {"jti": uuid.uuid4().hex, "htm": "POST", "htu": e.token_url, "iat": e.now},
            json.dumps(key.as_dict(private=False)).encode(),
        ),
        "typ-jwt": lambda: token_proof(e, key, header={"typ": "JWT"}),
        "stale-iat": lambda: token_proof(e, key, now=e.now - 3600),
        "future-iat": lambda: token_proof(e, key, now=e.now + 600),
        "no-jti": lambda: token_proof(e, key, jti=DROP),
    }
    return [builders[name]()]


# HTTP: POST /oauth/token with DPoP headers; SERVICE: services.oauth.token(..., dpop=[...]).
LAYERS = ["http", "service"]
# Each attack, with the words of the refusal it must get (not just any refusal).
DPOP_TOKEN_ATTACKS = {
    "replayed-proof": "already used",
    "two-proofs": "expected one DPoP header, got 2",
    "garbage": "not a compact JWS",
    "proof-for-another-url": "htu does not match",
    "proof-for-another-path": "htu does not match",
    "proof-for-get": "htm does not match",
    "proof-for-lowercase-post": "htm does not match",
    "signed-by-a-key-other-than-its-jwk": "signature does not verify",
    "private-key-in-jwk": "jwk must be a public key",
    "alg-none": "not a compact JWS",  # the empty signature fails first
    "alg-none-with-a-signature": "asymmetric",
    "hs256-keyed-with-its-jwk": "asymmetric",
    "typ-jwt": "typ must be",
    "stale-iat": "iat is too old",
    "future-iat": "iat is in the future",
    "no-jti": "jti must be",
}


@pytest.mark.parametrize("layer", LAYERS)
def test_control_a_valid_dpop_proof_binds_the_token(env: Env, layer: str) -> None:
    """The baseline: at this layer a good proof does bind (so a refusal below is the proof's
    fault, and the HTTP route really hands the DPoP header on)."""
    key = ECKey.generate_key("P-256")
    body = dpop_token_request(env, layer, [token_proof(env, key)])
    assert body["token_type"] == "DPoP"
    assert parts(body["access_token"])[1]["cnf"] == {"jkt": key.thumbprint()}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("name", list(DPOP_TOKEN_ATTACKS))
def test_bad_dpop_proof_at_the_token_endpoint_is_refused(env: Env, name: str, layer: str) -> None:
    proofs = _dpop_attack(env, layer, name)
    before = Snapshot.of(env)
    body = dpop_token_request(env, layer, proofs)
    assert body["error"] == "invalid_dpop_proof", body
    assert DPOP_TOKEN_ATTACKS[name] in body["error_description"], body
    assert "access_token" not in body
    assert assert_nothing_issued(env, before) == []


# ===========================================================================================
# 6. DPoP-bound tokens at the resource server — SDK middleware with Tether's verify_proof +
#    require_binding as dpop_verifier (RFC 9449 §7)
# ===========================================================================================


def _rs_proof(e: Env, key: Key, token: str, **options: Any) -> str:
    options.setdefault("htm", "GET")
    options.setdefault("htu", RS_URL)
    options.setdefault("now", e.now)
    options.setdefault("ath", access_token_hash(token))
    return proof(key, **options)


def test_control_the_bound_token_with_its_own_proof_is_accepted(env: Env) -> None:
    token, holder = env.extra["bound"], env.extra["holder"]
    assert parts(token)[1]["cnf"] == {"jkt": holder.thumbprint()}
    with resource_server(env) as rs:
        ok = rs.get(
            "/mcp",
            headers={"Authorization": f"DPoP {token}", "DPoP": _rs_proof(env, holder, token)},
        )
    assert ok.status_code == 200, ok.text


def _bound(t: str, *proofs: str, scheme: str = "DPoP") -> list[tuple[str, str]]:
    """Request headers as pairs (DPoP may repeat) for GET https://rs.example/mcp."""
    return [("Authorization", f"{scheme} {t}"), *(("DPoP", p) for p in proofs)]


# Each attack: the headers it sends, and the words of the refusal it must get.
RS_DPOP_ATTACKS: dict[str, tuple[Callable[[Env, str, Key], list[tuple[str, str]]], str]] = {
    "bound-token-as-bearer-without-proof": (
        lambda e, t, k: _bound(t, scheme="Bearer"),
        "must use the DPoP scheme",
    ),
    "bound-token-as-bearer-with-valid-proof": (
        lambda e, t, k: _bound(t, _rs_proof(e, k, t), scheme="Bearer"),
        "must use the DPoP scheme",
    ),
    "dpop-scheme-without-proof": (lambda e, t, k: _bound(t), "expected one DPoP header, got 0"),
    "proof-from-another-key": (
        lambda e, t, k: _bound(t, _rs_proof(e, ECKey.generate_key("P-256"), t)),
        "not the key the token is bound to",
    ),
    "proof-with-ath-of-another-token": (
        lambda e, t, k: _bound(t, _rs_proof(e, k, t, ath=access_token_hash("x"))),
        "ath does not match",
    ),
    "proof-without-ath": (
        lambda e, t, k: _bound(t, _rs_proof(e, k, t, ath=DROP)),
        "ath is required",
    ),
    "proof-for-another-url": (
        lambda e, t, k: _bound(t, _rs_proof(e, k, t, htu=RS + "/admin")),
        "htu does not match",
    ),
    "proof-for-post": (
        lambda e, t, k: _bound(t, _rs_proof(e, k, t, htm="POST")),
        "htm does not match",
    ),
    "token-endpoint-proof-reused": (
        lambda e, t, k: _bound(t, token_proof(e, k, ath=access_token_hash(t))),
        "htm does not match",
    ),
    "two-proofs": (
        lambda e, t, k: _bound(t, _rs_proof(e, k, t), _rs_proof(e, k, t)),
        "expected one DPoP header, got 2",
    ),
    "stale-proof": (
        lambda e, t, k: _bound(t, _rs_proof(e, k, t, now=e.now - 3600)),
        "iat is too old",
    ),
}


@pytest.mark.parametrize("name", list(RS_DPOP_ATTACKS))
def test_dpop_bound_token_misuse_at_the_resource_server_is_refused(env: Env, name: str) -> None:
    build, words = RS_DPOP_ATTACKS[name]
    token, holder = env.extra["bound"], env.extra["holder"]
    with resource_server(env) as rs:
        response = rs.request("GET", "/mcp", headers=build(env, token, holder))
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["error"] in ("invalid_token", "invalid_dpop_proof")
    assert words in body["error_description"], body
    assert "sub" not in body


def test_replayed_resource_proof_is_refused(env: Env) -> None:
    token, holder = env.extra["bound"], env.extra["holder"]
    headers = {"Authorization": f"DPoP {token}", "DPoP": _rs_proof(env, holder, token)}
    with resource_server(env) as rs:
        assert rs.get("/mcp", headers=headers).status_code == 200  # first use
        assert_rs_refuses(rs.get("/mcp", headers=headers), "invalid_dpop_proof")


def test_stolen_bound_token_without_the_key_is_refused_by_the_sdk(env: Env) -> None:
    """verify_access_token directly: Bearer scheme (§7.2) or no proof checker at all."""
    token = env.extra["bound"]
    with pytest.raises(InvalidToken, match="Bearer"):
        sdk_verify(env, token, scheme="Bearer")
    with pytest.raises(InvalidToken, match="DPoP"):
        sdk_verify(env, token)


def test_unbound_token_presented_with_the_dpop_scheme_is_refused(env: Env) -> None:
    """Downgrade confusion the other way: a Bearer token dressed up as DPoP."""
    token, attacker = env.extra["token"], ECKey.generate_key("P-256")
    with resource_server(env) as rs:
        response = rs.get(
            "/mcp",
            headers={"Authorization": f"DPoP {token}", "DPoP": _rs_proof(env, attacker, token)},
        )
    assert_rs_refuses(response)


@pytest.mark.parametrize("where", ["query-string", "two-authorization-headers", "basic-scheme"])
def test_token_smuggled_outside_one_authorization_header_is_refused(env: Env, where: str) -> None:
    token = env.extra["token"]
    with resource_server(env) as rs:
        if where == "query-string":
            response = rs.get("/mcp", params={"access_token": token})
        elif where == "two-authorization-headers":
            response = rs.request(
                "GET",
                "/mcp",
                headers=[("Authorization", "Bearer x"), ("Authorization", f"Bearer {token}")],
            )
        else:
            response = rs.get("/mcp", headers={"Authorization": f"Basic {token}"})
    assert response.status_code in (400, 401), response.text
    assert "sub" not in response.text
