"""Compensations: how a tool call is undone, declared per tool in configuration, and the undo
call derived from the original call's arguments and result.

A compensation names the tool that undoes a call (``undo``, a tool of the same upstream) and
that tool's arguments, each either a literal value or a reference to the original call:

- ``"{args.payment_id}"`` — an argument of the call;
- ``"{result.refund_id}"``, ``"{result.items[0].id}"`` — a field of its result (the tool's
  structured result, or the JSON of its text, as the upstream gave it).

A reference is the whole string (the value keeps its type); anything else is a literal.
References are parsed when the configuration loads, and checked against the tools' schemas
when the upstream's tools are known (an unknown tool, an argument the tool does not take, a
result field its output schema does not have, an undo's required argument left out: refused,
naming the tool and the field). A tool with no compensation is reversible only if it is
read-only; ``irreversible = true`` says so explicitly (and policies see ``reversible``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_REF = re.compile(r"^\{(args|result)((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d{1,4}\])*)\}$")
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d{1,4})\]")
_LOOKS_LIKE_REF = re.compile(r"^\{.*\}$")


class CompensationError(ValueError):
    """A compensation that cannot be declared or derived; the message names the field."""


@dataclass(frozen=True, slots=True)
class Ref:
    """``{args…}`` or ``{result…}``: where an undo argument comes from."""

    source: str  # "args" | "result"
    path: tuple[str | int, ...]

    def text(self) -> str:
        steps = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)
        return "{" + self.source + steps + "}"

    def take(self, args: Any, result: Any) -> Any:
        """The value this reference names, or :class:`CompensationError` saying what is
        missing."""
        value = args if self.source == "args" else result
        for i, step in enumerate(self.path):
            if isinstance(step, int):
                ok = isinstance(value, list) and step < len(value)
            else:
                ok = isinstance(value, dict) and step in value
            if not ok:
                at = Ref(self.source, self.path[: i + 1]).text()
                raise CompensationError(f"{at} is not in the call's {self.source}")
            value = value[step]
        return value


def parse_value(value: Any, where: str) -> Ref | Any:
    """A declared argument: a reference, or the literal itself."""
    if isinstance(value, str) and _LOOKS_LIKE_REF.match(value):
        match = _REF.match(value)
        if match is None:
            raise CompensationError(
                f"{where}: {value!r} is no reference — write {{args.<name>}} or "
                "{result.<field>} (dots for fields, [n] for list items), the whole string"
            )
        steps = [int(index) if index else name for name, index in _STEP.findall(match.group(2))]
        if match.group(1) == "args" and not steps:
            raise CompensationError(f"{where}: name an argument ({{args.<name>}})")
        return Ref(match.group(1), tuple(steps))
    return value


@dataclass(frozen=True, slots=True)
class Compensation:
    """The undo of one tool: ``undo`` called with ``arguments`` (literals and references)."""

    tool: str
    undo: str
    arguments: dict[str, Any]

    def derive(self, args: Any, result: Any) -> dict[str, Any]:
        """The undo call's arguments for a call with ``args`` that answered ``result``."""
        return {name: value.take(args, result) if isinstance(value, Ref) else value
                for name, value in self.arguments.items()}  # fmt: skip

    def refs(self) -> list[tuple[str, Ref]]:
        return [(n, v) for n, v in self.arguments.items() if isinstance(v, Ref)]


def check_schemas(
    comp: Compensation,
    tool_input: dict[str, Any] | None,
    tool_output: dict[str, Any] | None,
    undo_input: dict[str, Any] | None,
) -> list[str]:
    """What is wrong with ``comp`` against the tools' JSON schemas (the tool's input and
    output, the undo's input; None: the tool does not exist), each naming tool and field."""
    where = f"compensation of {comp.tool}"
    if tool_input is None:
        return [f"{where}: the upstream has no tool {comp.tool!r}"]
    if undo_input is None:
        return [f"{where}: the upstream has no tool {comp.undo!r} to undo it"]
    problems = []
    takes = set((undo_input.get("properties") or {}).keys())
    closed = undo_input.get("additionalProperties") is False or bool(takes)
    for name in comp.arguments:
        if closed and name not in takes:
            problems.append(f"{where}: {comp.undo} takes no argument {name!r}")
    for name in undo_input.get("required") or []:
        if name not in comp.arguments:
            problems.append(f"{where}: {comp.undo}'s required argument {name!r} is not given")
    for name, ref in comp.refs():
        schema = tool_input if ref.source == "args" else tool_output
        missing = _missing(ref, schema)
        if missing is not None:
            problems.append(f"{where}: {name} = {ref.text()}: {missing}")
    return problems


def _missing(ref: Ref, schema: dict[str, Any] | None) -> str | None:
    """Why ``ref`` cannot be in a value of ``schema`` (None: it can, or the schema does not
    say: a free-form result is checked when the call is made)."""
    if schema is None:
        return None if ref.source == "result" else f"{ref.source} has no schema"
    node: dict[str, Any] = schema
    for step in ref.path:
        if isinstance(step, int):
            items = node.get("items")
            if node.get("type") not in (None, "array") or not isinstance(items, dict):
                return None if node.get("type") is None else f"[{step}] of a non-list"
            node = items
            continue
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            return None  # free-form: not known until the call
        if step not in props:
            return f"{step!r} is not a field the tool declares"
        node = props[step] if isinstance(props[step], dict) else {}
    return None
