"""Reading the native libraries the repository facade needs while the key is derived.

Opening a repository derives the key first (Argon2id: a few tenths of a second
of CPU, the disk idle) and only then imports NumPy, zstd, ``cryptography``,
BLAKE3 and FastCDC (docs/design.md, "Start-up"). On a cold page cache each of
those imports then waits for its shared library, one page fault after another:
about 60 MB, most of a cold command's extra start-up time. ``start`` asks the
kernel to read those files (``POSIX_FADV_WILLNEED``, asynchronous) from a
daemon thread before the derivation, so they arrive while the CPU is busy.

Only a hint: nothing is imported or kept open, and a file that is missing or
cannot be read is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

# Top-level package -> globs (relative to its directory) of the native files
# that importing the facade loads.
_NATIVE = {
    "numpy": ("_core/_multiarray_umath*.so", "linalg/_umath_linalg*.so", "../numpy.libs/*.so*"),
    "zstandard": ("backend_c*.so",),
    "cryptography": ("hazmat/bindings/_rust*.so",),
    "blake3": ("blake3*.so",),
    "pyfastcdc": ("cy/*.so",),
}


def native_files() -> list[Path]:
    """The native library files of ``_NATIVE`` that exist here (no package is imported)."""
    files: list[Path] = []
    for package, patterns in _NATIVE.items():
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        base = Path(next(iter(spec.submodule_search_locations)))
        for pattern in patterns:
            files.extend(sorted(base.glob(pattern)))
    return files


def _read_ahead(files: list[Path]) -> None:
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def start() -> threading.Thread:
    """Start reading the facade's native libraries into the page cache (returns the thread)."""
    t = threading.Thread(target=lambda: _read_ahead(native_files()), name="resurgo-preload",
                         daemon=True)
    t.start()
    return t
