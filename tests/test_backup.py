"""``tether backup`` / ``tether restore``: backup (online) → wipe → restore → ``audit verify``
ok, on SQLite (its backup API) and PostgreSQL (pg_dump / pg_restore, which CI has).

Each test has a deployment of its own: it wipes it."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.conftest import PG_URL, Backend, _Templates, at_head, make_settings
from tests.serverproc import run_cli, running_server, server_env
from tether.bootstrap import prepare
from tether.container import build_services


def _tether(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, cwd=cwd, timeout=120)


def _wipe(backend: Backend, workdir: Path) -> None:
    """Everything gone: the data dir and the database."""
    shutil.rmtree(workdir / ".tether")
    if backend.schema is None:
        for path in workdir.glob("tether.db*"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        return
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {backend.schema} CASCADE"))
    finally:
        admin.dispose()


def test_backup_wipe_restore_verify(backend: Backend, tmp_path: Path) -> None:
    archive = tmp_path / "backup.tar.gz"
    with running_server(backend, tmp_path) as (_url, env):
        assert (
            _tether(env, tmp_path, "users", "create", "carol", "--role", "auditor").returncode == 0
        )
        assert _tether(env, tmp_path, "audit", "checkpoint").returncode == 0
        before = json.loads(_tether(env, tmp_path, "audit", "verify", "--json").stdout)
        assert before["ok"] is True

        done = _tether(env, tmp_path, "backup", str(archive))  # the server is running
        assert done.returncode == 0, done.stderr
        assert "holds the deployment's secrets" in done.stderr
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        again = _tether(env, tmp_path, "backup", str(archive))
        assert again.returncode == 1
        assert again.stderr.startswith(f"error: {archive} exists — ")

    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        assert all(m.mode == 0o600 for m in tar.getmembers())
    dump = "tether.db" if backend.schema is None else "database.dump"
    assert names == {
        "manifest.json", dump, "master.key", "ledger_signing.pem", "checkpoints.jsonl",
        "admin.token",
    }  # fmt: skip

    refused = _tether(env, tmp_path, "restore", str(archive))
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: the configured database already holds a Tether")

    _wipe(backend, tmp_path)
    restored = _tether(env, tmp_path, "restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    assert "restored deployment" in restored.stdout
    assert stat.S_IMODE((tmp_path / ".tether" / "master.key").stat().st_mode) == 0o600

    with running_server(backend, tmp_path) as (_url, env):
        after = _tether(env, tmp_path, "audit", "verify", "--json")
        assert after.returncode == 0, after.stdout + after.stderr
        result = json.loads(after.stdout)
        assert result["ok"] is True
        assert result["checked"] >= before["checked"]
        assert result["external_checkpoints"] >= 1  # the checkpoint file came back too
        carol = _tether(env, tmp_path, "users", "show", "carol", "--json")
        assert json.loads(carol.stdout)["role"] == "auditor"

    forced = _tether(env, tmp_path, "restore", str(archive), "--force")
    assert forced.returncode == 0, forced.stderr


def test_restore_refuses_what_is_not_a_backup_and_a_differing_key(
    backend: Backend, tmp_path: Path, schema_templates: _Templates
) -> None:
    # A deployment as a first start leaves it, made in this process: the backup (offline
    # here; the test above backs up a running server) is what this test restores from.
    at_head(backend, schema_templates)
    services = build_services(make_settings(backend, tmp_path / ".tether"))
    try:
        prepare(services)
    finally:
        services.close()
    env = server_env(backend, tmp_path / ".tether", 9)  # no server: nothing listens on 9
    archive = tmp_path / "backup.tar.gz"
    assert _tether(env, tmp_path, "backup", str(archive)).returncode == 0
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_text("hello")
    not_one = _tether(env, tmp_path, "restore", str(bogus))
    assert not_one.returncode == 1
    assert (
        not_one.stderr
        == f"error: archive: {bogus} is not a Tether backup (not a readable tar.gz)\n"
    )

    _wipe(backend, tmp_path)
    data = tmp_path / ".tether"
    data.mkdir()
    (data / "master.key").write_text("another deployment's key\n")
    differing = _tether(env, tmp_path, "restore", str(archive))
    assert differing.returncode == 1
    assert differing.stderr.startswith(f"error: {data / 'master.key'} differs from the backup's")
    forced = _tether(env, tmp_path, "restore", str(archive), "--force")
    assert forced.returncode == 0, forced.stderr
    aside = list(data.glob("master.key.before-restore-*"))
    assert [p.read_text() for p in aside] == ["another deployment's key\n"]  # never deleted
    assert "kept the previous master.key" in forced.stdout
