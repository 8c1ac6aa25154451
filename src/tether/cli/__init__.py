"""The ``tether`` command (:mod:`tether.cli.main`).

Its start collects garbage rarely (:mod:`tether.collector`); a command that lasts (``tether
serve``) calls :func:`settled` once it has built what it keeps.
"""

from __future__ import annotations

from tether.collector import settled, starting

starting()

__all__ = ["settled"]
