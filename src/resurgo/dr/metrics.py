"""Prometheus metrics: the text exposition of job health and a tiny HTTP server for it.

Vocabulary: a *metric family* has a name, a HELP text, a TYPE (gauge or
counter) and *samples*, each a label set and a value. ``render`` writes the
families in the Prometheus text format 0.0.4 (``text/plain; version=0.0.4``),
escaping label values (backslash, double quote, newline) and HELP texts
(backslash, newline). ``job_metrics`` turns the per-job facts (from
``resurgo.dr.status.JobStatus`` and run counts of the state database) into the
families listed in docs/status.md.

``MetricsServer`` serves ``GET /metrics`` on a background thread, calling a
``collect()`` function for each scrape, so the numbers are as fresh as the
state database. It logs through ``logging`` (never to stderr directly).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from resurgo.errors import UsageError

_log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("success", "warning", "failure", "interrupted")


# --- exposition format ----------------------------------------------------------------


@dataclass
class Family:
    """One metric family and its samples (label mapping, value)."""

    name: str
    help: str
    type: str  # "gauge" | "counter"
    samples: list[tuple[Mapping[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    """The exposition text of ``families`` (each with HELP and TYPE, even if empty)."""
    out: list[str] = []
    for fam in families:
        out.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        for labels, value in fam.samples:
            if labels:
                text = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
                out.append(f"{fam.name}{{{text}}} {format_value(value)}")
            else:
                out.append(f"{fam.name} {format_value(value)}")
    return "\n".join(out) + "\n"


# --- resurgo's metrics -----------------------------------------------------------------


@dataclass(frozen=True)
class JobMetrics:
    """The numbers exported for one job; None values are left out of the output.

    ``runs`` counts finished runs by outcome over the whole state database, so
    the ``_total`` series only grow (as Prometheus counters must).
    """

    job: str
    last_success: float | None = None  # Unix seconds
    last_run_duration: float | None = None
    last_bytes_added: int | None = None
    rpo_age: float | None = None
    rpo_objective: float | None = None
    status: int | None = None  # 0 ok, 1 warning, 2 critical, 3 unknown
    runs: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_status(cls, status: Any, runs: Mapping[str, int]) -> JobMetrics:
        """From a ``resurgo.dr.status.JobStatus`` and the run counts by outcome."""
        return cls(
            job=status.job,
            last_success=status.last_success,
            last_run_duration=status.last_run_duration,
            last_bytes_added=status.last_bytes_added,
            rpo_age=status.rpo_age,
            rpo_objective=status.rpo,
            status=status.exit_code,
            runs=dict(runs),
        )


def job_families(jobs: Sequence[JobMetrics], *, up: bool = True) -> list[Family]:
    """The metric families for ``jobs``, in a fixed order (docs/status.md lists them)."""
    fams = {
        "last_success": Family(
            "resurgo_job_last_success_timestamp_seconds",
            "Unix time when the last successful run of the job ended.", "gauge"),
        "duration": Family(
            "resurgo_job_last_run_duration_seconds",
            "Duration of the last finished run of the job.", "gauge"),
        "bytes": Family(
            "resurgo_job_last_bytes_added",
            "Bytes added to the primary repository by the last finished run.", "gauge"),
        "rpo_age": Family(
            "resurgo_job_rpo_age_seconds",
            "Age of the newest snapshot present in every repository of the job.", "gauge"),
        "rpo": Family(
            "resurgo_job_rpo_objective_seconds",
            "Recovery point objective of the job.", "gauge"),
        "failures": Family(
            "resurgo_job_failures_total", "Failed runs of the job.", "counter"),
        "runs": Family(
            "resurgo_job_runs_total", "Finished runs of the job, by outcome.", "counter"),
        "status": Family(
            "resurgo_job_status",
            "Status of the job: 0 ok, 1 warning, 2 critical, 3 unknown.", "gauge"),
    }
    for j in jobs:
        if j.last_success is not None:
            fams["last_success"].add(j.last_success, job=j.job)
        if j.last_run_duration is not None:
            fams["duration"].add(j.last_run_duration, job=j.job)
        if j.last_bytes_added is not None:
            fams["bytes"].add(j.last_bytes_added, job=j.job)
        if j.rpo_age is not None:
            fams["rpo_age"].add(j.rpo_age, job=j.job)
        if j.rpo_objective is not None:
            fams["rpo"].add(j.rpo_objective, job=j.job)
        fams["failures"].add(j.runs.get("failure", 0), job=j.job)
        # Every known outcome is always exported, so a rate() over it starts at 0.
        for outcome in (*OUTCOMES, *sorted(set(j.runs) - set(OUTCOMES))):
            fams["runs"].add(j.runs.get(outcome, 0), job=j.job, outcome=outcome)
        if j.status is not None:
            fams["status"].add(j.status, job=j.job)
    up_family = Family("resurgo_up", "1 when resurgo could read its plan and state.", "gauge")
    up_family.add(1 if up else 0)
    return [*fams.values(), up_family]


def render_jobs(jobs: Sequence[JobMetrics], *, up: bool = True) -> str:
    """The whole ``/metrics`` page for ``jobs``."""
    return render(job_families(jobs, up=up))


# --- the HTTP endpoint ------------------------------------------------------------------


def parse_bind(bind: str) -> tuple[str, int]:
    """``"127.0.0.1:9150"``, ``"[::1]:9150"`` or ``"localhost:0"`` -> (host, port)."""
    host, sep, port_text = bind.rpartition(":")
    if not sep or not host:
        raise UsageError(f"metrics address {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:9150")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"metrics address {bind!r}: port {port_text!r} is not a number")
    if not 0 <= port <= 65535:
        raise UsageError(f"metrics address {bind!r}: port out of range")
    return host, port


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    collect: Callable[[], str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "resurgo-metrics"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _respond(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = self.server.collect().encode("utf-8")
            except Exception as e:  # a failed collection must not kill the server
                _log.exception("collecting metrics failed")
                self._send(500, f"collecting metrics failed: {type(e).__name__}\n".encode(),
                           "text/plain; charset=utf-8", head)
                return
            self._send(200, body, CONTENT_TYPE, head)
        elif path == "/":
            self._send(200, b'resurgo metrics: <a href="/metrics">/metrics</a>\n',
                       "text/html; charset=utf-8", head)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", head)

    def _send(self, code: int, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        _log.debug("metrics %s: " + format, self.address_string(), *args)


class MetricsServer:
    """Serves ``collect()`` at ``GET /metrics`` on ``bind`` (``HOST:PORT``; port 0 = any free).

    ``start()`` binds and serves on a daemon thread; ``port`` is then the port
    actually bound. ``stop()`` shuts down and closes the socket. Also a context
    manager. A bind failure raises ``UsageError`` naming the address.
    """

    def __init__(self, bind: str, collect: Callable[[], str]) -> None:
        self.host, self._requested_port = parse_bind(bind)
        self.collect = collect
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        if self._server is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET

        class Server(_Server):
            address_family = family

        try:
            server = Server((self.host, self._requested_port), _Handler)
        except OSError as e:
            raise UsageError(f"cannot serve metrics on {self.host}:{self._requested_port}: "
                             f"{e.strerror or e}")
        server.collect = self.collect
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="resurgo-metrics", daemon=True,
        )
        self._thread.start()
        _log.info("serving metrics at %s", self.url)

    def stop(self) -> None:
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "CONTENT_TYPE", "Family", "JobMetrics", "MetricsServer", "escape_help",
    "escape_label_value", "format_value", "job_families", "parse_bind", "render", "render_jobs",
]
