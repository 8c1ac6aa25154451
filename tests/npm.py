"""npm packages the tests drive (the MCP conformance suite, the MCP Inspector's CLI),
installed from the npm registry into a git-ignored cache under the checkout, once, under a
lock (test sessions may start together). Skipped — saying why — only where Node.js or npm is
missing or the registry cannot be reached."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"  # git-ignored
_UNREACHABLE = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ENETUNREACH")


def installed(package: str, cache_dir: str, entry: str) -> Path:
    """``entry`` (a path under the install's ``node_modules``) of ``package`` (``name@version``),
    installed into ``.cache/<cache_dir>`` if it is not there yet."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip(f"{package} needs Node.js and npm")
    prefix = CACHE / cache_dir
    prefix.mkdir(parents=True, exist_ok=True)
    path = prefix / "node_modules" / entry
    with (prefix / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            got = subprocess.run(
                [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                 "--save-exact", package],
                capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                check=False,
            )  # fmt: skip
            if got.returncode != 0 and any(code in got.stderr for code in _UNREACHABLE):
                pytest.skip(f"the npm registry is unreachable: {got.stderr[-300:]}")
            assert got.returncode == 0, got.stderr
    return path
