"""The zygote the CLI and server tests fork from (tests/forkserver.py) runs the command as a
process of its own would, and the console script ``pip`` installs (which the zygote's children
bypass) works for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests import forkserver
from tests.serverproc import free_port


def test_a_child_is_a_process_of_its_own_with_the_callers_environment(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "TETHER_DATA_DIR": str(tmp_path / "d"), "TETHER_OOPS": "1"}
    done = forkserver.run("db", "upgrade", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "was empty" in done.stdout  # the TETHER_DATA_DIR it was given, in its own directory
    assert (tmp_path / "d" / "tether.db").exists()
    # its environment and nothing else: the misspelt name it was given is warned about
    assert "TETHER_OOPS" in done.stderr
    again = forkserver.run("db", "upgrade", env=env, cwd=tmp_path)
    assert "unchanged" in again.stdout


def test_exit_codes_and_streams_are_the_commands() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    version = forkserver.run("--version", env=env)
    assert (version.returncode, version.stderr) == (0, "")
    assert version.stdout.startswith("tether ")
    wrong = forkserver.run("bogus", env=env)
    assert wrong.returncode == 2
    assert wrong.stdout == ""
    assert wrong.stderr == "error: No such command 'bogus' — see 'tether --help'\n"


def test_a_killed_child_reports_the_signal(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "TETHER_DATA_DIR": str(tmp_path),
        "TETHER_PORT": str(free_port()),
    }
    with (tmp_path / "log").open("wb") as log:
        child = forkserver.spawn("serve", env=env, cwd=tmp_path, stdout=log)
    assert child.pid not in (os.getpid(), os.getppid())
    assert child.poll() is None
    child.kill()
    assert child.wait(20) == -9
    assert child.poll() == -9


def test_scripts_find_a_tether_that_passes_its_streams_and_status(tmp_path: Path) -> None:
    env = forkserver.on_path({"PATH": "/usr/bin:/bin"})
    script = 'V=$(tether --version); echo "got $V"; tether bogus 2>err || echo "exit $?"'
    done = subprocess.run(["bash", "-c", script], env=env, cwd=tmp_path, capture_output=True,
                          text=True, check=False, timeout=60)  # fmt: skip
    assert done.stdout.splitlines()[0].startswith("got tether ")
    assert done.stdout.splitlines()[1] == "exit 2"
    assert (tmp_path / "err").read_text().startswith("error: No such command 'bogus'")


def test_the_installed_console_script_runs_for_real(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "tether"
    env = {"PATH": "/usr/bin:/bin", "TETHER_DATA_DIR": str(tmp_path / "d")}
    version = subprocess.run([script, "--version"], env=env, capture_output=True, text=True,
                             check=False, timeout=60)  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("tether ")
    upgraded = subprocess.run([script, "db", "upgrade"], env=env, capture_output=True, text=True,
                              check=False, timeout=60, cwd=tmp_path)  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr
    assert "was empty" in upgraded.stdout
    wrong = subprocess.run([script, "bogus"], env=env, capture_output=True, text=True,
                           check=False, timeout=60)  # fmt: skip
    assert wrong.returncode == 2
    assert "Traceback" not in wrong.stderr
