"""Monitoring's pure parts against their reference: the window's packed records against a
window of plain dicts re-totalled at every step, and the rules' compiled first look against
:meth:`Rules.score` — on random windows and rules, every answer equal (the decision path
takes the fast ones)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from tether.monitor.rules import DEFAULT_RULES, LOW, SIGNALS, RuleConfig, Rules, ThresholdConfig
from tether.monitor.windows import _MINE, _THEIRS, COUNTS, AgentWindow

THRESHOLDS = [ThresholdConfig(score=40, level="elevated", action="alert")]
FIELDS = ("req", "deny", "first", "secret", "approval")


class _Reference:
    """A window as plain dicts: this worker's counts by bucket, the others' by (worker,
    bucket) as they last published them; the window's total added up when asked."""

    def __init__(self) -> None:
        self.bucket = -1
        self.local: dict[int, list[int]] = {}
        self.theirs: dict[tuple[int, int], list[int]] = {}
        self.folded = -1  # the last bucket folded
        self.mean = self.var = 0.0
        self.active = 0

    def roll(self, b: int, width: int, alpha: float) -> None:
        if b == self.bucket:
            return
        self.bucket = b
        last = b - 2
        if last > self.folded:
            keys = {k for k in self.local if self.folded < k <= last}
            keys |= {k for _, k in self.theirs if self.folded < k <= last}
            for k in sorted(keys):
                x = self.local.get(k, [0])[0] + sum(c[0] for (_, kk), c in self.theirs.items()
                                                    if kk == k)  # fmt: skip
                if x <= 0:
                    continue
                if self.active == 0:
                    self.mean, self.var = float(x), 0.0
                else:
                    diff = x - self.mean
                    incr = alpha * diff
                    self.mean += incr
                    self.var = (1 - alpha) * (self.var + diff * incr)
                self.active += 1
            self.folded = last
        limit = b - width - 2
        self.local = {k: c for k, c in self.local.items() if k > limit}
        self.theirs = {key: c for key, c in self.theirs.items() if key[1] > limit}

    def total(self, width: int) -> list[int]:
        b = self.bucket
        held = [c for k, c in self.local.items() if b - width < k <= b]
        held += [c for (_, k), c in self.theirs.items() if b - width < k <= b]
        return [sum(c[i] for c in held) for i in range(COUNTS)]


def test_the_windows_records_keep_its_totals_baseline_and_publications_exact() -> None:
    """Random counts, other workers' merges (absolute, growing), rolls (a bucket, a few, a
    whole window, or back: clocks differ), syncs and clears: the window's total, baseline and
    what it published always those of the reference; nothing kept past the grace."""
    rng = random.Random(7)
    for _ in range(1_500):
        width = rng.choice([1, 2, 3, 6, 10])
        w, ref = AgentWindow(), _Reference()
        published: dict[int, tuple[int, ...]] = {}  # what the other workers were told
        start = rng.randrange(10, 60)
        for x in (w, ref):
            x.roll(start, width, 0.1)
        for _ in range(60):
            op = rng.random()
            if op < 0.4:  # this worker counts in the current bucket (Monitor.before, after)
                i = rng.randrange(COUNTS)
                setattr(w, FIELDS[i], getattr(w, FIELDS[i]) + 1)
                w.dirty = True
                ref.local.setdefault(ref.bucket, [0] * COUNTS)[i] += 1
            elif op < 0.6:  # another worker's counts, absolute, merged (Monitor._fold_in)
                worker, k = rng.randrange(3), w.bucket + rng.randrange(-width - 1, 3)
                said = ref.theirs.get((worker, k), [0] * COUNTS)
                now = [c + rng.randrange(0, 3) for c in said]
                w.merge(worker, k, now, width)
                ref.theirs[(worker, k)] = now
            elif op < 0.7:  # a sync takes what changed (Monitor._take)
                if w.dirty:
                    w.dirty = False
                    published[w.bucket] = w.counts()
            elif op < 0.72:  # a human clears the agent's risk
                w.clear()
                ref.local, ref.theirs, published = {}, {}, {}
            else:  # time moves on
                b = w.bucket + rng.choice([0, 1, 1, 2, 3, width, width + 5, -1])
                left = w.roll(b, width, 0.1)
                ref.roll(b, width, 0.1)
                if left is not None:
                    published[left[0]] = left[1:]
                limit = w.bucket - width - 2
                assert all(r[0] > limit for r in _MINE.iter_unpack(w.mine))
                assert all(r[1] > limit for r in _THEIRS.iter_unpack(w.theirs))
            assert [r + c for r, c in zip(w.rest, w.counts(), strict=True)] == ref.total(width)
            assert (w.active, w.mean, w.var) == pytest.approx((ref.active, ref.mean, ref.var))
        if w.dirty:
            published[w.bucket] = w.counts()
        for k, counts in ref.local.items():
            assert published.get(k) == tuple(counts), (k, published)


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
        self.rest = tuple(rng.randint(0, 50) for _ in range(COUNTS))
        self.req, self.deny, self.first, self.secret, self.approval = (
            rng.randint(0, 10) for _ in range(COUNTS))  # fmt: skip
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
            flags = (rng.random() < 0.3, rng.randint(0, 5))
            c = [r + getattr(w, f) for r, f in zip(w.rest, FIELDS, strict=True)]
            req, den = c[0], c[1]
            ratio, z = rate(w, req)
            signals = (req, ratio, z, den, den / req if req else 0.0, c[2], c[3], c[4], *flags)
            held = compiled.score(signals)
            any_rule = bool(held.hits) if held is not LOW else False
            assert quick(w, flags) is any_rule, (rules, signals)
