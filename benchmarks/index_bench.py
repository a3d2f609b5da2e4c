#!/usr/bin/env python3
"""In-memory index at scale: bytes per blob, build time, lookups per second.

Builds a ``MemoryIndex`` of N blobs (default 10 million) the way opening a
repository does: one ``add_decoded`` call over many decoded index objects, each
naming 16 packs of 25 blobs (32 MiB packs of ~1.25 MiB chunks). Reports the
arrays' own size (``nbytes()``), the growth of the process's resident memory
(``VmRSS`` from /proc/self/status, input arrays freed first) and its peak
(``VmHWM``), then times random lookups that hit and that miss.

    .venv/bin/python benchmarks/index_bench.py
    .venv/bin/python benchmarks/index_bench.py --blobs 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from resurgo.repo.index import ENTRY_DTYPE, DecodedIndex, MemoryIndex

PACKS_PER_INDEX = 16
BLOBS_PER_PACK = 25


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, list[DecodedIndex]]:
    """One entry array for all blobs, sliced (views, no copies) into index objects."""
    rng = np.random.default_rng(seed)
    entries = np.zeros(n, dtype=ENTRY_DTYPE)
    entries["id"] = np.frombuffer(rng.bytes(32 * n), dtype="S32")
    per_index = PACKS_PER_INDEX * BLOBS_PER_PACK
    entries["pack"] = (np.arange(n) % per_index) // BLOBS_PER_PACK
    entries["offset"] = rng.integers(0, 32 << 20, n)
    entries["length"] = rng.integers(256 << 10, 8 << 20, n)
    entries["raw"] = entries["length"]
    entries["type"] = (rng.random(n) < 0.02).astype(np.uint8)  # ~2 % tree blobs
    decoded = []
    for start in range(0, n, per_index):
        packs = [rng.bytes(32) for _ in range(PACKS_PER_INDEX)]
        decoded.append(DecodedIndex(packs, [], entries[start : start + per_index]))
    return entries, decoded


def malloc_trim() -> None:
    """Return freed heap memory to the kernel, so RSS shows what is still live."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        ctypes.CDLL(name).malloc_trim(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blobs", type=int, default=10_000_000)
    ap.add_argument("--lookups", type=int, default=300_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.blobs

    gc.collect()
    rss0 = status_kib("VmRSS")
    entries, decoded = synthetic(n, 1)
    rng = np.random.default_rng(2)
    picks = rng.integers(0, n, args.lookups)
    probe_hits = [(int(entries["type"][i]), bytes(entries["id"][i]).ljust(32, b"\0")) for i in picks]
    probe_misses = [os.urandom(32) for _ in range(args.lookups)]

    t0 = time.perf_counter()
    idx = MemoryIndex()
    idx.add_decoded(decoded)
    idx.compact()
    build = time.perf_counter() - t0
    n_packs = len(decoded) * PACKS_PER_INDEX
    del entries, decoded

    t0 = time.perf_counter()
    hits = sum(idx.lookup(t, bid) is not None for t, bid in probe_hits)
    hit_rate = args.lookups / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    misses = sum(idx.lookup(0, bid) is None for bid in probe_misses)
    miss_rate = args.lookups / (time.perf_counter() - t0)
    assert hits == args.lookups and misses == args.lookups, (hits, misses)

    del probe_hits, probe_misses, picks
    gc.collect()
    kept = (status_kib("VmRSS") - rss0) * 1024
    malloc_trim()
    live = (status_kib("VmRSS") - rss0) * 1024
    out = {
        "blobs": n,
        "packs": n_packs,
        "nbytes": idx.nbytes(),
        "nbytes_per_blob": idx.nbytes() / n,
        "rss_live_bytes": live,
        "rss_live_per_blob": live / n,
        "rss_before_trim_per_blob": kept / n,
        "peak_rss_mib": status_kib("VmHWM") / 1024,
        "build_seconds": build,
        "lookups_hit_per_s": hit_rate,
        "lookups_miss_per_s": miss_rate,
        "nproc": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"blobs                      {n:,} in {n_packs:,} packs")
    print(f"index arrays (nbytes)      {out['nbytes'] / 2**20:,.0f} MiB = {out['nbytes_per_blob']:.1f} bytes/blob")
    print(f"live RSS growth            {live / 2**20:,.0f} MiB = {out['rss_live_per_blob']:.1f} bytes/blob")
    print(f"RSS growth before trim     {kept / 2**20:,.0f} MiB = {out['rss_before_trim_per_blob']:.1f} bytes/blob")
    print(f"peak RSS (whole process)   {out['peak_rss_mib']:,.0f} MiB (synthetic inputs included)")
    print(f"build (add_decoded)        {build:.2f} s")
    print(f"lookups, hits              {hit_rate:,.0f} /s")
    print(f"lookups, misses            {miss_rate:,.0f} /s")

if __name__ == "__main__":
    main()
