"""The ``tether`` command (:mod:`tether.cli.main`).

A command's process allocates, while it imports, a few hundred thousand objects that live as
long as it does (modules, classes, the validators and SQL structures built on import), and
Python's cyclic collector, run every 700 allocations, walks the older ones again and again:
about a tenth of the CPU of a start. Until the command's work settles (:func:`settled`), it
runs every 100,000; a command that lasts (``tether serve``) then freezes what it has built
and collects as usual from there.
"""

from __future__ import annotations

import gc

_USUAL = gc.get_threshold()
gc.set_threshold(100_000, _USUAL[1], _USUAL[2])


def settled() -> None:
    """Start-up is over: what exists now stays, so the collector leaves it out (``gc.freeze``)
    and runs at its usual thresholds again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_USUAL)
