"""Tether benchmarks: ledger append/verify throughput and registry list latency.

Run everything with ``python -m bench`` (``--quick`` for small sizes, ``--postgres URL`` to
add PostgreSQL), or one module with ``python -m bench.ledger`` / ``python -m bench.registry``.
See ``bench/README.md`` for what each figure means and the latest results.
"""
