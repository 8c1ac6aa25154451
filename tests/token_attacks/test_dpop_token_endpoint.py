"""Attacks: DPoP at the token endpoint — HTTP and SERVICE layers, each case at both (the route
started handing the DPoP header to the service while this suite was written)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from joserfc.jwk import ECKey

from tests.token_attacks.kit import (
    DROP,
    Env,
    Snapshot,
    assert_nothing_issued,
    b64,
    hs256,
    parts,
    token_proof,
    unsigned,
)
from tether.credentials.errors import InvalidDPoPProof


def dpop_token_request(e: Env, layer: str, proofs: list[str]) -> dict[str, Any]:
    """A client_credentials request with these DPoP header values, at one layer: the token
    or the OAuth error, as a dict."""
    form = e.extra["client"].form
    if layer == "service":
        try:
            return e.services.oauth.token(form, None, dpop=proofs)
        except InvalidDPoPProof as exc:
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
        # PostgreSQL text cannot hold NUL: the replay cache raised there (a 500)
        "nul-in-jti": lambda: token_proof(e, key, jti="a\x00b"),
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
    "nul-in-jti": "no NUL",
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
