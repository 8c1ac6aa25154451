"""What a process loads, not how long it takes: ``tether --version`` and ``--help`` load
neither the HTTP client, the settings, Rich nor any server code; an API command loads no server
code; the server's modules load neither psycopg on SQLite, nor httpx2 without a webhook or a
witness, nor Alembic before a migration. Each is asserted by the modules a fresh interpreter
holds afterwards, so a new top-level import that undoes one fails here, whatever the machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import free_port

# What neither the CLI's start nor a command that talks to the API needs.
SERVER = {
    "alembic",
    "cedarpy",
    "fastapi",
    "joserfc",
    "psycopg",
    "sqlalchemy",
    "starlette",
    "tether.container",
    "uvicorn",
}
# What only some commands need: the HTTP client, the settings, tables. (Not pydantic: Typer
# itself coerces a command's options with it.)
CLIENT = {"httpx2", "httpcore2", "pydantic_settings", "rich", "tether.config"}

_REPORT = "import json, sys\nprint('\\nMODULES ' + json.dumps(sorted(sys.modules)))\n"


def _loaded(code: str, cwd: Path, **env: str) -> tuple[set[str], str]:
    """The modules (each also as its top-level package) a fresh interpreter holds after
    ``code``, and what it wrote on stderr. No ``TETHER_*`` variable is set but ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("TETHER_")}
    result = subprocess.run(
        [sys.executable, "-c", code + "\n" + _REPORT],
        cwd=cwd, env={**clean, **env}, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    listed = result.stdout.rpartition("MODULES ")[2]
    names = set(json.loads(listed))
    return names | {name.partition(".")[0] for name in names}, result.stderr


def _cli(*args: str) -> str:
    """``tether ARGS`` as ``python -m tether`` runs it, its exit caught so the report runs."""
    return (
        "import sys\n"
        f"sys.argv = ['tether', *{list(args)!r}]\n"
        "from tether.cli.main import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
    )


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("agents", "--help")])
def test_version_and_help_load_no_client_and_no_server(tmp_path: Path, args: tuple[str]) -> None:
    loaded, _ = _loaded(_cli(*args), tmp_path)
    assert "typer" in loaded  # the command line was parsed
    assert loaded & (SERVER | CLIENT) == set()


def test_with_url_and_token_set_the_settings_are_not_read(tmp_path: Path) -> None:
    """TETHER_URL and TETHER_TOKEN are the CLI's own options: checking them for misspellings
    needs no settings."""
    env = {"TETHER_URL": "http://127.0.0.1:9", "TETHER_TOKEN": "t"}
    loaded, _ = _loaded(_cli("--version"), tmp_path, **env)
    assert loaded & (SERVER | CLIENT) == set()


def test_an_unknown_variable_still_loads_the_settings_to_warn(tmp_path: Path) -> None:
    loaded, err = _loaded(_cli("--version"), tmp_path, TETHER_PROT="8700")
    assert "warning: TETHER_PROT is not a Tether setting" in err
    assert "pydantic_settings" in loaded


def test_an_api_command_loads_the_client_and_no_server_code(tmp_path: Path) -> None:
    # Nothing listens there: the command fails after building its client and sending.
    env = {"TETHER_URL": f"http://127.0.0.1:{free_port()}", "TETHER_TOKEN": "t"}
    loaded, err = _loaded(_cli("agents", "list", "--json"), tmp_path, **env)
    assert "cannot reach Tether" in err
    assert "httpx2" in loaded
    assert loaded & (SERVER | {"pydantic_settings", "tether.config"}) == set()


def test_an_api_command_reads_the_settings_when_it_needs_the_token_file(tmp_path: Path) -> None:
    env = {"TETHER_URL": f"http://127.0.0.1:{free_port()}"}
    loaded, err = _loaded(_cli("agents", "list", "--json"), tmp_path, **env)
    assert "cannot reach Tether" in err
    assert "tether.config" in loaded
    assert loaded & SERVER == set()


def test_the_api_loads_no_psycopg_httpx2_or_alembic_on_import(tmp_path: Path) -> None:
    """A SQLite server with no webhook or witness: psycopg is the PostgreSQL listener's,
    httpx2 the senders', Alembic a migration's (``tether serve`` migrates, then loads it)."""
    loaded, _ = _loaded("import tether.api.app, tether.bootstrap", tmp_path)
    assert {"fastapi", "tether.container", "sqlalchemy"} <= loaded
    assert loaded & {"psycopg", "httpx2", "alembic", "rich", "typer"} == set()


def test_backup_does_not_load_the_wiring(tmp_path: Path) -> None:
    loaded, _ = _loaded("import tether.backup", tmp_path)
    assert "tether.bootstrap" in loaded
    assert loaded & {"tether.container", "fastapi", "cedarpy", "alembic"} == set()


def test_the_wiring_of_a_sqlite_server_without_webhooks_loads_no_http_client(
    tmp_path: Path,
) -> None:
    code = (
        "from tether.config import load_settings\n"
        "from tether.container import build_services\n"
        f"build_services(load_settings(data_dir={str(tmp_path / '.tether')!r})).close()\n"
    )
    loaded, _ = _loaded(code, tmp_path)
    assert "tether.container" in loaded
    assert loaded & {"httpx2", "psycopg", "alembic"} == set()
