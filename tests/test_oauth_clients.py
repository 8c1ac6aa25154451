"""Real OAuth clients against a real server: Authlib gets tokens with client_secret_basic and
private_key_jwt, PyJWT's PyJWKClient verifies them from our JWKS, Authlib introspects and
revokes.

One server per backend (per xdist worker) for the module: each test makes its own agent and
reads back only its events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import jwt as pyjwt
import pytest
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from tests.conftest import BACKENDS
from tests.serverproc import module_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, httpx.Client]]:
    with (
        module_server(request, tmp_path_factory, "oauth") as (_tmp, url, _env, token, _backend),
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as admin,
    ):
        yield url, admin


def _agent(admin: httpx.Client, **extra: Any) -> dict[str, Any]:
    body = {"name": "bot", "owner": "admin", "purpose": "p", "risk_tier": "minimal",
            "scopes": ["tools:read", "tools:write"], **extra}  # fmt: skip
    response = admin.post("/v1/agents", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_metadata_and_jwks(server: tuple[str, httpx.Client]) -> None:
    url, admin = server
    meta = admin.get("/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == url
    assert meta["token_endpoint"] == f"{url}/oauth/token"
    assert {"client_secret_basic", "private_key_jwt"} <= set(
        meta["token_endpoint_auth_methods_supported"]
    )
    keys = admin.get("/.well-known/jwks.json").json()["keys"]
    assert len(keys) == 2  # the active key and the published next key
    assert all(k["kty"] == "EC" and k["alg"] == "ES256" and "d" not in k for k in keys)


def test_authlib_client_secret_basic_and_pyjwt(server: tuple[str, httpx.Client]) -> None:
    url, admin = server
    agent = _agent(admin)
    cred = admin.post(f"/v1/agents/{agent['id']}/credentials", json={"type": "api_key"}).json()
    assert cred["client_id"] == agent["id"]
    listed = admin.get(f"/v1/agents/{agent['id']}/credentials").json()["items"]
    assert "client_secret" not in listed[0]

    session = OAuth2Session(cred["client_id"], cred["client_secret"],
                            token_endpoint_auth_method="client_secret_basic")  # fmt: skip
    token = session.fetch_token(
        f"{url}/oauth/token", grant_type="client_credentials", scope="tools:read",
        resource="https://tools.example/mcp",
    )  # fmt: skip
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "tools:read"
    assert 0 < token["expires_in"] <= 300

    header = pyjwt.get_unverified_header(token["access_token"])
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    signing_key = pyjwt.PyJWKClient(f"{url}/.well-known/jwks.json").get_signing_key_from_jwt(
        token["access_token"]
    )
    claims = pyjwt.decode(
        token["access_token"], signing_key.key, algorithms=["ES256"],
        audience="https://tools.example/mcp", issuer=url,
        options={"require": ["exp", "iat", "nbf", "jti", "sub", "aud", "iss"]},
    )  # fmt: skip
    assert claims["sub"] == agent["id"]
    assert claims["client_id"] == agent["id"]
    assert claims["scope"] == "tools:read"
    with pytest.raises(pyjwt.InvalidAudienceError):
        pyjwt.decode(token["access_token"], signing_key.key, algorithms=["ES256"],
                     audience="https://elsewhere.example", issuer=url)  # fmt: skip

    # Introspection and revocation with Authlib, authenticated as the client.
    info = session.introspect_token(f"{url}/oauth/introspect", token=token["access_token"]).json()
    assert info["active"] is True
    assert info["sub"] == agent["id"]
    assert info["scope"] == "tools:read"
    assert (
        session.revoke_token(f"{url}/oauth/revoke", token=token["access_token"]).status_code == 200
    )
    after = session.introspect_token(f"{url}/oauth/introspect", token=token["access_token"]).json()
    assert after == {"active": False}

    events = admin.get("/v1/audit/events", params={"agent": agent["id"]}).json()["items"]
    issued = [e for e in events if e["type"] == "token.issued"]
    assert len(issued) == 1
    assert issued[0]["details"]["jti"] == claims["jti"]
    assert issued[0]["details"]["auth_method"] == "client_secret_basic"
    assert token["access_token"] not in str(events)
    assert cred["client_secret"] not in str(events)
    assert [e["type"] for e in events].count("token.revoked") == 1


def _private_key_session(client_id: str, pem: bytes, token_url: str) -> OAuth2Session:
    """Authlib's documented private_key_jwt set-up, with an EC key (ES256)."""
    session = OAuth2Session(client_id, ECKey.import_key(pem),
                            token_endpoint_auth_method="private_key_jwt")  # fmt: skip
    session.register_client_auth_method(PrivateKeyJWT(token_url, alg="ES256"))
    return session


def test_authlib_private_key_jwt(server: tuple[str, httpx.Client]) -> None:
    url, admin = server
    agent = _agent(admin)
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
    public_jwk = ECKey.import_key(private.public_key()).as_dict(private=False)
    created = admin.post(f"/v1/agents/{agent['id']}/credentials",
                         json={"type": "public_key", "jwk": public_jwk})  # fmt: skip
    assert created.status_code == 201, created.text
    token_url = f"{url}/oauth/token"
    session = _private_key_session(agent["id"], pem, token_url)
    token = session.fetch_token(token_url, grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    assert set(token["scope"].split()) == {"tools:read", "tools:write"}
    # Deleting the credential stops it at once.
    cred_id = created.json()["id"]
    assert admin.delete(f"/v1/agents/{agent['id']}/credentials/{cred_id}").status_code == 200
    again = _private_key_session(agent["id"], pem, token_url)
    with pytest.raises(Exception, match="invalid_client"):
        again.fetch_token(token_url, grant_type="client_credentials")


def test_killed_agent_gets_nothing_and_its_tokens_die(server: tuple[str, httpx.Client]) -> None:
    url, admin = server
    agent = _agent(admin)
    cred = admin.post(f"/v1/agents/{agent['id']}/credentials", json={"type": "api_key"}).json()
    form = {"grant_type": "client_credentials", "client_id": agent["id"],
            "client_secret": cred["client_secret"]}  # fmt: skip
    token = httpx.post(f"{url}/oauth/token", data=form).json()["access_token"]
    killed = admin.post(f"/v1/agents/{agent['id']}/kill", json={"reason": "rogue"}).json()
    assert killed["cut_off"]["tokens"] == 1
    refused = httpx.post(f"{url}/oauth/token", data=form)
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    info = admin.post("/oauth/introspect", data={"token": token}).json()
    assert info == {"active": False}
