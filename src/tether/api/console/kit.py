"""What every console page is built with: the templates and their rendering (the nav's open
alerts, the flash message, the CSRF token and the signed-in human's role), the signed-in
dependency (:data:`Signed`: a page asked without a session redirects to sign-in), the
redirect after a form, the error page, and running a service call off the event loop.

Each capability adds its pages in its own module with its own ``router`` (registered in
:func:`tether.api.app.create_app`), its flash messages in :data:`FLASH` and its templates
beside the others, instead of editing a neighbour's page module.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

import anyio
from fastapi import Depends, FastAPI
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tether.alerts.models import AlertRow
from tether.api.console import oidc
from tether.api.console import session as cs
from tether.clock import to_rfc3339
from tether.container import Services
from tether.errors import TetherError, Unauthenticated
from tether.principals import Principal, Role

T = TypeVar("T")
ENV = Environment(
    loader=PackageLoader("tether.api.console", "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
FLASH = {
    "signed-in": "Signed in.",
    "suspended": "Agent suspended: it is refused everything until resumed.",
    "resumed": "Agent resumed.",
    "killed": "Agent killed: revoked with its descendants; its tokens, keys, approvals and "
    "leases cut off.",
    "approved": "Approved: the identical request goes through once.",
    "denied": "Denied.",
    "frozen": "Frozen: the agents it holds are refused everything on every node.",
    "unfrozen": "Freeze lifted.",
    "rolled-back": "Rollback finished: see its report on the agent's page.",
    "verified": "Ledger verified.",
    "password": "Password set.",
    "acked": "Alert acknowledged.",
    "replayed": "Replayed: those deliveries are queued again, in their order.",
    "risk-cleared": "Risk cleared: no more step-up; its behaviour is watched afresh.",
}


def services_of(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def _time(value: Any) -> str:
    if value is None:
        return "—"
    text = value if isinstance(value, str) else to_rfc3339(value)
    return text.replace("T", " ").replace("Z", " UTC")


ENV.filters["time"] = _time
ENV.filters["json"] = lambda v: json.dumps(v, indent=2, sort_keys=True, ensure_ascii=False)


def render(request: Request, template: str, visit: cs.Visit | None, *, http_status: int = 200,
           **ctx: Any) -> HTMLResponse:  # fmt: skip
    flash = FLASH.get(request.query_params.get("flash", ""))
    who = visit.principal if visit else None
    svc = services_of(request)
    if "open_alerts" not in ctx:
        ctx["open_alerts"] = open_alerts(svc, who)
    body = ENV.get_template(template).render(
        request=request, me=who, oidc=oidc.provider_name(svc.settings) if oidc.enabled(
            svc.settings) else None, csrf=visit.csrf if visit else "", flash=flash,
        is_admin=bool(who and who.is_admin), can_operate=bool(who and who.role in
                                                             (Role.ADMIN, Role.SUPERVISOR)),
        reads_ledger=bool(who and who.role in (Role.ADMIN, Role.AUDITOR)), **ctx,
    )  # fmt: skip
    return HTMLResponse(body, status_code=http_status)


def open_alerts(svc: Services, who: Principal | None) -> int | None:
    """How many alerts are open, for the nav: one count, for those who read every alert (a
    supervisor's would be a look at each alert's agent: their nav shows no count)."""
    if who is None or not (who.is_admin or who.role is Role.AUDITOR):
        return None
    counted = select(func.count()).select_from(AlertRow).where(AlertRow.acked_at.is_(None))
    with svc.db.read() as s:
        return int(s.scalar(counted) or 0)


def _to_sign_in(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/sign-in?next={quote(target, safe='')}", status_code=303)


class SignInFirst(Exception):
    """A page asked without a session: answered with the sign-in page's redirect."""

    def __init__(self, request: Request) -> None:
        super().__init__("sign in")
        self.response = _to_sign_in(request)


def _signed(request: Request) -> cs.Visit:  # sync: FastAPI runs it in its thread pool
    visit = visit_of(request)
    if visit is None:
        raise SignInFirst(request)
    return visit


# A console page's human: the session's, or (none) a redirect to the sign-in page.
Signed = Annotated[cs.Visit, Depends(_signed)]


def install(app: FastAPI) -> None:
    """The console's routes on ``app``, and its answer to a page asked without a session."""

    async def sign_in_first(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInFirst)
        return exc.response

    app.add_exception_handler(SignInFirst, sign_in_first)


def visit_of(request: Request) -> cs.Visit | None:
    try:
        return cs.visit(request)
    except Unauthenticated:
        return None


def back(path: str, flash: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?flash={flash}", status_code=303)


def error_page(request: Request, visit: cs.Visit | None, exc: TetherError) -> HTMLResponse:
    return render(request, "error.html", visit, http_status=exc.http_status,
                  message=exc.message, code=exc.code)  # fmt: skip


async def run(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)
