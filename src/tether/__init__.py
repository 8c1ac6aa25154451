"""Tether: identity, access and governance for autonomous AI agents.

``__all__`` is the public SDK: :class:`AgentClient` (tokens, ``authorize`` → :class:`Decision`)
and :func:`guard` for agents, :func:`verify_access_token` and :class:`TetherAuthMiddleware`
and :class:`RevocationFollower` for resource servers (documented in :mod:`tether.sdk`).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
    "__version__",
    "guard",
    "verify_access_token",
]

if TYPE_CHECKING:
    from tether.sdk import (
        ACCESS_TOKEN_TYPE,
        DEFAULT_ALGORITHMS,
        AccessDenied,
        AccessTokenClaims,
        AgentClient,
        ApiError,
        ApprovalRequired,
        CallNotRecorded,
        DatabaseLogin,
        Decision,
        DPoPCheck,
        DPoPRequest,
        DPoPVerifier,
        InsufficientScope,
        InvalidToken,
        JWKSCache,
        JWKSUnavailable,
        RevocationCheck,
        RevocationFollower,
        SecretError,
        TetherAuthMiddleware,
        TokenError,
        guard,
        verify_access_token,
    )


def __getattr__(name: str) -> Any:
    # PEP 562: the SDK (httpx2, joserfc) loads on first use, because the server and the CLI
    # import this package too and should not pay for it at start-up.
    if name in __all__ and name != "__version__":
        import tether.sdk

        return getattr(tether.sdk, name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
