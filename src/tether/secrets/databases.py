"""Dynamic PostgreSQL logins: a login minted per agent and per lease, dropped when it ends.

An admin registers a connection (its admin DSN kept as a secret, ideally broker-only) and
roles: SQL templates run on that connection to create a login (``{{name}}``,
``{{password}}``, ``{{expiry}}``) and, optionally, to drop it (``{{name}}``; by default its
sessions are terminated, what it owns or was granted dropped, and the role dropped). An
agent that policy lets ``secret.lease`` a ``DatabaseRole`` asks ``POST
/v1/secrets/db/{role}/lease`` and gets a fresh login that exists only for its lease.

The lease is recorded first (under the write lock, with the agent re-checked), then the
login created on the database; a failure there revokes the lease. Whenever a database
lease ends — revoked by hand or by a kill, suspension, freeze or expiry of its agent, or
expired — its login is dropped and its sessions terminated after the commit, in the
background; maintenance drops whatever a crash left (a login also carries ``VALID UNTIL``
its lease's end, so the database itself refuses it after that).

The generated name (``tether_`` + 20 lowercase hex digits) and password (32 base62
characters) are made of characters that need no quoting: templates cannot be injected
through them, and the password never appears in an event, a log line or an error.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from tether.audit.events import EventType, NewEvent
from tether.clock import from_micros, to_micros, to_rfc3339
from tether.db.engine import IN_BACKGROUND
from tether.errors import Forbidden, NotFound, SecretNotFound, TetherError, ValidationFailed
from tether.maintenance import Task
from tether.policy.values import Ask
from tether.principals import Principal
from tether.secrets.models import DatabaseConnectionRow, DatabaseRoleRow, LeaseRow
from tether.secrets.service import Caller, SecretService, denied

if TYPE_CHECKING:  # psycopg loads only when a login is minted or dropped (SQLite servers too)
    import psycopg

log = logging.getLogger("tether.secrets.databases")
ACTION = "secret.lease"
RESOURCE_TYPE = "DatabaseRole"
_IDENT = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_PLACEHOLDER = re.compile(r"\{\{([a-z]+)\}\}")
# The templates' patterns for the API document: the placeholders they must hold, in any order.
CREATION_PATTERN = (
    r"^[^\x00]*(\{\{name\}\}[^\x00]*\{\{password\}\}|\{\{password\}\}[^\x00]*\{\{name\}\})[^\x00]*$"
)
REVOCATION_PATTERN = r"^[^\x00]*\{\{name\}\}[^\x00]*$"
_CREATE_NEEDS = {"name", "password"}
_CREATE_MAY = {"name", "password", "expiry"}
_RESERVED = frozenset({"roles", "connections"})
_ALPHABET = string.ascii_letters + string.digits
_CONNECT_TIMEOUT = 10
# Tether's role statements on one database, one transaction at a time (every node): two
# logins granted or dropped at once update the same catalog rows (a GRANT ON DATABASE, a
# DROP OWNED BY), and PostgreSQL fails the second with "tuple concurrently updated".
_SERIALIZE = "SELECT pg_advisory_xact_lock(7378524118393427)"
DEFAULT_REVOCATION = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';"
    ' DROP OWNED BY "{{name}}"; DROP ROLE IF EXISTS "{{name}}";'
)


class DatabaseRoleNotFound(NotFound):
    code = "database_role_not_found"


class DatabaseUnavailable(TetherError):
    """The database the login is minted on refused or could not be reached."""

    code = "database_unavailable"
    http_status = 502


@dataclass(frozen=True, slots=True)
class Login:
    """A leased login: the password is returned once, to the agent, and kept nowhere."""

    lease_id: str
    role: str
    username: str
    password: str
    host: str
    port: int
    database: str
    expires_in: int

    def to_json(self) -> dict[str, Any]:
        return {"lease_id": self.lease_id, "role": self.role, "username": self.username,
                "password": self.password, "host": self.host, "port": self.port,
                "database": self.database, "expires_in": self.expires_in}  # fmt: skip


def check_ident(value: str, field: str) -> str:
    if not isinstance(value, str) or not _IDENT.fullmatch(value) or value in _RESERVED:
        raise ValidationFailed(
            "1-64 characters: a lowercase letter, then lowercase letters, digits, '_' or '-'"
            f" (not {', '.join(sorted(_RESERVED))})",
            field=field,
        )
    return value


def check_template(template: str, *, field: str, needs: set[str], may: set[str]) -> str:
    used = set(_PLACEHOLDER.findall(template))
    if unknown := used - may:
        raise ValidationFailed(f"unknown placeholder(s) {sorted(unknown)}; use {sorted(may)}",
                               field=field)  # fmt: skip
    if missing := needs - used:
        raise ValidationFailed(f"the template must use {{{{{'}}, {{'.join(sorted(missing))}}}}}",
                               field=field)  # fmt: skip
    if "\x00" in template or len(template) > 20_000:
        raise ValidationFailed("at most 20,000 characters, no NUL", field=field)
    return template


def render(template: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class DatabaseLogins:
    """Registered connections and roles, and the logins leased on them, on top of
    :class:`tether.secrets.service.SecretService` (its decision path, values, leases and
    revocations: ``broker``), which calls :meth:`after_revoke` whenever leases end."""

    def __init__(self, broker: SecretService) -> None:
        self.broker = broker
        self.db = broker.db
        self.clock = broker.clock
        self.connect: Callable[[str], psycopg.Connection[Any]] = _connect

    # -- registration (admins) --------------------------------------------------------------
    def put_connection(self, actor: Principal, name: str, *, dsn_secret: str) -> dict[str, Any]:
        _admin(actor)
        check_ident(name, "name")
        now = self.clock.now()
        with self.db.write() as s:
            if self.broker.store.secret(s, dsn_secret) is None:
                raise ValidationFailed(f"no secret named {dsn_secret!r} (put the admin DSN "
                                       "first)", field="dsn_secret")  # fmt: skip
            row = s.get(DatabaseConnectionRow, name)
            if row is None:
                row = DatabaseConnectionRow(name=name, dsn_secret=dsn_secret, created_by=actor.ref,
                                            created_at=to_micros(now))  # fmt: skip
                s.add(row)
            row.dsn_secret = dsn_secret
            self.broker.ledger.append(s, [NewEvent(
                EventType.SECRET_PUT, actor.ref, action="secret.db_connection",
                resource={"type": "DatabaseConnection", "id": name}, outcome="success",
                details={"dsn_secret": dsn_secret},
            )], now=now)  # fmt: skip
            return {"name": name, "dsn_secret": dsn_secret}

    def put_role(
        self, actor: Principal, name: str, *, connection: str, creation: str,
        revocation: str | None, ttl_seconds: int,
    ) -> dict[str, Any]:  # fmt: skip
        _admin(actor)
        check_ident(name, "name")
        check_template(creation, field="creation", needs=_CREATE_NEEDS, may=_CREATE_MAY)
        if revocation is not None:
            check_template(revocation, field="revocation", needs={"name"}, may={"name"})
        if not 10 <= ttl_seconds <= self.broker.lease_max_seconds:
            most = self.broker.lease_max_seconds
            raise ValidationFailed(
                f"ttl_seconds must be 10-{most} (TETHER_SECRET_LEASE_MAX_SECONDS)",
                field="ttl_seconds",
            )
        now = self.clock.now()
        with self.db.write() as s:
            if s.get(DatabaseConnectionRow, connection) is None:
                raise ValidationFailed(f"no database connection {connection!r}",
                                       field="connection")  # fmt: skip
            row = s.get(DatabaseRoleRow, name)
            if row is None:
                row = DatabaseRoleRow(name=name, created_by=actor.ref, created_at=to_micros(now))
                s.add(row)
            row.connection, row.creation, row.revocation = connection, creation, revocation
            row.ttl_seconds = ttl_seconds
            self.broker.ledger.append(s, [NewEvent(
                EventType.SECRET_PUT, actor.ref, action="secret.db_role",
                resource={"type": RESOURCE_TYPE, "id": name}, outcome="success",
                details={"connection": connection, "ttl_seconds": ttl_seconds},
            )], now=now)  # fmt: skip
            return _role_json(row)

    def roles(self, actor: Principal) -> list[dict[str, Any]]:
        if not (actor.is_admin or actor.kind == "user"):
            raise Forbidden("people see the database roles")
        with self.db.read() as s:
            return [_role_json(r) for r in s.scalars(select(DatabaseRoleRow)
                                                      .order_by(DatabaseRoleRow.name))]  # fmt: skip

    # -- leasing (agents) -------------------------------------------------------------------
    async def lease(self, caller: Caller, role: str, *, request_id: str | None = None) -> Login:
        """A new login for the agent, if policy permits ``secret.lease`` on
        ``DatabaseRole::"<role>"``; raises as a secret read does, plus
        :class:`DatabaseRoleNotFound` and :class:`DatabaseUnavailable`."""
        agent = caller.principal
        if agent.kind != "agent":
            raise Forbidden("database logins are leased by agents with their access token")
        check_ident(role, "role")
        self.broker.limiter.take(agent.id, self.broker.monotonic())
        found = await asyncio.to_thread(self._role, role)
        properties = {"connection": found.connection} if found else {}
        ask = Ask.of(caller, ACTION, RESOURCE_TYPE, role, properties=properties, context={},
                     request_id=request_id)  # fmt: skip
        decision = await self.broker.decisions.decide(ask)
        if not decision.allowed:
            raise denied(role, decision)
        if found is None:
            raise DatabaseRoleNotFound(f"no database role {role!r}", role=role)
        dsn = await asyncio.to_thread(self._dsn, found.connection)
        login = f"tether_{secrets.token_hex(10)}"
        password = "".join(secrets.choice(_ALPHABET) for _ in range(32))
        seconds = found.ttl_seconds

        job = self.broker.lease_job(caller, f"db/{role}", 0, seconds, login)
        lease = await self.broker.committer.run_async(partial(job, decision=decision))
        expiry = to_rfc3339(from_micros(lease.expires_at))
        script = render(found.creation, {"name": login, "password": password, "expiry": expiry})
        try:
            await asyncio.to_thread(self._run, dsn, script)
        except DatabaseUnavailable:
            await asyncio.to_thread(self._abandon, lease.id)
            raise
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
        return Login(lease.id, role, login, password, str(parts.get("host") or "localhost"),
                     int(parts.get("port") or 5432), str(parts.get("dbname") or ""),
                     seconds)  # fmt: skip

    def _role(self, role: str) -> DatabaseRoleRow | None:
        with self.db.read() as s:
            row = s.get(DatabaseRoleRow, role)
            if row is not None:
                s.expunge(row)
            return row

    def _dsn(self, connection: str) -> str:
        with self.db.read() as s:
            conn = s.get(DatabaseConnectionRow, connection)
            secret = conn.dsn_secret if conn else None
        if secret is None:
            raise DatabaseUnavailable(f"database connection {connection!r} is gone")
        meta = self.broker._meta(secret)
        if meta is None:
            raise SecretNotFound(f"the DSN secret {secret!r} of connection {connection!r} "
                                 "is gone", name=secret)  # fmt: skip
        return str(self.broker._decrypt(secret, meta.version).decode())

    def _run(self, dsn: str, script: str) -> None:
        import psycopg
        from psycopg import sql as pgsql

        try:
            with self.connect(dsn) as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute(_SERIALIZE)
                # An admin's template, with generated values that need no quoting.
                cur.execute(pgsql.SQL(script))  # type: ignore[arg-type,unused-ignore]
        except psycopg.Error as exc:
            # The driver's message may quote the statement (and so a password): not passed on.
            log.warning("a database login statement failed: %s", type(exc).__name__)
            raise DatabaseUnavailable(
                f"the database refused the role's statements ({type(exc).__name__}); check "
                "the role's templates and the connection's DSN"
            ) from None

    def _abandon(self, lease_id: str) -> None:
        now = self.clock.now()
        with self.db.write() as s:
            row = self.broker.store.lease(s, lease_id)
            if row is not None and row.revoked_at is None:
                self.broker._revoke(s, [row], now, by="system", why="login creation failed")

    # -- ending --------------------------------------------------------------------------------
    def after_revoke(self, s: Session, rows: list[LeaseRow]) -> None:
        """Lease-end hook: drop the logins of these leases once the revocation committed."""
        logins = [(r.id, r.name.removeprefix("db/"), r.login) for r in rows if r.login]
        if logins:
            s.info.setdefault(IN_BACKGROUND, []).append(lambda: self._drop(logins))

    def _drop(self, logins: Sequence[tuple[str, str, str | None]]) -> int:
        import psycopg

        dropped = 0
        for lease_id, role, login in logins:
            if login is None:
                continue
            found = self._role(role)
            try:
                dsn = self._dsn(found.connection) if found else None
                if dsn is None:
                    raise DatabaseUnavailable(f"database role {role!r} is gone")
                template = (found.revocation if found else None) or DEFAULT_REVOCATION
                self._drop_one(dsn, login, template)
            except (TetherError, psycopg.Error):
                log.warning("could not drop login %s of lease %s yet; maintenance retries",
                            login, lease_id)  # fmt: skip
                continue
            with self.db.write() as s:
                s.execute(update(LeaseRow).where(LeaseRow.id == lease_id)
                          .values(dropped_at=to_micros(self.clock.now())))  # fmt: skip
            dropped += 1
        return dropped

    def _drop_one(self, dsn: str, login: str, template: str) -> None:
        from psycopg import sql as pgsql

        with self.connect(dsn) as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(_SERIALIZE)
            exists = cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (login,)).fetchone()
            if exists is None:
                return
            cur.execute(pgsql.SQL(render(template, {"name": login})))

    def finish_drops(self) -> int:
        """Maintenance: drop the logins of leases that ended (revoked or expired) and were not
        dropped yet — after a crash, an unreachable database, or plain expiry."""
        now_us = to_micros(self.clock.now())
        with self.db.read() as s:
            rows = s.execute(select(LeaseRow.id, LeaseRow.name, LeaseRow.login).where(
                LeaseRow.login.is_not(None), LeaseRow.dropped_at.is_(None),
                or_(LeaseRow.revoked_at.is_not(None), LeaseRow.expires_at <= now_us),
            ).limit(200)).all()  # fmt: skip
        return self._drop([(r[0], str(r[1]).removeprefix("db/"), r[2]) for r in rows])

    def maintenance(self) -> list[Task]:
        return [Task("secrets.drop_logins", self.finish_drops)]


def _connect(dsn: str) -> psycopg.Connection[Any]:
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT)


def _admin(actor: Principal) -> None:
    if not actor.is_admin:
        raise Forbidden("only an admin may register database connections and roles",
                        required_role="admin")  # fmt: skip


def _role_json(row: DatabaseRoleRow) -> dict[str, Any]:
    return {"name": row.name, "connection": row.connection, "creation": row.creation,
            "revocation": row.revocation, "ttl_seconds": row.ttl_seconds,
            "created_by": row.created_by,
            "created_at": to_rfc3339(from_micros(row.created_at))}  # fmt: skip
