"""The stage ``tether demo`` plays on: the processes (``tether serve --workers 2`` and the
example MCP upstream, from the source checkout), their readiness, and the few helpers the story
uses to speak MCP and the API the way agents and operators do."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from tether.cli.client import CliError

if TYPE_CHECKING:
    from tether.sdk import AgentClient

SCOPE = "mcp:tools"  # what a token needs at the gateway here (TETHER_GATEWAY_SCOPE)

# What undoes each write tool of the example upstream (README "MCP gateway", compensations).
RULES = {
    "refund": {"undo": "cancel_refund", "args": {"refund_id": "{result.id}"}},
    "create_ticket": {"undo": "delete_ticket", "args": {"ticket_id": "{result.id}"}},
    "close_ticket": {"undo": "reopen_ticket", "args": {"ticket_id": "{args.ticket_id}"}},
    "transfer": {"irreversible": True},
}
_READY_SECONDS = 60.0

_PORT_TAKEN = (" is in use — ", "address already in use")


class DemoFailed(CliError):
    """A step did not go as the story says; the message says what happened instead."""

    code = "demo_failed"


def repo_root() -> Path:
    """The source checkout holding ``examples/payments_tickets`` (beside ``src/tether``, or
    the working directory); raises :class:`CliError` when there is none."""
    import tether

    for root in (Path(tether.__file__).resolve().parents[2], Path.cwd()):
        if (root / "examples" / "payments_tickets" / "server.py").is_file():
            return root
    raise CliError("the demo runs the example MCP upstream (examples/payments_tickets), which "
                   "is in Tether's source checkout, not the installed package — run it from "
                   "the repository (after make run's setup)")  # fmt: skip


# -- narration ------------------------------------------------------------------------------


@dataclass
class Narrator:
    stream: IO[str]
    started: float = field(default_factory=time.perf_counter)
    figures: dict[str, Any] = field(default_factory=dict)
    steps: int = 10

    def step(self, n: int, text: str) -> None:
        self.say(f"[{n}/{self.steps}] {text}")

    def more(self, text: str) -> None:
        self.say(f"       {text}")

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def since_start(self) -> float:
        return time.perf_counter() - self.started


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# -- the deployment -------------------------------------------------------------------------


@dataclass
class Stage:
    data_dir: Path
    url: str
    upstream: str  # the example upstream's MCP URL
    key: str  # the upstream's API key: the broker-only secret
    server: subprocess.Popen[bytes]
    upstream_proc: subprocess.Popen[bytes]
    admin_token: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def deployment(data_dir: Path, root: Path) -> Iterator[Stage]:
    """The example upstream and ``tether serve --workers 2`` on ``data_dir``, both ready;
    both stopped afterwards, whatever happens."""
    key = secrets.token_urlsafe(18)  # may begin with "-": passed as --api-key=KEY below
    with ExitStack() as stack:
        up_port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
        upstream = stack.enter_context(process(
            [sys.executable, "-m", "examples.payments_tickets.server", "--port", str(up_port),
             f"--api-key={key}"], cwd=root, env=env, log=data_dir / "upstream.log",
        ))  # fmt: skip
        upstream_url = f"http://127.0.0.1:{up_port}/mcp"
        for attempt in range(3):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            server = stack.enter_context(process(
                [sys.executable, "-m", "tether", "serve", "--workers", "2"], cwd=data_dir,
                env=server_env(data_dir, port, upstream_url), log=data_dir / "server.log",
            ))  # fmt: skip
            token = wait_ready(server, url, data_dir, retry=attempt < 2)
            if token is not None:
                break
        yield Stage(data_dir, url, upstream_url, key, server, upstream, token or "")


def server_env(data_dir: Path, port: int, upstream: str) -> dict[str, str]:
    """The server's environment: none of the caller's Tether settings (a tether.toml, a
    database URL) — the demo's deployment is its own."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TETHER_") and k not in ("PROMETHEUS_MULTIPROC_DIR",
                                                        "CREDENTIALS_DIRECTORY")}  # fmt: skip
    upstreams = [{
        "name": "payments", "url": upstream, "timeout_seconds": 10, "tools": RULES,
        "auth": {"kind": "header", "header": "X-Api-Key", "secret": "payments-key"},
    }]  # fmt: skip
    env.update(
        TETHER_DATA_DIR=str(data_dir),
        TETHER_DATABASE_URL=f"sqlite:///{data_dir / 'tether.db'}",
        TETHER_HOST="127.0.0.1",
        TETHER_PORT=str(port),
        TETHER_LOG_LEVEL="warning",
        TETHER_GATEWAY_UPSTREAMS=json.dumps(upstreams),
        TETHER_GATEWAY_SCOPE=SCOPE,
    )
    return env


@contextmanager
def process(
    argv: list[str], *, cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``argv`` running (a session of its own: a Ctrl-C reaches only the demo, which stops
    it), its output appended to ``log``; terminated at the end, killed if it lingers."""
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the server and the workers it forked
                proc.wait()


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, data_dir: Path, *, retry: bool
) -> str | None:
    """The admin token once the server at ``url`` is ready and is this deployment's; None if
    it exited because another process took its port meanwhile (and ``retry``)."""
    import httpx2 as httpx

    deadline = time.monotonic() + _READY_SECONDS
    log = data_dir / "server.log"
    with httpx.Client(base_url=url, timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                said = log.read_text(errors="replace").strip().splitlines() or ["no output"]
                if retry and any(taken in said[-1] for taken in _PORT_TAKEN):
                    return None
                raise DemoFailed(f"tether serve exited: {said[-1].strip()}")
            try:
                token = (data_dir / "admin.token").read_text().strip()
                me = http.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
                if me.status_code == 200 and http.get("/readyz").status_code == 200:
                    return token
            except (OSError, httpx.TransportError):
                pass
            time.sleep(0.1)
    raise DemoFailed(f"tether serve was not ready within {_READY_SECONDS:.0f} s")


# -- MCP ------------------------------------------------------------------------------------


@dataclass
class Call:
    """A tool call through MCP: whether it succeeded, its JSON answer, its round trip."""

    ok: bool
    body: Any
    seconds: float


def mcp(
    url: str, headers: dict[str, str], *calls: tuple[str, dict[str, Any]]
) -> tuple[list[str], list[Call]]:
    """The tools listed, then ``calls``, in one session of the ``mcp`` SDK's client at ``url``:
    each call timed alone (the client lists the tools first, as an agent does: a first call
    would list them itself, to check its result against the tool's output schema)."""
    import httpx2 as httpx
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async def run() -> tuple[list[str], list[Call]]:
        done = []
        async with (
            httpx.AsyncClient(headers=headers, timeout=30) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            names = sorted(tool.name for tool in (await client.list_tools()).tools)
            for tool, args in calls:
                started = time.perf_counter()
                got = await client.call_tool(tool, args)
                took = time.perf_counter() - started
                done.append(Call(not got.is_error, answer(got), took))
        return names, done

    return asyncio.run(run())


def answer(got: Any) -> Any:
    """A tool's answer as JSON: its structured content (a list comes as ``{"result": …}``),
    else its text (a refusal is a JSON text)."""
    if got.structured_content is not None:
        body = got.structured_content
        return body["result"] if set(body) == {"result"} else body
    text = "".join(getattr(part, "text", "") for part in got.content)
    try:
        return json.loads(text)
    except ValueError:
        return {"text": text}


@dataclass
class Agent:
    name: str
    id: str
    url: str
    api: AgentClient  # its tokens for Tether's own API
    gateway: AgentClient  # its tokens for the gateway (resource=<url>/mcp)

    def call(self, tool: str, **args: Any) -> Call:
        bearer = {"Authorization": f"Bearer {self.gateway.access_token()}"}
        return mcp(f"{self.url}/mcp", bearer, (f"payments.{tool}", args))[1][0]

    def tools(self) -> list[str]:
        bearer = {"Authorization": f"Bearer {self.gateway.access_token()}"}
        return mcp(f"{self.url}/mcp", bearer)[0]


def upstream_state(stage: Stage) -> tuple[int, dict[str, str]]:
    """What the upstream itself says (asked directly, with its key): the ``ops`` balance and
    each refund's status."""
    ops: dict[str, Any] = {"account": "ops"}
    _, (balance, refunds) = mcp(stage.upstream, {"X-Api-Key": stage.key},
                                 ("get_balance", ops), ("list_refunds", {}))  # fmt: skip
    return int(balance.body["balance"]), {r["id"]: r["status"] for r in refunds.body}


# -- the story ------------------------------------------------------------------------------
