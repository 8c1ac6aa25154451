"""Risk rules: a condition over an agent's behaviour signals adds to its risk score, with an
explanation; thresholds on the score choose the response (alert, step-up, suspend).

Pure values: :func:`score` takes the signals and the compiled rules and returns a
:class:`Risk` naming every rule that holds and its evidence. The configuration
(``[monitor]`` in ``tether.toml``) is validated here once, at start: an unknown signal, an
operator that is not one, a threshold without an action → the server refuses to start,
naming the rule.

The signals (:data:`SIGNALS`), per agent, over the last ``window_seconds`` (merged across
workers and nodes):

- ``requests``          decisions asked;
- ``rate_ratio``        ``requests`` over what the agent's own baseline expects in a window
                        (an EWMA of its active periods; 0 until it has learned);
- ``rate_z``            how many deviations ``requests`` is above that baseline;
- ``denies``, ``deny_ratio``  denials, and their share of ``requests``;
- ``first_seen``        (action, resource) pairs the agent had never used (after learning);
- ``secret_reads``      allowed ``secret.read`` / ``secret.lease`` decisions;
- ``approvals``         decisions that asked a human;
- ``off_schedule``      this request falls outside the agent's ``schedule`` attribute;
- ``delegation_depth``  delegations between the chain's root and the acting agent.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tether.monitor_config import (
    CONDITION,
    DEFAULT_RULES,
    DEFAULT_THRESHOLDS,
    SIGNALS,
    MonitorConfig,
    RuleConfig,
    ThresholdConfig,
)

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}  # fmt: skip


# (window, flags) -> whether any rule holds (Rules.quick)
Quick = Callable[[Any, tuple[bool, int]], bool]


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule that holds: its name, contribution and explanation, and the signals it read."""

    rule: str
    score: int
    because: str
    evidence: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "score": self.score, "because": self.because,
                "evidence": self.evidence}  # fmt: skip


class Risk:
    """A score, its level and response, and the rules that made it. Their explanations are
    written when first asked for (:attr:`hits`), not on every decision."""

    __slots__ = ("_hits", "_rules", "_signals", "action", "level", "rank", "score")

    def __init__(  # noqa: PLR0917 - built on the hot path: positional is cheaper
        self, score: int, level: str, rank: int, action: str | None,
        rules: tuple[_Rule, ...] = (), signals: Sequence[float | bool] = (),
    ) -> None:  # fmt: skip
        self.score = score
        self.level = level
        self.rank = rank
        self.action = action
        self._rules = rules
        self._signals = signals
        self._hits: tuple[Hit, ...] | None = None if rules else ()

    @property
    def hits(self) -> tuple[Hit, ...]:
        if self._hits is None:
            self._hits = tuple(_hit(r, self._signals) for r in self._rules)
        return self._hits

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "level": self.level, "action": self.action,
                "rules": [h.to_json() for h in self.hits]}  # fmt: skip


LOW = Risk(0, "low", 0, None)


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    clauses: tuple[tuple[int, Callable[[Any, Any], bool], float | bool], ...]  # index, test, value
    score: int
    because: str
    reads: tuple[str, ...]


class Rules:
    """The configuration compiled for the hot path: clauses as (index, operator, value)."""

    def __init__(self, rules: Sequence[RuleConfig], thresholds: Sequence[ThresholdConfig]):
        self.rules = tuple(_compile(r) for r in rules)
        self._flat = tuple((r, r.clauses[0], r.clauses[1:]) for r in self.rules)
        self.thresholds = tuple(thresholds)
        self.levels = ("low", *(t.level for t in thresholds))

    def score(self, signals: Sequence[float | bool]) -> Risk:
        """The risk of these signals (ordered as :data:`SIGNALS`)."""
        hits: list[_Rule] | None = None
        for rule, (signal, test, value), rest in self._flat:
            if not test(signals[signal], value):  # most rules fail here: no inner loop
                continue
            for more, more_test, more_value in rest:
                if not more_test(signals[more], more_value):
                    break
            else:
                if hits is None:
                    hits = []
                hits.append(rule)
        if hits is None:
            return LOW
        total = sum(r.score for r in hits)
        rank = 0
        for i, t in enumerate(self.thresholds):
            if total >= t.score:
                rank = i + 1
        action = self.thresholds[rank - 1].action if rank else None
        return Risk(total, self.levels[rank], rank, action, tuple(hits), signals)

    def quick(self, rate: Callable[[Any, int], tuple[float, float]]) -> Quick:
        """The decision path's first look: ``(window, flags) -> bool``, whether any rule holds
        for the window's signals (as :meth:`score` reads them from ``_signals``: the
        window's other counts, ``rest``, plus this worker's in the current bucket, its
        ``req`` … ``approval``; ``rate(window, requests)`` its (rate_ratio, rate_z)).
        Nearly always none does, and then nothing else is computed: no signals tuple, no
        rate unless a rule's other clauses hold first. The rules are
        compiled to one Python function (from validated numbers, comparison operators and
        signal positions only; no configured text reaches the code)."""
        lines = [
            "def quick(w, flags):",
            "    c = w.rest",
            "    req = c[0] + w.req",
            "    den = c[1] + w.deny",
            "    rt = None",
        ]
        namespace: dict[str, Any] = {"rate": rate}
        for rule in self.rules:
            # the rate last: it is the only signal that costs more than a sum
            clauses = sorted(rule.clauses, key=lambda cl: cl[0] in _RATE)
            depth = 1
            for index, test, value in clauses:
                pad = "    " * depth
                if index in _RATE:
                    lines.append(f"{pad}if rt is None:")
                    lines.append(f"{pad}    rt = rate(w, req)")
                literal = repr(value)
                if not isinstance(value, bool) and not math.isfinite(value):  # inf, from TOML
                    literal = f"v{len(namespace)}"
                    namespace[literal] = value
                lines.append(f"{pad}if {_EXPR[index]} {_OP_TEXT[test]} {literal}:")
                depth += 1
            lines.append(f"{'    ' * depth}return True")
        lines.append("    return False")
        exec(compile("\n".join(lines), f"<monitor rules {id(self):x}>", "exec"), namespace)  # noqa: S102
        fn: Quick = namespace["quick"]
        return fn


# What the compiled first look (:meth:`Rules.quick`) reads for each signal (ordered as
# SIGNALS): the sums of ``_signals`` in the monitor service, and its rate and flags.
_EXPR = (
    "req", "rt[0]", "rt[1]", "den", "(den / req if req else 0.0)",
    "(c[2] + w.first)", "(c[3] + w.secret)", "(c[4] + w.approval)",
    "flags[0]", "flags[1]",
)  # fmt: skip
_RATE = frozenset({SIGNALS.index("rate_ratio"), SIGNALS.index("rate_z")})
_OP_TEXT: dict[Callable[[Any, Any], bool], str] = {v: k for k, v in _OPS.items()}


def _compile(rule: RuleConfig) -> _Rule:
    clauses = []
    for signal, cond in rule.when.items():
        test: Callable[[Any, Any], bool]
        value: float | bool
        if isinstance(cond, bool):
            test, value = operator.eq, cond
        elif isinstance(cond, int | float):
            test, value = operator.ge, float(cond)
        else:
            m = CONDITION.match(cond)
            assert m is not None  # checked by RuleConfig
            raw = m.group(2)
            test = _OPS[m.group(1)]
            value = raw == "true" if raw in ("true", "false") else float(raw)
        clauses.append((SIGNALS.index(signal), test, value))
    reads = tuple(dict.fromkeys([*rule.when, *re.findall(r"{(\w+)}", rule.because)]))
    return _Rule(rule.name, tuple(clauses), rule.score, rule.because, reads)


def _hit(rule: _Rule, signals: Sequence[float | bool]) -> Hit:
    evidence = {name: _shown(signals[SIGNALS.index(name)]) for name in rule.reads
                if name in SIGNALS}  # fmt: skip
    try:
        because = rule.because.format_map(_Missing(evidence))
    except (ValueError, IndexError):
        because = rule.because
    return Hit(rule.name, rule.score, because, evidence)


def _shown(value: float | bool) -> float | bool | int:
    if isinstance(value, bool):
        return value
    return int(value) if float(value).is_integer() else round(float(value), 2)


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def signals_dict(signals: Sequence[float | bool]) -> Mapping[str, float | bool | int]:
    return {name: _shown(v) for name, v in zip(SIGNALS, signals, strict=True)}


__all__ = [
    "DEFAULT_RULES",
    "DEFAULT_THRESHOLDS",
    "LOW",
    "SIGNALS",
    "Hit",
    "MonitorConfig",
    "Risk",
    "RuleConfig",
    "Rules",
    "ThresholdConfig",
    "signals_dict",
]  # fmt: skip
