"""A witness: every signed checkpoint POSTed to a URL off this host (best effort).

Wire format: ``POST <url>`` with ``Content-Type: application/json`` and the body of
:meth:`Checkpoint.to_json` (``size``, ``head_hash``, ``time``, ``key_id``, ``signature``);
any 2xx is delivered. The receiver may be any HTTPS endpoint that keeps what it is sent;
it can check a checkpoint with the ledger's public key (``tether.audit.signing``).

Deliveries leave from one daemon thread, in signing order, so a slow or dead witness never
holds up a write or a decision. A failure (connection error, timeout, non-2xx) is logged
and counted, and the checkpoint waits, with any signed after it, for :meth:`retry` — which
the maintenance loop calls on every tick.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING

from prometheus_client import Counter

from tether.audit.chain import Checkpoint
from tether.jsonutil import canonical

if TYPE_CHECKING:
    import httpx2

log = logging.getLogger(__name__)

DELIVERIES = Counter(
    "tether_ledger_witness_deliveries", "Checkpoints POSTed to the witness, by outcome", ["result"]
)
for _result in ("delivered", "failed", "dropped"):
    DELIVERIES.labels(result=_result)  # every series from the start, at 0

_MAX_PENDING = 10_000  # at one checkpoint a minute, a week of outage


class HttpWitness:
    """POSTs checkpoints to ``url``; :meth:`send` and :meth:`retry` never block or raise."""

    def __init__(
        self, url: str, *, timeout: float = 5.0, transport: httpx2.BaseTransport | None = None
    ) -> None:
        self.url = url
        self._timeout = timeout
        self._transport = transport
        self._pending: collections.deque[Checkpoint] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def send(self, cp: Checkpoint) -> None:
        """Queue ``cp`` and wake the sender. Past a week's worth of undelivered checkpoints
        the oldest is dropped (counted): each newer one covers the whole chain before it."""
        with self._lock:
            if self._closed:
                DELIVERIES.labels(result="dropped").inc()
                return
            if len(self._pending) >= _MAX_PENDING:
                self._pending.popleft()
                DELIVERIES.labels(result="dropped").inc()
            self._pending.append(cp)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tether-witness", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def retry(self) -> None:
        """Try the undelivered checkpoints again (the maintenance loop's tick)."""
        if self._pending:
            self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        import httpx2  # loaded when a witness is configured, not on every server start

        with httpx2.Client(
            timeout=self._timeout, transport=self._transport, follow_redirects=False
        ) as client:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._closed:
                    return
                try:
                    self._deliver_pending(client)
                except Exception:  # a bug, not a delivery failure: say so, keep the sender
                    DELIVERIES.labels(result="failed").inc()
                    log.exception("the witness sender failed; retrying on the next tick")

    def _deliver_pending(self, client: httpx2.Client) -> None:
        """Send in order until the queue is empty or one fails (it waits for a retry)."""
        while not self._closed:
            with self._lock:
                if not self._pending:
                    return
                cp = self._pending[0]
            problem = self._post(client, cp)
            if problem is not None:
                DELIVERIES.labels(result="failed").inc()
                log.warning(
                    "checkpoint %d could not be sent to the witness (%s); %d waiting for the "
                    "next tick",
                    cp.size, problem, len(self._pending),
                )  # fmt: skip
                return
            DELIVERIES.labels(result="delivered").inc()
            with self._lock:
                if self._pending and self._pending[0] is cp:
                    self._pending.popleft()

    def _post(self, client: httpx2.Client, cp: Checkpoint) -> str | None:
        """None if the witness took ``cp``, else why not."""
        import httpx2

        headers = {"Content-Type": "application/json", "User-Agent": "tether-witness/1"}
        try:
            response = client.post(self.url, content=canonical(cp.to_json()), headers=headers)
        except httpx2.RequestError as exc:  # connect, read, write errors and timeouts
            return type(exc).__name__
        return None if response.is_success else f"HTTP {response.status_code}"
