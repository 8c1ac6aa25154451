"""Warnings about the environment, printed once when ``tether`` starts (server and CLI)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import typer

from tether.cli.render import err

if TYPE_CHECKING:
    from typer._click import Command


@functools.cache
def command_of(app: typer.Typer) -> Command:
    """``app``'s click command, built once: Typer builds the whole tree (~0.05 s for every
    command's signature) on each call, and the check below and the call both need it."""
    return typer.main.get_command(app)


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
    known = set(_envvars(command_of(app)))
    # Settings are read case-insensitively. With no other TETHER_ name set (none, or only
    # TETHER_URL and TETHER_TOKEN) there is nothing to warn about, and the settings
    # (pydantic-settings, ~0.1 s) are not loaded for it.
    if all(name.upper() in known for name in os.environ if name.upper().startswith("TETHER_")):
        return
    from tether.config import unknown_variables

    for line in unknown_variables(os.environ, also_known=known):
        err.print(line, markup=False, soft_wrap=True)
