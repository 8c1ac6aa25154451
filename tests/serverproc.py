"""Run ``tether serve`` as a real subprocess for tests that need processes and sockets."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx

from tests.conftest import Backend


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
    )
    if backend.schema:
        env["TETHER_DATABASE_SCHEMA"] = backend.schema
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


@contextmanager
def running_server(
    backend: Backend, workdir: Path, *, workers: int = 1
) -> Iterator[tuple[str, dict[str, str]]]:
    """Yield ``(base_url, env)`` once ``/readyz`` answers; stop the server afterwards."""
    port = free_port()
    env = server_env(backend, workdir / ".tether", port)
    log = (workdir / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "serve", "--workers", str(workers)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError((workdir / "server.log").read_text())
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "server did not become ready:\n" + (workdir / "server.log").read_text()
                )
            time.sleep(0.2)
        yield url, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
