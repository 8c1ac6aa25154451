"""Python's cyclic garbage collector around a process's start.

A process of Tether allocates, while it imports and builds its services, a few hundred
thousand objects that live as long as it does (modules, classes, validators, SQL structures,
the runtime snapshot of every agent and policy), and the collector, run every 700
allocations, walks the older ones again and again: about a tenth of the CPU of a start. Until
the start is over (:func:`settled`), it runs every 100,000 allocations; a process that lasts
(a ``tether serve`` worker, the supervisor) then freezes what it has built (``gc.freeze``)
and collects as usual from there, so no later collection walks the start-up heap again.

Left unfrozen, that heap made a server worker's full collections pause it for tens to
hundreds of milliseconds under load (issue 14's soak stalls).
"""

from __future__ import annotations

import gc

_USUAL = (700, 10, 10)  # CPython's defaults


def starting() -> None:
    """The start begins: collect rarely until :func:`settled`."""
    gc.set_threshold(100_000, _USUAL[1], _USUAL[2])


def settled() -> None:
    """The start is over: what exists now stays, so the collector leaves it out from here
    (``gc.freeze``) and runs at its usual thresholds again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_USUAL)
