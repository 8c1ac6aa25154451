"""Attacks on the MCP gateway (issue 16), each tried against Tether and the example upstream
served on real ports (``tests.test_gateway.open_world``), each shown to fail:

- tokens: none, garbage, ``alg: none``, signed by another key, tampered, for another audience,
  expired (the services' clock moved past ``exp``), revoked, in the query string, two
  ``Authorization`` headers → refused (401, or 400 for the two headers) with the RFC 9728
  challenge; nothing decided, nothing recorded;
- DPoP (RFC 9449): a bound token as Bearer, without a proof, with another key's proof, a proof
  for another URL or without ``ath``, a replayed proof → 401; with a fresh proof per request
  the MCP client lists and calls;
- delegation (RFC 8693): a token exchanged for the gateway is decided with its chain (a forbid
  on ``context.delegated``, a permit on ``context.on_behalf_of``), the chain is on the
  decision and the ``tool.called`` event, and dies with its subject;
- mid-session: suspension and expiry of the agent refuse its next request;
- the agent's token (or proof) never reaches the upstream, for tools, resources and prompts;
  the broker-only key does, and never reaches the agent, the ledger or a log line;
- an upstream that goes down: the call is ``tool.called`` with ``upstream_failure``, linked
  to its decision;
- malformed JSON-RPC and oversized messages: JSON-RPC errors (413 for the size), no decision,
  no call;
- ``TETHER_GATEWAY_SCOPE``: a valid token without the scope → 403 ``insufficient_scope``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from examples.payments_tickets.server import http_app
from joserfc.jwk import ECKey
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError

from tests.pdp import AT, EXCHANGE, Cred
from tests.serverproc import free_port, served_in_thread
from tests.test_gateway import POLICIES, World, open_world
from tests.token_attacks.kit import hs256, parts, proof, segment, signed, unsigned
from tether.clock import FrozenClock, to_rfc3339
from tether.container import Services
from tether.credentials.dpop import access_token_hash

KEY = "k-upstream-123"  # the broker-only value open_world stores as "payments-key"
JSON_RPC = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
BALANCE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "payments.get_balance", "arguments": {"account": "ops"}},
}
MAX_MESSAGE = 65_536  # TETHER_GATEWAY_MAX_MESSAGE_BYTES in these worlds
MAX_BODY = 262_144  # TETHER_MAX_BODY_BYTES in these worlds

# The example's policies, and: its resources and prompts for payers; the echo upstream's
# tools for payers; no refund on someone's behalf (context.delegated).
ATTACK_POLICIES = (
    POLICIES
    + """
@id("tickets-for-payers")
permit (principal in Role::"payer", action in [Action::"resource.read", Action::"prompt.get"],
        resource);

@id("no-delegated-refunds")
forbid (principal, action == Action::"tool.call", resource)
when { context.delegated && resource has tool && resource.tool == "refund" };

@id("echo-for-payers")
permit (principal in Role::"payer", action == Action::"tool.call", resource)
when { resource has server && resource.server == "echo" };
"""
)


def _upstream(name: str, port: int, timeout: float = 5) -> dict[str, Any]:
    """An upstream at ``port`` that gets the broker-only key in ``X-Api-Key``."""
    auth = {"kind": "header", "header": "X-Api-Key", "secret": "payments-key"}
    url = f"http://127.0.0.1:{port}/mcp"
    return {"name": name, "url": url, "timeout_seconds": timeout, "auth": auth}


def _only_payments(up_port: int) -> list[dict[str, Any]]:
    return [_upstream("payments", up_port)]


@dataclass
class Attack:
    """A world on a frozen clock (started at the real time) whose upstream records every
    header it receives (``seen``), and an admin's HTTP client of it."""

    world: World
    clock: FrozenClock
    seen: list[dict[str, str]]
    admin: httpx.Client

    @property
    def mcp(self) -> str:
        return f"{self.world.url}/mcp"

    @property
    def metadata(self) -> str:
        return f"{self.world.url}/.well-known/oauth-protected-resource/mcp"

    @property
    def now(self) -> int:
        return int(self.clock.now().timestamp())

    def agent(self, roles: list[str], scopes: list[str] | None = None, name: str = "bot") -> Cred:
        body = {
            "name": name,
            "owner": "admin",
            "purpose": "attack",
            "risk_tier": "minimal",
            "roles": roles,
            "scopes": scopes or [],
        }
        made = self.admin.post("/v1/agents", json=body)
        assert made.status_code == 201, made.text
        agent = made.json()["id"]
        cred = self.admin.post(f"/v1/agents/{agent}/credentials", json={"type": "api_key"})
        assert cred.status_code == 201, cred.text
        return Cred(agent, cred.json()["client_secret"])

    def token(
        self, cred: Cred, *, dpop: ECKey | None = None, gateway: bool = True, **form: str
    ) -> str:
        """An access token of ``cred`` (for the gateway unless ``gateway`` is False), bound to
        ``dpop``'s key when given."""
        data = {"grant_type": "client_credentials", **cred.form, **form}
        if gateway:
            data.setdefault("resource", self.mcp)
        url = f"{self.world.url}/oauth/token"
        headers = {"DPoP": proof(dpop, htm="POST", htu=url, now=self.now)} if dpop else {}
        got = httpx.post(url, data=data, headers=headers)
        assert got.status_code == 200, got.text
        assert got.json()["token_type"] == ("DPoP" if dpop else "Bearer")
        return str(got.json()["access_token"])

    def post(
        self, body: Any, token: str | None = None, *, scheme: str = "Bearer", **headers: str
    ) -> httpx.Response:
        sent = {**JSON_RPC, **({"Authorization": f"{scheme} {token}"} if token else {}), **headers}
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.mcp, content=content, headers=sent, timeout=30)

    def dpop_headers(
        self, token: str, key: ECKey, *, htu: str | None = None, age: int = 0, ath: bool = True
    ) -> dict[str, str]:
        """``Authorization: DPoP`` and a proof by ``key`` of a POST to ``htu`` (the gateway),
        made ``age`` seconds ago, with ``ath`` unless told otherwise."""
        claims = {"ath": access_token_hash(token)} if ath else {}
        made = proof(key, htm="POST", htu=htu or self.mcp, now=self.now - age, **claims)
        return {"Authorization": f"DPoP {token}", "DPoP": made}

    def ledger(self) -> list[dict[str, Any]]:
        """Every event, in order."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
            page = self.admin.get("/v1/audit/events", params=params).json()
            items += page["items"]
            if (cursor := page["next_cursor"]) is None:
                return items

    def since(self, before: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
        return [e for e in self.ledger()[len(before) :] if not types or e["type"] in types]

    def agent_op(self, agent: str, op: str, **body: Any) -> None:
        done = self.admin.post(f"/v1/agents/{agent}/{op}", json=body)
        assert done.status_code in (200, 201), done.text


def _recording(seen: list[dict[str, str]]) -> Callable[[Any], Any]:
    def wrap(app: Any) -> Any:
        async def recorded(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append({k.decode().lower(): v.decode() for k, v in scope["headers"]})
            await app(scope, receive, send)

        return recorded

    return wrap


@contextlib.contextmanager
def _attack(
    make_services: Callable[..., Services], tmp_path: Path, **options: Any
) -> Iterator[Attack]:
    clock = FrozenClock(datetime.now(UTC))
    seen: list[dict[str, str]] = []
    options.setdefault("upstreams", _only_payments)
    options.setdefault("ready", ("payments",))
    with open_world(
        make_services,
        tmp_path,
        policies=ATTACK_POLICIES,
        wrap=_recording(seen),
        clock=clock,
        gateway_max_message_bytes=MAX_MESSAGE,
        max_body_bytes=MAX_BODY,
        **options,
    ) as world:
        admin_token = world.services.settings.admin_token_path.read_text().strip()
        with httpx.Client(
            base_url=world.url, timeout=30, headers={"Authorization": f"Bearer {admin_token}"}
        ) as admin:
            yield Attack(world, clock, seen, admin)


@pytest.fixture
def a(make_services: Callable[..., Services], tmp_path: Path) -> Iterator[Attack]:
    with _attack(make_services, tmp_path) as attack:
        yield attack


def _session(url: str, http: httpx.AsyncClient, fn: Callable[[Client], Awaitable[Any]]) -> Any:
    async def run() -> Any:
        async with http, Client(streamable_http_client(url, http_client=http)) as c:
            return await fn(c)

    return asyncio.run(run())


def _bearer_session(a: Attack, token: str, fn: Callable[[Client], Awaitable[Any]]) -> Any:
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return _session(a.mcp, http, fn)


def _refused(a: Attack, got: httpx.Response, status: int = 401) -> dict[str, Any]:
    """401 (or ``status``) with the RFC 9728 challenge and an OAuth error body."""
    assert got.status_code == status, got.text
    challenge = got.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{a.metadata}"' in challenge
    assert got.headers["cache-control"] == "no-store"
    return dict(got.json())


def _rpc(got: httpx.Response) -> Any:
    """A JSON-RPC answer, sent as JSON or as the one event of an SSE stream (streamable HTTP
    answers either way)."""
    if got.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in got.text.splitlines() if line.startswith("data:")]
        assert len(data) == 1, got.text
        return json.loads(data[0])
    return got.json()


def _text(result: Any) -> str:
    return str(result.content[0].text)


# -- tokens ---------------------------------------------------------------------------------


def test_forged_foreign_expired_and_revoked_tokens_are_refused_and_nothing_is_called(
    a: Attack,
) -> None:
    cred = a.agent(["payer"])
    good = a.token(cred)
    assert a.post(BALANCE, good).status_code == 200  # the control: this token works
    header, claims, _sig = parts(good)
    stranger = ECKey.generate_key("P-256")
    other = a.agent(["payer"])
    tampered_claims = {**claims, "sub": other.agent_id, "client_id": other.agent_id}
    public_jwk = json.dumps(a.admin.get("/.well-known/jwks.json").json()["keys"][0]).encode()
    attacks: dict[str, str | None] = {
        "none": None,
        "garbage": "x.y.z",
        "alg none": unsigned({**header, "alg": "none"}, claims),
        "another key": signed({**header, "alg": "ES256"}, claims, stranger),
        "hs256 with the public key": hs256({**header, "alg": "HS256"}, claims, public_jwk),
        "tampered": good.replace(good.split(".")[1], segment(tampered_claims)),
        "for Tether's API": a.token(cred, gateway=False),
        "for another resource": a.token(cred, resource="https://elsewhere.example/mcp"),
    }
    expiring, revoked = a.token(cred), a.token(cred)
    assert a.post(BALANCE, expiring).status_code == 200
    assert a.post(BALANCE, revoked).status_code == 200
    done = a.admin.post("/oauth/revoke", data={"token": revoked})
    assert done.status_code == 200, done.text
    before = a.ledger()
    for label, token in attacks.items():
        body = _refused(a, a.post(BALANCE, token))
        assert body["error"] == "invalid_token", label
        if token is None:  # RFC 6750 §3.1: no error code when no credentials were sent
            assert "error=" not in a.post(BALANCE).headers["www-authenticate"]
        else:
            assert 'error="invalid_token"' in a.post(BALANCE, token).headers["www-authenticate"]
    assert "revoked" in _refused(a, a.post(BALANCE, revoked))["error_description"]
    # the token in the query string (RFC 6750 §2.3 is not honoured) or twice
    _refused(a, httpx.post(f"{a.mcp}?access_token={good}", json=BALANCE, headers=JSON_RPC))
    twice = httpx.post(
        a.mcp,
        json=BALANCE,
        headers=httpx.Headers(
            [
                *JSON_RPC.items(),
                ("Authorization", f"Bearer {good}"),
                ("Authorization", f"Bearer {revoked}"),
            ]
        ),
    )
    assert twice.status_code == 400, twice.text
    assert twice.json()["error"] == "invalid_request"
    a.clock.advance(a.world.services.settings.token_ttl_seconds + 1)  # past exp
    assert "expired" in _refused(a, a.post(BALANCE, expiring))["error_description"]
    assert a.since(before, "tool.called", "decision") == []


def test_a_dpop_bound_token_needs_a_fresh_proof_of_its_key_for_the_gateway(a: Attack) -> None:
    key, stranger = ECKey.generate_key("P-256"), ECKey.generate_key("P-256")
    token = a.token(a.agent(["payer"]), dpop=key)
    assert parts(token)[1]["cnf"]["jkt"] == key.thumbprint()
    before = a.ledger()
    attempts = {
        "as a Bearer token": {"Authorization": f"Bearer {token}"},
        "without a proof": {"Authorization": f"DPoP {token}"},
        "another key's proof": a.dpop_headers(token, stranger),
        "a proof for Tether's API": a.dpop_headers(token, key, htu=f"{a.world.url}/v1/agents"),
        "a proof without ath": a.dpop_headers(token, key, ath=False),
        "a stale proof": a.dpop_headers(token, key, age=3600),
    }
    for label, headers in attempts.items():
        body = _refused(a, httpx.post(a.mcp, json=BALANCE, headers={**JSON_RPC, **headers}))
        assert body["error"] in ("invalid_token", "invalid_dpop_proof"), (label, body)
    assert a.since(before, "tool.called", "decision") == []
    # With its proof, once: a replay of the same proof is refused.
    good = a.dpop_headers(token, key)
    first = httpx.post(a.mcp, json=BALANCE, headers={**JSON_RPC, **good})
    assert first.status_code == 200, first.text
    assert json.loads(_rpc(first)["result"]["content"][0]["text"])["balance"] == 100_000
    replayed = _refused(a, httpx.post(a.mcp, json=BALANCE, headers={**JSON_RPC, **good}))
    assert replayed["error"] == "invalid_dpop_proof"
    assert "already used" in replayed["error_description"]
    # The MCP client with a fresh proof on every request it makes.
    auth = _DPoPAuth(token, key, a)
    http = httpx.AsyncClient(auth=auth, timeout=30)

    async def use(c: Client) -> tuple[list[str], Any]:
        names = [t.name for t in (await c.list_tools()).tools]
        return names, await c.call_tool("payments.get_balance", {"account": "sales"})

    names, result = _session(a.mcp, http, use)
    assert "payments.get_balance" in names
    assert not result.is_error, _text(result)
    assert json.loads(_text(result))["balance"] == 25_000
    assert auth.proofs >= 2
    assert not any("dpop" in h or "authorization" in h for h in a.seen)


class _DPoPAuth(httpx.Auth):
    """``Authorization: DPoP`` and a new proof (RFC 9449 §7.1) on every request."""

    def __init__(self, token: str, key: ECKey, a: Attack) -> None:
        self.token, self.key, self.a, self.proofs = token, key, a, 0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        htu = str(request.url.copy_with(query=None, fragment=None))
        request.headers["Authorization"] = f"DPoP {self.token}"
        request.headers["DPoP"] = proof(
            self.key, htm=request.method, htu=htu, now=self.a.now, ath=access_token_hash(self.token)
        )
        self.proofs += 1
        yield request


# -- delegation -----------------------------------------------------------------------------


def _exchange(a: Attack, actor: Cred, subject_token: str) -> str:
    """RFC 8693: ``actor`` acts for whoever ``subject_token`` names, at the gateway."""
    got = httpx.post(
        f"{a.world.url}/oauth/token",
        data={
            "grant_type": EXCHANGE,
            **actor.form,
            "subject_token": subject_token,
            "subject_token_type": AT,
            "actor_token": a.token(actor, gateway=False),
            "actor_token_type": AT,
            "resource": a.mcp,
        },
    )
    assert got.status_code == 200, got.text
    return str(got.json()["access_token"])


def test_a_delegated_call_is_decided_and_recorded_with_its_chain(a: Attack) -> None:
    alice, carol = a.agent(["payer"], name="alice"), a.agent(["payer"], name="carol")
    bob = a.agent(["assistant", "payer"], name="bob")  # a payer: small refunds of its own
    # A permit on context.on_behalf_of: bob may open tickets for alice, for no one else.
    pushed = a.admin.put(
        "/v1/policies",
        json={
            "schema": a.admin.get("/v1/policies").json()["schema"],
            "policies": ATTACK_POLICIES
            + f"""
@id("tickets-for-alice")
permit (principal in Role::"assistant", action == Action::"tool.call", resource)
when {{ resource has tool && resource.tool == "create_ticket" && context has on_behalf_of
        && context.on_behalf_of == "{alice.agent_id}" }};
""",
        },
    )
    assert pushed.status_code == 200, pushed.text
    for_alice = _exchange(a, bob, a.token(alice, gateway=False))
    for_carol = _exchange(a, bob, a.token(carol, gateway=False))
    assert parts(for_alice)[1]["act"] == {"sub": bob.agent_id}
    own = a.token(bob)
    refund = {"payment_id": "pay_1", "amount": 50}
    ticket = {"title": "from bob"}

    async def calls(c: Client) -> list[Any]:
        return [
            await c.call_tool("payments.get_balance", {"account": "ops"}),
            await c.call_tool("payments.refund", refund),
            await c.call_tool("payments.create_ticket", ticket),
        ]

    before = a.ledger()
    balance, refunded, opened = _bearer_session(a, for_alice, calls)
    assert not balance.is_error, _text(balance)  # read-payments
    assert refunded.is_error  # no-delegated-refunds, though bob may refund on its own
    assert "no-delegated-refunds" in json.loads(_text(refunded))["reasons"]
    assert not opened.is_error, _text(opened)  # tickets-for-alice
    _b, _r, for_carol_ticket = _bearer_session(a, for_carol, calls)
    assert for_carol_ticket.is_error
    own_balance, own_refund, own_ticket = _bearer_session(a, own, calls)
    assert not own_refund.is_error  # as a payer
    assert not own_balance.is_error
    assert own_ticket.is_error  # on nobody's behalf
    # The chain is on the decision and on the call, linked.
    decisions = {e["id"]: e for e in a.since(before, "decision")}
    called = [e for e in a.since(before, "tool.called") if e["on_behalf_of"] == alice.agent_id]
    assert [(e["resource"]["id"], e["outcome"]) for e in called] == [
        ("payments.get_balance", "ok"),
        ("payments.refund", "refused"),
        ("payments.create_ticket", "ok"),
    ]
    for event in called:
        assert event["agent_id"] == bob.agent_id
        assert event["chain"] == [alice.agent_id, bob.agent_id]
        decision = decisions[event["details"]["decision_event"]]
        assert decision["chain"] == [alice.agent_id, bob.agent_id]
        assert decision["on_behalf_of"] == alice.agent_id
        assert decision["decision"] == ("allow" if event["outcome"] == "ok" else "deny")
    denied = [
        d
        for d in decisions.values()
        if d["resource"]["id"] == "payments.refund" and d["on_behalf_of"] == alice.agent_id
    ]
    assert [d["decision"] for d in denied] == ["deny"]
    assert "no-delegated-refunds" in denied[0]["reasons"]
    # The delegation dies with its subject; bob's own token lives on.
    a.agent_op(alice.agent_id, "kill", reason="compromised")
    assert a.post(BALANCE, for_alice).status_code == 401
    assert a.post(BALANCE, own).status_code == 200


# -- mid-session ----------------------------------------------------------------------------


def test_a_suspended_or_expired_agent_is_refused_mid_session(a: Attack) -> None:
    suspended, expiring = a.agent(["payer"], name="s"), a.agent(["payer"], name="e")
    tokens = {suspended.agent_id: a.token(suspended), expiring.agent_id: a.token(expiring)}

    def stop(agent: str) -> None:
        if agent == suspended.agent_id:
            a.agent_op(agent, "suspend", reason="incident")
        else:  # expires in 10 s, then the clock passes it; its token (300 s) is still valid
            soon = to_rfc3339(a.clock.now() + timedelta(seconds=10))
            patched = a.admin.patch(f"/v1/agents/{agent}", json={"expires_at": soon})
            assert patched.status_code == 200, patched.text
            a.clock.advance(20)
            assert parts(tokens[agent])[1]["exp"] > a.now

    for agent, token in tokens.items():
        statuses: list[int] = []

        async def seen(response: httpx.Response, statuses: list[int] = statuses) -> None:
            statuses.append(response.status_code)

        http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            event_hooks={"response": [seen]},
        )

        async def twice(c: Client, agent: str = agent) -> tuple[Any, Any]:
            first = await c.call_tool("payments.get_balance", {"account": "ops"})
            await asyncio.to_thread(stop, agent)
            try:
                second = await c.call_tool("payments.get_balance", {"account": "ops"})
            except MCPError as exc:
                return first, exc
            return first, second

        before = a.ledger()
        first, second = _session(a.mcp, http, twice)
        assert not first.is_error
        assert statuses[-1] == 401, statuses
        assert isinstance(second, MCPError)  # the client's answer to the 401
        assert [e["resource"]["id"] for e in a.since(before, "tool.called")] == [
            "payments.get_balance"
        ]  # the first call only
        refused = a.post(BALANCE, token)
        why = _refused(a, refused)["error_description"]
        assert ("suspended" if agent == suspended.agent_id else "expired") in why, why


# -- what crosses the gateway ---------------------------------------------------------------


@contextlib.contextmanager
def _log_lines() -> Iterator[list[str]]:
    """Every log record (DEBUG and up) of this process while the block runs, formatted with
    its traceback: Tether's, the MCP SDK's, httpx's, both servers'."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    loggers = [
        logging.getLogger(name)
        for name in ("", "tether", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx2", "mcp")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def test_the_upstream_gets_the_broker_only_key_never_the_token_and_nothing_else_the_key(
    make_services: Callable[..., Services],
    tmp_path: Path,
) -> None:
    with _log_lines() as lines, _attack(make_services, tmp_path) as a:
        token = a.token(a.agent(["payer"]))
        key = ECKey.generate_key("P-256")
        bound = a.token(a.agent(["payer"]), dpop=key)
        upstream_before = len(a.seen)

        async def every_kind(c: Client) -> list[Any]:
            out: list[Any] = [
                await c.list_tools(),
                await c.list_resources(),
                await c.list_prompts(),
            ]
            for name, args in [
                ("payments.get_balance", {"account": "ops"}),
                ("payments.get_balance", {"account": "nope"}),  # a tool error
                ("payments.fail", {"message": "x"}),  # denied
                ("payments.refund", {"payment_id": "pay_404", "amount": 5}),
            ]:
                out.append(await c.call_tool(name, args))
            out.append(await c.read_resource("tickets://t1"))
            out.append(await c.get_prompt("payments.triage", {"ticket_id": "t1"}))
            return out

        answers = _bearer_session(a, token, every_kind)
        answers += _session(
            a.mcp, httpx.AsyncClient(auth=_DPoPAuth(bound, key, a), timeout=30), every_kind
        )
        assert [x.is_error for x in answers[3:7]] == [False, True, True, True]
        assert "Triage ticket t1" in json.dumps(answers[8].model_dump(mode="json"))
        raw = [
            a.post(
                {
                    "jsonrpc": "2.0",
                    "id": 9,
                    "method": "tools/call",
                    "params": {"name": n, "arguments": {}},
                },
                token,
            ).text
            for n in ("payments.nosuch", "payments.get_balance", "nosuch.tool")
        ]
        # what reached the upstream: the key on every request, no token, no proof
        upstream = a.seen[upstream_before:]
        assert len(upstream) >= 10, len(upstream)
        for headers in a.seen:
            assert headers.get("x-api-key") == KEY
            assert "authorization" not in headers, headers
            assert "dpop" not in headers, headers
            assert not any(t in v for v in headers.values() for t in (token, bound)), headers
        # what the agent, the ledger and the logs got: never the key
        shown = json.dumps([x.model_dump(mode="json") for x in answers]) + "".join(raw)
        assert KEY not in shown
        ledger = a.ledger()
        assert {"tool.called", "decision"} <= {e["type"] for e in ledger}
        assert KEY not in json.dumps(ledger)
    loggers = {line.split(" ")[0] for line in lines}
    assert {"tether.access", "tether.gateway", "mcp.server.lowlevel.server", "httpx2"} <= loggers
    assert [line for line in lines if KEY in line] == []
    # the agents' tokens are no secret to the agents, but no log line carries one either
    assert [line for line in lines if token in line or bound in line] == []


def _echo_upstream() -> Any:
    """An upstream that reflects the key it was sent: in a result, a tool error and a JSON-RPC
    error."""
    keys: list[str] = []
    server = MCPServer("echo")

    @server.tool()
    def reveal() -> str:
        """Say what key this request carried."""
        return f"the key I got: {keys[-1]}"

    @server.tool()
    def choke() -> str:
        """A tool error quoting the key."""
        raise ToolError(f"rejected key {keys[-1]}")

    @server.tool()
    def refuse() -> str:
        """A JSON-RPC error quoting the key."""
        raise MCPError(code=-32602, message=f"rejected key {keys[-1]}")

    app = server.streamable_http_app(stateless_http=True, json_response=True)

    async def keeping(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            sent = dict(scope["headers"]).get(b"x-api-key")
            if sent:
                keys.append(sent.decode())
        await app(scope, receive, send)

    return keeping


def test_an_upstream_that_echoes_the_broker_only_key_does_not_leak_it_to_the_agent(
    make_services: Callable[..., Services],
    tmp_path: Path,
) -> None:
    echo_port = free_port()

    def upstreams(up_port: int) -> list[dict[str, Any]]:
        return [_upstream("payments", up_port), _upstream("echo", echo_port)]

    with (
        served_in_thread(_echo_upstream(), echo_port),
        _attack(make_services, tmp_path, upstreams=upstreams, ready=("payments", "echo")) as a,
    ):
        token = a.token(a.agent(["payer"]))

        async def both(c: Client) -> list[Any]:
            return [await c.call_tool(f"echo.{name}", {}) for name in ("reveal", "choke", "refuse")]

        answers = _bearer_session(a, token, both)
        assert "the key I got" in _text(answers[0])
        assert KEY not in json.dumps(a.ledger())  # the records hide it already
        shown = {
            name: json.dumps(answer.model_dump(mode="json"))
            for name, answer in zip(("reveal", "choke", "refuse"), answers, strict=True)
        }
        assert [name for name, text in shown.items() if KEY in text] == []


def test_an_upstream_that_goes_down_is_a_recorded_upstream_failure_linked_to_its_decision(
    make_services: Callable[..., Services],
    tmp_path: Path,
) -> None:
    flaky_port = free_port()

    def upstreams(up_port: int) -> list[dict[str, Any]]:
        return [_upstream("payments", up_port), _upstream("flaky", flaky_port, timeout=2)]

    with contextlib.ExitStack() as flaky:
        flaky.enter_context(served_in_thread(http_app(api_key=KEY), flaky_port))
        with _attack(
            make_services, tmp_path, upstreams=upstreams, ready=("payments", "flaky")
        ) as a:
            cred = a.agent(["payer"])
            token = a.token(cred)

            async def call(c: Client) -> Any:
                return await c.call_tool("flaky.get_balance", {"account": "ops"})

            assert not _bearer_session(a, token, call).is_error
            flaky.close()  # the upstream goes away
            before = a.ledger()
            failed = _bearer_session(a, token, call)
            assert failed.is_error
            assert "upstream flaky failed" in _text(failed)
            assert KEY not in _text(failed)
            (called,) = a.since(before, "tool.called")
            assert called["agent_id"] == cred.agent_id
            assert called["resource"]["id"] == "flaky.get_balance"
            assert called["outcome"] == "upstream_failure"
            decisions = {e["id"]: e for e in a.since(before, "decision")}
            decision = decisions[called["details"]["decision_event"]]
            assert (decision["decision"], decision["agent_id"]) == ("allow", cred.agent_id)
            assert decision["resource"]["id"] == "flaky.get_balance"
            assert decision["seq"] < called["seq"]
            # the gateway and the other upstream go on
            assert a.post(BALANCE, token).status_code == 200


# -- malformed and oversized messages -------------------------------------------------------


def test_malformed_json_rpc_is_an_error_and_neither_decided_nor_called(a: Attack) -> None:
    token = a.token(a.agent(["payer"]))
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
    malformed: dict[str, Any] = {
        "truncated JSON": b'{"jsonrpc": "2.0", "id": 1, "method": ',
        "not UTF-8": b'{"jsonrpc": "2.0", "id": 1, "method": "\xff\xfe"}',
        "JSON-RPC 1.0": {**BALANCE, "jsonrpc": "1.0"},
        "no version": {k: v for k, v in BALANCE.items() if k != "jsonrpc"},
        "no method": {"jsonrpc": "2.0", "id": 3},
        "unknown method": {"jsonrpc": "2.0", "id": 4, "method": "tools/destroy"},
        "a batch": [BALANCE, {**BALANCE, "id": 2}],
        "a number": 42,
        "name not a string": {**call, "params": {"name": 42}},
        "arguments not an object": {
            **call,
            "params": {"name": "payments.get_balance", "arguments": "ops"},
        },
        "params not an object": {**call, "params": ["payments.get_balance"]},
        "no such server": {**call, "params": {"name": "nosuch.get_balance", "arguments": {}}},
        "no such tool": {**call, "params": {"name": "payments.nosuch", "arguments": {}}},
        "no server at all": {**call, "params": {"name": "get_balance", "arguments": {}}},
    }
    before = a.ledger()
    for label, body in malformed.items():
        got = a.post(body, token)
        assert got.status_code in (200, 400), (label, got.status_code, got.text)
        answer = _rpc(got)
        assert isinstance(answer, dict), (label, answer)
        assert answer.get("jsonrpc") == "2.0", (label, answer)
        assert isinstance(answer["error"]["code"], int), (label, answer)
        assert answer["error"]["code"] in (-32700, -32600, -32601, -32602), (label, answer)
    assert a.since(before, "tool.called", "decision") == []
    assert a.post(BALANCE, token).status_code == 200  # and the gateway goes on


def test_an_oversized_message_is_413_with_a_json_rpc_error_and_no_call(a: Attack) -> None:
    token = a.token(a.agent(["payer"]))

    def balance_of(size: int) -> bytes:
        body = json.dumps(
            {**BALANCE, "params": {"name": "payments.get_balance", "arguments": {"account": "x"}}}
        )
        return body.replace('"x"', '"' + "x" * (size - len(body) + 1) + '"').encode()

    assert len(balance_of(MAX_MESSAGE)) == MAX_MESSAGE
    before = a.ledger()
    for label, content in {
        "with Content-Length": balance_of(MAX_MESSAGE + 1),
        "chunked": iter(
            [balance_of(MAX_MESSAGE + 1)[i : i + 8192] for i in range(0, MAX_MESSAGE + 1, 8192)]
        ),
    }.items():
        headers = {**JSON_RPC, "Authorization": f"Bearer {token}"}
        got = httpx.post(a.mcp, content=content, headers=headers, timeout=30)
        assert got.status_code == 413, (label, got.text)
        assert got.json() == {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": -32600,
                "message": f"Invalid Request: the message exceeds {MAX_MESSAGE} bytes",
            },
        }, label
    # over TETHER_MAX_BODY_BYTES too: /mcp answers with its own limit, in JSON-RPC's shape
    huge = httpx.post(
        a.mcp,
        content=balance_of(MAX_BODY + 1),
        headers={**JSON_RPC, "Authorization": f"Bearer {token}"},
    )
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == -32600
    assert a.since(before, "tool.called", "decision") == []
    # a message at the limit is read whole, decided and called (no such account: a tool error)
    at_limit = httpx.post(
        a.mcp,
        content=balance_of(MAX_MESSAGE),
        headers={**JSON_RPC, "Authorization": f"Bearer {token}"},
    )
    assert at_limit.status_code == 200, at_limit.text
    assert _rpc(at_limit)["result"]["isError"] is True
    assert [e["outcome"] for e in a.since(before, "tool.called")] == ["tool_error"]


# -- scope ----------------------------------------------------------------------------------


def test_a_token_without_the_gateways_scope_is_403_insufficient_scope(
    make_services: Callable[..., Services],
    tmp_path: Path,
) -> None:
    with _attack(make_services, tmp_path, gateway_scope="mcp:tools") as a:
        meta = httpx.get(a.metadata).json()
        assert meta["scopes_supported"] == ["mcp:tools"]
        # the 401 says which scope to ask for (no error: no token was sent)
        unauthenticated = a.post(BALANCE)
        _refused(a, unauthenticated)
        challenge = unauthenticated.headers["www-authenticate"]
        assert challenge == f'Bearer resource_metadata="{a.metadata}", scope="mcp:tools"'

        scoped = a.agent(["payer"], scopes=["mcp:tools", "reports"])
        assert a.post(BALANCE, a.token(scoped)).status_code == 200  # all it may hold
        before = a.ledger()
        for token in (a.token(scoped, scope="reports"), a.token(a.agent(["payer"]))):
            got = a.post(BALANCE, token)
            assert got.status_code == 403, got.text
            assert got.headers["www-authenticate"] == (
                f'Bearer resource_metadata="{a.metadata}", error="insufficient_scope", '
                'error_description="the access token lacks the scope(s) mcp:tools; ask the '
                'token endpoint for a token with scope=mcp:tools", scope="mcp:tools"'
            )
            body = got.json()
            assert (body["error"], body["scope"]) == ("insufficient_scope", "mcp:tools")
        assert a.since(before, "tool.called", "decision") == []
