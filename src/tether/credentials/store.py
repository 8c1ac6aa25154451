"""Database access for agent credentials, issued access tokens and token signing keys."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, cast

from sqlalchemy import ColumnElement, Integer, Table, bindparam, func, select, text, update
from sqlalchemy.orm import Session

from tether.agents import directory
from tether.credentials.models import AccessTokenRow, CredentialRow, SigningKeyRow
from tether.db.bulk import insert_rows
from tether.db.lists import PerDialect, one_of
from tether.db.text import unstorable

# A kill's (and an expiry's) statements for its tokens, built once per dialect, their lists
# of agents or jtis one array parameter on PostgreSQL (tether.db.lists): they run under the
# write lock, where a second statement naming 10,000 jtis back, building an ORM bulk UPDATE
# each time, or rendering 10,000 parameters cost more than the update itself
# (bench/README.md, "Kill"). Tokens this session holds as rows (none, on those paths) would
# keep their old values in memory.
_TOKENS = cast(Table, AccessTokenRow.__table__)


def _live_of(d: str) -> tuple[ColumnElement[bool], ...]:
    return (one_of(_TOKENS.c.agent_id, "agents", d), _TOKENS.c.revoked_at.is_(None),
            _TOKENS.c.expires_at > bindparam("now_us"))  # fmt: skip


_REVOKE_OF = PerDialect(lambda d: (
    update(_TOKENS).where(*_live_of(d))
    .values(revoked_at=bindparam("now_us")).returning(_TOKENS.c.jti)
))  # fmt: skip
_COUNT_LIVE_OF = PerDialect(lambda d: select(func.count()).select_from(_TOKENS).where(*_live_of(d)))
# PostgreSQL: count the live tokens and revoke them if at most :limit, in one statement (a
# kill's tokens: one round trip less under the write lock, on the path of every kill).
_REVOKE_OF_AT_MOST = PerDialect(lambda d: text(
    "WITH live AS (SELECT jti FROM access_tokens WHERE agent_id = ANY(CAST(:agents AS"
    " VARCHAR(40)[])) AND revoked_at IS NULL AND expires_at > :now_us),"
    " total AS (SELECT count(*) AS n FROM live),"
    " revoked AS (UPDATE access_tokens SET revoked_at = :now_us"
    " WHERE jti IN (SELECT jti FROM live) AND (SELECT n FROM total) <= :limit RETURNING jti)"
    " SELECT (SELECT n FROM total), ARRAY(SELECT jti FROM revoked)"
))  # fmt: skip
_JTIS_LIVE_OF = PerDialect(lambda d: select(_TOKENS.c.jti).where(*_live_of(d)))
_REVOKE_JTIS = PerDialect(lambda d: (
    update(_TOKENS)
    .where(one_of(_TOKENS.c.jti, "jtis", d), _TOKENS.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now_us")).returning(_TOKENS.c.jti)
))  # fmt: skip
_MARK_REVOKED = PerDialect(lambda d: (
    update(_TOKENS).where(one_of(_TOKENS.c.jti, "jtis", d)).values(revoked_at=bindparam("now_us"))
))  # fmt: skip
_REVOKED_AMONG = PerDialect(lambda d: (
    select(_TOKENS.c.jti, _TOKENS.c.expires_at)
    .where(one_of(_TOKENS.c.jti, "jtis", d), _TOKENS.c.revoked_at.is_not(None))
))  # fmt: skip

# Unrevoked, unexpired tokens of agents that are revoked or expired: what a cut-off left to
# after its commit and has not done yet (the process died in between). Each is revoked as of
# its agent's last change (the kill's time).
_DEAD = directory.cut_off().subquery()  # the agents domain says which agents, and since when
_STRANDED = (
    select(_TOKENS.c.jti, _DEAD.c.updated_at)
    .join(_DEAD, _DEAD.c.id == _TOKENS.c.agent_id)
    .where(_TOKENS.c.revoked_at.is_(None), _TOKENS.c.expires_at > bindparam("now_us"),
           _DEAD.c.updated_at < bindparam("cut_before_us"))
    .limit(bindparam("limit", type_=Integer))
)  # fmt: skip


class DatabaseCredentialStore:
    """Lookups of a key no row can hold (a NUL, which PostgreSQL text cannot store; longer
    than its column) find nothing, on every backend."""

    # -- client credentials (agent_credentials) --------------------------------------------
    def get(self, session: Session, credential_id: str) -> CredentialRow | None:
        """A credential by id, deleted or not."""
        if len(credential_id) > 40 or unstorable(credential_id):
            return None
        return session.get(CredentialRow, credential_id)

    def by_secret_digest(self, session: Session, digest: str) -> CredentialRow | None:
        """The API key whose secret has this digest, deleted or not."""
        if unstorable(digest):
            return None
        q = select(CredentialRow).where(CredentialRow.secret_digest == digest)
        return session.scalars(q).first()

    def public_keys(self, session: Session, agent_id: str) -> list[CredentialRow]:
        """An agent's undeleted public keys (expired ones too: the caller says why not), in id
        order: the order ``private_key_jwt`` tries them in."""
        if unstorable(agent_id):
            return []
        return list(session.scalars(select(CredentialRow).where(
            CredentialRow.agent_id == agent_id, CredentialRow.type == "public_key",
            CredentialRow.deleted_at.is_(None),
        ).order_by(CredentialRow.id)))  # fmt: skip

    def live(
        self, session: Session, agent_id: str, *, after: str | None = None, limit: int | None = None
    ) -> list[CredentialRow]:
        """An agent's undeleted credentials in id order, after ``after``, at most ``limit``."""
        if unstorable(agent_id):
            return []
        if after is not None:
            # No id holds a NUL, so the ids after "a<NUL>b" are those after "a" (what SQLite
            # answers; PostgreSQL could not take the NUL).
            after = after.partition("\x00")[0]
        q = select(CredentialRow).where(
            CredentialRow.agent_id == agent_id, CredentialRow.deleted_at.is_(None)
        )
        if after is not None:
            q = q.where(CredentialRow.id > after)
        return list(session.scalars(q.order_by(CredentialRow.id).limit(limit)))

    def count_of(self, session: Session, agent_ids: Collection[str]) -> dict[str, int]:
        """How many undeleted credentials (expired ones too, as :meth:`live` lists them) each
        of these agents holds; an agent with none is absent. One grouped query on
        ``ix_agent_credentials_agent_id``."""
        ids = [a for a in agent_ids if not unstorable(a)]
        if not ids:
            return {}
        q = (
            select(CredentialRow.agent_id, func.count())
            .where(CredentialRow.agent_id.in_(ids), CredentialRow.deleted_at.is_(None))
            .group_by(CredentialRow.agent_id)
        )
        return {agent_id: int(n) for agent_id, n in session.execute(q)}

    def touch(self, session: Session, credential_id: str, now_us: int) -> None:
        """Set the credential's ``last_used_at`` (never backwards)."""
        session.execute(
            update(CredentialRow)
            .where(CredentialRow.id == credential_id)
            .where((CredentialRow.last_used_at.is_(None)) | (CredentialRow.last_used_at < now_us))
            .values(last_used_at=now_us)
            .execution_options(synchronize_session=False)
        )

    def add(self, session: Session, row: CredentialRow) -> None:
        session.add(row)
        session.flush()

    # -- issued access tokens (access_tokens) ----------------------------------------------
    def token(self, session: Session, jti: str) -> AccessTokenRow | None:
        if unstorable(jti):
            return None
        return session.get(AccessTokenRow, jti)

    def insert_token(
        self, session: Session, *, jti: str, agent_id: str, client_id: str, issued_at: int,
        expires_at: int,
    ) -> None:  # fmt: skip
        """A new, unrevoked token's row, on the driver's cursor."""
        table, row = self.token_row(jti=jti, agent_id=agent_id, client_id=client_id,
                                    issued_at=issued_at, expires_at=expires_at)  # fmt: skip
        insert_rows(session, table, [row])

    @staticmethod
    def token_row(
        *, jti: str, agent_id: str, client_id: str, issued_at: int, expires_at: int
    ) -> tuple[Table, tuple[Any, ...]]:
        """A new, unrevoked token's row for a group-commit batch to insert with its others
        (:attr:`tether.audit.group.Chain.rows`)."""
        return _TOKENS, (jti, agent_id, client_id, issued_at, expires_at, None)

    def add_token(self, session: Session, row: AccessTokenRow) -> None:
        session.add(row)
        session.flush()

    def revoke_tokens_of(
        self, session: Session, agent_ids: Collection[str], now_us: int
    ) -> list[str]:
        """Revoke, at ``now_us``, every unrevoked token of these agents that has not expired by
        then; their ``jti``s (in no particular order)."""
        wanted = [a for a in agent_ids if not unstorable(a)]
        if not wanted:
            return []
        return list(_REVOKE_OF.execute(session, {"agents": wanted, "now_us": now_us}).scalars())

    def revoke_tokens_of_at_most(
        self, session: Session, agent_ids: Collection[str], now_us: int, limit: int
    ) -> tuple[int, list[str]]:
        """How many tokens of these agents are unrevoked and unexpired at ``now_us`` and — if
        at most ``limit`` — their ``jti``s, revoked at ``now_us`` (more than that: none
        revoked, ``[]``)."""
        wanted = [a for a in agent_ids if not unstorable(a)]
        if not wanted:
            return 0, []
        if session.get_bind().dialect.name == "postgresql":
            params = {"agents": wanted, "now_us": now_us, "limit": limit}
            n, jtis = _REVOKE_OF_AT_MOST.execute(session, params).one()
            return int(n), list(jtis)
        n = self.count_live_tokens_of(session, wanted, now_us)
        return n, self.revoke_tokens_of(session, wanted, now_us) if n <= limit else []

    def count_live_tokens_of(
        self, session: Session, agent_ids: Collection[str], now_us: int
    ) -> int:
        """How many tokens of these agents are unrevoked and unexpired at ``now_us``."""
        wanted = [a for a in agent_ids if not unstorable(a)]
        if not wanted:
            return 0
        found = _COUNT_LIVE_OF.execute(session, {"agents": wanted, "now_us": now_us})
        return int(found.scalar() or 0)

    def live_tokens_of(
        self, session: Session, agent_ids: Collection[str], now_us: int
    ) -> list[str]:
        """The ``jti``s of the tokens :meth:`count_live_tokens_of` counts."""
        wanted = [a for a in agent_ids if not unstorable(a)]
        if not wanted:
            return []
        return list(_JTIS_LIVE_OF.execute(session, {"agents": wanted, "now_us": now_us}).scalars())

    def revoke_unrevoked(self, session: Session, jtis: Collection[str], now_us: int) -> list[str]:
        """Revoke, at ``now_us``, those of ``jtis`` not revoked yet; their ``jti``s."""
        wanted = [j for j in jtis if not unstorable(j)]
        if not wanted:
            return []
        return list(_REVOKE_JTIS.execute(session, {"jtis": wanted, "now_us": now_us}).scalars())

    def stranded_tokens(
        self, session: Session, now_us: int, *, cut_before_us: int, limit: int
    ) -> list[tuple[str, int]]:
        """Up to ``limit`` unrevoked, unexpired tokens of agents revoked or expired before
        ``cut_before_us``: ``jti`` and the agent's ``updated_at`` (when it was revoked or
        expired)."""
        params = {"now_us": now_us, "cut_before_us": cut_before_us, "limit": limit}
        rows = session.execute(_STRANDED, params).all()
        return [(jti, at) for jti, at in rows]

    def revoke_tokens(self, session: Session, jtis: Collection[str], now_us: int) -> None:
        """Mark exactly these tokens revoked at ``now_us`` (callers name unrevoked ones)."""
        wanted = [j for j in jtis if not unstorable(j)]
        if wanted:
            _MARK_REVOKED.execute(session, {"jtis": wanted, "now_us": now_us})

    def revoked_unexpired(self, session: Session, now_us: int) -> dict[str, int]:
        """Every revoked token that has not expired at ``now_us``: ``jti`` -> its expiry."""
        return dict(session.execute(
            select(AccessTokenRow.jti, AccessTokenRow.expires_at)
            .where(AccessTokenRow.revoked_at.is_not(None), AccessTokenRow.expires_at > now_us)
        ).all())  # fmt: skip

    def revoked_among(self, session: Session, jtis: Collection[str]) -> dict[str, int]:
        """Those of ``jtis`` that are revoked (expired or not): ``jti`` -> its expiry."""
        wanted = [j for j in jtis if not unstorable(j)]
        if not wanted:
            return {}
        found = _REVOKED_AMONG.execute(session, {"jtis": wanted})
        return {str(row[0]): int(row[1]) for row in found}

    # -- token signing keys (signing_keys) -------------------------------------------------
    def signing_key(self, session: Session, kid: str) -> SigningKeyRow | None:
        if unstorable(kid):
            return None
        return session.get(SigningKeyRow, kid)

    def signing_keys(self, session: Session, *, status: str | None = None) -> list[SigningKeyRow]:
        """Signing keys (of ``status``, if given), oldest first. Keys created in the same
        microsecond (a first start makes the active key and its successor at once) come in
        no promised order."""
        if unstorable(status):
            return []
        q = select(SigningKeyRow)
        if status is not None:
            q = q.where(SigningKeyRow.status == status)
        return list(session.scalars(q.order_by(SigningKeyRow.created_at)))

    def add_signing_key(self, session: Session, row: SigningKeyRow) -> None:
        session.add(row)
        session.flush()
