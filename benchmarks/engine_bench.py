#!/usr/bin/env python3
"""Engine throughput: chunk -> hash -> compress -> encrypt -> pack, without storage.

Runs the real ``Repository.save_blob`` path (default ``RepoParams``: 32 MiB packs,
FastCDC 256 KiB / 1 MiB / 8 MiB, zstd level 3, AES-256-GCM) into a backend that
keeps small objects but throws pack bytes away, so the figure is the engine's
own speed, not the disk's. The input is split into "files" that worker threads
take from a queue; each worker chunks its file and saves every chunk, as the
backup pipeline does.

    .venv/bin/python benchmarks/engine_bench.py                 # 1 GiB each, 1 and 2 threads
    .venv/bin/python benchmarks/engine_bench.py --size-mib 256  # quicker
    .venv/bin/python benchmarks/engine_bench.py --stages        # per-stage single-core speeds

Prints a Markdown table; ``--json`` prints the figures as JSON instead.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from resurgo.backend import ObjectInfo, layout
from resurgo.errors import ObjectExists, ObjectNotFound
from resurgo.repo import BlobType, KDFParams, RepoParams, Repository
from resurgo.repo.crypto import Kind

MiB = 1 << 20
FILE_SIZE = 64 * MiB


class NullPackBackend:
    """Keeps config, keys and index objects; counts and discards pack bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._small: dict[str, bytes] = {}
        self.pack_bytes = 0
        self.packs = 0

    @property
    def url(self) -> str:
        return "null://"

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            if key not in self._small:
                raise ObjectNotFound(key)
            data = self._small[key]
        return data[offset : len(data) if length is None else offset + length]

    def put(self, key: str, data: bytes | memoryview, *, create_only: bool = False) -> None:
        with self._lock:
            if key.startswith(layout.DATA):
                self.pack_bytes += len(data)
                self.packs += 1
                return
            if create_only and key in self._small:
                raise ObjectExists(key)
            self._small[key] = bytes(data)

    def stat(self, key: str) -> ObjectInfo:
        with self._lock:
            if key not in self._small:
                raise ObjectNotFound(key)
            return ObjectInfo(key, len(self._small[key]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            items = [ObjectInfo(k, len(v)) for k, v in self._small.items() if k.startswith(prefix)]
        yield from items

    def delete(self, key: str) -> None:
        with self._lock:
            self._small.pop(key, None)

    def close(self) -> None:
        pass


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak_rss() -> None:
    """Reset VmHWM (Linux 4.0+), so each run's peak memory is its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def limit_arenas(arenas: int) -> bool:
    """glibc M_ARENA_MAX, as the CLI sets it at start (resurgo.cli.memory)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    return bool(name) and ctypes.CDLL(name).mallopt(-8, arenas) == 1


def tune_malloc() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the kernel.

    Every envelope (~1 MiB) and pack (32 MiB) is a fresh allocation. With
    glibc's defaults, allocations that large are served by mmap and given
    back on free, so each one costs page faults and kernel zeroing again.
    Same effect as MALLOC_MMAP_THRESHOLD_=256M MALLOC_TRIM_THRESHOLD_=1G
    MALLOC_TOP_PAD_=256M in the environment.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    ok = libc.mallopt(m_mmap_threshold, 256 * MiB) == 1
    ok &= libc.mallopt(m_trim_threshold, 1024 * MiB) == 1
    ok &= libc.mallopt(m_top_pad, 256 * MiB) == 1
    return bool(ok)


def incompressible(size: int, seed: int) -> bytes:
    return np.random.default_rng(seed).bytes(size)


def compressible(size: int, seed: int) -> bytes:
    """Log-like text: random words from a vocabulary, ~3-4x with zstd -3, no long repeats."""
    rng = np.random.default_rng(seed)
    vocab = [rng.bytes(int(n)).hex().encode()[: int(n)] for n in rng.integers(2, 12, 4096)]
    vocab += [b"INFO", b"WARN", b"GET", b"/api/v1/items", b"200", b"user=", b"\n", b"ms"] * 64
    words = np.array(vocab, dtype=object)
    out = bytearray()
    while len(out) < size:
        idx = rng.integers(0, len(words), 200_000)
        out += b" ".join(words[idx].tolist())
    return bytes(out[:size])


def busy_seconds() -> float:
    """CPU seconds spent by every process on the machine since boot (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_idle(limit: float, quiet: float = 0.05) -> None:
    """Wait (at most ``limit`` seconds) until other processes use under ``quiet`` of the CPUs."""
    deadline = time.monotonic() + limit
    ncpu = os.cpu_count() or 1
    while time.monotonic() < deadline:
        b0, t0 = busy_seconds(), time.monotonic()
        time.sleep(2)
        if (busy_seconds() - b0) / ((time.monotonic() - t0) * ncpu) < quiet:
            return


def run(data: bytes, threads: int) -> dict[str, Any]:
    backend = NullPackBackend()
    repo = Repository.init(backend, "bench", params=RepoParams(), kdf=KDFParams.weak_for_tests())
    chunker_per_thread = threading.local()
    files: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
    view = memoryview(data)
    for off in range(0, len(data), FILE_SIZE):
        files.put(view[off : off + FILE_SIZE])
    for _ in range(threads):
        files.put(None)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            chunker_per_thread.c = repo.chunker()
            while (f := files.get()) is not None:
                for chunk in chunker_per_thread.c.cut(f):
                    repo.save_blob(BlobType.DATA, chunk)
        except BaseException as e:
            errors.append(e)

    reset_peak_rss()
    rss0 = status_kib("VmRSS")
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0 = busy_seconds()
    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    repo.flush()
    wall = time.perf_counter() - t0
    busy1 = busy_seconds()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if errors:
        raise errors[0]
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "threads": threads,
        "input_bytes": len(data),
        "seconds": wall,
        "MB_per_s": len(data) / wall / 1e6,
        "MiB_per_s": len(data) / wall / MiB,
        "cpu_seconds": cpu,
        "cores_busy": cpu / wall,
        # CPU used by other processes meanwhile: a disturbed measurement.
        "other_cpu_seconds": max(0.0, (busy1 - busy0) - cpu),
        "stored_ratio": backend.pack_bytes / len(data),
        # Memory the run needed above what the process held before it.
        "peak_extra_mib": (status_kib("VmHWM") - rss0) / 1024,
        "blobs": repo.stats_added["blobs"],
        "packs": backend.packs,
    }


def stages(data: bytes) -> dict[str, float]:
    """Single-thread speed of each step over the same data (MB/s)."""
    import blake3
    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    repo = Repository.init(NullPackBackend(), "bench", params=RepoParams(), kdf=KDFParams.weak_for_tests())
    chunks = list(repo.chunker().cut(data))
    key = os.urandom(32)
    aead = AESGCM(key)
    nonce = os.urandom(12)
    out: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        fn()
        out[name] = len(data) / (time.perf_counter() - t0) / 1e6

    timed("chunk (FastCDC cut)", lambda: sum(1 for _ in repo.chunker().cut(data)))
    timed("blob ID (keyed BLAKE3)", lambda: [repo.blob_id(c) for c in chunks])
    timed("zstd -3 compress", lambda: [zstandard.ZstdCompressor(level=3).compress(c) for c in chunks])
    timed("AES-256-GCM encrypt", lambda: [aead.encrypt(nonce, c, b"x" * 33) for c in chunks])
    timed("seal (compress+encrypt)", lambda: [repo.sealer().seal(Kind.DATA, c, b"x" * 33) for c in chunks])
    timed("pack join + BLAKE3 name", lambda: blake3.blake3(b"".join(chunks), max_threads=blake3.blake3.AUTO).digest())
    return out


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model, "python": sys.version.split()[0],
            "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--stages", action="store_true", help="also time each stage alone (256 MiB)")
    ap.add_argument("--only", choices=["incompressible", "compressible"], default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each run, wait up to this long for the machine to be idle, and "
                         "repeat a run (up to --attempts times) that other processes disturbed")
    ap.add_argument("--attempts", type=int, default=3)
    ap.add_argument("--arenas", type=int, default=0,
                    help="cap glibc malloc arenas first, as the CLI does (it uses 1)")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="raise glibc's mmap/trim thresholds first (see tune_malloc)")
    args = ap.parse_args()
    if args.arenas and not limit_arenas(args.arenas):
        sys.exit("mallopt(M_ARENA_MAX) failed")
    if args.tune_malloc and not tune_malloc():
        sys.exit("mallopt failed")
    size = args.size_mib * MiB
    results: list[dict[str, object]] = []
    stage_results: dict[str, dict[str, float]] = {}
    for name, make in (("incompressible", incompressible), ("compressible", compressible)):
        if args.only and name != args.only:
            continue
        data = make(size, 1)
        for n in (int(x) for x in args.threads.split(",")):
            best: dict[str, Any] | None = None
            for _ in range(max(1, args.attempts) if args.wait_idle else 1):
                if args.wait_idle:
                    wait_idle(args.wait_idle)
                r = run(data, n)
                if best is None or r["other_cpu_seconds"] < best["other_cpu_seconds"]:
                    best = r
                if r["other_cpu_seconds"] < 0.05 * r["seconds"]:
                    break
            assert best is not None
            results.append({"data": name, **best})
        if args.stages:
            stage_results[name] = stages(data[: min(size, 256 * MiB)])
        del data
    if args.json:
        print(json.dumps({"machine": machine(), "malloc_tuned": args.tune_malloc,
                          "arenas": args.arenas, "runs": results,
                          "stages": stage_results}, indent=1))
        return
    m = machine()
    print(f"machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, {m['date']}; "
          f"malloc {'tuned' if args.tune_malloc else 'glibc defaults'}"
          f"{f', {args.arenas} arena(s)' if args.arenas else ''}\n")
    print("| data | threads | MB/s | MiB/s | seconds | cores busy | other CPU s | stored/input | "
          "peak extra MiB | blobs | packs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['data']} | {r['threads']} | {r['MB_per_s']:.0f} | {r['MiB_per_s']:.0f} | "
              f"{r['seconds']:.2f} | {r['cores_busy']:.2f} | {r['other_cpu_seconds']:.2f} | "
              f"{r['stored_ratio']:.3f} | {r['peak_extra_mib']:.0f} | {r['blobs']} | {r['packs']} |")
    for name, st in stage_results.items():
        print(f"\nsingle-thread stages, {name} data (MB/s):\n")
        print("| stage | MB/s |\n|---|---|")
        for k, v in st.items():
            print(f"| {k} | {v:.0f} |")


if __name__ == "__main__":
    main()
