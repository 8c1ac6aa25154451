"""``tether gateway add|remove|list``: upstreams declared in ``tether.toml`` from the command
line, checked as the server loads them, the file's comments kept, a bad entry refused with
one line naming the field and the file unchanged."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.serverproc import run_cli
from tether.config import load_settings

ORIGINAL = '# ops: the gateway of the support org\nlog_level = "info"  # keep me\n'


def _tether(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env.update(TETHER_CONFIG=str(config), TETHER_URL="http://127.0.0.1:9")  # nothing listens
    return run_cli("gateway", *args, env=env, cwd=config.parent)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tether.toml"
    path.write_text(ORIGINAL)
    return path


def test_added_upstreams_are_what_the_server_loads_and_comments_stay(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    added = _tether(config, "add", "payments", "--url", "http://127.0.0.1:8765/mcp", "--header",
                    "X-Api-Key", "--secret", "payments-key", "--timeout", "5")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "restart `tether serve`" in added.stdout
    oauth = _tether(config, "add", "crm", "--url", "https://crm.example/mcp", "--token-url",
                    "https://crm.example/oauth/token", "--client-id", "tether",
                    "--client-secret", "crm-client", "--scope", "tools", "--json")  # fmt: skip
    assert oauth.returncode == 0, oauth.stderr
    assert json.loads(oauth.stdout)["upstream"]["auth"]["kind"] == "client_credentials"
    stdio = _tether(config, "add", "local", "--command", "python -m tickets --stdio",
                    "--env", "LOG=debug")  # fmt: skip
    assert stdio.returncode == 0, stdio.stderr

    text = config.read_text()
    assert text.startswith(ORIGINAL)
    monkeypatch.setenv("TETHER_CONFIG", str(config))
    for name in [k for k in os.environ if k.startswith("TETHER_") and k != "TETHER_CONFIG"]:
        monkeypatch.delenv(name)
    loaded = {u.name: u for u in load_settings().gateway_upstreams}
    assert list(loaded) == ["payments", "crm", "local"]
    assert loaded["payments"].auth.kind == "header"
    assert loaded["payments"].auth.secret == "payments-key"  # type: ignore[union-attr]
    assert loaded["payments"].timeout_seconds == 5
    assert loaded["crm"].auth.scope == "tools"  # type: ignore[union-attr]
    assert loaded["local"].command == ["python", "-m", "tickets", "--stdio"]
    assert loaded["local"].env == {"LOG": "debug"}

    listed = _tether(config, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "did not answer" in listed.stderr  # the server's status is missing, said so
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["payments", "crm", "local"]
    assert rows[0]["auth"] == "header X-Api-Key ← secret payments-key"
    assert rows[0]["up"] is None

    removed = _tether(config, "remove", "crm")
    assert removed.returncode == 0, removed.stderr
    offline = json.loads(_tether(config, "list", "--offline", "--json").stdout)
    assert [r["name"] for r in offline] == ["payments", "local"]
    assert config.read_text().startswith(ORIGINAL)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["add", "bad", "--url", "ftp://x/mcp"], "url must be an absolute http(s) URL"),
        (["add", "Pay.ments", "--url", "http://x/mcp"], "name: lowercase letters"),
        (["add", "both", "--url", "http://x/mcp", "--command", "srv"], "either url or command"),
        (["add", "none"], "either url or command"),
        (["add", "half", "--url", "http://x/mcp", "--header", "X-Api-Key"], "auth.header.secret"),
        (["add", "hop", "--url", "http://x/mcp", "--header", "Host", "--secret", "s"],
         "cannot carry a credential"),
        (["add", "cc", "--url", "http://x/mcp", "--token-url", "http://t/token"],
         "client_id"),
        (["add", "keep", "--url", "http://x/mcp"], "configured already — add --replace"),
        (["remove", "ghost"], "no upstream named 'ghost'"),
    ],
)  # fmt: skip
def test_a_bad_upstream_is_one_line_and_the_file_is_unchanged(
    config: Path, args: list[str], needle: str
) -> None:
    first = _tether(config, "add", "keep", "--url", "http://127.0.0.1:1/mcp")
    assert first.returncode == 0, first.stderr
    before = config.read_text()
    got = _tether(config, *args)
    assert got.returncode != 0
    lines = got.stderr.strip().splitlines()
    assert len(lines) == 1, got.stderr
    assert needle in lines[0]
    assert "Traceback" not in got.stderr
    assert config.read_text() == before


def test_replace_swaps_an_upstream_in_place(config: Path) -> None:
    assert _tether(config, "add", "a", "--url", "http://127.0.0.1:1/mcp").returncode == 0
    assert _tether(config, "add", "b", "--url", "http://127.0.0.1:2/mcp").returncode == 0
    swapped = _tether(config, "add", "a", "--url", "http://127.0.0.1:3/mcp", "--replace")
    assert swapped.returncode == 0, swapped.stderr
    rows = json.loads(_tether(config, "list", "--offline", "--json").stdout)
    assert [(r["name"], r["target"]) for r in rows] == [
        ("a", "http://127.0.0.1:3/mcp"), ("b", "http://127.0.0.1:2/mcp")]  # fmt: skip


def test_a_file_that_is_not_toml_is_refused_untouched(config: Path) -> None:
    config.write_text("gateway_upstreams = [\n")
    got = _tether(config, "add", "a", "--url", "http://127.0.0.1:1/mcp")
    assert got.returncode != 0
    assert "not valid TOML" in got.stderr
    assert config.read_text() == "gateway_upstreams = [\n"
