"""How long the ledger keeps events at the least: six months, whatever is configured.

EU AI Act Art. 19(1) (providers) and Art. 26(6) (deployers): the logs a high-risk AI system
generates are kept "for a period appropriate to the intended purpose …, of at least six
months". Six calendar months are at most 184 days (July to December), so 184 days is six
months whichever day a prune runs. The settings import this module: it imports nothing.
"""

from __future__ import annotations

MIN_RETENTION_DAYS = 184
# About a thousand years: a cutoff every database can store (microseconds in a BIGINT).
MAX_RETENTION_DAYS = 365_000


def retention_problem(days: int) -> str | None:
    """Why ``days`` is no retention period, or None if it is one."""
    if days < MIN_RETENTION_DAYS:
        return (
            f"must be at least {MIN_RETENTION_DAYS} days (six months: EU AI Act Art. 19(1) and "
            f"26(6) require the logs to be kept that long), not {days}"
        )
    if days > MAX_RETENTION_DAYS:
        return f"must be at most {MAX_RETENTION_DAYS} days, not {days}"
    return None
