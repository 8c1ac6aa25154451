"""Secrets an agent reads from Tether's broker, held under their leases, and database logins.

``GET /v1/secrets/{name}/value`` hands a value out under a lease (README "Secrets"). The SDK
keeps the value with its lease and serves it while the lease has comfortably long to run;
within its last tenth (at most its last 30 s) it asks for another period
(``POST /v1/secrets/leases/{id}/renew``, decided by policy again) and keeps the value. A lease
that Tether says is over (409 ``lease_revoked``: revoked by an admin or ended by a kill, a
suspension, a freeze or its expiry) is never served again: the secret is read afresh, under a
new lease. ``POST /v1/secrets/db/{role}/lease`` makes a database login under a lease.

Private to the SDK (:class:`tether.sdk.AgentClient` is the way in). A value or a password
never appears in a log line, an error message or a repr: only names and lease ids do.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from tether.sdk._protocol import ApiError, TokenError

log = logging.getLogger(__name__)

_MARGIN = 30.0  # seconds before a lease ends from which it is renewed...
_MARGIN_SHARE = 0.1  # ...or its last tenth, if that is shorter: short leases are still reused
_RETRY = 1.0  # seconds before a renewal that failed transiently is tried again (no Retry-After)
# The lease is over: the cached value goes, and the secret is read afresh.
_GONE = frozenset({"lease_revoked", "lease_not_found"})
# Tether could not answer: the value is kept until its lease ends (it has not learnt of an end).
_TRANSIENT = frozenset({"unavailable", "rate_limited"})
_READ = "the secret's read"
_LOGIN = "the database login"
_Key = tuple[str, int | None]
_Call = Callable[..., dict[str, Any]]


class SecretError(ApiError):
    """A secret, a lease or a database login could not be had. ``code`` is Tether's:
    ``access_denied`` (policy does not permit it; also for a name that does not exist, so
    that names cannot be probed), ``approval_required`` (:attr:`approval_id` names the
    approval; ask again once a human grants it), ``secret_broker_only`` (only the gateway
    injects it), ``secret_not_found``, ``secret_version_not_found``, ``rate_limited``
    (``retry_after`` seconds), ``secret_unreadable``, ``lease_revoked``, ``lease_not_found``…;
    or the SDK's own ``unavailable`` and ``invalid_response``. ``details`` is the error's
    ``details`` object. Never carries a value."""

    @property
    def approval_id(self) -> str | None:
        """The approval an ``approval_required`` refusal waits for, else None."""
        approval = self.details.get("approval_id")
        return approval if isinstance(approval, str) else None


@dataclass(frozen=True, slots=True)
class DatabaseLogin:
    """Credentials made for this agent for one database ``role``, valid until their lease
    ends: ``expires_at`` (UTC, by the client's clock: when the request was sent plus the
    lease's ``expires_in``), or earlier if the lease is revoked. Give them back when done
    with ``AgentClient.revoke_lease(login.lease_id)``. The password is left out of the repr;
    :attr:`dsn` contains it, so do not log that either."""

    role: str
    username: str
    password: str = field(repr=False)
    host: str
    port: int
    database: str
    lease_id: str
    expires_at: datetime

    @property
    def dsn(self) -> str:
        """A libpq connection URI (PostgreSQL manual §32.1.1.2), ``postgresql://user:password
        @host:port/database``, the user, password, host and database percent-encoded (an IPv6
        host in brackets, a socket directory encoded whole)."""
        host = f"[{self.host}]" if ":" in self.host else quote(self.host, safe="")
        return (f"postgresql://{quote(self.username, safe='')}:{quote(self.password, safe='')}"
                f"@{host}:{self.port}/{quote(self.database, safe='')}")  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Held:
    """A value under its lease; times by the client's clock."""

    value: str = field(repr=False)
    lease_id: str
    period: float  # the lease's length when it was read: the margin is a share of it
    expires_at: float
    retry_at: float = 0.0  # after a transient failure to renew: not asked again before this

    @property
    def renew_at(self) -> float:
        return self.expires_at - min(_MARGIN, self.period * _MARGIN_SHARE)

    def usable(self, now: float) -> bool:
        """Served without asking Tether: the lease has long to run, or it is within its
        margin but a renewal failed for a moment and is not due again yet."""
        return now < self.expires_at and (now < self.renew_at or now < self.retry_at)


class SecretLeases:
    """An agent's secrets and the leases it holds them under. ``call`` is the agent's call
    to Tether's API (``call(method, path, **httpx_kwargs)`` → the JSON object answered,
    raising :class:`SecretError`); ``clock`` returns epoch seconds.

    Thread-safe: one lock per secret (name and version) is held across its read or renewal,
    so concurrent callers of the same secret share one request and other secrets go on."""

    def __init__(self, call: _Call, clock: Callable[[], float]) -> None:
        self._call = call
        self._clock = clock
        self._lock = threading.Lock()  # guards the two dicts; never held across a request
        self._held: dict[_Key, _Held] = {}
        self._locks: dict[_Key, threading.Lock] = {}
        self._seen: set[str] = set()  # every value read: hidden from what guard records

    def value(self, name: str, version: int | None) -> str:
        """The value of ``name`` (``version``, or the current one): the held one while its
        lease has long to run, the same after a renewal near its end, or a fresh read (when
        none is held, its lease is over or it could not be extended). Whatever fails leaves
        nothing held for this secret."""
        path = _segment(name, "name")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                    or version < 1):  # fmt: skip
            raise ValueError("version must be a positive integer")
        key = (name, version)
        with self._lock_for(key):
            with self._lock:
                held = self._held.get(key)
            now = self._clock()
            if held is not None and held.usable(now):
                return held.value
            fresh: _Held | None = None
            try:
                if held is not None and now < held.expires_at:
                    fresh = self._renew(held)
                if fresh is None:
                    fresh = self._read(name, path, version)
            finally:  # held while renewing (revoke() waits for it), and never after a failure
                with self._lock:
                    if fresh is None:
                        self._held.pop(key, None)
                    else:
                        self._held[key] = fresh
            return fresh.value

    def seen(self) -> list[str]:
        """Every secret value this client has read (released ones too)."""
        with self._lock:
            return list(self._seen)

    def release(self) -> int:
        """Drop every held value and give its lease back (best effort: a lease that cannot be
        given back is logged and ends when it expires); returns how many were given back.
        Waits for a read or renewal in flight; a secret read afterwards is held again."""
        with self._lock:
            keys = list(self._locks)
        given = 0
        for key in keys:
            with self._lock_for(key):
                with self._lock:
                    held = self._held.pop(key, None)
                if held is not None:
                    given += self._give_back(held.lease_id)
        return given

    def revoke(self, lease_id: str) -> None:
        """Give ``lease_id`` back (``POST /v1/secrets/leases/{id}/revoke``); a value held
        under it is dropped first. Giving back a lease that is over changes nothing. Raises
        :class:`SecretError` (``lease_not_found`` for a lease that is not this agent's)."""
        path = _segment(lease_id, "lease_id")
        with self._lock:
            keys = [key for key, held in self._held.items() if held.lease_id == lease_id]
        for key in keys:  # after a renewal in flight, which would otherwise keep the lease
            with self._lock_for(key), self._lock:
                held = self._held.get(key)
                if held is not None and held.lease_id == lease_id:
                    del self._held[key]
        self._call("POST", f"/v1/secrets/leases/{path}/revoke", json={})

    def database_login(self, role: str) -> DatabaseLogin:
        """New credentials for database ``role`` under a lease of their own (not held here:
        each call makes a login)."""
        path = _segment(role, "role")
        started = self._clock()
        body = self._call("POST", f"/v1/secrets/db/{path}/lease", json={})
        port = body.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65_536:
            raise SecretError("invalid_response", f"{_LOGIN} has no usable port")
        login = DatabaseLogin(
            role=body["role"] if isinstance(body.get("role"), str) else role,
            username=_text(body, "username", _LOGIN), password=_text(body, "password", _LOGIN),
            host=_text(body, "host", _LOGIN), port=port,
            database=_text(body, "database", _LOGIN),
            lease_id=_text(body, "lease_id", _LOGIN),
            expires_at=datetime.fromtimestamp(
                started + _seconds(body.get("expires_in"), "expires_in", _LOGIN), UTC
            ),
        )  # fmt: skip
        log.debug("database login for role %s under lease %s", role, login.lease_id)
        return login

    # -- internals -----------------------------------------------------------------------------
    def _lock_for(self, key: _Key) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def _read(self, name: str, path: str, version: int | None) -> _Held:
        started = self._clock()
        params = {} if version is None else {"version": str(version)}
        body = self._call("GET", f"/v1/secrets/{path}/value", params=params)
        value, lease_id = _text(body, "value", _READ), _text(body, "lease_id", _READ)
        expires_in = _seconds(body.get("expires_in"), "expires_in", _READ)
        if version is not None and body.get("version") != version:
            raise SecretError("invalid_response", f"{_READ} is not of version {version}")
        log.debug("secret %s read under lease %s; expires in %ss", name, lease_id, expires_in)
        with self._lock:
            self._seen.add(value)
        return _Held(value, lease_id, expires_in, started + expires_in)

    def _renew(self, held: _Held) -> _Held | None:
        """Another period for ``held``'s lease, or None when the lease is over or renewing
        does not take it past the margin (it reached its longest): then read afresh. After a
        transient failure ``held`` itself, not asked again for a while. Any other refusal
        (policy no longer permits the read…) is raised."""
        started = self._clock()
        path = _segment(held.lease_id, "lease_id")
        try:
            body = self._call("POST", f"/v1/secrets/leases/{path}/renew", json={})
        except SecretError as exc:
            if exc.code in _GONE:
                log.info("lease %s is over (%s): reading afresh", held.lease_id, exc.code)
                return None
            if exc.code in _TRANSIENT or (exc.status or 0) >= 500:
                wait = exc.retry_after or _RETRY
                log.warning("lease %s not renewed (%s); kept until it ends, retried in %ss",
                            held.lease_id, exc.code, wait)  # fmt: skip
                return replace(held, retry_at=started + wait)
            raise
        if body.get("id") != held.lease_id:
            raise SecretError("invalid_response", f"the renewal is not of lease {held.lease_id}")
        if body.get("state") != "active":
            return None
        # The period the server granted, by its own clock on both ends (no skew), from the
        # moment this client asked: the lease cannot end before the client expects it to.
        granted = _instant(body, "expires_at") - _instant(body, "renewed_at")
        renewed = replace(held, expires_at=started + granted.total_seconds(), retry_at=0.0)
        return renewed if renewed.renew_at > started else None

    def _give_back(self, lease_id: str) -> int:
        try:
            self._call("POST", f"/v1/secrets/leases/{_segment(lease_id, 'lease_id')}/revoke",
                       json={})  # fmt: skip
        except (ApiError, TokenError) as exc:
            log.warning("lease %s not given back (%s); it ends when it expires", lease_id, exc)
            return 0
        return 1


def _segment(value: str, what: str) -> str:
    """``value`` as one path segment, percent-encoded; ValueError for one that cannot be."""
    if not isinstance(value, str) or value in {"", ".", ".."}:
        raise ValueError(f"{what} must be a non-empty string other than '.' and '..'")
    return quote(value, safe="")


def _text(body: dict[str, Any], name: str, what: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise SecretError("invalid_response", f"{what} has no {name}")  # never the value
    return value


def _seconds(value: object, name: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise SecretError("invalid_response", f"{what} has no positive {name}")
    return float(value)


def _instant(body: dict[str, Any], name: str) -> datetime:
    """An RFC 3339 time of the lease (Tether writes UTC with ``Z``)."""
    value = body.get(name)
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise SecretError("invalid_response", f"the renewed lease has no usable {name}")
    return parsed
