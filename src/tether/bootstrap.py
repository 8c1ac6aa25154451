"""First start of a deployment: migrate, create ``admin``, write its token file (0600); and
the break-glass way back in when that token is lost (``tether admin recover``).

A data dir may serve several databases over time (``TETHER_DATABASE_URL`` pointed at a new
one, a wiped SQLite file): a token file is never overwritten, since the database it belongs
to may come back. The first database's admin token is ``admin.token``; another's is
``admin.<deployment id>.token`` beside it.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tether.audit.store import DatabaseLedgerStore
from tether.db import Database, migrate
from tether.errors import ConfigurationError
from tether.keyfiles import write_private
from tether.users.service import ADMIN_USERNAME, User, UserToken

if TYPE_CHECKING:
    # The wiring (every domain, ~0.6 s to import) is built by the callers that pass it in;
    # `tether backup` reads the deployment id here without it.
    from tether.config import Settings
    from tether.container import Services

DEPLOYMENT_ID_CHARS = 12


@dataclass
class BootstrapReport:
    admin_token_path: Path | None = None  # written by this start (a new deployment)
    created_files: list[Path] = field(default_factory=list)
    deployment_id: str | None = None
    # The token file a first start wrote elsewhere than admin.token, which another
    # database's token already held.
    beside: Path | None = None

    def lines(self) -> list[str]:
        out = [f"generated {p} (mode 0600)" for p in self.created_files]
        if self.admin_token_path is not None:
            out.append(f"created user 'admin'; its token is in {self.admin_token_path} (mode 0600)")
        if self.beside is not None:
            out.append(
                f"{self.beside} is another database's admin token and was left as it was; "
                f"this database's (deployment {self.deployment_id}) is the file above: "
                f"export TETHER_TOKEN=$(cat {self.admin_token_path})"
            )
        return out


def deployment_id(db: Database) -> str | None:
    """The deployment's id: the start of its ledger's first hash (``system.bootstrapped``),
    which no other database has and a backup keeps; None before the first start."""
    with db.read() as s:
        first = DatabaseLedgerStore().page(s, after_seq=0, limit=1)
    return first[0].hash[:DEPLOYMENT_ID_CHARS] if first else None


def admin_token_file(settings: Settings, deployment: str | None) -> Path:
    """Where this deployment's admin token is: ``admin.<id>.token`` if a start wrote it
    there (``admin.token`` was taken), else ``admin.token``."""
    named = settings.data_dir / f"admin.{deployment}.token"
    return named if deployment is not None and named.exists() else settings.admin_token_path


def prepare(services: Services) -> BootstrapReport:
    """Bring the database to the latest schema and bootstrap an empty deployment."""
    migrate.upgrade(services.db)
    report = BootstrapReport(created_files=list(services.keys.created))
    result = services.users.bootstrap()
    services.signing_keys.ensure()
    report.deployment_id = deployment_id(services.db)
    if result is not None:
        _user, token = result
        path = services.settings.admin_token_path
        if path.exists():  # another database's, perhaps to come back: never overwrite it
            report.beside = path
            path = path.with_name(f"admin.{report.deployment_id}.token")
        write_private(path, token.encode() + b"\n")
        report.admin_token_path = path
    return report


@dataclass(frozen=True)
class Recovery:
    user: User
    token: UserToken
    secret: str
    deployment_id: str | None


def check_deployment(settings: Settings) -> None:
    """Raises :class:`ConfigurationError` unless the configured database is a started,
    current Tether deployment: a command beside the server must not create one."""
    url = settings.resolved_database_url
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ConfigurationError(
                f"no database at {path} — run this on the server host with the server's "
                "TETHER_DATA_DIR and TETHER_DATABASE_URL",
                path=str(path),
            )
    db = Database(url, schema=settings.database_schema)
    try:
        revision = migrate.current_revision(db)
        current = revision == migrate.head_revision(db)
    finally:
        db.dispose()
    if revision is None:
        raise ConfigurationError(
            "the database holds no Tether deployment — check TETHER_DATABASE_URL and "
            "TETHER_DATABASE_SCHEMA (the server's), or start the server once"
        )
    if not current:
        raise ConfigurationError(
            f"the database is at revision {revision}, this build expects "
            f"{migrate.head_revision(db)} — run `tether db upgrade` first"
        )


def recover_admin(services: Services, username: str = ADMIN_USERNAME) -> Recovery:
    """A new token for ``username`` (an admin), recorded in the ledger with the OS user and
    host that asked; see :meth:`tether.users.service.UserService.recover_admin`."""
    user, token, secret = services.users.recover_admin(
        username, os_user=_os_user(), host=socket.gethostname()
    )
    return Recovery(user, token, secret, deployment_id(services.db))


def recovered_token_path(settings: Settings, recovery: Recovery) -> Path:
    """A new file for a recovered token, named by the user, the deployment and the token's
    id (what ``tether users tokens`` lists, and revokes)."""
    name = f"{recovery.user.username}.{recovery.deployment_id}.recovered.{recovery.token.id}"
    return settings.data_dir / f"{name}.token"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container's arbitrary user)
        return f"uid {os.getuid()}"
