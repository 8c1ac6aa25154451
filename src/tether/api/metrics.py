"""HTTP metrics for Prometheus: requests by route template, method and status, with latency."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_SECONDS = Histogram(
    "tether_http_request_duration_seconds",
    "HTTP requests by route template, method and status",
    ["method", "route", "status"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)

# The labelled series, by (method, route template, status): a bounded set, looked up per request.
_children: dict[tuple[str, str, int], Any] = {}


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            # The route template, not the raw path, so ids do not explode the label set.
            route = getattr(scope.get("route"), "path", "unmatched")
            observe(scope["method"], route, status, time.perf_counter() - start)


def observe(method: str, route: str, status: int, seconds: float) -> None:
    """One request's duration, by method, route template and status."""
    key = (method, route, status)
    child = _children.get(key)
    if child is None:
        child = _children[key] = REQUEST_SECONDS.labels(method, route, str(status))
    child.observe(seconds)
