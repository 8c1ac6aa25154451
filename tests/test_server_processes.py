"""The real server: several worker processes on one database never fork the chain."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2 as httpx
import pytest
from joserfc.jwk import ECKey

from tests.conftest import Backend
from tests.serverproc import http_client, running_server
from tests.token_attacks.kit import assertion, assertion_form
from tether.api.app import SWITCH_INTERVAL_SECONDS

pytestmark = pytest.mark.slow


def test_two_workers_concurrent_writers_keep_one_chain(backend: Backend, tmp_path: Path) -> None:
    with running_server(backend, tmp_path, workers=2) as (url, _env):
        token = (tmp_path / ".tether" / "admin.token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}

        def work(i: int) -> list[int]:
            codes = []
            with http_client(base_url=url, headers=headers, timeout=30) as c:
                for j in range(10):
                    r = c.post(
                        "/v1/agents",
                        json={
                            "name": f"w{i}-{j}",
                            "owner": "admin",
                            "purpose": "load",
                            "risk_tier": "minimal",
                        },
                    )
                    codes.append(r.status_code)
                    if r.status_code == 201 and j % 2 == 0:
                        aid = r.json()["id"]
                        codes.append(
                            c.post(f"/v1/agents/{aid}/suspend", json={"reason": "x"}).status_code
                        )
            return codes

        with ThreadPoolExecutor(8) as pool:
            codes = [c for chunk in pool.map(work, range(8)) for c in chunk]
        assert set(codes) == {200, 201}
        writes = len(codes)
        with http_client(base_url=url, headers=headers, timeout=60) as c:
            result = c.get("/v1/audit/verify").json()
            assert result["ok"] is True, result
            seqs, types = [], []
            cursor = None
            while True:
                page = c.get("/v1/audit/events", params={"limit": 1000, "cursor": cursor}).json()
                seqs += [e["seq"] for e in page["items"]]
                types += [e["type"] for e in page["items"]]
                cursor = page["next_cursor"]
                if not cursor:
                    break
            # each suspension's propagation to the other worker measured: at most one each
            measured = types.count("runtime.propagated")
            assert measured <= codes.count(200)
            # + system.bootstrapped and key.created
            assert result["checked"] == writes + 2 + measured
            assert seqs == list(range(1, writes + 3 + measured))
            metrics = c.get("/metrics").text
            # Counters from both worker processes are merged (prometheus multiprocess mode).
            created = [
                line
                for line in metrics.splitlines()
                if line.startswith('tether_ledger_events_appended_total{type="agent.created"}')
            ]
            assert created == [
                f'tether_ledger_events_appended_total{{type="agent.created"}} {float(8 * 10)}'
            ]
            assert 'route="/v1/agents",status="201"' in metrics
            assert c.get("/readyz").json()["status"] == "ready"


def _workers_of(port: int) -> list[int]:
    """The pids of the worker processes of the server on ``port`` (not uvicorn's supervisor,
    nor multiprocessing's resource tracker), found by their environment and command line."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"TETHER_PORT={port}".encode() in environ and b"spawn_main" in cmdline:
            found.append(int(entry.name))  # a worker (not the resource tracker, nor uvicorn)
    return found


def test_a_worker_killed_under_issuance_load_loses_no_token_a_client_received(
    backend: Backend, tmp_path: Path
) -> None:
    """Issue 14: a token is returned only once its row and ledger event are durable (the
    group commit). Clients ask for tokens back to back on two workers; one worker gets
    ``kill -9`` in the middle. Every token a client received is active at introspection and
    has its ``token.issued`` event in a chain that still verifies."""
    with running_server(backend, tmp_path, workers=2) as (url, env):
        admin = {
            "Authorization": f"Bearer {(tmp_path / '.tether' / 'admin.token').read_text().strip()}"
        }
        with http_client(base_url=url, headers=admin, timeout=30) as c:
            keys = []
            for i in range(4):
                agent = c.post(
                    "/v1/agents",
                    json={
                        "name": f"t{i}",
                        "owner": "admin",
                        "purpose": "crash",
                        "risk_tier": "minimal",
                    },
                )
                key = c.post(
                    f"/v1/agents/{agent.json()['id']}/credentials", json={"type": "api_key"}
                ).json()
                keys.append((agent.json()["id"], key["client_secret"]))
        workers = _workers_of(int(env["TETHER_PORT"]))
        assert len(workers) == 2, workers
        received: list[str] = []
        stop_at = time.monotonic() + 60
        killed = threading.Event()
        lock = threading.Lock()

        def ask(agent_id: str, secret: str) -> None:
            form = {
                "grant_type": "client_credentials",
                "client_id": agent_id,
                "client_secret": secret,
            }
            while time.monotonic() < stop_at:
                try:
                    with http_client(base_url=url, timeout=10) as http:  # a fresh connection:
                        for _ in range(20):  # spread over both workers
                            r = http.post("/oauth/token", data=form)
                            if r.status_code == 200:
                                with lock:
                                    received.append(r.json()["access_token"])
                except httpx.TransportError:
                    pass  # the killed worker's connections
                if killed.is_set() and len(received) >= killed_at[0] + 40:
                    return

        killed_at = [0]
        threads = [threading.Thread(target=ask, args=k) for k in keys]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(received) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        killed_at[0] = len(received)
        os.kill(workers[0], signal.SIGKILL)
        killed.set()
        for t in threads:
            t.join(90)
        assert killed_at[0] >= 40
        assert len(received) >= killed_at[0] + 40, len(received)
        with http_client(base_url=url, headers=admin, timeout=60) as c:
            for token in received:
                assert c.post("/oauth/introspect", data={"token": token}).json()["active"]
            assert c.get("/v1/audit/verify").json()["ok"] is True
            issued: set[str] = set()
            cursor = None
            while True:
                page = c.get(
                    "/v1/audit/events",
                    params={"type": "token.issued", "limit": 1000, "cursor": cursor},
                ).json()
                issued |= {e["details"]["jti"] for e in page["items"]}
                cursor = page["next_cursor"]
                if not cursor:
                    break
        jtis = {jwt_claims(token)["jti"] for token in received}
        assert jtis <= issued


def _exchange(sock: socket.socket, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on a kept-alive raw connection: the status and the body."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def _connections_on_each_worker(port: int, workers: list[int], each: int) -> list[socket.socket]:
    """``each`` open connections to every worker of the server on ``port``: connections
    opened at once land on both (one after another, they all went to one), and ``ss`` tells
    which worker holds each."""
    chosen: dict[int, list[socket.socket]] = {pid: [] for pid in workers}
    for _attempt in range(40):  # kept across attempts: a busy machine may favour one worker
        opened: list[socket.socket] = []

        def connect(opened: list[socket.socket] = opened) -> None:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            _exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            opened.append(sock)

        threads = [threading.Thread(target=connect) for _ in range(8 * each)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        listing = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
        pairs = re.findall(r":(\d+)\s+users:\(\(\S*?pid=(\d+)", listing)  # peer port, worker
        holder = {int(peer): int(pid) for peer, pid in pairs}
        for sock in opened:
            socks = chosen.get(holder.get(sock.getsockname()[1], -1))
            if socks is not None and len(socks) < each:
                socks.append(sock)
            else:
                sock.close()
        if all(len(socks) == each for socks in chosen.values()):
            return [sock for socks in chosen.values() for sock in socks]
    for socks in chosen.values():
        for sock in socks:
            sock.close()
    raise AssertionError("could not open connections to both workers")


def test_an_assertion_raced_on_both_workers_gets_one_token(
    backend: Backend, tmp_path: Path
) -> None:
    """Issue 14: a ``private_key_jwt`` assertion is spent in the group commit of whichever
    worker takes it, and stays single-use across the two: in each of five rounds, four
    connections to each worker race one assertion; exactly one gets a token, the seven others
    are refused as a replay (and audited)."""
    with running_server(backend, tmp_path, workers=2) as (url, env):
        admin = {
            "Authorization": f"Bearer {(tmp_path / '.tether' / 'admin.token').read_text().strip()}"
        }
        key = ECKey.generate_key("P-256")
        with http_client(base_url=url, headers=admin, timeout=30) as c:
            spec = {"name": "racer", "owner": "admin", "purpose": "replay", "risk_tier": "minimal"}
            agent_id = c.post("/v1/agents", json=spec).json()["id"]
            jwk = {"type": "public_key", "jwk": key.as_dict(private=False)}
            registered = c.post(f"/v1/agents/{agent_id}/credentials", json=jwk)
            assert registered.status_code == 201, registered.text
        port = int(env["TETHER_PORT"])
        workers = _workers_of(port)
        assert len(workers) == 2, workers
        for _round in range(5):
            form = assertion_form(assertion(key, agent_id, env["TETHER_URL"], int(time.time())))
            body = urlencode(form).encode()
            request = (b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Type: application/x-www-form-urlencoded\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            socks = _connections_on_each_worker(port, workers, 4)
            barrier = threading.Barrier(len(socks))
            codes: list[int] = []
            lock = threading.Lock()

            def race(sock: socket.socket, request: bytes, barrier: threading.Barrier,
                     codes: list[int], lock: threading.Lock) -> None:  # fmt: skip
                barrier.wait()
                status, _ = _exchange(sock, request)
                with lock:
                    codes.append(status)

            threads = [threading.Thread(target=race, args=(s, request, barrier, codes, lock))
                       for s in socks]  # fmt: skip
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            for sock in socks:
                sock.close()
            assert sorted(codes) == [200] + [401] * 7
        with http_client(base_url=url, headers=admin, timeout=30) as c:
            query = {"type": "client.auth_failed", "agent": agent_id, "limit": 100}
            failures = c.get("/v1/audit/events", params=query)
        reasons = [e["details"]["reason"] for e in failures.json()["items"]]
        assert reasons == ["assertion jti already used (replay)"] * 35


def jwt_claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (the server verified them at introspection)."""
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


_GC_PROBE = """
import gc, json, os, sys, threading, time

def _report(directory):
    while True:
        if "tether.api.app" in sys.modules:  # a server worker, not the resource tracker
            state = {"frozen": gc.get_freeze_count(), "threshold": list(gc.get_threshold()),
                     "switch": sys.getswitchinterval()}
            path = os.path.join(directory, f"{os.getpid()}.json")
            with open(path + ".tmp", "w") as f:
                json.dump(state, f)
            os.replace(path + ".tmp", path)
        time.sleep(0.05)

if os.environ.get("GC_PROBE_DIR"):
    threading.Thread(target=_report, args=(os.environ["GC_PROBE_DIR"],), daemon=True).start()
"""


def test_each_worker_freezes_its_start_heap_and_hands_the_gil_over_sooner(
    tmp_path: Path,
) -> None:
    """Issue 14's soak stalls: a worker of ``tether serve --workers 2`` is a process of its
    own (uvicorn spawns it), so the supervisor's ``gc.freeze`` never reached it, and each of
    its full collections walked the whole start-up heap (the runtime snapshot, every module)
    under load: 80-110 ms pauses. Each worker now settles its own collector once its runtime
    is loaded: what it built is frozen and young collections run every 20,000 allocations.
    And its switch interval is 0.5 ms: the group-commit thread, holding the write lock, gets
    the GIL back from a busy event loop sooner after each round trip."""
    probe, reports = tmp_path / "probe", tmp_path / "reports"
    probe.mkdir()
    reports.mkdir()
    (probe / "sitecustomize.py").write_text(_GC_PROBE)
    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'tether.db'}", None)
    extra = {"PYTHONPATH": str(probe), "GC_PROBE_DIR": str(reports)}
    with running_server(backend, tmp_path, workers=2, extra_env=extra) as (_url, env):
        workers = _workers_of(int(env["TETHER_PORT"]))
        assert len(workers) == 2, workers
        # /readyz was answered by one worker; the other may still be loading its runtime.
        deadline = time.monotonic() + 30
        states: dict[int, dict[str, Any]] = {}
        while time.monotonic() < deadline and not (
            len(states) == 2 and all(s["frozen"] for s in states.values())
        ):
            time.sleep(0.05)
            for pid in workers:
                path = reports / f"{pid}.json"
                if path.exists():
                    states[pid] = json.loads(path.read_text())
    assert sorted(states) == sorted(workers), "every worker reported"
    for state in states.values():
        assert state["frozen"] > 50_000, state  # the start heap: modules, services, runtime
        assert state["threshold"] == [20_000, 10, 10], state  # not the start's 100,000
        assert state["switch"] == SWITCH_INTERVAL_SECONDS, (
            state
        )  # the GIL back to the writer sooner
