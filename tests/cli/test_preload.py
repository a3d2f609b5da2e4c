"""The read-ahead of the facade's native libraries while the key is derived."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from resurgo.cli import preload


def test_it_finds_the_native_libraries_of_the_facade_without_importing_them() -> None:
    # In a fresh interpreter: this test process has imported NumPy long ago.
    code = (
        "import sys; from resurgo.cli import preload; fs = preload.native_files();"
        "print(len(fs), sorted({f.parent.name for f in fs}), 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=1)
    assert int(out[0]) >= 5
    assert "_core" in out[1] and "zstandard" in out[1] and "bindings" in out[1]
    assert out[1].rstrip().endswith("False")  # numpy was not imported


def test_missing_or_unreadable_files_are_skipped(tmp_path: Path) -> None:
    ok = tmp_path / "lib.so"
    ok.write_bytes(b"\0" * 10000)
    preload._read_ahead([tmp_path / "gone.so", tmp_path, ok])  # a directory cannot be read ahead


def test_start_runs_in_a_daemon_thread_that_ends() -> None:
    t = preload.start()
    assert t.daemon
    t.join(timeout=60)
    assert not t.is_alive()
