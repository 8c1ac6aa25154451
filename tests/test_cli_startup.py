"""How a ``tether`` process starts: its cyclic garbage collector (``tether.cli``)."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_command_collects_rarely_while_it_starts_then_as_usual() -> None:
    out = _python(
        "import gc\n"
        "usual = gc.get_threshold()\n"
        "import tether.cli\n"
        "starting = gc.get_threshold()\n"
        "tether.cli.settled()\n"
        "print(usual == gc.get_threshold(), starting[0], starting[1:] == usual[1:],"
        " gc.get_freeze_count() > 0)\n"
    )
    assert out == "True 100000 True True"


def test_the_sdk_and_the_server_leave_the_collector_alone() -> None:
    """Only the command's own process is tuned: an agent importing the SDK, or a process
    serving the API under another server, keeps its own thresholds."""
    out = _python(
        "import gc\n"
        "usual = gc.get_threshold()\n"
        "import tether.sdk, tether.api.app\n"
        "print(gc.get_threshold() == usual, gc.get_freeze_count())\n"
    )
    assert out == "True 0"
