"""DPoP proof checks (RFC 9449 §4.3) and token binding (§7.1): pure, no database, no server.

Every rejection asserts the ``reason`` too, so a test cannot pass because an earlier,
unrelated check fired. Time is a fixed ``NOW``; nothing sleeps.
"""

from __future__ import annotations

import base64
import json
import threading
import warnings
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwk, jws
from joserfc.errors import SecurityWarning

from tether.clock import FrozenClock
from tether.credentials.dpop import (
    DPoPBindingMismatch,
    DPoPProof,
    InvalidDPoPProof,
    MemoryDPoPReplayCache,
    access_token_hash,
    jwk_thumbprint,
    normalize_htu,
    require_binding,
    verify_proof,
)

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
URL = "https://as.example.com/oauth/token"
TOKEN = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"

# RFC 9449 §4.1 / §5 (Figures 4 and 5): the example key, its thumbprint, and two real proofs
# made with it — one for the token request, one with ath for the resource request (§7.1).
RFC_JWK = {
    "kty": "EC",
    "x": "l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs",
    "y": "9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA",
    "crv": "P-256",
}
RFC_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"
RFC_ATH = "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
_RFC_HEADER = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0"
    "VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10"
    "NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19"
)
RFC_TOKEN_PROOF = (
    _RFC_HEADER
    + ".eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4"
    "YW1wbGUuY29tL3Rva2VuIiwiaWF0IjoxNTYyMjYyNjE2fQ"
    ".2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg"
)
RFC_RESOURCE_PROOF = (
    _RFC_HEADER
    + ".eyJqdGkiOiJlMWozVl9iS2ljOC1MQUVCIiwiaHRtIjoiR0VUIiwiaHR1IjoiaHR0cHM6Ly9yZXNvdXJjZS5l"
    "eGFtcGxlLm9yZy9wcm90ZWN0ZWRyZXNvdXJjZSIsImlhdCI6MTU2MjI2MjYxOCwiYXRoIjoiZlVIeU8ycjJaM0Ra"
    "NTNFc05yV0JiMHhXWG9hTnk1OUlpS0NBcWtzbVFFbyJ9"
    ".2oW9RP35yRqzhrtNP86L-Ey71EOptxRimPPToA1plemAgR6pxHF8y6-yqyVnmcw6Fy1dqd-jfxSYoMxhAJpLjA"
)

EC_KEY = jwk.ECKey.generate_key("P-256")
OTHER_EC_KEY = jwk.ECKey.generate_key("P-256")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(
    key: Any = EC_KEY,
    *,
    alg: str = "ES256",
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    signer: Any = None,
) -> str:
    """A proof for POST URL at NOW by ``key``; ``header``/``claims`` override, ``drop`` removes."""
    protected: dict[str, Any] = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    body: dict[str, Any] = {"jti": "jti-" + b64(key.thumbprint().encode())[:16], "htm": "POST"}
    body |= {"htu": URL, "iat": NOW}
    protected |= header or {}
    body |= claims or {}
    for name in drop:
        protected.pop(name, None)
        body.pop(name, None)
    # Signed by hand so that malformed headers reach the verifier; the signature itself is
    # still joserfc's, with the algorithm named by ``alg`` (not the header's).
    signing_input = f"{b64(json.dumps(protected).encode())}.{b64(json.dumps(body).encode())}"
    signature = jws.JWSRegistry.algorithms[alg].sign(signing_input.encode(), signer or key)
    return f"{signing_input}.{b64(signature)}"


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "AAAA") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{signature}"


def verify(proof: str, **kwargs: Any) -> DPoPProof:
    args: dict[str, Any] = {"method": "POST", "url": URL, "now": NOW} | kwargs
    return verify_proof([proof], **args)


def rejected(proof: str | list[str], reason: str, **kwargs: Any) -> InvalidDPoPProof:
    args: dict[str, Any] = {"method": "POST", "url": URL, "now": NOW} | kwargs
    with pytest.raises(InvalidDPoPProof) as caught:
        verify_proof(proof if isinstance(proof, list) else [proof], **args)
    assert caught.value.details["reason"] == reason, caught.value.message
    return caught.value


# --- RFC 9449 test vectors ---------------------------------------------------------------


def test_rfc_key_thumbprint() -> None:
    assert jwk_thumbprint(RFC_JWK) == RFC_JKT
    # Only required members count (RFC 7638 §3.2): kid, alg and use leave it unchanged.
    assert jwk_thumbprint({**RFC_JWK, "kid": "k1", "alg": "ES256", "use": "sig"}) == RFC_JKT


def test_rfc_access_token_hash() -> None:
    assert access_token_hash(TOKEN) == RFC_ATH


def test_rfc_token_request_proof_verifies() -> None:
    proof = verify_proof(
        [RFC_TOKEN_PROOF], method="POST", url="https://server.example.com/token", now=1562262616
    )
    assert proof.jkt == RFC_JKT
    assert (proof.jti, proof.htm, proof.iat) == ("-BwC3ESc6acc2lTc", "POST", 1562262616)
    assert proof.jwk == RFC_JWK
    assert proof.ath is None
    assert proof.nonce is None


def test_rfc_resource_request_proof_verifies_with_ath() -> None:
    proof = verify_proof(
        [RFC_RESOURCE_PROOF],
        method="GET",
        url="https://resource.example.org/protectedresource",
        now=1562262618,
        access_token=TOKEN,
    )
    assert (proof.jkt, proof.ath) == (RFC_JKT, RFC_ATH)


def test_rfc_proof_is_too_old_today() -> None:
    rejected(RFC_TOKEN_PROOF, "iat_expired", url="https://server.example.com/token")


# --- valid proofs ------------------------------------------------------------------------


def test_valid_p256_proof() -> None:
    proof = verify(sign())
    assert proof.jkt == EC_KEY.thumbprint() == jwk_thumbprint(EC_KEY.as_dict(private=False))
    assert (proof.htm, proof.htu, proof.iat) == ("POST", URL, NOW)
    assert "d" not in proof.jwk


@pytest.fixture(scope="module")
def rsa_key() -> jwk.RSAKey:
    return jwk.RSAKey.generate_key(2048)


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_valid_rsa_proof(rsa_key: jwk.RSAKey, alg: str) -> None:
    # An RSA-2048 jwk makes a header larger than joserfc's default 512-byte cap.
    assert verify(sign(rsa_key, alg=alg)).jkt == rsa_key.thumbprint()


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (jwk.OKPKey.generate_key("Ed25519"), "Ed25519"),
        (jwk.OKPKey.generate_key("Ed25519"), "EdDSA"),
        (jwk.ECKey.generate_key("P-384"), "ES384"),
    ],
)
def test_valid_other_algs(key: Any, alg: str) -> None:
    assert verify(sign(key, alg=alg)).jkt == key.thumbprint()


def test_optional_claims_and_unknown_header_members_pass() -> None:
    proof = verify(sign(header={"kid": "k1", "x-extra": 1}, claims={"nonce": "n-1", "exp": 1}))
    assert proof.nonce == "n-1"


def test_ath_may_be_absent_or_present_without_access_token() -> None:
    assert verify(sign()).ath is None
    assert verify(sign(claims={"ath": RFC_ATH})).ath == RFC_ATH


def test_fractional_iat_is_a_numeric_date() -> None:
    assert verify(sign(claims={"iat": NOW + 0.75})).iat == NOW


# --- rejections: the header --------------------------------------------------------------


def test_two_headers() -> None:
    proof = sign()
    rejected([proof, proof], "header_count")


def test_no_header() -> None:
    rejected([], "header_count")


def test_one_string_instead_of_a_list_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        verify_proof(sign(), method="POST", url=URL, now=NOW)


@pytest.mark.parametrize(
    "value",
    ["", "not a jwt", "a.b", "a.b.c.d", "e30.e30.", " " + "e30.e30.AAAA", "e30.e30.AA=="],
)
def test_not_a_jwt(value: str) -> None:
    rejected(value, "malformed")


def test_header_not_an_object() -> None:
    rejected(unsigned(["alg"], {}), "malformed")  # type: ignore[arg-type]


def test_too_long() -> None:
    rejected(sign(claims={"pad": "x" * 9000}), "malformed")


@pytest.mark.parametrize("typ", ["JWT", "DPOP+JWT", None])
def test_wrong_typ(typ: str | None) -> None:
    rejected(sign(header={"typ": typ}) if typ else sign(drop=("typ",)), "typ")


def test_alg_none() -> None:
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": EC_KEY.as_dict(private=False)}
    claims = {"jti": "j", "htm": "POST", "htu": URL, "iat": NOW}
    rejected(unsigned(header, claims), "alg")
    rejected(unsigned(header, claims, signature=""), "malformed")  # no signature at all


@pytest.mark.parametrize("allowed", [None, frozenset({"HS256", "ES256"})])
def test_hs256_with_public_key_bytes(allowed: frozenset[str] | None) -> None:
    # Algorithm confusion: the public key's own bytes as an HMAC secret.
    secret = jwk.OctKey.import_key(json.dumps(EC_KEY.as_dict(private=False)).encode())
    proof = sign(alg="HS256", signer=secret)
    rejected(proof, "alg", **({"allowed_algs": allowed} if allowed else {}))


def test_alg_not_allowed() -> None:
    rejected(sign(jwk.ECKey.generate_key("P-384"), alg="ES384"), "alg", allowed_algs={"ES256"})


def test_crit_header() -> None:
    rejected(sign(header={"crit": ["exp"]}), "crit")


def test_jwk_missing() -> None:
    rejected(sign(drop=("jwk",)), "jwk_missing")


def test_jwk_not_an_object() -> None:
    rejected(sign(header={"jwk": "eyJ..."}), "jwk_missing")


def test_jwk_with_private_d() -> None:
    rejected(sign(header={"jwk": EC_KEY.as_dict(private=True)}), "jwk_private")


def test_symmetric_jwk() -> None:
    rejected(sign(header={"jwk": {"kty": "oct", "k": "c2VjcmV0"}}), "jwk_private")


def test_jwk_not_a_key() -> None:
    bad = {**EC_KEY.as_dict(private=False), "x": RFC_JWK["y"]}  # not a point on the curve
    rejected(sign(header={"jwk": bad}), "jwk_invalid")


def test_jwk_curve_does_not_fit_alg() -> None:
    p384 = jwk.ECKey.generate_key("P-384")
    rejected(sign(p384, alg="ES384", header={"alg": "ES256"}), "jwk_alg")


def test_weak_rsa_key() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)
        weak = jwk.RSAKey.generate_key(1024)
    rejected(sign(weak, alg="RS256"), "jwk_weak")


def test_signed_by_another_key_than_the_jwk() -> None:
    rejected(sign(header={"jwk": OTHER_EC_KEY.as_dict(private=False)}), "bad_signature")


def test_tampered_payload() -> None:
    header, _, signature = sign().split(".")
    claims = {"jti": "other", "htm": "POST", "htu": URL, "iat": NOW}
    rejected(f"{header}.{b64(json.dumps(claims).encode())}.{signature}", "bad_signature")


def test_tampered_signature() -> None:
    proof = sign()
    flipped = proof[:-2] + ("A" if proof[-2] != "A" else "B") + proof[-1]
    rejected(flipped, "bad_signature")


# --- rejections: the claims --------------------------------------------------------------


def test_payload_not_an_object() -> None:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": EC_KEY.as_dict(private=False)}
    proof = jws.serialize_compact(header, b"[1, 2]", EC_KEY, algorithms=["ES256"])
    rejected(proof, "malformed_claims")


@pytest.mark.parametrize("jti", [None, "", 7, "j" * 257])
def test_bad_jti(jti: object) -> None:
    rejected(sign(claims={"jti": jti}) if jti is not None else sign(drop=("jti",)), "jti")


def test_htm_mismatch() -> None:
    rejected(sign(claims={"htm": "GET"}), "htm_mismatch")
    rejected(sign(claims={"htm": "post"}), "htm_mismatch")  # methods are case-sensitive


def test_htm_missing() -> None:
    rejected(sign(drop=("htm",)), "htm")


@pytest.mark.parametrize(
    "htu",
    [
        "https://evil.example.com/oauth/token",  # other host
        "https://as.example.com/oauth/authorize",  # other path
        "http://as.example.com/oauth/token",  # other scheme
        "https://as.example.com:8443/oauth/token",  # other port
        "https://as.example.com/oauth/token/",  # trailing slash is another path
        "https://user@as.example.com/oauth/token",  # userinfo
        "as.example.com/oauth/token",  # not absolute
        "ftp://as.example.com/oauth/token",
    ],
)
def test_htu_mismatch(htu: str) -> None:
    rejected(sign(claims={"htu": htu}), "htu_mismatch")


def test_htu_missing() -> None:
    rejected(sign(drop=("htu",)), "htu")


@pytest.mark.parametrize(
    "htu",
    [
        URL + "?foo=bar#frag",  # query and fragment are ignored (§4.3)
        "HTTPS://AS.Example.COM/oauth/token",
        "https://as.example.com:443/oauth/token",
        "https://as.example.com/oauth/./x/../token",
        "https://as.example.com/%6Fauth/token",  # %6F is "o", an unreserved character
    ],
)
def test_htu_matches_after_normalization(htu: str) -> None:
    assert verify(sign(claims={"htu": htu})).htu == htu  # the claim is returned as sent


def test_request_url_with_query_matches_plain_htu() -> None:
    verify(sign(), url=URL + "?code=abc")


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTPS://Server.Example.COM", "https://server.example.com/"),
        ("https://server.example.com:443/a?b#c", "https://server.example.com/a"),
        ("http://server.example.com:80/", "http://server.example.com/"),
        ("http://server.example.com:8080/", "http://server.example.com:8080/"),
        ("https://server.example.com:/x", "https://server.example.com/x"),
        ("https://[2001:DB8::1]:443/x", "https://[2001:db8::1]/x"),
        ("https://h.example/a/b/c/./../../g", "https://h.example/a/g"),
        ("https://h.example/a/..", "https://h.example/"),
        ("https://h.example/%7euser/%2fx%3A", "https://h.example/~user/%2Fx%3A"),
        ("https://h.example/A/B", "https://h.example/A/B"),  # path stays case-sensitive
    ],
)
def test_normalize_htu(url: str, normal: str) -> None:
    assert normalize_htu(url) == normal


@pytest.mark.parametrize(
    "url",
    [
        "/relative",
        "mailto:a@b.example",
        "https:///nohost",
        "https://h.example:99999/",
        "https://u:p@h.example/",
        "https://h.example/a b",
        "https://h.example/\n",
        "https://h.example/%zz",
        "https://h.exämple/",
    ],
)
def test_normalize_htu_rejects(url: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the contract is a plain ValueError
        normalize_htu(url)


def test_iat_window_edges() -> None:
    oldest, newest = NOW - 300 - 5, NOW + 5
    assert verify(sign(claims={"iat": oldest})).iat == oldest
    assert verify(sign(claims={"iat": newest})).iat == newest
    rejected(sign(claims={"iat": oldest - 1}), "iat_expired")
    rejected(sign(claims={"iat": newest + 1}), "iat_future")


def test_iat_too_old() -> None:
    rejected(sign(claims={"iat": NOW - 3600}), "iat_expired")


def test_iat_in_the_future() -> None:
    rejected(sign(claims={"iat": NOW + 60}), "iat_future")


@pytest.mark.parametrize("iat", [None, "1767225600", True])
def test_iat_not_a_number(iat: object) -> None:
    rejected(sign(claims={"iat": iat}) if iat is not None else sign(drop=("iat",)), "iat")


def test_max_age_and_leeway_are_parameters() -> None:
    proof = sign(claims={"iat": NOW - 100})
    rejected(proof, "iat_expired", max_age=60, leeway=0)
    verify(proof, max_age=60, leeway=40)


# --- access token hash -------------------------------------------------------------------


def test_ath_missing_when_access_token_given() -> None:
    rejected(sign(), "ath_missing", access_token=TOKEN)


def test_ath_wrong() -> None:
    rejected(sign(claims={"ath": access_token_hash("other")}), "ath_mismatch", access_token=TOKEN)


def test_ath_not_a_string() -> None:
    rejected(sign(claims={"ath": 5}), "malformed_ath")


def test_ath_right() -> None:
    assert verify(sign(claims={"ath": RFC_ATH}), access_token=TOKEN).ath == RFC_ATH


# --- replay ------------------------------------------------------------------------------


def frozen_cache(at: int = NOW) -> tuple[MemoryDPoPReplayCache, FrozenClock]:
    clock = FrozenClock(datetime.fromtimestamp(at, tz=UTC))
    return MemoryDPoPReplayCache(clock), clock


def test_replayed_jti() -> None:
    cache, _ = frozen_cache()
    proof = sign(claims={"jti": "once"})
    verify(proof, replay_cache=cache)
    rejected(proof, "replay", replay_cache=cache)


def test_same_jti_from_another_key_is_not_a_replay() -> None:
    cache, _ = frozen_cache()
    verify(sign(claims={"jti": "shared"}), replay_cache=cache)
    verify(sign(OTHER_EC_KEY, claims={"jti": "shared"}), replay_cache=cache)


def test_failed_proof_does_not_use_up_its_jti() -> None:
    cache, _ = frozen_cache()
    rejected(sign(claims={"jti": "j1", "htm": "GET"}), "htm_mismatch", replay_cache=cache)
    verify(sign(claims={"jti": "j1"}), replay_cache=cache)


def test_cache_keeps_entries_for_the_whole_window_then_purges() -> None:
    cache, clock = frozen_cache()
    proof = sign(claims={"jti": "w"})
    verify(proof, replay_cache=cache)
    expires_at = NOW + 300 + 5
    clock.advance(expires_at - NOW)  # the proof is still acceptable at this second...
    rejected(proof, "replay", now=expires_at, replay_cache=cache)
    clock.advance(1)  # ...and no longer after it, so the entry can go
    assert not cache.seen("other", "x", NOW + 2000)
    assert len(cache) == 1


def test_cache_is_atomic_across_threads() -> None:
    cache, _ = frozen_cache()
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def race() -> None:
        barrier.wait()
        results.append(cache.seen("jkt", "jti", NOW + 60))

    threads = [threading.Thread(target=race) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] + [True] * 15


# --- binding (§7.1) ----------------------------------------------------------------------


def test_binding_with_another_key() -> None:
    proof = verify(sign(OTHER_EC_KEY))
    with pytest.raises(DPoPBindingMismatch) as caught:
        require_binding(proof, EC_KEY.thumbprint())
    assert caught.value.details["reason"] == "jkt_mismatch"


def test_bound_token_without_proof() -> None:
    with pytest.raises(InvalidDPoPProof) as caught:
        require_binding(None, EC_KEY.thumbprint())
    assert caught.value.details["reason"] == "proof_missing"


def test_binding_matches() -> None:
    require_binding(verify(sign()), EC_KEY.thumbprint())


def test_unbound_token_needs_nothing() -> None:
    require_binding(None, None)
    require_binding(verify(sign()), None)


def test_error_shape() -> None:
    error = rejected([], "header_count")
    assert (error.code, error.http_status) == ("invalid_dpop_proof", 400)
    assert issubclass(DPoPBindingMismatch, InvalidDPoPProof)
    assert DPoPBindingMismatch.code == "invalid_dpop_proof"


# --- robustness --------------------------------------------------------------------------


_B64_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.sampled_from(["dpop+jwt", "ES256", "EC", "P-256", "none", "HS256", URL, "POST"])
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_HEADER_NAMES = st.sampled_from(["typ", "alg", "jwk", "crit", "kid", "b64"])
_CLAIM_NAMES = st.sampled_from(["jti", "htm", "htu", "iat", "ath", "nonce"])


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.text(max_size=300),
        st.lists(st.text(alphabet=_B64_CHARS, min_size=1, max_size=80), min_size=3, max_size=3).map(
            ".".join
        ),
        st.tuples(
            st.dictionaries(_HEADER_NAMES, _JSON),
            st.dictionaries(_CLAIM_NAMES, _JSON),
        ).map(lambda hc: unsigned(*hc)),
    )
)
def test_any_input_fails_only_as_invalid_proof(value: str) -> None:
    with pytest.raises(InvalidDPoPProof):
        verify_proof([value], method="POST", url=URL, now=NOW)
