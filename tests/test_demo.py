"""``tether demo`` as a user runs it: a process of its own, no standard input, in an empty
directory. It starts ``tether serve`` (two workers) and the example upstream, plays the story
and exits 0 with every step said — the approval, the denials, the kill's propagation figure,
the rollback restoring the upstream, the ledger verifying, the console's URL and sign-in —
its processes stopped and its temporary data dir removed. ``--json`` and ``--data-dir`` keep
the figures and the deployment; ``--keep`` leaves it running (the console signs the printed
user in, the CLI reaches it) until Ctrl-C. Wall time is the issue's to judge, not asserted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests import forkserver
from tests.serverproc import http_client, run_cli

pytestmark = pytest.mark.slow

_STEPS = [
    r"\[1/10\] Tether serving at http://127\.0\.0\.1:\d+ \(2 workers, SQLite\)",
    r"\[2/10\] Policy v1 pushed: .*nobody-reads-the-payments-key",
    r"refund-agent sees the tools policy may let it call: "
    r"get_balance, list_payments, list_refunds, refund\n",
    r"\[4/10\] triage-agent opened tickets t_\d+ and t_\d+ through the MCP gateway",
    r"\[5/10\] refund-agent refunds 40 of pay_2: allowed, refund re_\d+ in [\d.]+ ms",
    r"decision latency: [\d.]+ ms p50",
    r"\[6/10\] refund-agent refunds 400 of pay_1: held for a human — approval (apr_\w+)",
    r"alice approved it from the CLI \(tether approvals approve apr_\w+;.* the identical call "
    r"then went through: refund re_\d+",
    r"\[7/10\] refund-agent reads secret payments-key: denied "
    r"\(nobody-reads-the-payments-key\), on the record as decision evt_\w+",
    r"refund-agent calls payments\.close_ticket on t_\d+: refused, not its tool",
    r"\[8/10\] alice kills refund-agent: the kill answered in [\d.]+ ms",
    r"kill propagation: the first denial \(tether\.agent-not-active\) came [\d.]+ ms after the "
    r"kill was sent; all \d+ decisions asked after it returned, .* denied",
    r"its gateway token is refused at the door \(401\); the kill offers a rollback of 2 "
    r"reversible call\(s\): tether rollback agt_\w+ --since \S+ --dry-run",
    r"payments\.refund +undo +payments\.cancel_refund",
    r"rollback rbk_\w+: 2 undone in [\d.]+ ms.* ops balance 100000 -> 99560 -> 100000, "
    r"refunds re_\d+ cancelled, re_\d+ cancelled",
    r"\[10/10\] Ledger verified \(tether audit verify\): ok — \d+ events",
    r"Console: (http://127\.0\.0\.1:\d+)/console — sign in as alice, password \S{12,}",
]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}


def _told(text: str) -> None:
    """Every step said, in order."""
    at = 0
    for step in _STEPS:
        found = re.compile(step).search(text, at)
        assert found, f"not said after position {at}: {step}\n{text}"
        at = found.end()


def _gone(url: str) -> bool:
    try:
        with http_client(timeout=2) as http:
            http.get(f"{url}/healthz")
    except httpx.TransportError:
        return True
    return False


def test_the_demo_plays_start_to_finish_and_leaves_nothing_behind(tmp_path: Path) -> None:
    done = run_cli("demo", env=_env(), cwd=tmp_path, timeout=110)
    assert done.returncode == 0, done.stdout + done.stderr
    _told(done.stdout)
    assert "Stopped now, its data dir removed" in done.stdout
    url = re.search(r"Console: (\S+)/console", done.stdout)
    data_dir = re.search(r"data dir (\S+)", done.stdout)
    assert url
    assert data_dir
    assert not Path(data_dir.group(1)).exists()
    assert _gone(url.group(1))  # the server was stopped
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def test_json_gives_the_figures_and_data_dir_keeps_the_deployment(tmp_path: Path) -> None:
    kept = tmp_path / "deployment"
    done = run_cli("demo", "--json", "--data-dir", str(kept), env=_env(), cwd=tmp_path,
                   timeout=110)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    _told(done.stderr)  # the story on stderr, the figures alone on stdout
    figures = json.loads(done.stdout)
    assert figures["data_dir"] == str(kept.resolve())
    assert figures["rollback_undone"] == 2
    assert figures["approval_id"].startswith("apr_")
    for name in ("ready_seconds", "decision_p50_ms", "small_refund_ms", "kill_ms",
                 "propagation_ms", "seconds"):  # fmt: skip
        assert figures[name] > 0, name
    assert figures["console"].endswith("/console")
    assert {"tether.db", "admin.token", "server.log", "upstream.log"} <= {
        p.name for p in kept.iterdir()
    }
    again = run_cli("demo", "--data-dir", str(kept), env=_env(), cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.startswith("error: --data-dir ")
    assert "is not empty" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_keep_leaves_it_running_to_explore_until_ctrl_c(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        child = forkserver.spawn("demo", "--keep", env=_env(), cwd=tmp_path, stdout=out)
    try:
        deadline = time.monotonic() + 100
        while "Left running until Ctrl-C" not in log.read_text():
            assert child.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        text = log.read_text()
        _told(text)
        signed = re.search(r"Console: (\S+)/console — sign in as (\w+), password (\S+)", text)
        cli = re.search(r"TETHER_URL=(\S+) TETHER_DATA_DIR=(\S+) tether agents list", text)
        assert signed
        assert cli
        url, user, password = signed.groups()
        with http_client(base_url=url) as http:  # the console signs the printed user in
            page = http.get("/console/sign-in")
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf, page.text
            form = {"csrf": csrf.group(1), "next": "/console", "username": user,
                    "password": password}  # fmt: skip
            signed_in = http.post("/console/sign-in", data=form, headers={"Origin": url})
            assert signed_in.status_code == 303, signed_in.text
            assert "refund-agent" in http.get("/console/agents").text
        env = {**_env(), "TETHER_URL": cli.group(1), "TETHER_DATA_DIR": cli.group(2)}
        listed = run_cli("agents", "list", "--json", env=env, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert {(a["name"], a["status"]) for a in json.loads(listed.stdout)} == {
            ("refund-agent", "revoked"), ("triage-agent", "active")}  # fmt: skip
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=60) == 0, log.read_text()
    finally:
        if child.poll() is None:
            child.kill()
    assert not Path(cli.group(2)).exists()
    assert _gone(url)


def test_an_upstream_key_beginning_with_a_dash_reaches_the_example_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``secrets.token_urlsafe`` begins with "-" once in 64 draws; given as a separate word,
    argparse took it for an option and the example upstream exited (a flaky demo)."""
    import argparse
    from contextlib import contextmanager

    from tether.cli import demo_stage

    started: list[list[str]] = []

    @contextmanager
    def recorded(argv: list[str], **_: object) -> object:
        started.append(argv)
        raise RuntimeError("recorded")
        yield  # pragma: no cover

    monkeypatch.setattr(demo_stage.secrets, "token_urlsafe", lambda _n: "-dash-first-key")
    monkeypatch.setattr(demo_stage, "process", recorded)
    with pytest.raises(RuntimeError, match="recorded"), demo_stage.deployment(tmp_path, Path.cwd()):
        pass  # pragma: no cover
    parser = argparse.ArgumentParser()
    parser.add_argument("--port")
    parser.add_argument("--api-key")
    args, _ = parser.parse_known_args(started[0][3:])
    assert args.api_key == "-dash-first-key"
