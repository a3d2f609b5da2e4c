"""Prometheus metrics: the exposition text, parsed back, and a real scrape over HTTP."""

from __future__ import annotations

import math
import re
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest

from resurgo.dr.metrics import (
    CONTENT_TYPE,
    JobMetrics,
    MetricsServer,
    parse_bind,
    render_jobs,
)
from resurgo.dr.status import JobStatusInput, RepoInput, RunRecord, job_status
from resurgo.errors import UsageError
from resurgo.snapshot.model import Snapshot

NOW = 1_714_528_803.0

# --- a small parser for the text format 0.0.4 -----------------------------------------

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass
class ParsedFamily:
    help: str | None = None
    type: str | None = None
    samples: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)


def _unescape(text: str, specials: dict[str, str]) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            out.append(specials[text[i + 1]])  # KeyError: an escape the format does not have
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _parse_labels(text: str, pos: int) -> tuple[dict[str, str], int]:
    """Labels from ``{`` at ``pos``; returns them and the index after ``}``."""
    labels: dict[str, str] = {}
    assert text[pos] == "{"
    pos += 1
    while text[pos] != "}":
        m = _NAME.match(text, pos)
        assert m, f"bad label name at {text[pos:]!r}"
        name = m.group()
        pos = m.end()
        assert text[pos:pos + 2] == '="', f"expected =\" after {name}"
        pos += 2
        raw = []
        while text[pos] != '"':
            if text[pos] == "\\":
                raw.append(text[pos:pos + 2])
                pos += 2
            else:
                raw.append(text[pos])
                pos += 1
        labels[name] = _unescape("".join(raw), {"\\": "\\", '"': '"', "n": "\n"})
        pos += 1
        if text[pos] == ",":
            pos += 1
    return labels, pos + 1


def parse_exposition(text: str) -> dict[str, ParsedFamily]:
    families: dict[str, ParsedFamily] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            kind, rest = line[2:6], line[7:]
            name, _, value = rest.partition(" ")
            fam = families.setdefault(name, ParsedFamily())
            if kind == "HELP":
                fam.help = _unescape(value, {"\\": "\\", "n": "\n"})
            else:
                assert value in ("counter", "gauge", "histogram", "summary", "untyped")
                assert not fam.samples, "TYPE must come before the samples"
                fam.type = value
            continue
        assert not line.startswith("#"), line
        m = _NAME.match(line)
        assert m, line
        name, pos = m.group(), m.end()
        labels: dict[str, str] = {}
        if pos < len(line) and line[pos] == "{":
            labels, pos = _parse_labels(line, pos)
        value_text = line[pos:].strip().split(" ")[0]
        special = {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}.get(value_text)
        fam = families.setdefault(name, ParsedFamily())
        fam.samples[tuple(sorted(labels.items()))] = (
            float(value_text) if special is None else special)
    return families


def sample(families: dict[str, ParsedFamily], name: str, **labels: str) -> float:
    return families[name].samples[tuple(sorted(labels.items()))]


# --- exposition -------------------------------------------------------------------------

EXPECTED_FAMILIES = {
    "resurgo_job_last_success_timestamp_seconds": "gauge",
    "resurgo_job_last_run_duration_seconds": "gauge",
    "resurgo_job_last_bytes_added": "gauge",
    "resurgo_job_rpo_age_seconds": "gauge",
    "resurgo_job_rpo_objective_seconds": "gauge",
    "resurgo_job_failures_total": "counter",
    "resurgo_job_runs_total": "counter",
    "resurgo_job_status": "gauge",
    "resurgo_up": "gauge",
}


def two_jobs() -> list[JobMetrics]:
    return [
        JobMetrics(job="home", last_success=NOW - 3600, last_run_duration=62.5,
                   last_bytes_added=1_048_576, rpo_age=3600.25, rpo_objective=93600,
                   status=0, runs={"success": 10, "failure": 2, "warning": 1}),
        JobMetrics(job="db", status=2, runs={"failure": 3}),
    ]


def test_every_family_has_help_and_type_and_the_job_values() -> None:
    fams = parse_exposition(render_jobs(two_jobs()))

    assert {name: f.type for name, f in fams.items()} == EXPECTED_FAMILIES
    assert all(f.help for f in fams.values())
    assert sample(fams, "resurgo_job_last_success_timestamp_seconds", job="home") == NOW - 3600
    assert sample(fams, "resurgo_job_last_run_duration_seconds", job="home") == 62.5
    assert sample(fams, "resurgo_job_last_bytes_added", job="home") == 1_048_576
    assert sample(fams, "resurgo_job_rpo_age_seconds", job="home") == 3600.25
    assert sample(fams, "resurgo_job_rpo_objective_seconds", job="home") == 93600
    assert sample(fams, "resurgo_job_failures_total", job="home") == 2
    assert sample(fams, "resurgo_job_failures_total", job="db") == 3
    assert sample(fams, "resurgo_job_runs_total", job="home", outcome="success") == 10
    assert sample(fams, "resurgo_job_runs_total", job="home", outcome="interrupted") == 0
    assert sample(fams, "resurgo_job_runs_total", job="db", outcome="failure") == 3
    assert sample(fams, "resurgo_job_status", job="home") == 0
    assert sample(fams, "resurgo_job_status", job="db") == 2
    assert sample(fams, "resurgo_up") == 1


def test_unknown_values_are_left_out_rather_than_exported_as_zero() -> None:
    fams = parse_exposition(render_jobs(two_jobs()))

    assert set(fams["resurgo_job_last_success_timestamp_seconds"].samples) == {
        (("job", "home"),)}
    assert (("job", "db"),) not in fams["resurgo_job_rpo_age_seconds"].samples


def test_label_values_are_escaped_and_parse_back_unchanged() -> None:
    nasty = 'we"ird\\job\nname'
    text = render_jobs([JobMetrics(job=nasty, status=1, runs={})])

    assert 'job="we\\"ird\\\\job\\nname"' in text
    assert all(line.startswith(("# ", "resurgo_")) for line in text.splitlines())
    fams = parse_exposition(text)
    assert sample(fams, "resurgo_job_status", job=nasty) == 1


def test_from_status_exports_what_status_computed() -> None:
    snap = Snapshot(time_ns=int((NOW - 7200) * 1e9), tree=b"\0" * 32, id="ab" * 8)
    status = job_status(JobStatusInput(
        job="home", now=NOW, rpo=86400,
        repositories=[RepoInput("local", "/srv/r", snapshots=[snap], last_verified=NOW)],
        runs=[RunRecord(started=NOW - 7300, ended=NOW - 7200, outcome="success",
                        bytes_added=77)],
    ))

    fams = parse_exposition(render_jobs([JobMetrics.from_status(status, {"success": 1})]))

    assert sample(fams, "resurgo_job_rpo_age_seconds", job="home") == pytest.approx(7200)
    assert sample(fams, "resurgo_job_last_run_duration_seconds", job="home") == 100
    assert sample(fams, "resurgo_job_last_bytes_added", job="home") == 77
    assert sample(fams, "resurgo_job_status", job="home") == status.exit_code == 1


# --- the HTTP server ----------------------------------------------------------------------


def scrape(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


def test_server_on_an_ephemeral_port_serves_fresh_metrics_on_each_scrape() -> None:
    scrapes = []

    def collect() -> str:
        scrapes.append(1)
        jobs = [JobMetrics(job="home", status=0, runs={"success": len(scrapes)})]
        return render_jobs(jobs)

    with MetricsServer("127.0.0.1:0", collect) as server:
        assert server.port != 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        status, content_type, body = scrape(server.url)
        _, _, second = scrape(server.url)

    assert status == 200 and content_type == CONTENT_TYPE
    assert sample(parse_exposition(body), "resurgo_job_runs_total",
                  job="home", outcome="success") == 1
    assert sample(parse_exposition(second), "resurgo_job_runs_total",
                  job="home", outcome="success") == 2


def test_server_answers_404_elsewhere_and_500_when_collect_fails_then_recovers() -> None:
    calls = []

    def collect() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("state database locked")
        return render_jobs([])

    with MetricsServer("127.0.0.1:0", collect) as server:
        base = f"http://127.0.0.1:{server.port}"
        with pytest.raises(urllib.error.HTTPError) as missing:
            scrape(base + "/nothing")
        with pytest.raises(urllib.error.HTTPError) as failed:
            scrape(server.url)
        status, _, body = scrape(server.url)

    assert missing.value.code == 404
    assert failed.value.code == 500
    assert status == 200 and sample(parse_exposition(body), "resurgo_up") == 1


def test_stop_closes_the_port() -> None:
    server = MetricsServer("127.0.0.1:0", lambda: render_jobs([]))
    server.start()
    port = server.port
    assert scrape(server.url)[0] == 200
    server.stop()

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_a_port_in_use_is_a_usage_error_naming_the_address() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port}"):
            MetricsServer(f"127.0.0.1:{port}", lambda: "").start()


@pytest.mark.parametrize(("bind", "expected"), [
    ("127.0.0.1:9150", ("127.0.0.1", 9150)),
    ("[::1]:0", ("::1", 0)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_bind(bind: str, expected: tuple[str, int]) -> None:
    assert parse_bind(bind) == expected


@pytest.mark.parametrize("bind", ["9150", ":9150", "host:http", "host:70000"])
def test_parse_bind_rejects_malformed_addresses(bind: str) -> None:
    with pytest.raises(UsageError):
        parse_bind(bind)
