"""Waking this host's other worker processes the moment the change feed moved (SQLite).

PostgreSQL tells every node with ``NOTIFY`` at commit. SQLite has nothing alike, but a SQLite
deployment is one host, so its processes can tell each other through the filesystem: each
running :class:`~tether.runtime.snapshot.Runtime` holds a named pipe (FIFO) in a directory
beside the database and waits on it; a process that committed changes writes one byte to
every other pipe there (:meth:`FifoWakeups.ring`), and their pollers sync at once instead of
at their next poll. The poll stays the safety net: a lost byte costs one poll interval.

Why FIFOs: no path-length limit (a Unix socket's path is ~100 bytes, and data directories
are deep), no server, nothing to configure, and a dead process is told apart for free —
opening a pipe that nobody reads fails with ``ENXIO``, so the ringer removes it. A pipe is
created under a hidden name, opened, then renamed into place, so a ringer never mistakes a
pipe being born for a dead one. A full pipe (``EAGAIN``) already has a wake-up pending.
A ring costs about 10 µs per other process (open, write, close), after the commit.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import select
import stat
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("tether.runtime")
_SUFFIX = ".fifo"
_STOP_CHECK_MS = 500  # how soon a stopped listener notices (it holds nothing meanwhile)


class FifoWakeups:
    """The pipes in ``directory``: :meth:`listen` to be woken, :meth:`ring` to wake the
    others. Never raises from :meth:`ring`: a wake-up is an optimisation."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._name: str | None = None  # this process's pipe, while listening
        self._stop = threading.Event()  # this listening's (a new one each time)

    def listen(self, wake: Callable[[], None]) -> bool:
        """Hold a pipe of our own and call ``wake`` (on a daemon thread) whenever another
        process rings; False (logged) if the filesystem refuses, and polling alone remains."""
        if self._name is not None:
            return True
        name = f"{os.getpid()}-{secrets.token_hex(6)}{_SUFFIX}"
        born = self.directory / f".{name}.new"
        fd = -1
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.mkfifo(born, 0o600)
            # Read and write: the open never blocks, and the pipe never reads end-of-file
            # while we hold it (a writer that comes and goes is not a hang-up).
            fd = os.open(born, os.O_RDWR | os.O_NONBLOCK)
            born.rename(self.directory / name)
        except OSError:
            log.warning("no wake-up pipe in %s; changes from other processes arrive by polling",
                        self.directory, exc_info=True)  # fmt: skip
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                born.unlink(missing_ok=True)
            return False
        self._name = name
        self._stop = stop = threading.Event()
        thread = threading.Thread(target=_wait, args=(fd, wake, stop), daemon=True,
                                  name="tether-runtime-wakeups")  # fmt: skip
        thread.start()
        return True

    def close(self) -> None:
        """Stop listening: the pipe goes at once, its thread within half a second."""
        if self._name is None:
            return
        (self.directory / self._name).unlink(missing_ok=True)
        self._name = None
        self._stop.set()

    def ring(self) -> int:
        """Wake every other listening process; returns how many were told. Pipes nobody
        reads any more (their process died without closing) are removed on the way."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return 0  # nobody has listened here yet
        told = 0
        for entry in entries:
            if not entry.name.endswith(_SUFFIX) or entry.name.startswith("."):
                continue
            if entry.name == self._name:
                continue
            told += _poke(entry.path)
        return told


def _wait(fd: int, wake: Callable[[], None], stop: threading.Event) -> None:
    poller = select.poll()  # not select(): a server's descriptors may number over 1024
    poller.register(fd, select.POLLIN)
    try:
        while not stop.is_set():
            if not poller.poll(_STOP_CHECK_MS):
                continue
            try:
                while os.read(fd, 4096):  # drain: any number of rings is one wake-up
                    pass
            except BlockingIOError:
                pass
            if not stop.is_set():
                wake()
    except OSError:
        log.warning("wake-up pipe failed; polling only", exc_info=True)
    finally:
        os.close(fd)


def _poke(path: str) -> int:
    """One byte into the pipe at ``path``: 1 if a listener holds it, else 0."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nobody reads it: its process is gone
            with contextlib.suppress(OSError):
                Path(path).unlink()
        return 0  # ENOENT: it went meanwhile
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return 0  # not ours; leave it alone
        os.write(fd, b"!")
    except BlockingIOError:
        return 1  # full: a wake-up is already waiting to be read
    except OSError:
        return 0  # EPIPE: its reader went after we opened it
    finally:
        os.close(fd)
    return 1
