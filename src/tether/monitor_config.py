"""Monitoring's configuration (``[monitor]`` in ``tether.toml``, ``TETHER_MONITOR``): the
rules, thresholds and windows, validated once at start (an unknown signal, an operator that
is not one, thresholds that do not rise → the server refuses to start, naming the rule).

Beside :mod:`tether.config`, not in the monitor domain, so that the settings import no domain
(as :mod:`tether.gateway_config`); :mod:`tether.monitor.rules` compiles it for the hot path.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SIGNALS = (
    "requests", "rate_ratio", "rate_z", "denies", "deny_ratio", "first_seen",
    "secret_reads", "approvals", "off_schedule", "delegation_depth",
)  # fmt: skip
CONDITION = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?|true|false)\s*$")


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
            if isinstance(cond, str) and not CONDITION.match(cond):
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
