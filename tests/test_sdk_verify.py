"""The resource-server SDK: RFC 9068 access-token verification, the JWKS cache, the middleware.

No Tether server is needed: tokens are minted here with joserfc (or by hand, for the forged
ones) and the JWK Set is static or served by ``httpx.MockTransport``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt
from joserfc.jwk import ECKey, Key, OKPKey
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from tether.sdk import (
    AccessTokenClaims,
    DPoPRequest,
    InsufficientScope,
    InvalidToken,
    JWKSCache,
    JWKSUnavailable,
    TetherAuthMiddleware,
    verify_access_token,
)

ISSUER = "https://tether.test"
AUDIENCE = "https://api.test"
JWKS_URI = f"{ISSUER}/.well-known/jwks.json"
NOW = 1_800_000_000
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"

KEY = ECKey.generate_key("P-256", parameters={"kid": "k1"})
OTHER_KEY = ECKey.generate_key("P-256", parameters={"kid": "k1"})  # same kid, other key
ROTATED_KEY = ECKey.generate_key("P-256", parameters={"kid": "k2"})
DROP = object()  # a claim or header value that means "leave this out"


def _jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


STATIC = JWKSCache.from_static(_jwks(KEY))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _claims(**changes: object) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "agt_1",
        "aud": AUDIENCE,
        "exp": NOW + 300,
        "iat": NOW,
        "nbf": NOW,
        "jti": "tok_1",
        "client_id": "cli_1",
        "scope": "tools.read tools.call",
    }
    for name, value in changes.items():
        if value is DROP:
            claims.pop(name)
        else:
            claims[name] = value
    return claims


def mint(claims: dict[str, Any] | None = None, key: Key = KEY, **header: object) -> str:
    """An ES256 (or ``alg=…``) token signed by joserfc; header values of DROP are left out."""
    fields: dict[str, Any] = {"alg": "ES256", "kid": key.kid, "typ": "at+jwt"}
    fields.update(header)
    fields = {k: v for k, v in fields.items() if v is not DROP}
    return jwt.encode(
        fields, claims or _claims(), key, algorithms=[fields["alg"]], default_type=None
    )


def forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token built by hand, for what joserfc refuses to produce."""
    signing_input = f"{_segment(header)}.{_segment(claims)}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def verify(token: str, **options: Any) -> AccessTokenClaims:
    options.setdefault("jwks", STATIC)
    options.setdefault("now", NOW)
    return verify_access_token(token, issuer=ISSUER, audience=AUDIENCE, **options)


# --- what passes ------------------------------------------------------------------------


def test_valid_token_is_accepted_and_its_claims_parsed() -> None:
    act = {"sub": "agt_parent", "act": {"sub": "agt_root"}}
    token = mint(_claims(aud=["https://other.test", AUDIENCE], act=act))

    claims = verify(token, required_scopes=["tools.read"])

    assert claims.sub == "agt_1"
    assert claims.client_id == "cli_1"
    assert claims.scopes == frozenset({"tools.read", "tools.call"})
    assert claims.aud == ("https://other.test", AUDIENCE)
    assert (claims.iss, claims.exp, claims.iat, claims.nbf) == (ISSUER, NOW + 300, NOW, NOW)
    assert claims.jti == "tok_1"
    assert claims.act == act
    assert claims.chain == ("agt_parent", "agt_root")
    assert claims.actor == "agt_parent"
    assert claims.cnf_jkt is None
    assert not claims.dpop_bound
    assert claims.raw["client_id"] == "cli_1"


def test_token_without_delegation_has_an_empty_chain_and_a_string_aud_becomes_a_tuple() -> None:
    claims = verify(mint(_claims(scope=DROP, nbf=DROP)))
    assert claims.chain == ()
    assert claims.actor is None
    assert claims.aud == (AUDIENCE,)
    assert claims.scopes == frozenset()
    assert claims.nbf is None


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
def test_typ_is_compared_case_insensitively(typ: str) -> None:
    assert verify(mint(typ=typ)).sub == "agt_1"


def test_es384_and_ed25519_verify_with_keys_of_their_kind() -> None:
    p384 = ECKey.generate_key("P-384", parameters={"kid": "p384"})
    ed = OKPKey.generate_key("Ed25519", parameters={"kid": "ed"})
    jwks = JWKSCache.from_static(_jwks(KEY, p384, ed))
    assert verify(mint(key=p384, alg="ES384"), jwks=jwks).sub == "agt_1"
    assert verify(mint(key=ed, alg="Ed25519"), jwks=jwks).sub == "agt_1"


def test_eddsa_alg_name_of_rfc_8037_is_accepted_without_a_warning() -> None:
    private = Ed25519PrivateKey.generate()
    public = OKPKey.import_key(private.public_key()).as_dict(private=False)
    jwks = JWKSCache.from_static({"keys": [{**public, "kid": "ed"}]})
    token = forge({"alg": "EdDSA", "kid": "ed", "typ": "at+jwt"}, _claims(), private.sign)
    assert verify(token, jwks=jwks).sub == "agt_1"  # pytest turns any warning into an error


@pytest.mark.parametrize(("exp", "ok"), [(NOW - 29, True), (NOW - 30, False)])
def test_leeway_tolerates_clock_skew_on_exp(exp: int, ok: bool) -> None:
    token = mint(_claims(exp=exp, iat=NOW - 600, nbf=NOW - 600))
    if ok:
        verify(token, leeway=30)
    else:
        with pytest.raises(InvalidToken, match="expired"):
            verify(token, leeway=30)


# --- what is refused, one reason at a time ----------------------------------------------


def test_alg_none_is_refused() -> None:
    header = {"alg": "none", "kid": "k1", "typ": "at+jwt"}
    token = f"{_segment(header)}.{_segment(_claims())}."
    with pytest.raises(InvalidToken, match="algorithm") as caught:
        verify(token)
    assert caught.value.error == "invalid_token"


def test_hs256_keyed_with_the_public_key_pem_is_refused() -> None:
    pem = KEY.as_pem(private=False)
    header = {"alg": "HS256", "kid": "k1", "typ": "at+jwt"}
    token = forge(header, _claims(), lambda data: hmac.new(pem, data, hashlib.sha256).digest())
    with pytest.raises(InvalidToken, match="algorithm"):
        verify(token)


def test_other_key_with_the_same_kid_is_refused() -> None:
    with pytest.raises(InvalidToken, match="signature"):
        verify(mint(key=OTHER_KEY))


def test_header_alg_that_does_not_fit_the_key_is_refused() -> None:
    p384 = ECKey.generate_key("P-384", parameters={"kid": "k1"})
    # Signed correctly with P-384, but the issuer's k1 is a P-256 key.
    with pytest.raises(InvalidToken, match="does not fit"):
        verify(mint(key=p384, alg="ES384"))


def test_expired_token_is_refused() -> None:
    with pytest.raises(InvalidToken, match="expired"):
        verify(mint(_claims(iat=NOW - 900, nbf=NOW - 900, exp=NOW - 600)))


def test_token_not_yet_valid_is_refused() -> None:
    with pytest.raises(InvalidToken, match="not valid yet"):
        verify(mint(_claims(nbf=NOW + 120)))


def test_token_issued_in_the_future_is_refused() -> None:
    with pytest.raises(InvalidToken, match="issued in the future"):
        verify(mint(_claims(iat=NOW + 120, nbf=DROP)))


@pytest.mark.parametrize("aud", ["https://other.test", ["https://other.test"], []])
def test_wrong_audience_is_refused(aud: object) -> None:
    with pytest.raises(InvalidToken, match="audience"):
        verify(mint(_claims(aud=aud)))


@pytest.mark.parametrize("iss", ["https://evil.test", ISSUER + "/", ISSUER.upper()])
def test_wrong_issuer_is_refused(iss: str) -> None:
    with pytest.raises(InvalidToken, match="another issuer"):
        verify(mint(_claims(iss=iss)))


@pytest.mark.parametrize("typ", [DROP, "JWT", "jwt", "dpop+jwt", "at+jwt2"])
def test_typ_other_than_at_jwt_is_refused(typ: object) -> None:
    with pytest.raises(InvalidToken, match="typ"):
        verify(mint(typ=typ))


def test_tampered_payload_is_refused() -> None:
    header, payload, signature = mint().split(".")
    flipped = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
    with pytest.raises(InvalidToken, match="signature"):
        verify(f"{header}.{flipped}.{signature}")


@pytest.mark.parametrize("claim", ["jti", "sub", "client_id", "exp", "iat", "iss", "aud"])
def test_token_missing_a_required_claim_is_refused(claim: str) -> None:
    with pytest.raises(InvalidToken, match=claim):
        verify(mint(_claims(**{claim: DROP})))


@pytest.mark.parametrize(
    ("claim", "value"),
    [("sub", ""), ("sub", 7), ("jti", ["x"]), ("client_id", ""), ("client_id", 1),
     ("exp", "soon"), ("exp", True), ("scope", ["tools.read"]), ("act", {"act": {}}),
     ("act", {"sub": "a", "act": "b"}), ("cnf", {"x5t#S256": "abc"}), ("cnf", "jkt")],
)  # fmt: skip
def test_claim_of_the_wrong_shape_is_refused(claim: str, value: object) -> None:
    with pytest.raises(InvalidToken):
        verify(mint(_claims(**{claim: value})))


def test_unknown_kid_in_a_static_set_is_refused() -> None:
    with pytest.raises(InvalidToken, match="kid"):
        verify(mint(key=ROTATED_KEY))


def test_missing_kid_and_crit_header_are_refused() -> None:
    with pytest.raises(InvalidToken, match="kid"):
        verify(mint(kid=DROP))
    with pytest.raises(InvalidToken, match="extensions"):
        verify(mint(crit=["b64"], b64=True))


@pytest.mark.parametrize(
    "token",
    [
        "", "abc", "a.b", "a.b.c", "a.b.c.d.e", "é.é.é",
        f"{_b64(b'[1]')}.e30.AA",
        _b64(b'"alg"') + ".e30.AA",  # a JSON string that contains "alg"
        f"{_segment({'alg': 'ES256', 'typ': 'at+jwt', 'kid': 'k1', 'x5c': 5})}.e30.AA",
    ],
)  # fmt: skip
def test_malformed_token_is_refused(token: str) -> None:
    with pytest.raises(InvalidToken):
        verify(token)


def test_insufficient_scope_names_the_missing_scope() -> None:
    with pytest.raises(InsufficientScope) as caught:
        verify(mint(), required_scopes=["tools.read", "admin"])
    assert caught.value.error == "insufficient_scope"
    assert caught.value.http_status == 403
    assert caught.value.missing == frozenset({"admin"})
    assert caught.value.required == frozenset({"tools.read", "admin"})
    assert isinstance(caught.value, InvalidToken)


def test_revocation_hook_returning_true_refuses_the_token() -> None:
    seen: list[AccessTokenClaims] = []

    def revoked(claims: AccessTokenClaims) -> bool:
        seen.append(claims)
        return "agt_root" in claims.chain

    token = mint(_claims(act={"sub": "agt_parent", "act": {"sub": "agt_root"}}))
    with pytest.raises(InvalidToken, match="revoked"):
        verify(token, revocation_check=revoked)
    assert seen[0].jti == "tok_1"
    assert verify(mint(), revocation_check=revoked).sub == "agt_1"


def test_arguments_that_would_weaken_verification_are_programming_errors() -> None:
    for algorithms in (["ES256", "HS256"], ["none"], []):
        with pytest.raises(ValueError, match="subset"):
            verify(mint(), algorithms=algorithms)
    assert verify(mint(), algorithms=["ES256"]).sub == "agt_1"
    with pytest.raises(InvalidToken, match="algorithm"):
        verify(mint(), algorithms=["Ed25519"])
    with pytest.raises(TypeError):
        verify(mint(), required_scopes="tools.read")
    with pytest.raises(ValueError, match="scheme"):
        verify(mint(), scheme="Basic")
    with pytest.raises(ValueError, match="scope token"):
        TetherAuthMiddleware(_app(), issuer=ISSUER, audience=AUDIENCE, jwks=STATIC,
                             required_scopes=["tools.read tools.call"])  # fmt: skip


# --- DPoP binding (RFC 9449 §7) ---------------------------------------------------------


def test_dpop_bound_token_without_a_dpop_checker_is_refused() -> None:
    with pytest.raises(InvalidToken, match="DPoP"):
        verify(mint(_claims(cnf={"jkt": JKT})))


def test_dpop_bound_token_is_handed_to_the_checker_with_its_claims() -> None:
    token = mint(_claims(cnf={"jkt": JKT}))
    calls: list[tuple[str, str | None]] = []

    claims = verify(token, dpop=lambda t, c: calls.append((t, c.cnf_jkt)), scheme="DPoP")

    assert calls == [(token, JKT)]
    assert claims.dpop_bound


def test_dpop_checker_failure_propagates_with_its_error_code() -> None:
    def refuse(token: str, claims: AccessTokenClaims) -> None:
        raise InvalidToken("proof signed by another key", error="invalid_dpop_proof")

    with pytest.raises(InvalidToken) as caught:
        verify(mint(_claims(cnf={"jkt": JKT})), dpop=refuse)
    assert caught.value.error == "invalid_dpop_proof"


def test_dpop_bound_token_presented_as_bearer_is_refused_without_asking_the_checker() -> None:
    calls: list[str] = []
    with pytest.raises(InvalidToken, match="Bearer"):
        verify(mint(_claims(cnf={"jkt": JKT})), dpop=lambda t, c: calls.append(t), scheme="bearer")
    assert calls == []


def test_unbound_token_presented_with_the_dpop_scheme_is_refused() -> None:
    with pytest.raises(InvalidToken, match="not DPoP-bound"):
        verify(mint(), dpop=lambda t, c: None, scheme="DPoP")


# --- the JWKS cache ---------------------------------------------------------------------


class FakeIssuer:
    """A JWKS endpoint behind httpx.MockTransport that counts fetches."""

    def __init__(self, *keys: Key) -> None:
        self.jwks: object = _jwks(*keys)
        self.status = 200
        self.fetches = 0
        self.delay = 0.0

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == JWKS_URI
        self.fetches += 1
        time.sleep(self.delay)
        return httpx.Response(self.status, json=self.jwks)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer(KEY)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(issuer: FakeIssuer, clock: FakeClock) -> Iterator[JWKSCache]:
    http = httpx.Client(transport=httpx.MockTransport(issuer.handle))
    with http, JWKSCache(JWKS_URI, http=http, clock=clock) as jwks:
        yield jwks


def test_keys_are_fetched_once_and_then_served_from_the_cache(
    cache: JWKSCache, issuer: FakeIssuer
) -> None:
    for _ in range(3):
        verify(mint(), jwks=cache)
    assert issuer.fetches == 1


def test_unknown_kid_triggers_one_refresh_per_interval(
    cache: JWKSCache, issuer: FakeIssuer, clock: FakeClock
) -> None:
    verify(mint(), jwks=cache)
    assert issuer.fetches == 1

    clock.t += 31
    stranger = ECKey.generate_key("P-256", parameters={"kid": "unknown-1"})
    with pytest.raises(InvalidToken, match="kid"):
        verify(mint(key=stranger), jwks=cache)
    assert issuer.fetches == 2

    clock.t += 1
    stranger2 = ECKey.generate_key("P-256", parameters={"kid": "unknown-2"})
    with pytest.raises(InvalidToken, match="kid"):
        verify(mint(key=stranger2), jwks=cache)
    assert issuer.fetches == 2  # rate-limited: a kid spray cannot hammer the issuer


def test_a_rotated_key_is_picked_up_after_the_interval(
    cache: JWKSCache, issuer: FakeIssuer, clock: FakeClock
) -> None:
    verify(mint(), jwks=cache)
    issuer.jwks = _jwks(KEY, ROTATED_KEY)
    with pytest.raises(InvalidToken, match="kid"):
        verify(mint(key=ROTATED_KEY), jwks=cache)  # within 30 s of the last fetch
    clock.t += 30
    assert verify(mint(key=ROTATED_KEY), jwks=cache).sub == "agt_1"
    assert issuer.fetches == 2


def test_a_key_set_older_than_max_age_is_refetched_and_a_withdrawn_key_dropped(
    cache: JWKSCache, issuer: FakeIssuer, clock: FakeClock
) -> None:
    verify(mint(), jwks=cache)
    issuer.jwks = _jwks(ROTATED_KEY)
    clock.t += 299
    verify(mint(), jwks=cache)
    assert issuer.fetches == 1
    clock.t += 1
    with pytest.raises(InvalidToken, match="kid"):
        verify(mint(), jwks=cache)
    assert issuer.fetches == 2


def test_an_unreachable_issuer_fails_closed_and_is_not_hammered(
    cache: JWKSCache, issuer: FakeIssuer, clock: FakeClock
) -> None:
    issuer.status = 503
    for _ in range(3):
        with pytest.raises(JWKSUnavailable) as caught:
            verify(mint(), jwks=cache)
    assert issuer.fetches == 1
    assert caught.value.http_status == 503
    clock.t += 30
    issuer.status = 200
    assert verify(mint(), jwks=cache).sub == "agt_1"
    assert issuer.fetches == 2


@pytest.mark.parametrize("bad", [["not", "a", "set"], {"keys": "nope"}])
def test_a_failed_refresh_keeps_the_keys_already_held(
    cache: JWKSCache, issuer: FakeIssuer, clock: FakeClock, bad: object
) -> None:
    verify(mint(), jwks=cache)
    issuer.jwks = bad
    clock.t += 301
    assert verify(mint(), jwks=cache).sub == "agt_1"
    assert issuer.fetches == 2


def test_concurrent_lookups_of_an_unknown_kid_fetch_once(
    cache: JWKSCache, issuer: FakeIssuer
) -> None:
    issuer.delay = 0.05
    barrier = threading.Barrier(8)
    found: list[bool] = []

    def look_up() -> None:
        barrier.wait()
        found.append(cache.get_key("k1") is not None)

    threads = [threading.Thread(target=look_up) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == [True] * 8
    assert issuer.fetches == 1


def test_static_sets_skip_keys_that_cannot_sign_access_tokens() -> None:
    usable = KEY.as_dict(private=False)
    jwks = JWKSCache.from_static(
        {
            "keys": [
                {"kty": "oct", "kid": "hmac", "k": _b64(b"secret")},
                {**ROTATED_KEY.as_dict(private=False), "use": "enc"},
                {k: v for k, v in usable.items() if k != "kid"},
                {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AA", "y": "AA"},
                {"kty": "PQ", "kid": "future"},
                usable,
            ]
        }
    )
    assert [jwks.get_key(kid) is None for kid in ("hmac", "k2", "broken", "future")] == [True] * 4
    assert jwks.get_key("k1") is not None
    with pytest.raises(TypeError):
        JWKSCache.from_static({"keys": {}})
    with pytest.raises(ValueError, match="either"):
        JWKSCache()


# --- the middleware ---------------------------------------------------------------------

ALLOWED_PROOF = "header.payload.signature"


def _fake_dpop_verifier(seen: list[DPoPRequest]) -> Callable[..., None]:
    def check(request: DPoPRequest, token: str, claims: AccessTokenClaims) -> None:
        seen.append(request)
        if request.proofs != (ALLOWED_PROOF,):
            raise InvalidToken("bad proof", error="invalid_dpop_proof")

    return check


def _app(jwks: JWKSCache = STATIC, **options: Any) -> Starlette:
    async def whoami(request: Request) -> JSONResponse:
        claims: AccessTokenClaims = request.state.tether_claims
        assert request.scope["tether_claims"] is claims
        return JSONResponse({"sub": claims.sub, "chain": list(claims.chain)})

    async def public(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"sub": websocket.scope["tether_claims"].sub})
        await websocket.close()

    options.setdefault("required_scopes", ["tools.read"])
    guard = Middleware(
        TetherAuthMiddleware,
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks=jwks,
        clock=lambda: NOW,
        exempt_paths=["/health", "/public/*"],
        **options,
    )
    routes = [
        Route("/whoami", whoami),
        Route("/health", public),
        Route("/public/{rest:path}", public),
        WebSocketRoute("/ws", socket),
    ]
    return Starlette(routes=routes, middleware=[guard])


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(_app()) as test_client:
        yield test_client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_middleware_without_a_token_answers_401_with_a_bare_challenge(client: TestClient) -> None:
    response = client.get("/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer scope="tools.read"'
    assert response.json()["error"] == "invalid_token"


def test_middleware_with_a_bad_token_answers_401_invalid_token(client: TestClient) -> None:
    response = client.get("/whoami", headers=_bearer(mint(key=OTHER_KEY)))
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    assert response.json() == {
        "error": "invalid_token",
        "error_description": "the access token's signature is invalid",
    }


def test_middleware_with_too_few_scopes_answers_403(client: TestClient) -> None:
    response = client.get("/whoami", headers=_bearer(mint(_claims(scope="tools.call"))))
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert challenge.endswith('scope="tools.read"')
    assert response.json()["error"] == "insufficient_scope"


def test_middleware_with_a_good_token_shows_the_claims_to_the_endpoint(client: TestClient) -> None:
    token = mint(_claims(act={"sub": "agt_parent"}))
    response = client.get("/whoami", headers={"Authorization": f"bearer  {token}"})
    assert response.status_code == 200
    assert response.json() == {"sub": "agt_1", "chain": ["agt_parent"]}


def test_middleware_ignores_a_token_in_the_query_string(client: TestClient) -> None:
    response = client.get("/whoami", params={"access_token": mint()})
    assert response.status_code == 401
    assert "error=" not in response.headers["www-authenticate"]


@pytest.mark.parametrize("path", ["/health", "/public/docs"])
def test_middleware_lets_exempt_paths_through(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", "Bearer"), ("X", "1")],
        [("Authorization", "Bearer a b")],
        [("Authorization", f"Bearer {mint()}"), ("Authorization", f"Bearer {mint()}")],
    ],
)
def test_middleware_answers_400_for_a_malformed_authorization(
    client: TestClient, headers: list[tuple[str, str]]
) -> None:
    response = client.get("/whoami", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_middleware_treats_another_scheme_as_no_token(client: TestClient) -> None:
    response = client.get("/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer scope="tools.read"'


def test_middleware_refuses_a_dpop_bound_token_presented_as_bearer() -> None:
    seen: list[DPoPRequest] = []
    app = _app(dpop_verifier=_fake_dpop_verifier(seen))
    token = mint(_claims(cnf={"jkt": JKT}))
    with TestClient(app) as client:
        response = client.get("/whoami", headers={**_bearer(token), "DPoP": ALLOWED_PROOF})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
    assert seen == []


def test_middleware_hands_a_dpop_request_to_the_verifier() -> None:
    seen: list[DPoPRequest] = []
    app = _app(dpop_verifier=_fake_dpop_verifier(seen))
    token = mint(_claims(cnf={"jkt": JKT}))
    with TestClient(app) as client:
        auth = {"Authorization": f"DPoP {token}"}
        good = client.get("/whoami?x=1", headers={**auth, "DPoP": ALLOWED_PROOF})
        bad = client.get("/whoami", headers={**auth, "DPoP": "forged"})
    assert good.status_code == 200
    assert seen[0] == DPoPRequest("GET", "http://testserver/whoami", (ALLOWED_PROOF,))
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')


def test_middleware_without_a_dpop_verifier_refuses_bound_tokens(client: TestClient) -> None:
    token = mint(_claims(cnf={"jkt": JKT}))
    response = client.get("/whoami", headers={"Authorization": f"DPoP {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('DPoP error="invalid_token"')


def test_middleware_consults_the_revocation_hook() -> None:
    app = _app(revocation_check=lambda claims: claims.sub == "agt_1")
    with TestClient(app) as client:
        response = client.get("/whoami", headers=_bearer(mint()))
    assert response.status_code == 401
    assert response.json()["error_description"] == "the access token has been revoked"


def test_middleware_answers_503_when_no_signing_key_can_be_fetched(issuer: FakeIssuer) -> None:
    issuer.status = 500
    http = httpx.Client(transport=httpx.MockTransport(issuer.handle))
    with http, TestClient(_app(jwks=JWKSCache(JWKS_URI, http=http))) as client:
        response = client.get("/whoami", headers=_bearer(mint()))
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert "retry-after" in response.headers


def test_middleware_advertises_resource_metadata_in_challenges() -> None:
    url = "https://api.test/.well-known/oauth-protected-resource"
    with TestClient(_app(resource_metadata=url)) as client:
        response = client.get("/whoami")
    assert response.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{url}", scope="tools.read"'
    )


def test_middleware_guards_websockets(client: TestClient) -> None:
    with pytest.raises(WebSocketDisconnect) as caught, client.websocket_connect("/ws"):
        pass
    assert caught.value.code == 1008
    with client.websocket_connect("/ws", headers=_bearer(mint())) as socket:
        assert socket.receive_json() == {"sub": "agt_1"}
