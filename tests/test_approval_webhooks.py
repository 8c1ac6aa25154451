"""Supervisors hear of a pending approval: a signed webhook from the real decision path."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.conftest import AGENT_DEFAULTS, bearer
from tether.api.app import create_app
from tether.container import Services
from tether.sdk.webhooks import WebhookSignatureError, verify_webhook

SECRET = "webhook-secret-for-tests"


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]
    arrived: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()
        self.arrived.set()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"received": [], "arrived": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks/tether", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_an_approval_request_is_announced_signed(
    make_services: Callable[..., Services], receiver: tuple[str, type[_Receiver]]
) -> None:
    url, handler = receiver
    svc = make_services(approval_webhooks=[url], approval_webhook_secret=SECRET)
    token = svc.settings.admin_token_path.read_text().strip()
    with TestClient(create_app(svc)) as c:
        c.headers.update(bearer(token))
        agent = c.post("/v1/agents", json={**AGENT_DEFAULTS, "risk_tier": "high"}).json()["id"]
        allow = '@id("writes") permit(principal, action == Action::"tool.write", resource);'
        assert c.put("/v1/policies", json={"policies": allow}).status_code == 200
        body = {"subject": {"type": "agent", "id": agent}, "action": {"name": "tool.write"},
                "resource": {"type": "Tool", "id": "refund"}}  # fmt: skip
        answer = c.post("/access/v1/evaluation", json=body).json()
        approval_id = answer["context"]["approval_id"]
        assert handler.arrived.wait(10), "no webhook arrived"

    [(headers, raw)] = handler.received
    assert headers["x-tether-event"] == "approval.requested"
    verify_webhook(raw, headers["x-tether-signature"], SECRET.encode())
    notice = orjson.loads(raw)
    assert notice["id"] == approval_id
    assert notice["agent_id"] == agent
    assert notice["status"] == "pending"
    assert notice["action"] == "tool.write"
    assert notice["url"].endswith(f"/v1/approvals/{approval_id}")
    # A receiver with another secret, or a tampered body, must not trust it.
    with pytest.raises(WebhookSignatureError):
        verify_webhook(raw, headers["x-tether-signature"], b"another secret")
    with pytest.raises(WebhookSignatureError):
        verify_webhook(raw.replace(b"pending", b"approved"), headers["x-tether-signature"],
                       SECRET.encode())  # fmt: skip
