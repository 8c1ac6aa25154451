"""Storage: engine, transactions with the single-writer rule, models' base, migrations."""

from tether.db.base import Base
from tether.db.engine import Database

__all__ = ["Base", "Database"]
