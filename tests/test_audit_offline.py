"""``tether audit verify --file``: an exported ledger checked with no server, against signed
checkpoints and the ledger's public key (``tether admin ledger-key``), on both backends.

The export, its checkpoint and the key are made once per backend; each test checks its own
copy of them."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import BACKENDS, _Templates, admin_client, at_head, backend_for, make_settings
from tests.serverproc import run_cli
from tether.audit.chain import event_hash
from tether.bootstrap import prepare
from tether.container import build_services


def tether(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"TETHER_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"}
    return run_cli(*args, env=env)


@dataclass(frozen=True)
class Held:
    """An export, the checkpoint saved after it and the ledger key, as an auditor holds them:
    made once per backend (per xdist worker), read only."""

    lines: tuple[str, ...]
    checkpoint: str
    key: bytes


@pytest.fixture(scope="module", params=BACKENDS)
def held(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    schema_templates: _Templates,
) -> Held:
    tmp = tmp_path_factory.mktemp(f"offline-{request.param}")
    with backend_for(request.param, tmp) as backend:
        at_head(backend, schema_templates)
        services = build_services(make_settings(backend, tmp / "data"))
        try:
            prepare(services)
            with admin_client(services) as client:
                for name in ("ann", "bob", "cyd", "dee"):
                    made = client.post("/v1/users", json={"username": name, "role": "auditor"})
                    made.raise_for_status()
                client.post("/v1/audit/checkpoints").raise_for_status()
                lines = tuple(client.get("/v1/audit/export").text.splitlines())
                checkpoint = client.get("/v1/audit/checkpoints/latest").text + "\n"
        finally:
            services.close()
    key = tmp / "ledger.pub"
    written = tether(tmp / "data", "admin", "ledger-key", "-o", str(key))
    assert written.returncode == 0, written.stderr
    return Held(lines, checkpoint, key.read_bytes())


class Exported:
    """This test's copy of what the auditor holds, in its own directory (it may change it)."""

    def __init__(self, held: Held, tmp: Path) -> None:
        self.lines = list(held.lines)
        self.checkpoints = tmp / "checkpoint.jsonl"
        self.checkpoints.write_text(held.checkpoint)
        self.key = tmp / "ledger.pub"
        self.key.write_bytes(held.key)
        self.tmp = tmp

    def verify(self, lines: list[str], *extra: str) -> subprocess.CompletedProcess[str]:
        path = self.tmp / "export.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        args = ["--checkpoints", str(self.checkpoints), "--public-key", str(self.key), *extra]
        return tether(self.tmp / "elsewhere", "audit", "verify", "--file", str(path), *args)


@pytest.fixture
def exported(held: Held, tmp_path: Path) -> Exported:
    return Exported(held, tmp_path)


def test_an_export_verifies_offline(exported: Exported) -> None:
    assert len(exported.lines) == 6  # bootstrapped, key.created, four users
    done = exported.verify(exported.lines)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("ok: 6 events")
    head = json.loads(exported.lines[-1])["hash"]
    assert head in done.stdout
    as_json = json.loads(exported.verify(exported.lines, "--json").stdout)
    assert as_json["ok"] is True
    assert as_json["checked"] == 6
    assert as_json["anchored_size"] == 6
    assert as_json["external_checkpoints"] == 1


def _edit(line: str, **changes: object) -> str:
    event = json.loads(line)
    event.update(changes)
    return json.dumps(event)


def test_an_edited_line_is_named(exported: Exported) -> None:
    lines = list(exported.lines)
    lines[3] = _edit(lines[3], actor="user:someone_else")
    done = exported.verify(lines)
    assert done.returncode == 1
    assert "FAILED at line 4: edited" in done.stdout, done.stdout
    assert "event 4 was altered" in done.stdout


def test_a_deleted_line_is_named(exported: Exported) -> None:
    lines = exported.lines[:2] + exported.lines[3:]
    done = exported.verify(lines)
    assert done.returncode == 1
    assert "FAILED at line 3: missing" in done.stdout, done.stdout
    assert "event 3 missing before line 3" in done.stdout


def test_a_reordered_line_is_named(exported: Exported) -> None:
    lines = list(exported.lines)
    lines[2], lines[4] = lines[4], lines[2]
    done = exported.verify(lines)
    assert done.returncode == 1
    assert "FAILED at line 3: reordered" in done.stdout, done.stdout
    assert "event 3 is on line 5" in done.stdout


def test_lines_moved_and_renumbered_are_caught_by_the_chain(exported: Exported) -> None:
    """Moved with their seq rewritten to fit the place: only the hashes can tell."""
    lines = list(exported.lines)
    third, fourth = json.loads(lines[2]), json.loads(lines[3])
    lines[2] = _edit(exported.lines[3], seq=third["seq"])
    lines[3] = _edit(exported.lines[2], seq=fourth["seq"])
    done = exported.verify(lines)
    assert done.returncode == 1
    assert "FAILED at line 3" in done.stdout, done.stdout


def test_a_rewritten_chain_is_caught_by_the_signed_checkpoint(exported: Exported) -> None:
    """An event edited and every hash after it recomputed: the chain holds, the signature not."""
    events = [json.loads(line) for line in exported.lines]
    events[2]["details"] = {"username": "mallory", "role": "admin"}
    prev = events[1]["hash"]
    for event in events[2:]:
        event["prev_hash"] = prev
        body = {k: v for k, v in event.items() if k != "hash"}
        body["time"] = _micros(event["time"])
        event["hash"] = prev = event_hash(prev, body)
    done = exported.verify([json.dumps(e) for e in events])
    assert done.returncode == 1
    assert "external_checkpoint_mismatch" in done.stdout, done.stdout


def _micros(rfc3339: str) -> int:
    from datetime import datetime

    from tether.clock import to_micros

    return to_micros(datetime.fromisoformat(rfc3339.replace("Z", "+00:00")))


def test_a_deleted_last_line_is_caught_by_the_checkpoint(exported: Exported) -> None:
    done = exported.verify(exported.lines[:-1])
    assert done.returncode == 1
    assert "truncated" in done.stdout, done.stdout


def test_another_key_refuses_the_checkpoint(exported: Exported) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    exported.key.write_bytes(
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    done = exported.verify(exported.lines)
    assert done.returncode == 1
    assert "external_checkpoint_invalid" in done.stdout, done.stdout


def test_the_key_and_checkpoints_are_required_and_bad_input_is_one_line(
    exported: Exported,
) -> None:
    path = exported.tmp / "export.jsonl"
    path.write_text("\n".join(exported.lines) + "\n")
    no_key = tether(exported.tmp, "audit", "verify", "--file", str(path))
    assert no_key.returncode == 1
    assert no_key.stderr.startswith("error: --file needs --public-key FILE — ")
    assert "would prove nothing" in no_key.stderr
    no_cps = tether(
        exported.tmp, "audit", "verify", "--file", str(path), "--public-key", str(exported.key)
    )
    assert no_cps.returncode == 1
    assert no_cps.stderr.startswith("error: --file needs --checkpoints FILE — ")
    exported.key.write_text("not a key\n")
    bad_key = exported.verify(exported.lines)
    assert bad_key.returncode == 1
    assert bad_key.stderr.startswith("error: --public-key: ")
    assert "holds no Ed25519 key" in bad_key.stderr
    for done in (no_key, no_cps, bad_key):
        assert len(done.stderr.splitlines()) == 1
        assert "Traceback" not in done.stderr
        assert "Error:" not in done.stderr


def test_a_line_that_is_not_an_event_is_named(exported: Exported) -> None:
    lines = list(exported.lines)
    lines[1] = "{not json"
    done = exported.verify(lines)
    assert done.returncode == 1
    assert "FAILED at line 2: edited — line 2 is not an event: not JSON" in done.stdout
