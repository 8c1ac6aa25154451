"""OAuth 2 errors, in the wire shape of RFC 6749 §5.2: ``{"error", "error_description"}``,
and the DPoP failures of RFC 9449, one class each wherever they are answered."""

from __future__ import annotations

from typing import Any, Self

from tether.errors import TetherError


class OAuthError(TetherError):
    """A :class:`TetherError` whose ``code`` is the RFC 6749 ``error`` and whose ``message``
    is the ``error_description``; OAuth endpoints answer with :meth:`to_dict`."""

    code = "invalid_request"
    http_status = 400

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "error_description": self.message}


class InvalidRequest(OAuthError):
    code = "invalid_request"


class InvalidClient(OAuthError):
    """Client authentication failed (RFC 6749 §5.2): 401."""

    code = "invalid_client"
    http_status = 401


class InvalidGrant(OAuthError):
    code = "invalid_grant"


class UnauthorizedClient(OAuthError):
    code = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    code = "unsupported_grant_type"


class InvalidScope(OAuthError):
    code = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8707 §2: the requested resource/audience is refused."""

    code = "invalid_target"


class UnsupportedResponseType(OAuthError):
    """RFC 6749 §4.1.2.1: Tether has no authorization-endpoint flow (no code, no implicit):
    agents get tokens by client credentials or token exchange."""

    code = "unsupported_response_type"


class UnsupportedTokenType(OAuthError):
    code = "unsupported_token_type"


class InvalidDPoPProof(OAuthError):
    """A DPoP proof fails a check of RFC 9449 §4.3; ``details["reason"]`` says which.

    The token endpoint answers it as the OAuth error ``invalid_dpop_proof``, 400 (§5); a
    resource server answers 401 with a ``DPoP`` challenge naming the algorithms it accepts
    (§7.1), which :meth:`challenge` makes of it.
    """

    code = "invalid_dpop_proof"
    _algs: str | None = None

    def challenge(self, algs: str) -> Self:
        """This failure as a resource server answers it: 401, ``WWW-Authenticate: DPoP``."""
        self.http_status = 401
        self._algs = algs
        return self

    def response_headers(self) -> dict[str, str]:
        if self._algs is None:
            return {}
        # a quoted-string of printable ASCII (RFC 6750 §3): the message may quote a request
        description = "".join(
            c if c.isascii() and c.isprintable() and c not in '"\\' else "?" for c in self.message
        )[:300]
        return {
            "WWW-Authenticate": f'DPoP error="invalid_dpop_proof", '
            f'error_description="{description}", algs="{self._algs}"'
        }


class DPoPBindingMismatch(InvalidDPoPProof):
    """A DPoP-bound token came without a proof, or with a proof by another key (§7.1)."""

    http_status = 401


class UseDPoPNonce(InvalidDPoPProof):
    """The server requires a nonce of its own in proofs (RFC 9449 §8, §9) and this proof has
    none, or one that is not the server's or no longer accepted; ``details["reason"]`` is the
    :data:`~tether.credentials.dpop_nonce.NonceProblem` and ``details["jkt"]`` the proof's key.

    The token endpoint answers it 400 with the current nonce in ``DPoP-Nonce`` (§8); a
    resource server answers 401 with a ``DPoP error="use_dpop_nonce"`` challenge and a fresh
    nonce (§9), which :meth:`with_nonce` makes of it.
    """

    code = "use_dpop_nonce"
    _nonce: str | None = None

    def with_nonce(self, nonce: str) -> Self:
        """This failure as a resource server answers it: 401 with ``nonce`` to use; the
        proof's key stays out of the answer (it is for the audit record)."""
        self.http_status = 401
        self._nonce = nonce
        self.details = {"reason": self.details["reason"]}
        return self

    def response_headers(self) -> dict[str, str]:
        if self._nonce is None:
            return {}
        return {
            "WWW-Authenticate": 'DPoP error="use_dpop_nonce", error_description="Resource '
            'server requires nonce in DPoP proof"',
            "DPoP-Nonce": self._nonce,
        }
