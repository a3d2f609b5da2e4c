"""``resurgo run`` and ``resurgo status`` as a user and a monitoring system see them:
exit codes (run: 0 success, 3 warning, 1 failure, 2 bad plan; status: Nagios 0/1/2/3),
what is printed, and what is recorded in the state database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from resurgo.dr.state import StateDB

from .conftest import PASSWORD, Result, run_cli


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "local": tmp_path / "repo-local",
        "usb": tmp_path / "repo-usb",
        "data": tmp_path / "data",
        "pass": tmp_path / "repo.pass",
        "state": tmp_path / "state" / "state.db",
        "plan": tmp_path / "resurgo.toml",
    }
    (paths["data"] / "sub").mkdir(parents=True)
    (paths["data"] / "a.txt").write_text("precious\n")
    (paths["data"] / "sub" / "b.txt").write_text("also precious\n")
    paths["pass"].write_text(PASSWORD + "\n")
    for name in ("local", "usb"):
        r = run_cli("-r", str(paths[name]), "init", env={"RESURGO_PASSWORD": PASSWORD})
        assert r.code == 0, r
    return paths


def write_plan(site: dict[str, Path], *, rpo: str = "1h", pre_hook: str = "true",
               extra: str = "") -> Path:
    site["plan"].write_text(f"""\
[settings]
state_db = "{site['state']}"

[repositories.local]
url = "{site['local']}"
password_file = "{site['pass']}"

[repositories.usb]
url = "{site['usb']}"
password_file = "{site['pass']}"
offsite = true

[jobs.home]
paths = ["{site['data']}"]
repositories = ["local", "usb"]
schedule = "daily at 02:00"
timezone = "UTC"
rpo = "{rpo}"

[jobs.home.retention.local]
keep_last = 3

[[jobs.home.hooks.pre]]
command = ["{pre_hook}"]
{extra}
""")
    return site["plan"]


def resurgo(site: dict[str, Path], *args: str) -> Result:
    return run_cli(*args, "--plan", str(site["plan"]))


def verify_both(site: dict[str, Path]) -> None:
    for name in ("local", "usb"):
        r = run_cli("-r", str(site[name]), "check", "--read-data",
                    env={"RESURGO_PASSWORD": PASSWORD})
        assert r.code == 0, r


def status_json(site: dict[str, Path], *jobs: str) -> tuple[int, dict[str, object]]:
    r = run_cli("--json", "status", "--plan", str(site["plan"]), *jobs)
    lines = [json.loads(line) for line in r.out.splitlines() if line.strip()]
    assert lines and lines[-1]["type"] == "summary", r
    return r.code, lines[-1]


def test_run_backs_up_and_copies_then_status_is_ok_once_the_data_was_verified(
    site: dict[str, Path]
) -> None:
    write_plan(site)
    r = resurgo(site, "run", "home")
    assert r.code == 0, r
    assert "job home: success (run 1" in r.out
    assert "1 snapshot in local, copied to usb" in r.out
    with StateDB(site["state"]) as state:
        [row] = state.last_runs("home")
    assert (row.trigger, row.outcome) == ("manual", "success")
    assert set(row.snapshot_ids) == {"local", "usb"}

    # Never verified: a warning, as a Nagios plugin says it.
    r = resurgo(site, "status")
    assert r.code == 1, r
    assert "job home: WARNING" in r.out and "never verified" in r.out

    verify_both(site)
    r = resurgo(site, "status")
    assert r.code == 0, r
    assert "job home: OK" in r.out and "overall: OK" in r.out
    code, doc = status_json(site)
    assert code == 0 and doc["state"] == "ok" and doc["exit_code"] == 0
    [job] = doc["jobs"]  # type: ignore[misc]
    assert job["rpo"]["age_seconds"] < 60 and job["rpo"]["ok"] is True
    assert job["score"]["copies"] == 2 and job["score"]["offsite"] == 1
    assert job["repositories"][1]["holds_newest"] is True
    assert job["last_run"]["outcome"] == "success"
    assert job["next_run"].endswith("T02:00:00Z")


def test_run_with_an_unreadable_file_exits_3_and_status_warns(
    site: dict[str, Path], deny_open: Callable[..., None]
) -> None:
    write_plan(site)
    deny_open(b"/b.txt")
    r = resurgo(site, "run")
    assert r.code == 3, r
    assert "job home: warning" in r.out
    assert "b.txt: cannot open: Permission denied" in r.err
    verify_both(site)
    code, doc = status_json(site)
    assert code == 1
    problems = [p["code"] for p in doc["jobs"][0]["problems"]]  # type: ignore[index]
    assert problems == ["last_run_warning"]


def test_a_failed_run_exits_1_and_makes_status_critical(site: dict[str, Path]) -> None:
    write_plan(site, pre_hook="false")
    r = resurgo(site, "run")
    assert r.code == 1, r
    assert "job home: FAILURE" in r.out and "pre hook false: exited with status 1" in r.out
    r = resurgo(site, "status")
    assert r.code == 2, r
    assert "job home: CRITICAL" in r.out
    assert "CRITICAL: the last run failed: pre hook false: exited with status 1" in r.out


def test_a_breached_rpo_makes_status_critical(site: dict[str, Path]) -> None:
    write_plan(site, rpo="1s")
    assert resurgo(site, "run").code == 0
    verify_both(site)
    time.sleep(1.2)
    code, doc = status_json(site)
    assert code == 2 and doc["state"] == "critical"
    job = doc["jobs"][0]  # type: ignore[index]
    assert job["problems"][0]["code"] == "rpo_breached"
    assert job["rpo"]["ok"] is False and job["rpo"]["age_seconds"] > 1


def test_an_unreachable_repository_is_critical(site: dict[str, Path]) -> None:
    write_plan(site)
    assert resurgo(site, "run").code == 0
    verify_both(site)
    (site["usb"] / "config").rename(site["usb"] / "config.moved")
    code, doc = status_json(site)
    assert code == 2
    job = doc["jobs"][0]  # type: ignore[index]
    assert "repository_unreachable" in [p["code"] for p in job["problems"]]
    assert job["rpo"]["age_seconds"] is None
    usb = job["repositories"][1]
    assert usb["reachable"] is False and "repository usb" in usb["error"]


def test_an_invalid_plan_is_a_usage_error_for_run_and_unknown_for_status(
    site: dict[str, Path]
) -> None:
    site["plan"].write_text('[jobs.home]\nschedule = "dailly"\n')
    r = resurgo(site, "run")
    assert r.code == 2, r
    assert f"error: {site['plan']}:2: jobs.home.schedule" in r.err
    r = resurgo(site, "status")
    assert r.code == 3, r
    assert r.out.startswith("UNKNOWN: the plan is invalid")


def test_unknown_jobs_are_refused(site: dict[str, Path]) -> None:
    write_plan(site)
    assert resurgo(site, "run", "nosuch").code == 2
    r = resurgo(site, "status", "nosuch")
    assert r.code == 3 and "no job 'nosuch'" in r.out


def test_status_before_the_first_run_creates_no_state_database(site: dict[str, Path]) -> None:
    write_plan(site)
    code, doc = status_json(site)
    assert not site["state"].exists()
    job = doc["jobs"][0]  # type: ignore[index]
    # An RPO is set and no snapshot exists anywhere: critical.
    assert code == 2 and job["problems"][0]["code"] == "no_complete_snapshot"
    assert job["last_run"] is None and job["last_success"] is None


def test_run_refuses_a_job_that_is_already_running(site: dict[str, Path]) -> None:
    write_plan(site)
    with StateDB(site["state"]) as state, state.lock_job("home"):
        r = resurgo(site, "run", "home")
    assert r.code == 1, r
    assert "already running" in r.out
    with StateDB(site["state"]) as state:
        assert state.last_runs("home") == []


def test_run_json_reports_each_run(site: dict[str, Path]) -> None:
    write_plan(site)
    r = run_cli("--json", "run", "--plan", str(site["plan"]))
    assert r.code == 0, r
    lines = [json.loads(line) for line in r.out.splitlines()]
    [run] = [x for x in lines if x["type"] == "run"]
    assert run["job"] == "home" and run["outcome"] == "success" and run["files"] == 2
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["exit_code"] == 0
    assert [x["run_id"] for x in summary["runs"]] == [run["run_id"]]
