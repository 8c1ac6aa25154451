"""Shared helpers of the decision and approval suites: a deployment seen through its HTTP API
(the bootstrap admin's client and an anonymous one), agent credentials and tokens, and the
ledger read back after a case."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from starlette.testclient import TestClient

from tests.conftest import Api
from tether.container import Services

EVAL = "/access/v1/evaluation"
EVALS = "/access/v1/evaluations"
EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
AT = "urn:ietf:params:oauth:token-type:access_token"


@dataclass
class Env:
    services: Services
    http: TestClient  # sends the bootstrap admin's token
    anon: TestClient  # sends no credentials
    api: Api

    @property
    def base(self) -> str:
        return self.services.settings.base_url


@contextmanager
def env_of(services: Services, http: TestClient) -> Iterator[Env]:
    anon = TestClient(http.app)
    try:
        yield Env(services, http, anon, Api(http))
    finally:
        anon.close()


def push_policies(http: TestClient, policies: str) -> None:
    pushed = http.put("/v1/policies", json={"policies": policies})
    assert pushed.status_code == 200, pushed.text


@dataclass(frozen=True)
class Cred:
    agent_id: str
    secret: str

    @property
    def form(self) -> dict[str, str]:
        return {"client_id": self.agent_id, "client_secret": self.secret}


def credential(e: Env, agent_id: str) -> Cred:
    made = e.http.post(f"/v1/agents/{agent_id}/credentials", json={"type": "api_key"})
    assert made.status_code == 201, made.text
    return Cred(agent_id, made.json()["client_secret"])


def token(e: Env, cred: Cred, **form: str) -> str:
    got = e.anon.post(
        "/oauth/token", data={"grant_type": "client_credentials", **cred.form, **form}
    )
    assert got.status_code == 200, got.text
    return str(got.json()["access_token"])


def head(e: Env) -> int:
    """The newest ledger seq: what a case reads its own events after."""
    page = e.http.get("/v1/audit/events", params={"order": "desc", "limit": 1})
    assert page.status_code == 200, page.text
    return int(page.json()["items"][0]["seq"])


def events_since(e: Env, seq: int, type_: str | None = None) -> list[dict[str, Any]]:
    filters = {"type": type_} if type_ else {}
    return [ev for ev in e.api.events(**filters) if ev["seq"] > seq]
