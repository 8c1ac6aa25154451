"""The SDK's failures, in the wire shape of RFC 6750 §3 (``error``, ``error_description``).

Deliberately independent of :mod:`tether.errors`: a resource server installs the SDK without
the server, so nothing here may import server code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar


class InvalidToken(Exception):
    """The access token cannot be accepted; ``error`` and ``description`` say why.

    ``error`` is an OAuth error code: ``"invalid_token"`` (RFC 6750 §3.1) unless a subclass or
    a DPoP checker says otherwise (a checker may use ``"invalid_dpop_proof"`` or
    ``"use_dpop_nonce"``, RFC 9449 §7.1). ``http_status`` is the status a resource server
    answers with. ``description`` is meant for the client and never contains the token.
    """

    http_status: ClassVar[int] = 401

    def __init__(self, description: str, *, error: str = "invalid_token") -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class InsufficientScope(InvalidToken):
    """The token is valid but lacks scopes the resource requires (RFC 6750 §3.1, 403).

    ``required`` is every scope the resource requires (MCP authorization names all of them in
    the challenge, not only the missing ones); ``missing`` is the part the token lacks.
    """

    http_status: ClassVar[int] = 403

    def __init__(self, required: Iterable[str], missing: Iterable[str]) -> None:
        self.required = frozenset(required)
        self.missing = frozenset(missing)
        super().__init__(
            "the access token lacks the required scope(s): " + " ".join(sorted(self.missing)),
            error="insufficient_scope",
        )


class JWKSUnavailable(InvalidToken):
    """The issuer's signing keys could not be fetched and none are cached (fail closed).

    It is an :class:`InvalidToken` so that a caller catching only that still rejects the
    request, but the token itself may be fine: resource servers answer 503 with
    ``temporarily_unavailable`` (RFC 6749 §4.1.2.1) so that clients retry instead of
    fetching new tokens.
    """

    http_status: ClassVar[int] = 503

    def __init__(self, description: str) -> None:
        super().__init__(description, error="temporarily_unavailable")
