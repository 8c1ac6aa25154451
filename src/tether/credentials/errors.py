"""OAuth 2 errors, in the wire shape of RFC 6749 §5.2: ``{"error", "error_description"}``."""

from __future__ import annotations

from typing import ClassVar


class OAuthError(Exception):
    error: ClassVar[str] = "invalid_request"
    status: ClassVar[int] = 400

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def to_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    """Client authentication failed (RFC 6749 §5.2): 401."""

    error = "invalid_client"
    status = 401


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8707 §2: the requested resource/audience is refused."""

    error = "invalid_target"


class InvalidDPoPProofError(OAuthError):
    """RFC 9449 §5: a bad DPoP proof at the token endpoint."""

    error = "invalid_dpop_proof"


class UseDPoPNonceError(OAuthError):
    """RFC 9449 §8: the proof lacks a valid server nonce; the answer's ``DPoP-Nonce`` header
    has the one to use."""

    error = "use_dpop_nonce"


class UnsupportedTokenType(OAuthError):
    error = "unsupported_token_type"
