"""SQLite's page size: a new file gets 2 KiB pages (half the bytes each durable commit syncs,
bench/README.md); a file made before keeps its own and goes on working."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from tether.db import Database
from tether.db.migrate import upgrade


def _page_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def test_a_new_file_gets_2_kib_pages(tmp_path: Path) -> None:
    path = tmp_path / "tether.db"
    db = Database(f"sqlite:///{path}")
    try:
        upgrade(db)
    finally:
        db.dispose()
    assert _page_size(path) == 2048


def test_a_file_with_other_pages_keeps_them_and_still_writes(tmp_path: Path) -> None:
    path = tmp_path / "tether.db"
    with sqlite3.connect(path) as conn:  # as SQLite made files before: 4 KiB, WAL
        conn.execute("PRAGMA page_size=4096")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE older (n INTEGER)")
    db = Database(f"sqlite:///{path}")
    try:
        upgrade(db)
        with db.write() as s:
            s.execute(text("INSERT INTO older VALUES (1)"))
        with db.read() as s:
            assert s.execute(text("SELECT count(*) FROM older")).scalar_one() == 1
    finally:
        db.dispose()
    assert _page_size(path) == 4096
