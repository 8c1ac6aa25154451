"""Request ids and the access log: one line per HTTP request, text or one JSON object a line.

Every request gets an id: the client's ``X-Request-ID`` when it is a plausible one (at most
128 characters of ``A-Z a-z 0-9 . _ ~ : / + = @ -``), otherwise 32 hex digits: 64 random bits
drawn once per process and a 64-bit counter (unique like 128 random bits, without a
``getrandom`` system call per request: ~20 µs each under load on these machines). It is
returned on
every response (AuthZEN Authorization API 1.0's HTTPS binding asks the PDP to echo it), kept in the
ASGI scope for the handlers (:func:`context`: the decision routes write it into the ledger
event, the authentication dependencies set the caller), and logged.

An access line holds the method, the route template (``/v1/agents/{agent_id}``, never the raw
path or query string), the status, the duration, the caller's principal ref and the request
id; never a header or a body, so never a token or a secret. The middleware is plain ASGI
(``BaseHTTPMiddleware`` would cost a task per request) and wraps the whole application,
Starlette's 500 handler included, so that the id is on every response.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
MAX_LENGTH = 128
_HEADER_KEY = HEADER.lower().encode()
_VALID = re.compile(rb"[A-Za-z0-9._~:/+=@-]{1,%d}" % MAX_LENGTH)
_SCOPE_KEY = "tether.request"
_ROOT_LOGGER = "tether"

log = logging.getLogger("tether.access")

LogFormat = Literal["text", "json"]


class RequestContext:
    """What the access line needs from inside the application: the id, and who called once
    authentication said so (``None``: anonymous, or authentication failed)."""

    __slots__ = ("caller", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.caller: str | None = None


def context(scope: Scope) -> RequestContext | None:
    """The request's context; None outside :class:`RequestLogMiddleware` (an app mounted
    without it)."""
    ctx: RequestContext | None = scope.get(_SCOPE_KEY)
    return ctx


def request_id(scope: Scope) -> str | None:
    ctx = context(scope)
    return ctx.request_id if ctx is not None else None


def set_caller(scope: Scope, caller: str) -> None:
    ctx = context(scope)
    if ctx is not None:
        ctx.caller = caller


class _Ids:
    """Request ids: this process's random prefix and a counter (drawn again in a forked
    child, so that two processes never share a prefix)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_IDS = _Ids()


def _accepted_id(scope: Scope) -> str:
    value: bytes
    for name, value in scope["headers"]:
        if name == _HEADER_KEY:
            if _VALID.fullmatch(value):
                return value.decode("ascii")
            break  # an implausible id is replaced, never logged
    return _IDS.next()


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.in_flight = 0  # HTTP requests begun and not yet ended (on the server's loop)

    def alone(self) -> bool:
        """Whether at most one request is in flight: the caller's own, if it is one."""
        return self.in_flight <= 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self._logged(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _logged(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = RequestContext(_accepted_id(scope))
        scope[_SCOPE_KEY] = ctx
        echo = (_HEADER_KEY, ctx.request_id.encode("ascii"))
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), echo]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if log.isEnabledFor(logging.INFO):
                _log_access(scope, status, time.perf_counter() - start, ctx)


def _log_access(scope: Scope, status: int, seconds: float, ctx: RequestContext) -> None:
    route = getattr(scope.get("route"), "path", None) or "unmatched"
    ms = round(seconds * 1000, 2)
    method = scope["method"]
    # makeRecord and handle, not log.info: the record's caller (a walk up the stack) would be
    # this function every time, and finding it was a third of the line's cost.
    record = log.makeRecord(
        log.name, logging.INFO, __file__, 0, "%s %s %d %.2fms caller=%s request_id=%s",
        (method, route, status, ms, ctx.caller or "-", ctx.request_id), None,
        extra={"access": {"method": method, "route": route, "status": status,
                          "duration_ms": ms, "caller": ctx.caller,
                          "request_id": ctx.request_id}},
    )  # fmt: skip
    log.handle(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    an access line's fields at the top level, and ``exception`` with its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if access:
            out.update(access)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _TetherHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler :func:`configure` installed, so that a second call replaces it."""


def configure(log_format: LogFormat, level: str) -> None:
    """Send the ``tether.*`` loggers (the access log among them) to stderr at ``level``, as
    text or JSON lines; with JSON, uvicorn's own lines too, so that every line parses."""
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(_TEXT)
    root = logging.getLogger(_ROOT_LOGGER)
    for old in [h for h in root.handlers if isinstance(h, _TetherHandler)]:
        root.removeHandler(old)
    handler = _TetherHandler(sys.stderr)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    root.propagate = False
    if log_format == "json":
        for uvicorn_handler in logging.getLogger("uvicorn").handlers:
            uvicorn_handler.setFormatter(formatter)
