"""Rendering: how command results, engine events and progress reach the user.

A ``Renderer`` has one *mode* for the whole run:

* **text** (default): messages and tables on stdout, warnings on stderr, and a
  live progress bar on stderr when it is a terminal.
* **json** (``--json``): stdout carries only JSON lines, one object each with a
  ``"type"`` field (``"key"``, ``"snapshot"``, ``"warning"``, ``"progress"``,
  ...), and always ends with exactly one ``{"type": "summary", ...}`` object
  holding ``command``, ``exit_code``, ``ok`` and the fields the command added
  (plus ``error`` on failure). docs/cli.md documents the format.

``--quiet`` silences informational messages and progress, never results,
warnings or errors.

The engine reports through ``resurgo.progress.Reporter``; ``Renderer.reporter``
returns one that turns ``event(kind, ...)`` into warnings / JSON lines and
``progress(...)`` counters into the bar; an engine ``event("summary", ...)``
is merged into the final summary object. Counter names understood by the bar:
``files_done``, ``files_total``, ``bytes_done``, ``bytes_total`` (totals may be
absent while a scan is still running) and ``path`` (the current file).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import PurePath
from typing import Any, TextIO

# Events the user must see even without --verbose.
_ALWAYS_SHOWN = frozenset({"warning", "error"})
_JSON_PROGRESS_INTERVAL = 1.0  # seconds between "progress" lines in --json mode
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


# --- quantities ---------------------------------------------------------------


def format_bytes(n: float) -> str:
    """Binary units: ``0 B``, ``1023 B``, ``1.5 KiB``, ``12.0 MiB``."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_rate(bytes_per_second: float | None) -> str:
    return "-" if bytes_per_second is None else f"{format_bytes(bytes_per_second)}/s"


def format_duration(seconds: float | None) -> str:
    """``42s``, ``3m05s``, ``2h07m``; ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_time(t: datetime) -> str:
    """Local wall-clock time to the second, for tables."""
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for results: datetimes as ISO 8601, bytes as hex, paths as str."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    return str(value)


# --- tables -------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One table column: header, the record field it shows, how to format it."""

    header: str
    field: str
    fmt: Callable[[Any], str] = str
    align: str = "<"  # "<" left, ">" right


def format_table(columns: Sequence[Column], records: Sequence[Mapping[str, Any]]) -> str:
    cells = [[c.fmt(r.get(c.field)) if r.get(c.field) is not None else "" for c in columns]
             for r in records]
    widths = [max([len(c.header)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        parts = [f"{v:{c.align}{w}}" for v, c, w in zip(values, columns, widths, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line([c.header for c in columns]), "  ".join("-" * w for w in widths)]
    out.extend(line(row) for row in cells)
    return "\n".join(out)


# --- the renderer ---------------------------------------------------------------


class Renderer:
    """All output of one CLI run. Thread-safe: engine workers call its reporter."""

    def __init__(
        self,
        *,
        json_mode: bool,
        quiet: bool,
        verbose: int,
        stdout: TextIO,
        stderr: TextIO,
        command: str = "",
    ) -> None:
        self.json = json_mode
        self.quiet = quiet
        self.verbose = verbose
        self.stdout = stdout
        self.stderr = stderr
        self.command = command
        self._lock = threading.RLock()
        self._summary: dict[str, Any] = {}
        self._finished = False

    # -- results ----------------------------------------------------------------

    def message(self, text: str) -> None:
        """Informational text for humans (not in --json or --quiet mode)."""
        if not self.json and not self.quiet:
            self._write(self.stdout, text)

    def result(self, text: str) -> None:
        """Human text that *is* the result the user asked for (shown even with --quiet)."""
        if not self.json:
            self._write(self.stdout, text)

    def detail(self, text: str) -> None:
        """Extra text shown with --verbose only (stderr, so stdout stays clean)."""
        if self.verbose and not self.json:
            self._write(self.stderr, text)

    def warning(self, text: str, **fields: Any) -> None:
        if self.json:
            self.record("warning", message=text, **fields)
        else:
            self._write(self.stderr, f"warning: {text}")

    def record(self, type_: str, /, **fields: Any) -> None:
        """One JSON line ``{"type": type_, **fields}`` (no output in text mode)."""
        if self.json:
            doc = {"type": type_, **{k: to_jsonable(v) for k, v in fields.items()}}
            self._write(self.stdout, json.dumps(doc, sort_keys=False))

    def listing(
        self,
        type_: str,
        records: Sequence[Mapping[str, Any]],
        columns: Sequence[Column],
        *,
        empty: str = "",
    ) -> None:
        """A list of results: a table in text mode, one ``type_`` line per record in JSON."""
        if self.json:
            for r in records:
                self.record(type_, **r)
        elif records:
            self._write(self.stdout, format_table(columns, records))
        elif empty:
            self.result(empty)

    def summary(self, **fields: Any) -> None:
        """Add fields to the final summary object (emitted once, by ``finish``)."""
        with self._lock:
            self._summary.update({k: to_jsonable(v) for k, v in fields.items()})

    def finish(self, exit_code: int, error: str | None = None) -> None:
        """Emit the final summary (JSON mode). Called exactly once, by main."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            if not self.json:
                return
            doc: dict[str, Any] = {
                "type": "summary",
                "command": self.command,
                "exit_code": exit_code,
                "ok": exit_code == 0,
            }
            doc.update(self._summary)
            if error is not None:
                doc["error"] = error
            self._write(self.stdout, json.dumps(doc))

    # -- engine events and progress ---------------------------------------------

    @contextmanager
    def reporter(self, label: str = "") -> Iterator[ProgressReporter]:
        """A ``Reporter`` for one engine operation; shows a bar on a terminal."""
        rep = ProgressReporter(self, label)
        rep.start()
        try:
            yield rep
        finally:
            rep.stop()

    def _show_bar(self) -> bool:
        return not self.json and not self.quiet and _isatty(self.stderr)

    def _write(self, stream: TextIO, text: str) -> None:
        with self._lock:
            stream.write(text + "\n")
            stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _describe(fields: Mapping[str, Any]) -> str:
    """``path: error`` for the usual warning shape, ``k=v ...`` otherwise."""
    rest = {k: v for k, v in fields.items() if k not in ("path", "error", "message")}
    head = ": ".join(str(fields[k]) for k in ("path", "message", "error") if k in fields)
    tail = " ".join(f"{k}={v}" for k, v in rest.items())
    return " ".join(p for p in (head, tail) if p)


class ProgressReporter:
    """A ``resurgo.progress.Reporter`` that renders through a ``Renderer``."""

    def __init__(self, out: Renderer, label: str) -> None:
        self.out = out
        self.label = label
        self.counters: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._last_json = 0.0
        self._bar: _Bar | None = None

    def start(self) -> None:
        if self.out._show_bar():
            self._bar = _Bar(self.out.stderr, self.label)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def event(self, kind: str, /, **fields: Any) -> None:
        out = self.out
        if kind == "summary":
            # The engine's own summary joins the run's final summary object, so
            # --json output keeps exactly one "summary" line, at the end.
            out.summary(**fields)
        if out.json:
            if kind != "summary":
                out.record(kind, **fields)
            return
        if kind in _ALWAYS_SHOWN or out.verbose:
            prefix = kind if kind in _ALWAYS_SHOWN else f"[{kind}]"
            text = f"{prefix}: {_describe(fields)}"
            if self._bar is not None:
                self._bar.print(text)
            else:
                out._write(out.stderr, text)

    def progress(self, /, **counters: Any) -> None:
        with self._lock:
            self.counters.update(counters)
            snapshot = dict(self.counters)
            now = time.monotonic()
            emit_json = self.out.json and not self.out.quiet and (
                now - self._last_json >= _JSON_PROGRESS_INTERVAL
            )
            if emit_json:
                self._last_json = now
        if emit_json:
            self.out.record("progress", **snapshot)
        if self._bar is not None:
            self._bar.update(snapshot)


class _Bar:
    """The terminal progress bar (rich, imported only when a terminal is there)."""

    def __init__(self, stream: TextIO, label: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        def files(task: Any) -> str:
            done, total = task.fields.get("files_done"), task.fields.get("files_total")
            if done is None:
                return ""
            return f"{done}/{total} files" if total is not None else f"{done} files"

        def size(task: Any) -> str:
            done = format_bytes(task.completed)
            return f"{done}/{format_bytes(task.total)}" if task.total is not None else done

        def rate(task: Any) -> str:
            return format_rate(task.speed)

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            _text_column(files),
            _text_column(size),
            _text_column(rate),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=True,
        )
        self._task = self._progress.add_task(label, total=None)
        self._progress.start()

    def update(self, counters: Mapping[str, Any]) -> None:
        self._progress.update(
            self._task,
            completed=counters.get("bytes_done", 0),
            total=counters.get("bytes_total"),
            files_done=counters.get("files_done"),
            files_total=counters.get("files_total"),
        )

    def print(self, text: str) -> None:
        self._progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._progress.stop()


def _text_column(fn: Callable[[Any], str]) -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class _Fn(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(fn(task))

    return _Fn()
