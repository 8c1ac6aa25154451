"""Every failure is one :class:`TetherError` subclass, defined once, rendered one way.

The API renders ``{"error": {"code", "message", "details"}}`` with ``http_status`` (OAuth
endpoints render :class:`tether.credentials.errors.OAuthError` in the RFC 6749 §5.2 shape);
the CLI catches :class:`TetherError` in one place, prints :meth:`TetherError.diagnostic` and
exits non-zero.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TetherError(Exception):
    """The base of every failure Tether knows; anything else reaching a user is a bug."""

    code: ClassVar[str] = "internal_error"
    # A class default; an instance may answer with another (a DPoP failure is 400 at the token
    # endpoint and 401 at a resource server, RFC 9449 §5 and §7.1).
    http_status: int = 500

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

    def diagnostic(self) -> str:
        """One line for a human (the CLI prints it after ``error:``): the message, led by the
        field it is about when ``details`` names one the message does not."""
        field = self.details.get("field")
        if isinstance(field, str) and field and field not in self.message:
            return f"{field}: {self.message}"
        return self.message


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


class FreezeNotFound(NotFound):
    code = "freeze_not_found"


class SecretNotFound(NotFound):
    code = "secret_not_found"


class SecretVersionNotFound(NotFound):
    code = "secret_version_not_found"


class LeaseNotFound(NotFound):
    code = "lease_not_found"


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
    """An event could not be made durable (the ledger's writer failed or is shut down); the
    caller must fail closed."""

    code = "ledger_unavailable"
    http_status = 503


class ConfigurationError(TetherError):
    code = "configuration_error"
    http_status = 500


class SecretUnreadable(TetherError):
    """A stored secret did not decrypt: its ciphertext or data key was altered or moved to
    another row, or this node's master key is not the one that sealed it. No value leaves;
    the failure is a ledger event."""

    code = "secret_unreadable"
    http_status = 500


class SecretBrokerOnly(Forbidden):
    """A broker-only secret is injected by the gateway into upstream calls, never returned."""

    code = "secret_broker_only"


class LeaseRevoked(Conflict):
    code = "lease_revoked"


class RateLimited(TetherError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after

    def response_headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}
