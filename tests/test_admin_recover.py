"""The admin lock-out (issue 13, item 2): a data dir shared by two databases keeps both admin
tokens, and ``tether admin recover`` mints a new one on the server host, in the ledger."""

from __future__ import annotations

import getpass
import socket
import stat
import subprocess
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.conftest import BACKENDS, Backend, _Templates, at_head, backend_for, make_settings
from tests.serverproc import run_cli, running_server
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


def test_recover_mints_a_working_token_in_the_ledger(backend: Backend, tmp_path: Path) -> None:
    with running_server(backend, tmp_path) as (url, env):
        data = tmp_path / ".tether"
        old = (data / "admin.token").read_text().strip()
        (data / "admin.token").rename(tmp_path / "lost")  # the lock-out
        assert _tether(env, tmp_path, "whoami").returncode == 1

        done = _tether(env, tmp_path, "admin", "recover")
        assert done.returncode == 0, done.stderr
        made = list(data.glob("admin.*.recovered.*.token"))
        assert len(made) == 1
        assert str(made[0].relative_to(tmp_path)) in done.stdout
        assert stat.S_IMODE(made[0].stat().st_mode) == 0o600
        new = made[0].read_text().strip()
        assert new not in done.stdout + done.stderr  # in the file only
        me = _tether(env, tmp_path, "whoami", "--json", token=new)
        assert me.returncode == 0, me.stderr
        assert '"username": "admin"' in me.stdout
        # A recovered admin revokes nothing: the old token still works.
        assert _tether(env, tmp_path, "whoami", token=old).returncode == 0

        events = httpx.get(
            f"{url}/v1/audit/events",
            params={"type": "admin.recovered"},
            headers={"Authorization": f"Bearer {new}"},
        ).json()["items"]
        assert len(events) == 1
        event = events[0]
        assert event["actor"] == "system"
        assert event["details"]["os_user"] == getpass.getuser()
        assert event["details"]["host"] == socket.gethostname()
        assert event["details"]["token_id"] in made[0].name

        printed = _tether(env, tmp_path, "admin", "recover", "--print")
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.startswith("tth_")
        assert len(printed.stdout.splitlines()) == 1  # T=$(tether admin recover --print)
        assert "shown once" in printed.stderr
        assert len(list(data.glob("admin.*.recovered.*.token"))) == 1  # no file this time
        assert _tether(env, tmp_path, "whoami", token=printed.stdout.strip()).returncode == 0

        verified = _tether(env, tmp_path, "audit", "verify", token=new)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.startswith("ok:")

        made_sue = _tether(env, tmp_path, "users", "create", "sue", "--role", "supervisor",
                           token=new)  # fmt: skip
        assert made_sue.returncode == 0, made_sue.stderr
        refused = _tether(env, tmp_path, "admin", "recover", "--user", "sue")
        assert refused.returncode == 1
        assert refused.stderr == (
            "error: user 'sue' is a supervisor, not an admin — only an admin is recovered\n"
        )


def test_recover_without_the_deployment_is_one_line_and_creates_nothing(
    backend: Backend, tmp_path: Path
) -> None:
    with running_server(backend, tmp_path) as (_url, env):
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
