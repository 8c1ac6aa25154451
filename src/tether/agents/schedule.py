"""An agent's declared working hours (its ``schedule`` attribute), and whether a moment is in.

The form: one or more ``DAYS HH:MM-HH:MM [ZONE]`` separated by ``;`` — ``DAYS`` a day
(``mon``), a range (``mon-fri``), a list (``mon,wed,fri``) or ``daily``; the hours may run
past midnight (``22:00-06:00``, the night belongs to the day it starts); ``ZONE`` an IANA
time zone (default UTC). ``"mon-fri 08:00-18:00 Europe/Berlin; sat 09:00-12:00"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PART = re.compile(
    r"^\s*(?P<days>daily|[a-z]{3}(?:-[a-z]{3})?(?:,[a-z]{3}(?:-[a-z]{3})?)*)\s+"
    r"(?P<start>\d{2}):(?P<sm>\d{2})-(?P<end>\d{2}):(?P<em>\d{2})(?:\s+(?P<zone>\S+))?\s*$"
)
MAX_LENGTH = 300


@dataclass(frozen=True, slots=True)
class _Window:
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int  # exclusive; <= start: runs past midnight
    zone: ZoneInfo | None


@dataclass(frozen=True, slots=True)
class Schedule:
    text: str
    windows: tuple[_Window, ...]

    def allows(self, now_us: int) -> bool:
        moment = datetime.fromtimestamp(now_us / 1e6, UTC)
        for w in self.windows:
            local = moment.astimezone(w.zone) if w.zone else moment
            minute = local.hour * 60 + local.minute
            day = local.weekday()
            if w.start < w.end:
                if day in w.days and w.start <= minute < w.end:
                    return True
            elif (day in w.days and minute >= w.start) or (
                (day - 1) % 7 in w.days and minute < w.end
            ):
                return True
        return False


def parse(text: str) -> Schedule:
    """The schedule, or :class:`ValueError` saying what is wrong with it."""
    if len(text) > MAX_LENGTH:
        raise ValueError(f"a schedule is at most {MAX_LENGTH} characters")
    windows = []
    for part in text.lower().split(";"):
        if not part.strip():
            continue
        m = _PART.match(part)
        if m is None:
            raise ValueError(f'{part.strip()!r} is not like "mon-fri 08:00-18:00 [Europe/Paris]"')
        start = _minutes(m.group("start"), m.group("sm"))
        end = _minutes(m.group("end"), m.group("em"))
        if start == end:
            raise ValueError(f"{part.strip()!r}: the hours start and end at the same time")
        zone = None
        if m.group("zone") and m.group("zone") not in ("utc", "z"):
            original = text.split(";")[text.lower().split(";").index(part)].rsplit(maxsplit=1)[-1]
            try:
                zone = ZoneInfo(original)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {original!r}") from None
        windows.append(_Window(_days(m.group("days")), start, end, zone))
    if not windows:
        raise ValueError("an empty schedule; leave the attribute out for none")
    return Schedule(text, tuple(windows))


def _minutes(hours: str, minutes: str) -> int:
    h, m = int(hours), int(minutes)
    if h > 24 or m > 59 or (h == 24 and m):
        raise ValueError(f"{hours}:{minutes} is not a time of day")
    return h * 60 + m


def _days(spec: str) -> frozenset[int]:
    if spec == "daily":
        return frozenset(range(7))
    out: set[int] = set()
    for item in spec.split(","):
        first, _, last = item.partition("-")
        for name in (first, last or first):
            if name not in _DAYS:
                raise ValueError(f"unknown day {name!r}; one of {', '.join(_DAYS)}")
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    return frozenset(out)
