"""Schedules: cron and plain forms, intervals, and daylight-saving changes in Paris and
New York; next_after is always strictly later and always an occurrence."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resurgo.dr.schedule import (
    CronSchedule,
    IntervalSchedule,
    ScheduleError,
    parse_schedule,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def runs(text: str, start: datetime, n: int, tz: ZoneInfo | None = None) -> list[datetime]:
    schedule = parse_schedule(text, tz)
    out, t = [], start
    for _ in range(n):
        t = schedule.next_after(t)
        out.append(t)
    return out


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, *,
          tz: ZoneInfo = PARIS) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=tz)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


# --- cron forms -------------------------------------------------------------------------


def test_cron_numbers_ranges_lists_and_steps() -> None:
    s = parse_schedule("*/20 9-17/4 * * 1-5", PARIS)
    assert isinstance(s, CronSchedule)
    assert s.minutes == {0, 20, 40}
    assert s.hours == {9, 13, 17}
    assert s.weekdays == {1, 2, 3, 4, 5}
    start = local(2024, 6, 7, 17, 30)  # a Friday
    assert runs("*/20 9-17/4 * * 1-5", start, 4, PARIS) == [
        local(2024, 6, 7, 17, 40), local(2024, 6, 10, 9, 0), local(2024, 6, 10, 9, 20),
        local(2024, 6, 10, 9, 40),
    ]


def test_cron_single_value_with_step_runs_to_the_end_of_the_range() -> None:
    assert parse_schedule("5/15 * * * *").minutes == {5, 20, 35, 50}


def test_cron_month_and_day_names() -> None:
    s = parse_schedule("30 6 * jan,JUL mon-wed", PARIS)
    assert s.months == {1, 7} and s.weekdays == {1, 2, 3}
    assert runs("30 6 * jan,JUL mon-wed", local(2024, 2, 1), 2, PARIS) == [
        local(2024, 7, 1, 6, 30), local(2024, 7, 2, 6, 30),
    ]


def test_cron_sunday_is_0_and_7() -> None:
    assert parse_schedule("0 0 * * 7").weekdays == {0}
    assert runs("0 0 * * 7", utc(2024, 1, 1), 1, None) == [utc(2024, 1, 7)]


def test_cron_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    # Vixie cron: the 13th, and every Friday.
    got = runs("0 12 13 * fri", local(2024, 9, 1), 4, PARIS)
    assert got == [local(2024, 9, 6, 12), local(2024, 9, 13, 12), local(2024, 9, 20, 12),
                   local(2024, 9, 27, 12)]


def test_cron_feb_29_waits_for_a_leap_year() -> None:
    assert runs("0 0 29 2 *", utc(2024, 3, 1), 2) == [utc(2028, 2, 29), utc(2032, 2, 29)]


@pytest.mark.parametrize(
    ("macro", "equivalent"),
    [("@hourly", "0 * * * *"), ("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
     ("@weekly", "0 0 * * 0"), ("@monthly", "0 0 1 * *"), ("@yearly", "0 0 1 1 *")],
)
def test_cron_macros(macro: str, equivalent: str) -> None:
    start = utc(2024, 5, 17, 13, 45)
    assert runs(macro, start, 3) == runs(equivalent, start, 3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("60 * * * *", "minute 60 out of range 0-59"),
        ("* 24 * * *", "hour 24 out of range"),
        ("* * 0 * *", "day of month 0 out of range"),
        ("* * * 13 *", "month 13 out of range"),
        ("* * * * 8", "day of week 8 out of range"),
        ("* * * * funday", "bad day of week"),
        ("*/0 * * * *", "bad step"),
        ("30-10 * * * *", "backwards range"),
        ("* * * *", "5 fields"),
        ("0 0 30 2 *", "never runs"),
        ("@reboot", "unknown cron macro"),
        ("dailly at 02:00", "not a schedule"),
        ("daily at 25:00", "not a time of day"),
        ("weekly on funday", "unknown day"),
        ("every 4 hours", "not a duration"),
        ("every 0s", "zero"),
        ("", "empty schedule"),
    ],
)
def test_malformed_schedules_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(text)


# --- plain forms -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plain", "cron"),
    [
        ("hourly", "0 * * * *"),
        ("hourly at :15", "15 * * * *"),
        ("daily", "0 0 * * *"),
        ("daily at 02:00", "0 2 * * *"),
        ("Daily  At 2:30", "30 2 * * *"),
        ("weekly", "0 0 * * 0"),
        ("weekly on sunday", "0 0 * * 0"),
        ("weekly on sunday at 03:00", "0 3 * * 0"),
        ("weekly on mon,thu at 22:15", "15 22 * * 1,4"),
        ("monthly", "0 0 1 * *"),
        ("monthly on 1 at 04:00", "0 4 1 * *"),
        ("monthly on 1st,15th at 04:00", "0 4 1,15 * *"),
    ],
)
def test_plain_forms_mean_their_cron_equivalent(plain: str, cron: str) -> None:
    a, b = parse_schedule(plain, PARIS), parse_schedule(cron, PARIS)
    assert isinstance(a, CronSchedule) and isinstance(b, CronSchedule)
    assert (a.minutes, a.hours, a.days, a.months, a.weekdays) == (
        b.minutes, b.hours, b.days, b.months, b.weekdays)
    assert a.text == plain


def test_every_is_an_interval_anchored_at_the_epoch() -> None:
    s = parse_schedule("every 4h", PARIS)
    assert isinstance(s, IntervalSchedule) and s.seconds == 4 * 3600
    got = runs("every 4h", local(2024, 1, 1, 1, 0), 3, PARIS)
    # 00:00 UTC is 01:00 in Paris in winter; occurrences are multiples of 4h since the epoch.
    assert [t.astimezone(UTC) for t in got] == [utc(2024, 1, 1, 4), utc(2024, 1, 1, 8),
                                                utc(2024, 1, 1, 12)]
    assert all(t.tzinfo is PARIS for t in got)


def test_every_supports_seconds_and_combined_durations() -> None:
    assert runs("every 5s", utc(2024, 1, 1, 0, 0, 3), 2) == [utc(2024, 1, 1, 0, 0, 5),
                                                           utc(2024, 1, 1, 0, 0, 10)]
    assert parse_schedule("every 1d12h").seconds == 129600


def test_interval_keeps_absolute_rhythm_across_dst() -> None:
    start = local(2024, 3, 30, 23, 0)  # Paris, the night clocks go forward
    got = runs("every 1h", start, 4, PARIS)
    instants = [t.astimezone(UTC) for t in [start, *got]]
    gaps = {b - a for a, b in itertools.pairwise(instants)}
    assert gaps == {timedelta(hours=1)}


def test_next_after_needs_an_aware_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_schedule("hourly").next_after(datetime(2024, 1, 1))


def test_schedule_without_zone_uses_the_zone_of_the_time_given() -> None:
    s = parse_schedule("daily at 02:00")
    assert s.next_after(local(2024, 1, 1, 12, tz=NEW_YORK)) == local(2024, 1, 2, 2, tz=NEW_YORK)


# --- daylight saving time -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "utc_after_gap"),
    [(PARIS, (2024, 3, 31), utc(2024, 3, 31, 1, 0)),
     (NEW_YORK, (2024, 3, 10), utc(2024, 3, 10, 7, 0))],
)
def test_time_skipped_by_spring_forward_runs_at_the_end_of_the_gap(
    tz: ZoneInfo, day: tuple[int, int, int], utc_after_gap: datetime
) -> None:
    before = local(*day, 0, 0, tz=tz)
    first, second = runs("daily at 02:30", before, 2, tz)
    assert first.astimezone(UTC) == utc_after_gap
    assert (first.hour, first.minute) == (3, 0)  # the first instant after the gap
    # and the next day it is 02:30 again
    assert second == local(*day, 2, 30, tz=tz) + timedelta(days=1)


def test_times_skipped_by_spring_forward_collapse_into_one_run() -> None:
    got = runs("*/15 2 * * *", local(2024, 3, 31, 0, 0), 2, PARIS)
    assert got[0].astimezone(UTC) == utc(2024, 3, 31, 1, 0)  # 03:00 CEST
    assert got[1] == local(2024, 4, 1, 2, 0)


@pytest.mark.parametrize(
    ("tz", "day", "first_utc"),
    [(PARIS, (2024, 10, 27), utc(2024, 10, 27, 0, 30)),
     (NEW_YORK, (2024, 11, 3), utc(2024, 11, 3, 5, 30))],
)
def test_time_repeated_by_fall_back_runs_once_at_its_first_occurrence(
    tz: ZoneInfo, day: tuple[int, int, int], first_utc: datetime
) -> None:
    hour = 2 if tz is PARIS else 1  # the repeated hour: 02:xx in Paris, 01:xx in New York
    text = f"30 {hour} * * *"
    first, second = runs(text, local(*day, 0, 0, tz=tz), 2, tz)
    assert first.astimezone(UTC) == first_utc
    assert (first.hour, first.minute) == (hour, 30)
    # not again an hour later (the second pass), but tomorrow
    assert second == local(*day, hour, 30, tz=tz) + timedelta(days=1)
    # Asking from inside the repeated hour's second pass does not run it again.
    second_pass = (first.astimezone(UTC) + timedelta(hours=1)).astimezone(tz)
    assert second_pass.hour == hour and second_pass.minute == 30
    assert parse_schedule(text, tz).next_after(second_pass) == second


def test_hourly_schedules_keep_running_through_the_repeated_hour() -> None:
    start = local(2024, 10, 27, 1, 30)
    got = runs("hourly", start, 4, PARIS)
    assert [t.astimezone(UTC) for t in got] == [
        utc(2024, 10, 27, 0), utc(2024, 10, 27, 1), utc(2024, 10, 27, 2), utc(2024, 10, 27, 3),
    ]
    assert [t.hour for t in got] == [2, 2, 3, 4]  # 02:00 twice: CEST then CET


def test_hourly_skips_nothing_but_the_missing_hour_in_spring() -> None:
    got = runs("0 * * * *", local(2024, 3, 10, 0, 30, tz=NEW_YORK), 3, NEW_YORK)
    assert [t.astimezone(UTC) for t in got] == [utc(2024, 3, 10, 6), utc(2024, 3, 10, 7),
                                                utc(2024, 3, 10, 8)]
    assert [t.hour for t in got] == [1, 3, 4]


def test_weekly_across_dst_stays_on_local_wall_clock() -> None:
    got = runs("weekly on sunday at 03:00", local(2024, 3, 20), 2, PARIS)
    assert got == [local(2024, 3, 24, 3), local(2024, 3, 31, 3)]
    # one hour shorter in absolute time
    assert got[1].astimezone(UTC) - got[0].astimezone(UTC) == timedelta(days=7, hours=-1)


# --- properties ----------------------------------------------------------------------------

CRON_TEXTS = st.sampled_from([
    "* * * * *", "*/7 * * * *", "0 * * * *", "30 2 * * *", "0 3 * * 0", "15 1 1,15 * *",
    "0 0 29 2 *", "0 12 13 * fri", "45 1-3 * * *", "0 2 * 3,10 sun", "59 23 31 * *",
    "daily at 02:30", "hourly at :05", "weekly on mon,fri at 01:30", "monthly on 31 at 02:15",
])
ZONES = st.sampled_from([PARIS, NEW_YORK, ZoneInfo("UTC"), ZoneInfo("Australia/Lord_Howe")])
INSTANTS = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1),
                        timezones=st.just(UTC))


def _matches(s: CronSchedule, t: datetime) -> bool:
    """Whether ``t`` is a valid occurrence: its wall time matches, or it ends a DST gap
    that swallowed a matching wall time."""
    wall = t.replace(tzinfo=None)
    if t.second == 0 and t.microsecond == 0 and s.day_matches(wall.date()) and (
        t.hour in s.hours and t.minute in s.minutes
    ):
        return True
    before = (t.astimezone(UTC) - timedelta(seconds=1)).astimezone(t.tzinfo)
    gap = wall - before.replace(tzinfo=None)
    if gap <= timedelta(seconds=1):
        return False
    cursor = before.replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
    while cursor < wall:
        if s.day_matches(cursor.date()) and cursor.hour in s.hours and cursor.minute in s.minutes:
            return True
        cursor += timedelta(minutes=1)
    return False


@settings(max_examples=300, deadline=None)
@given(CRON_TEXTS, ZONES, INSTANTS)
def test_next_after_is_strictly_later_and_an_occurrence(
    text: str, tz: ZoneInfo, t: datetime
) -> None:
    s = parse_schedule(text, tz)
    assert isinstance(s, CronSchedule)
    nxt = s.next_after(t.astimezone(tz))
    assert nxt > t
    assert nxt.tzinfo is tz
    assert _matches(s, nxt)


@settings(max_examples=150, deadline=None)
@given(CRON_TEXTS, ZONES, INSTANTS)
def test_next_after_skips_no_occurrence(text: str, tz: ZoneInfo, t: datetime) -> None:
    """No matching minute lies strictly between t and next_after(t) (minute by minute
    over the stretch, for schedules whose occurrences are close enough to walk)."""
    s = parse_schedule(text, tz)
    assert isinstance(s, CronSchedule)
    nxt = s.next_after(t)
    if nxt - t > timedelta(days=3):
        return
    cursor = t.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    while cursor < nxt:
        wall = cursor.astimezone(tz)
        if s.day_matches(wall.date()) and wall.hour in s.hours and wall.minute in s.minutes:
            # only allowed if it is a repeated (second-pass) wall time of a non-hourly schedule
            assert wall.fold == 1 and not s.every_hour, (cursor, nxt)
        cursor += timedelta(minutes=1)


@given(st.integers(min_value=1, max_value=10 * 86400), INSTANTS)
def test_intervals_are_strictly_later_multiples_of_their_length(
    seconds: int, t: datetime
) -> None:
    s = IntervalSchedule(seconds, f"every {seconds}s")
    nxt = s.next_after(t)
    assert nxt > t
    assert nxt.timestamp() % seconds == 0
    assert nxt - t <= timedelta(seconds=seconds)
