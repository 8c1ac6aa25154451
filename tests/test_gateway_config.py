"""The gateway's configuration and discovery (issue 16, items 1-2): upstreams declared in
``tether.toml`` (``[[gateway_upstreams]]``) or ``TETHER_GATEWAY_UPSTREAMS``, each checked
when the settings load (a clear error naming the setting); RFC 9728 protected-resource
metadata naming Tether as the authorization server, and a token asked for the gateway's
resource URI (RFC 8707) carrying it as its audience."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from fastapi.testclient import TestClient

from tests.pdp import credential, env_of
from tether.config import load_settings
from tether.errors import ConfigurationError, Unauthenticated
from tether.gateway.metadata import challenge
from tether.gateway_config import ClientCredentialsAuth, HeaderAuth, NoAuth

TOML = """
[[gateway_upstreams]]
name = "payments"
url = "http://127.0.0.1:8765/mcp"
timeout_seconds = 5
auth = { kind = "header", header = "X-Api-Key", secret = "payments-key" }

[[gateway_upstreams]]
name = "crm"
url = "https://crm.example/mcp"
[gateway_upstreams.auth]
kind = "client_credentials"
token_url = "https://idp.example/token"
client_id = "tether"
client_secret = "crm-client-secret"

[[gateway_upstreams]]
name = "files"
command = ["python", "-m", "files_mcp"]
"""


def _load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Any:
    path = tmp_path / "tether.toml"
    path.write_text(text)
    monkeypatch.setenv("TETHER_CONFIG", str(path))
    return load_settings()


def test_upstreams_load_from_tether_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _load(tmp_path, monkeypatch, TOML)
    payments, crm, files = settings.gateway_upstreams
    assert payments.name == "payments"
    assert payments.timeout_seconds == 5
    assert isinstance(payments.auth, HeaderAuth)
    assert payments.auth.secret == "payments-key"
    assert isinstance(crm.auth, ClientCredentialsAuth)
    assert isinstance(files.auth, NoAuth)
    assert files.command == ["python", "-m", "files_mcp"]


def test_upstreams_load_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    upstreams = [{"name": "tickets", "url": "http://127.0.0.1:1/mcp"}]
    monkeypatch.setenv("TETHER_GATEWAY_UPSTREAMS", json.dumps(upstreams))
    (only,) = load_settings().gateway_upstreams
    assert only.name == "tickets"
    assert only.prefix  # tools as tickets.<tool> unless told otherwise


@pytest.mark.parametrize(
    ("upstreams", "says"),
    [
        ([{"name": "a", "url": "http://x/mcp"}, {"name": "a", "url": "http://y/mcp"}], "unique"),
        ([{"name": "a", "url": "http://x/mcp", "command": ["x"]}], "either url or command"),
        ([{"name": "a"}], "either url or command"),
        ([{"name": "Bad Name", "url": "http://x/mcp"}], "UPSTREAMS[0].name"),
        ([{"name": "a", "url": "ftp://x/mcp"}], "http(s)"),
        (
            [
                {
                    "name": "a",
                    "url": "http://x/mcp",
                    "auth": {"kind": "header", "header": "Host", "secret": "s"},
                }
            ],
            "cannot carry",
        ),
        (
            [
                {
                    "name": "a",
                    "command": ["x"],
                    "auth": {"kind": "header", "header": "X-K", "secret": "s"},
                }
            ],
            "takes no auth",
        ),
        ([{"name": "a", "url": "http://x/mcp", "auth": {"kind": "magic"}}], "[0].auth: Input tag"),
        (
            [
                {"name": "a", "url": "http://x/mcp", "prefix": False},
                {"name": "b", "url": "http://y/mcp", "prefix": False},
            ],
            "at most one gateway upstream may have prefix = false: a, b",
        ),
    ],
)
def test_a_wrong_upstream_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, upstreams: list[dict[str, Any]], says: str
) -> None:
    monkeypatch.setenv("TETHER_GATEWAY_UPSTREAMS", json.dumps(upstreams))
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert "TETHER_GATEWAY_UPSTREAMS" in caught.value.message
    assert says in caught.value.message


def test_the_metadata_names_tether_and_the_resource(client: TestClient) -> None:
    got = client.get("/.well-known/oauth-protected-resource/mcp")
    assert got.status_code == 200, got.text
    meta = got.json()
    issuer = client.get("/.well-known/oauth-authorization-server").json()["issuer"]
    assert meta["authorization_servers"] == [issuer]
    assert meta["resource"].endswith("/mcp")
    assert meta["bearer_methods_supported"] == ["header"]
    value = challenge("https://tether.example", error="invalid_token", description='bad "x"')
    metadata = "https://tether.example/.well-known/oauth-protected-resource/mcp"
    assert value.startswith(f'Bearer resource_metadata="{metadata}"')
    assert 'error="invalid_token"' in value
    assert "error_description=\"bad 'x'\"" in value


def test_a_token_for_the_gateway_carries_its_resource_uri(client: TestClient) -> None:
    resource = client.get("/.well-known/oauth-protected-resource/mcp").json()["resource"]
    body = {"name": "mcp-user", "owner": "admin", "purpose": "gateway", "risk_tier": "minimal"}
    made = client.post("/v1/agents", json=body)
    assert made.status_code == 201, made.text
    services = client.app.state.services  # type: ignore[attr-defined]
    with env_of(services, client) as e:
        cred = credential(e, made.json()["id"])
        form = {"grant_type": "client_credentials", "resource": resource, **cred.form}
        got = e.anon.post("/oauth/token", data=form)
    assert got.status_code == 200, got.text
    claims = pyjwt.decode(got.json()["access_token"], options={"verify_signature": False})
    assert claims["aud"] == resource


def test_the_authorization_server_names_an_authorization_endpoint_that_says_no(
    client: TestClient,
) -> None:
    """MCP clients' discovery requires ``authorization_endpoint`` (RFC 8414 §2); Tether has no
    authorization-endpoint flow, so it answers ``unsupported_response_type``."""
    meta = client.get("/.well-known/oauth-authorization-server").json()
    assert meta["authorization_endpoint"] == f"{meta['issuer']}/oauth/authorize"
    got = client.get("/oauth/authorize", params={"response_type": "code", "client_id": "x"})
    assert got.status_code == 400
    assert got.json()["error"] == "unsupported_response_type"


def test_the_gateways_audience_is_its_own(client: TestClient) -> None:
    """A token for the gateway's resource works there and not on Tether's API; a token for
    Tether does not work at the gateway; a user token never does."""
    resource = client.get("/.well-known/oauth-protected-resource/mcp").json()["resource"]
    body = {"name": "mcp-aud", "owner": "admin", "purpose": "gateway", "risk_tier": "minimal"}
    agent = client.post("/v1/agents", json=body).json()["id"]
    services = client.app.state.services  # type: ignore[attr-defined]
    with env_of(services, client) as e:
        cred = credential(e, agent)
        tokens = {}
        for name, extra in (("gateway", {"resource": resource}), ("tether", {})):
            form = {"grant_type": "client_credentials", **extra, **cred.form}
            tokens[name] = e.anon.post("/oauth/token", data=form).json()["access_token"]

    def at(token: str, audience: str | None) -> Any:
        check = services.bearers.authenticate_request(
            f"Bearer {token}", method="POST", url=resource, proofs=[], audience=audience
        )
        return asyncio.run(check)

    assert at(tokens["gateway"], resource).principal.id == agent
    assert at(tokens["tether"], None).principal.id == agent
    for token, audience in ((tokens["tether"], resource), (tokens["gateway"], None)):
        with pytest.raises(Unauthenticated, match=r"resource|audience"):
            at(token, audience)
    admin = client.headers["Authorization"].removeprefix("Bearer ")
    with pytest.raises(Unauthenticated, match="not a user token"):
        at(admin, resource)
    listed = client.get("/v1/agents", headers={"Authorization": f"Bearer {tokens['gateway']}"})
    assert listed.status_code == 401
