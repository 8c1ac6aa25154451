"""Run ``tether serve`` as a real subprocess for tests that need processes and sockets."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import httpx2 as httpx
import pytest

from tests import forkserver
from tests.conftest import Backend, backend_for
from tests.forkserver import Child

# httpx builds an SSL context for every client it makes, module-level get() and post()
# included: ~30 ms of CPU loading the CA bundle (75 ms of wall time on a busy machine), even
# for plain http. The tests' clients of their servers share this one.
TLS = ssl.create_default_context()


def http_client(**options: Any) -> httpx.Client:
    """An httpx client that reuses :data:`TLS` instead of building an SSL context."""
    return httpx.Client(verify=TLS, **options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(backend: Backend, data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(
        TETHER_DATA_DIR=str(data_dir),
        TETHER_DATABASE_URL=backend.url,
        TETHER_PORT=str(port),
        TETHER_URL=f"http://127.0.0.1:{port}",
        TETHER_LOG_LEVEL="warning",
        TETHER_MONITOR='{"rules": []}',  # as in-process (tests/conftest.py)
    )
    if backend.schema:
        env["TETHER_DATABASE_SCHEMA"] = backend.schema
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


# A port is picked free but bound only later, by the server: another process may take it in
# between. The server then exits saying so and is started again on another port.
_PORT_ATTEMPTS = 5
# `tether serve` checks the port first ("is in use"); uvicorn's own bind, if the port was taken
# after that check, says "address already in use".
_PORT_TAKEN = (" is in use — ", "address already in use")


def _ours(http: httpx.Client, url: str, token_file: Path) -> bool:
    """Whether the server answering at ``url`` is this deployment's: the one that knows the
    admin token its first start wrote (someone else's server on a port taken in between
    answers /readyz too)."""
    try:
        token = token_file.read_text().strip()
        me = http.get(f"{url}/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        return me.status_code == 200 and me.json()["username"] == "admin"
    except (OSError, httpx.TransportError, ValueError, KeyError, TypeError):
        return False


def wait_ready(proc: Child, url: str, token_file: Path, log: Path) -> bool:
    """True once the server at ``url`` is ready and ours (it knows the admin token in
    ``token_file``); False if it exited because its port was taken (its output in ``log``
    says so); raises if it exited otherwise or is not ready within a minute."""
    deadline = time.monotonic() + 60
    # One client for every poll: a refused connection then costs ~0.1 ms, and the poll takes
    # no CPU from the server it waits for (a client per poll was ~30 ms of CPU each).
    with http_client(timeout=1) as http:
        while True:
            if proc.poll() is not None:
                text = log.read_text()
                if any(said in text.lower() for said in _PORT_TAKEN):  # "[Errno 98] Address…"
                    return False
                raise RuntimeError(text)
            try:
                ready = http.get(f"{url}/readyz").status_code == 200
            except httpx.TransportError:
                ready = False
            if ready and _ours(http, url, token_file):
                return True
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready:\n" + log.read_text())
            time.sleep(0.05)


def stop(proc: Child | subprocess.Popen[bytes]) -> None:
    """Terminate a server process, killing it if it does not stop within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def running_server(
    backend: Backend,
    workdir: Path,
    *,
    workers: int = 1,
    extra_env: dict[str, str] | None = None,
    data_dir: Path | None = None,
) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``(base_url, env)`` once ``/readyz`` answers; stop the server afterwards. The
    server's output is in ``workdir / "server.log"``; ``extra_env`` adds or overrides
    ``TETHER_*`` variables; ``data_dir`` (default ``workdir / ".tether"``) may be shared by
    several servers, as the nodes of one deployment."""
    data_dir = data_dir or workdir / ".tether"
    workdir.mkdir(parents=True, exist_ok=True)
    for _attempt in range(_PORT_ATTEMPTS):
        port = free_port()
        env = {**server_env(backend, data_dir, port), **(extra_env or {})}
        url = f"http://127.0.0.1:{port}"
        with (workdir / "server.log").open("wb") as log:
            proc = forkserver.spawn("serve", "--workers", str(workers), env=env, cwd=workdir,
                                    stdout=log)  # fmt: skip
        try:
            ready = wait_ready(proc, url, data_dir / "admin.token", workdir / "server.log")
        except BaseException:
            stop(proc)
            raise
        if ready:
            break
        stop(proc)
    else:
        raise RuntimeError(f"no free port in {_PORT_ATTEMPTS} attempts")
    try:
        yield url, env
    finally:
        stop(proc)


def run_cli(
    *args: str, env: Mapping[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m tether ARGS`` as a user runs it: stdout and stderr to pipes (as in
    ``X=$(tether …)``), no standard input, the exit code left to the caller. A process of its
    own, forked from a zygote that imported the libraries (:mod:`tests.forkserver`)."""
    return forkserver.run(*args, env=env, cwd=cwd, timeout=timeout)


class Served(NamedTuple):
    workdir: Path
    url: str
    env: dict[str, str]
    admin_token: str
    backend: Backend


@contextmanager
def module_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, label: str
) -> Iterator[Served]:
    """One server on the backend ``request.param`` names, in a directory of its own: what a
    module-scoped fixture parametrized over the backends yields to the module's tests that
    need no fresh deployment."""
    tmp = tmp_path_factory.mktemp(f"{label}-{request.param}")
    with backend_for(request.param, tmp) as backend, running_server(backend, tmp) as (url, env):
        token = (tmp / ".tether" / "admin.token").read_text().strip()
        yield Served(tmp, url, env, token, backend)


def _bindable(port: int, deadline: float) -> None:
    """Until ``port`` can be bound as uvicorn binds it (``SO_REUSEADDR``), or the deadline: a
    port that was free a moment ago (a server restarted on it) may be held for a while by
    another test process's outgoing connection, whose source port the kernel picked from the
    same range. (uvicorn's own failed bind comes after the app's lifespan has started, and
    an app's lifespan may run only once.)"""
    while True:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                if time.monotonic() >= deadline:
                    return  # uvicorn says why
            else:
                return
        time.sleep(0.1)


@contextmanager
def served_in_thread(app: Any, port: int) -> Iterator[None]:
    """``app`` served by uvicorn on ``port`` in a thread of this process (its lifespan run),
    until the block ends; a port still held is waited for (:func:`_bindable`)."""
    import uvicorn

    deadline = time.monotonic() + 15
    _bindable(port, deadline)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError(f"uvicorn did not start on port {port}")
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(15)
