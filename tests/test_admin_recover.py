"""The admin lock-out (issue 13, item 2): a data dir shared by two databases keeps both admin
tokens, and ``tether admin recover`` mints a new one on the server host, in the ledger.

The two tests against a server share one per backend (per xdist worker): the lock-out puts the
admin token back when it is done, and reads back only the files and events it made."""

from __future__ import annotations

import getpass
import secrets
import socket
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import BACKENDS, _Templates, at_head, backend_for, make_settings
from tests.serverproc import module_server, run_cli
from tether.bootstrap import BootstrapReport, admin_token_file, prepare
from tether.config import Settings
from tether.container import build_services
from tether.errors import Unauthenticated


def _start(settings: Settings) -> tuple[BootstrapReport, list[str]]:
    """A server's start on ``settings``: its report, and which of the tokens in the data dir
    this database accepts."""
    svc = build_services(settings)
    try:
        report = prepare(svc)
        accepted = []
        for path in sorted(settings.data_dir.glob("*.token")):
            try:
                svc.users.authenticate(path.read_text().strip())
                accepted.append(path.name)
            except Unauthenticated:
                pass
        return report, accepted
    finally:
        svc.close()


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_second_database_never_overwrites_the_admin_token(
    kind: str, tmp_path: Path, schema_templates: _Templates
) -> None:
    data = tmp_path / "data"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with backend_for(kind, tmp_path / "a") as a, backend_for(kind, tmp_path / "b") as b:
        at_head(a, schema_templates)
        at_head(b, schema_templates)
        first, accepted = _start(make_settings(a, data))
        assert first.admin_token_path == data / "admin.token"
        assert accepted == ["admin.token"]
        token_a = (data / "admin.token").read_text()

        second, accepted = _start(make_settings(b, data))
        assert second.deployment_id not in (None, first.deployment_id)
        beside = data / f"admin.{second.deployment_id}.token"
        assert second.admin_token_path == beside
        assert (data / "admin.token").read_text() == token_a  # A's, untouched
        assert stat.S_IMODE(beside.stat().st_mode) == 0o600
        assert accepted == [beside.name]
        said = "\n".join(second.lines())
        assert str(beside) in said
        assert f"{data / 'admin.token'} is another database's admin token" in said

        # Back on A: nothing is written, and A's admin still gets in.
        again, accepted = _start(make_settings(a, data))
        assert again.admin_token_path is None
        assert again.deployment_id == first.deployment_id
        assert accepted == ["admin.token"]
        assert admin_token_file(make_settings(a, data), again.deployment_id) == data / "admin.token"
        assert admin_token_file(make_settings(b, data), second.deployment_id) == beside


def _tether(
    env: dict[str, str], cwd: Path, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**env, "TETHER_TOKEN": token} if token else env
    return run_cli(*args, env=env, cwd=cwd)


@dataclass
class Server:
    url: str
    cwd: Path
    env: dict[str, str]


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with module_server(request, tmp_path_factory, "recover") as (tmp, url, env, _token, _backend):
        yield Server(url, tmp, env)


def _recovered(data: Path) -> set[Path]:
    return set(data.glob("admin.*.recovered.*.token"))


def _recovered_events(url: str, token: str) -> list[dict[str, Any]]:
    got = httpx.get(f"{url}/v1/audit/events", params={"type": "admin.recovered"},
                    headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    assert got.status_code == 200, got.text
    return list(got.json()["items"])


@contextmanager
def _locked_out(data: Path) -> Iterator[None]:
    """The admin token gone from the data dir; put back afterwards (the deployment is shared)."""
    lost = data.parent / f"lost-{secrets.token_hex(4)}"
    (data / "admin.token").rename(lost)
    try:
        yield
    finally:
        lost.rename(data / "admin.token")


def test_recover_mints_a_working_token_in_the_ledger(server: Server) -> None:
    url, cwd, env = server.url, server.cwd, server.env
    data = cwd / ".tether"
    old = (data / "admin.token").read_text().strip()
    files_before = _recovered(data)
    events_before = _recovered_events(url, old)
    with _locked_out(data):  # the lock-out
        assert _tether(env, cwd, "whoami").returncode == 1

        done = _tether(env, cwd, "admin", "recover")
        assert done.returncode == 0, done.stderr
        made = list(_recovered(data) - files_before)
        assert len(made) == 1
        assert str(made[0].relative_to(cwd)) in done.stdout
        assert stat.S_IMODE(made[0].stat().st_mode) == 0o600
        new = made[0].read_text().strip()
        assert new not in done.stdout + done.stderr  # in the file only
        me = _tether(env, cwd, "whoami", "--json", token=new)
        assert me.returncode == 0, me.stderr
        assert '"username": "admin"' in me.stdout
        # A recovered admin revokes nothing: the old token still works.
        assert _tether(env, cwd, "whoami", token=old).returncode == 0

        events = [e for e in _recovered_events(url, new) if e not in events_before]
        assert len(events) == 1
        event = events[0]
        assert event["actor"] == "system"
        assert event["details"]["os_user"] == getpass.getuser()
        assert event["details"]["host"] == socket.gethostname()
        assert event["details"]["token_id"] in made[0].name

        printed = _tether(env, cwd, "admin", "recover", "--print")
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.startswith("tth_")
        assert len(printed.stdout.splitlines()) == 1  # T=$(tether admin recover --print)
        assert "shown once" in printed.stderr
        assert _recovered(data) - files_before == set(made)  # no file this time
        assert _tether(env, cwd, "whoami", token=printed.stdout.strip()).returncode == 0

        verified = _tether(env, cwd, "audit", "verify", token=new)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.startswith("ok:")

        sue = f"sue-{secrets.token_hex(4)}"
        made_sue = _tether(env, cwd, "users", "create", sue, "--role", "supervisor", token=new)
        assert made_sue.returncode == 0, made_sue.stderr
        refused = _tether(env, cwd, "admin", "recover", "--user", sue)
        assert refused.returncode == 1
        assert refused.stderr == (
            f"error: user '{sue}' is a supervisor, not an admin — only an admin is recovered\n"
        )


def test_recover_without_the_deployment_is_one_line_and_creates_nothing(
    server: Server, tmp_path: Path
) -> None:
    env = server.env
    elsewhere = tmp_path / "elsewhere"
    # The server's database, another data dir: no master key there, none made.
    keyless = _tether({**env, "TETHER_DATA_DIR": str(elsewhere)}, tmp_path, "admin", "recover")
    assert keyless.returncode == 1
    assert keyless.stderr.startswith(f"error: no master.key in {elsewhere} — run this on")
    assert len(keyless.stderr.splitlines()) == 1
    assert not (elsewhere / "master.key").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    plain = {k: v for k, v in env.items() if not k.startswith("TETHER_")}
    nothing = _tether({**plain, "TETHER_DATA_DIR": str(empty / "data")}, empty, "admin", "recover")
    assert nothing.returncode == 1
    assert nothing.stderr.startswith("error: no database at ")
    assert len(nothing.stderr.splitlines()) == 1
    assert not (empty / "data").exists()
