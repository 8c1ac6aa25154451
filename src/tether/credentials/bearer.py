"""Who is calling the runtime API: a human (user token) or an agent (our access token).

On the decision path neither costs a database round trip: a verified access token's claims
are cached until it expires (revocation is the runtime's set look-up, not this cache's job),
and a user token's digest is cached in the runtime snapshot, which the change feed clears
whenever a user token is revoked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from tether.clock import Clock, to_micros
from tether.credentials import dpop, exchange, tokens
from tether.credentials.dpop_nonce import DPoPNonces
from tether.credentials.keys import SigningKeys
from tether.credentials.replay import DatabaseDPoPReplayCache
from tether.errors import Unauthenticated
from tether.principals import Principal, Role
from tether.users.runtime import UserSection
from tether.users.service import TOKEN_PREFIX, UserService, token_digest

_CACHE_MAX = 50_000
_ALGS = " ".join(sorted(dpop.DEFAULT_ALGS))

NO_TOKEN = "send 'Authorization: Bearer <token>' (a user or agent token)"  # noqa: S105 - a message


@dataclass(frozen=True, slots=True)
class Caller:
    """``principal`` is the human or the acting agent; for an agent, ``claims`` are its
    token's and ``chain``/``on_behalf_of`` come from its ``act`` claims (RFC 8693)."""

    principal: Principal
    claims: dict[str, Any] | None = None
    chain: tuple[str, ...] = ()
    on_behalf_of: str | None = None

    @property
    def jti(self) -> str | None:
        return str(self.claims["jti"]) if self.claims and "jti" in self.claims else None


def agent_caller(claims: dict[str, Any]) -> Caller:
    """RFC 8693: ``act.sub`` is the current actor, nested ``act`` earlier actors; ``sub`` is
    the original subject. The chain runs from the subject to the current actor."""
    actors = exchange.actors(claims.get("act"))
    sub = str(claims["sub"])
    if not actors:
        return Caller(Principal("agent", sub, sub), claims, (sub,), None)
    acting = actors[0]
    chain = (sub, *reversed(actors))
    return Caller(Principal("agent", acting, acting), claims, chain, sub)


class Bearers:
    """``dpop_nonces``: the resource nonces a DPoP-bound token's proof must carry (RFC 9449
    §9), or None when the deployment does not use them."""

    def __init__(
        self,
        keys: SigningKeys,
        users: UserService,
        known_users: UserSection,
        clock: Clock,
        *,
        issuer: str,
        replay: DatabaseDPoPReplayCache,
        dpop_max_age: int = 300,
        dpop_nonces: DPoPNonces | None = None,
    ) -> None:
        self.keys = keys
        self.users = users
        self.known_users = known_users  # the runtime's section: who exists, tokens checked
        self.clock = clock
        self.issuer = issuer
        self.replay = replay
        self.dpop_max_age = dpop_max_age
        self.dpop_nonces = dpop_nonces
        self._claims: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def needs_database(self, token: str) -> bool:
        """Whether authenticating ``token`` would read the database (a user token this worker
        has not seen since the users last changed): async callers then run it in a thread."""
        return token.startswith(TOKEN_PREFIX) and token_digest(token) not in self.known_users.tokens

    def user(self, token: str) -> Principal:
        digest = token_digest(token)
        now_us = to_micros(self.clock.now())
        hit = self.known_users.tokens.get(digest)
        if hit is not None and (hit[1] is None or hit[1] > now_us):
            view = self.known_users.views.get(hit[0])
            if view is not None:
                return Principal("user", view.id, view.username, Role(view.role))
        principal, expires_at = self.users.authenticate_with_expiry(token)
        self.known_users.tokens[digest] = (principal.id, expires_at)
        return principal

    def agent_claims(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """The claims of one of Tether's access tokens, valid now and addressed to
        ``audience`` (default: Tether itself, the issuer; the MCP gateway asks for its resource
        URI, RFC 8707). Raises :class:`Unauthenticated` otherwise."""
        now = int(self.clock.now().timestamp())
        wanted = audience or self.issuer
        claims = self._claims.get(token)
        if claims is not None and claims["exp"] > now:
            if wanted not in exchange.audiences_of(claims):
                raise _wrong_audience(wanted, self.issuer)
            return claims
        found = tokens.verify_own(token, self.keys, issuer=self.issuer, now=now)
        if found is None:
            raise Unauthenticated("the access token is invalid or expired; get a new one "
                                  "at the token endpoint")  # fmt: skip
        if wanted not in exchange.audiences_of(found):
            raise _wrong_audience(wanted, self.issuer)
        claims = found
        with self._lock:
            if len(self._claims) >= _CACHE_MAX:
                self._claims = {t: c for t, c in self._claims.items() if c["exp"] > now}
                if len(self._claims) >= _CACHE_MAX:
                    self._claims.clear()
            self._claims[token] = claims
        return claims

    async def authenticate_request(
        self, authorization: str, *, method: str, url: str, proofs: Sequence[str],
        audience: str | None = None,
    ) -> Caller:  # fmt: skip
        """The caller of a request, from its ``Authorization`` header (``Bearer`` or ``DPoP``),
        its method, URL and ``DPoP`` proofs; :class:`Unauthenticated` (which knows its 401 and
        challenge) otherwise. The one way in for every transport: the API's routes, the
        decision fast path and, next, the MCP gateway. A user token this worker has not seen
        since the users last changed is checked in a thread (a database read); everything else
        is answered from memory."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() not in ("bearer", "dpop") or not token:
            raise Unauthenticated(NO_TOKEN)
        check = partial(self.authenticate, scheme, token, method=method, url=url, proofs=proofs,
                        audience=audience)  # fmt: skip
        if self.needs_database(token):
            return await asyncio.to_thread(check)
        return check()

    def authenticate(
        self, scheme: str, token: str, *, method: str, url: str, proofs: Sequence[str],
        audience: str | None = None,
    ) -> Caller:  # fmt: skip
        """``audience``: a resource the token must be addressed to instead of Tether (the MCP
        gateway's URI); only agents' access tokens are then accepted, never a user token."""
        if token.startswith(TOKEN_PREFIX):
            if audience is not None:
                raise Unauthenticated("this resource takes an agent's access token for it "
                                      f"(resource={audience}), not a user token")  # fmt: skip
            if scheme.lower() != "bearer":
                raise Unauthenticated("user tokens use the Bearer scheme")
            return Caller(self.user(token))
        claims = self.agent_claims(token, audience=audience)
        jkt = (claims.get("cnf") or {}).get("jkt")
        if jkt is not None or scheme.lower() == "dpop":
            if scheme.lower() != "dpop":
                raise Unauthenticated("this token is DPoP-bound: send 'Authorization: DPoP "
                                      "<token>' with a DPoP proof")  # fmt: skip
            now = int(self.clock.now().timestamp())
            try:
                proof = dpop.verify_proof(
                    proofs, method=method, url=url, now=now, access_token=token,
                    replay_cache=self.replay, max_age=self.dpop_max_age, nonces=self.dpop_nonces,
                )  # fmt: skip
                dpop.require_binding(proof, jkt)
            except dpop.UseDPoPNonce as exc:
                assert self.dpop_nonces is not None  # only raised when nonces are in use
                raise exc.with_nonce(self.dpop_nonces.issue(now)) from None
            except dpop.InvalidDPoPProof as exc:
                raise exc.challenge(_ALGS) from None
        return agent_caller(claims)


def _wrong_audience(wanted: str, issuer: str) -> Unauthenticated:
    if wanted == issuer:
        return Unauthenticated(
            "the access token is for another audience; ask the token endpoint for one without "
            "a resource (or for this issuer)"
        )
    return Unauthenticated(f"the access token is not for this resource: ask the token endpoint "
                           f"for one with resource={wanted}")  # fmt: skip
