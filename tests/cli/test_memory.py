"""The allocator setting made at CLI start."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import resurgo
from resurgo.cli.memory import limit_malloc_arenas


def test_malloc_arenas_are_capped_on_glibc_linux() -> None:
    # Run in a child: the setting is process-wide and must precede threads.
    code = "from resurgo.cli.memory import limit_malloc_arenas; print(limit_malloc_arenas())"
    env = dict(os.environ, PYTHONPATH=str(Path(resurgo.__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert out.stdout.strip() == str(expected)


def test_capping_arenas_twice_is_harmless() -> None:
    assert limit_malloc_arenas() == limit_malloc_arenas()
