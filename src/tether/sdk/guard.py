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
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar, cast

from tether.sdk.agent import AgentClient, Decision

__all__ = ["AccessDenied", "ApprovalRequired", "guard"]

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


def guard(
    action: str,
    *,
    resource: str | Callable[..., str],
    resource_type: str = "Tool",
    client: AgentClient,
    context: Computed = None,
    properties: Computed = None,
    wait: float | None = None,
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a sync or async function so that each call first asks
    ``client.authorize(action, resource=…, resource_type=…)``. ``resource``, ``context``
    and ``properties`` may be values or callables that receive the call's arguments. With
    ``wait`` (seconds), an approval checkpoint waits for the human and asks once more;
    without it, raises :class:`ApprovalRequired` at once. Raises :class:`AccessDenied` on a
    deny; :class:`tether.sdk.ApiError` / :class:`tether.sdk.TokenError` when Tether cannot
    be asked (the function does not run)."""

    def decide(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ask = functools.partial(
            client.authorize, action,
            resource=resource(*args, **kwargs) if callable(resource) else resource,
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
            return
        if decision.approval_required:
            raise ApprovalRequired(decision)
        raise AccessDenied(decision)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                # The SDK's HTTP client blocks: ask from a worker thread, not the event loop.
                await asyncio.to_thread(decide, args, kwargs)
                return await fn(*args, **kwargs)

            return cast(Callable[P, R], run_async)

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            decide(args, kwargs)
            return fn(*args, **kwargs)

        return run

    return decorate


def _value(
    given: Computed, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Mapping[str, Any] | None:
    return given(*args, **kwargs) if callable(given) else given
