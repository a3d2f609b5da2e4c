"""The scheduler daemon end to end: a real ``resurgo daemon`` process runs a job every three
seconds into a local repository and a copy on a real S3 server (SeaweedFS), is killed with
SIGKILL in the middle of a run and restarted, and is stopped with SIGTERM in the middle of
another. Then the run records, both copies (restored and compared byte for byte with the
source tree), ``resurgo status`` and the metrics must all be right; and a deliberately
broken repository must produce a failure notification at a local webhook receiver and a
critical status."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from resurgo.testing.servers import SeaweedS3

from .conftest import CLI

pytestmark = pytest.mark.slow

JOB = "home"


# --- servers started by the test -------------------------------------------------------------


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()  # raises (the test errors) when the server cannot start: never skipped
    yield server
    server.close()


class Receiver:
    """A webhook endpoint on 127.0.0.1 that keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver.lock:
                    receiver.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(b["event"], b["job"]) for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


# --- helpers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, predicate: Callable[[], Any], timeout: float,
             log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\ndaemon log:\n{tail}")


def runs(db: Path) -> list[dict[str, Any]]:
    """The run rows, oldest first, read without writing (the daemon owns the database)."""
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT id, outcome, trigger, attempt, started, ended, error, "
                           "snapshot_ids FROM runs WHERE job = ? ORDER BY id", (JOB,)).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()
    keys = ("id", "outcome", "trigger", "attempt", "started", "ended", "error", "snapshot_ids")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def make_tree(root: Path) -> None:
    rng = random.Random(7)
    for n in range(8):
        d = root / f"dir{n % 3}" / ("deep" if n % 2 else "")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{n}.bin").write_bytes(rng.randbytes(rng.randrange(1, 300_000)))
    (root / "empty").write_bytes(b"")
    (root / "notes.txt").write_text("what matters is that it comes back\n" * 50)


def tree_bytes(root: Path) -> dict[str, bytes]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


class Daemon:
    """One ``resurgo daemon`` process, its stderr in a log file."""

    def __init__(self, cli: CLI, plan: Path, log: Path, metrics_port: int,
                 extra: list[str] | None = None) -> None:
        self.log = log
        self.metrics_port = metrics_port
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "resurgo", "daemon", "--plan", str(plan),
             "--metrics", f"127.0.0.1:{metrics_port}", *(extra or [])],
            env=cli.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._log_file,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log_file.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()


def hook_process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (the hook's parent may be gone and init not yet reaped it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


# --- the test ----------------------------------------------------------------------------------


def test_daemon_survives_kill_and_restart_copies_everything_and_reports_status(
    cli: CLI, tmp_path: Path, seaweed: SeaweedS3, webhook: Receiver, daemons: list[Daemon]
) -> None:
    # Two repositories: a local one, and an offsite copy in S3.
    local = tmp_path / "repo-local"
    local_pass = tmp_path / "local.pass"
    local_pass.write_text("local secret\n")
    s3_pass = tmp_path / "s3.pass"
    s3_pass.write_text("offsite secret\n")
    s3_secret = tmp_path / "s3.secret"
    s3_secret.write_text(seaweed.secret_key + "\n")
    s3_url = seaweed.url(seaweed.new_bucket("daemon"), "resurgo")
    s3_opts = ["-o", f"access_key={seaweed.access_key}", "-o", f"secret_key={seaweed.secret_key}"]
    cli("-r", local, "--password-file", local_pass, "init")
    cli("-r", s3_url, "--password-file", s3_pass, *s3_opts, "init")

    src = tmp_path / "src"
    make_tree(src)
    expected = tree_bytes(src)
    db = tmp_path / "state" / "state.db"
    slow = tmp_path / "slow"  # while it exists, the pre hook hangs (a run to kill)
    hook_pid = tmp_path / "hook.pid"
    plan = tmp_path / "resurgo.toml"
    plan.write_text(f"""\
[settings]
state_db = "{db}"
retry = {{ attempts = 3, backoff = "1s", max_backoff = "2s" }}

[repositories.local]
url = "{local}"
password_file = "{local_pass}"

[repositories.offsite]
url = "{s3_url}"
password_file = "{s3_pass}"
options = {{ "s3.access_key" = "{seaweed.access_key}", "s3.secret_key_file" = "{s3_secret}" }}

[notifications.ops]
type = "webhook"
url = "{webhook.url}"
on = ["failure", "rpo_breach", "recovery"]
timeout = "5s"

[jobs.{JOB}]
paths = ["{src}"]
repositories = ["local", "offsite"]
schedule = "every 3s"
timezone = "UTC"
rpo = "1h"
notify = ["ops"]

[jobs.{JOB}.retention.local]
keep_last = 4

[[jobs.{JOB}.hooks.pre]]
command = ["/bin/sh", "-c", "if [ -e {slow} ]; then echo $$ > {hook_pid}; exec sleep 120; fi"]
timeout = "5m"
""")
    r = cli("plan", "check", "--plan", plan)
    assert "verdict: ok" in r.out, r.out

    def successes(after: int = 0) -> list[dict[str, Any]]:
        return [x for x in runs(db) if x["id"] > after and x["outcome"] == "success"]

    def start(name: str) -> Daemon:
        d = Daemon(cli, plan, tmp_path / f"daemon-{name}.log", free_port())
        daemons.append(d)
        return d

    def hung_in_hook(d: Daemon) -> int:
        """Make the next run hang in its pre hook; returns the hook's pid once it runs."""
        hook_pid.unlink(missing_ok=True)
        slow.touch()
        pid = wait_for("a run hanging in its pre hook",
                       lambda: hook_pid.exists() and hook_pid.read_text().strip(), 20, d.log)
        return int(pid)

    # 1. The first daemon runs the job a few times; its metrics show the last success.
    a = start("a")
    wait_for("two successful runs", lambda: len(successes()) >= 2, 30, a.log)
    page = wait_for("a metrics page", lambda: _try(a.metrics), 10, a.log)
    [line] = [x for x in page.splitlines()
              if x.startswith(f'resurgo_job_last_success_timestamp_seconds{{job="{JOB}"}} ')]
    assert abs(float(line.split()[-1]) - time.time()) < 30
    assert f'resurgo_job_runs_total{{job="{JOB}",outcome="success"}}' in page
    assert "resurgo_up 1" in page

    # 2. Killed (SIGKILL) in the middle of a run, then restarted.
    pid = hung_in_hook(a)
    [killed] = [x for x in runs(db) if x["ended"] is None]
    a.signal(signal.SIGKILL)
    assert a.wait(10) == -signal.SIGKILL
    os.killpg(pid, signal.SIGKILL)  # the hook was in its own process group; it outlived us
    slow.unlink()
    b = start("b")
    wait_for("two successful runs after the restart",
             lambda: len(successes(killed["id"])) >= 2, 40, b.log)
    after_restart = {x["id"]: x for x in runs(db)}
    assert after_restart[killed["id"]]["outcome"] == "interrupted"
    assert after_restart[killed["id"]]["ended"] is not None
    assert "recorded as interrupted" in b.text()

    # 3. SIGTERM in the middle of a run: the hook is killed, the run is recorded as
    #    interrupted, and the daemon exits 0 within a few seconds.
    pid = hung_in_hook(b)
    [stopped] = [x for x in runs(db) if x["ended"] is None]
    t0 = time.monotonic()
    b.signal(signal.SIGTERM)
    assert b.wait(15) == 0, b.text()[-3000:]
    assert time.monotonic() - t0 < 10
    slow.unlink()
    rows = {x["id"]: x for x in runs(db)}
    assert rows[stopped["id"]]["outcome"] == "interrupted"
    assert "stopped" in (rows[stopped["id"]]["error"] or "")
    assert all(x["ended"] is not None for x in rows.values())
    wait_for("the hook's process group to be gone", lambda: not hook_process_alive(pid), 10)
    log = b.text()
    assert "received SIGTERM" in log and "daemon stopped" in log
    assert f"job {JOB}: run {stopped['id']} started" in log
    assert f"job {JOB}: next run" in log

    # A last run by hand leaves the job in a settled, successful state.
    r = cli("run", JOB, "--plan", plan)
    assert f"job {JOB}: success" in r.out
    records = runs(db)
    assert records[-1]["outcome"] == "success" and records[-1]["trigger"] == "manual"
    assert {x["outcome"] for x in records} == {"success", "interrupted"}
    assert sum(x["outcome"] == "interrupted" for x in records) == 2
    # Catch-up and retry runs went through the same path.
    assert any(x["trigger"] in ("retry", "catch-up") for x in records
               if x["id"] > killed["id"] and x["id"] < stopped["id"])

    # 4. Both copies restore to exactly the source tree.
    latest = json.loads(records[-1]["snapshot_ids"])
    assert set(latest) == {"local", "offsite"}
    for name, args in (("local", ["-r", local, "--password-file", local_pass]),
                       ("offsite", ["-r", s3_url, "--password-file", s3_pass, *s3_opts])):
        target = tmp_path / f"restored-{name}"
        cli(*args, "restore", f"{latest[name]}:{src}", "-t", target)
        assert tree_bytes(target) == expected, name
        cli(*args, "check", "--read-data")  # also what status calls "verified"

    # 5. status: ok, RPO age small, 3-2-1 met with two copies.
    _, doc = cli.json("status", "--plan", plan)
    assert doc["state"] == "ok" and doc["exit_code"] == 0, doc
    [job] = doc["jobs"]
    assert job["rpo"]["age_seconds"] < 60 and job["rpo"]["ok"] is True
    assert job["score"]["copies"] == 2 and job["score"]["backends"] == 2
    assert job["score"]["offsite"] == 1 and job["score"]["met"] is True
    assert [r["holds_newest"] for r in job["repositories"]] == [True, True]
    assert job["last_run"]["outcome"] == "success"
    assert job["last_error"] is not None  # the interrupted runs are remembered

    # 6. A broken repository: a failure notification reaches the webhook, status is critical.
    (local / "config").rename(tmp_path / "config.aside")
    d = start("d")
    wait_for("a failure notification",
             lambda: ("failure", JOB) in webhook.events(), 30, d.log)
    failure = next(b for b in webhook.bodies if b["event"] == "failure")
    assert failure["schema"] == "resurgo.notice/1"
    assert "repository local" in failure["summary"]
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0
    r = cli("status", "--plan", plan, expect=2)
    assert f"job {JOB}: CRITICAL" in r.out and "the last run failed" in r.out
    assert "repository local could not be read" in r.out
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        delivered = con.execute("SELECT event, target, ok FROM notifications "
                                "WHERE event = 'failure'").fetchall()
    assert ("failure", "ops", 1) in delivered


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except OSError:
        return None


def test_daemon_notifies_an_rpo_breach_while_no_job_runs_and_stops_at_once_when_idle(
    cli: CLI, tmp_path: Path, webhook: Receiver, daemons: list[Daemon]
) -> None:
    pw = tmp_path / "pass"
    pw.write_text("secret\n")
    repos = {name: tmp_path / f"repo-{name}" for name in ("local", "usb")}
    for repo in repos.values():
        cli("-r", repo, "--password-file", pw, "init")
    src = tmp_path / "src"
    make_tree(src)
    db = tmp_path / "state.db"
    plan = tmp_path / "resurgo.toml"
    plan.write_text(f"""\
[settings]
state_db = "{db}"

[repositories.local]
url = "{repos['local']}"
password_file = "{pw}"

[repositories.usb]
url = "{repos['usb']}"
password_file = "{pw}"
offsite = true

[notifications.ops]
type = "webhook"
url = "{webhook.url}"

[jobs.{JOB}]
paths = ["{src}"]
repositories = ["local", "usb"]
schedule = "monthly on 1 at 03:00"
timezone = "UTC"
rpo = "3s"
notify = ["ops"]
""")
    cli("run", "--plan", plan)
    assert [x["outcome"] for x in runs(db)] == ["success"]
    d = Daemon(cli, plan, tmp_path / "daemon.log", free_port(), extra=["--rpo-interval", "1s"])
    daemons.append(d)
    wait_for("an RPO breach notification", lambda: ("rpo_breach", JOB) in webhook.events(), 20,
             d.log)
    breach = next(b for b in webhook.bodies if b["event"] == "rpo_breach")
    assert breach["details"]["rpo"] == 3 and breach["details"]["rpo_age"] > 3
    assert [x["outcome"] for x in runs(db)] == ["success"]  # no run was needed for it
    # The log line and the notification come from the same check, in either order.
    wait_for("the critical status in the log",
             lambda: f"job {JOB}: status critical: RPO breached" in d.text(), 10, d.log)
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(10) == 0
    assert time.monotonic() - t0 < 5
    # The delivery is recorded (a restart during the breach will not send it again).
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        assert con.execute("SELECT event, target, ok FROM notifications").fetchall() == [
            ("rpo_breach", "ops", 1)]
