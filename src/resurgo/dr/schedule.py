"""Schedules and durations: when a job runs, and how long things may take.

A *schedule* yields *occurrences*: the instants at which a job is meant to
start. ``parse_schedule`` accepts

* 5-field cron: ``minute hour day-of-month month day-of-week`` with numbers,
  ranges (``1-5``), lists (``1,15``), steps (``*/15``, ``8-18/2``, ``5/10``),
  month names (``jan``..``dec``) and day names (``sun``..``sat``; 0 and 7 are
  both Sunday). As in Vixie cron, when both day fields are restricted a day
  matches if *either* does (``0 0 1 * mon``: the 1st and every Monday). A
  field counts as restricted when it does not cover its whole range.
* ``@hourly``, ``@daily`` (``@midnight``), ``@weekly``, ``@monthly``,
  ``@yearly`` (``@annually``).
* plain forms: ``hourly [at :MM]``, ``daily [at HH:MM]``, ``weekly [on DAY[,DAY..]]
  [at HH:MM]``, ``monthly [on N[,N..]] [at HH:MM]``, and ``every DURATION``.

Time zones and daylight saving time. Cron and plain calendar forms are
wall-clock times in the schedule's zone (the job's ``timezone``):

* a local time skipped by a spring-forward change (02:30 on the night clocks
  jump from 02:00 to 03:00) runs at the first instant after the gap (03:00 new
  time), once, however many skipped times collapse onto it;
* a local time repeated by a fall-back change (02:30 happens twice) runs once,
  at its first occurrence (summer time);
* except for schedules that run every hour (hour field ``*``: ``hourly``,
  ``*/15 * * * *``): they also run in the repeated hour, so they keep their
  rhythm in absolute time instead of pausing for an hour (Vixie cron makes the
  same exception for wildcard jobs).

``every DURATION`` is an *interval* in absolute time, anchored at the Unix
epoch: ``every 4h`` runs at 00:00, 04:00, ... UTC, whatever the zone and DST.
Anchoring at the epoch rather than at the previous run keeps occurrences
independent of how long runs take and of restarts, so the next run can be
computed from the clock alone; use ``daily at`` for local wall-clock times.

Durations are ``90s``, ``15m``, ``4h``, ``7d``, ``2w`` and combinations in
decreasing unit order such as ``1d12h`` or ``1h 30m``; a bare number is
refused, because it is ambiguous.
"""

from __future__ import annotations

import calendar
import math
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from resurgo.errors import UsageError

__all__ = [
    "CronSchedule",
    "IntervalSchedule",
    "Schedule",
    "ScheduleError",
    "format_duration",
    "local_zone",
    "parse_duration",
    "parse_schedule",
    "zone",
]

# --- durations ----------------------------------------------------------------------

_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_UNIT_ORDER = "wdhms"
_DURATION_PART = re.compile(r"\s*(\d+)\s*([wdhms])", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``"90s"``, ``"1d12h"``); raises ``UsageError`` if malformed.

    Units must appear at most once each, largest first, so ``"1h1h"`` and
    ``"30m1h"`` are refused as probable typos.
    """
    if not isinstance(text, str):
        raise UsageError(f"not a duration: {text!r} (expected a string such as \"15m\" or \"1d12h\")")
    s = text.strip()
    pos = 0
    total = 0
    last_rank = -1
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            break
        unit = m.group(2).lower()
        rank = _UNIT_ORDER.index(unit)
        if rank <= last_rank:
            raise UsageError(
                f"not a duration: {text!r} (give each unit once, largest first, e.g. \"1d12h\")"
            )
        last_rank = rank
        total += int(m.group(1)) * _UNITS[unit]
        pos = m.end()
    if not s or pos != len(s):
        raise UsageError(
            f"not a duration: {text!r} (examples: \"90s\", \"15m\", \"4h\", \"7d\", \"2w\", "
            "\"1d12h\")"
        )
    return float(total)


def format_duration(seconds: float) -> str:
    """The canonical text of a whole number of seconds: ``5400`` -> ``"1h30m"``; 0 -> ``"0s"``."""
    rest = round(seconds)
    if rest < 0:
        raise ValueError("negative duration")
    parts = []
    for unit in _UNIT_ORDER:
        n, rest = divmod(rest, _UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


# --- zones --------------------------------------------------------------------------


class ScheduleError(UsageError):
    """A schedule or time zone that cannot be understood."""


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (``"Europe/Paris"``); ``ScheduleError`` if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown time zone {name!r} (use an IANA name such as \"Europe/Paris\")")


def local_zone() -> tzinfo:
    """The machine's zone, from ``/etc/localtime``; UTC when it cannot be determined.

    A fixed offset from ``datetime.now().astimezone()`` would be wrong half the
    year, so the zone's rules are read from the tz database.
    """
    try:
        target = os.readlink("/etc/localtime")
        _, sep, key = target.partition("zoneinfo/")
        if sep:
            return ZoneInfo(key)
    except (OSError, ZoneInfoNotFoundError, ValueError):
        pass
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return UTC


# --- schedules ----------------------------------------------------------------------


class Schedule(ABC):
    """When a job runs. ``text`` is what the user wrote; ``tz`` the zone (None: ``t``'s)."""

    text: str
    tz: tzinfo | None

    @abstractmethod
    def next_after(self, t: datetime) -> datetime:
        """The first occurrence strictly after the aware datetime ``t``, in the schedule's zone."""

    @abstractmethod
    def with_zone(self, tz: tzinfo | None) -> Schedule:
        """The same schedule read in another zone."""

    def occurrences(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Occurrences ``o`` with ``start < o <= end``, in order."""
        t = start
        while True:
            t = self.next_after(t)
            if t > end:
                return
            yield t

    def max_gap(self, sample: int = 200) -> float:
        """The longest time between consecutive occurrences in a sample (seconds).

        Samples up to ``sample`` occurrences (or 400 days) from 2025-01-01 in
        the schedule's zone; enough to see weekends, month ends and a DST change.
        """
        tz = self.tz or UTC
        t = datetime(2025, 1, 1, tzinfo=tz)
        limit = t + timedelta(days=400)
        gap = 0.0
        prev = self.next_after(t)
        for _ in range(sample):
            nxt = self.next_after(prev)
            gap = max(gap, (nxt - prev).total_seconds())
            prev = nxt
            if prev > limit:
                break
        return gap

    def _zone_for(self, t: datetime) -> tzinfo:
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError("next_after needs an aware datetime")
        return self.tz or t.tzinfo

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, eq=False)
class IntervalSchedule(Schedule):
    """Every ``seconds``, in absolute time, at multiples of ``seconds`` since the epoch."""

    seconds: int
    text: str = ""
    tz: tzinfo | None = None

    def next_after(self, t: datetime) -> datetime:
        tz = self._zone_for(t)
        ts = t.timestamp()
        n = math.floor(ts / self.seconds) + 1
        while n * self.seconds <= ts:  # float rounding near a boundary
            n += 1
        return datetime.fromtimestamp(n * self.seconds, tz)

    def with_zone(self, tz: tzinfo | None) -> IntervalSchedule:
        return IntervalSchedule(self.seconds, self.text, tz)


@dataclass(frozen=True, eq=False)
class CronSchedule(Schedule):
    """Wall-clock occurrences matching five cron fields (see the module docstring)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]  # day of month, 1-31
    months: frozenset[int]  # 1-12
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday
    text: str = ""
    tz: tzinfo | None = None
    _times: tuple[tuple[int, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        times = tuple((h, m) for h in sorted(self.hours) for m in sorted(self.minutes))
        object.__setattr__(self, "_times", times)

    @property
    def every_hour(self) -> bool:
        """Runs in every hour of the day: keeps running through a repeated hour."""
        return len(self.hours) == 24

    def with_zone(self, tz: tzinfo | None) -> CronSchedule:
        return CronSchedule(
            self.minutes, self.hours, self.days, self.months, self.weekdays, self.text, tz
        )

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom_restricted = len(self.days) < 31
        dow_restricted = len(self.weekdays) < 7
        weekday = (d.weekday() + 1) % 7
        if dom_restricted and dow_restricted:
            return d.day in self.days or weekday in self.weekdays
        if dom_restricted:
            return d.day in self.days
        if dow_restricted:
            return weekday in self.weekdays
        return True

    def next_after(self, t: datetime) -> datetime:
        tz = self._zone_for(t)
        t_utc = t.astimezone(UTC)
        local = t_utc.astimezone(tz).replace(tzinfo=None)
        # DST shifts are at most a few hours: wall times more than that before
        # t cannot map to instants after t, and candidates more than that after
        # the best one found cannot beat it.
        margin = timedelta(hours=3)
        low = local - margin
        best: datetime | None = None
        best_wall = local
        day = local.date() - timedelta(days=1)
        for _ in range(366 * 9):  # Feb 29 comes at most every 8 years
            if best is not None and day > best_wall.date():
                break
            if self.day_matches(day):
                for h, m in self._times:
                    wall = datetime(day.year, day.month, day.day, h, m)
                    if wall < low:
                        continue
                    if best is not None and wall > best_wall + margin:
                        break
                    for inst in _instants(wall, tz, both_folds=self.every_hour):
                        if inst > t_utc and (best is None or inst < best):
                            best, best_wall = inst, wall
            day += timedelta(days=1)
        if best is None:
            raise ValueError(f"schedule {self.text!r} has no occurrence")
        return best.astimezone(tz)


def _instants(wall: datetime, tz: tzinfo, *, both_folds: bool) -> list[datetime]:
    """The UTC instants at which the naive local ``wall`` time happens in ``tz``."""
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first < second:  # repeated by a fall-back change (PEP 495: fold=0 is the first)
        return [first, second] if both_folds else [first]
    # Skipped by a spring-forward change: fold=1 reads it with the new offset
    # (an instant before the change), fold=0 with the old one (after it).
    return [_gap_end(second, first, wall, tz)]


def _gap_end(before: datetime, after: datetime, wall: datetime, tz: tzinfo) -> datetime:
    """The first instant in (before, after] whose local time is later than ``wall``.

    That is the moment of the spring-forward change: the first instant after the gap.
    """
    lo, hi = int(before.timestamp()), math.ceil(after.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).replace(tzinfo=None) > wall:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


# --- parsing ------------------------------------------------------------------------

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
_MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_name) if name})
_DAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
_DAYS.update({
    "sunday": 0, "monday": 1, "tuesday": 2, "wednesday": 3, "thursday": 4, "friday": 5,
    "saturday": 6, "tues": 2, "thur": 4, "thurs": 4,
})

_FIELDS: tuple[tuple[str, int, int, dict[str, int] | None], ...] = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)

_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

_HELP = (
    "use a cron expression such as \"0 2 * * *\" or a plain form: \"every 4h\", \"hourly\", "
    "\"daily at 02:00\", \"weekly on sunday at 03:00\", \"monthly on 1 at 04:00\""
)

_AT = r"(?:\s+at\s+(?P<hh>\d{1,2}):(?P<mm>\d{2}))?"
_PLAIN = [
    (re.compile(r"^hourly(?:\s+at\s+:?(?P<mm>\d{1,2}))?$"), "hourly"),
    (re.compile(r"^daily" + _AT + "$"), "daily"),
    (re.compile(r"^weekly(?:\s+on\s+(?P<days>[a-z]+(?:\s*,\s*[a-z]+)*))?" + _AT + "$"), "weekly"),
    (re.compile(r"^monthly(?:\s+on\s+(?P<doms>\d{1,2}(?:st|nd|rd|th)?"
                r"(?:\s*,\s*\d{1,2}(?:st|nd|rd|th)?)*))?" + _AT + "$"), "monthly"),
]


def parse_schedule(text: str, tz: tzinfo | str | None = None) -> Schedule:
    """The schedule ``text`` describes, read in ``tz`` (an IANA name or tzinfo; None: ``t``'s).

    Raises ``ScheduleError`` (a ``UsageError``) naming the problem.
    """
    if not isinstance(text, str):
        raise ScheduleError(f"not a schedule: {text!r}; {_HELP}")
    zone_ = zone(tz) if isinstance(tz, str) else tz
    norm = " ".join(text.strip().lower().split())
    if not norm:
        raise ScheduleError(f"empty schedule; {_HELP}")
    if norm.startswith("every "):
        try:
            seconds = parse_duration(norm[len("every "):])
        except UsageError as e:
            raise ScheduleError(f"{e}; {_HELP}")
        if seconds < 1:
            raise ScheduleError(f"interval {text!r} is zero")
        return IntervalSchedule(int(seconds), text, zone_)
    if norm.startswith("@"):
        if norm not in _MACROS:
            raise ScheduleError(f"unknown cron macro {text!r}: use one of {', '.join(_MACROS)}")
        return _cron(_MACROS[norm], text, zone_)
    if norm[0].isdigit() or norm[0] == "*":  # a cron minute field
        return _cron(norm, text, zone_)
    for pattern, kind in _PLAIN:
        m = pattern.match(norm)
        if m:
            return _plain(kind, m, text, zone_)
    raise ScheduleError(f"not a schedule: {text!r}; {_HELP}")


def _clock_time(m: re.Match[str], text: str) -> tuple[int, int]:
    if m.group("hh") is None:
        return 0, 0
    hh, mm = int(m.group("hh")), int(m.group("mm"))
    if hh > 23 or mm > 59:
        raise ScheduleError(f"not a time of day in {text!r}: use HH:MM from 00:00 to 23:59")
    return hh, mm


def _plain(kind: str, m: re.Match[str], text: str, tz: tzinfo | None) -> Schedule:
    if kind == "hourly":
        mm = int(m.group("mm") or 0)
        if mm > 59:
            raise ScheduleError(f"minute out of range in {text!r}: use 0-59")
        return _cron(f"{mm} * * * *", text, tz)
    hh, mm = _clock_time(m, text)
    if kind == "daily":
        return _cron(f"{mm} {hh} * * *", text, tz)
    if kind == "weekly":
        names = [d.strip() for d in (m.group("days") or "sunday").split(",")]
        days = []
        for name in names:
            if name not in _DAYS:
                raise ScheduleError(f"unknown day {name!r} in {text!r} (use monday .. sunday)")
            days.append(str(_DAYS[name]))
        return _cron(f"{mm} {hh} * * {','.join(days)}", text, tz)
    doms = [re.sub(r"(st|nd|rd|th)$", "", d.strip()) for d in (m.group("doms") or "1").split(",")]
    return _cron(f"{mm} {hh} {','.join(doms)} * *", text, tz)


def _cron(expr: str, text: str, tz: tzinfo | None) -> CronSchedule:
    parts = expr.split()
    if len(parts) != 5:
        raise ScheduleError(
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), "
            f"{text!r} has {len(parts)}; {_HELP}"
        )
    values = [_field(p, name, lo, hi, names, text) for p, (name, lo, hi, names) in
              zip(parts, _FIELDS, strict=True)]
    minutes, hours, days, months, weekdays = values
    weekdays = frozenset(d % 7 for d in weekdays)  # 7 is Sunday too
    dom_restricted, dow_restricted = len(days) < 31, len(weekdays) < 7
    if dom_restricted and not dow_restricted:
        # Refuse schedules that can never fire (``0 0 30 2 *``) instead of
        # searching forever for their next occurrence.
        possible = any(d <= _max_days(mo) for mo in months for d in days)
        if not possible:
            raise ScheduleError(f"schedule {text!r} never runs: no month has that day")
    return CronSchedule(
        frozenset(minutes), frozenset(hours), frozenset(days), frozenset(months),
        weekdays, text, tz,
    )


def _max_days(month: int) -> int:
    return 29 if month == 2 else calendar.monthrange(2001, month)[1]


def _field(
    spec: str, name: str, lo: int, hi: int, names: dict[str, int] | None, text: str
) -> frozenset[int]:
    def value(token: str) -> int:
        if token.isdigit():
            v = int(token)
        elif names is not None and token in names:
            v = names[token]
        else:
            raise ScheduleError(f"bad {name} {token!r} in {text!r}")
        if not lo <= v <= hi:
            raise ScheduleError(f"{name} {v} out of range {lo}-{hi} in {text!r}")
        return v

    out: set[int] = set()
    for item in spec.split(","):
        base, sep, step_text = item.partition("/")
        step = 1
        if sep:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"bad step {step_text!r} in the {name} field of {text!r}")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = value(a), value(b)
            if start > end:
                raise ScheduleError(f"backwards range {base!r} in the {name} field of {text!r}")
        else:
            start = value(base)
            end = hi if sep else start
        out.update(range(start, end + 1, step))
    if not out:
        raise ScheduleError(f"empty {name} field in {text!r}")
    return frozenset(out)
