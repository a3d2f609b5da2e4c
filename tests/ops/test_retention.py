"""Retention policies: the pure ``apply_policy`` function, its buckets, durations and groups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resurgo.errors import UsageError
from resurgo.ops.forget import plan_ids, plan_policy
from resurgo.ops.retention import (
    NEWEST_REASON,
    Duration,
    RetentionPolicy,
    apply_policy,
    group_snapshots,
    parse_group_by,
)
from resurgo.snapshot.model import Snapshot

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
EPOCH_NS = int(NOW.timestamp() * 1e9)


def snap(t: datetime, *, host: str = "h", paths: tuple[str, ...] = ("/data",),
         tags: tuple[str, ...] = (), sid: str | None = None) -> Snapshot:
    ns = int(t.timestamp() * 1e9)
    return Snapshot(time_ns=ns, tree=b"\x00" * 32, paths=list(paths), hostname=host,
                    tags=list(tags), id=sid or f"{ns:032x}{len(tags):032x}")


# --- strategies -------------------------------------------------------------------------

# Snapshot times within about three years before NOW (and a little after: clocks differ).
offsets = st.integers(min_value=-3 * 365 * 86400, max_value=3600)


@st.composite
def snapshot_lists(draw: st.DrawFn, max_size: int = 40) -> list[Snapshot]:
    secs = draw(st.lists(offsets, min_size=0, max_size=max_size))
    out = []
    for i, s in enumerate(secs):
        tags = tuple(draw(st.lists(st.sampled_from(["daily", "manual", "db"]), max_size=2,
                                   unique=True)))
        t = NOW + timedelta(seconds=s)
        out.append(snap(t, tags=tags, sid=f"{i:04x}" + "0" * 60))
    return out


durations = st.builds(Duration, years=st.integers(0, 2), months=st.integers(0, 14),
                      days=st.integers(0, 40), hours=st.integers(0, 48))
counts = st.integers(min_value=-1, max_value=6)


@st.composite
def policies(draw: st.DrawFn) -> RetentionPolicy:
    return RetentionPolicy(
        last=draw(st.integers(0, 6)),
        hourly=draw(counts), daily=draw(counts), weekly=draw(counts),
        monthly=draw(counts), yearly=draw(counts),
        within=draw(st.none() | durations),
        within_hourly=draw(st.none() | durations), within_daily=draw(st.none() | durations),
        within_weekly=draw(st.none() | durations), within_monthly=draw(st.none() | durations),
        within_yearly=draw(st.none() | durations),
        tags=tuple(frozenset(t) for t in draw(st.lists(
            st.sets(st.sampled_from(["daily", "manual", "db"]), min_size=1, max_size=2),
            max_size=2))),
    )


def newest_first(snaps: list[Snapshot]) -> list[Snapshot]:
    return sorted(snaps, key=lambda s: (s.time_ns, s.id), reverse=True)


# --- properties -------------------------------------------------------------------------


@PROPS
@given(snaps=snapshot_lists(), policy=policies())
def test_newest_snapshot_of_a_group_is_always_kept_when_any_rule_is_set(snaps, policy):
    decisions = apply_policy(snaps, policy, NOW)
    if not snaps:
        assert decisions == []
        return
    newest = newest_first(snaps)[0]
    kept = {d.snapshot.id for d in decisions if d.keep}
    assert newest.id in kept


@PROPS
@given(snaps=snapshot_lists(), policy=policies())
def test_no_snapshot_is_kept_without_a_reason_and_none_removed_with_one(snaps, policy):
    for d in apply_policy(snaps, policy, NOW):
        assert d.keep == bool(d.reasons)


@PROPS
@given(snaps=snapshot_lists(), policy=policies())
def test_every_snapshot_gets_exactly_one_decision_newest_first(snaps, policy):
    decisions = apply_policy(snaps, policy, NOW)
    assert [d.snapshot.id for d in decisions] == [s.id for s in newest_first(snaps)]


@PROPS
@given(snaps=snapshot_lists(), daily=st.integers(1, 8))
def test_a_snapshot_kept_by_keep_daily_is_the_newest_of_its_day(snaps, daily):
    decisions = apply_policy(snaps, RetentionPolicy(daily=daily), NOW)
    kept_days = []
    for d in decisions:
        if "daily snapshot" not in d.reasons:
            continue
        day = d.snapshot.time.date()
        kept_days.append(day)
        same_day = [s for s in snaps if s.time.date() == day]
        assert d.snapshot is newest_first(same_day)[0]
    # ... and they are the `daily` most recent days that have snapshots.
    all_days = sorted({s.time.date() for s in snaps}, reverse=True)
    assert kept_days == all_days[:daily]


@PROPS
@given(snaps=snapshot_lists(), n=st.integers(0, 50))
def test_keep_last_n_keeps_exactly_the_min_of_n_and_len_newest(snaps, n):
    decisions = apply_policy(snaps, RetentionPolicy(last=n), NOW)
    kept = [d.snapshot.id for d in decisions if d.keep]
    expected = [s.id for s in newest_first(snaps)][: max(n, 1 if snaps and n else 0)]
    if n == 0:
        # an empty policy keeps everything
        assert len(kept) == len(snaps)
    else:
        assert kept == expected
        assert len(kept) == min(n, len(snaps))


@PROPS
@given(snaps=snapshot_lists(), policy=policies())
def test_applying_the_policy_to_the_kept_set_keeps_all_of_it(snaps, policy):
    kept = [d.snapshot for d in apply_policy(snaps, policy, NOW) if d.keep]
    again = apply_policy(kept, policy, NOW)
    assert all(d.keep for d in again)


@PROPS
@given(snaps=snapshot_lists(), within=durations, shift=st.integers(0, 400 * 86400))
def test_keep_within_keeps_what_is_not_older_than_now_minus_the_duration(snaps, within, shift):
    now = NOW + timedelta(seconds=shift)  # a fake "now", moved forward
    decisions = apply_policy(snaps, RetentionPolicy(within=within), now)
    limit = within.before(now)
    for d in decisions:
        inside = d.snapshot.time >= limit
        assert (f"within {within}" in d.reasons) == inside
        if not inside:
            assert d.reasons in ([], [NEWEST_REASON])


@PROPS
@given(snaps=snapshot_lists(), policy=policies())
def test_the_policy_is_a_pure_function(snaps, policy):
    a = [(d.snapshot.id, d.keep, d.reasons) for d in apply_policy(snaps, policy, NOW)]
    b = [(d.snapshot.id, d.keep, d.reasons) for d in apply_policy(list(reversed(snaps)), policy,
                                                                   NOW)]
    assert a == b


@PROPS
@given(snaps=snapshot_lists(), policy=policies())
def test_allow_remove_all_only_drops_the_newest_safety_reason(snaps, policy):
    import dataclasses

    unsafe = dataclasses.replace(policy, allow_remove_all=True)
    safe_d = apply_policy(snaps, policy, NOW)
    unsafe_d = apply_policy(snaps, unsafe, NOW)
    for s, u in zip(safe_d, unsafe_d, strict=True):
        assert [r for r in s.reasons if r != NEWEST_REASON] == u.reasons


# --- examples ---------------------------------------------------------------------------


def test_empty_policy_keeps_everything() -> None:
    snaps = [snap(NOW - timedelta(days=i)) for i in range(5)]
    assert all(d.keep for d in apply_policy(snaps, RetentionPolicy(), NOW))
    assert RetentionPolicy().empty


def test_keep_within_older_than_the_window_still_keeps_the_newest() -> None:
    snaps = [snap(NOW - timedelta(days=40 + i)) for i in range(3)]
    decisions = apply_policy(snaps, RetentionPolicy(within=Duration(days=7)), NOW)
    assert [d.keep for d in decisions] == [True, False, False]
    assert decisions[0].reasons == [NEWEST_REASON]


def test_allow_remove_all_lets_a_policy_remove_every_snapshot() -> None:
    snaps = [snap(NOW - timedelta(days=40 + i)) for i in range(3)]
    policy = RetentionPolicy(within=Duration(days=7), allow_remove_all=True)
    assert not any(d.keep for d in apply_policy(snaps, policy, NOW))


def test_weekly_buckets_are_iso_weeks_and_monthly_are_calendar_months() -> None:
    # Sunday 2026-06-14 and Monday 2026-06-15 are in different ISO weeks.
    sun = snap(datetime(2026, 6, 14, 23, 0, tzinfo=UTC))
    mon = snap(datetime(2026, 6, 15, 1, 0, tzinfo=UTC))
    tue = snap(datetime(2026, 6, 16, 1, 0, tzinfo=UTC))
    d = apply_policy([sun, mon, tue], RetentionPolicy(weekly=5), NOW)
    assert {x.snapshot.id: x.keep for x in d} == {tue.id: True, mon.id: False, sun.id: True}
    d = apply_policy([sun, mon, tue], RetentionPolicy(monthly=5), NOW)
    assert [x.keep for x in d] == [True, False, False]


def test_negative_count_keeps_one_per_bucket_without_limit() -> None:
    snaps = [snap(datetime(2020 + y, 3, 1, tzinfo=UTC)) for y in range(6)]
    snaps += [snap(datetime(2020 + y, 7, 1, tzinfo=UTC)) for y in range(6)]
    kept = [d for d in apply_policy(snaps, RetentionPolicy(yearly=-1), NOW) if d.keep]
    assert sorted(d.snapshot.time.year for d in kept) == list(range(2020, 2026))
    assert all(d.snapshot.time.month == 7 for d in kept)


def test_keep_within_daily_keeps_the_newest_of_each_day_inside_the_window() -> None:
    snaps = [snap(NOW - timedelta(hours=h)) for h in range(0, 24 * 10, 6)]
    decisions = apply_policy(snaps, RetentionPolicy(within_daily=Duration(days=3)), NOW)
    kept = [d.snapshot.time for d in decisions if d.keep]
    limit = NOW - timedelta(days=3)
    assert all(t >= limit for t in kept)
    assert len({t.date() for t in kept}) == len(kept)
    assert len(kept) == len({s.time.date() for s in snaps if s.time >= limit})


def test_keep_tag_needs_all_tags_of_one_set() -> None:
    a = snap(NOW - timedelta(days=3), tags=("db", "manual"))
    b = snap(NOW - timedelta(days=2), tags=("db",))
    c = snap(NOW - timedelta(days=1))
    policy = RetentionPolicy(tags=(frozenset({"db", "manual"}),))
    d = {x.snapshot.id: x for x in apply_policy([a, b, c], policy, NOW)}
    assert d[a.id].keep and d[a.id].reasons == ["has tags db,manual"]
    assert not d[b.id].keep
    assert d[c.id].keep and d[c.id].reasons == [NEWEST_REASON]


def test_buckets_follow_the_given_time_zone() -> None:
    # 23:30 UTC on 1 June is already 2 June in Tokyo.
    late = snap(datetime(2026, 6, 1, 23, 30, tzinfo=UTC))
    early = snap(datetime(2026, 6, 1, 1, 0, tzinfo=UTC))
    utc = apply_policy([late, early], RetentionPolicy(daily=5), NOW)
    tokyo = apply_policy([late, early], RetentionPolicy(daily=5), NOW, tz=ZoneInfo("Asia/Tokyo"))
    assert [d.keep for d in utc] == [True, False]  # same UTC day
    assert [d.keep for d in tokyo] == [True, True]  # two Tokyo days


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError):
        apply_policy([], RetentionPolicy(last=1), datetime(2026, 1, 1))


@pytest.mark.parametrize("text, expected", [
    ("1y2m3d4h", Duration(1, 2, 3, 4)),
    ("14d", Duration(days=14)),
    ("36h", Duration(hours=36)),
    ("3d1y", Duration(years=1, days=3)),
    ("0h", Duration()),
])
def test_durations_parse_in_restic_syntax(text, expected) -> None:
    assert Duration.parse(text) == expected


@pytest.mark.parametrize("text", ["", "1", "1w", "1d1d", "-1d", "1.5d", "d", "1y 2m"])
def test_malformed_durations_are_usage_errors(text) -> None:
    with pytest.raises(UsageError):
        Duration.parse(text)


def test_month_arithmetic_clamps_to_the_end_of_the_month() -> None:
    t = datetime(2024, 3, 31, 10, tzinfo=UTC)
    assert Duration(months=1).before(t) == datetime(2024, 2, 29, 10, tzinfo=UTC)
    assert Duration(years=1, months=1).before(t) == datetime(2023, 2, 28, 10, tzinfo=UTC)
    assert Duration(days=1, hours=12).before(t) == datetime(2024, 3, 29, 22, tzinfo=UTC)


def test_snapshots_group_by_host_and_paths_by_default() -> None:
    a1 = snap(NOW, host="a", paths=("/x", "/y"))
    a2 = snap(NOW - timedelta(hours=1), host="a", paths=("/y", "/x"))
    a3 = snap(NOW, host="a", paths=("/z",), tags=("t",))
    b1 = snap(NOW, host="b", paths=("/x", "/y"))
    groups = group_snapshots([a1, a2, a3, b1])
    assert sorted(len(v) for v in groups.values()) == [1, 1, 2]
    by_tags = group_snapshots([a1, a2, a3, b1], {"tags"})
    assert sorted(len(v) for v in by_tags.values()) == [1, 3]
    assert len(group_snapshots([a1, a3, b1], set())) == 1


def test_each_group_keeps_its_own_newest() -> None:
    snaps = [snap(NOW - timedelta(days=d), host=h) for h in ("a", "b") for d in range(3)]
    plan = plan_policy(snaps, RetentionPolicy(last=1), now=NOW)
    assert sorted(s.hostname for s in plan.keep) == ["a", "b"]
    assert len(plan.remove) == 4


def test_group_by_rejects_unknown_fields() -> None:
    assert parse_group_by("host, tags") == {"host", "tags"}
    assert parse_group_by("") == frozenset()
    with pytest.raises(UsageError):
        parse_group_by("host,user")


def test_removal_by_id_touches_only_the_named_snapshots() -> None:
    snaps = [snap(NOW - timedelta(days=d)) for d in range(3)]
    plan = plan_ids(snaps, [snaps[1].id or ""])
    assert [s.id for s in plan.remove] == [snaps[1].id]
    assert plan.keep == []
