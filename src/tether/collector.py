"""Python's cyclic garbage collector around a process's start.

A process of Tether allocates, while it imports and builds its services, a few hundred
thousand objects that live as long as it does (modules, classes, validators, SQL structures,
the runtime snapshot of every agent and policy), and the collector, run every 700
allocations, walks the older ones again and again: about a tenth of the CPU of a start. Until
the start is over (:func:`settled`), it runs every 100,000 allocations; a process that lasts
(a ``tether serve`` worker, the supervisor) then freezes what it has built (``gc.freeze``)
and collects from there every 20,000 allocations rather than CPython's 700, so no later
collection walks the start-up heap again and young collections are rare.

Left unfrozen, that heap made a server worker's full collections pause it for tens to
hundreds of milliseconds under load (issue 14's soak stalls). At CPython's 700, a worker
answering decisions at full load still spent about a tenth of its time collecting (20 s of
AuthZEN evaluations at 10,000 agents: 2,100 young collections, 0.7 s, and 17 full ones, 1.1 s,
walking monitoring's per-agent state); at 20,000, about a quarter of that (bench/README.md,
"Monitoring"). Requests' objects die by reference counting, not by collection: waiting
longer for a collection keeps only cyclic garbage a little longer.
"""

from __future__ import annotations

import gc

_USUAL = (700, 10, 10)  # CPython's defaults
_SERVING = (20_000, 10, 10)  # once started: young collections every 20,000 allocations


def starting() -> None:
    """The start begins: collect rarely until :func:`settled`."""
    gc.set_threshold(100_000, _USUAL[1], _USUAL[2])


def settled() -> None:
    """The start is over: what exists now stays, so the collector leaves it out from here
    (``gc.freeze``) and runs at the serving thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_SERVING)
