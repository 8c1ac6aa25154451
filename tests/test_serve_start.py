"""``tether serve`` start-up (issue 13, item 5): a port in use is refused before anything is
claimed or created, and every start says where the data, the database, the admin token and
the API docs are — the database without its password."""

from __future__ import annotations

import os
import socket
from dataclasses import replace
from pathlib import Path

import httpx2 as httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Backend
from tests.serverproc import run_cli, running_server

pytestmark = pytest.mark.slow
PASSWORD = "s3cret-never-printed"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_port_in_use_is_refused_before_anything_is_claimed(tmp_path: Path, host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    with socket.socket(family) as other:
        try:
            other.bind((host, 0))
        except OSError:
            pytest.skip(f"no {host} on this machine")
        other.listen()
        port = other.getsockname()[1]
        result = run_cli("serve", "--host", host, cwd=tmp_path,
                         env={**env, "TETHER_PORT": str(port)})  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: port {port} on {host} is in use — stop the other process or set TETHER_PORT"
    ]
    assert result.stdout == ""
    assert not (tmp_path / ".tether").exists()  # no key, no database, no admin token


def _start_lines(log: Path) -> dict[str, str]:
    lines = {}
    for line in log.read_text().splitlines():
        for label in ("data dir", "database", "admin token", "API docs"):
            if line.startswith(label + " "):
                lines[label] = line.removeprefix(label).strip()
    return lines


def test_every_start_says_where_things_are(backend: Backend, tmp_path: Path) -> None:
    if backend.name == "postgresql":
        backend = replace(
            backend,
            url=make_url(backend.url).set(password=PASSWORD).render_as_string(hide_password=False),
        )
    data_dir = (tmp_path / ".tether").resolve()
    for start in ("first", "second"):
        with running_server(backend, tmp_path) as (url, _env):
            lines = _start_lines(tmp_path / "server.log")
            assert lines.get("data dir") == str(data_dir), start
            assert lines.get("admin token") == str(data_dir / "admin.token"), start
            assert lines.get("API docs") == f"{url}/docs", start
            assert httpx.get(lines["API docs"], timeout=10).status_code == 200
            shown = make_url(lines["database"])
            expected = make_url(backend.url)
            assert (shown.drivername, shown.host, shown.database) == (
                expected.drivername, expected.host, expected.database,
            ), start  # fmt: skip
            log = (tmp_path / "server.log").read_text()
            assert "serving on" in log
            if backend.name == "postgresql":
                assert PASSWORD not in log
                assert shown.password == "***"
