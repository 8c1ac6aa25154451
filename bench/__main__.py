"""``python -m bench``: every benchmark on every selected backend, then one summary.

Options: ``--quick`` (small sizes), ``--postgres URL`` or ``$TETHER_BENCH_POSTGRES_URL`` (add
PostgreSQL), ``--no-sqlite``, ``--events N`` (ledger size to verify), ``--agents N``
(registry size), ``--explain`` (registry query plans), ``--clients N`` / ``--workers N``
(token issuance load; ``--workers`` also for the decision server), ``--connections N`` /
``--duration S`` / ``--rate R`` / ``--loadgen`` / ``--profile N`` / ``--decision-agents N``
(decisions), ``--kills N`` / ``--big-kills N`` / ``--kill-load-rate R`` (propagation),
``--json FILE``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from bench import decisions, ledger, propagation, registry, tokens
from bench.common import machine_line, note, parse_options, write_json


def _arguments(parser: argparse.ArgumentParser) -> None:
    ledger.add_arguments(parser)
    registry.add_arguments(parser)
    tokens.add_arguments(parser)
    decisions.add_arguments(parser)
    propagation.add_arguments(parser)


def main(argv: Sequence[str] | None = None) -> None:
    options = parse_options(
        "python -m bench", "All Tether benchmarks", argv, add_arguments=_arguments
    )
    start = time.perf_counter()
    note(f"backends: {', '.join(options.backends)}; sizes: {'quick' if options.quick else 'full'}")
    tables = (
        ledger.run_all(options)
        + registry.run_all(options)
        + tokens.run_all(options)
        + decisions.run_all(options)
        + propagation.run_all(options)
    )
    sys.stdout.write(f"\n## Summary — {machine_line(options)}\n")
    for table in tables:
        table.print()
    sys.stdout.write(f"\ntotal time: {time.perf_counter() - start:.0f} s\n")
    if options.json_path:
        write_json(options.json_path, tables, options)


if __name__ == "__main__":
    main()
