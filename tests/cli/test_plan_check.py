"""``resurgo plan check`` and ``plan show`` against real repositories made by ``resurgo init``:
a plan that can run passes; a missing path, a wrong password, an uninitialised repository
or a clock behind the recorded history fail the preflight (exit 1); an invalid plan
exits 2 naming its lines."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from resurgo.cli.cmd_plan import repository_options, repository_password, state_db_path
from resurgo.dr.plan import RepositorySpec, load_plan
from resurgo.dr.state import StateDB
from resurgo.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, UsageError

from .conftest import PASSWORD, Result, run_cli


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """Two initialised repositories, a password file, data to back up, a state dir."""
    paths = {
        "local": tmp_path / "repo-local",
        "usb": tmp_path / "repo-usb",
        "data": tmp_path / "data",
        "pass": tmp_path / "local.pass",
        "state": tmp_path / "state" / "state.db",
    }
    paths["data"].mkdir()
    (paths["data"] / "file.txt").write_text("precious")
    paths["pass"].write_text(PASSWORD + "\n")
    for name in ("local", "usb"):
        r = run_cli("-r", str(paths[name]), "init", env={"RESURGO_PASSWORD": PASSWORD})
        assert r.code == 0, r
    return paths


def plan_text(site: dict[str, Path], *, local_url: str | None = None, usb_env: str = "USB_PASS",
              data: str | None = None, extra_job: str = "") -> str:
    return f"""\
[settings]
state_db = "{site['state']}"

[repositories.local]
url = "{local_url or site['local']}"
password_file = "{site['pass']}"

[repositories.usb]
url = "{site['usb']}"
password_env = "{usb_env}"
offsite = true

[jobs.home]
paths = ["{data or site['data']}"]
commands = [{{ name = "listing.txt", command = ["ls", "-l", "/"] }}]
repositories = ["local", "usb"]
schedule = "daily at 02:00"
timezone = "Europe/Paris"
rpo = "26h"
{extra_job}
[[jobs.home.hooks.pre]]
command = ["true"]
timeout = "1m"
"""


def write_plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "resurgo.toml"
    path.write_text(text)
    return path


ENV = {"USB_PASS": PASSWORD}


def check(plan: Path, *extra: str, env: dict[str, str | None] | None = None) -> Result:
    return run_cli("plan", "check", "--plan", str(plan), *extra, env={**ENV, **(env or {})})


def lines_with(text: str, word: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if word in line]


def test_plan_that_can_run_passes_every_check(tmp_path: Path, site: dict[str, Path]) -> None:
    plan = write_plan(tmp_path, plan_text(site))
    r = check(plan)
    assert r.code == EXIT_OK, r
    assert "verdict: ok: the plan can run" in r.out
    assert not lines_with(r.out, "FAIL") and not lines_with(r.out, "warn ")
    [local] = lines_with(r.out, "repository local:")
    assert local.startswith("ok") and "opened" in local and "0 snapshots" in local
    [usb] = lines_with(r.out, "repository usb:")
    assert usb.startswith("ok") and "offsite" in usb
    [path] = lines_with(r.out, f"job home: path {site['data']}")
    assert path.startswith("ok") and "directory present" in path
    assert lines_with(r.out, "job home: command listing.txt")[0].startswith("ok")
    assert lines_with(r.out, "job home: pre hook 1")[0].startswith("ok")
    assert lines_with(r.out, "clock: system time")[0].startswith("ok")
    [state] = lines_with(r.out, "state database:")
    assert state.startswith("ok") and "will be created" in state
    assert not site["state"].exists()  # a check creates nothing


def test_missing_source_path_fails_the_preflight(tmp_path: Path, site: dict[str, Path]) -> None:
    missing = tmp_path / "gone"
    plan = write_plan(tmp_path, plan_text(site, data=str(missing)))
    r = check(plan)
    assert r.code == EXIT_FAILURE, r
    assert f"FAIL  job home: path {missing}: does not exist" in r.out
    assert "verdict: FAILED: 1 of" in r.out


def test_wrong_password_fails_the_preflight(tmp_path: Path, site: dict[str, Path]) -> None:
    plan = write_plan(tmp_path, plan_text(site))
    r = check(plan, env={"USB_PASS": "not the password"})
    assert r.code == EXIT_FAILURE, r
    [usb] = lines_with(r.out, "repository usb:")
    assert usb.startswith("FAIL") and "wrong password" in usb
    assert lines_with(r.out, "repository local:")[0].startswith("ok")


def test_unset_password_variable_fails_the_preflight(tmp_path: Path,
                                                     site: dict[str, Path]) -> None:
    plan = write_plan(tmp_path, plan_text(site, usb_env="NOT_SET_ANYWHERE"))
    r = check(plan)
    assert r.code == EXIT_FAILURE
    [usb] = lines_with(r.out, "repository usb:")
    assert "environment variable NOT_SET_ANYWHERE is not set" in usb


def test_uninitialised_repository_is_reported_as_such(tmp_path: Path,
                                                      site: dict[str, Path]) -> None:
    fresh = tmp_path / "never-initialised"
    plan = write_plan(tmp_path, plan_text(site, local_url=str(fresh)))
    r = check(plan)
    assert r.code == EXIT_FAILURE, r
    [local] = lines_with(r.out, "repository local:")
    assert local.startswith("FAIL") and "not initialised" in local and "resurgo init" in local
    assert not fresh.exists()  # opened read-only: nothing created


def test_offline_check_contacts_no_repository(tmp_path: Path, site: dict[str, Path]) -> None:
    plan = write_plan(tmp_path, plan_text(site, local_url=str(tmp_path / "nowhere")))
    r = check(plan, "--offline")
    assert r.code == EXIT_OK, r
    assert not lines_with(r.out, "repository")
    assert "verdict: ok" in r.out


def test_invalid_plan_exits_2_with_one_line_per_problem(tmp_path: Path,
                                                        site: dict[str, Path]) -> None:
    text = plan_text(site).replace('schedule = "daily at 02:00"', 'schedule = "twice daily"')
    text = text.replace('rpo = "26h"', 'rpo = "26"')
    plan = write_plan(tmp_path, text)
    r = check(plan)
    assert r.code == EXIT_USAGE, r
    errors = [line for line in r.err.splitlines() if line.startswith("error: ")]
    schedule_line = 1 + text.splitlines().index('schedule = "twice daily"')
    rpo_line = 1 + text.splitlines().index('rpo = "26"')
    assert len(errors) == 2
    assert errors[0].startswith(f"error: {plan}:{schedule_line}: jobs.home.schedule: ")
    assert errors[1].startswith(f"error: {plan}:{rpo_line}: jobs.home.rpo: not a duration")
    assert "is invalid (2 problems)" in r.err
    assert "verdict" not in r.out


def test_inline_password_is_an_invalid_plan(tmp_path: Path, site: dict[str, Path]) -> None:
    text = plan_text(site).replace(f'password_file = "{site["pass"]}"', 'password = "hunter2"')
    plan = write_plan(tmp_path, text)
    r = check(plan, "--offline")
    assert r.code == EXIT_USAGE
    line = 1 + text.splitlines().index('password = "hunter2"')
    assert f"{plan}:{line}: repositories.local.password: secrets are never written" in r.err
    assert "hunter2" not in r.err


def test_no_offsite_copy_warns_and_strict_refuses(tmp_path: Path, site: dict[str, Path]) -> None:
    plan = write_plan(tmp_path, plan_text(site).replace("offsite = true\n", ""))
    r = check(plan, "--offline")
    assert r.code == EXIT_OK
    [warning] = lines_with(r.out, "no offsite repository")
    assert warning.startswith("warn") and "jobs.home.repositories" in warning
    assert "verdict: ok with 1 warning" in r.out
    r = check(plan, "--offline", "--strict")
    assert r.code == EXIT_USAGE
    assert "jobs.home.repositories: no offsite repository" in r.err


def test_clock_behind_the_recorded_history_fails(tmp_path: Path, site: dict[str, Path]) -> None:
    plan = write_plan(tmp_path, plan_text(site))
    with StateDB(site["state"]) as state:
        run_id = state.start_run("home", "manual", started=time.time() + 86400)
        state.finish_run(run_id, "success", ended=time.time() + 86500)
    r = check(plan)
    assert r.code == EXIT_FAILURE, r
    [history] = lines_with(r.out, "clock: history")
    assert history.startswith("FAIL") and "the clock went backwards" in history
    [state_line] = lines_with(r.out, "state database:")
    assert state_line.startswith("ok") and "writable" in state_line


def test_missing_hook_program_fails(tmp_path: Path, site: dict[str, Path]) -> None:
    text = plan_text(site).replace('command = ["true"]', 'command = ["no-such-hook-program"]')
    r = check(write_plan(tmp_path, text))
    assert r.code == EXIT_FAILURE
    [hook] = lines_with(r.out, "pre hook 1")
    assert hook.startswith("FAIL") and "no-such-hook-program not found on PATH" in hook


def test_json_output_lists_checks_and_a_verdict(tmp_path: Path, site: dict[str, Path]) -> None:
    plan = write_plan(tmp_path, plan_text(site, data=str(tmp_path / "gone")))
    r = check(plan, "--json")
    assert r.code == EXIT_FAILURE
    docs = [json.loads(line) for line in r.out.splitlines()]
    checks = [d for d in docs if d["type"] == "check"]
    assert {"name": f"job home: path {tmp_path / 'gone'}", "status": "fail",
            "detail": "does not exist"} in [
        {k: c[k] for k in ("name", "status", "detail")} for c in checks]
    summary = docs[-1]
    assert summary["type"] == "summary" and summary["verdict"] == "fail"
    assert summary["exit_code"] == EXIT_FAILURE and summary["failed"] == 1


def test_plan_file_defaults_to_resurgo_plan_variable(tmp_path: Path, site: dict[str, Path]) -> None:
    plan = write_plan(tmp_path, plan_text(site))
    r = run_cli("plan", "check", "--offline", env={"RESURGO_PLAN": str(plan)})
    assert r.code == EXIT_OK, r
    assert f"checking plan {plan}" in r.out


def test_missing_plan_file_is_a_usage_error(tmp_path: Path) -> None:
    r = run_cli("plan", "check", "--plan", str(tmp_path / "absent.toml"))
    assert r.code == EXIT_USAGE
    assert "no such plan file" in r.err


def test_show_prints_the_plan_with_next_runs(tmp_path: Path, site: dict[str, Path]) -> None:
    plan = write_plan(tmp_path, plan_text(site))
    r = run_cli("plan", "show", "--plan", str(plan), "--runs", "2")
    assert r.code == EXIT_OK, r
    assert "  home:" in r.out
    assert "schedule: daily at 02:00 (Europe/Paris)" in r.out
    [runs] = lines_with(r.out, "next runs:")
    assert runs.count("02:00 CE") == 2  # CET or CEST
    assert "into: local; copies to usb" in r.out
    assert "usb: " in r.out and "(offsite; password from variable USB_PASS)" in r.out
    r = run_cli("plan", "show", "--plan", str(plan), "--json")
    docs = [json.loads(line) for line in r.out.splitlines()]
    [job] = [d for d in docs if d["type"] == "job"]
    assert job["name"] == "home" and len(job["next_runs"]) == 3
    assert job["repositories"] == ["local", "usb"] and job["rpo"] == 26 * 3600


def test_help_ends_with_the_exit_codes() -> None:
    r = run_cli("plan", "check", "--help")
    assert r.code == 0
    assert r.out.rstrip().splitlines()[-1].strip().startswith("130")
    assert "exit codes:" in r.out and "--offline" in r.out and "--strict" in r.out


# --- the helpers shared with run/daemon/status ---------------------------------------------


def test_state_db_path_is_relative_to_the_plan_or_the_xdg_default(tmp_path: Path,
                                                                  site: dict[str, Path]) -> None:
    text = plan_text(site).replace(f'state_db = "{site["state"]}"', 'state_db = "var/state.db"')
    plan = load_plan(write_plan(tmp_path, text))
    assert state_db_path(plan, {}) == tmp_path / "var" / "state.db"
    text = plan_text(site).replace(f'state_db = "{site["state"]}"\n', "")
    plan = load_plan(write_plan(tmp_path, text))
    assert state_db_path(plan, {"XDG_STATE_HOME": "/xdg"}) == Path("/xdg/resurgo/state.db")
    assert state_db_path(plan, {"HOME": "/home/ann"}) == Path(
        "/home/ann/.local/state/resurgo/state.db")


def test_secret_options_and_password_commands_are_resolved(tmp_path: Path) -> None:
    secret = tmp_path / "s3.secret"
    secret.write_text("s3cr3t\n")
    spec = RepositorySpec(
        "r", "s3://b/p", password_command=["echo", "from-command"],
        options={"s3.secret_key_file": str(secret), "s3.session_token_env": "TOKEN",
                 "sftp.identity_file": "/keys/id", "s3.region": "eu-west-1"},
    )
    assert repository_password(spec, {"PATH": "/usr/bin:/bin"}) == "from-command"
    assert repository_options(spec, {"TOKEN": "tok"}) == {
        "s3.secret_key": "s3cr3t", "s3.session_token": "tok",
        "sftp.identity_file": "/keys/id", "s3.region": "eu-west-1",
    }
    with pytest.raises(UsageError, match="TOKEN is not set"):
        repository_options(spec, {})
