"""``tether webhooks secret`` prints the key a receiver verifies ``X-Tether-Signature`` with —
the derived one too, which no command showed — and a real delivery from a real server verifies
with it; the event's name is in ``X-Tether-Event``."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend
from tests.serverproc import run_cli, running_server
from tether.config import Settings
from tether.keyfiles import load_root_keys
from tether.sdk.webhooks import WebhookSignatureError, verify_webhook

pytestmark = pytest.mark.slow


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[tuple[dict[str, str], bytes]]]]:
    """A webhook receiver on a free port: each POST's headers and raw body, in order."""
    got: queue.Queue[tuple[dict[str, str], bytes]] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got.put((dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def _tether(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, cwd=cwd)


def test_the_derived_secret_verifies_a_real_delivery(
    backend: Backend,
    tmp_path: Path,
    receiver: tuple[str, queue.Queue[tuple[dict[str, str], bytes]]],
) -> None:
    url, got = receiver
    (tmp_path / "tether.toml").write_text(f"approval_webhooks = [{json.dumps(url)}]\n")
    with running_server(backend, tmp_path) as (_url, env):
        frozen = _tether(env, tmp_path, "freeze", "--reason", "drill", "--json")
        assert frozen.returncode == 0, frozen.stderr
        headers, body = got.get(timeout=30)
        shown = _tether(env, tmp_path, "webhooks", "secret")
    assert shown.returncode == 0, shown.stderr
    secret = shown.stdout.strip()
    assert shown.stdout == secret + "\n"
    assert len(secret) == 64  # hex of an HMAC-SHA256, never the master key itself
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["x-tether-event"] == "freeze.started"
    assert json.loads(body)["event"] == "freeze.started"
    verify_webhook(body, headers["x-tether-signature"], secret.encode())
    wrong = secret[:-1] + ("1" if secret.endswith("0") else "0")  # differs in one digit
    with pytest.raises(WebhookSignatureError):
        verify_webhook(body, headers["x-tether-signature"], wrong.encode())
    master = (tmp_path / ".tether").glob("*master*")
    assert all(secret not in p.read_text(errors="replace") for p in master if p.is_file())
    server_log = (tmp_path / "server.log").read_text()
    assert secret not in server_log


def test_a_configured_secret_is_printed_as_configured(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    data = tmp_path / "data"
    # No server and no keys here: the command needs the server's data dir…
    missing = _tether({**env, "TETHER_DATA_DIR": str(data)}, tmp_path, "webhooks", "secret")
    assert missing.returncode != 0
    assert missing.stdout == ""
    [line] = missing.stderr.strip().splitlines()
    assert line.startswith("error: ")
    assert "server host" in line
    assert not data.exists() or not any(data.iterdir())  # it generated no key
    # …and with the keys there, a configured secret is the one printed.
    keys = tmp_path / "keys"
    load_root_keys(Settings(data_dir=keys))  # what a server's first start writes
    configured = _tether(
        {**env, "TETHER_DATA_DIR": str(keys), "TETHER_APPROVAL_WEBHOOK_SECRET": "s3cret-value"},
        tmp_path,
        "webhooks",
        "secret",
    )
    assert configured.returncode == 0, configured.stderr
    assert configured.stdout == "s3cret-value\n"
