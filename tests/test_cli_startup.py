"""How a ``tether`` process starts: its cyclic garbage collector (``tether.cli``)."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_command_collects_rarely_while_it_starts_then_less_often_than_usual() -> None:
    """Starting: every 100,000 allocations; settled (a serving process): the start-up heap
    frozen, young collections every 20,000 allocations, the older generations as usual."""
    out = _python(
        "import gc\n"
        "usual = gc.get_threshold()\n"
        "import tether.cli\n"
        "starting = gc.get_threshold()\n"
        "tether.cli.settled()\n"
        "serving = gc.get_threshold()\n"
        "print(starting[0], starting[1:] == usual[1:], serving[0], serving[1:] == usual[1:],"
        " gc.get_freeze_count() > 0)\n"
    )
    assert out == "100000 True 20000 True True"


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
