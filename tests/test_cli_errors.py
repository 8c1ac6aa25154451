"""The CLI's one ``except``: every :class:`TetherError` is printed as its diagnostic on one
line; nothing, known or not, is printed as ``error: ClassName: …``."""

from __future__ import annotations

import sys
from typing import Any

import pytest

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
