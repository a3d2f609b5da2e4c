"""Prune at scale: time and peak memory of ``resurgo prune`` next to ``restic prune``.

Both tools back up the same evolving directory, snapshot after snapshot, so
their repositories have the same shape: ``--snapshots`` snapshots of
``--files`` small files (one blob each) spread over ``--dirs`` directories,
``--new-per-round`` of which get new content before every snapshot, so the
repository holds ``files + (snapshots - 1) * new_per_round`` distinct data
blobs (1,010,000 with the defaults) plus the trees. ``--pattern window``
replaces the oldest content each round (whole packs become unused);
``--pattern random`` replaces random files (old packs become partly unused,
so prune repacks). Then both forget all but
the newest ``--keep`` snapshots and prune, with the same ``--max-unused``;
each prune runs in its own process under GNU time, after the page cache is
dropped, for its wall time and peak resident memory.

resurgo's packs are set to restic's 4 MiB so that the two repositories hold
similar numbers of packs; resurgo prunes with ``--grace 0`` (mark and sweep
in one run: nothing else writes to the repository).

    .venv/bin/python benchmarks/prune_bench.py                 # full size (~30 min on 2 cores)
    .venv/bin/python benchmarks/prune_bench.py --snapshots 10 --files 2000 --new-per-round 1000

Results: ``benchmarks/results/prune-<stamp>.json`` and a markdown table on
stdout (docs/benchmarks-prune.md has the published figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

PASSWORD = "prune benchmark"


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` under GNU time; wall seconds, peak RSS (KiB) and output."""
    dropped = drop_caches()
    start = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return {"seconds": round(wall, 2), "max_rss_kib": int(m.group(1)) if m else None,
            "caches_dropped": dropped, "stdout": p.stdout[-4000:]}


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Data:
    """The evolving source tree: ``files`` files in ``dirs`` directories."""

    def __init__(self, root: Path, files: int, dirs: int, size: int) -> None:
        self.root, self.files, self.dirs, self.size = root, files, dirs, size

    def path(self, i: int) -> Path:
        return self.root / f"d{i % self.dirs:03d}" / f"f{i:07d}"

    def write(self, i: int, round_: int) -> None:
        rng = random.Random(round_ * 10_000_019 + i)
        self.path(i).write_bytes(rng.randbytes(self.size))

    def round(self, r: int, new_per_round: int, pattern: str) -> None:
        if r == 0:
            for d in range(self.dirs):
                (self.root / f"d{d:03d}").mkdir(parents=True, exist_ok=True)
            for i in range(self.files):
                self.write(i, 0)
            return
        if pattern == "window":
            # A window that moves through the files: each round replaces the
            # oldest content, so whole packs fall out of use together.
            start = ((r - 1) * new_per_round) % self.files
            chosen = [(start + j) % self.files for j in range(new_per_round)]
        else:
            # Random files: content lives for a random number of rounds, so old
            # packs end up partly used and prune has to repack them.
            chosen = random.Random(r).sample(range(self.files), new_per_round)
        for i in chosen:
            self.write(i, r)


def build(args: argparse.Namespace, work: Path, tools: list[str]) -> dict[str, Any]:
    from resurgo.backend.local import LocalBackend
    from resurgo.ops.backup import BackupOptions, backup_paths
    from resurgo.repo import KDFParams, RepoParams, Repository

    src = work / "src"
    shutil.rmtree(src, ignore_errors=True)
    data = Data(src, args.files, args.dirs, args.size)
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=str(work / "restic-cache"))
    repo = None
    if "resurgo" in tools:
        repo = Repository.init(
            LocalBackend(work / "resurgo-repo"), PASSWORD,
            params=RepoParams(pack_size=4 << 20), kdf=KDFParams.weak_for_tests(),
            cache_dir=work / "resurgo-cache",
        )
    if "restic" in tools:
        subprocess.run(["restic", "init", "-q", "-r", str(work / "restic-repo")], env=env,
                       check=True)
    spent = {"resurgo": 0.0, "restic": 0.0}
    for r in range(args.snapshots):
        data.round(r, args.new_per_round, args.pattern)
        if repo is not None:
            t = time.monotonic()
            backup_paths(repo, [src], BackupOptions(hostname="bench"))
            spent["resurgo"] += time.monotonic() - t
        if "restic" in tools:
            t = time.monotonic()
            subprocess.run(["restic", "backup", "-q", "-r", str(work / "restic-repo"),
                            "--host", "bench", str(src)], env=env, check=True)
            spent["restic"] += time.monotonic() - t
        if r % 10 == 9 or r == args.snapshots - 1:
            print(f"  snapshot {r + 1}/{args.snapshots}: resurgo {spent['resurgo']:.0f}s, "
                  f"restic {spent['restic']:.0f}s", flush=True)
    out: dict[str, Any] = {"backup_seconds": {k: round(v, 1) for k, v in spent.items()}}
    if repo is not None:
        out["resurgo_blobs"] = len(repo.index)
        repo.close()
    if "restic" in tools:
        p = subprocess.run(["restic", "list", "blobs", "-q", "-r", str(work / "restic-repo")],
                           env=env, check=True, capture_output=True, text=True)
        out["restic_blobs"] = len(p.stdout.splitlines())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=HERE / "work" / "prune")
    ap.add_argument("--snapshots", type=int, default=100)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--new-per-round", type=int, default=10_000)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--size", type=int, default=200, help="bytes per file (incompressible)")
    ap.add_argument("--keep", type=int, default=50, help="forget all but the newest KEEP")
    ap.add_argument("--max-unused", default="10%")
    ap.add_argument("--pattern", choices=["window", "random"], default="window",
                    help="which files change each round (random: partly used packs, repacking)")
    ap.add_argument("--tools", default="resurgo,restic")
    ap.add_argument("--reuse", action="store_true", help="prune repositories built earlier")
    args = ap.parse_args()
    tools = args.tools.split(",")
    work: Path = args.work
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result: dict[str, Any] = {
        "date": stamp, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                   "python": platform.python_version()},
        "shape": {k: getattr(args, k) for k in ("snapshots", "files", "new_per_round", "dirs",
                                                 "size", "keep", "max_unused", "pattern")},
    }
    env = dict(os.environ, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=str(work / "restic-cache"),
               RESURGO_PASSWORD=PASSWORD, PYTHONPATH=str(ROOT / "src"))
    if "restic" in tools:
        result["restic_version"] = subprocess.run(["restic", "version"], capture_output=True,
                                                  text=True).stdout.strip()
    from resurgo import __version__

    result["resurgo_version"] = __version__
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        print(f"building {args.snapshots} snapshots ...", flush=True)
        result["build"] = build(args, work, tools)
    resurgo = [sys.executable, "-m", "resurgo", "-r", str(work / "resurgo-repo"),
               "--cache-dir", str(work / "resurgo-cache")]
    restic = ["restic", "-r", str(work / "restic-repo")]
    for tool in tools:
        repo_dir = work / f"{tool}-repo"
        if tool == "resurgo":
            subprocess.run([*resurgo, "-q", "forget", "--keep-last", str(args.keep)], env=env,
                           check=True, stdout=subprocess.DEVNULL)
            cmd = [*resurgo, "--json", "prune", "--grace", "0", "--max-clock-skew", "0",
                   "--max-unused", args.max_unused]
        else:
            subprocess.run([*restic, "-q", "forget", "--keep-last", str(args.keep)], env=env,
                           check=True, stdout=subprocess.DEVNULL)
            cmd = [*restic, "prune", "--max-unused", args.max_unused]
        before = du(repo_dir)
        print(f"{tool} prune ...", flush=True)
        run = timed(cmd, env)
        run["repo_bytes_before"] = before
        run["repo_bytes_after"] = du(repo_dir)
        result[f"{tool}_prune"] = run
    out = HERE / "results" / f"prune-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nwritten {out}\n")
    print("| tool | prune time | peak RSS | repository before | after |")
    print("|---|---|---|---|---|")
    for tool in tools:
        r = result[f"{tool}_prune"]
        print(f"| {tool} | {r['seconds']:.1f} s | {r['max_rss_kib'] / 1024:.0f} MiB | "
              f"{r['repo_bytes_before'] / 2**20:.0f} MiB | {r['repo_bytes_after'] / 2**20:.0f} MiB |")


if __name__ == "__main__":
    main()
