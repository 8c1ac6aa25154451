"""The FastAPI application: routers, the error shape, body limits, request ids and the access
log, the offline docs pages, the checkpoint timer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.routing import Route
from starlette.types import ASGIApp

from tether import __version__, collector
from tether.api import docs, errors, requestlog
from tether.api.console import governance as console_governance
from tether.api.console import kit as console_kit
from tether.api.console import routes as console_routes
from tether.api.console.session import ConsoleHeaders
from tether.api.fastpath import HotPaths
from tether.api.limits import BodyLimitMiddleware
from tether.api.mcp import METHODS, McpGate
from tether.api.metrics import MetricsMiddleware
from tether.api.routes import (
    agents,
    alerts,
    approvals,
    audit,
    calls,
    credentials,
    decisions,
    freeze,
    gateway,
    inventory,
    oauth,
    ops,
    policies,
    reports,
    reviews,
    revocations,
    rightsizing,
    risk,
    rollback,
    secrets,
    users,
)
from tether.audit.anchoring import maintenance_seconds
from tether.config import load_settings
from tether.container import Services, build_services

log = logging.getLogger("tether.api")
SWITCH_INTERVAL_SECONDS = 0.0005  # a server worker's (sys.setswitchinterval; see app_from_env)
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


async def _maintenance(services: Services) -> None:
    """Every node, every few seconds: sign the ledger head if T seconds passed, rotate the
    signing key when it is due, forget spent jtis that expired, expire approvals and agents
    past their expiry, purge long-expired access token rows. Each step is idempotent under
    the write lock, so nodes running it together do it once."""
    interval = maintenance_seconds(services.settings.checkpoint_every_seconds)
    while True:
        await asyncio.sleep(interval)
        for task in services.maintenance:  # each domain's own (tether.maintenance)
            try:
                await asyncio.to_thread(task.run)
            except Exception:  # the loop must survive a transient database outage
                log.exception("maintenance task %s failed; retrying in %.0fs", task.name,
                              interval)  # fmt: skip


async def _alerts(services: Services) -> None:
    """Every second: raise the alerts of new ledger events, deliver what is due (each
    idempotent under the write lock, the delivery under a lease: one node sends)."""
    interval = services.settings.alert_poll_seconds
    while True:
        await asyncio.sleep(interval)
        for task in services.alerts.maintenance():
            try:
                await asyncio.to_thread(task.run)
            except Exception:
                log.exception("alerts task %s failed; retrying in %.0fs", task.name, interval)


async def _monitor(services: Services) -> None:
    """Every ``monitor.sync_seconds`` (longer while syncs are slow: Monitor.next_sync):
    publish this worker's behaviour counts and merge the other workers' and nodes'
    (tether.monitor)."""
    monitor = services.monitor
    interval = services.settings.monitor.sync_seconds
    while monitor.enabled:
        await asyncio.sleep(interval)
        try:
            cpu = await monitor.sync_async()
        except Exception:
            interval = services.settings.monitor.sync_seconds
            log.exception("monitor sync failed; retrying in %.1fs", interval)
        else:
            interval = monitor.next_sync(cpu)


# The console's page modules, each a capability's own (tether.api.console.kit)
CONSOLE_PAGES = [console_routes.router, console_governance.router]


class _TetherAPI(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        # The request log outside Starlette's ServerErrorMiddleware, which answers an
        # unhandled error itself: the request id is on that 500 too, and its line is logged.
        # The hot paths right inside it, ahead of every other layer (tether.api.fastpath).
        services = self.state.services
        stack = HotPaths(super().build_middleware_stack(), services, self.state.gateway)
        logged = requestlog.RequestLogMiddleware(stack)
        # The only request in flight has its decision or call record committed on the event
        # loop itself, not handed to the writer thread and back (tether.audit.group).
        services.committer.inline_when = logged.alone
        return logged


def create_app(services: Services, *, started: Callable[[], None] | None = None) -> FastAPI:
    """The application on ``services``; ``started`` runs once its runtime is loaded, before
    the first request (a server process settles its garbage collector there)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(services.runtime.load)
        services.runtime.start()
        if started is not None:
            started()
        tasks = [asyncio.create_task(_maintenance(services)),
                 asyncio.create_task(_alerts(services)),
                 asyncio.create_task(_monitor(services))]  # fmt: skip
        try:
            async with services.gateway.run():  # /mcp's sessions and upstream connections
                yield
        finally:
            services.runtime.stop()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = _TetherAPI(
        title="Tether",
        version=__version__,
        description="Identity, access and governance for autonomous AI agents.",
        lifespan=lifespan,
        # FastAPI looks the global OpenTelemetry providers up on every request while any of
        # these is on (~8 µs a request even with none configured): opt in, not out.
        telemetry=None if services.settings.opentelemetry else _NO_TELEMETRY,
        docs_url=None,  # the CDN pages; tether.api.docs serves them from installed files
        redoc_url=None,
    )
    app.state.services = services
    errors.install(app)
    app.state.gateway = McpGate(services)  # POST /mcp answered by HotPaths, the rest here
    app.router.routes.append(Route("/mcp", endpoint=app.state.gateway, methods=METHODS))
    # The decision endpoints first: FastAPI tries routes in order, and they are the hot path.
    # The inventory's /v1/agents/export before the agents' /v1/agents/{agent_id}.
    for module in (decisions, ops, oauth, users, inventory, agents, freeze, credentials,
                   policies, approvals, audit, revocations, secrets, gateway, calls, rollback,
                   alerts, risk, reviews, rightsizing, reports):  # fmt: skip
        _add_routes(app, module.router)
    docs.install(app)
    for pages in CONSOLE_PAGES:  # the web console: pages, not the API's document
        _add_routes(app, pages)
    console_kit.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=services.settings.max_body_bytes,
                       exempt=frozenset({"/mcp"}))  # the gateway's gate has its own  # fmt: skip
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(ConsoleHeaders)  # outermost: every /console answer, errors too
    return app


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """The router's routes, as they are, on the app. FastAPI's ``include_router`` (0.16x)
    wraps the router and builds each of its routes' request handling afresh for every app,
    on the app's first request to it: 20-250 ms per router here, paid by the first request
    after every start (a kill among them) and by every test's app; the routes themselves
    are built once, when their module is imported. The routers carry their own prefix and
    tags and nothing else an include would add (dependencies, responses, a body limit: those
    are the app's), so the OpenAPI document and the routing are the same."""
    app.router.routes.extend(router.routes)


def app_from_env() -> FastAPI:
    """The uvicorn factory for ``tether serve``: each worker process builds its own services
    and sends its logs (the access log among them) to stderr. Its garbage collector settles
    (:mod:`tether.collector`) once the runtime is loaded: a worker is a process of its own
    (uvicorn spawns it), so the supervisor's settling does not reach it."""
    collector.starting()
    # The group-commit thread holds the deployment-wide write lock across its round trips to
    # the database, and after each it needs the GIL back from the event loop, which may keep
    # it for a whole switch interval (5 ms by default) while it serves requests: every other
    # writer waits meanwhile. At 0.5 ms the lock is held ~15 % less per batch under mixed
    # load (bench/README.md, issue 14, sixth part).
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    settings = load_settings()
    requestlog.configure(settings.log_format, settings.log_level)
    return create_app(build_services(settings), started=collector.settled)
