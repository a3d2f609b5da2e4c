"""The renderer: quantities, tables, JSON lines, and the engine-facing progress reporter."""

from __future__ import annotations

import argparse
import io
import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.cli.parsing import key_value, size
from resurgo.cli.render import (
    Column,
    Renderer,
    format_bytes,
    format_duration,
    format_table,
    to_jsonable,
)
from resurgo.progress import Reporter


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _renderer(*, json_mode=False, quiet=False, verbose=0, stderr=None):
    out, err = io.StringIO(), stderr if stderr is not None else io.StringIO()
    r = Renderer(
        json_mode=json_mode, quiet=quiet, verbose=verbose, stdout=out, stderr=err, command="test"
    )
    return r, out, err


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 << 20, "5.0 MiB"),
     (3 << 40, "3.0 TiB")],
)
def test_format_bytes_uses_binary_units(n, text):
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (0, "0s"), (59.4, "59s"), (185, "3m05s"), (7620, "2h07m")]
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "n"),
    [("4096", 4096), ("512K", 512 << 10), ("16MiB", 16 << 20), ("16m", 16 << 20),
     ("1.5G", 3 << 29), ("2 TB", 2 << 40)],
)
def test_size_parses_binary_multiples(text, n):
    assert size(text) == n


@pytest.mark.parametrize("text", ["", "lots", "-5", "5X", "1.2.3M"])
def test_size_rejects_garbage(text):
    with pytest.raises(argparse.ArgumentTypeError):
        size(text)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_size_reads_plain_byte_counts_back(n):
    assert size(str(n)) == n


def test_key_value_splits_on_the_first_equals_sign():
    assert key_value("s3.endpoint=http://h:9000/?a=b") == ("s3.endpoint", "http://h:9000/?a=b")
    with pytest.raises(argparse.ArgumentTypeError):
        key_value("novalue")


def test_format_table_aligns_columns_under_headers():
    table = format_table(
        [Column("ID", "id"), Column("Size", "size", format_bytes, align=">")],
        [{"id": "abc", "size": 1}, {"id": "abcdef", "size": 2048}],
    )
    assert table.splitlines() == [
        "ID         Size",
        "------  -------",
        "abc         1 B",
        "abcdef  2.0 KiB",
    ]


def test_to_jsonable_converts_times_bytes_and_paths():
    from pathlib import Path

    t = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert to_jsonable({"t": t, "b": b"\x01\xff", "p": Path("/x"), "s": {1}}) == {
        "t": "2025-01-02T03:04:05+00:00", "b": "01ff", "p": "/x", "s": [1],
    }


def test_text_listing_is_a_table_and_json_listing_is_one_line_per_record():
    records = [{"id": "a1", "n": 1}, {"id": "b2", "n": 2}]
    columns = [Column("ID", "id"), Column("N", "n")]

    r, out, _ = _renderer()
    r.listing("thing", records, columns)
    assert out.getvalue().splitlines()[2:] == ["a1  1", "b2  2"]

    r, out, _ = _renderer(json_mode=True)
    r.listing("thing", records, columns)
    r.summary(things=2)
    r.finish(0)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines == [
        {"type": "thing", "id": "a1", "n": 1},
        {"type": "thing", "id": "b2", "n": 2},
        {"type": "summary", "command": "test", "exit_code": 0, "ok": True, "things": 2},
    ]


def test_quiet_hides_messages_but_not_results_or_warnings():
    r, out, err = _renderer(quiet=True)
    r.message("informational")
    r.result("the answer")
    r.warning("careful")
    assert out.getvalue() == "the answer\n"
    assert err.getvalue() == "warning: careful\n"


def test_finish_emits_the_summary_only_once():
    r, out, _ = _renderer(json_mode=True)
    r.finish(0)
    r.finish(1, "late")
    assert len(out.getvalue().splitlines()) == 1


def test_json_reporter_turns_events_into_lines_and_throttles_progress():
    r, out, _ = _renderer(json_mode=True)
    with r.reporter("backup") as rep:
        reporter: Reporter = rep
        reporter.event("warning", path="/etc/shadow", error="permission denied")
        for i in range(100):
            reporter.progress(files_done=i, bytes_done=i * 10)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]

    assert lines[0] == {"type": "warning", "path": "/etc/shadow", "error": "permission denied"}
    progress = [line for line in lines if line["type"] == "progress"]
    assert 1 <= len(progress) <= 2  # at most one a second
    assert rep.counters == {"files_done": 99, "bytes_done": 990}


def test_engine_summary_events_merge_into_the_single_final_summary():
    r, out, _ = _renderer(json_mode=True)
    with r.reporter("backup") as rep:
        rep.event("summary", files=3, snapshot_id="ab12")
    r.summary(extra=True)
    r.finish(0)

    (line,) = out.getvalue().splitlines()
    assert json.loads(line) == {
        "type": "summary", "command": "test", "exit_code": 0, "ok": True,
        "files": 3, "snapshot_id": "ab12", "extra": True,
    }


def test_text_reporter_shows_warnings_always_and_other_events_only_when_verbose():
    r, out, err = _renderer()
    with r.reporter() as rep:
        rep.event("warning", path="/a", error="EIO")
        rep.event("pack_uploaded", id="ab")
    assert err.getvalue() == "warning: /a: EIO\n"
    assert out.getvalue() == ""

    r, _, err = _renderer(verbose=1)
    with r.reporter() as rep:
        rep.event("pack_uploaded", id="ab")
    assert err.getvalue() == "[pack_uploaded]: id=ab\n"


def test_progress_bar_on_a_terminal_shows_files_bytes_rate_and_eta():
    terminal = _Terminal()
    r, out, _ = _renderer(stderr=terminal)
    with r.reporter("backup") as rep:
        rep.progress(files_done=3, files_total=10, bytes_done=5 << 20, bytes_total=20 << 20)
        rep.event("warning", path="/a", error="EIO")
        time.sleep(0.15)
        rep.progress(files_done=10, bytes_done=20 << 20)
        time.sleep(0.15)
    shown = terminal.getvalue()

    assert "3/10 files" in shown and "10/10 files" in shown
    assert "20.0 MiB/20.0 MiB" in shown
    assert "MiB/s" in shown and "ETA" in shown
    assert "warning: /a: EIO" in shown
    assert out.getvalue() == ""


def test_no_progress_bar_when_stderr_is_not_a_terminal_or_quiet():
    for quiet, stream in ((False, io.StringIO()), (True, _Terminal())):
        r, _, err = _renderer(quiet=quiet, stderr=stream)
        with r.reporter("backup") as rep:
            rep.progress(files_done=1, bytes_done=1)
        assert err.getvalue() == ""
