"""Every failure is one :class:`TetherError` subclass, defined once, rendered one way.

The API renders ``{"error": {"code", "message", "details"}}`` with ``http_status``; the CLI
prints ``message`` and exits non-zero.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TetherError(Exception):
    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": self.details}

    def response_headers(self) -> dict[str, str]:
        """HTTP headers the API sends with this error, beyond its defaults (a 401 has a
        ``Bearer`` challenge unless these name another)."""
        return {}


class BadRequest(TetherError):
    code = "bad_request"
    http_status = 400


class InvalidCursor(BadRequest):
    code = "invalid_cursor"


class PayloadTooLarge(TetherError):
    code = "payload_too_large"
    http_status = 413


class ValidationFailed(TetherError):
    code = "validation_error"
    http_status = 422


class RiskTierProhibited(ValidationFailed):
    code = "risk_tier_prohibited"


class PolicyInvalid(ValidationFailed):
    """A policy document or schema with problems; ``details.errors`` lists every one."""

    code = "policy_invalid"


class Unauthenticated(TetherError):
    code = "unauthenticated"
    http_status = 401


class DPoPNonceRequired(Unauthenticated):
    """RFC 9449 §9: the DPoP-bound token's proof lacks a valid server nonce; ``nonce`` is a
    fresh one, sent in ``DPoP-Nonce`` with a ``DPoP error="use_dpop_nonce"`` challenge."""

    code = "use_dpop_nonce"

    def __init__(self, message: str, *, nonce: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.nonce = nonce

    def response_headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": 'DPoP error="use_dpop_nonce", error_description="Resource '
            'server requires nonce in DPoP proof"',
            "DPoP-Nonce": self.nonce,
        }


class DPoPProofInvalid(Unauthenticated):
    """RFC 9449 §7.1: a DPoP-bound token came with a missing or failing proof; answered with
    a ``DPoP error="invalid_dpop_proof"`` challenge naming the algorithms Tether accepts."""

    code = "invalid_dpop_proof"

    def __init__(self, message: str, *, algs: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.algs = algs

    def response_headers(self) -> dict[str, str]:
        # a quoted-string of printable ASCII (RFC 6750 §3): the message may quote a request
        description = "".join(
            c if c.isascii() and c.isprintable() and c not in '"\\' else "?" for c in self.message
        )[:300]
        return {
            "WWW-Authenticate": f'DPoP error="invalid_dpop_proof", '
            f'error_description="{description}", algs="{self.algs}"'
        }


class Forbidden(TetherError):
    code = "forbidden"
    http_status = 403


class NotFound(TetherError):
    code = "not_found"
    http_status = 404


class AgentNotFound(NotFound):
    code = "agent_not_found"


class UserNotFound(NotFound):
    code = "user_not_found"


class TokenNotFound(NotFound):
    code = "token_not_found"


class ApprovalNotFound(NotFound):
    code = "approval_not_found"


class PolicyVersionNotFound(NotFound):
    code = "policy_version_not_found"


class Conflict(TetherError):
    code = "conflict"
    http_status = 409


class UsernameTaken(Conflict):
    code = "username_taken"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class AgentRevoked(InvalidTransition):
    code = "agent_revoked"


class ApprovalNotPending(Conflict):
    code = "approval_not_pending"


class LedgerUnavailable(TetherError):
    code = "ledger_unavailable"
    http_status = 503


class ConfigurationError(TetherError):
    code = "configuration_error"
    http_status = 500
