"""Bounds on the Cedar text Tether hands to Cedar, checked before Cedar sees it.

Cedar's parser and evaluator (Rust, through ``cedarpy``) recurse once per level of an
expression, and a stack overflow there is not an exception: it kills the whole process
(SIGSEGV) — every in-flight request with it. So every path that hands Cedar text (push,
validate, simulate, ``tether policy test`` and ``format``, the stored versions a worker
compiles) first runs :func:`check_policy_text` / :func:`check_schema_text`, a lexical scan that
needs no recursion, and a document over a bound is refused with a 422 naming it.

Where Cedar 4.12 (cedarpy 4.12.2) crashed, measured with ``tests/test_hostile_policies.py``'s
shapes (the process's 8 MiB main stack; a thread with a 1 MiB stack in brackets):

===========================================  ================  ================
shape                                        survives          crashes
===========================================  ================  ================
nested ``( … )``, ``[ … ]``, ``{a: … }``     600 (80)          700 (100)
``if … then if … then …`` chains             3,000 (400)       10,000 (1,000)
``&&`` / ``||`` / ``+`` / ``.a`` chains      10,000 (1,000)    30,000 (3,000)
schema records ``{a: {a: … }}``              1,000             3,000
===========================================  ================  ================

A bracket level costs Cedar's parser ~12 KiB of stack, an ``if`` ~2.5 KiB, a chained
operator ~0.4 KiB. :data:`MAX_NESTING` levels and :data:`MAX_OPERATORS` operators per policy
keep the parser far from that on any thread Tether runs it on (worker threads get the
platform's default stack, 8 MiB with glibc). Runs of ``!`` or unary ``-`` need no bound of
ours: Cedar refuses more than four itself.

A policy that parses must also compile: Tether builds its policy sets from Cedar's JSON form
of each policy (so that reasons are their ``@id``), and Cedar's JSON reader refuses more than 127
levels — each operator, ``if``, set or record adds one or two, so a chain of 62 ``&&`` is too
deep. Such a policy used to validate and then fail to compile on push (a 500). After parsing,
:func:`check_json_depth` refuses a policy whose JSON form is over :data:`MAX_JSON_DEPTH`
levels with a 422 instead. The tests decide a policy at these bounds on a thread with a
1 MiB stack.

Values inside requests (resource properties, context, agent attributes) are bounded
separately, by :func:`tether.policy.values.check_cedar_value` (16 levels; Cedar's own JSON
reader stops at 128), and the size of a whole document by the API's request models.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_NESTING = 32
"""Brackets ``( [ {`` (and ``<`` in a schema) and ``if`` expressions open at once."""
MAX_OPERATORS = 200
"""Binary operators, member accesses and ``in``/``has``/``like``/``is`` in one policy."""
MAX_JSON_DEPTH = 120
"""Levels of a policy's Cedar JSON form, counted from the policy set's top (Cedar reads 128)."""
_SET_LEVELS = 2  # a policy's JSON sits under {"staticPolicies": {"<id>": …}}

_OPEN = {"(": ")", "[": "]", "{": "}"}
_SCHEMA_OPEN = {**_OPEN, "<": ">"}
_TWO_CHAR_OPERATORS = frozenset({"&&", "||", "==", "!=", "<=", ">="})
_OPERATORS = _TWO_CHAR_OPERATORS | {"in", "has", "like", "is", *"<>+-*."}


@dataclass(frozen=True, slots=True)
class Excess:
    """What went over a bound, and the first line where it did (1-based, in the text)."""

    message: str
    line: int


def check_policy_text(text: str) -> Excess | None:
    """The first bound one policy's text exceeds, or None. ``text`` is one policy (one chunk
    of :func:`tether.policy.source.split`); strings and ``//`` comments are skipped."""
    return _scan(text, _OPEN, count_operators=True)


def check_schema_text(text: str) -> Excess | None:
    """The first nesting bound a Cedar schema (human syntax) exceeds, or None."""
    return _scan(text, _SCHEMA_OPEN, count_operators=False)


def check_json_depth(policy_json: Any) -> Excess | None:
    """The depth bound a policy's Cedar JSON form (one ``staticPolicies`` value) exceeds, or
    None. Counted with an explicit stack: the form itself may be deeper than Python's limit."""
    deepest, stack = 0, [(policy_json, _SET_LEVELS + 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    if deepest <= MAX_JSON_DEPTH:
        return None
    return Excess(
        f"expression nested too deeply: Cedar's JSON form of this policy is {deepest} levels "
        f"deep (nesting depth; each operator, if, set or record adds one or two levels) and "
        f"Tether accepts at most {MAX_JSON_DEPTH}, since Cedar reads no more than 128: split "
        "the policy, or compare with a set (`[…].contains(…)`) instead of a chain of `||`",
        1,
    )


def _scan(text: str, opening: dict[str, str], *, count_operators: bool) -> Excess | None:
    closing = {v: k for k, v in opening.items()}
    # One entry per open bracket: the number of ``if`` expressions opened inside it. An
    # ``if``'s else-branch reaches as far as it can, so every later ``if`` at the same level
    # is nested in it until the enclosing bracket closes.
    stack: list[int] = [0]
    depth = operators = 0
    for word, line in _tokens(text):
        if word in opening:  # a policy's ``<`` and ``>`` compare; only a schema's Set<…> nests
            stack.append(0)
            depth += 1
        elif word in closing:
            if len(stack) > 1:
                depth -= 1 + stack.pop()
        elif word == "if":
            stack[-1] += 1
            depth += 1
        elif count_operators and word in _OPERATORS:
            operators += 1
        if depth > MAX_NESTING:
            return Excess(
                f"nested more than {MAX_NESTING} levels deep (brackets and if-expressions: "
                f"nesting depth); Tether accepts at most {MAX_NESTING}: flatten the expression",
                line,
            )
        if operators > MAX_OPERATORS:
            return Excess(
                f"more than {MAX_OPERATORS} operators in one policy (expression size); Tether "
                "accepts at most that many: split it into several policies, or compare with "
                "a set (`[…].contains(…)`) instead of a chain of `||`",
                line,
            )
    return None


def _tokens(text: str) -> Iterator[tuple[str, int]]:
    """Words, operators and brackets of Cedar text with their line; strings, ``//`` comments
    and other characters skipped."""
    line, i, n = 1, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            end = _string_end(text, i)
            line += text.count("\n", i, end)
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif ch.isalpha() or ch == "_":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            yield text[i:j], line
            i = j
        elif text[i : i + 2] in _TWO_CHAR_OPERATORS:
            yield text[i : i + 2], line
            i += 2
        else:
            if ch == "\n":
                line += 1
            elif not ch.isspace():
                yield ch, line
            i += 1


def _string_end(text: str, start: int) -> int:
    """The index just past the string literal opening at ``start`` (escapes skipped)."""
    i, n = start + 1, len(text)
    while i < n:
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    return n
