"""Delegation from the CLI against a real server: ``tether users subject-token`` mints a subject
token for the caller, ``tether token --exchange`` turns it and an agent's credential into a
delegated token (RFC 8693) — the README's example, run as written, its output captured the way
scripts capture it.

One server per backend (per xdist worker) for the module: every test makes its own agents and
users (unique names) and asserts only on what it made."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import jwt
import pytest

from tests import forkserver
from tests.conftest import BACKENDS, bearer
from tests.serverproc import http_client, module_server, run_cli

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[1] / "README.md"
JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


@dataclass
class Cli:
    url: str
    cwd: Path
    env: dict[str, str]
    admin: httpx.Client  # set-up the CLI is not under test for (the README creates agents)

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env={**self.env, **env}, cwd=self.cwd)

    def json(self, *args: str, **env: str) -> Any:
        result = self.run(*args, "--json", **env)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    def claims(self, token: str, audience: str | None = None) -> dict[str, Any]:
        """The token's claims, its signature checked against the server's JWKS."""
        key = jwt.PyJWKClient(f"{self.url}/.well-known/jwks.json").get_signing_key_from_jwt(token)
        return dict(
            jwt.decode(token, key, algorithms=["ES256", "EdDSA"], audience=audience or self.url)
        )


@pytest.fixture(scope="module", params=BACKENDS)
def cli(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    with (
        module_server(request, tmp_path_factory, "delegation") as (tmp, url, env, token, _backend),
        http_client(base_url=url, headers=bearer(token), timeout=30) as admin,
    ):
        # A narrow terminal width: nothing a script captures may be wrapped to it.
        yield Cli(url, tmp, forkserver.on_path({**env, "COLUMNS": "40"}), admin)


def _agent(cli: Cli, name: str, owner: str = "admin") -> tuple[str, str]:
    """An agent with an API key, made through the API: the README's example makes its agent
    and key with the CLI."""
    agent = cli.admin.post("/v1/agents", json={
        "name": name, "owner": owner, "purpose": "p", "risk_tier": "minimal",
        "scopes": ["docs:read", "docs:write"],
    })  # fmt: skip
    assert agent.status_code == 201, agent.text
    agent_id = agent.json()["id"]
    key = cli.admin.post(f"/v1/agents/{agent_id}/credentials", json={"type": "api_key"})
    assert key.status_code == 201, key.text
    return str(agent_id), str(key.json()["client_secret"])


def test_the_readme_delegation_example_runs_as_written(cli: Cli) -> None:
    block = next(
        b
        for b in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
        if "tether token --exchange" in b
    )
    script = block + 'printf "%s\\n" "$HELPER" "$SUBJECT" "$T"\n'
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cli.cwd,
        env=cli.env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    helper, subject, token = result.stdout.splitlines()[-3:]
    assert JWT.match(subject), subject
    assert JWT.match(token), token
    admin = cli.json("whoami")
    claims = cli.claims(token)
    assert claims["sub"] == admin["id"]  # whom it acts for
    assert claims["act"] == {"sub": helper}  # who acts
    assert claims["client_id"] == helper
    assert claims["scope"] == "docs:read"
    # The subject token is not an access token: it names the one agent that may act.
    assert jwt.get_unverified_header(subject)["typ"] == "JWT"
    assert jwt.decode(subject, options={"verify_signature": False})["may_act"] == {"sub": helper}


def test_a_supervisor_delegates_to_their_own_agent(cli: Cli) -> None:
    username = f"alice-{secrets.token_hex(4)}"
    alice = cli.json("users", "create", username, "--role", "supervisor", "--token")
    helper, secret = _agent(cli, "alices-helper", owner=username)
    minted = cli.run(
        "users", "subject-token", "--agent", helper, "--scope", "docs:write",
        "--expires-in", "120", TETHER_TOKEN=alice["token"],
    )  # fmt: skip
    assert minted.returncode == 0, minted.stderr
    subject = minted.stdout.strip()
    assert minted.stdout == subject + "\n"  # one bare line, however narrow the terminal
    exchanged = cli.json(
        "token", "--exchange", "--client-id", helper, "--client-secret", secret,
        "--subject-token", subject, "--resource", "https://docs.example/api",
    )  # fmt: skip
    assert exchanged["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    claims = cli.claims(exchanged["access_token"], audience="https://docs.example/api")
    assert claims["sub"] == alice["id"]
    assert claims["act"] == {"sub": helper}
    assert claims["scope"] == "docs:write"
    assert exchanged["expires_in"] <= 120

    # Not for an agent she neither owns nor supervises.
    theirs, _ = _agent(cli, "admins-agent")
    refused = cli.run("users", "subject-token", "--agent", theirs, TETHER_TOKEN=alice["token"])
    assert refused.returncode != 0
    assert "forbidden" in refused.stderr
    assert refused.stdout == ""


def test_an_agent_token_exchanges_into_a_chain(cli: Cli) -> None:
    first, first_secret = _agent(cli, "first")
    second, second_secret = _agent(cli, "second")
    subject = cli.run("users", "subject-token", "--agent", first, "--scope", "docs:read")
    assert subject.returncode == 0, subject.stderr
    delegated = cli.run(
        "token", "--exchange", "--client-id", first, "--client-secret", first_secret,
        "--subject-token", subject.stdout.strip(),
    )  # fmt: skip
    assert delegated.returncode == 0, delegated.stderr
    # The second agent acts on the first's delegated token: act nests, newest outermost.
    chained = cli.run(
        "token", "--exchange", "--client-id", second, "--client-secret", second_secret,
        "--subject-token", delegated.stdout.strip(), "--subject-token-type", "access_token",
    )  # fmt: skip
    assert chained.returncode == 0, chained.stderr
    claims = cli.claims(chained.stdout.strip())
    assert claims["act"] == {"sub": second, "act": {"sub": first}}


def test_exchange_mistakes_are_one_line_each(cli: Cli) -> None:
    helper, secret = _agent(cli, "helper")
    other, other_secret = _agent(cli, "other")
    subject = cli.run("users", "subject-token", "--agent", helper).stdout.strip()
    base = ("token", "--client-id", helper, "--client-secret", secret)
    cases: list[tuple[tuple[str, ...], str]] = [
        ((*base, "--exchange"), "--exchange needs --subject-token"),
        ((*base, "--subject-token", subject), "add --exchange"),
        ((*base, "--exchange", "--subject-token", subject, "--subject-token-type", "saml"),
         "use jwt or access_token"),
        ((*base, "--exchange", "--subject-token", "not-a-token"), "invalid_grant"),
        # The subject token names the helper: another agent may not use it.
        (("token", "--client-id", other, "--client-secret", other_secret, "--exchange",
          "--subject-token", subject), "may_act"),
        (("token", "--client-id", helper, "--client-secret", "wrong", "--exchange",
          "--subject-token", subject), "invalid_client"),
        (("users", "subject-token", "--agent", helper, "--expires-in", "5"), "expires_in"),
    ]  # fmt: skip
    for args, needle in cases:
        result = cli.run(*args)
        assert result.returncode != 0, args
        assert result.stdout == "", (args, result.stdout)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("error: "), lines
        assert needle in lines[0], (args, lines)
        assert "Traceback" not in result.stderr
