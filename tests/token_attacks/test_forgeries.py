"""Attacks: Presented-token forgeries — SDK (verify_access_token + middleware) and HTTP
introspection."""

from __future__ import annotations

import json

import pytest
from joserfc.jwk import ECKey

from tests.token_attacks.kit import (
    DROP,
    RS,
    START,
    Env,
    assert_rs_refuses,
    hs256,
    introspect,
    new_client,
    parts,
    resource_server,
    sdk_verify,
    segment,
    signed,
    unsigned,
)
from tether.sdk import (
    InvalidToken,
    JWKSUnavailable,
)


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
