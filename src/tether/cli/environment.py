"""Warnings about the environment, printed once when ``tether`` starts (server and CLI)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import typer

from tether.cli.render import err
from tether.config import unknown_variables


def _envvars(command: Any) -> Iterator[str]:
    """Every environment variable an option of ``command`` or its subcommands reads (a click
    command, as typer builds it; typer ships its own click, so typed loosely)."""
    for param in command.params:
        envvar = param.envvar
        for name in envvar if isinstance(envvar, list | tuple) else [envvar]:
            if isinstance(name, str) and name:
                yield name
    for sub in getattr(command, "commands", {}).values():
        yield from _envvars(sub)


def warn_unknown_variables(app: typer.Typer) -> None:
    """One line on stderr per ``TETHER_*`` variable neither the settings nor an option read."""
    known = set(_envvars(typer.main.get_command(app)))
    for line in unknown_variables(os.environ, also_known=known):
        err.print(line, markup=False, soft_wrap=True)
