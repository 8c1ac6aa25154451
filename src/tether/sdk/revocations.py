"""Follow Tether's revocation feed, so a resource server that verifies tokens offline stops
honouring a killed, suspended or frozen agent's tokens at once — not when they expire.

:class:`RevocationFollower` keeps a server-sent-events connection to
``GET /v1/revocations/stream`` open on a thread of its own, reconnecting from the last
cursor, and holds what it was told in memory: revoked token ids, agents that are not active
(or frozen), whether everything is frozen. Pass it as ``revocation_check`` to
:func:`~tether.sdk.verify_access_token` or :class:`~tether.sdk.TetherAuthMiddleware`: a token
is refused when its ``jti`` is revoked, or its subject or any actor of its delegation chain is
not active.

It fails closed: if the feed has not confirmed it is current for ``max_staleness`` seconds
(Tether sends a ``current`` event every two seconds while it is), every token is refused —
unless ``on_stale="fetch"``, which first reads ``GET /v1/revocations`` once to catch up (and
refuses if that fails too). Reading the feed needs an admin token or a resource-server
credential with scope ``tether:revocations`` (or ``tether:introspect``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal, Self

import httpx2 as httpx
import orjson

from tether.sdk.claims import AccessTokenClaims
from tether.sdk.errors import InvalidToken

log = logging.getLogger("tether.sdk.revocations")
_BACKOFF = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


class RevocationFollower:
    def __init__(
        self,
        base_url: str,
        token: str | Callable[[], str],
        *,
        max_staleness: float = 10.0,
        on_stale: Literal["fail_closed", "fetch"] = "fail_closed",
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_staleness <= 0:
            raise ValueError("max_staleness must be positive")
        if on_stale not in ("fail_closed", "fetch"):
            raise ValueError("on_stale is 'fail_closed' or 'fetch'")
        self._base = base_url.rstrip("/")
        self._token = token if callable(token) else (lambda: token)
        self.max_staleness = max_staleness
        self.on_stale = on_stale
        self._timeout = timeout
        self._transport = transport
        self._clock = clock
        self._lock = threading.Lock()
        self._agents: dict[str, str] = {}  # not active: id -> state
        self._tokens: dict[str, int] = {}  # revoked: jti -> exp
        self._all_frozen = False
        self.cursor: str | None = None
        self._confirmed_at: float | None = None
        self._current = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http: httpx.Client | None = None

    # -- the check -------------------------------------------------------------------------
    def __call__(self, claims: AccessTokenClaims) -> bool:
        """True if the token must be refused (a :data:`~tether.sdk.RevocationCheck`). Raises
        :class:`InvalidToken` when the feed is not current and cannot be made so."""
        if not self.is_current() and not (self.on_stale == "fetch" and self.fetch()):
            raise InvalidToken("Tether's revocation feed is not current: refusing (fail closed)")
        with self._lock:
            if self._all_frozen or claims.jti in self._tokens:
                return True
            return any(p in self._agents for p in (claims.sub, *claims.chain))

    def is_current(self) -> bool:
        confirmed = self._confirmed_at
        return confirmed is not None and self._clock() - confirmed <= self.max_staleness

    def wait_current(self, timeout: float) -> bool:
        """Block until the feed first confirmed it is current (True), or ``timeout``."""
        return self._current.wait(timeout) and self.is_current()

    def state(self, agent_id: str) -> str:
        """What the feed said of an agent: ``active`` unless told otherwise."""
        with self._lock:
            return "frozen" if self._all_frozen else self._agents.get(agent_id, "active")

    # -- applying the feed -----------------------------------------------------------------
    def _reset(self) -> None:
        with self._lock:
            self._agents.clear()
            self._tokens.clear()
            self._all_frozen = False

    def _apply(self, item: dict[str, Any]) -> None:
        kind, ident, state = item.get("type"), str(item.get("id")), item.get("state")
        now = time.time()
        with self._lock:
            if kind == "token":
                self._tokens[ident] = int(item.get("exp") or 0)
                if len(self._tokens) > 1024:  # expired ones fail verification anyway
                    self._tokens = {j: e for j, e in self._tokens.items() if e + 60 > now}
            elif kind == "agent":
                if state == "active":
                    self._agents.pop(ident, None)
                else:
                    self._agents[ident] = str(state)
            elif kind == "all":
                self._all_frozen = state == "frozen"

    def _confirm(self) -> None:
        self._confirmed_at = self._clock()
        self._current.set()

    def fetch(self) -> bool:
        """Catch up once with ``GET /v1/revocations`` (all pages); True if it worked."""
        try:
            http = self._client()
            while True:
                params = {"since": self.cursor} if self.cursor else {}
                response = http.get("/v1/revocations", params=params, headers=self._headers())
                response.raise_for_status()
                page = response.json()
                if page["reset"]:
                    self._reset()
                for item in page["items"]:
                    self._apply(item)
                self.cursor = page["next_cursor"]
                if not page.get("more"):
                    break
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            log.warning("revocation feed: catching up failed", exc_info=True)
            return False
        self._confirm()
        return True

    # -- the stream ------------------------------------------------------------------------
    def start(self) -> Self:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tether-revocations",
                                            daemon=True)  # fmt: skip
            self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.close()  # ends a blocked read
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "text/event-stream"}
        if self.cursor:
            headers["Last-Event-ID"] = self.cursor
        return headers

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self._base, transport=self._transport,
                                      timeout=httpx.Timeout(self._timeout, read=None))  # fmt: skip
        return self._http

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with self._client().stream("GET", "/v1/revocations/stream",
                                           headers=self._headers()) as response:  # fmt: skip
                    if response.status_code != 200:
                        response.read()
                        raise httpx.HTTPStatusError(
                            f"feed answered {response.status_code}",
                            request=response.request, response=response,
                        )  # fmt: skip
                    failures = 0
                    for event, data, event_id in _events(response.iter_lines()):
                        self._on(event, data, event_id)
                        if self._stop.is_set():
                            return
            except (httpx.HTTPError, ValueError, RuntimeError) as exc:
                if self._stop.is_set():
                    return
                log.warning("revocation feed: %s; reconnecting", exc)
            delay = _BACKOFF[min(failures, len(_BACKOFF) - 1)]
            failures += 1
            self._stop.wait(delay)

    def _on(self, event: str, data: str, event_id: str | None) -> None:
        if event == "reset":
            self._reset()
        elif event == "revocation":
            self._apply(orjson.loads(data))
        if event_id is not None:
            self.cursor = event_id
        if event == "current":
            self._confirm()


def _events(lines: Iterator[str]) -> Iterator[tuple[str, str, str | None]]:
    """Server-sent events (WHATWG HTML §9.2.6) as ``(event, data, id)``; comments skipped."""
    event, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data or event != "message":
                yield event, "\n".join(data), event_id
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
