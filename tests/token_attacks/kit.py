"""What the attack modules share: one deployment (:class:`Env`), agents and clients, JOSE
by hand, and a small resource server (the SDK in front of a Starlette app)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey, Key
from sqlalchemy import func, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tests.conftest import Backend, make_settings
from tether.agents.schemas import AgentCreate
from tether.api.app import create_app
from tether.audit.chain import Event
from tether.bootstrap import prepare
from tether.clock import FrozenClock
from tether.container import Services, build_services
from tether.credentials.clients import ASSERTION_TYPE
from tether.credentials.dpop import (
    InvalidDPoPProof,
    MemoryDPoPReplayCache,
    require_binding,
    verify_proof,
)
from tether.credentials.models import AccessTokenRow
from tether.principals import SYSTEM
from tether.sdk import (
    AccessTokenClaims,
    DPoPRequest,
    InvalidToken,
    JWKSCache,
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
def deployment(backend: Backend, data_dir: Path) -> Iterator[Env]:
    clock = FrozenClock(datetime.fromtimestamp(START, UTC))
    services = build_services(make_settings(backend, data_dir), clock=clock)
    try:
        prepare(services)
        admin = services.settings.admin_token_path.read_text().strip()
        with TestClient(create_app(services)) as http:
            yield Env(services, clock, http, {"Authorization": f"Bearer {admin}"})
    finally:
        services.close()


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


def issued(e: Env, client: Client) -> str:
    """A token for ``client``, checked active: the control of an attack on it."""
    response = post_token(e, {**client.form, "resource": RS})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    assert introspect(e, token)["active"] is True  # control
    return str(token)


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


def counting_writes(svc: Services) -> list[int]:
    """Count the write transactions begun from here on (one-item list): ``Database.write``'s
    and the group commit's own (its pinned connection's), which both run ``_transaction``."""
    count = [0]
    transaction = svc.db._transaction

    def counted(*args: Any, **options: Any) -> Any:
        count[0] += 1
        return transaction(*args, **options)

    svc.db._transaction = counted  # type: ignore[method-assign]
    return count


def counting_jobs(svc: Services) -> list[int]:
    """Count the jobs handed to the group committer from here on (one-item list)."""
    count = [0]
    run = svc.committer.run

    def counted(job: Any, timeout: float | None = None) -> Any:
        count[0] += 1
        return run(job, timeout)

    svc.committer.run = counted  # type: ignore[method-assign]
    return count
