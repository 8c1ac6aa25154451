"""One configuration source (issue 13, items 3 and 9): the CLI finds the server the server's
own settings describe — TETHER_PORT, tether.toml, TETHER_PUBLIC_URL — an explicit ``--url`` or
TETHER_URL wins, ``whoami`` names the server it talked to; unknown TETHER_ variables warn,
and a bad tether.toml is named, file and key, in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import backend_for
from tests.serverproc import free_port, run_cli, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """A real server on a free port (never 8700), its data dir, and an environment with no
    TETHER_ variable at all: each test says what the CLI is told."""
    workdir = tmp_path_factory.mktemp("server")
    with backend_for("sqlite", workdir) as backend, running_server(backend, workdir) as (url, env):
        assert not url.endswith(":8700")
        bare = {k: v for k, v in env.items() if not k.startswith("TETHER_")}
        yield url, workdir / ".tether", bare


def tether(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env, cwd=cwd)


def whoami(cwd: Path, env: dict[str, str], *args: str) -> dict[str, str]:
    result = tether(cwd, env, *args, "whoami", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no warning: every variable given is one Tether reads
    me: dict[str, str] = json.loads(result.stdout)
    return me


def test_cli_finds_the_server_by_tether_port(
    server: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    url, data_dir, env = server
    port = url.rsplit(":", 1)[1]
    me = whoami(tmp_path, {**env, "TETHER_PORT": port, "TETHER_DATA_DIR": str(data_dir)})
    assert me["username"] == "admin"
    assert me["server"] == url


def test_cli_finds_the_server_and_token_by_tether_toml(
    server: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    url, data_dir, env = server
    port = url.rsplit(":", 1)[1]
    (tmp_path / "tether.toml").write_text(
        f"port = {port}\ndata_dir = {json.dumps(str(data_dir))}\n"
    )
    me = whoami(tmp_path, env)  # ./tether.toml: the port, and the admin token in its data dir
    assert (me["username"], me["server"]) == ("admin", url)

    elsewhere = tmp_path / "etc" / "tether.toml"
    elsewhere.parent.mkdir()
    (tmp_path / "tether.toml").rename(elsewhere)
    me = whoami(tmp_path, {**env, "TETHER_CONFIG": str(elsewhere)})
    assert me["server"] == url


def test_cli_uses_the_public_url_and_loopback_for_a_wildcard_host(
    server: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    url, data_dir, env = server
    port = url.rsplit(":", 1)[1]
    base = {**env, "TETHER_DATA_DIR": str(data_dir)}
    me = whoami(tmp_path, {**base, "TETHER_PUBLIC_URL": url + "/", "TETHER_PORT": "1"})
    assert me["server"] == url
    me = whoami(tmp_path, {**base, "TETHER_HOST": "0.0.0.0", "TETHER_PORT": port})
    assert me["server"] == url  # http://127.0.0.1:<port>, not http://0.0.0.0:<port>


def test_explicit_url_wins_over_settings(
    server: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    url, data_dir, env = server
    closed = str(free_port())  # nothing listens there
    (tmp_path / "tether.toml").write_text(f"port = {closed}\n")
    base = {**env, "TETHER_DATA_DIR": str(data_dir), "TETHER_PORT": closed}
    assert whoami(tmp_path, base, "--url", url)["server"] == url
    assert whoami(tmp_path, {**base, "TETHER_URL": url})["server"] == url
    # ...and the other way round: --url is not second-guessed by a right TETHER_PORT.
    port = url.rsplit(":", 1)[1]
    wrong = f"http://127.0.0.1:{closed}"
    result = tether(tmp_path, {**base, "TETHER_PORT": port}, "--url", wrong, "whoami")
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach Tether at {wrong}")


def test_whoami_names_the_server_for_people(
    server: tuple[str, Path, dict[str, str]], tmp_path: Path
) -> None:
    url, data_dir, env = server
    result = tether(tmp_path, {**env, "TETHER_DATA_DIR": str(data_dir)}, "--url", url, "whoami")
    assert result.returncode == 0, result.stderr
    assert any(line.split() == ["server", url] for line in result.stdout.splitlines())


# -- the environment and the file ----------------------------------------------------------


def _quiet_env() -> dict[str, str]:
    """This environment without a TETHER_ variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


def test_a_misspelt_variable_warns_with_the_closest_name(tmp_path: Path) -> None:
    env = {**_quiet_env(), "TETHER_PROT": "9000", "TETHER_DATA_DIRR": "/x"}
    result = tether(tmp_path, env, "--help")
    assert result.returncode == 0
    warnings = result.stderr.splitlines()
    assert warnings == [
        "warning: TETHER_DATA_DIRR is not a Tether setting and is ignored "
        "(closest known name: TETHER_DATA_DIR)",
        "warning: TETHER_PROT is not a Tether setting and is ignored "
        "(closest known name: TETHER_PORT)",
    ]


def test_the_server_warns_too(tmp_path: Path) -> None:
    # `tether serve` on a port in use: it warns, then refuses.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        env = {**_quiet_env(), "TETHER_PORT": port, "TETHER_LOG_LEVL": "debug"}
        result = tether(tmp_path, env, "serve")
    assert result.returncode == 1
    first = result.stderr.splitlines()[0]
    assert first == (
        "warning: TETHER_LOG_LEVL is not a Tether setting and is ignored "
        "(closest known name: TETHER_LOG_LEVEL)"
    )


def test_the_cli_and_test_variables_do_not_warn(tmp_path: Path) -> None:
    env = {
        **_quiet_env(),
        "TETHER_URL": "http://127.0.0.1:1",
        "TETHER_TOKEN": "t",
        "TETHER_DEBUG": "",
        "TETHER_CLIENT_SECRET": "s",  # an option's envvar (tether token)
        "TETHER_CONFIG": str(tmp_path / "tether.toml"),
        "TETHER_TEST_POSTGRES_URL": "postgresql://x",
        "TETHER_BENCH_ANYTHING": "1",
        "TETHER_PORT": "8701",
        "tether_log_level": "debug",  # settings are read case-insensitively
    }
    (tmp_path / "tether.toml").write_text("")
    result = tether(tmp_path, env, "--help")
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("prot = 9000\n", "tether.toml: unknown key 'prot' (did you mean 'port'?)"),
        ('port = "high"\n', "tether.toml: key 'port': Input should be a valid integer"),
        ("port = \n", "tether.toml: not valid TOML: Invalid value (at line 1, column 8)"),
        ('trust_domain = "Corp:443"\n', "tether.toml: key 'trust_domain': Value error"),
    ],
)
def test_a_bad_config_file_names_the_file_and_the_key(
    tmp_path: Path, content: str, expected: str
) -> None:
    (tmp_path / "tether.toml").write_text(content)
    for args in (["whoami"], ["serve"]):
        result = tether(tmp_path, _quiet_env(), *args)
        assert result.returncode == 1
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("error: ")
        assert f"{tmp_path / expected}" in lines[0]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / ".tether").exists()  # serve claimed nothing


def test_a_bad_variable_is_named_as_the_variable(tmp_path: Path) -> None:
    env = {**_quiet_env(), "TETHER_PORT": "eighty"}
    result = tether(tmp_path, env, "whoami")
    assert result.returncode == 1
    assert result.stderr.startswith("error: invalid settings: TETHER_PORT: Input should be")
    env = {**_quiet_env(), "TETHER_APPROVAL_WEBHOOKS": "https://not-a-list"}
    result = tether(tmp_path, env, "serve")
    assert result.stderr.splitlines() == [
        "error: invalid settings: TETHER_APPROVAL_WEBHOOKS is not valid JSON — give a JSON "
        "value, e.g. '[\"…\"]'"
    ]


def test_a_missing_config_file_named_by_tether_config_is_an_error(tmp_path: Path) -> None:
    env = {**_quiet_env(), "TETHER_CONFIG": str(tmp_path / "nope.toml")}
    result = tether(tmp_path, env, "whoami")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: TETHER_CONFIG names {tmp_path / 'nope.toml'}, which does not exist — create "
        "it or unset TETHER_CONFIG"
    ]


def test_secret_files_rank_between_the_environment_and_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tether.config import load_settings

    for name in [n for n in os.environ if n.upper().startswith("TETHER_")]:
        monkeypatch.delenv(name)
    secrets = tmp_path / "credentials"
    secrets.mkdir()
    (secrets / "tether_master_key").write_text("from-the-secret-file\n")
    (tmp_path / "tether.toml").write_text(
        'master_key = "from-toml"\ntrust_domain = "corp.example"\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(secrets))  # systemd's LoadCredential=
    settings = load_settings()
    assert settings.master_key == "from-the-secret-file"  # stripped of its newline
    assert settings.trust_domain == "corp.example"  # the file still counts for the rest
    monkeypatch.setenv("TETHER_MASTER_KEY", "from-env")
    assert load_settings().master_key == "from-env"


def test_an_unknown_key_inside_a_table_is_named_where_it_is(tmp_path: Path) -> None:
    """A misspelt key inside monitoring's rules or an upstream is an error at that place —
    in the variable it came from — not an unknown top-level key of the file."""
    env = {**_quiet_env(),
           "TETHER_MONITOR": '{"rules": [{"name": "x", "when": {"requests": 5}, "score": 1, '
                             '"because": "b", "becuase": "typo"}]}'}  # fmt: skip
    result = tether(tmp_path, env, "serve")
    assert result.returncode == 1
    assert "TETHER_MONITOR.rules[0].becuase: Extra inputs are not permitted" in result.stderr
    assert "unknown key" not in result.stderr
    env = {**_quiet_env(), "TETHER_MONITOR": '{"rules": [{"name": "x", "when": {"reqs": 5}, '
                                              '"score": 1, "because": "b"}]}'}  # fmt: skip
    result = tether(tmp_path, env, "serve")
    assert "unknown signal 'reqs'" in result.stderr
    assert "Traceback" not in result.stderr
