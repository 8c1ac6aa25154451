"""joserfc configured for Tether: an algorithm allow-list without per-call warnings."""

from __future__ import annotations

from joserfc import jwa, jws
from joserfc.errors import UnsupportedAlgorithmError


class AllowListRegistry(jws.JWSRegistry):
    """joserfc's JWS registry limited to the caller's algorithms.

    The base class warns on every use of "EdDSA" (RFC 9864 prefers "Ed25519"); most clients
    still send it and the caller allowed it, so the warning would only be per-request noise.
    """

    # joserfc caps the protected header at 512 bytes; an RSA-2048 jwk alone exceeds that.
    max_header_length = 4096
    max_payload_length = 16_384

    def get_alg(self, name: str) -> jwa.JWSAlgModel:
        if not self.allowed or name not in self.allowed or name not in self.algorithms:
            raise UnsupportedAlgorithmError(f"Algorithm '{name}' is not allowed")
        return self.algorithms[name]
