"""Delegation by token exchange (RFC 8693), as pure functions over claims.

The acting agent authenticates as the client and presents its own access token as the
``actor_token``; the ``subject_token`` is whom it acts for: another agent's access token,
or a human's *subject token* (a short-lived JWT a user mints for one named agent, carrying
``may_act``). The issued token has ``sub`` = the subject and ``act`` = the actor, with the
subject's earlier actors nested inside (§4.1: ``act.act`` is the earlier actor). Its scope is
a subset of the subject's, and the chain of actors is bounded.
"""

from __future__ import annotations

from typing import Any

ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
JWT = "urn:ietf:params:oauth:token-type:jwt"
SUBJECT_TOKEN_USE = "subject"  # noqa: S105 - the tether_use claim of human subject tokens


def actors(act: Any) -> list[str]:
    """Every actor ``sub`` in an ``act`` claim, outermost (most recent) first."""
    out: list[str] = []
    while isinstance(act, dict) and isinstance(act.get("sub"), str):
        out.append(act["sub"])
        act = act.get("act")
    return out


def nest(actor: str, earlier: Any) -> dict[str, Any]:
    """The ``act`` claim for ``actor`` acting on a token whose own ``act`` is ``earlier``."""
    out: dict[str, Any] = {"sub": actor}
    if isinstance(earlier, dict):
        out["act"] = earlier
    return out


def may_act_allows(subject_claims: dict[str, Any], actor: str) -> bool:
    """RFC 8693 §4.4: if the subject token names who may act for it, the actor must be one."""
    may_act = subject_claims.get("may_act")
    if may_act is None:
        return True
    if not isinstance(may_act, dict):
        return False
    return may_act.get("sub") == actor


def scopes_of(claims: dict[str, Any]) -> frozenset[str]:
    scope = claims.get("scope")
    return frozenset(scope.split()) if isinstance(scope, str) and scope else frozenset()


def audiences_of(claims: dict[str, Any]) -> list[str]:
    aud = claims.get("aud")
    items = aud if isinstance(aud, list) else [aud]
    return [a for a in items if isinstance(a, str)]
