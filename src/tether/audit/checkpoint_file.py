"""Signed checkpoints appended to a file in the data dir, outside the database they anchor.

Someone who can edit the database can delete its checkpoint rows and re-hash the chain;
they cannot take back what was written here (nor what a witness received). Format: JSON
lines, one signed head each, exactly :meth:`Checkpoint.to_json`::

    {"head_hash":"…","key_id":"…","signature":"…","size":1000,"time":"2026-01-01T00:00:00Z"}

Every process appends with ``O_APPEND`` and one ``write`` per line, then ``fsync``: lines
from several workers never interleave, though they may land out of ``size`` order.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from tether.audit.chain import Checkpoint
from tether.clock import to_micros
from tether.errors import ConfigurationError
from tether.jsonutil import canonical

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CheckpointLines:
    """What the file holds: ``checkpoints`` parsed, ``bad_lines`` (1-based) that are not one.
    A missing file reads as neither."""

    checkpoints: list[Checkpoint] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)


class CheckpointFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def check_writable(self) -> None:
        """Raises :class:`ConfigurationError` unless checkpoints can be appended here: a server
        that could not keep them outside the database must not start as if it could."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot append ledger checkpoints to {self.path}: {exc.strerror} "
                "(TETHER_DATA_DIR must be writable by the server)",
                path=str(self.path),
            ) from exc
        os.close(fd)  # an empty file reads as a missing one: the probe may stay

    def append(self, cp: Checkpoint) -> None:
        """Append ``cp`` as one line and fsync it; raises OSError if it could not be written."""
        line = canonical(cp.to_json()) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            new = os.fstat(fd).st_size == 0
            if new:
                os.fchmod(fd, 0o600)  # whatever the umask was
            if os.write(fd, line) != len(line):  # pragma: no cover - a full disk, mostly
                raise OSError(f"short write to {self.path}")
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:  # the file's name must survive a crash too
            _fsync_dir(self.path.parent)
            log.info("started the ledger checkpoint file %s at size %d", self.path, cp.size)

    def read(self) -> CheckpointLines:
        """Every checkpoint in the file, in file order. A last line without its newline is a
        write a crash cut short, not a checkpoint: it is skipped."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return CheckpointLines()
        out = CheckpointLines()
        lines = data.split(b"\n")
        for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: after the last "\n"
            cp = _parse(line)
            if cp is None:
                out.bad_lines.append(number)
            else:
                out.checkpoints.append(cp)
        return out


def _parse(line: bytes) -> Checkpoint | None:
    try:
        obj: Any = orjson.loads(line)
        when = datetime.fromisoformat(obj["time"].replace("Z", "+00:00"))
        cp = Checkpoint(
            obj["size"], obj["head_hash"], to_micros(when), obj["key_id"], obj["signature"]
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    fields = (cp.head_hash, cp.key_id, cp.signature)
    if type(cp.size) is not int or cp.size < 1 or not all(isinstance(f, str) for f in fields):
        return None
    if when.tzinfo is None:
        return None
    return cp


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
