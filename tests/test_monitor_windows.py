"""Monitoring's pure parts against their reference: the window's incremental roll against a
re-total of its buckets, and the rules' compiled first look against :meth:`Rules.score` — on
random windows and rules, every answer equal (the decision path takes the fast ones)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from tether.monitor.rules import DEFAULT_RULES, LOW, SIGNALS, RuleConfig, Rules, ThresholdConfig
from tether.monitor.windows import COUNTS, AgentWindow

THRESHOLDS = [ThresholdConfig(score=40, level="elevated", action="alert")]


def test_the_incremental_roll_keeps_the_windows_total_exact() -> None:
    rng = random.Random(7)
    for _ in range(2_000):
        width = rng.choice([1, 2, 3, 6, 10])
        w = AgentWindow()
        w.roll(rng.randrange(0, 50), width, 0.1)
        for _ in range(60):
            op = rng.random()
            if op < 0.5:  # this worker counts in the current bucket
                w.local.setdefault(w.bucket, [0] * COUNTS)[rng.randrange(COUNTS)] += 1
            elif op < 0.7:  # another worker's counts merged, as the sync does
                k = w.bucket + rng.randrange(-width - 1, 3)
                i, d = rng.randrange(COUNTS), rng.randrange(1, 4)
                w.remote.setdefault(k, [0] * COUNTS)[i] += d
                if w.bucket - width < k < w.bucket:
                    w.closed[i] += d
            else:  # time moves on: a bucket, a few, a whole window, or back (clocks differ)
                w.roll(w.bucket + rng.choice([0, 1, 1, 2, 3, width, width + 5, -1]), width, 0.1)
                ref = AgentWindow(bucket=w.bucket, local=dict(w.local), remote=dict(w.remote))
                ref.resum(width)
                assert w.closed == ref.closed
                assert all(k > w.bucket - width - 2 for k in (*w.local, *w.remote))


def _random_rule(rng: random.Random, n: int) -> RuleConfig:
    when: dict[str, str | float | bool] = {}
    for signal in rng.sample(SIGNALS, rng.randint(1, 3)):
        if signal == "off_schedule":
            when[signal] = rng.random() < 0.5
        elif rng.random() < 0.3:
            when[signal] = float(rng.randint(0, 30))
        else:
            op = rng.choice([">=", ">", "<=", "<", "==", "!="])
            when[signal] = f"{op} {rng.choice([0, 1, 2, 5, 20, 0.5, 1.5])}"
    return RuleConfig(name=f"r{n}", when=when, score=rng.randint(-50, 100), because="x")


class _Window:
    def __init__(self, rng: random.Random) -> None:
        self.closed = [rng.randint(0, 40) for _ in range(COUNTS)]
        self.active = rng.randint(0, 40)
        self.mean = rng.choice([0.0, 1.0, 5.5, 20.0])
        self.var = rng.choice([0.0, 1.0, 9.0])

    def rate(self, requests: int, width: int, learn: int) -> tuple[float, float]:
        return AgentWindow.rate(self, requests, width, learn)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(4))
def test_the_compiled_first_look_agrees_with_the_rules(seed: int) -> None:
    rng = random.Random(seed)
    width, learn = 6, 10
    configs = [list(DEFAULT_RULES)] + [
        [_random_rule(rng, n) for n in range(rng.randint(1, 8))] for _ in range(30)
    ]
    configs.append([RuleConfig(name="never", when={"requests": math.inf}, score=1, because="x")])
    for rules in configs:
        compiled = Rules(rules, THRESHOLDS)

        def rate(w: Any, req: int) -> tuple[float, float]:
            return w.rate(req, width, learn) if w.active >= learn else (0.0, 0.0)

        quick = compiled.quick(rate)
        for _ in range(300):
            w = _Window(rng)
            cur = [rng.randint(0, 10) for _ in range(COUNTS)]
            rem = [rng.randint(0, 10) for _ in range(COUNTS)]
            flags = (rng.random() < 0.3, rng.randint(0, 5))
            c = w.closed
            req, den = c[0] + cur[0] + rem[0], c[1] + cur[1] + rem[1]
            ratio, z = rate(w, req)
            signals = (req, ratio, z, den, den / req if req else 0.0, c[2] + cur[2] + rem[2],
                       c[3] + cur[3] + rem[3], c[4] + cur[4] + rem[4], *flags)  # fmt: skip
            held = compiled.score(signals)
            any_rule = bool(held.hits) if held is not LOW else False
            assert quick(w, cur, rem, flags) is any_rule, (rules, signals)
