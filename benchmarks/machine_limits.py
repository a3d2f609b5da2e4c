#!/usr/bin/env python3
"""The limits of this machine for the benchmark data: what a backup tool could reach.

* I/O: cold read of the whole benchmark dataset (page cache dropped first), with
  1 and 2 reader threads, and a sequential write + fsync of 512 MiB.
* CPU, per stage, on 256 MiB of random and of compressible data, with 1 and 2
  threads (2 threads near 2x the throughput of 1 shows the stage releases the GIL):
  FastCDC chunking (min 256 KiB / avg 1 MiB / max 8 MiB, like resurgo),
  keyed BLAKE3, zstd level 3, AES-256-GCM, the whole backup path per chunk
  (hash + compress + encrypt) and the restore path (decrypt + decompress + hash).
  Chunking and AES-256-GCM are measured with what resurgo runs: its native
  cutter (``repo/_cdc.c``) and AEAD (``repo/aead.py``) where they are built,
  pyfastcdc and cryptography otherwise; the report names which.

Reported in MB/s (10^6 bytes per second of input). Best of three runs per figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import zstandard
from pyfastcdc import FastCDC

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "src"))

import gen_dataset
from run import cpu_busy_seconds, drop_caches, machine_info, wait_idle

from resurgo.repo import batch, chunker
from resurgo.repo.aead import AESGCM

BENCH_DIR = Path(__file__).resolve().parent
MiB = 1 << 20
MB = 1_000_000
KEY = bytes(range(32))


def _cdc() -> FastCDC:
    """resurgo's default chunk sizes (256 KiB / 1 MiB / 8 MiB, normalization 1)."""
    return FastCDC(
        avg_size=1 * MiB, min_size=256 * 1024, max_size=8 * MiB, normalized_chunking=1, seed=7
    )


def _spans(buf: memoryview) -> list[tuple[int, int]]:
    """The cut points of ``buf`` (offset, length), as resurgo's chunker finds them."""
    if chunker.Cutter is not None:
        return chunker.Cutter(7, 256 * 1024, 1 * MiB, 8 * MiB, 1).spans(buf)
    return [(c.offset, c.length) for c in _cdc().cut_buf(buf)]


def stage_implementations() -> str:
    cdc = "resurgo's native cutter (_cdc.c)" if chunker.Cutter is not None else "pyfastcdc"
    aead = "resurgo's native AEAD (_seal.gcm, OpenSSL EVP)" if batch.gcm is not None else "cryptography"
    return f"chunking: {cdc}; AES-256-GCM: {aead}"


def _threads(n: int, work: Callable[[int], None]) -> tuple[float, float]:
    """Run ``work(i)`` for i in range(n) on n threads: (wall seconds, process CPU
    seconds). CPU/wall near n means the threads really ran in parallel (the GIL
    was released); it stays meaningful when other processes slow the wall time."""
    ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    c0 = time.process_time()
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0, time.process_time() - c0


def compressible_data(size: int, seed: int = 3) -> bytes:
    """Half code-like text, half log lines (the dataset's compressible kinds)."""
    rng = np.random.default_rng(seed)
    vocab = gen_dataset.Vocabulary(seed)
    half = size // 2
    code = vocab.text(rng, half)
    log = gen_dataset._log_text(rng, vocab, size - len(code), gen_dataset.BASE_TIME * 1000)
    return code + log


def stage_throughput(data: bytes, threads: int) -> dict[str, float]:
    mv = memoryview(data)
    chunks = [mv[off : off + length] for off, length in _spans(mv)]
    parts = [chunks[i::threads] for i in range(threads)]
    n = len(data)
    aes = AESGCM(KEY)
    nonce = bytes(12)
    prepared = []
    cz = zstandard.ZstdCompressor(level=3)
    for c in chunks:
        z = cz.compress(c)
        prepared.append(aes.encrypt(nonce, z, b""))
    prep_parts = [prepared[i::threads] for i in range(threads)]
    out: dict[str, float] = {}

    def chunking(i: int) -> None:
        lo, hi = i * n // threads, (i + 1) * n // threads
        _spans(mv[lo:hi])

    def hashing(i: int) -> None:
        for c in parts[i]:
            blake3.blake3(c, key=KEY).digest()

    def compress(i: int) -> None:
        z = zstandard.ZstdCompressor(level=3)
        for c in parts[i]:
            z.compress(c)

    def encrypt(i: int) -> None:
        a = AESGCM(KEY)
        for c in parts[i]:
            a.encrypt(nonce, c, b"")

    def backup_path(i: int) -> None:
        a = AESGCM(KEY)
        z = zstandard.ZstdCompressor(level=3)
        for c in parts[i]:
            blake3.blake3(c, key=KEY).digest()
            a.encrypt(nonce, z.compress(c), b"")

    def restore_path(i: int) -> None:
        a = AESGCM(KEY)
        d = zstandard.ZstdDecompressor()
        for c in prep_parts[i]:
            blake3.blake3(d.decompress(a.decrypt(nonce, c, b"")), key=KEY).digest()

    for name, fn in [
        ("fastcdc_chunking", chunking),
        ("blake3_keyed", hashing),
        ("zstd3_compress", compress),
        ("aes256gcm_encrypt", encrypt),
        ("backup_path_hash_compress_encrypt", backup_path),
        ("restore_path_decrypt_decompress_hash", restore_path),
    ]:
        secs, cpu = min(_threads(threads, fn) for _ in range(3))
        out[name] = round(n / MB / secs, 1)
        out[name + ".cpu_per_wall"] = round(cpu / secs, 2)
    ratio = sum(len(zstandard.ZstdCompressor(level=3).compress(c)) for c in chunks) / n
    out["zstd3_ratio_compressed_over_raw"] = round(ratio, 3)
    out["chunks"] = len(chunks)
    return out


def cold_read(root: Path, threads: int) -> dict[str, Any]:
    files = sorted(
        os.path.join(d, f)
        for d, _, fs in os.walk(root)
        for f in fs
        if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
    )
    dropped, _ = drop_caches()
    total = [0] * threads

    def reader(i: int) -> None:
        buf = bytearray(4 * MiB)
        for p in files[i::threads]:
            with open(p, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total[i] += n

    secs, _ = _threads(threads, reader)
    return {
        "threads": threads,
        "caches_dropped": dropped,
        "files": len(files),
        "bytes": sum(total),
        "seconds": round(secs, 2),
        "mb_s": round(sum(total) / MB / secs, 1),
        "files_s": round(len(files) / secs),
    }


def write_fsync(path: Path, size: int = 512 * MiB) -> dict[str, Any]:
    block = os.urandom(8 * MiB)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    secs = time.perf_counter() - t0
    path.unlink()
    return {"bytes": size, "seconds": round(secs, 2), "mb_s": round(size / MB / secs, 1)}


def render(res: dict[str, Any]) -> str:
    m = res["machine"]
    L = [f"### Machine limits {res['date']}", ""]
    L.append(
        f"- Machine: {m.get('cpu')}, {m.get('nproc')} CPUs, {m.get('memory_gib')} GiB RAM, "
        f"filesystem {m.get('filesystem')}; Python {m.get('python')}"
    )
    L.append(f"- Libraries: {res['libraries']}")
    L.append(
        f"- Mean busy CPUs over the run (this script included): {res.get('mean_busy_cpus', '?')}"
    )
    L.append("")
    L.append("**I/O**")
    L.append("")
    L.append("| measurement | MB/s | detail |")
    L.append("|---|---:|---|")
    for r in res["cold_read"]:
        L.append(
            f"| cold read of the dataset, {r['threads']} thread(s) | {r['mb_s']:,.0f} | "
            f"{r['bytes'] / MB:,.0f} MB, {r['files']:,} files, {r['files_s']:,} files/s, "
            f"caches dropped: {'yes' if r['caches_dropped'] else 'no'} |"
        )
    w = res["write_fsync"]
    L.append(f"| sequential write + fsync | {w['mb_s']:,.0f} | {w['bytes'] / MB:,.0f} MB |")
    L.append("")
    L.append(f"**CPU stages on {res['stage_bytes'] // MiB} MiB (MB/s of input)**")
    L.append("")
    kinds = list(res["stages"])
    hdr = ["stage"]
    for k in kinds:
        hdr += [f"{k}, 1 thread", f"{k}, 2 threads", "speedup", "CPU/wall (2 threads)"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|---|" + "---:|" * (len(hdr) - 1))
    for stage in res["stages"][kinds[0]]["1"]:
        if stage in ("chunks", "zstd3_ratio_compressed_over_raw") or "." in stage:
            continue
        row = [stage.replace("_", " ")]
        for k in kinds:
            a, b = res["stages"][k]["1"][stage], res["stages"][k]["2"][stage]
            par = res["stages"][k]["2"].get(stage + ".cpu_per_wall")
            row += [f"{a:,.0f}", f"{b:,.0f}", f"{b / a:.2f}x", f"{par}"]
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append(
        "CPU/wall is the process's CPU seconds per wall second while 2 threads ran: near 2 "
        "means the stage runs in parallel (releases the GIL), near 1 means it is serialized. "
        "Both figures need an otherwise idle machine; see the mean busy CPUs above."
    )
    L.append("")
    ratios = ", ".join(
        f"{k}: {res['stages'][k]['1']['zstd3_ratio_compressed_over_raw']}" for k in kinds
    )
    L.append(
        f"zstd level 3 output/input: {ratios}. Chunks per 256 MiB: "
        + ", ".join(f"{k}: {res['stages'][k]['1']['chunks']}" for k in kinds)
        + "."
    )
    L.append("")
    return "\n".join(L)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="dataset scale for the read test")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dataset", type=Path, help="read this directory instead of a generated one")
    ap.add_argument("--work", type=Path, default=BENCH_DIR / "work")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    ap.add_argument("--stage-mib", type=int, default=256)
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECS",
        help="before each measurement wait up to SECS for other processes to leave the CPUs idle",
    )
    args = ap.parse_args(argv)

    started = dt.datetime.now(dt.UTC)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(work),
        "libraries": (
            f"{stage_implementations()}; blake3 {blake3.__version__}, zstandard "
            f"{zstandard.__version__} (libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))}), "
            f"numpy {np.__version__}"
        ),
    }
    if args.dataset:
        root = args.dataset
    else:
        root = work / f"limits-dataset-s{args.scale}-seed{args.seed}"
        if not root.exists():
            print(f"generating dataset scale {args.scale} in {root}", file=sys.stderr)
            gen_dataset.generate(root, args.scale, args.seed)
    res["dataset"] = str(root)
    busy0, t0 = cpu_busy_seconds(), time.perf_counter()

    def settle() -> None:
        if args.wait_idle > 0:
            wait_idle(args.wait_idle)

    res["cold_read"] = []
    for threads in (1, 2):
        settle()
        res["cold_read"].append(cold_read(root, threads))
    settle()
    res["write_fsync"] = write_fsync(work / "limits-write.tmp")

    size = args.stage_mib * MiB
    res["stage_bytes"] = size
    data = {"random": os.urandom(size), "compressible": compressible_data(size)}
    res["stages"] = {}
    for kind, buf in data.items():
        res["stages"][kind] = {}
        for threads in (1, 2):
            settle()
            res["stages"][kind][str(threads)] = stage_throughput(buf, threads)
    # Machine-wide CPU use over the run, for judging the 2-thread figures.
    res["mean_busy_cpus"] = round((cpu_busy_seconds() - busy0) / (time.perf_counter() - t0), 2)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    jpath = args.results / f"limits-{stamp}.json"
    jpath.write_text(json.dumps(res, indent=2) + "\n")
    md = render(res)
    jpath.with_suffix(".md").write_text(md)
    print(md)
    print(f"results: {jpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
