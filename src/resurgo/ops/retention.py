"""Retention policies: which snapshots to keep, as a pure function (restic's ApplyPolicy).

Vocabulary: a *policy* is a set of keep rules; a *group* is the snapshots that
share a host and paths (and tags, on request), each group judged on its own;
a *decision* says, for one snapshot, keep or remove and the *reasons* it is
kept. A *bucket* is the hour, day, ISO week, month or year a snapshot's time
falls in; ``keep daily N`` keeps the newest snapshot of each of the N most
recent days that have one. Durations (``1y2m3d4h``) are calendar spans:
years, months, days, hours.

Rules, applied to the snapshots of a group from newest to oldest (a snapshot
is kept if any rule keeps it, and lists every rule that does):

* ``last N``: the N newest snapshots;
* ``hourly/daily/weekly/monthly/yearly N``: the newest snapshot of each of the
  N most recent buckets that hold one (N < 0: every bucket);
* ``within D``: every snapshot not older than ``now - D``;
* ``within_hourly/daily/... D``: the newest snapshot of every bucket, for the
  snapshots not older than ``now - D``;
* ``tags``: every snapshot carrying all the tags of one of the tag sets.

An empty policy keeps everything. A non-empty policy always keeps the newest
snapshot of each group (reason ``newest in group``), so no combination of
rules can silently remove every snapshot of a source; ``allow_remove_all``
turns that safety off. Buckets and durations are computed in the time zone
``tz`` (default UTC; docs/retention.md, "Time zones").

Nothing here touches a repository; ``resurgo.ops.forget`` applies decisions.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from resurgo.errors import UsageError
from resurgo.snapshot.model import Snapshot

GROUP_FIELDS = frozenset({"host", "paths", "tags"})
DEFAULT_GROUP_BY = frozenset({"host", "paths"})
NEWEST_REASON = "newest in group"

_DURATION = re.compile(r"(\d+)([ymdh])")


@dataclass(frozen=True)
class Duration:
    """A calendar span: ``1y2m3d4h`` is one year, two months, three days, four hours."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse restic's duration syntax; each unit at most once, in any order."""
        s = text.strip().lower()
        pos = 0
        seen: dict[str, int] = {}
        for m in _DURATION.finditer(s):
            if m.start() != pos or m.group(2) in seen:
                break
            seen[m.group(2)] = int(m.group(1))
            pos = m.end()
        if not seen or pos != len(s):
            raise UsageError(
                f"bad duration {text!r}: use numbers with units y, m, d, h, e.g. 1y6m, 14d, 36h"
            )
        return cls(seen.get("y", 0), seen.get("m", 0), seen.get("d", 0), seen.get("h", 0))

    def before(self, t: datetime) -> datetime:
        """``t`` minus this span, on the wall clock of ``t``'s time zone.

        Months are calendar months; a day that does not exist in the target
        month is clamped to its last day (31 March minus one month is 28 or
        29 February).
        """
        months = t.year * 12 + (t.month - 1) - self.years * 12 - self.months
        year, month = divmod(months, 12)
        month += 1
        if year < 1:
            return datetime.min.replace(tzinfo=t.tzinfo)
        day = min(t.day, calendar.monthrange(year, month)[1])
        wall = t.replace(tzinfo=None, year=year, month=month, day=day)
        wall -= timedelta(days=self.days, hours=self.hours)
        if wall.year < 1:
            return datetime.min.replace(tzinfo=t.tzinfo)
        return wall.replace(tzinfo=t.tzinfo)

    def __str__(self) -> str:
        parts = [f"{v}{u}" for v, u in ((self.years, "y"), (self.months, "m"), (self.days, "d"),
                                        (self.hours, "h")) if v]
        return "".join(parts) or "0h"


@dataclass(frozen=True)
class RetentionPolicy:
    """Keep rules; zero counts and ``None`` durations are off."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    within_hourly: Duration | None = None
    within_daily: Duration | None = None
    within_weekly: Duration | None = None
    within_monthly: Duration | None = None
    within_yearly: Duration | None = None
    tags: tuple[frozenset[str], ...] = ()
    allow_remove_all: bool = False

    @property
    def empty(self) -> bool:
        return not (
            self.last or self.hourly or self.daily or self.weekly or self.monthly or self.yearly
            or self.tags or any(d is not None for d in self._withins())
        )

    def _withins(self) -> tuple[Duration | None, ...]:
        return (self.within, self.within_hourly, self.within_daily, self.within_weekly,
                self.within_monthly, self.within_yearly)

    def describe(self) -> str:
        parts = [f"{name} {n if n > 0 else 'all'}" for name, n in (
            ("last", self.last), ("hourly", self.hourly), ("daily", self.daily),
            ("weekly", self.weekly), ("monthly", self.monthly), ("yearly", self.yearly)) if n]
        parts += [f"{name} {d}" for name, d in (
            ("within", self.within), ("within-hourly", self.within_hourly),
            ("within-daily", self.within_daily), ("within-weekly", self.within_weekly),
            ("within-monthly", self.within_monthly), ("within-yearly", self.within_yearly))
            if d is not None]
        parts += [f"tag {','.join(sorted(t))}" for t in self.tags]
        return "; ".join(parts) or "keep everything"


@dataclass
class Decision:
    snapshot: Snapshot
    keep: bool
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True, order=True)
class GroupKey:
    """What the snapshots of a group share (None: not grouped by that field)."""

    host: str | None = None
    paths: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None

    def describe(self) -> str:
        parts = []
        if self.host is not None:
            parts.append(f"host {self.host}")
        if self.paths is not None:
            parts.append(f"paths {', '.join(self.paths) or '-'}")
        if self.tags is not None:
            parts.append(f"tags {', '.join(self.tags) or '-'}")
        return "; ".join(parts) or "all snapshots"

    def as_dict(self) -> dict[str, object]:
        return {"host": self.host, "paths": list(self.paths) if self.paths is not None else None,
                "tags": list(self.tags) if self.tags is not None else None}


def parse_group_by(text: str) -> frozenset[str]:
    """``host,paths`` -> {"host", "paths"}; an empty string means one group for all."""
    fields = frozenset(p.strip() for p in text.split(",") if p.strip())
    unknown = fields - GROUP_FIELDS
    if unknown:
        raise UsageError(f"cannot group by {', '.join(sorted(unknown))}: "
                         "use a comma-separated subset of host, paths, tags")
    return fields


def group_snapshots(snaps: Iterable[Snapshot], by: Iterable[str] = DEFAULT_GROUP_BY
                    ) -> dict[GroupKey, list[Snapshot]]:
    """Snapshots grouped by the chosen fields (sorted paths and tags), each group oldest first."""
    fields = frozenset(by)
    if fields - GROUP_FIELDS:
        raise UsageError(f"cannot group by {', '.join(sorted(fields - GROUP_FIELDS))}")
    groups: dict[GroupKey, list[Snapshot]] = {}
    for s in snaps:
        key = GroupKey(
            host=s.hostname if "host" in fields else None,
            paths=tuple(sorted(s.paths)) if "paths" in fields else None,
            tags=tuple(sorted(set(s.tags))) if "tags" in fields else None,
        )
        groups.setdefault(key, []).append(s)
    for members in groups.values():
        members.sort(key=_order)
    return dict(sorted(groups.items()))


def _order(s: Snapshot) -> tuple[int, str]:
    return s.time_ns, s.id or ""


Bucket = Callable[[datetime], object]
_BUCKETS: tuple[tuple[str, Bucket], ...] = (
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: t.year),
)


def apply_policy(
    snapshots: Sequence[Snapshot], policy: RetentionPolicy, now: datetime, *, tz: tzinfo = UTC
) -> list[Decision]:
    """Decide keep or remove for the snapshots of ONE group; newest first in the result.

    ``now`` must be timezone-aware; it anchors the ``within`` rules. Pure: the
    same arguments always give the same decisions.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    ordered = sorted(snapshots, key=_order, reverse=True)
    if policy.empty:
        return [Decision(s, True, ["no policy: everything is kept"]) for s in ordered]
    now_tz = now.astimezone(tz)
    counts = {name: getattr(policy, name) for name, _ in _BUCKETS}
    counts["last"] = policy.last
    last_seen: dict[str, object] = {}
    within_limits = [
        (name, fn, getattr(policy, f"within_{name}"))
        for name, fn in _BUCKETS if getattr(policy, f"within_{name}") is not None
    ]
    within_last: dict[str, object] = {}
    decisions: list[Decision] = []
    for nr, snap in enumerate(ordered):
        t = snap.time.astimezone(tz)
        reasons: list[str] = []
        for tagset in policy.tags:
            if tagset <= set(snap.tags):
                reasons.append(f"has tags {','.join(sorted(tagset))}")
        if policy.within is not None and t >= policy.within.before(now_tz):
            reasons.append(f"within {policy.within}")
        for name, fn, limit in within_limits:
            assert limit is not None
            if t < limit.before(now_tz):
                continue
            val = fn(t)
            if within_last.get(name, _NONE) != val:
                within_last[name] = val
                reasons.append(f"{name} within {limit}")
        # Oldest-first counting would keep the oldest of each bucket; walking
        # newest first keeps the newest, which is what a restore wants.
        rules: list[tuple[str, object]] = [("last", nr)] + [(n, fn(t)) for n, fn in _BUCKETS]
        for name, val in rules:
            if counts[name] == 0:
                continue
            if last_seen.get(name, _NONE) != val:
                last_seen[name] = val
                if counts[name] > 0:
                    counts[name] -= 1
                reasons.append(f"{name} snapshot")
        decisions.append(Decision(snap, bool(reasons), reasons))
    if decisions and not policy.allow_remove_all and not decisions[0].keep:
        decisions[0].keep = True
        decisions[0].reasons.append(NEWEST_REASON)
    return decisions


_NONE = object()
