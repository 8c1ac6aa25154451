"""Signed webhooks that tell approvers about pending approvals.

Wire format (the contract receivers implement; :func:`tether.sdk.webhooks.verify_webhook`
is the reference verifier). Each delivery is ``POST <url>`` with a compact JSON body and::

    Content-Type: application/json
    User-Agent: tether-webhook/1
    X-Tether-Event: <event name>
    X-Tether-Delivery: <id, the same on every retry of one delivery: use it to deduplicate>
    X-Tether-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

Each attempt is signed afresh with the current time; receivers reject a ``t`` outside their
tolerance (five minutes by default), which bounds replay. Several ``v1=`` values may appear
(secret rotation): the signature is valid if any matches. Delivery is at least once: 2xx is
delivered; connection errors, timeouts, 429 and 5xx are retried with backoff (a numeric
``Retry-After`` on 429/503 is honoured, capped at 60 s); any other status, redirects
included, is a permanent failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import Counter

if TYPE_CHECKING:
    import httpx2

log = logging.getLogger(__name__)

DELIVERIES = Counter("tether_webhook_deliveries", "Webhook deliveries by outcome", ["result"])
for _result in ("delivered", "failed", "dropped", "retried"):
    DELIVERIES.labels(result=_result)  # export every series from the start, at 0

_MAX_RETRY_AFTER = 60.0
_MIN_JOIN = 0.1  # seconds close() gives an interrupted worker to exit


def sign_payload(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Tether-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


@dataclass(frozen=True)
class _Delivery:
    url: str
    event: str
    body: bytes
    id: str


def _origin(url: str) -> str:
    import httpx2

    # Webhook URLs often carry a secret in the path or query (Slack, Teams): log the origin only.
    parsed = httpx2.URL(url)
    return f"{parsed.scheme}://{parsed.host}" + (f":{parsed.port}" if parsed.port else "")


def _retry_after(response: httpx2.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    if response.status_code in {429, 503} and value.isascii() and value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    return None  # absent, or an HTTP-date: fall back to the backoff schedule


class WebhookNotifier:
    """Posts signed events to every URL in ``urls`` from one lazily started daemon thread.

    :meth:`notify` never blocks and never raises for delivery problems: outcomes go to the
    ``tether_webhook_deliveries_total`` counter and the log. Deliveries go out in order, so
    one waiting for its backoff delays those behind it. ``clock`` gives the unix time that is
    signed. Raises ValueError for a URL that is not absolute http(s) or an empty schedule.
    """

    def __init__(
        self,
        urls: Sequence[str],
        secret: bytes,
        *,
        max_attempts: int = 5,
        backoff_seconds: Sequence[float] = (0.5, 1, 2, 4, 8),
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        transport: httpx2.BaseTransport | None = None,
        queue_size: int = 10_000,
    ) -> None:
        for url in urls:
            import httpx2  # loaded when a webhook is configured, not on every server start

            try:
                parsed = httpx2.URL(url)
            except httpx2.InvalidURL:
                raise ValueError("webhook URL cannot be parsed") from None
            if parsed.scheme not in {"http", "https"} or not parsed.host:
                raise ValueError(f"webhook URL must be absolute http(s): {_origin(url)}")
        if max_attempts < 1 or not backoff_seconds or queue_size < 1:
            raise ValueError("max_attempts, backoff_seconds and queue_size must not be empty")
        self._urls = tuple(urls)
        self._secret = secret
        self._max_attempts = max_attempts
        self._backoff = tuple(float(s) for s in backoff_seconds)
        self._timeout = timeout
        self._clock = clock
        self._transport = transport
        self._queue: queue.Queue[_Delivery | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when _pending drops to 0
        self._pending = 0  # queued or in flight
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def notify(self, event: str, payload: dict[str, Any]) -> None:
        """Queue ``payload`` for every URL and return at once; a full queue drops (counted).

        Raises TypeError if ``payload`` is not JSON-serialisable and ValueError for an
        ``event`` that cannot be a header value: those are the caller's bugs, not delivery
        failures. After :meth:`close`, deliveries are dropped.
        """
        if not self._urls:
            return
        if not event or not event.isascii() or not event.isprintable():
            raise ValueError("event must be a non-empty printable ASCII string")
        body = orjson.dumps(payload)
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="tether-webhook")
                self._thread.daemon = True
                self._thread.start()
            for url in self._urls:
                if not self._closed:
                    with contextlib.suppress(queue.Full):
                        self._queue.put_nowait(_Delivery(url, event, body, str(uuid.uuid4())))
                        self._pending += 1
                        continue
                DELIVERIES.labels(result="dropped").inc()
                log.warning("webhook %s to %s dropped: queue full or closed", event, _origin(url))

    def flush(self, timeout: float) -> bool:
        """Wait until nothing is queued or in flight; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Give pending deliveries up to ``timeout`` seconds, then stop the worker.

        A backoff sleep is interrupted at once and whatever is undelivered is dropped
        (counted). Idempotent. A worker still inside a request when time is up exits, closing
        its HTTP client, when that request ends.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._stop.set()
        # None wakes a worker blocked on an empty queue; a full queue does not block it.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        thread.join(max(deadline - time.monotonic(), _MIN_JOIN))
        if thread.is_alive():
            log.warning("webhook worker still busy after close(); it exits after its request")

    def _finished(self, *, dropped: bool = False) -> None:
        if dropped:
            DELIVERIES.labels(result="dropped").inc()
        with self._idle:
            self._pending -= 1
            if self._pending == 0:
                self._idle.notify_all()

    def _run(self) -> None:
        import httpx2

        with httpx2.Client(
            timeout=self._timeout, transport=self._transport, follow_redirects=False
        ) as client:
            while not self._stop.is_set():
                item = self._queue.get()
                if item is None:
                    break
                if self._stop.is_set():
                    self._finished(dropped=True)
                    break
                try:
                    self._deliver(client, item)
                except Exception:
                    # A bug, not a delivery failure: log it with its trace, keep the worker.
                    DELIVERIES.labels(result="failed").inc()
                    log.exception("webhook %s (%s) crashed the sender", item.event, item.id)
                finally:
                    self._finished()
        with contextlib.suppress(queue.Empty):  # closed: drop what is left
            while True:
                if self._queue.get_nowait() is not None:
                    self._finished(dropped=True)

    def _deliver(self, client: httpx2.Client, delivery: _Delivery) -> None:
        import httpx2

        where = f"webhook {delivery.event} ({delivery.id}) to {_origin(delivery.url)}"
        for attempt in range(1, self._max_attempts + 1):
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "tether-webhook/1",
                "X-Tether-Event": delivery.event,
                "X-Tether-Delivery": delivery.id,
                "X-Tether-Signature": sign_payload(self._secret, delivery.body, int(self._clock())),
            }
            delay: float | None = None
            try:
                response = client.post(delivery.url, content=delivery.body, headers=headers)
            except httpx2.TransportError as exc:  # connect/read/write errors and timeouts
                reason = type(exc).__name__
            else:
                if response.is_success:
                    DELIVERIES.labels(result="delivered").inc()
                    return
                reason = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    break  # the receiver refused it; retrying would not change its mind
                delay = _retry_after(response)
            if attempt == self._max_attempts:
                break
            if delay is None:
                delay = self._backoff[min(attempt, len(self._backoff)) - 1]
            DELIVERIES.labels(result="retried").inc()
            log.info("%s: attempt %d failed (%s); retrying in %.1fs", where, attempt, reason, delay)
            if self._stop.wait(delay):
                DELIVERIES.labels(result="dropped").inc()
                log.warning("%s dropped at close after %d attempt(s)", where, attempt)
                return
        DELIVERIES.labels(result="failed").inc()
        log.warning("%s failed after %d attempt(s): %s", where, attempt, reason)
