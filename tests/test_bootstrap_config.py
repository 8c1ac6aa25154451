"""First start, root keys, settings sources, and ``tether db upgrade``."""

from __future__ import annotations

import base64
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from tests.conftest import Backend, make_settings
from tests.serverproc import run_cli
from tether.bootstrap import prepare
from tether.config import Settings
from tether.container import Services, build_services
from tether.db import migrate
from tether.errors import ConfigurationError, Unauthenticated


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_creates_admin_token_and_keys_0600(backend: Backend, tmp_path: Path) -> None:
    settings = make_settings(backend, tmp_path / "data")
    svc = build_services(settings)
    try:
        report = prepare(svc)
        token_path = settings.admin_token_path
        for path in (
            token_path,
            tmp_path / "data" / "master.key",
            tmp_path / "data" / "ledger_signing.pem",
        ):
            assert path.exists()
            assert _mode(path) == 0o600, path
        assert any("admin.token" in line for line in report.lines())
        admin = svc.users.authenticate(token_path.read_text().strip())
        assert admin.name == "admin"
        assert admin.is_admin
        # A second start changes nothing: no second admin, same token file, same keys.
        before = token_path.read_text()
        svc.close()
        svc = build_services(settings)
        again = prepare(svc)
        assert again.admin_token_path is None
        assert again.created_files == []
        assert token_path.read_text() == before
        assert migrate.is_current(svc.db)
    finally:
        svc.close()


def test_keys_from_environment_write_no_files(backend: Backend, tmp_path: Path) -> None:
    ledger_pem = (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    master = base64.b64encode(b"k" * 32).decode()
    settings = make_settings(
        backend, tmp_path / "data", master_key=master, ledger_signing_key=ledger_pem
    )
    svc = build_services(settings)
    try:
        prepare(svc)
        assert not (tmp_path / "data" / "master.key").exists()
        assert not (tmp_path / "data" / "ledger_signing.pem").exists()
        assert svc.keys.master_key == b"k" * 32
    finally:
        svc.close()


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_bad_master_key_is_a_clear_configuration_error(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigurationError, match=r"(?i)master.key"):
        build_services(Settings(data_dir=tmp_path, master_key=bad))


def test_revoked_and_unknown_tokens_are_rejected(backend: Backend, tmp_path: Path) -> None:
    svc = build_services(make_settings(backend, tmp_path / "data"))
    try:
        prepare(svc)
        with pytest.raises(Unauthenticated):
            svc.users.authenticate("tth_" + "x" * 43)
        with pytest.raises(Unauthenticated):
            svc.users.authenticate("Bearer nonsense")
    finally:
        svc.close()


def test_settings_precedence_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "tether.toml"
    toml.write_text('port = 9100\ntrust_domain = "corp.example"\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("TETHER_CONFIG", str(toml))
    monkeypatch.setenv("TETHER_PORT", "9200")
    settings = Settings()
    assert settings.port == 9200  # env wins
    assert settings.trust_domain == "corp.example"  # from the file
    assert settings.base_url == "http://0.0.0.0:9200"
    assert settings.resolved_database_url.startswith("sqlite:///")


@pytest.mark.parametrize("domain", ["Upper.Case", "host:8080", "a/b", "a..b", ""])
def test_trust_domain_must_be_spiffe_safe(domain: str) -> None:
    with pytest.raises(ValidationError):
        Settings(trust_domain=domain)


def test_db_upgrade_command(tmp_path: Path) -> None:
    env = {"TETHER_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin"}
    first = run_cli("db", "upgrade", env=env)
    assert first.returncode == 0, first.stderr
    assert "was empty" in first.stdout
    second = run_cli("db", "upgrade", env=env)
    assert "unchanged" in second.stdout


@pytest.mark.parametrize("on", [False, True])
def test_opentelemetry_is_opt_in(make_services: Any, on: bool) -> None:
    """TETHER_OPENTELEMETRY: FastAPI's native instrumentation is off unless asked for (it
    looks the global providers up on every request otherwise)."""
    from tether.api.app import create_app

    config = create_app(make_services(opentelemetry=on))._telemetry
    assert (config["tracing"], config["metrics"], config["logs"]) == (on, on, on)


def test_every_domain_registers_its_maintenance(services: Services) -> None:
    """The server's loop runs what the domains declare, in order: the ledger's head first
    (so a long batch of expiries below is anchored on the next round at the latest)."""
    assert [t.name for t in services.maintenance] == [
        "ledger.checkpoint",
        "keys.rotate",
        "oauth.purge_replays",
        "oauth.purge_tokens",
        "oauth.finish_cut_offs",
        "approvals.expire",
        "agents.expire",
        "agents.recertify",
        "runtime.purge",
        "secrets.purge_leases",
        "secrets.drop_logins",
        "monitor.purge",
    ]
    for task in services.maintenance:
        task.run()  # each is safe to run at any time, on any node
