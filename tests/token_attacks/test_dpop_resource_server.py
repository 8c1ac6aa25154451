"""Attacks: DPoP-bound tokens at the resource server — SDK middleware with Tether's
verify_proof + require_binding as dpop_verifier (RFC 9449 §7)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from joserfc.jwk import ECKey, Key

from tests.token_attacks.kit import (
    DROP,
    RS,
    RS_URL,
    Env,
    assert_rs_refuses,
    parts,
    proof,
    resource_server,
    sdk_verify,
    token_proof,
)
from tether.credentials.dpop import (
    access_token_hash,
)
from tether.sdk import (
    InvalidToken,
)


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
