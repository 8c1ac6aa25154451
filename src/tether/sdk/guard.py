"""Guard an agent's tool functions with Tether's decisions: ask before every call.

::

    agent = AgentClient("https://tether.example", "agt_…", client_secret=SECRET)

    @guard("tool.call", resource="search", client=agent)
    def search(query: str) -> list[str]: ...

    @guard("tool.write", resource=lambda ticket, text: f"ticket-{ticket}", client=agent,
           context=lambda ticket, text: {"length": len(text)}, wait=300)
    async def reply(ticket: int, text: str) -> None: ...

Allowed: the function runs. Denied: :class:`AccessDenied`. An approval checkpoint:
:class:`ApprovalRequired` — or, with ``wait``, the call blocks until a human decides and is
asked once more (an approval allows the identical request exactly once). The function never
runs without an ``allow`` for exactly this call.

Then the call is put on Tether's record (``record=True``, the default) as a call through the
MCP gateway is: one ``tool.called`` ledger event linked to the decision, with digests and
redacted copies of the arguments and the result (or the exception), the outcome (``ok`` or
``tool_error``) and the duration; secret values the agent read are cut out before anything
leaves. If the record cannot be made, :class:`CallNotRecorded` carries the result (or the
exception) — the call happened, but it is not on the record.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

from tether.sdk._protocol import ApiError
from tether.sdk.agent import AgentClient, Decision

__all__ = ["AccessDenied", "ApprovalRequired", "CallNotRecorded", "guard"]

P = ParamSpec("P")
R = TypeVar("R")
Computed = Mapping[str, Any] | Callable[..., Mapping[str, Any]] | None


class AccessDenied(Exception):
    """Tether denied the call; ``decision`` says why (``decision.reasons``). ``approval`` is
    the approval record when a human denied (or let expire) the approval it waited for."""

    def __init__(self, decision: Decision, approval: Mapping[str, Any] | None = None) -> None:
        why = ", ".join(decision.reasons) or "no policy allows it"
        if approval is not None:
            why = f"approval {approval.get('id')} is {approval.get('status')}"
        super().__init__(f"denied: {why}")
        self.decision = decision
        self.approval = approval


class ApprovalRequired(Exception):
    """The call needs a human's approval first: ``decision.approval_id`` names it. Once it is
    approved, the identical call goes through once."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"approval required: {decision.approval_id}")
        self.decision = decision
        self.approval_id = decision.approval_id


class CallNotRecorded(Exception):
    """The guarded call ran but Tether could not record it: ``result`` is what it returned
    (``error`` what it raised), ``cause`` Tether's answer."""

    def __init__(self, cause: ApiError, result: Any = None, error: BaseException | None = None):
        super().__init__(f"the call ran but is not on the record: {cause}")
        self.cause, self.result, self.error = cause, result, error


def guard(
    action: str,
    *,
    resource: str | Callable[..., str],
    resource_type: str = "Tool",
    client: AgentClient,
    context: Computed = None,
    properties: Computed = None,
    wait: float | None = None,
    record: bool = True,
    compensate: Callable[..., Mapping[str, Any] | None] | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a sync or async function so that each call first asks
    ``client.authorize(action, resource=…, resource_type=…)``. ``resource``, ``context``
    and ``properties`` may be values or callables that receive the call's arguments. With
    ``wait`` (seconds), an approval checkpoint waits for the human and asks once more;
    without it, raises :class:`ApprovalRequired` at once. Raises :class:`AccessDenied` on a
    deny; :class:`tether.sdk.ApiError` / :class:`tether.sdk.TokenError` when Tether cannot
    be asked (the function does not run). With ``record`` (the default) the call is then put
    on the record (:meth:`AgentClient.record_call`); :class:`CallNotRecorded` if it cannot
    be. ``compensate(result, *args, **kwargs)``, called after a call that returned, says how
    to undo it — ``{"tool": "<server>.<tool>", "arguments": {…}}``, a tool the MCP gateway
    serves, which a rollback runs as the operator — or None: nothing undoes it
    (irreversible); the call is journalled with its record, in the same commit."""

    def decide(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Decision, str]:
        name = resource(*args, **kwargs) if callable(resource) else resource
        ask = functools.partial(
            client.authorize, action,
            resource=name,
            resource_type=resource_type, properties=_value(properties, args, kwargs),
            context=_value(context, args, kwargs),
        )  # fmt: skip
        decision = ask()
        if decision.approval_required and wait is not None and decision.approval_id:
            approval = client.wait_for_approval(decision.approval_id, wait)
            if approval.get("status") != "approved":
                if approval.get("status") == "pending":
                    raise ApprovalRequired(decision)
                raise AccessDenied(decision, approval)
            decision = ask()
        if decision.allowed:
            return decision, name
        if decision.approval_required:
            raise ApprovalRequired(decision)
        raise AccessDenied(decision)

    def keep(decision: Decision, name: str, call: tuple[tuple[Any, ...], dict[str, Any]],
             arguments: dict[str, Any], started: float, *, result: Any = None,
             error: BaseException | None = None) -> None:  # fmt: skip
        if not record:
            return
        shown = result if error is None else {"error": type(error).__name__,
                                              "message": str(error)[:500]}  # fmt: skip
        undo, irreversible = _undo(compensate, call, result, error)
        try:
            client.record_call(decision, tool=name, args=arguments, result=shown,
                               outcome="ok" if error is None else "tool_error",
                               duration_ms=(time.perf_counter() - started) * 1000, undo=undo,
                               irreversible=irreversible)  # fmt: skip
        except ApiError as exc:
            raise CallNotRecorded(exc, result, error) from error

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(fn)

        def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                return {"args": list(args), **kwargs}
            bound.apply_defaults()
            return dict(bound.arguments)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                # The SDK's HTTP client blocks: ask from a worker thread, not the event loop.
                decision, name = await asyncio.to_thread(decide, args, kwargs)
                started = time.perf_counter()
                try:
                    result = await fn(*args, **kwargs)
                except Exception as exc:
                    await asyncio.to_thread(
                        functools.partial(
                            keep,
                            decision,
                            name,
                            (args, kwargs),
                            arguments(args, kwargs),
                            started,
                            error=exc,
                        )
                    )
                    raise
                await asyncio.to_thread(
                    functools.partial(
                        keep,
                        decision,
                        name,
                        (args, kwargs),
                        arguments(args, kwargs),
                        started,
                        result=result,
                    )
                )
                return result

            return cast(Callable[P, R], run_async)

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            decision, name = decide(args, kwargs)
            started = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                keep(decision, name, (args, kwargs), arguments(args, kwargs), started, error=exc)
                raise
            keep(decision, name, (args, kwargs), arguments(args, kwargs), started, result=result)
            return result

        return run

    return decorate


def _value(
    given: Computed, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Mapping[str, Any] | None:
    return given(*args, **kwargs) if callable(given) else given


def _undo(
    compensate: Callable[..., Mapping[str, Any] | None] | None,
    call: tuple[tuple[Any, ...], dict[str, Any]], result: Any, error: BaseException | None,
) -> tuple[Mapping[str, Any] | None, bool]:  # fmt: skip
    """A completed call's compensation, and whether it is irreversible (``compensate`` said
    nothing undoes it); nothing for a call that raised or a tool without ``compensate``."""
    if compensate is None or error is not None:
        return None, False
    undo = compensate(result, *call[0], **call[1])
    return undo, undo is None
