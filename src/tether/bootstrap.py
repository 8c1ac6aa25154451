"""First start of a deployment: migrate, create ``admin``, write its token file (0600)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tether.container import Services
from tether.db import migrate
from tether.keyfiles import write_private


@dataclass
class BootstrapReport:
    admin_token_path: Path | None = None
    created_files: list[Path] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"generated {p} (mode 0600)" for p in self.created_files]
        if self.admin_token_path is not None:
            out.append(f"created user 'admin'; its token is in {self.admin_token_path} (mode 0600)")
        return out


def prepare(services: Services) -> BootstrapReport:
    """Bring the database to the latest schema and bootstrap an empty deployment."""
    migrate.upgrade(services.db)
    report = BootstrapReport(created_files=list(services.keys.created))
    result = services.users.bootstrap()
    services.signing_keys.ensure()
    if result is not None:
        _user, token = result
        path = services.settings.admin_token_path
        if path.exists():
            path.unlink()  # a stale file from an earlier, wiped database
        write_private(path, token.encode() + b"\n")
        report.admin_token_path = path
    return report
