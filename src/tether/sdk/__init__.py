"""Tether's SDK for resource servers and agents.

Resource servers verify RFC 9068 JWT access tokens against the issuer's JWK Set, without
calling Tether per request::

    jwks = JWKSCache("https://tether.example/.well-known/jwks.json")
    claims = verify_access_token(token, issuer=ISSUER, audience=AUDIENCE, jwks=jwks)

or guard a whole Starlette/FastAPI app with :class:`TetherAuthMiddleware`; pass a
:class:`RevocationFollower` as the revocation check to refuse a killed, suspended or frozen
agent's tokens at once (it follows Tether's revocation feed and fails closed when stale).
Agents get, cache and present tokens with :class:`AgentClient` (client credentials, DPoP,
token exchange), ask Tether before acting (:meth:`AgentClient.authorize` returns a
:class:`Decision`), guard their tool functions with :func:`guard`, read secrets under leases
(:meth:`AgentClient.secret`) and get database logins (:class:`DatabaseLogin`). The SDK does
not import the server: it needs only ``joserfc`` (over ``cryptography``), ``httpx2`` and
``anyio``.
"""

from tether.sdk.agent import (
    ACCESS_TOKEN_TYPE,
    AgentClient,
    ApiError,
    DatabaseLogin,
    Decision,
    SecretError,
    TokenError,
)
from tether.sdk.claims import AccessTokenClaims
from tether.sdk.errors import InsufficientScope, InvalidToken, JWKSUnavailable
from tether.sdk.guard import AccessDenied, ApprovalRequired, CallNotRecorded, guard
from tether.sdk.jwks import JWKSCache
from tether.sdk.middleware import DPoPRequest, DPoPVerifier, TetherAuthMiddleware
from tether.sdk.revocations import RevocationFollower
from tether.sdk.verify import (
    DEFAULT_ALGORITHMS,
    DPoPCheck,
    RevocationCheck,
    verify_access_token,
)

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "DEFAULT_ALGORITHMS",
    "AccessDenied",
    "AccessTokenClaims",
    "AgentClient",
    "ApiError",
    "ApprovalRequired",
    "CallNotRecorded",
    "DPoPCheck",
    "DPoPRequest",
    "DPoPVerifier",
    "DatabaseLogin",
    "Decision",
    "InsufficientScope",
    "InvalidToken",
    "JWKSCache",
    "JWKSUnavailable",
    "RevocationCheck",
    "RevocationFollower",
    "SecretError",
    "TetherAuthMiddleware",
    "TokenError",
    "guard",
    "verify_access_token",
]
