#!/usr/bin/env python3
"""Side-by-side benchmark of resurgo, restic and borg on the same data in one run.

Order (the mutation is applied once, so every tool sees identical changes):

1. for each tool, in a fresh repository: ``init``, ``backup_initial``, ``backup_nochange``
2. mutate the dataset once (``gen_dataset.py mutate``), then hash it (the reference)
3. for each tool: ``backup_incremental``, ``restore`` (latest snapshot into an empty
   directory, then a byte-and-metadata comparison with the source), ``check``,
   ``check_read_data``

Every step runs under ``/usr/bin/time -v`` after ``sync; echo 3 >
/proc/sys/vm/drop_caches`` (recorded per step whether that worked) and records
wall time, CPU time (user + sys), peak RSS (time's, i.e. the largest single process,
and the sampled sum over the process tree), repository size and state/cache size.
Results: ``results/<timestamp>.json`` and ``.md``. ``--render FILE.json`` re-renders
the markdown of an earlier run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_dataset
import treecmp
from tools import BENCH_DIR, Tool, Workspace, make_tool

TIME_BIN = "/usr/bin/time"
PHASE1 = ["init", "backup_initial", "backup_nochange"]
PHASE2 = ["backup_incremental", "restore", "check", "check_read_data"]
STEPS = PHASE1 + PHASE2
# Archive names (borg needs them); restore reads the last backup.
LABELS = {
    "backup_initial": "initial",
    "backup_nochange": "nochange",
    "backup_incremental": "incremental",
    "restore": "incremental",
}
MB = 1_000_000


# ---------------------------------------------------------------- measurement


def drop_caches() -> tuple[bool, str]:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True, ""
    except OSError as e:
        return False, str(e)


def cpu_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all CPUs, from /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def wait_idle(max_seconds: float, threshold: float = 0.15) -> tuple[float, bool]:
    """Wait until other processes leave the CPUs idle (busy < ``threshold`` of all
    CPUs over one second), at most ``max_seconds``. Returns (waited, idle)."""
    t0 = time.perf_counter()
    ncpu = os.cpu_count() or 1
    while True:
        b0 = cpu_busy_seconds()
        time.sleep(1.0)
        if (cpu_busy_seconds() - b0) / ncpu < threshold:
            return round(time.perf_counter() - t0, 1), True
        if time.perf_counter() - t0 >= max_seconds:
            return round(time.perf_counter() - t0, 1), False


def tree_size(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of everything below ``path``."""
    apparent = allocated = 0
    if not path.exists():
        return 0, 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


class TreeRSSSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants every 0.1 s:
    /usr/bin/time reports only the largest single process, which understates
    tools that use worker processes."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self._halt = threading.Event()
        self._page_kb = os.sysconf("SC_PAGE_SIZE") // 1024

    def run(self) -> None:
        while not self._halt.wait(0.1):
            total = 0
            stack = _children(self.pid)  # skip /usr/bin/time itself
            while stack:
                p = stack.pop()
                try:
                    with open(f"/proc/{p}/statm") as f:
                        total += int(f.read().split()[1]) * self._page_kb
                except OSError:
                    continue
                stack.extend(_children(p))
            self.peak_kb = max(self.peak_kb, total)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def parse_time_v(text: str) -> dict[str, float]:
    keys = {
        "User time (seconds)": "user_s",
        "System time (seconds)": "sys_s",
        "Maximum resident set size (kbytes)": "max_rss_kb",
        "Major (requiring I/O) page faults": "major_faults",
        "File system inputs": "fs_inputs",
        "File system outputs": "fs_outputs",
        "Voluntary context switches": "vol_ctx_switches",
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        k, _, v = line.strip().rpartition(": ")
        if k in keys:
            try:
                out[keys[k]] = float(v)
            except ValueError:
                pass
    return out


def parse_summary(stdout: str) -> Any:
    """The tool's machine-readable summary: a whole-output JSON document (borg),
    else the last JSON object line (restic, resurgo)."""
    text = stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def run_step(
    tool: Tool,
    ws: Workspace,
    step: str,
    dataset: Path,
    *,
    drop: bool,
    timeout: float,
    idle_wait: float = 0.0,
) -> dict[str, Any]:
    label = LABELS.get(step, step)
    kind = "backup" if step.startswith("backup") else step
    cmd = tool.command(kind, ws, paths=[dataset], label=label)
    if cmd.precreate_cwd and cmd.cwd:
        cmd.cwd.mkdir(parents=True, exist_ok=True)
    logdir = ws.root / "logs"
    logdir.mkdir(exist_ok=True)
    tfile, ofile, efile = (logdir / f"{step}.{s}" for s in ("time", "out", "err"))
    rec: dict[str, Any] = {"step": step, "argv": cmd.argv}
    if idle_wait > 0:
        rec["idle_waited_s"], rec["idle_before"] = wait_idle(idle_wait)
    if drop:
        rec["caches_dropped"], err = drop_caches()
        if err:
            rec["drop_caches_error"] = err
    else:
        rec["caches_dropped"] = False
    with open(ofile, "wb") as out, open(efile, "wb") as errf:
        busy0 = cpu_busy_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [TIME_BIN, "-v", "-o", str(tfile), *cmd.argv],
            stdout=out,
            stderr=errf,
            stdin=subprocess.DEVNULL,
            cwd=cmd.cwd,
            env=tool.env(ws),
        )
        sampler = TreeRSSSampler(proc.pid)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
            rec["timeout"] = True
        wall = time.perf_counter() - t0
        busy = cpu_busy_seconds() - busy0
        sampler.stop()
    # Writeback left behind by the tool: timed separately, not part of wall_s.
    t1 = time.perf_counter()
    os.sync()
    rec["sync_after_s"] = round(time.perf_counter() - t1, 3)
    tv = parse_time_v(tfile.read_text() if tfile.exists() else "")
    cpu = tv.get("user_s", 0) + tv.get("sys_s", 0)
    # CPU used by everything else on the machine meanwhile (other users, the kernel's
    # writeback, this harness's sampler): a noise indicator for the measurement.
    rec["other_cpu_s"] = round(max(0.0, busy - cpu), 2)
    # /usr/bin/time reports "Command exited with non-zero status N" and exits N itself.
    rec.update(
        exit_code=rc,
        ok=rc == 0 and not rec.get("timeout"),
        wall_s=round(wall, 3),
        user_s=tv.get("user_s"),
        sys_s=tv.get("sys_s"),
        cpu_s=round(tv.get("user_s", 0) + tv.get("sys_s", 0), 2) if tv else None,
        max_rss_kb=int(tv["max_rss_kb"]) if "max_rss_kb" in tv else None,
        tree_peak_rss_kb=sampler.peak_kb or None,
        major_faults=tv.get("major_faults"),
    )
    rec["repo_bytes"], rec["repo_alloc_bytes"] = tree_size(ws.repo)
    rec["state_bytes"] = tree_size(ws.state)[0]
    stdout = ofile.read_text(errors="replace")
    summary = parse_summary(stdout)
    if summary is not None and len(json.dumps(summary)) < 20000:
        rec["summary"] = summary
    if not rec["ok"]:
        rec["stderr_tail"] = efile.read_text(errors="replace")[-2000:]
        rec["stdout_tail"] = stdout[-1000:]
    return rec


# ---------------------------------------------------------------- environment


def machine_info(work: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "kernel": platform.release()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    best = ""
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if str(work.resolve()).startswith(parts[1]) and len(parts[1]) > len(best):
            best = parts[1]
            info["filesystem"] = f"{parts[2]} ({parts[0]} on {parts[1]})"
    info["python"] = platform.python_version()
    return info


def ensure_time_bin() -> None:
    if not os.access(TIME_BIN, os.X_OK):
        raise SystemExit(
            f"{TIME_BIN} is missing: apt-get install -y time (make -C benchmarks peers)"
        )


def prepare_dataset(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    target = work / "dataset"
    if target.exists():
        shutil.rmtree(target)
    if args.dataset:
        src = Path(args.dataset).resolve()
        t0 = time.perf_counter()
        shutil.copytree(src, target, symlinks=True)
        info: dict[str, Any] = {
            "source": str(src),
            "copied_seconds": round(time.perf_counter() - t0, 1),
        }
    else:
        info = gen_dataset.generate(target, args.scale, args.seed)
        info["generator"] = "gen_dataset.py generate"
    m = treecmp.summarize(treecmp.manifest(target))
    info.update(entries=m, bytes=m["bytes"])
    return target, info


# ---------------------------------------------------------------- run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tools", default="resurgo,restic,borg", help="comma-separated (default: all)")
    ap.add_argument("--scale", type=float, default=1.0, help="dataset scale; 1.0 is about 1 GB")
    ap.add_argument("--seed", type=int, default=1, help="dataset seed")
    ap.add_argument("--mutate-seed", type=int, default=2)
    ap.add_argument("--dataset", help="benchmark a copy of this directory instead of generating")
    ap.add_argument("--work", type=Path, default=BENCH_DIR / "work", help="scratch directory")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    ap.add_argument("--no-drop-caches", action="store_true", help="measure with warm caches")
    ap.add_argument("--step-timeout", type=float, default=3600.0, help="seconds per step")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECS",
        help="before each step wait up to SECS for other processes to leave the CPUs idle",
    )
    ap.add_argument("--resurgo-cmd", help="command line for resurgo (default: venv python -m)")
    ap.add_argument("--keep", action="store_true", help="keep repositories and restores")
    ap.add_argument("--render", type=Path, help="only re-render the markdown of a results JSON")
    args = ap.parse_args(argv)

    if args.render:
        print(render_markdown(json.loads(args.render.read_text())))
        return 0
    ensure_time_bin()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / "run"
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    log = print

    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    tools = [make_tool(n, args.resurgo_cmd) for n in names]
    drop_ok, drop_err = (
        (False, "disabled by --no-drop-caches") if args.no_drop_caches else drop_caches()
    )
    results: dict[str, Any] = {
        "schema": 1,
        "date": started.isoformat(timespec="seconds"),
        "machine": machine_info(work),
        "drop_caches": {"works": drop_ok, "error": drop_err},
        "tools": {},
    }
    for t in tools:
        results["tools"][t.name] = {
            "version": t.version,
            "command": t.executable,
            "config": t.config,
            "problem": t.problem,
            "steps": {},
        }
        log(f"{t.name}: {t.version or '-'} {('PROBLEM: ' + t.problem) if t.problem else ''}")

    log(
        f"dataset: preparing (scale {args.scale})"
        if not args.dataset
        else f"dataset: copying {args.dataset}"
    )
    dataset, dinfo = prepare_dataset(args, work)
    results["dataset"] = dinfo
    log(f"dataset: {dinfo['bytes'] / MB:.0f} MB, {dinfo['entries'].get('file', 0)} files")

    workspaces = {t.name: Workspace(run_dir / t.name) for t in tools}
    active = [t for t in tools if not t.problem]
    for t in active:
        workspaces[t.name].create()

    def do(t: Tool, step: str) -> None:
        if t not in active:
            results["tools"][t.name]["steps"][step] = {"step": step, "skipped": True}
            return
        rec = run_step(
            t,
            workspaces[t.name],
            step,
            dataset,
            drop=not args.no_drop_caches,
            timeout=args.step_timeout,
            idle_wait=args.wait_idle,
        )
        results["tools"][t.name]["steps"][step] = rec
        status = "ok" if rec["ok"] else f"FAILED (exit {rec['exit_code']})"
        log(
            f"  {t.name:8} {step:19} {rec['wall_s']:8.2f} s  cpu {rec['cpu_s']} s  "
            f"rss {(rec['max_rss_kb'] or 0) // 1024} MiB  repo {rec['repo_bytes'] / MB:.1f} MB  {status}"
        )
        if not rec["ok"]:
            log("    " + rec.get("stderr_tail", "").strip().replace("\n", "\n    ")[-800:])
            if step in ("init", "backup_initial"):
                active.remove(t)

    for t in tools:
        for step in PHASE1:
            do(t, step)

    log("dataset: mutating")
    results["mutation"] = gen_dataset.mutate(dataset, args.mutate_seed)
    reference = treecmp.manifest(dataset)
    results["dataset"]["bytes_after_mutation"] = treecmp.summarize(reference)["bytes"]

    for t in tools:
        for step in PHASE2:
            do(t, step)
            rec = results["tools"][t.name]["steps"][step]
            if step == "restore" and rec.get("ok"):
                rec["verify"] = verify_restore(t, workspaces[t.name], dataset, reference)
                log(
                    f"    restore verification: {'identical' if rec['verify']['identical'] else 'DIFFERENT'}"
                    f" {rec['verify'].get('differences', [])[:5]}"
                )
                if not args.keep:
                    shutil.rmtree(workspaces[t.name].restore, ignore_errors=True)

    results["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["targets"] = evaluate_targets(results)
    args.results.mkdir(parents=True, exist_ok=True)
    jpath = args.results / f"{stamp}.json"
    jpath.write_text(json.dumps(results, indent=2) + "\n")
    md = render_markdown(results)
    (args.results / f"{stamp}.md").write_text(md)
    print()
    print(md)
    print(f"results: {jpath} and {jpath.with_suffix('.md')}")
    if not args.keep:
        for ws in workspaces.values():
            shutil.rmtree(ws.root, ignore_errors=True)
        shutil.rmtree(dataset, ignore_errors=True)
    return 0


def verify_restore(
    tool: Tool, ws: Workspace, dataset: Path, reference: dict[str, treecmp.Entry]
) -> dict[str, Any]:
    top = {k for k in reference if "/" not in k and k != "."}
    target = tool.restore_target(ws)

    def is_root(p: Path) -> bool:
        try:
            return set(os.listdir(p)) == top
        except OSError:
            return False

    root = treecmp.find_restored_root(target, dataset, is_root)
    if root is None:
        msg = f"restored copy of {dataset} not found in {target}"
        return {"identical": False, "n_differences": 1, "differences": [msg]}
    t0 = time.perf_counter()
    restored = treecmp.manifest(root)
    # A tool that restores the contents straight into the target created that
    # directory itself; its mtime is then not the source root's.
    diffs = treecmp.compare(reference, restored, root_mtime=root != target)
    return {
        "identical": not diffs,
        "restored_root": str(root),
        "entries": treecmp.summarize(restored),
        "n_differences": len(diffs),
        "differences": diffs[:30],
        "hash": treecmp.HASH_NAME,
        "compare_seconds": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------- targets and report

# (id, description, step or metric, comparison: "speedup" = restic_time/resurgo_time >= x,
#  "time" = resurgo_time/restic_time <= x, "size"/"rss" = resurgo/restic <= x)
TARGETS = [
    ("backup_initial", "initial backup throughput >= 2x restic", "speedup", 2.0),
    ("backup_nochange", "no-change backup time <= 0.5x restic", "time", 0.5),
    ("backup_incremental", "incremental backup time <= 0.5x restic", "time", 0.5),
    ("restore", "restore throughput >= 1.5x restic", "speedup", 1.5),
    ("check_read_data", "check --read-data throughput >= 1.5x restic", "speedup", 1.5),
    ("repo_size", "repository size <= 0.95x restic", "size", 0.95),
    ("peak_rss", "peak RSS <= restic", "rss", 1.0),
]


def _step(results: dict[str, Any], tool: str, step: str) -> dict[str, Any] | None:
    rec = results["tools"].get(tool, {}).get("steps", {}).get(step)
    return rec if rec and rec.get("ok") else None


def _final_repo(results: dict[str, Any], tool: str) -> int | None:
    rec = _step(results, tool, "backup_incremental")
    return rec["repo_bytes"] if rec else None


def _peak_rss(results: dict[str, Any], tool: str) -> int | None:
    steps = results["tools"].get(tool, {}).get("steps", {})
    vals = [
        max(r.get("max_rss_kb") or 0, r.get("tree_peak_rss_kb") or 0)
        for r in steps.values()
        if r.get("ok")
    ]
    return max(vals) if vals and len(vals) == len(STEPS) else None


def evaluate_targets(
    results: dict[str, Any], tool: str = "resurgo", peer: str = "restic"
) -> list[dict[str, Any]]:
    out = []
    for tid, desc, kind, bound in TARGETS:
        if kind in ("speedup", "time"):
            a, b = _step(results, tool, tid), _step(results, peer, tid)
            va, vb = (a["wall_s"] if a else None), (b["wall_s"] if b else None)
        elif kind == "size":
            va, vb = _final_repo(results, tool), _final_repo(results, peer)
        else:
            va, vb = _peak_rss(results, tool), _peak_rss(results, peer)
        ratio = None
        met = None
        if va and vb:
            ratio = vb / va if kind == "speedup" else va / vb
            met = ratio >= bound if kind == "speedup" else ratio <= bound
        out.append(
            {
                "target": tid,
                "description": desc,
                "resurgo": va,
                "restic": vb,
                "ratio": ratio,
                "bound": bound,
                "met": met,
            }
        )
    return out


def _fmt(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def render_markdown(results: dict[str, Any]) -> str:
    tools = list(results["tools"])
    m = results["machine"]
    ds = results["dataset"]
    L: list[str] = []
    L.append(f"### Benchmark run {results['date']}")
    L.append("")
    L.append(
        f"- Machine: {m.get('cpu', '?')}, {m.get('nproc')} CPUs, {m.get('memory_gib')} GiB RAM, "
        f"{m.get('os', '?')}, kernel {m.get('kernel')}, filesystem {m.get('filesystem', '?')}"
    )
    src = ds.get("source") or f"gen_dataset.py scale {ds.get('scale')} seed {ds.get('seed')}"
    e = ds.get("entries", {})
    L.append(
        f"- Dataset: {src}: {ds['bytes'] / MB:,.0f} MB in {e.get('file', 0):,} files, "
        f"{e.get('dir', 0):,} directories, {e.get('symlink', 0)} symlinks; "
        f"{ds.get('bytes_after_mutation', 0) / MB:,.0f} MB after the mutation"
    )
    mu = results.get("mutation", {})
    if mu:
        L.append(
            f"- Mutation: {mu.get('edited')} small files edited, {mu.get('inserted_bytes')} bytes "
            f"inserted into the middle of `{mu.get('inserted_into')}`, {mu.get('added')} files added, "
            f"{mu.get('deleted')} deleted"
        )
    dc = results["drop_caches"]
    L.append(
        f"- Page cache dropped before every step: {'yes' if dc['works'] else 'NO (' + dc['error'] + ')'}"
    )
    for t in tools:
        ti = results["tools"][t]
        line = f"- {t}: {ti['version'] or '–'}"
        if ti.get("config"):
            line += f"; {ti['config']}"
        if ti.get("problem"):
            line += f"; **not run: {ti['problem']}**"
        L.append(line)
    L.append("")

    ncpu = m.get("nproc") or 1

    def noisy(rec: dict[str, Any] | None) -> bool:
        """Other processes used more than a quarter of the machine during the step."""
        if not rec or not rec.get("ok") or rec.get("other_cpu_s") is None:
            return False
        return bool(rec["other_cpu_s"] > 0.25 * ncpu * max(rec["wall_s"], 0.5))

    def table(
        title: str, key: Any, digits: int, with_ratios: bool = True, flag: bool = False
    ) -> None:
        L.append(f"**{title}**")
        L.append("")
        hdr = ["step", *tools]
        ratios = [
            p for p in ("restic", "borg") if with_ratios and "resurgo" in tools and p in tools
        ]
        hdr += [f"resurgo/{p}" for p in ratios]
        L.append("| " + " | ".join(hdr) + " |")
        L.append("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
        for step in STEPS:
            vals = {}
            for t in tools:
                rec = results["tools"][t]["steps"].get(step)
                if rec and rec.get("ok"):
                    vals[t] = key(rec)
                else:
                    vals[t] = None
            row = [step.replace("_", " ")]
            for t in tools:
                rec = results["tools"][t]["steps"].get(step)
                if rec and not rec.get("ok") and not rec.get("skipped"):
                    row.append("failed")
                else:
                    row.append(_fmt(vals[t], digits) + (" †" if flag and noisy(rec) else ""))
            for p in ratios:
                a, b = vals.get("resurgo"), vals.get(p)
                row.append(_fmt(a / b, 2) if a and b else "–")
            L.append("| " + " | ".join(row) + " |")
        L.append("")

    table("Wall time (s)", lambda r: r["wall_s"], 2, flag=True)
    L.append(
        "† other processes used more than a quarter of the machine's CPU during this step "
        "(see the background table): the figure is less reliable."
    )
    L.append("")
    table("CPU time, user + sys (s)", lambda r: r["cpu_s"], 2)
    table(
        "Peak RSS (MiB)",
        lambda r: max(r.get("max_rss_kb") or 0, r.get("tree_peak_rss_kb") or 0) / 1024,
        0,
    )
    table("Repository size after the step (MB)", lambda r: r["repo_bytes"] / MB, 1)
    table(
        "Background: CPU used by other processes during the step (s)",
        lambda r: r.get("other_cpu_s"),
        2,
        with_ratios=False,
    )

    L.append("**Throughput (MB/s of source data)**")
    L.append("")
    L.append("| step | " + " | ".join(tools) + " |")
    L.append("|---|" + "---:|" * len(tools))
    sizes = {
        "backup_initial": ds["bytes"],
        "restore": ds.get("bytes_after_mutation", ds["bytes"]),
        "check_read_data": ds.get("bytes_after_mutation", ds["bytes"]),
    }
    for step, nbytes in sizes.items():
        row = [step.replace("_", " ")]
        for t in tools:
            rec = _step(results, t, step)
            row.append(_fmt(nbytes / MB / rec["wall_s"], 0) if rec and rec["wall_s"] else "–")
        L.append("| " + " | ".join(row) + " |")
    L.append("")

    L.append(
        "**Restore verification** (file list, sizes, content hashes, mode, owner, mtime_ns, symlinks)"
    )
    L.append("")
    for t in tools:
        rec = results["tools"][t]["steps"].get("restore") or {}
        v = rec.get("verify")
        if v:
            verdict = (
                "identical"
                if v["identical"]
                else f"{v['n_differences']} differences, e.g. {v['differences'][:3]}"
            )
        else:
            verdict = "not run"
        L.append(f"- {t}: {verdict}")
    L.append("")

    if "resurgo" in tools and "restic" in tools:
        L.append("**resurgo targets (against restic)**")
        L.append("")
        L.append("| target | resurgo | restic | ratio | status |")
        L.append("|---|---:|---:|---:|---|")
        for tg in results.get("targets") or evaluate_targets(results):
            unit = {"size": 1 / MB, "rss": 1 / 1024}.get(
                next(k for i, _, k, _ in TARGETS if i == tg["target"]), 1.0
            )
            status = "n/a" if tg["met"] is None else ("met" if tg["met"] else "not met")
            L.append(
                f"| {tg['description']} | "
                f"{_fmt(tg['resurgo'] * unit if tg['resurgo'] else None)} | "
                f"{_fmt(tg['restic'] * unit if tg['restic'] else None)} | "
                f"{_fmt(tg['ratio'])} | {status} |"
            )
        L.append("")
        L.append(
            "Units: seconds for times, MB for size, MiB for RSS; ratio = restic/resurgo for "
            "throughput targets, resurgo/restic otherwise."
        )
        L.append("")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
