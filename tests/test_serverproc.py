"""The server-process helper survives losing its port to another process (the free-port race)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx2 as httpx
import pytest

from tests import serverproc
from tests.conftest import backend_for


class _AnswersEverything(BaseHTTPRequestHandler):
    """Someone else's server: 200 and ``{}`` to any GET, /readyz included."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def taken_port() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _AnswersEverything)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.slow
def test_a_port_taken_before_the_server_binds_it_is_not_mistaken_for_ours(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = iter([taken_port])
    free = serverproc.free_port
    monkeypatch.setattr(serverproc, "free_port", lambda: next(picks, None) or free())
    with (
        backend_for("sqlite", tmp_path) as backend,
        serverproc.running_server(backend, tmp_path) as (url, _env),
    ):
        assert url != f"http://127.0.0.1:{taken_port}"
        token = (tmp_path / ".tether" / "admin.token").read_text().strip()
        me = httpx.get(f"{url}/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["username"] == "admin"
    assert list(picks) == []  # the taken port was tried first
