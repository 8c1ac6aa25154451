"""The CLI's one ``except``: every :class:`TetherError` is printed as its diagnostic on one
line; nothing, known or not, is printed as ``error: ClassName: …``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from tests.conftest import backend_for
from tests.serverproc import run_cli, running_server
from tether.cli import main as cli_main
from tether.cli.client import CliError
from tether.config import load_settings
from tether.credentials.errors import InvalidDPoPProof
from tether.errors import AgentNotFound, ConfigurationError, TetherError, ValidationFailed


def _run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], exc: Exception
) -> str:
    def app(**_: Any) -> None:
        raise exc

    monkeypatch.setattr(cli_main, "app", app)
    monkeypatch.setattr(cli_main, "warn_unknown_variables", lambda _app: None)  # reads app
    monkeypatch.setattr(sys, "argv", ["tether", "agents", "list"])
    monkeypatch.delenv("TETHER_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exited:
        cli_main.main()
    assert exited.value.code == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err.strip()


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (
            CliError("agent_not_found: no agent 'agt_x' [HTTP 404]"),
            "error: agent_not_found: no agent 'agt_x' [HTTP 404]",
        ),
        (AgentNotFound("no agent 'agt_x'"), "error: no agent 'agt_x'"),
        (ValidationFailed("must be positive", field="ttl"), "error: ttl: must be positive"),
        (ValidationFailed("ttl must be positive", field="ttl"), "error: ttl must be positive"),
        (
            InvalidDPoPProof("DPoP proof rejected: typ", reason="typ"),
            "error: DPoP proof rejected: typ",
        ),
        (
            TypeError("unsupported operand"),
            "error: unexpected failure: unsupported operand (run with --verbose for details)",
        ),
        (
            OSError(13, "Permission denied"),
            "error: unexpected failure: [Errno 13] Permission denied (run with --verbose for "
            "details)",
        ),
    ],
)
def test_one_line_and_never_a_class_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], exc: Exception, line: str
) -> None:
    printed = _run(monkeypatch, capsys, exc)
    assert printed == line
    assert type(exc).__name__ not in printed


def test_every_error_class_shares_the_base() -> None:
    assert issubclass(CliError, TetherError)
    assert issubclass(InvalidDPoPProof, TetherError)


def test_bad_settings_are_a_configuration_error_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(trust_domain="Upper.Case")
    assert caught.value.diagnostic().startswith("invalid settings: trust_domain: ")


# -- the real command line --------------------------------------------------------------------

CLASS_NAMES = ("MissingParameter", "UsageError", "NoArgsIsHelpError", "BadParameter",
               "NoSuchOption", "AttributeError", "Traceback", "Error:")  # fmt: skip


def _tether(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    return run_cli(*args, env={**base, **(env or {})})


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, result.stdout
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert " — " in lines[0], lines[0]  # what was wrong — what to do
    assert not any(name in lines[0] for name in CLASS_NAMES), lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["agents", "show"], "Missing argument 'agent_id' — see 'tether agents show --help'"),
        (["users", "create"], "see 'tether users create --help'"),
        (["agents", "create", "--name"], "'--name' requires an argument"),
        (["agents", "list", "--limit", "many"], "'--limit'"),
        (["bogus"], "No such command 'bogus' — see 'tether --help'"),
        (["--nope"], "No such option: --nope"),
    ],
)
def test_usage_errors_are_one_line_without_class_names(args: list[str], needle: str) -> None:
    result = _tether(*args)
    assert result.returncode == 2
    assert needle in _one_error_line(result)


def test_a_group_without_a_subcommand_prints_its_help_and_succeeds() -> None:
    groups = [group.name for group in cli_main.app.registered_groups]
    assert {"agents", "users", "audit", "policy"} <= set(groups)
    for name in [*groups, None]:
        result = _tether(*([name] if name else []))
        assert result.returncode == 0, (name, result.stderr)
        assert result.stderr == ""
        assert result.stdout.startswith(f"Usage: tether {name or ''}".rstrip()), result.stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("cli-errors")
    with backend_for("sqlite", tmp) as backend, running_server(backend, tmp) as (_url, env):
        yield env


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [
        ["agents", "show", ""],
        ["agents", "show", "", "--json"],
        ["agents", "show", ".."],
        ["agents", "kill", "", "--reason", "r", "--yes", "--json"],
        ["credentials", "list", " ".strip()],
        # would name another path: the server decodes %2F before routing
        ["agents", "show", "agt_x/credentials"],
        ["agents", "show", "agt_x/credentials", "--json"],
        ["users", "show", "admin?x=1"],
        ["approvals", "show", "apr_x#frag"],
    ],
)
def test_an_empty_id_is_refused_before_any_request(server: dict[str, str], args: list[str]) -> None:
    line = _one_error_line(_tether(*args, env=server))
    assert "is empty or a relative path" in line


@pytest.mark.slow
def test_api_errors_say_what_to_do_on_one_line(server: dict[str, str]) -> None:
    missing = _one_error_line(_tether("agents", "show", "agt_" + "0" * 26, env=server))
    assert missing.startswith("error: agent_not_found: ")
    assert missing.endswith("[HTTP 404] — check the id: the list commands show what exists")
    invalid = _one_error_line(_tether("agents", "show", "agt_" + "x" * 300, env=server))
    assert invalid.startswith("error: validation_error: agent_id: ")
    assert invalid.endswith("[HTTP 422] — correct the value and run the command again")
    denied = _one_error_line(_tether("agents", "list", env={**server, "TETHER_TOKEN": "tth_no"}))
    assert "[HTTP 401] — set TETHER_TOKEN" in denied
    down = _one_error_line(
        _tether("agents", "list", env={**server, "TETHER_URL": "http://127.0.0.1:9"})
    )
    assert down.startswith("error: cannot reach Tether at http://127.0.0.1:9 (")


class _Redirector(BaseHTTPRequestHandler):
    """A web server that sends everything elsewhere, as a reverse proxy sends http to https."""

    def do_GET(self) -> None:
        self.send_response(301)
        self.send_header("Location", f"https://tether.example{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def redirecting_url() -> Iterator[str]:
    httpd = HTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("args", [["agents", "show", "agt_x", "--json"], ["agents", "list"]])
def test_a_redirect_is_never_success(redirecting_url: str, args: list[str]) -> None:
    result = _tether(*args, env={"TETHER_URL": redirecting_url, "TETHER_TOKEN": "tth_x"})
    line = _one_error_line(result)
    assert "with a redirect to https://tether.example/v1/agents" in line
    assert "[HTTP 301] — check TETHER_URL" in line
