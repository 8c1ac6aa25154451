"""Token signing keys: ES256 by default (EdDSA optional), one ``kid`` each, JWKS, rotation.

Rotation keeps every verifier working: the *next* key is published in the JWKS from the
moment it is created, so caches have it before it signs anything; on rotation it becomes
*active* and the old active key is *retired* but stays published until the last token it
signed has expired. Private keys are sealed under the master key (AES-256-GCM).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from joserfc.jwk import ECKey, KeyParameters, OKPKey
from sqlalchemy.orm import Session

from tether.audit.events import EventType, NewEvent
from tether.audit.ledger import Ledger
from tether.clock import Clock, from_micros, to_micros, to_rfc3339
from tether.credentials.models import SigningKeyRow
from tether.credentials.store import DatabaseCredentialStore
from tether.db import Database
from tether.errors import Forbidden
from tether.jsonutil import canonical_text, loads
from tether.maintenance import Task
from tether.pagination import Page, decode_cursor, page_of
from tether.principals import SYSTEM, Principal
from tether.sealing import seal, unseal

SigningKey = ECKey | OKPKey
_CACHE_SECONDS = 5.0  # how stale a worker's view of the keys may get (rotation elsewhere)
_PUBLISH_LEEWAY = timedelta(minutes=5)  # retired keys outlive their last token by this much


def _generate(alg: str) -> SigningKey:
    key: SigningKey = (
        OKPKey.generate_key("Ed25519") if alg == "EdDSA" else ECKey.generate_key("P-256")
    )
    # kid = the RFC 7638 thumbprint: stable and derived from the public key.
    params: KeyParameters = {"kid": key.thumbprint(), "use": "sig", "alg": alg}
    if isinstance(key, OKPKey):
        return OKPKey.import_key(key.as_dict(private=True), parameters=params)
    return ECKey.import_key(key.as_dict(private=True), parameters=params)


@dataclass(frozen=True)
class KeyInfo:
    kid: str
    alg: str
    status: str
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    unpublish_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        def t(v: datetime | None) -> str | None:
            return to_rfc3339(v) if v else None

        return {
            "kid": self.kid, "alg": self.alg, "status": self.status,
            "created_at": to_rfc3339(self.created_at), "activated_at": t(self.activated_at),
            "retired_at": t(self.retired_at), "unpublish_at": t(self.unpublish_at),
        }  # fmt: skip


@dataclass(frozen=True)
class _Snapshot:
    loaded_at: float
    signer: SigningKey
    jwks: dict[str, Any]
    published: dict[str, SigningKey]  # kid -> public key, for verifying our own tokens


class SigningKeys:
    def __init__(
        self, db: Database, ledger: Ledger, clock: Clock, master_key: bytes, *,
        alg: str = "ES256", max_token_ttl: int = 3600, rotation_days: float = 30,
    ) -> None:  # fmt: skip
        self.db = db
        self.ledger = ledger
        self.clock = clock
        self._master = master_key
        self.alg = alg
        self.max_token_ttl = max_token_ttl
        self.rotation_days = rotation_days
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self.store = DatabaseCredentialStore()

    # -- lifecycle -------------------------------------------------------------------------
    def ensure(self) -> None:
        """Create the first active key and its successor if the deployment has none."""
        now = self.clock.now()
        with self.db.write() as s:
            if self.store.signing_keys(s, status="active"):
                return
            active = self._add(s, now, status="active")
            nxt = self._add(s, now, status="next")
            self.ledger.append(s, [NewEvent(
                EventType.KEY_CREATED, SYSTEM.ref, resource={"type": "SigningKey", "id": active},
                details={"active": active, "next": nxt, "alg": self.alg},
            )], now=now)  # fmt: skip
        self._snapshot = None

    def rotate(self, actor: Principal) -> dict[str, Any]:
        """Promote the published next key, retire the active one, publish a new next key."""
        if not actor.is_admin:
            raise Forbidden("only an admin may rotate signing keys")
        now = self.clock.now()
        with self.db.write() as s:
            result = self._rotate(s, actor, now)
        self._snapshot = None
        return result

    def maintenance(self) -> list[Task]:
        return [Task("keys.rotate", self.rotate_if_due)]

    def rotate_if_due(self) -> dict[str, Any] | None:
        """The schedule: rotate when the active key is older than ``rotation_days``."""
        now = self.clock.now()
        with self.db.write() as s:
            active = self.store.signing_keys(s, status="active")
            if not active or active[0].activated_at is None:
                return None
            age = now - from_micros(active[0].activated_at)
            if age < timedelta(days=self.rotation_days):
                return None
            result = self._rotate(s, SYSTEM, now)
        self._snapshot = None
        return result

    def _rotate(self, s: Session, actor: Principal, now: datetime) -> dict[str, Any]:
        old = self.store.signing_keys(s, status="active")
        nxt = self.store.signing_keys(s, status="next")
        promoted = nxt[0] if nxt else None
        if promoted is None:  # should not happen; recover by creating one
            promoted = self.store.signing_key(s, self._add(s, now, status="next"))
            assert promoted is not None
        promoted.status = "active"
        promoted.activated_at = to_micros(now)
        unpublish = now + timedelta(seconds=self.max_token_ttl) + _PUBLISH_LEEWAY
        for row in old:
            row.status = "retired"
            row.retired_at = to_micros(now)
            row.unpublish_at = to_micros(unpublish)
        new_next = self._add(s, now, status="next")
        details = {
            "active": promoted.kid,
            "retired": [r.kid for r in old],
            "next": new_next,
            "retired_published_until": to_rfc3339(unpublish),
        }
        self.ledger.append(s, [NewEvent(
            EventType.KEYS_ROTATED, actor.ref, resource={"type": "SigningKey", "id": promoted.kid},
            details=details,
        )], now=now)  # fmt: skip
        return details

    def _add(self, s: Session, now: datetime, *, status: str) -> str:
        key = _generate(self.alg)
        kid = str(key.kid)
        self.store.add_signing_key(s, SigningKeyRow(
            kid=kid, alg=self.alg, status=status,
            private_sealed=seal(self._master, canonical_text(key.as_dict(private=True)).encode(),
                                aad=f"signing-key:{kid}"),
            public_jwk=canonical_text(key.as_dict(private=False)), created_at=to_micros(now),
            activated_at=to_micros(now) if status == "active" else None,
            retired_at=None, unpublish_at=None,
        ))  # fmt: skip
        return kid

    # -- reading (cached per process, refreshed every few seconds) -------------------------
    def _current(self) -> _Snapshot:
        snap = self._snapshot
        if snap is not None and time.monotonic() - snap.loaded_at < _CACHE_SECONDS:
            return snap
        with self._lock:
            snap = self._snapshot
            if snap is not None and time.monotonic() - snap.loaded_at < _CACHE_SECONDS:
                return snap
            snap = self._load()
            self._snapshot = snap
            return snap

    def _load(self) -> _Snapshot:
        now_us = to_micros(self.clock.now())
        with self.db.read() as s:
            rows = self.store.signing_keys(s)
        published: dict[str, SigningKey] = {}
        signer: SigningKey | None = None
        for row in rows:
            if row.status == "retired" and (row.unpublish_at or 0) <= now_us:
                continue
            published[row.kid] = _import(loads(row.public_jwk))
            if row.status == "active":
                private = unseal(self._master, row.private_sealed, aad=f"signing-key:{row.kid}")
                signer = _import(loads(private))
        if signer is None:
            raise RuntimeError("no active signing key: the deployment was not prepared")
        jwks = {"keys": [k.as_dict(private=False) for k in published.values()]}
        return _Snapshot(time.monotonic(), signer, jwks, published)

    def reload(self) -> None:
        """Forget this process's view of the keys; the next use reads them again."""
        self._snapshot = None

    def signer(self) -> SigningKey:
        return self._current().signer

    def signer_in_memory(self) -> SigningKey | None:
        """:meth:`signer` if this process's view of the keys is fresh; None when it is due a
        read (what code that may not wait for the database, an event loop, asks)."""
        snap = self._snapshot
        if snap is not None and time.monotonic() - snap.loaded_at < _CACHE_SECONDS:
            return snap.signer
        return None

    def jwks(self) -> dict[str, Any]:
        return self._current().jwks

    def public_key(self, kid: str) -> SigningKey | None:
        """A published key by ``kid`` (refreshing once if it is unknown)."""
        key = self._current().published.get(kid)
        if key is None:
            self._snapshot = None
            key = self._current().published.get(kid)
        return key

    def list(
        self, actor: Principal, *, cursor: str | None = None, limit: int = 50
    ) -> Page[KeyInfo]:
        """Signing keys, oldest first. The cursor is the last key's :func:`_position`; any
        cursor the document admits names a place in that order (there are a few dozen keys at
        most, one per rotation, so they are ordered here rather than in SQL)."""
        if not actor.is_admin and actor.role is None:
            raise Forbidden("only users may list keys")
        after = decode_cursor(cursor)
        with self.db.read() as s:
            rows = sorted(self.store.signing_keys(s), key=_position)
        if after is not None:
            rows = [r for r in rows if _position(r) > after]
        rows = rows[: limit + 1]

        def t(v: int | None) -> datetime | None:
            return from_micros(v) if v is not None else None

        page = page_of(rows, limit, _position)
        items = [KeyInfo(r.kid, r.alg, r.status, from_micros(r.created_at), t(r.activated_at),
                         t(r.retired_at), t(r.unpublish_at)) for r in page.items]  # fmt: skip
        return Page(items, page.next_cursor)


def _position(row: SigningKeyRow) -> str:
    """(created_at, kid) as one string whose order is theirs: the time zero-padded."""
    return f"{row.created_at:020d}:{row.kid}"


def _import(jwk: dict[str, Any]) -> SigningKey:
    if jwk.get("kty") == "OKP":
        return OKPKey.import_key(jwk)
    return ECKey.import_key(jwk)
