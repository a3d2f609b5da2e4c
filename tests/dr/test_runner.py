"""Running a job through ``JobRunner`` with real local repositories in tmp and an injected
opener: hooks in order, a failing pre hook or command source fails the run and writes
nothing, new snapshots reach the copy repository (and a copy missed earlier is made up),
retention forgets only the job's snapshots, unreadable files make a ``warning``, a stop
interrupts, and every notification is recorded."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from resurgo.dr.notify import Notice, Notifier, WebhookTarget, state_recorder
from resurgo.dr.observe import Observer, check_record_time, job_snapshots
from resurgo.dr.plan import Plan, RepositorySpec, loads_plan
from resurgo.dr.runner import JobRunner
from resurgo.dr.scheduler import Due, Outcome, run_job
from resurgo.dr.state import StateDB
from resurgo.errors import RepositoryNotFound
from resurgo.ops.backup import BackupOptions, backup_paths
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.session import open_repo
from resurgo.snapshot.model import NodeType, Snapshot
from resurgo.snapshot.store import list_snapshots, walk_tree

PASSWORDS = {"local": "local password", "usb": "usb password"}
HOST = "test-host"


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Path]:
    """Two initialised local repositories and a small source tree."""
    paths = {"local": tmp_path / "repo-local", "usb": tmp_path / "repo-usb",
             "data": tmp_path / "data", "log": tmp_path / "hooks.log",
             "cache": tmp_path / "cache"}
    for name in ("local", "usb"):
        open_repo(str(paths[name]), PASSWORDS[name], create=True,
                  params=RepoParams.tiny_for_tests(), kdf=KDFParams.weak_for_tests()).close()
    data = paths["data"]
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_bytes(b"alpha\n" * 100)
    (data / "sub" / "b.bin").write_bytes(bytes(range(256)) * 64)
    return paths


def hook(log: Path, word: str, *, fail: bool = False) -> str:
    """A hook table that appends WORD (and the run variables) to the log, then maybe fails."""
    script = f'echo "{word} $RESURGO_JOB $RESURGO_HOOK_PHASE" >> {log}' + ("; exit 3" if fail else "")
    return f'command = ["/bin/sh", "-c", {script!r}]\ntimeout = "30s"\n'


def make_plan(site: dict[str, Path], *, job_extra: str = "", hooks: str = "",
              commands: str = "", copies: bool = True, paths: bool = True,
              retention: str = "", rpo: str = "1h") -> Plan:
    repos = '"local", "usb"' if copies else '"local"'
    text = f"""
[repositories.local]
url = "{site['local']}"
password_env = "LOCAL_PW"

[repositories.usb]
url = "{site['usb']}"
password_env = "USB_PW"
offsite = true

[notifications.ops]
type = "webhook"
url = "http://127.0.0.1:9/hook"
on = ["failure", "rpo_breach", "recovery", "success"]

[jobs.home]
{f'paths = ["{site["data"]}"]' if paths else ''}
{commands}
repositories = [{repos}]
schedule = "daily at 02:00"
timezone = "UTC"
rpo = "{rpo}"
tags = ["files"]
notify = ["ops"]
{job_extra}
{retention}
{hooks}
"""
    return loads_plan(text, site["data"].parent / "resurgo.toml")


class Opener:
    """Opens the plan's repositories with their passwords; counts opens; can refuse one."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.opened: list[str] = []
        self.broken: set[str] = set()

    def __call__(self, spec: RepositorySpec) -> Repository:
        self.opened.append(spec.name)
        if spec.name in self.broken:
            raise RepositoryNotFound(f"no repository at {spec.url}")
        return open_repo(spec.url, PASSWORDS[spec.name], cache_dir=self.cache)


class Sent:
    """A fake webhook sender: keeps every notice."""

    def __init__(self) -> None:
        self.notices: list[Notice] = []

    def __call__(self, target: Any, notice: Notice, host: str) -> str:
        self.notices.append(notice)
        return "HTTP 200"

    def events(self) -> list[str]:
        return [n.event for n in self.notices]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDB]:
    db = StateDB(tmp_path / "state" / "state.db")
    yield db
    db.close()


@pytest.fixture
def opener(site: dict[str, Path]) -> Opener:
    return Opener(site["cache"])


@pytest.fixture
def sent() -> Sent:
    return Sent()


Runner = Callable[..., tuple[JobRunner, Callable[[], tuple[int, Outcome]]]]


@pytest.fixture
def runner_for(state: StateDB, opener: Opener, sent: Sent, site: dict[str, Path]) -> Runner:
    def make(plan: Plan, **kwargs: Any) -> tuple[JobRunner, Callable[[], tuple[int, Outcome]]]:
        notifier = Notifier(
            [WebhookTarget("ops", "http://127.0.0.1:9/hook",
                           on=frozenset({"failure", "rpo_breach", "recovery", "success"}))],
            record=state_recorder(state), senders={"webhook": sent}, sleep=lambda s: None,
        )
        observer = Observer(plan, state, opener, hostname=HOST, cache_dir=site["cache"])
        runner = JobRunner(plan, state, opener, observer=observer, notifier=notifier,
                           cache_dir=site["cache"], hostname=HOST,
                           hook_env={"PATH": "/usr/bin:/bin"}, **kwargs)

        def once() -> tuple[int, Outcome]:
            return run_job(state, Due("home", "manual", 1, 0.0), runner.execute)

        return runner, once

    return make


def snapshots(path: Path, name: str) -> list[Snapshot]:
    repo = open_repo(str(path), PASSWORDS[name])
    try:
        return list_snapshots(repo)
    finally:
        repo.close()


def contents(path: Path, name: str, snap: Snapshot) -> dict[bytes, bytes]:
    repo = open_repo(str(path), PASSWORDS[name])
    try:
        return {b"/" + p.lstrip(b"/"): b"".join(repo.load_blob(BlobType.DATA, b) for b in n.content)
                for p, n in walk_tree(repo, snap.tree) if n.type is NodeType.FILE}
    finally:
        repo.close()


# --- hooks and the happy path ------------------------------------------------------------


def test_a_run_backs_up_copies_and_runs_hooks_in_order(
    site: dict[str, Path], runner_for: Runner, state: StateDB, sent: Sent
) -> None:
    log = site["log"]
    hooks = (f"[[jobs.home.hooks.pre]]\n{hook(log, 'pre1')}"
             f"[[jobs.home.hooks.pre]]\n{hook(log, 'pre2')}"
             f"[[jobs.home.hooks.post]]\n{hook(log, 'post')}"
             f"[[jobs.home.hooks.on_failure]]\n{hook(log, 'failed')}")
    _, once = runner_for(make_plan(site, hooks=hooks))
    run_id, outcome = once()

    assert outcome.outcome == "success", outcome
    assert log.read_text().splitlines() == ["pre1 home pre", "pre2 home pre", "post home post"]
    [local] = snapshots(site["local"], "local")
    [usb] = snapshots(site["usb"], "usb")
    assert outcome.snapshot_ids == {"local": local.id, "usb": usb.id}
    assert usb.original == local.id
    assert sorted(local.tags) == ["files", "home"] and local.hostname == HOST
    assert contents(site["usb"], "usb", usb) == contents(site["local"], "local", local)
    assert contents(site["local"], "local", local)[
        str(site["data"] / "sub" / "b.bin").encode()] == bytes(range(256)) * 64
    assert outcome.files == 2 and outcome.bytes_added > 0

    row = state.run(run_id)
    assert row is not None and row.outcome == "success" and row.snapshot_ids == outcome.snapshot_ids
    # The first successful run raises "success" only (nothing to recover from).
    assert sent.events() == ["success"]
    [note] = state.last_notifications("home")
    assert (note.event, note.target, note.ok) == ("success", "ops", True)
    assert sent.notices[0].details["snapshot_ids"] == outcome.snapshot_ids


def test_a_failing_pre_hook_stops_the_job_and_runs_the_on_failure_hooks(
    site: dict[str, Path], runner_for: Runner, state: StateDB, sent: Sent
) -> None:
    log = site["log"]
    hooks = (f"[[jobs.home.hooks.pre]]\n{hook(log, 'pre1', fail=True)}"
             f"[[jobs.home.hooks.pre]]\n{hook(log, 'pre2')}"
             f"[[jobs.home.hooks.post]]\n{hook(log, 'post')}"
             f"[[jobs.home.hooks.on_failure]]\n{hook(log, 'failed')}")
    _, once = runner_for(make_plan(site, hooks=hooks))
    run_id, outcome = once()

    assert outcome.outcome == "failure"
    assert "pre hook" in (outcome.error or "") and "exited with status 3" in (outcome.error or "")
    assert log.read_text().splitlines() == ["pre1 home pre", "failed home on_failure"]
    assert snapshots(site["local"], "local") == [] and snapshots(site["usb"], "usb") == []
    row = state.run(run_id)
    assert row is not None and row.outcome == "failure" and "pre hook" in (row.error or "")
    assert "failure" in sent.events()
    failure = next(n for n in sent.notices if n.event == "failure")
    assert failure.details["error"] == outcome.error and failure.details["run_id"] == run_id


def test_a_failing_command_source_fails_the_run_and_writes_no_snapshot(
    site: dict[str, Path], runner_for: Runner
) -> None:
    commands = ('commands = [{ name = "dump.sql", command = ["/bin/sh", "-c", '
                '"echo partial; exit 5"] }]')
    _, once = runner_for(make_plan(site, commands=commands, paths=False))
    _, outcome = once()
    assert outcome.outcome == "failure"
    assert "command source dump.sql" in (outcome.error or "")
    assert "exit status 5" in (outcome.error or "")
    assert snapshots(site["local"], "local") == [] and snapshots(site["usb"], "usb") == []


def test_a_command_source_past_its_timeout_fails_the_run(
    site: dict[str, Path], runner_for: Runner
) -> None:
    commands = ('commands = [{ name = "slow.sql", command = ["/bin/sh", "-c", '
                '"echo start; sleep 30"], timeout = "1s" }]')
    _, once = runner_for(make_plan(site, commands=commands, paths=False))
    _, outcome = once()
    assert outcome.outcome == "failure"
    assert "timed out after 1s" in (outcome.error or "")
    assert snapshots(site["local"], "local") == []


def test_command_sources_are_each_their_own_snapshot_and_are_copied(
    site: dict[str, Path], runner_for: Runner
) -> None:
    commands = ('commands = [{ name = "dump.sql", command = ["/bin/echo", "CREATE TABLE t;"] }, '
                '{ name = "etc.txt", command = ["/bin/echo", "config"] }]')
    _, once = runner_for(make_plan(site, commands=commands))
    _, outcome = once()
    assert outcome.outcome == "success", outcome
    local = snapshots(site["local"], "local")
    assert sorted(tuple(s.paths) for s in local) == [
        ("/dump.sql",), ("/etc.txt",), (str(site["data"]),)]
    assert set(outcome.snapshot_ids) == {"local", "local:dump.sql", "local:etc.txt",
                                         "usb", "usb:dump.sql", "usb:etc.txt"}
    dump = next(s for s in snapshots(site["usb"], "usb") if s.paths == ["/dump.sql"])
    assert contents(site["usb"], "usb", dump) == {b"/dump.sql": b"CREATE TABLE t;\n"}


# --- copies, retention, failures of repositories ---------------------------------------------


def test_a_broken_copy_repository_fails_the_run_and_forgets_nothing(
    site: dict[str, Path], runner_for: Runner, opener: Opener, sent: Sent
) -> None:
    retention = "[jobs.home.retention.local]\nkeep_last = 1\n"
    _, once = runner_for(make_plan(site, retention=retention))
    assert once()[1].outcome == "success"
    (site["data"] / "a.txt").write_bytes(b"changed\n")
    opener.broken.add("usb")
    _, outcome = once()
    assert outcome.outcome == "failure"
    assert outcome.error is not None and outcome.error.startswith("repository usb:")
    assert len(snapshots(site["local"], "local")) == 2  # nothing forgotten while broken
    assert sent.events()[-2:] == ["failure", "rpo_breach"]

    # Repaired: the snapshot the failed run could not copy is made up, retention applies,
    # and the job has recovered.
    opener.broken.clear()
    (site["data"] / "a.txt").write_bytes(b"changed again\n")
    _, outcome = once()
    assert outcome.outcome == "success", outcome
    local = snapshots(site["local"], "local")
    usb = snapshots(site["usb"], "usb")
    assert len(local) == 1  # keep_last = 1 in local only
    assert len(usb) == 3  # no retention for usb: the missed copy and the new one arrived
    assert {s.original for s in usb[1:]} >= {local[0].id}
    assert sent.events()[-1] == "recovery"
    assert sent.notices[-1].details["reason"] == "run"


def test_retention_forgets_only_the_jobs_snapshots(
    site: dict[str, Path], runner_for: Runner
) -> None:
    # Someone else's backup into the same repository, same host: not the job's.
    other = site["data"].parent / "other"
    other.mkdir()
    (other / "x").write_bytes(b"x")
    repo = open_repo(str(site["local"]), PASSWORDS["local"])
    backup_paths(repo, [other], BackupOptions(hostname=HOST, tags=["home"]))
    backup_paths(repo, [site["data"]], BackupOptions(hostname=HOST))  # untagged
    repo.close()

    retention = "[jobs.home.retention.local]\nkeep_last = 2\n"
    _, once = runner_for(make_plan(site, retention=retention, copies=False))
    for n in range(4):
        (site["data"] / "a.txt").write_bytes(f"version {n}\n".encode())
        assert once()[1].outcome == "success"
    local = snapshots(site["local"], "local")
    job_snaps = [s for s in local if "home" in s.tags and s.paths == [str(site["data"])]]
    assert len(job_snaps) == 2
    assert len(local) == 4  # the two foreign snapshots are untouched
    newest = contents(site["local"], "local", job_snaps[-1])
    assert newest[str(site["data"] / "a.txt").encode()] == b"version 3\n"


def test_an_unopenable_primary_fails_the_run_naming_the_repository(
    site: dict[str, Path], runner_for: Runner, opener: Opener, state: StateDB
) -> None:
    opener.broken.add("local")
    run_id, outcome = runner_for(make_plan(site))[1]()
    assert outcome.outcome == "failure"
    assert outcome.error == f"repository local: no repository at {site['local']}"
    row = state.run(run_id)
    assert row is not None and row.error == outcome.error


def test_an_unreadable_file_makes_the_outcome_a_warning(
    site: dict[str, Path], runner_for: Runner, deny_open: Callable[..., None], state: StateDB
) -> None:
    deny_open(b"/a.txt")
    run_id, outcome = runner_for(make_plan(site))[1]()
    assert outcome.outcome == "warning"
    [warning] = outcome.warnings
    assert warning.endswith("a.txt: cannot open: Permission denied")
    # The snapshot exists in both repositories anyway.
    assert len(snapshots(site["local"], "local")) == 1 and len(snapshots(site["usb"], "usb")) == 1
    row = state.run(run_id)
    assert row is not None and row.outcome == "warning" and row.warnings == [warning]


def test_a_failing_post_hook_is_a_warning_not_a_failure(
    site: dict[str, Path], runner_for: Runner
) -> None:
    hooks = f"[[jobs.home.hooks.post]]\n{hook(site['log'], 'post', fail=True)}"
    _, outcome = runner_for(make_plan(site, hooks=hooks))[1]()
    assert outcome.outcome == "warning"
    assert outcome.warnings and outcome.warnings[0].startswith("post hook /bin/sh")


def test_prune_runs_when_maintenance_is_due_and_is_recorded(
    site: dict[str, Path], runner_for: Runner, state: StateDB
) -> None:
    _, once = runner_for(make_plan(site))
    assert once()[1].outcome == "success"
    first = state.last_maintenance("home", "local", "prune")
    assert first is not None and state.last_maintenance("home", "usb", "prune") is not None
    assert once()[1].outcome == "success"
    # Weekly by default: not again on the next run.
    assert state.last_maintenance("home", "local", "prune") == first


# --- stopping ----------------------------------------------------------------------------------


def test_a_stop_during_a_pre_hook_interrupts_the_run_and_still_runs_on_failure_hooks(
    site: dict[str, Path], runner_for: Runner, state: StateDB, sent: Sent
) -> None:
    log = site["log"]
    hooks = ('[[jobs.home.hooks.pre]]\ncommand = ["/bin/sleep", "30"]\n'
             f"[[jobs.home.hooks.on_failure]]\n{hook(log, 'cleanup')}")
    stop = threading.Event()
    _, once = runner_for(make_plan(site, hooks=hooks), stop=stop)
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    run_id, outcome = once()
    timer.join()
    assert outcome.outcome == "interrupted"
    assert log.read_text().splitlines() == ["cleanup home on_failure"]
    assert snapshots(site["local"], "local") == []
    row = state.run(run_id)
    assert row is not None and row.outcome == "interrupted"
    assert "failure" not in sent.events()  # an interruption says nothing about the job


# --- RPO and notifications without a run ---------------------------------------------------


def test_check_rpo_notifies_a_breach_once_and_a_recovery_after_the_next_good_run(
    site: dict[str, Path], runner_for: Runner, state: StateDB, sent: Sent
) -> None:
    runner, once = runner_for(make_plan(site, rpo="1h"))
    state.first_seen("home", time.time() - 7200)  # planned two hours ago, never run
    status = runner.check_rpo("home")
    assert status is not None and status.rpo_ok is False  # no snapshot anywhere yet
    assert sent.events() == ["rpo_breach"]
    runner.check_rpo("home")
    assert sent.events() == ["rpo_breach"]  # a lasting breach is not repeated at once
    assert once()[1].outcome == "success"
    # A target subscribed to both hears "recovery" only: it says the run succeeded.
    assert sent.events() == ["rpo_breach", "recovery"]
    recovery = sent.notices[1]
    assert recovery.details["reason"] == "rpo" and recovery.details["rpo_age"] < 60
    notes = state.last_notifications("home", 10)
    assert sorted(n.event for n in notes) == ["recovery", "rpo_breach"]


def test_the_observer_counts_only_the_jobs_snapshots_and_reads_check_records(
    site: dict[str, Path], runner_for: Runner, state: StateDB
) -> None:
    plan = make_plan(site)
    _, once = runner_for(plan)
    assert once()[1].outcome == "success"
    repo = open_repo(str(site["usb"]), PASSWORDS["usb"])
    backup_paths(repo, [site["data"]], BackupOptions(hostname="elsewhere", tags=["home"]))
    repo_id = repo.config.id
    all_usb = list_snapshots(repo)
    repo.close()
    assert len(job_snapshots(plan.jobs["home"], all_usb, HOST)) == 1

    cache = site["cache"]
    (cache / repo_id).mkdir(parents=True, exist_ok=True)
    (cache / repo_id / "check.json").write_text(
        '[{"time": 1000.0, "duration": 5.0, "ok": true, "read_data": true},'
        ' {"time": 2000.0, "duration": 1.0, "ok": true, "read_data": false},'
        ' {"time": 3000.0, "duration": 1.0, "ok": false, "read_data": true}]')
    assert check_record_time(cache, repo_id) == 1005.0
    state.record_verification("local", True, "drill", time=1500.0)

    observer = Observer(plan, state, None, hostname=HOST, cache_dir=cache)
    for name in ("local", "usb"):
        observer.record_error(name, "not yet")  # then replaced by real listings
        r = open_repo(str(site[name]), PASSWORDS[name])
        observer.record(name, r)
        r.close()
    status = observer.status("home")
    usb = next(r for r in status.repositories if r.name == "usb")
    assert usb.snapshots == 1 and usb.last_verified == 1005.0
    local = next(r for r in status.repositories if r.name == "local")
    assert local.last_verified == 1500.0
    assert status.score.copies == 2 and status.rpo_ok is True


def test_a_new_job_is_not_in_breach_before_its_rpo_has_passed_once(
    site: dict[str, Path], runner_for: Runner, state: StateDB, opener: Opener, sent: Sent
) -> None:
    runner, _ = runner_for(make_plan(site, rpo="1h"))
    state.first_seen("home", time.time() - 60)
    status = runner.check_rpo("home")
    assert status is not None and status.rpo_ok is False  # status itself says so
    assert sent.events() == []
    # An unreadable repository proves nothing, new job or not.
    opener.broken.add("usb")
    runner.observer.refresh("usb")  # type: ignore[union-attr]
    runner.check_rpo("home")
    assert sent.events() == ["rpo_breach"]
    assert sent.notices[0].details["rpo_age"] is None
