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

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SIGNALS = (
    "requests", "rate_ratio", "rate_z", "denies", "deny_ratio", "first_seen",
    "secret_reads", "approvals", "off_schedule", "delegation_depth",
)  # fmt: skip
ACTIONS = ("alert", "require_approval", "suspend")
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
_CONDITION = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?|true|false)\s*$")


class RuleConfig(BaseModel):
    """``[[monitor.rules]]``: ``when`` maps signals to a comparison (``">= 5"``), a number
    (at least it) or a boolean (equal to it); every one must hold."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    when: dict[str, str | float | bool] = Field(min_length=1)
    score: int = Field(ge=-1000, le=1000)
    because: str = Field(min_length=1, max_length=300)

    @field_validator("when")
    @classmethod
    def _known(cls, when: dict[str, str | float | bool]) -> dict[str, str | float | bool]:
        for signal, cond in when.items():
            if signal not in SIGNALS:
                raise ValueError(f"unknown signal {signal!r}; one of: {', '.join(SIGNALS)}")
            if isinstance(cond, str) and not _CONDITION.match(cond):
                raise ValueError(f'{signal}: {cond!r} is not a comparison like ">= 5"')
        return when


class ThresholdConfig(BaseModel):
    """``[[monitor.thresholds]]``: from ``score`` on, the agent's level is ``level`` and
    Tether responds with ``action``."""

    model_config = ConfigDict(extra="forbid")
    score: int = Field(ge=1)
    level: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_-]*$")
    action: Literal["alert", "require_approval", "suspend"]


DEFAULT_RULES: tuple[RuleConfig, ...] = (
    RuleConfig(name="rate-spike", when={"rate_ratio": ">= 6", "requests": ">= 60"}, score=70,
               because="{requests} requests in the window, {rate_ratio}x its baseline"),
    RuleConfig(name="rate-flood", when={"requests": ">= 3000"}, score=70,
               because="{requests} requests in the window"),
    RuleConfig(name="deny-burst", when={"denies": ">= 20", "deny_ratio": ">= 0.5"}, score=70,
               because="{denies} of {requests} requests denied in the window"),
    RuleConfig(name="first-seen-burst", when={"first_seen": ">= 10"}, score=40,
               because="{first_seen} action/resource pairs never used before, in the window"),
    RuleConfig(name="off-schedule", when={"off_schedule": True}, score=40,
               because="a request outside the agent's declared schedule"),
    RuleConfig(name="deep-delegation", when={"delegation_depth": ">= 4"}, score=40,
               because="acting {delegation_depth} delegations away from the chain's root"),
    RuleConfig(name="secret-read-burst", when={"secret_reads": ">= 60"}, score=40,
               because="{secret_reads} secret reads in the window"),
    RuleConfig(name="approval-burst", when={"approvals": ">= 30"}, score=40,
               because="{approvals} requests asked a human in the window"),
)  # fmt: skip
DEFAULT_THRESHOLDS: tuple[ThresholdConfig, ...] = (
    ThresholdConfig(score=40, level="elevated", action="alert"),
    ThresholdConfig(score=70, level="high", action="require_approval"),
    ThresholdConfig(score=140, level="critical", action="suspend"),
)


class MonitorConfig(BaseModel):
    """``[monitor]`` in ``tether.toml`` (or ``TETHER_MONITOR`` as JSON)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    window_seconds: int = Field(default=60, ge=10, le=3600)
    bucket_seconds: int = Field(default=10, ge=1, le=600)
    baseline_alpha: float = Field(default=0.02, gt=0, lt=1)
    learn_buckets: int = Field(default=30, ge=1, le=100_000)
    session_window_seconds: int = Field(default=3600, ge=1, le=30 * 86400)
    sync_seconds: float = Field(default=1.0, gt=0, le=60)
    cooldown_seconds: int = Field(default=900, ge=0)
    pairs_per_agent: int = Field(default=1024, ge=1, le=100_000)
    rules: list[RuleConfig] = Field(default_factory=lambda: list(DEFAULT_RULES))
    thresholds: list[ThresholdConfig] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS))

    @model_validator(mode="after")
    def _coherent(self) -> MonitorConfig:
        if self.window_seconds % self.bucket_seconds:
            raise ValueError("monitor.window_seconds must be a multiple of bucket_seconds")
        names = [r.name for r in self.rules]
        if dup := {n for n in names if names.count(n) > 1}:
            raise ValueError(f"monitor.rules: {sorted(dup)[0]!r} is named twice")
        scores = [t.score for t in self.thresholds]
        if scores != sorted(set(scores)):
            raise ValueError("monitor.thresholds must rise strictly by score")
        return self


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


@dataclass(frozen=True, slots=True)
class Risk:
    score: int
    level: str  # "low" below every threshold
    rank: int  # 0 below every threshold; 1 + the index of the threshold reached
    action: str | None  # the reached threshold's
    hits: tuple[Hit, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "level": self.level, "action": self.action,
                "rules": [h.to_json() for h in self.hits]}  # fmt: skip


LOW = Risk(0, "low", 0, None)


@dataclass(frozen=True, slots=True)
class _Clause:
    signal: int  # index into the signals tuple
    test: Callable[[Any, Any], bool]
    value: float | bool


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    clauses: tuple[_Clause, ...]
    score: int
    because: str
    reads: tuple[str, ...]


class Rules:
    """The configuration compiled for the hot path: clauses as (index, operator, value)."""

    def __init__(self, rules: Sequence[RuleConfig], thresholds: Sequence[ThresholdConfig]):
        self.rules = tuple(_compile(r) for r in rules)
        self.thresholds = tuple(thresholds)
        self.levels = ("low", *(t.level for t in thresholds))

    def score(self, signals: Sequence[float | bool]) -> Risk:
        """The risk of these signals (ordered as :data:`SIGNALS`)."""
        hits: list[_Rule] = []
        for rule in self.rules:
            for c in rule.clauses:
                if not c.test(signals[c.signal], c.value):
                    break
            else:
                hits.append(rule)
        if not hits:
            return LOW
        total = sum(r.score for r in hits)
        rank = 0
        for i, t in enumerate(self.thresholds):
            if total >= t.score:
                rank = i + 1
        action = self.thresholds[rank - 1].action if rank else None
        return Risk(total, self.levels[rank], rank, action,
                    tuple(_hit(r, signals) for r in hits))  # fmt: skip

    def rank_of(self, level: str) -> int:
        return self.levels.index(level) if level in self.levels else 0


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
            m = _CONDITION.match(cond)
            assert m is not None  # checked by RuleConfig
            raw = m.group(2)
            test = _OPS[m.group(1)]
            value = raw == "true" if raw in ("true", "false") else float(raw)
        clauses.append(_Clause(SIGNALS.index(signal), test, value))
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
