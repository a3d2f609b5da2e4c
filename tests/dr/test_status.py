"""Job status: RPO age across copies, thresholds, 3-2-1 score, Nagios codes, JSON shape."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.dr.state import StateDB
from resurgo.dr.status import (
    JobStatus,
    JobStatusInput,
    RepoInput,
    RunRecord,
    State,
    backend_identity,
    job_status,
    overall,
    render_text,
    report_dict,
    score_321,
)
from resurgo.snapshot.model import Snapshot

NOW = 1_714_528_803.0  # 2024-05-01T02:00:03Z
H = 3600.0
DAY = 86400.0
LOCAL = "/srv/backup/repo"
OFFSITE = "s3://offsite-bucket/resurgo?endpoint=http://127.0.0.1:8333&path_style=true"


def snap(sid: str, age: float, original: str | None = None) -> Snapshot:
    return Snapshot(time_ns=int((NOW - age) * 1e9), tree=b"\0" * 32, hostname="h",
                    paths=["/home"], id=sid, original=original)


def copy_of(s: Snapshot, new_id: str) -> Snapshot:
    """What copying ``s`` into another repository produces: a new ID, same time."""
    return replace(s, id=new_id, original=s.original or s.id)


def good_run(age: float, duration: float = 60.0, **kw: Any) -> RunRecord:
    return RunRecord(started=NOW - age - duration, ended=NOW - age, outcome="success", **kw)


def repo(name: str, url: str, snaps: list[Snapshot] | None, *, offsite: bool = False,
         verified: float | None = NOW - DAY, error: str | None = None) -> RepoInput:
    return RepoInput(name=name, url=url, offsite=offsite, snapshots=snaps, error=error,
                     last_verified=verified)


def healthy_input(**overrides: Any) -> JobStatusInput:
    a = snap("a1" * 8, 25 * H)
    b = snap("b2" * 8, 1 * H)
    values: dict[str, Any] = dict(
        job="home",
        repositories=[
            repo("local", LOCAL, [a, b]),
            repo("offsite", OFFSITE, [copy_of(a, "c3" * 8), copy_of(b, "d4" * 8)], offsite=True),
        ],
        runs=[good_run(1 * H, bytes_added=1234), good_run(25 * H)],
        now=NOW,
        rpo=26 * H,
        rto=4 * H,
        next_run=NOW + 23 * H,
    )
    values.update(overrides)
    return JobStatusInput(**values)


def codes(status: JobStatus) -> dict[str, str]:
    return {p.code: p.level.value for p in status.problems}


# --- RPO age across copies ------------------------------------------------------------


def test_a_healthy_job_is_ok_with_exit_code_0() -> None:
    status = job_status(healthy_input())

    assert status.state is State.OK and status.exit_code == 0
    assert status.problems == ()
    assert status.rpo_age == pytest.approx(1 * H)
    assert status.rpo_snapshot == "b2" * 8
    assert status.rpo_ok is True
    assert status.last_success == pytest.approx(NOW - 1 * H)
    assert status.last_bytes_added == 1234
    assert status.score.text == "3-2-1 met (2 copies, 2 backends, 1 offsite)"


def test_rpo_age_is_that_of_the_newest_snapshot_present_in_every_repository() -> None:
    a, b = snap("aa" * 8, 20 * H), snap("bb" * 8, 2 * H)
    inp = healthy_input(repositories=[
        repo("local", LOCAL, [a, b]),
        repo("offsite", OFFSITE, [copy_of(a, "cc" * 8)], offsite=True),  # b not copied yet
    ])

    status = job_status(inp)

    assert status.rpo_snapshot == "aa" * 8
    assert status.rpo_age == pytest.approx(20 * H)
    assert status.newest_snapshot == "bb" * 8
    assert status.score.copies == 1
    assert [r.holds_newest for r in status.repositories] == [True, False]
    assert codes(status) == {"no_offsite_copy": "warning"}


def test_a_copy_is_recognised_by_its_original_and_a_same_id_snapshot_counts_too() -> None:
    a = snap("aa" * 8, 3 * H)
    inp = healthy_input(repositories=[
        repo("local", LOCAL, [a]),
        repo("usb", "/mnt/usb/repo", [copy_of(a, "cc" * 8)]),
        repo("mirror", "sftp://backup.example.com/srv/repo", [snap("aa" * 8, 3 * H)]),
        # a copy of the copy keeps the first original
        repo("offsite", OFFSITE, [copy_of(copy_of(a, "cc" * 8), "dd" * 8)], offsite=True),
    ])

    status = job_status(inp)

    assert status.rpo_snapshot == "aa" * 8
    assert status.rpo_age == pytest.approx(3 * H)
    assert status.score.copies == 4
    assert status.score.backends == 4
    assert all(r.latest_id == "aa" * 8 for r in status.repositories)


def test_an_unrelated_snapshot_with_the_same_time_does_not_count_as_a_copy() -> None:
    a = snap("aa" * 8, 3 * H)
    inp = healthy_input(repositories=[
        repo("local", LOCAL, [a]),
        repo("offsite", OFFSITE, [snap("ee" * 8, 3 * H)], offsite=True),
    ])

    status = job_status(inp)

    assert status.rpo_age is None and status.rpo_snapshot is None
    assert codes(status)["no_complete_snapshot"] == "critical"


def test_snapshots_pruned_from_the_primary_still_count_when_every_repository_has_them() -> None:
    a, b = snap("aa" * 8, 30 * H), snap("bb" * 8, 5 * H)
    inp = healthy_input(repositories=[
        repo("local", LOCAL, [b]),
        repo("offsite", OFFSITE, [copy_of(a, "cc" * 8), copy_of(b, "dd" * 8)], offsite=True),
    ])

    assert job_status(inp).rpo_snapshot == "bb" * 8


@pytest.mark.parametrize(("age_hours", "state", "code"), [
    (20.0, State.OK, None),
    (20.8, State.OK, None),  # exactly 80 % used
    (21.0, State.WARNING, "rpo_near"),
    (26.0, State.WARNING, "rpo_near"),  # at the objective: still acceptable
    (26.1, State.CRITICAL, "rpo_breached"),
])
def test_rpo_thresholds(age_hours: float, state: State, code: str | None) -> None:
    a = snap("aa" * 8, age_hours * H)
    inp = healthy_input(repositories=[
        repo("local", LOCAL, [a]),
        repo("offsite", OFFSITE, [copy_of(a, "cc" * 8)], offsite=True),
    ], runs=[good_run(age_hours * H)])

    status = job_status(inp)

    assert status.state is state
    assert list(codes(status)) == ([code] if code else [])
    assert status.rpo_ok is (age_hours <= 26)


def test_rpo_warning_ratio_is_configurable() -> None:
    inp = healthy_input(rpo=2 * H, rpo_warning_ratio=0.4)  # age 1h = 50 % used
    assert codes(job_status(inp)) == {"rpo_near": "warning"}


def test_no_snapshot_at_all_is_critical_when_an_rpo_is_set_and_a_warning_otherwise() -> None:
    empty = [repo("local", LOCAL, []), repo("offsite", OFFSITE, [], offsite=True)]

    with_rpo = job_status(healthy_input(repositories=empty, runs=[]))
    without = job_status(healthy_input(repositories=empty, runs=[], rpo=None))

    assert codes(with_rpo) == {"no_complete_snapshot": "critical"}
    assert with_rpo.score.text == "no copies" and with_rpo.newest_snapshot is None
    assert codes(without) == {"no_snapshot": "warning"}


def test_an_unreachable_repository_is_critical_and_leaves_the_rpo_age_unknown() -> None:
    a = snap("aa" * 8, 1 * H)
    inp = healthy_input(repositories=[
        repo("local", LOCAL, [a]),
        repo("offsite", OFFSITE, None, offsite=True, error="connection refused"),
    ])

    status = job_status(inp)

    assert status.state is State.CRITICAL
    assert status.rpo_age is None
    assert codes(status)["repository_unreachable"] == "critical"
    assert "connection refused" in status.problems[0].message
    offsite = status.repositories[1]
    assert (offsite.reachable, offsite.snapshots, offsite.error) == (
        False, None, "connection refused")


# --- runs ---------------------------------------------------------------------------------


def test_a_failed_last_run_is_critical_even_when_the_rpo_is_met() -> None:
    runs = [RunRecord(started=NOW - 600, ended=NOW - 500, outcome="failure",
                      error="offsite: permission denied"), good_run(1 * H)]

    status = job_status(healthy_input(runs=runs))

    assert status.state is State.CRITICAL and status.exit_code == 2
    assert codes(status) == {"last_run_failed": "critical"}
    assert status.last_error == "offsite: permission denied"
    assert status.last_error_time == NOW - 500
    assert status.last_success == pytest.approx(NOW - 1 * H)
    assert status.last_run is not None and status.last_run.outcome == "failure"


def test_success_after_a_failure_is_ok_but_the_last_error_stays_visible() -> None:
    runs = [good_run(1 * H), RunRecord(started=NOW - 3 * H, ended=NOW - 3 * H + 5,
                                       outcome="failure", error="disk full")]

    status = job_status(healthy_input(runs=runs))

    assert status.state is State.OK
    assert status.last_error == "disk full"


@pytest.mark.parametrize(("outcome", "code"), [
    ("warning", "last_run_warning"), ("interrupted", "last_run_interrupted")])
def test_a_last_run_with_warnings_or_interrupted_is_a_warning(outcome: str, code: str) -> None:
    runs = [RunRecord(started=NOW - 700, ended=NOW - 600, outcome=outcome,
                      warnings=("/home/x: permission denied",)), good_run(1 * H)]

    status = job_status(healthy_input(runs=runs))

    assert status.state is State.WARNING and status.exit_code == 1
    assert codes(status) == {code: "warning"}


def test_a_running_run_is_reported_and_does_not_hide_the_last_finished_one() -> None:
    runs = [RunRecord(started=NOW - 30), good_run(1 * H, duration=90)]

    status = job_status(healthy_input(runs=runs))

    assert status.running_since == NOW - 30
    assert status.last_run is not None and status.last_run.outcome == "success"
    assert status.last_run_duration == pytest.approx(90)


def test_run_records_load_from_sqlite_rows_with_json_columns() -> None:
    db = sqlite3.connect(":memory:")
    db.row_factory = sqlite3.Row
    db.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, job TEXT, started REAL, ended REAL,"
               " outcome TEXT, snapshot_ids TEXT, bytes_added INT, warnings TEXT, error TEXT)")
    db.execute("INSERT INTO runs VALUES (7, 'home', 100.5, 160.0, 'warning', ?, 42, ?, NULL)",
               (json.dumps({"local": "ab"}), json.dumps(["w1", "w2"])))

    [row] = db.execute("SELECT * FROM runs").fetchall()
    record = RunRecord.from_row(row)

    assert record == RunRecord(started=100.5, ended=160.0, outcome="warning", error=None,
                               bytes_added=42, snapshot_ids={"local": "ab"},
                               warnings=("w1", "w2"), id=7)
    assert record.duration == pytest.approx(59.5)


# --- 3-2-1 ------------------------------------------------------------------------------


@pytest.mark.parametrize(("copies", "backends", "offsite", "met", "text"), [
    (2, 2, 1, True, "3-2-1 met (2 copies, 2 backends, 1 offsite)"),
    (3, 3, 2, True, "3-2-1 met (3 copies, 3 backends, 2 offsite)"),
    (2, 1, 0, False, "2 copies, 1 backend, no offsite"),
    (1, 1, 1, False, "1 copy, 1 backend, 1 offsite"),
    (2, 1, 1, False, "2 copies, 1 backend, 1 offsite"),
    (0, 0, 0, False, "no copies"),
])
def test_score_321(copies: int, backends: int, offsite: int, met: bool, text: str) -> None:
    score = score_321(copies, backends, offsite)
    assert (score.met, score.text) == (met, text)


def test_two_repositories_on_the_same_disk_are_one_backend_and_no_offsite_warns() -> None:
    a = snap("aa" * 8, 1 * H)
    inp = healthy_input(repositories=[
        repo("one", "/srv/backup/one", [a]),
        repo("two", "file:///srv/other/two", [copy_of(a, "cc" * 8)]),
    ])

    status = job_status(inp)

    assert status.score.text == "2 copies, 1 backend, no offsite"
    assert status.state is State.WARNING
    assert codes(status) == {"no_offsite_repository": "warning"}


def test_a_caller_supplied_medium_overrides_the_url_guess() -> None:
    a = snap("aa" * 8, 1 * H)
    inp = healthy_input(repositories=[
        RepoInput("one", "/srv/backup/one", snapshots=[a], last_verified=NOW,
                  medium="dev:2049"),
        RepoInput("two", "/srv/backup/two", snapshots=[copy_of(a, "cc" * 8)], offsite=True,
                  last_verified=NOW, medium="dev:2050"),
    ])

    assert job_status(inp).score.backends == 2


@pytest.mark.parametrize(("url", "identity"), [
    ("/srv/backup/repo", "local:/srv"),
    ("file:///srv/backup/repo", "local:/srv"),
    ("/mnt/usb1/repo", "local:/mnt/usb1"),
    ("/run/media/alice/DISK/repo", "local:/run/media/alice/DISK"),
    ("relative/repo", "local:(relative)"),
    ("s3://bucket/prefix?endpoint=http://127.0.0.1:8333", "s3:127.0.0.1:8333/bucket"),
    ("s3://bucket/other-prefix?endpoint=http://127.0.0.1:8333", "s3:127.0.0.1:8333/bucket"),
    ("s3://bucket/prefix", "s3:aws/bucket"),
    ("sftp://user@Backup.Example.com:2222/srv/repo", "sftp:backup.example.com"),
])
def test_backend_identity(url: str, identity: str) -> None:
    assert backend_identity(url) == identity


# --- verification, RTO, clock ----------------------------------------------------------


def test_data_never_verified_is_a_warning_naming_the_repository() -> None:
    inp = healthy_input()
    repos = [inp.repositories[0], replace(inp.repositories[1], last_verified=None)]

    status = job_status(replace(inp, repositories=repos))

    assert codes(status) == {"never_verified": "warning"}
    assert "offsite" in status.problems[0].message
    assert status.last_verified is None


def test_a_verification_older_than_the_configured_age_is_a_warning() -> None:
    inp = healthy_input()
    repos = [replace(r, last_verified=NOW - 10 * DAY) for r in inp.repositories]

    old = job_status(replace(inp, repositories=repos, verify_max_age=7 * DAY))
    fine = job_status(replace(inp, repositories=repos, verify_max_age=14 * DAY))
    unlimited = job_status(replace(inp, repositories=repos, verify_max_age=None))

    assert codes(old) == {"verification_old": "warning"}
    assert len(old.problems) == 2  # one per repository
    assert fine.state is State.OK and unlimited.state is State.OK
    assert fine.last_verified == NOW - 10 * DAY


def test_a_measured_restore_slower_than_the_rto_is_a_warning() -> None:
    assert codes(job_status(healthy_input(restore_duration=5 * H))) == {"rto_exceeded": "warning"}
    assert job_status(healthy_input(restore_duration=3 * H)).state is State.OK


def test_a_snapshot_from_the_future_warns_about_the_clock() -> None:
    a = snap("aa" * 8, -2 * H)
    inp = healthy_input(repositories=[
        repo("local", LOCAL, [a]),
        repo("offsite", OFFSITE, [copy_of(a, "cc" * 8)], offsite=True),
    ])
    assert codes(job_status(inp)) == {"clock_skew": "warning"}


# --- combining, exit codes, JSON, text -------------------------------------------------


def test_states_map_to_nagios_exit_codes_and_the_worst_job_wins() -> None:
    assert [s.exit_code for s in State] == [0, 1, 2, 3]
    ok = job_status(healthy_input())
    warning = job_status(healthy_input(job="w", restore_duration=5 * H))
    critical = job_status(healthy_input(job="c", rpo=10.0))

    assert overall([ok, warning]) is State.WARNING
    assert overall([warning, critical, ok]) is State.CRITICAL
    assert overall([]) is State.OK


def test_critical_problems_are_listed_before_warnings() -> None:
    runs = [RunRecord(started=NOW - 10, ended=NOW - 5, outcome="failure", error="x")]
    status = job_status(healthy_input(runs=runs, restore_duration=5 * H))

    assert [p.level for p in status.problems] == [State.CRITICAL, State.WARNING]


def test_json_document_has_the_documented_shape() -> None:
    url = "sftp://backup:hunter2@backup.example.com/srv/repo"
    inp = healthy_input()
    repos = [inp.repositories[0], replace(inp.repositories[1], url=url)]
    status = job_status(replace(inp, repositories=repos))

    doc = json.loads(json.dumps(report_dict([status], now=NOW)))

    assert doc["state"] == "ok" and doc["exit_code"] == 0
    assert doc["time"] == "2024-05-01T02:00:03Z"
    [job] = doc["jobs"]
    assert set(job) == {
        "job", "state", "exit_code", "problems", "rpo", "rto", "last_success",
        "last_success_age_seconds", "last_run", "running_since", "last_error",
        "last_error_time", "next_run", "last_verified", "newest_snapshot", "score",
        "repositories",
    }
    assert job["rpo"] == {"objective_seconds": 26 * H, "age_seconds": 1 * H,
                          "used": round(1 / 26, 4), "ok": True, "snapshot": "b2" * 8}
    assert job["rto"] == {"objective_seconds": 4 * H, "last_restore_seconds": None}
    assert job["last_success"] == "2024-05-01T01:00:03Z"
    assert job["last_success_age_seconds"] == 1 * H
    assert job["next_run"] == "2024-05-02T01:00:03Z"
    assert job["last_run"]["outcome"] == "success"
    assert job["last_run"]["duration_seconds"] == 60.0
    assert job["score"] == {"copies": 2, "backends": 2, "offsite": 1, "met": True,
                            "text": "3-2-1 met (2 copies, 2 backends, 1 offsite)"}
    local, offsite = job["repositories"]
    assert local["primary"] is True and offsite["primary"] is False
    assert offsite["url"] == "sftp://backup:***@backup.example.com/srv/repo"
    assert "hunter2" not in json.dumps(doc)
    assert offsite["latest_snapshot"] == "b2" * 8  # the origin ID, same as the primary's
    assert offsite["latest_age_seconds"] == 1 * H
    assert offsite["last_verified"] == "2024-04-30T02:00:03Z"
    assert set(local) == {
        "name", "url", "primary", "offsite", "backend", "reachable", "error", "snapshots",
        "latest_snapshot", "latest_time", "latest_age_seconds", "holds_newest",
        "last_verified", "last_verified_age_seconds",
    }


def test_json_problems_carry_level_code_and_message() -> None:
    status = job_status(healthy_input(rpo=10.0))
    assert status.to_dict()["problems"][0] == {
        "level": "critical", "code": "rpo_breached",
        "message": "RPO breached: the newest snapshot in every repository is 1h old "
                   "(objective 10s)"}


def test_text_rendering_shows_state_rpo_score_repositories_and_problems() -> None:
    runs = [RunRecord(started=NOW - 10, ended=NOW - 5, outcome="failure", error="boom")]
    status = job_status(healthy_input(runs=runs))

    text = render_text([status], tz=timezone(timedelta(hours=2), "CEST"))

    assert "job home: CRITICAL" in text
    assert "RPO age       1h old (objective 1d2h, 4% used)" in text
    assert "3-2-1 met (2 copies, 2 backends, 1 offsite)" in text
    assert "CRITICAL: the last run failed: boom" in text
    assert "2024-05-01 03:00:03 CEST (1h ago)" in text
    assert "offsite  copy     offsite" in text
    assert text.rstrip().endswith("overall: CRITICAL")


# --- properties -------------------------------------------------------------------------

AGES = st.lists(st.floats(min_value=0, max_value=60 * DAY), min_size=1, max_size=8, unique=True)


@given(AGES, st.lists(st.lists(st.booleans(), min_size=8, max_size=8), min_size=1, max_size=4))
def test_rpo_snapshot_is_present_everywhere_and_no_newer_one_is(
        ages: list[float], masks: list[list[bool]]) -> None:
    primary = [snap(f"{i:016x}", age) for i, age in enumerate(ages)]
    copies = [[copy_of(s, f"c{r}{i:015x}") for i, s in enumerate(primary) if mask[i]]
              for r, mask in enumerate(masks)]
    repos = [repo("p", LOCAL, primary)] + [
        repo(f"c{r}", f"/mnt/d{r}/repo", snaps) for r, snaps in enumerate(copies)]

    status = job_status(JobStatusInput("j", repos, [], NOW, rpo=DAY))

    everywhere = [i for i in range(len(ages)) if all(m[i] for m in masks)]
    if not everywhere:
        assert status.rpo_age is None
    else:
        expected = min(ages[i] for i in everywhere)
        assert status.rpo_age == pytest.approx(expected, abs=1e-3)
        assert status.rpo_age >= min(ages) - 1e-3  # never younger than the newest snapshot
    # adding a repository can only make the RPO age older (or unknown)
    fewer = job_status(JobStatusInput("j", repos[:-1], [], NOW, rpo=DAY))
    if status.rpo_age is not None:
        assert fewer.rpo_age is not None and fewer.rpo_age <= status.rpo_age + 1e-6


def test_report_time_is_utc_iso() -> None:
    assert report_dict([], now=0.0) == {"state": "ok", "exit_code": 0,
                                        "time": "1970-01-01T00:00:00Z", "jobs": []}


def test_run_records_of_the_state_database_convert(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    run_id = db.start_run("home", "manual", started=NOW - 100)
    db.finish_run(run_id, "warning", ended=NOW - 40, snapshot_ids={"local": "ab"},
                  bytes_added=9, warnings=["/x: permission denied"])
    [row] = db.last_runs("home")
    db.close()

    record = RunRecord.from_row(row)

    assert record == RunRecord(started=NOW - 100, ended=NOW - 40, outcome="warning",
                               bytes_added=9, snapshot_ids={"local": "ab"},
                               warnings=("/x: permission denied",), id=run_id)
