"""The issuer's signing keys (RFC 7517 JWK Set), fetched from ``jwks_uri`` and cached.

Policy, in one place:

* A key set older than ``max_age`` is refetched on the next lookup, so that a key the
  issuer withdrew stops being trusted.
* A ``kid`` that is not in the cached set triggers a refetch (the issuer rotated keys).
* Every fetch, successful or not, is rate-limited to one per ``min_refresh_interval``:
  a client spraying tokens with random ``kid`` values, or an issuer that is down, cannot
  make this cache hammer the issuer. A rotated key is therefore picked up within that
  interval, and a token signed with it may be refused until then.
* A failed refetch keeps the keys already held (availability over freshness, logged as a
  warning); with no keys at all, lookups raise :class:`JWKSUnavailable` (fail closed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Self

import httpx2 as httpx
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key

from tether.sdk.errors import JWKSUnavailable

log = logging.getLogger(__name__)


class JWKSCache:
    """A thread-safe cache of one issuer's public signing keys, looked up by ``kid``.

    Give ``jwks_uri`` (the issuer's RFC 8414 ``jwks_uri``) to fetch, or ``static`` (a JWK Set
    as a dict, see :meth:`from_static`) to never fetch; raises ValueError for both or neither.
    ``clock`` returns seconds and only its differences matter (default
    :func:`time.monotonic`); tests pass a callable they advance by hand. ``http`` lets a
    caller share a client or inject ``httpx.MockTransport``; a client created here is closed
    by :meth:`close`. The fetch holds the lock: concurrent lookups wait for one fetch instead
    of each starting their own.
    """

    def __init__(
        self,
        jwks_uri: str | None = None,
        *,
        static: Mapping[str, Any] | None = None,
        http: httpx.Client | None = None,
        timeout: float = 5.0,
        min_refresh_interval: float = 30.0,
        max_age: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (jwks_uri is None) == (static is None):
            raise ValueError("give either jwks_uri or a static JWK Set")
        if min_refresh_interval < 0 or max_age <= 0:
            raise ValueError("min_refresh_interval must be >= 0 and max_age > 0")
        self._uri = jwks_uri
        self._owns_http = http is None and jwks_uri is not None
        self._http = http
        if self._owns_http:
            self._http = httpx.Client(timeout=timeout)
        self._min_refresh_interval = min_refresh_interval
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, Key] = _import_keys(static) if static is not None else {}
        self._loaded = static is not None
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None

    @classmethod
    def from_static(cls, jwks: Mapping[str, Any]) -> Self:
        """A cache holding a fixed key set that never fetches (tests, offline deployments).

        Raises TypeError when ``jwks`` is not a JWK Set (an object with a ``keys`` array).
        """
        return cls(static=jwks)

    def get_key(self, kid: str) -> Key | None:
        """The public key with this ``kid``, refreshing the set as the module policy says.

        Returns None when the issuer publishes no usable signing key with this ``kid``;
        raises :class:`JWKSUnavailable` when no key set could ever be fetched.
        """
        with self._lock:
            now = self._clock()
            if self._is_stale(now):
                self._refresh(now)
            key = self._keys.get(kid)
            if key is None and self._refresh(now):
                key = self._keys.get(kid)
            if not self._loaded:
                raise JWKSUnavailable("the issuer's signing keys cannot be fetched")
            return key

    def refresh(self) -> bool:
        """Fetch now, still rate-limited; True when a new key set was installed.

        Useful at start-up to fail fast on a wrong ``jwks_uri``.
        """
        with self._lock:
            return self._refresh(self._clock())

    def close(self) -> None:
        """Close the HTTP client if this cache created it."""
        if self._owns_http and self._http is not None:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _is_stale(self, now: float) -> bool:
        if self._uri is None:
            return False
        return self._fetched_at is None or now - self._fetched_at >= self._max_age

    def _refresh(self, now: float) -> bool:
        """Fetch unless a static set or rate-limited. The caller holds the lock."""
        if self._uri is None or self._http is None:
            return False
        last = self._last_attempt
        if last is not None and now - last < self._min_refresh_interval:
            return False
        self._last_attempt = now
        try:
            response = self._http.get(self._uri, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = _import_keys(response.json())
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            # Not re-raised: stale keys, if any, stay in use; get_key fails closed otherwise.
            log.warning("JWKS fetch from %s failed: %s", self._uri, exc)
            return False
        self._keys = keys
        self._loaded = True
        self._fetched_at = now
        return True


def _import_keys(jwks: object) -> dict[str, Key]:
    """Index a JWK Set's usable signing keys by ``kid``.

    RFC 7517 §5: a key that cannot be understood is skipped, not fatal to the set. Also
    skipped: keys without ``kid`` (Tether's tokens always name one), keys whose ``use`` is
    not ``sig``, and symmetric (``oct``) keys, which never belong in a published key set.
    Raises TypeError when ``jwks`` is not an object with a ``keys`` array.
    """
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise TypeError("not a JWK Set: expected an object with a 'keys' array")
    keys: dict[str, Key] = {}
    for entry in jwks["keys"]:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("kty") == "oct":
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = JWKRegistry.import_key(entry)
        except (JoseError, ValueError, TypeError) as exc:
            log.warning("JWKS key %r skipped: %s", kid, exc)
            continue
        if kid in keys:
            log.warning("JWKS has more than one key with kid %r; the first one is used", kid)
            continue
        keys[kid] = key
    return keys
