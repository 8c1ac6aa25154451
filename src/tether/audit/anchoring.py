"""How far the ledger may run ahead of its newest signed checkpoint, as pure functions.

The server signs a checkpoint every ``every_events`` events (in the transaction that
reaches a multiple, so at most ``every_events - 1`` events ever follow the newest one) and,
on its maintenance tick, when ``every_seconds`` passed and the head moved. Events beyond
either bound without a covering checkpoint were not left so by the server: its checkpoints
were deleted, or it stopped signing. Events within the bounds are the one part of the
ledger no signature covers yet; verification reports how many there are, and how many
there may be.
"""

from __future__ import annotations

from dataclasses import dataclass

from tether.audit.chain import Problem, VerifyResult

# The maintenance loop (tether.api.app) runs at most this far apart.
MAINTENANCE_MAX_SECONDS = 10.0
# Past the interval and one tick: a slow maintenance pass, a transient database error retried
# on the next tick, node clocks apart by up to the 5 s README.md allows.
GRACE_SECONDS = 30.0


def maintenance_seconds(every_seconds: float) -> float:
    """How often the maintenance loop signs a due checkpoint (among its other chores)."""
    return min(every_seconds, MAINTENANCE_MAX_SECONDS)


@dataclass(frozen=True, slots=True)
class AnchorRule:
    every_events: int
    every_seconds: float

    @property
    def max_unanchored(self) -> int:
        """The most events that may follow the newest checkpoint."""
        return self.every_events - 1

    @property
    def max_unanchored_seconds(self) -> float:
        """How long an event may wait for a checkpoint: the interval, one tick, the grace."""
        return self.every_seconds + maintenance_seconds(self.every_seconds) + GRACE_SECONDS


@dataclass(frozen=True, slots=True)
class FileState:
    """What the checkpoint file held when verification began."""

    bad_lines: list[int]
    db_checkpoints: int  # checkpoints in the database
    # Sizes the file has a checkpoint for and the database has none: each line was written
    # after its checkpoint committed, so the database had every one of them.
    not_in_db: list[int]


def judge_anchoring(
    result: VerifyResult, rule: AnchorRule, file: FileState, *, now_us: int, since_us: int
) -> VerifyResult:
    """Hold a verified chain (``result`` of :func:`verify_chain`, given the file's
    checkpoints) to the file and the checkpoint rules at ``now_us``. Events from before
    ``since_us`` (when this server started: it could not sign while it was stopped) count
    as written then. The first problem found fails ``result``; it is returned either way."""
    result.limits = {
        "unanchored": result.end - result.anchored_size,
        "max_unanchored": rule.max_unanchored,
        "max_unanchored_seconds": rule.max_unanchored_seconds,
    }
    if result.ok:
        _judge_file(result, file)
    if result.ok:
        _judge_tail(result, rule, now_us=now_us, since_us=since_us)
    return result


def _judge_file(result: VerifyResult, file: FileState) -> None:
    if file.bad_lines:
        lines = ", ".join(map(str, file.bad_lines[:5]))
        result.fail(
            None,
            Problem.EXTERNAL_CHECKPOINT_INVALID,
            f"the checkpoint file has lines that are not a signed checkpoint: {lines}",
        )
    elif file.not_in_db:
        sizes = ", ".join(map(str, file.not_in_db[:5])) + (", …" if len(file.not_in_db) > 5 else "")
        result.fail(
            None,
            Problem.DB_CHECKPOINTS_MISSING,
            f"{len(file.not_in_db)} checkpoints in the checkpoint file are no longer in the "
            f"database (at sizes {sizes}): they were deleted from it",
        )
    elif result.external_checkpoints == 0 and file.db_checkpoints:
        result.fail(
            None,
            Problem.EXTERNAL_CHECKPOINTS_MISSING,
            f"the database has {file.db_checkpoints} signed checkpoints but the checkpoint "
            "file has none: it was deleted or emptied (after an upgrade, or on a new node, "
            "`tether audit checkpoint` writes the newest one)",
        )


def _judge_tail(result: VerifyResult, rule: AnchorRule, *, now_us: int, since_us: int) -> None:
    first, head = result.anchored_size + 1, result.end
    unanchored = head - result.anchored_size
    if unanchored > rule.max_unanchored:
        result.fail(
            first,
            Problem.UNANCHORED_TAIL,
            f"{unanchored} events ({first}..{head}) follow the newest signed checkpoint; the "
            f"server signs one every {rule.every_events} events, so checkpoints were deleted",
            after=result.anchored_size,
            through=head,
        )
        return
    if result.first_unanchored_us is None:
        return
    waited = (now_us - max(result.first_unanchored_us, since_us)) / 1_000_000
    if waited > rule.max_unanchored_seconds:
        result.fail(
            first,
            Problem.UNANCHORED_TAIL,
            f"events {first}..{head} have waited {waited:.0f} s for a checkpoint; the server "
            f"signs one within {rule.max_unanchored_seconds:.0f} s, so checkpoints were "
            "deleted or the server stopped signing",
            after=result.anchored_size,
            through=head,
        )
