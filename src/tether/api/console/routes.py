"""The web console at ``/console``: server-rendered pages over the same services as the API,
each asked as the signed-in human — so every page and action respects their role exactly as
the API does (a supervisor sees and acts on their agents only, an auditor reads, an admin
does everything). Forms post back here (CSRF-checked) and redirect; nothing is rendered by
script but the live feeds, which read ``/console/stream`` (server-sent events)."""

from __future__ import annotations

import asyncio
import difflib
from collections.abc import AsyncIterator
from datetime import timedelta
from functools import partial
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import orjson
from fastapi import APIRouter
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from tether.alerts.service import Alert
from tether.api.console import oidc
from tether.api.console import session as cs
from tether.api.console.kit import Signed, open_alerts, render
from tether.api.console.kit import back as _back
from tether.api.console.kit import error_page as _error
from tether.api.console.kit import run as _run
from tether.api.console.kit import services_of as _svc
from tether.api.console.kit import visit_of as _visit
from tether.audit.models import EventRow
from tether.clock import to_micros, to_rfc3339
from tether.container import Services
from tether.errors import NotFound, TetherError, ValidationFailed
from tether.freeze.service import ScopeRequest
from tether.policy.service import check
from tether.principals import Principal, Role
from tether.rollback.values import Window

router = APIRouter(include_in_schema=False)
_STATIC = {"console.css": "text/css; charset=utf-8",
           "console.js": "text/javascript; charset=utf-8"}  # fmt: skip
STATUSES = ("active", "suspended", "expired", "revoked", "retired")
TIERS = ("minimal", "limited", "high", "unacceptable")
ALERT_VIEWS = ("open", "acked", "all")


# -- static files ---------------------------------------------------------------------------------


@router.get("/console/static/{name}")
def static(name: str) -> Response:
    kind = _STATIC.get(name)
    if kind is None:
        return Response("not found", status_code=404, media_type="text/plain")
    data = (resources.files("tether.api.console") / "static" / name).read_bytes()
    return Response(data, media_type=kind, headers={"cache-control": "public, max-age=300"})


# -- signing in and out ---------------------------------------------------------------------------


def _next(value: str | None) -> str:
    """Only a console path: never a redirect elsewhere."""
    if value and value.startswith("/console") and "//" not in value and "\\" not in value:
        return value
    return "/console"


@router.get("/console/sign-in")
def sign_in_page(request: Request) -> Response:
    if _visit(request) is not None:
        return RedirectResponse(_next(request.query_params.get("next")), status_code=303)
    token, new = cs.pre_token(request)
    response = render(request, "sign_in.html", None, pre=token,
                      next=_next(request.query_params.get("next")))  # fmt: skip
    if new:
        response.set_cookie(cs.PRE_COOKIE, token, httponly=True, samesite="strict",
                            path=cs.PATH, secure=cs.secure(request, _svc(request)))  # fmt: skip
    return response


@router.post("/console/sign-in")
async def sign_in(request: Request) -> Response:
    svc = _svc(request)
    fields = await cs.form(request)
    pre = request.cookies.get(cs.PRE_COOKIE, "")
    target = _next(fields.get("next"))
    try:
        cs.check_csrf(fields, pre)
        address = request.client.host if request.client else "unknown"
        secret, _signed = await _run(lambda: svc.signin.sign_in(
            fields.get("username", ""), fields.get("password", ""), address=address))  # fmt: skip
    except TetherError as exc:
        response: Response = render(request, "sign_in.html", None, http_status=exc.http_status,
                          pre=pre or cs.pre_token(request)[0], next=target, error=exc.message,
                          username=fields.get("username", ""))  # fmt: skip
        for key, value in exc.response_headers().items():
            response.headers[key] = value
        return response
    response = RedirectResponse(target, status_code=303)
    cs.set_session(response, request, svc, secret)
    return response


@router.get("/console/sign-in/oidc")
async def sign_in_oidc(request: Request) -> Response:
    svc = _svc(request)
    if not oidc.enabled(svc.settings):
        why = "no identity provider is configured (TETHER_CONSOLE_OIDC_ISSUER)"
        return render(request, "error.html", None, http_status=404, code="not_found",
                      message=why)  # fmt: skip
    try:
        return await oidc.start(request, svc, _next(request.query_params.get("next")))
    except TetherError as exc:
        return _sign_in_again(request, exc)


@router.get("/console/sign-in/oidc/callback")
async def sign_in_oidc_callback(request: Request) -> Response:
    svc = _svc(request)
    if not oidc.enabled(svc.settings):
        return Response("not found", status_code=404, media_type="text/plain")
    try:
        secret, target = await oidc.finish(request, svc)
    except TetherError as exc:
        response = _sign_in_again(request, exc)
        response.delete_cookie(oidc.COOKIE, path=oidc.PATH)
        return response
    response = oidc.landing(_next(target))
    cs.set_session(response, request, svc, secret)
    response.delete_cookie(oidc.COOKIE, path=oidc.PATH)
    return response


def _sign_in_again(request: Request, exc: TetherError) -> HTMLResponse:
    token, new = cs.pre_token(request)
    response = render(request, "sign_in.html", None, http_status=exc.http_status, pre=token,
                      next="/console", error=exc.message)  # fmt: skip
    if new:
        response.set_cookie(cs.PRE_COOKIE, token, httponly=True, samesite="strict",
                            path=cs.PATH, secure=cs.secure(request, _svc(request)))  # fmt: skip
    return response


@router.post("/console/sign-out")
async def sign_out(request: Request) -> Response:
    svc = _svc(request)
    visit = await _run(partial(_visit, request))  # a database read: off the loop
    if visit is not None:
        cs.check_csrf(await cs.form(request), visit.csrf)
        secret = request.cookies.get(cs.COOKIE, "")
        await _run(lambda: svc.signin.sign_out(secret))
    response = RedirectResponse("/console/sign-in", status_code=303)
    cs.clear_session(response, request, svc)
    return response


# -- overview -------------------------------------------------------------------------------------


@router.get("/console")
def overview(request: Request, visit: Signed) -> Response:
    svc, me = _svc(request), visit.principal
    counts = svc.agents.counts(me)
    by_status = {s: sum(n for (st, _), n in counts.items() if st == s) for s in STATUSES}
    by_tier = {t: sum(n for (st, tier), n in counts.items() if tier == t and st == "active")
               for t in TIERS}  # fmt: skip
    pending = svc.approvals.list(me, status="pending", agent=None, cursor=None, limit=20)
    hour: dict[str, int] | None = None
    if me.role in (Role.ADMIN, Role.AUDITOR):
        hour = _last_hour(svc)
    freeze = svc.freezes.state(me)
    opened = svc.alerts.list(me, status="open", limit=5)
    counted = open_alerts(svc, me)
    alerts_total = counted if counted is not None else len(opened.items)
    return render(request, "overview.html", visit, by_status=by_status, by_tier=by_tier,
                  total=sum(by_status.values()), pending=[a.to_json() for a in pending.items],
                  hour=hour, freeze=freeze.to_json(), open_alerts=counted,
                  alerts=[a.to_json() for a in opened.items], alerts_total=alerts_total,
                  alerts_more=counted is None and opened.next_cursor is not None)  # fmt: skip


def _last_hour(svc: Services) -> dict[str, int]:
    """The last hour's decisions by outcome: one count on the ledger's time index (reading
    every event, 10,000 of them, was most of the page's time: bench/console.py)."""
    since = to_micros(svc.clock.now() - timedelta(hours=1))
    hour = {"allow": 0, "deny": 0, "approval_required": 0}
    counted = (select(EventRow.decision, func.count()).where(EventRow.time >= since,
               EventRow.type == "decision").group_by(EventRow.decision))  # fmt: skip
    with svc.db.read() as s:
        for decision, n in s.execute(counted):
            if decision in hour:
                hour[decision] = n
    return hour


@router.post("/console/freeze")
async def freeze(request: Request, visit: Signed) -> Response:
    svc, fields = _svc(request), await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    try:
        if fields.get("op") == "lift":
            await _run(lambda: svc.freezes.lift(visit.principal, reason=fields.get("reason")
                                                or None))  # fmt: skip
            return _back("/console", "unfrozen")
        await _run(lambda: svc.freezes.freeze(visit.principal, reason=fields.get("reason", ""),
                                              scope=ScopeRequest()))  # fmt: skip
    except TetherError as exc:
        return _error(request, visit, exc)
    return _back("/console", "frozen")


# -- agents ---------------------------------------------------------------------------------------


@router.get("/console/agents")
def agents(request: Request, visit: Signed) -> Response:
    svc, q = _svc(request), request.query_params
    status = q.get("status") if q.get("status") in STATUSES else None
    tier = q.get("risk_tier") if q.get("risk_tier") in TIERS else None
    search = (q.get("q") or "").strip()[:100]
    try:
        page = svc.agents.list(
            visit.principal,
            cursor=q.get("cursor") or None,
            limit=50,
            status=status,
            risk_tier=tier,
            role=q.get("role") or None,
        )
    except TetherError as exc:
        return _error(request, visit, exc)
    items = [a.to_json() for a in page.items]
    if search:
        needle = search.lower()
        items = [a for a in items if needle in a["name"].lower() or needle in a["id"].lower()]
    more = f"/console/agents?{urlencode({**dict(q), 'cursor': page.next_cursor})}" if (
        page.next_cursor) else None  # fmt: skip
    return render(request, "agents.html", visit, agents=items, status=status, tier=tier,
                  search=search, role=q.get("role") or "", more=more, statuses=STATUSES,
                  tiers=TIERS)  # fmt: skip


@router.get("/console/agents/{agent_id}")
def agent(request: Request, visit: Signed, agent_id: str) -> Response:
    svc, me = _svc(request), visit.principal
    try:
        found = svc.agents.get(me, agent_id).to_json()
        creds = [c.to_json() for c in svc.credentials.list(me, agent_id).items]
        events = [e.to_json() for e in svc.audit.events(me, agent=agent_id, limit=25,
                                                         newest_first=True).items]  # fmt: skip
        below = svc.agents.below(me, agent_id)
    except TetherError as exc:
        return _error(request, visit, exc)
    plan = None
    operates = me.role in (Role.ADMIN, Role.SUPERVISOR)
    if request.query_params.get("plan") == "rollback" and operates:
        try:
            plan = svc.rollback.plan(me, Window(agent_id)).to_json()
        except TetherError as exc:
            return _error(request, visit, exc)
    applicable: list[dict[str, Any]] = []
    view, compiled = svc.decisions.runtime.agents.get(agent_id), svc.decisions.runtime.policies
    if view is not None and compiled is not None:
        found_policies = compiled.for_principal(("Agent", agent_id), view.parents)
        applicable = [{"id": p.id, "effect": p.effect, "approval": p.approval, "text": p.text}
                      for p in found_policies]  # fmt: skip
    decisions = [e for e in events if e["type"] == "decision"]
    calls = [e for e in events if e["type"] == "tool.called"]
    return render(request, "agent.html", visit, agent=found, credentials=creds,
                  decisions=decisions, calls=calls, below=below, plan=plan,
                  applicable=applicable, risk=svc.monitor.describe(agent_id),
                  monitoring=svc.monitor.enabled,
                  confirm=request.query_params.get("confirm"))  # fmt: skip


@router.post("/console/agents/{agent_id}/{op}")
async def agent_action(request: Request, visit: Signed, agent_id: str, op: str) -> Response:
    svc, me, fields = _svc(request), visit.principal, await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    reason = (fields.get("reason") or "").strip() or f"from the console by {me.name}"
    here = f"/console/agents/{quote(agent_id, safe='')}"
    try:
        if op == "suspend":
            await _run(lambda: svc.agents.suspend(me, agent_id, reason=reason))
        elif op == "resume":
            await _run(lambda: svc.agents.resume(me, agent_id, note=fields.get("reason")))
        elif op == "kill":
            if fields.get("confirm") != agent_id:
                raise ValidationFailed("type the agent's id to confirm the kill", field="confirm")
            await _run(lambda: svc.agents.kill(me, agent_id, reason=reason, cascade=True))
        elif op == "clear-risk":
            note = (fields.get("note") or "").strip() or None
            await _run(lambda: svc.monitor.clear(me, agent_id, note=note))
        elif op == "rollback":
            report = await svc.rollback.run(me, Window(agent_id), on_failure="continue")
            return render(request, "rollback.html", visit, report=report.to_json(),
                          agent_id=agent_id)  # fmt: skip
        else:
            raise NotFound(f"no action {op!r}")
    except TetherError as exc:
        return _error(request, visit, exc)
    done = {"suspend": "suspended", "resume": "resumed", "kill": "killed",
            "clear-risk": "risk-cleared"}[op]  # fmt: skip
    return _back(here, done)


# -- approvals ------------------------------------------------------------------------------------


@router.get("/console/approvals")
def approvals(request: Request, visit: Signed) -> Response:
    svc = _svc(request)
    status = request.query_params.get("status") or "pending"
    try:
        page = svc.approvals.list(visit.principal, status=status, agent=None, cursor=None,
                                  limit=100)  # fmt: skip
    except TetherError as exc:
        return _error(request, visit, exc)
    template = "approvals_list.html" if request.query_params.get("part") else "approvals.html"
    return render(request, template, visit, approvals=[a.to_json() for a in page.items],
                  status=status)  # fmt: skip


@router.post("/console/approvals/{approval_id}/{op}")
async def approval_action(request: Request, visit: Signed, approval_id: str, op: str) -> Response:
    svc, fields = _svc(request), await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    note = (fields.get("note") or "").strip() or None
    try:
        if op == "approve":
            await _run(lambda: svc.approvals.approve(visit.principal, approval_id, note=note))
        elif op == "deny":
            await _run(lambda: svc.approvals.deny(visit.principal, approval_id, note=note))
        else:
            raise NotFound(f"no action {op!r}")
    except TetherError as exc:
        return _error(request, visit, exc)
    return _back("/console/approvals", "approved" if op == "approve" else "denied")


# -- alerts ---------------------------------------------------------------------------------------


def _may_ack(me: Principal, alert: Alert) -> bool:
    """Whether the Acknowledge form is offered: an admin, or a supervisor for an alert about
    one of their agents (the only ones they are shown). The service decides either way."""
    if alert.acked_at is not None:
        return False
    return me.is_admin or (me.role is Role.SUPERVISOR and alert.agent_id is not None)


def _alert_view(me: Principal, alert: Alert) -> dict[str, Any]:
    return {**alert.to_json(), "can_ack": _may_ack(me, alert)}


def _receiver(value: str) -> str:
    """Where a dead delivery was going, without its path or query (a webhook URL's secret is
    often there): its scheme and host."""
    parts = urlsplit(value)
    return f"{parts.scheme}://{parts.hostname}" if parts.scheme and parts.hostname else value


@router.get("/console/alerts")
def alerts_page(request: Request, visit: Signed) -> Response:
    svc, me, q = _svc(request), visit.principal, request.query_params
    view = q.get("status") if q.get("status") in ALERT_VIEWS else "open"
    try:
        head = svc.alerts.head()  # before the list: the live feed starts here, misses nothing
        page = svc.alerts.list(me, status=None if view == "all" else view,
                               cursor=q.get("cursor") or None, limit=50)  # fmt: skip
        dead = None
        if me.is_admin or me.role is Role.AUDITOR:
            dead = [{**d, "receiver": _receiver(str(d["receiver"]))}
                    for d in svc.alerts.dead_letters(me)]  # fmt: skip
    except TetherError as exc:
        return _error(request, visit, exc)
    more = f"/console/alerts?{urlencode({'status': view, 'cursor': page.next_cursor})}" if (
        page.next_cursor) else None  # fmt: skip
    live = view != "acked" and not q.get("cursor")  # new alerts are open, and on top
    return render(request, "alerts.html", visit, alerts=[_alert_view(me, a) for a in page.items],
                  view=view, head=head, live=live, dead=dead, more=more)  # fmt: skip


@router.post("/console/alerts/replay")
async def alerts_replay(request: Request, visit: Signed) -> Response:
    svc, fields = _svc(request), await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    one = fields.get("id") or ""
    try:
        if one and not (one.isdigit() and len(one) <= 18):
            raise ValidationFailed("a delivery's id is a number", field="id")
        ids = [int(one)] if one else None
        await _run(lambda: svc.alerts.replay(visit.principal, ids))
    except TetherError as exc:
        return _error(request, visit, exc)
    return _back("/console/alerts", "replayed")


@router.post("/console/alerts/{alert_id}/ack")
async def alert_ack(request: Request, visit: Signed, alert_id: str) -> Response:
    svc, fields = _svc(request), await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    note = (fields.get("note") or "").strip()[:500] or None
    try:
        await _run(lambda: svc.alerts.ack(visit.principal, alert_id, note=note))
    except TetherError as exc:
        return _error(request, visit, exc)
    return _back("/console/alerts", "acked")


def _since(request: Request) -> int | None:
    """Where a live feed resumes: the browser's ``Last-Event-ID`` on a reconnect, else the
    page's ``after`` (the newest alert when it was rendered)."""
    for value in (request.headers.get("last-event-id"), request.query_params.get("after")):
        if value and value.isdigit() and len(value) <= 18:
            return int(value)
    return None


@router.get("/console/alerts/stream")
async def alerts_stream(request: Request) -> Response:
    """New alerts the signed-in human may read, as server-sent events (``event: alert``, its
    ``id`` the alert's seq): every alert for admins and auditors, their agents' for a
    supervisor — the same feed as ``/v1/alerts/stream``, with whether they may acknowledge it."""
    visit = await _run(partial(_visit, request))  # a database read: off the loop
    if visit is None:
        return Response("sign in", status_code=401, media_type="text/plain")
    svc, me = _svc(request), visit.principal
    since = _since(request)
    start = since if since is not None else await _run(svc.alerts.head)
    try:
        await _run(partial(svc.alerts.after, me, start))  # may they read alerts at all?
    except TetherError as exc:
        return Response(exc.message, status_code=exc.http_status, media_type="text/plain")

    async def events() -> AsyncIterator[bytes]:
        seen, quiet = start, 0
        yield b"retry: 2000\n: live\n\n"
        while not await request.is_disconnected():
            found = await _run(partial(svc.alerts.after, me, seen))
            for alert in found:
                seen = max(seen, alert.seq)
                yield (b"id: %d\nevent: alert\ndata: " % alert.seq
                       + orjson.dumps(_alert_view(me, alert)) + b"\n\n")  # fmt: skip
            quiet = 0 if found else quiet + 1
            if quiet >= 30:  # a comment now and then keeps proxies from closing a quiet feed
                quiet = 0
                yield b": still here\n\n"
            await asyncio.sleep(0.5)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-store",
                                      "x-accel-buffering": "no"})  # fmt: skip


# -- live activity --------------------------------------------------------------------------------


@router.get("/console/activity")
def activity(request: Request, visit: Signed) -> Response:
    return render(request, "activity.html", visit)


@router.get("/console/stream")
async def stream(request: Request) -> Response:
    """New ledger events the signed-in human may read, as server-sent events: every event for
    admins and auditors, their own agents' for a supervisor."""
    visit = await _run(partial(_visit, request))  # a database read: off the loop
    if visit is None:
        return Response("sign in", status_code=401, media_type="text/plain")
    svc, me = _svc(request), visit.principal
    mine: set[str] | None = None
    if me.role is Role.SUPERVISOR:
        mine = set()
        cursor: str | None = None
        for _ in range(200):
            page = await _run(partial(svc.agents.list, me, cursor=cursor, limit=200))
            mine.update(a.id for a in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
    start = await _run(lambda: _head(svc))

    async def events() -> AsyncIterator[bytes]:
        seen = start
        yield b": live\n\n"
        while not await request.is_disconnected():
            found = await _run(partial(_after, svc, me, seen, mine))
            for event in found:
                seen = max(seen, event["seq"])
                yield b"event: ledger\ndata: " + orjson.dumps(event) + b"\n\n"
            await asyncio.sleep(0.5)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-store"})  # fmt: skip


def _head(svc: Services) -> int:
    with svc.db.read() as s:
        head = svc.ledger.store.head_with_time(s)
        return head[0] if head else 0


def _after(svc: Services, me: Any, seq: int, mine: set[str] | None) -> list[dict[str, Any]]:
    """Events after ``seq`` the human may read (at most 200 at a time), summarised."""
    with svc.db.read() as s:
        rows = svc.ledger.store.page(s, after_seq=seq, limit=200)
    out = []
    for event in rows:
        if mine is not None and event.agent_id not in mine:
            continue
        out.append({"seq": event.seq, "id": event.id, "type": str(event.type),
                    "time": to_rfc3339(event.time),
                    "actor": event.actor, "agent_id": event.agent_id, "action": event.action,
                    "resource": event.resource, "decision": event.decision,
                    "outcome": event.outcome})  # fmt: skip
    return out


# -- ledger ---------------------------------------------------------------------------------------


@router.get("/console/ledger")
def ledger(request: Request, visit: Signed) -> Response:
    svc, me, q = _svc(request), visit.principal, request.query_params
    kind = (q.get("type") or "").strip()[:64] or None
    agent_id = (q.get("agent") or "").strip()[:64] or None
    try:
        page = svc.audit.events(me, type_=kind, agent=agent_id, limit=100, newest_first=True,
                                cursor=q.get("cursor") or None)  # fmt: skip
        try:
            checkpoint = svc.audit.latest_checkpoint(me).to_json()
        except NotFound:
            checkpoint = None
    except TetherError as exc:
        return _error(request, visit, exc)
    verified = None
    if q.get("verify") == "1":
        verified = svc.audit.verify(me).to_json()
    return render(request, "ledger.html", visit, events=[e.to_json() for e in page.items],
                  checkpoint=checkpoint, verified=verified, kind=kind or "",
                  agent_filter=agent_id or "")  # fmt: skip


@router.get("/console/ledger/export")
def ledger_export(request: Request, visit: Signed) -> Response:
    svc, me = _svc(request), visit.principal
    try:
        events = svc.audit.export(me)
        first = next(events, None)
    except TetherError as exc:
        return _error(request, visit, exc)

    def lines() -> Any:
        if first is not None:
            yield orjson.dumps(first.to_json()) + b"\n"
        for event in events:
            yield orjson.dumps(event.to_json()) + b"\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson", headers={
        "content-disposition": 'attachment; filename="tether-ledger.jsonl"'})  # fmt: skip


@router.get("/console/events/{event_id}")
def event_page(request: Request, visit: Signed, event_id: str) -> Response:
    """One event on the record; for a decision, also what it was asked and what its session
    had touched when it was decided (the history a sequence-aware denial was based on)."""
    svc = _svc(request)
    try:
        event = svc.audit.event(visit.principal, event_id)
    except TetherError as exc:
        return _error(request, visit, exc)
    return render(request, "event.html", visit, event=event.to_json(),
                  given=svc.policies.recorded_inputs(event))  # fmt: skip


# -- policies, secrets, the gateway ---------------------------------------------------------------


@router.get("/console/policies")
def policies(request: Request, visit: Signed) -> Response:
    svc, me, q = _svc(request), visit.principal, request.query_params
    try:
        listed = svc.policies.versions(me, cursor=None, limit=50).items
        versions = [v.to_json(full=False) for v in listed]
        current = svc.policies.current(me)
        shown = svc.policies.get(me, q["v"]) if q.get("v") else current
        diff = None
        if q.get("a") and q.get("b"):
            a, b = svc.policies.get(me, q["a"]), svc.policies.get(me, q["b"])
            diff = "\n".join(difflib.unified_diff(
                a.policies.splitlines(), b.policies.splitlines(), a.version, b.version,
                lineterm=""))  # fmt: skip
    except TetherError as exc:
        return _error(request, visit, exc)
    return render(request, "policies.html", visit, versions=versions, shown=shown.to_json(),
                  diff=diff, a=q.get("a", ""), b=q.get("b", ""))  # fmt: skip


@router.post("/console/policies/validate")
async def validate_policies(request: Request, visit: Signed) -> Response:
    svc, fields = _svc(request), await cs.form(request)
    cs.check_csrf(fields, visit.csrf)
    text = fields.get("policies", "")

    def validated() -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
        current = svc.policies.current(visit.principal)
        try:
            checked = check(text, current.schema)
            result: dict[str, Any] = {"valid": True, "policies": len(checked.policies)}
        except TetherError as exc:
            result = {"valid": False, "message": exc.message,
                      "errors": exc.details.get("errors")}  # fmt: skip
        listed = svc.policies.versions(visit.principal, cursor=None, limit=50).items
        return current, result, [v.to_json(full=False) for v in listed]

    current, result, versions = await _run(validated)  # Cedar's check: off the event loop
    return render(request, "policies.html", visit, versions=versions, shown=current.to_json(),
                  diff=None, a="", b="", validated=result, draft=text)  # fmt: skip


@router.get("/console/secrets")
def secrets_page(request: Request, visit: Signed) -> Response:
    svc, me = _svc(request), visit.principal
    try:
        found = [s.to_json() for s in svc.secrets.page(me, cursor=None, limit=200).items]
        page, now_us = svc.secrets.leases(me, agent=None, name=None, active=True, cursor=None,
                                          limit=200)  # fmt: skip
        leases = [lease.to_json(now_us) for lease in page.items]
    except TetherError as exc:
        return _error(request, visit, exc)
    return render(request, "secrets.html", visit, secrets=found, leases=leases)


@router.get("/console/gateway")
def gateway_page(request: Request, visit: Signed) -> Response:
    svc = _svc(request)
    upstreams = svc.gateway.status()
    tools = [
        {"server": name, "tool": tool.name, "description": tool.description or "",
         "read_only": bool(tool.annotations and tool.annotations.read_only_hint),
         "reversible": link.reversible(tool)}
        for name, link in svc.gateway.links.items() for tool in link.tools.values()
    ]  # fmt: skip
    configured = [u.name for u in svc.settings.gateway_upstreams]
    return render(request, "gateway.html", visit, upstreams=upstreams, tools=tools,
                  configured=configured)  # fmt: skip
