"""Tether benchmarks: ledger append/verify throughput, registry list latency, and token
issuance/verification throughput.

Run everything with ``python -m bench`` (``--quick`` for small sizes, ``--postgres URL`` to
add PostgreSQL), or one module with ``python -m bench.ledger`` / ``python -m bench.registry``
/ ``python -m bench.tokens``.
See ``bench/README.md`` for what each figure means and the latest results.
"""
