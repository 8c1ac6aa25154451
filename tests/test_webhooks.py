"""Signed approval webhooks: delivered to a real HTTP server on 127.0.0.1, verified by the SDK."""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from tether.approvals.notify import WebhookNotifier, sign_payload
from tether.sdk.webhooks import WebhookSignatureError, verify_webhook

SECRET = b"whsec-test-0123456789"
T0 = 1_700_000_000
RESULTS = ("delivered", "failed", "dropped", "retried")
PAYLOAD = {"approval_id": "apr_1", "agent_id": "agt_1", "action": "payments.send", "amount": 42}


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """What the test server answers (``statuses`` in order, then 200) and what it received."""

    url: str
    statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    gate: threading.Event | None = None  # when set up, each request waits for it to open
    requests: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.requests) >= n, timeout)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with receiver.changed:
            receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            receiver.changed.notify_all()
        if receiver.gate is not None:
            receiver.gate.wait(10)
        self.send_response(status)
        if status == 429 and receiver.retry_after is not None:
            self.send_header("Retry-After", receiver.retry_after)
        if 300 <= status < 400:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:  # a followed redirect would show up as a second request
        self.do_POST()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    receiver: Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.receiver = Receiver(f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server.receiver
    if server.receiver.gate is not None:
        server.receiver.gate.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def make_notifier() -> Iterator[Callable[..., WebhookNotifier]]:
    made: list[WebhookNotifier] = []

    def make(urls: list[str], **kwargs: Any) -> WebhookNotifier:
        kwargs.setdefault("backoff_seconds", (0.01,))
        notifier = WebhookNotifier(urls, SECRET, **kwargs)
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        notifier.close(timeout=1.0)


def _count(result: str) -> float:
    return REGISTRY.get_sample_value("tether_webhook_deliveries_total", {"result": result}) or 0.0


@pytest.fixture
def metrics() -> Callable[[], dict[str, float]]:
    """Changes in the delivery counters since the test started."""
    before = {r: _count(r) for r in RESULTS}
    return lambda: {r: _count(r) - before[r] for r in RESULTS}


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/path-token-xyz"


def _worker_alive() -> bool:
    return any(t.name == "tether-webhook" and t.is_alive() for t in threading.enumerate())


def test_delivery_is_signed_and_carries_the_payload(receiver, make_notifier, metrics):
    notifier = make_notifier([receiver.url + "/a", receiver.url + "/b"], clock=lambda: T0)
    notifier.notify("approval.requested", PAYLOAD)
    assert notifier.flush(10)

    assert sorted(r.path for r in receiver.requests) == ["/a", "/b"]
    for request in receiver.requests:
        headers = request.headers
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"] == "tether-webhook/1"
        assert headers["X-Tether-Event"] == "approval.requested"
        assert headers["X-Tether-Signature"].startswith(f"t={T0},v1=")
        verify_webhook(request.body, headers["X-Tether-Signature"], SECRET, now=T0)
        assert request.body == orjson.dumps(PAYLOAD)  # compact JSON
        assert orjson.loads(request.body) == PAYLOAD
    assert len({r.headers["X-Tether-Delivery"] for r in receiver.requests}) == 2
    assert metrics() == {"delivered": 2, "failed": 0, "dropped": 0, "retried": 0}


def test_5xx_is_retried_with_the_same_delivery_id_and_fresh_signatures(
    receiver, make_notifier, metrics
):
    receiver.statuses = [500, 503]
    ticks = itertools.count(T0, 7)
    notifier = make_notifier([receiver.url], clock=lambda: next(ticks))
    notifier.notify("approval.requested", PAYLOAD)
    assert notifier.flush(10)

    assert len(receiver.requests) == 3
    assert len({r.headers["X-Tether-Delivery"] for r in receiver.requests}) == 1
    stamps = []
    for request in receiver.requests:
        signature = request.headers["X-Tether-Signature"]
        stamps.append(int(signature.split(",")[0].removeprefix("t=")))
        verify_webhook(request.body, signature, SECRET, now=stamps[-1])
    assert stamps == sorted(set(stamps))  # re-signed with a fresh timestamp each attempt
    assert metrics() == {"delivered": 1, "failed": 0, "dropped": 0, "retried": 2}


def test_429_retry_after_overrides_the_backoff(receiver, make_notifier, metrics):
    receiver.statuses, receiver.retry_after = [429], "0"
    notifier = make_notifier([receiver.url], backoff_seconds=(30,))
    notifier.notify("approval.requested", PAYLOAD)
    assert notifier.flush(10)  # a 30 s backoff would not have finished
    assert len(receiver.requests) == 2
    assert metrics()["delivered"] == 1


@pytest.mark.parametrize("status", [400, 404, 302])
def test_other_4xx_and_redirects_fail_without_retry(receiver, make_notifier, metrics, status):
    receiver.statuses = [status]
    notifier = make_notifier([receiver.url])
    notifier.notify("approval.requested", PAYLOAD)
    assert notifier.flush(10)
    assert [r.path for r in receiver.requests] == ["/"]  # one attempt, redirect not followed
    assert metrics() == {"delivered": 0, "failed": 1, "dropped": 0, "retried": 0}


def test_connection_refused_is_retried_in_the_background(make_notifier, metrics, caplog):
    caplog.set_level(logging.DEBUG, logger="tether.approvals.notify")
    # Two backoff sleeps of 0.5 s: the worker cannot finish within a second of starting.
    notifier = make_notifier([_closed_port_url()], max_attempts=3, backoff_seconds=(0.5,))
    started = time.monotonic()
    notifier.notify("approval.requested", PAYLOAD)
    assert time.monotonic() - started < 1.0
    assert metrics()["failed"] == 0  # notify() returned before the retries ran

    assert notifier.flush(10)
    assert metrics() == {"delivered": 0, "failed": 1, "dropped": 0, "retried": 2}
    assert "ConnectError" in caplog.text
    for secret in (SECRET.decode(), "payments.send", "path-token-xyz"):
        assert secret not in caplog.text


def test_full_queue_drops_without_blocking(receiver, make_notifier, metrics):
    receiver.gate = threading.Event()
    notifier = make_notifier([receiver.url], queue_size=3)
    notifier.notify("approval.requested", PAYLOAD)
    receiver.wait_for_requests(1)  # the worker is now stuck in that request

    started = time.monotonic()
    for _ in range(5):
        notifier.notify("approval.requested", PAYLOAD)
    assert time.monotonic() - started < 1.0
    assert metrics()["dropped"] == 2

    receiver.gate.set()
    assert notifier.flush(10)
    assert metrics() == {"delivered": 4, "failed": 0, "dropped": 2, "retried": 0}


def test_close_interrupts_a_backoff_sleep(receiver, make_notifier, metrics):
    receiver.statuses = [500] * 10
    notifier = make_notifier([receiver.url], backoff_seconds=(30,))
    notifier.notify("approval.requested", PAYLOAD)
    receiver.wait_for_requests(1)

    started = time.monotonic()
    notifier.close(timeout=0.2)
    assert time.monotonic() - started < 2.0  # not 30 s
    assert not _worker_alive()
    notifier.close()  # idempotent
    notifier.notify("approval.requested", PAYLOAD)  # after close: dropped, not sent
    assert len(receiver.requests) == 1
    assert metrics() == {"delivered": 0, "failed": 0, "dropped": 2, "retried": 1}


def test_close_drops_what_it_could_not_deliver_in_time(receiver, make_notifier, metrics):
    receiver.gate = threading.Event()
    notifier = make_notifier([receiver.url])
    for _ in range(3):
        notifier.notify("approval.requested", PAYLOAD)
    receiver.wait_for_requests(1)

    notifier.close(timeout=0.2)  # returns although the worker is stuck in the first request
    receiver.gate.set()
    deadline = time.monotonic() + 10
    while _worker_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _worker_alive()
    assert len(receiver.requests) == 1
    assert metrics() == {"delivered": 1, "failed": 0, "dropped": 2, "retried": 0}


def test_no_urls_means_no_thread(make_notifier):
    notifier = make_notifier([])
    notifier.notify("approval.requested", PAYLOAD)
    assert notifier.flush(0)
    assert not _worker_alive()


def test_bad_arguments_fail_in_the_caller(make_notifier):
    for url in ["ftp://example.com/hook", "/relative", "http://"]:
        with pytest.raises(ValueError, match="webhook URL"):
            make_notifier([url])
    notifier = make_notifier([_closed_port_url()])
    with pytest.raises(TypeError):
        notifier.notify("approval.requested", {"when": object()})
    with pytest.raises(ValueError, match="event"):
        notifier.notify("approval\r\nX-Injected: 1", PAYLOAD)


def _signed(body: bytes = b'{"a":1}', *, secret: bytes = SECRET, at: int = T0) -> str:
    return sign_payload(secret, body, at)


def test_verify_accepts_a_valid_signature_within_tolerance():
    verify_webhook(b'{"a":1}', _signed(), SECRET, now=T0 + 300)
    verify_webhook(b'{"a":1}', _signed(), SECRET, now=T0 - 300)
    # Rotation: any matching v1 will do; unknown schemes are ignored.
    other = _signed(secret=b"old").split(",")[1]
    verify_webhook(b'{"a":1}', f"{_signed()},{other},v0=zz", SECRET, now=T0)
    verify_webhook(b'{"a":1}', f"t={T0}, {other}, {_signed().split(',')[1]}", SECRET, now=T0)


@pytest.mark.parametrize(
    ("body", "header", "now", "message"),
    [
        (b'{"a":2}', _signed(), T0, "does not match"),
        (b'{"a":1}', _signed(secret=b"wrong"), T0, "does not match"),
        (b'{"a":1}', _signed(at=T0 - 301), T0, "301s old"),
        (b'{"a":1}', _signed(at=T0 + 301), T0, "301s in the future"),
        (b'{"a":1}', "", T0, "malformed"),
        (b'{"a":1}', "garbage", T0, "malformed"),
        (b'{"a":1}', _signed().replace(f"t={T0}", "t=soon"), T0, "malformed"),
        (b'{"a":1}', f"t={T0},{_signed()}", T0, "malformed"),
        (b'{"a":1}', _signed().split(",")[1], T0, "no t="),
        (b'{"a":1}', f"t={T0}", T0, "no v1="),
        (b'{"a":1}', f"t={T0},v1=\u00e9", T0, "does not match"),
    ],
)
def test_verify_rejects(body, header, now, message):
    with pytest.raises(WebhookSignatureError, match=message) as caught:
        verify_webhook(body, header, SECRET, now=now)
    assert isinstance(caught.value, ValueError)
