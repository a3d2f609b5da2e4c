#!/usr/bin/env python3
"""Scale runs: many small files, a large in-memory index, and backup time against data size.

Three measurements, each a subcommand (``all`` runs them in turn):

``files``  one million small files (``gen_dataset.py many-files``): ``init``,
           ``backup_initial`` and ``backup_nochange`` per tool; time and memory
           per file. With several counts (``--files 250000,1000000``) the cost
           per added file is fitted as well.
``sizes``  the mixed shape at 1, 4 and 16 GB (``gen_dataset.py sized``):
           ``init`` and ``backup_initial`` per tool; wall, CPU, peak RSS and
           repository size per size, time per GB, a least-squares line and the
           exponent of a power-law fit, and whether the cost grows linearly.
``index``  ``index_bench.py`` (a synthetic in-memory index of ten million
           blobs): bytes per blob and lookups per second.

Steps run through ``run.run_step`` with the adapters of ``tools.py``: each under
``/usr/bin/time -v`` after dropping the page cache, with the CPU time other
processes used meanwhile (``other_cpu_s``) and the load average recorded next to
wall and CPU time. Data and repositories live under ``--work`` and are deleted
after each size (``--keep-data`` keeps the generated data for a later run).
Results: ``results/scale-<stamp>.json`` and ``.md``; ``--render FILE.json``
re-prints the tables.

    .venv/bin/python benchmarks/scale_bench.py all --work /tmp/scale
    .venv/bin/python benchmarks/scale_bench.py sizes --gb 1,4,16 --max-gb restic=4
    .venv/bin/python benchmarks/scale_bench.py files --files 20000 --tools resurgo
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_dataset
import run
from tools import BENCH_DIR, PROJECT_DIR, Tool, Workspace, make_tool

GB = 1_000_000_000
MB = 1_000_000
MiB = 1 << 20
# Growth counts as linear when the power-law exponent of cost against size stays at
# or below this and the cost per added GB over the last interval is at most
# LINEAR_SLOPE_RATIO times that over the first (the machine is shared: ~10-20 % noise).
LINEAR_EXPONENT = 1.10
LINEAR_SLOPE_RATIO = 1.25


# ---------------------------------------------------------------- fits


def linear_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """Least squares ``y = intercept + slope * x`` and its R²."""
    n = len(xs)
    if n < 2:
        raise ValueError("a fit needs at least two points")
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"intercept": intercept, "slope": slope, "r2": r2}


def growth(xs: list[float], ys: list[float]) -> dict[str, Any]:
    """How ``ys`` (a cost) grows with ``xs`` (a size): cost per unit at each size, a
    line, the exponent ``k`` of ``y = c * x**k``, the cost per added unit over each
    interval, and a verdict. A fixed start-up cost makes ``k`` < 1; ``k`` > 1 or a
    steeper last interval means the cost per unit rises with size."""
    pts = sorted((x, y) for x, y in zip(xs, ys, strict=True) if y is not None and y > 0)
    out: dict[str, Any] = {"per_unit": [y / x for x, y in pts]}
    if len(pts) < 2:
        out["linear"] = None
        return out
    px, py = [p[0] for p in pts], [p[1] for p in pts]
    out["fit"] = linear_fit(px, py)
    out["exponent"] = linear_fit([math.log(x) for x in px], [math.log(y) for y in py])["slope"]
    out["interval_slopes"] = [(py[i + 1] - py[i]) / (px[i + 1] - px[i]) for i in range(len(px) - 1)]
    first, last = out["interval_slopes"][0], out["interval_slopes"][-1]
    out["last_to_first_slope"] = last / first if first > 0 else None
    out["linear"] = bool(
        out["exponent"] <= LINEAR_EXPONENT
        and (out["last_to_first_slope"] is None or out["last_to_first_slope"] <= LINEAR_SLOPE_RATIO)
    )
    return out


def rss_kb(rec: dict[str, Any] | None) -> int | None:
    if not rec or not rec.get("ok"):
        return None
    return max(rec.get("max_rss_kb") or 0, rec.get("tree_peak_rss_kb") or 0) or None


def ok(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    return rec if rec and rec.get("ok") else None


# ---------------------------------------------------------------- environment


def commit_info() -> dict[str, Any]:
    def git(*a: str) -> str:
        r = subprocess.run(
            ["git", "-C", str(PROJECT_DIR), *a], capture_output=True, text=True, timeout=60
        )
        return r.stdout.strip() if r.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def resurgo_source(tool: Tool, ws: Workspace) -> str:
    """Which resurgo package the adapter's command imports (a worktree or an install)."""
    if tool.name != "resurgo" or tool.problem:
        return ""
    exe = tool.executable
    if len(exe) >= 3 and exe[1:3] == ["-m", "resurgo.cli.main"]:
        r = subprocess.run(
            [exe[0], "-c", "import resurgo; print(resurgo.__file__)"],
            capture_output=True,
            text=True,
            env=tool.env(ws),
            timeout=120,
        )
        return r.stdout.strip()
    return ""


def make_tools(names: list[str], resurgo_cmd: str | None) -> list[Tool]:
    # The adapter's default is the project's own .venv; a worktree without one runs
    # resurgo with this interpreter on the worktree's src/ instead.
    if (
        "resurgo" in names
        and not resurgo_cmd
        and not os.environ.get("RESURGO_CMD")
        and not (PROJECT_DIR / ".venv" / "bin" / "python").exists()
    ):
        resurgo_cmd = f"{sys.executable} -m resurgo.cli.main"
        src = str(PROJECT_DIR / "src")
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = src + (os.pathsep + old if old else "")
    return [make_tool(n, resurgo_cmd) for n in names]


# ---------------------------------------------------------------- datasets


def dataset(
    work: Path, shape: str, size: float, seed: int, keep: bool
) -> tuple[Path, dict[str, Any]]:
    """Generate (or, with ``keep``, reuse) a dataset; its description is stored beside it."""
    tag = f"files-{int(size)}" if shape == "many-files" else f"sized-{size:g}gb"
    root = work / f"data-{tag}-seed{seed}"
    marker = root.with_name(root.name + ".json")
    if keep and marker.exists() and root.exists():
        info = json.loads(marker.read_text())
        info["reused"] = True
        return root, info
    marker.unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    if shape == "many-files":
        info = gen_dataset.generate_many_files(root, int(size), seed)
    else:
        info = gen_dataset.generate_sized(root, round(size * GB), seed)
    os.sync()
    marker.write_text(json.dumps(info, indent=1) + "\n")
    return root, info


def remove_dataset(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    root.with_name(root.name + ".json").unlink(missing_ok=True)


# ---------------------------------------------------------------- runs


class Runner:
    def __init__(self, args: argparse.Namespace, tools: list[Tool]) -> None:
        self.args = args
        self.tools = tools
        self.work: Path = args.work.resolve()

    def steps(
        self, tool: Tool, data: Path, steps: list[str], tag: str
    ) -> dict[str, dict[str, Any]]:
        ws = Workspace(self.work / "run" / tool.name)
        ws.create()
        out: dict[str, dict[str, Any]] = {}
        try:
            for step in steps:
                load = loadavg()
                rec = run.run_step(
                    tool,
                    ws,
                    step,
                    data,
                    drop=not self.args.no_drop_caches,
                    timeout=self.args.step_timeout,
                    idle_wait=self.args.wait_idle,
                )
                rec["loadavg_before"] = load
                rec.pop("argv", None)
                out[step] = rec
                status = "ok" if rec["ok"] else f"FAILED (exit {rec['exit_code']})"
                print(
                    f"  {tag:>12} {tool.name:8} {step:16} {rec['wall_s']:9.2f} s  "
                    f"cpu {rec['cpu_s']} s  rss {(rss_kb(rec) or 0) // 1024} MiB  "
                    f"repo {rec['repo_bytes'] / MB:,.1f} MB  other cpu {rec['other_cpu_s']} s  "
                    f"load {load[0]}  {status}",
                    flush=True,
                )
                if not rec["ok"]:
                    print("    " + rec.get("stderr_tail", "").strip()[-800:], flush=True)
                    break
        finally:
            if not self.args.keep_repos:
                shutil.rmtree(ws.root, ignore_errors=True)
        return out

    def active(self, size_gb: float | None = None) -> list[Tool]:
        caps = self.args.max_gb or {}
        return [
            t
            for t in self.tools
            if not t.problem and (size_gb is None or size_gb <= caps.get(t.name, math.inf))
        ]

    def files(self) -> dict[str, Any]:
        runs = []
        for n in self.args.files:
            print(f"files: generating {n:,} small files", flush=True)
            data, info = dataset(self.work, "many-files", n, self.args.seed, self.args.keep_data)
            print(
                f"files: {info['bytes'] / MB:,.0f} MB in {info['files']:,} files "
                f"({info['seconds']} s)",
                flush=True,
            )
            steps = {
                t.name: self.steps(
                    t, data, ["init", "backup_initial", "backup_nochange"], f"{n:,} f"
                )
                for t in self.active()
            }
            runs.append({"files": n, "dataset": info, "steps": steps})
            if not self.args.keep_data:
                remove_dataset(data)
        return {"runs": runs, "analysis": analyse_files(runs)}

    def sizes(self) -> dict[str, Any]:
        runs = []
        for gb in self.args.gb:
            print(f"sizes: generating {gb:g} GB", flush=True)
            data, info = dataset(self.work, "sized", gb, self.args.seed, self.args.keep_data)
            print(
                f"sizes: {info['bytes'] / MB:,.0f} MB in {info['files']:,} files "
                f"({info['seconds']} s)",
                flush=True,
            )
            steps = {
                t.name: self.steps(t, data, ["init", "backup_initial"], f"{gb:g} GB")
                for t in self.active(gb)
            }
            runs.append({"gb": gb, "dataset": info, "steps": steps})
            if not self.args.keep_data:
                remove_dataset(data)
        return {"runs": runs, "analysis": analyse_sizes(runs)}

    def index(self) -> dict[str, Any]:
        """``index_bench.py`` as it is, under /usr/bin/time, with the load meanwhile."""
        tfile = self.work / "index_bench.time"
        argv = [
            sys.executable,
            str(BENCH_DIR / "index_bench.py"),
            "--json",
            "--blobs",
            str(self.args.blobs),
        ]
        print(f"index: {self.args.blobs:,} blobs", flush=True)
        load = loadavg()
        busy0 = run.cpu_busy_seconds()
        t0 = time.perf_counter()
        r = subprocess.run(
            [run.TIME_BIN, "-v", "-o", str(tfile), *argv], capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
        busy = run.cpu_busy_seconds() - busy0
        tv = run.parse_time_v(tfile.read_text() if tfile.exists() else "")
        tfile.unlink(missing_ok=True)
        cpu = tv.get("user_s", 0) + tv.get("sys_s", 0)
        rec: dict[str, Any] = {
            "ok": r.returncode == 0,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "max_rss_kb": int(tv.get("max_rss_kb", 0)),
            "other_cpu_s": round(max(0.0, busy - cpu), 2),
            "loadavg_before": load,
        }
        if r.returncode == 0:
            rec["result"] = json.loads(r.stdout)
            x = rec["result"]
            print(
                f"index: {x['nbytes_per_blob']:.1f} B/blob arrays, {x['rss_live_per_blob']:.1f} "
                f"B/blob live RSS, {x['lookups_hit_per_s']:,.0f} hits/s, "
                f"{x['lookups_miss_per_s']:,.0f} misses/s, build {x['build_seconds']:.1f} s",
                flush=True,
            )
        else:
            rec["stderr_tail"] = r.stderr[-2000:]
            print("index: FAILED\n" + r.stderr[-800:], flush=True)
        return rec


# ---------------------------------------------------------------- analysis


def analyse_files(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per tool and step: microseconds and bytes of peak RSS per file; with several
    counts, the cost per added file (slope of a line through the runs)."""
    out: dict[str, Any] = {}
    tools = sorted({t for r in runs for t in r["steps"]})
    for t in tools:
        per_step: dict[str, Any] = {}
        for step in ("backup_initial", "backup_nochange"):
            rows: list[dict[str, Any]] = []
            for r in runs:
                steps = r["steps"].get(t, {})
                rec = ok(steps.get(step))
                if not rec:
                    continue
                n = r["dataset"]["files"]
                rss = rss_kb(rec) or 0
                rows.append(
                    {
                        "files": n,
                        "wall_us_per_file": rec["wall_s"] / n * 1e6,
                        "cpu_us_per_file": rec["cpu_s"] / n * 1e6,
                        "rss_bytes_per_file": rss * 1024 / n,
                        "files_per_s": n / rec["wall_s"] if rec["wall_s"] else None,
                    }
                )
            entry: dict[str, Any] = {"rows": rows}
            pts = [r for r in runs if ok(r["steps"].get(t, {}).get(step))]
            if len(pts) >= 2:
                xs = [float(r["dataset"]["files"]) for r in pts]
                recs = [r["steps"][t][step] for r in pts]
                entry["wall_us_per_added_file"] = (
                    linear_fit(xs, [x["wall_s"] for x in recs])["slope"] * 1e6
                )
                entry["cpu_us_per_added_file"] = (
                    linear_fit(xs, [x["cpu_s"] for x in recs])["slope"] * 1e6
                )
                entry["rss_bytes_per_added_file"] = (
                    linear_fit(xs, [float(rss_kb(x) or 0) for x in recs])["slope"] * 1024
                )
            per_step[step] = entry
        out[t] = per_step
    return out


def analyse_sizes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per tool: wall and CPU growth with the data size (in GB of source data)."""
    out: dict[str, Any] = {}
    tools = sorted({t for r in runs for t in r["steps"]})
    for t in tools:
        pts = [
            (r["dataset"]["bytes"] / GB, rec)
            for r in runs
            if (rec := ok(r["steps"].get(t, {}).get("backup_initial")))
        ]
        xs = [p[0] for p in pts]
        out[t] = {
            "gb": xs,
            "wall": growth(xs, [p[1]["wall_s"] for p in pts]),
            "cpu": growth(xs, [p[1]["cpu_s"] for p in pts]),
            "rss_mib": [(rss_kb(p[1]) or 0) / 1024 for p in pts],
            "repo_per_source": [p[1]["repo_bytes"] / (p[0] * GB) for p in pts],
        }
    return out


# ---------------------------------------------------------------- report


def _f(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def render_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    c = res.get("commit", {})
    L: list[str] = [f"### Scale run {res['date']}", ""]
    L.append(
        f"- Machine: {m.get('cpu', '?')}, {m.get('nproc')} CPUs, {m.get('memory_gib')} GiB RAM, "
        f"{m.get('os', '?')}, kernel {m.get('kernel')}, filesystem {m.get('filesystem', '?')}, "
        f"Python {m.get('python')}"
    )
    L.append(
        f"- Commit measured: `{c.get('commit', '?')[:10]}` on `{c.get('branch', '?')}`"
        f"{' (uncommitted changes)' if c.get('dirty') else ''}: {c.get('subject', '')}"
    )
    for name, ti in res["tools"].items():
        line = f"- {name}: {ti['version'] or '–'}"
        if ti.get("source"):
            line += f" (imports `{ti['source']}`)"
        if ti.get("problem"):
            line += f"; **not run: {ti['problem']}**"
        L.append(line)
    dc = res["drop_caches"]
    L.append(
        f"- Page cache dropped before every step: "
        f"{'yes' if dc['works'] else 'NO (' + dc['error'] + ')'}"
    )
    L.append(
        f"- Load average (1, 5, 15 min) at start {res.get('loadavg_start')}, "
        f"at end {res.get('loadavg_end')}; finished {res.get('finished', '?')}"
    )
    L.append("")

    if "files" in res:
        L += _render_files(res["files"])
    if "sizes" in res:
        L += _render_sizes(res["sizes"])
    if "index" in res:
        L += _render_index(res["index"])
    return "\n".join(L)


def _step_row(label: str, rec: dict[str, Any] | None) -> list[str]:
    if rec is None:
        return [label, "not run", "", "", "", "", ""]
    if not rec.get("ok"):
        return [label, "failed", "", "", "", "", ""]
    return [
        label,
        _f(rec["wall_s"]),
        _f(rec["cpu_s"]),
        _f((rss_kb(rec) or 0) / 1024, 0),
        _f(rec["repo_bytes"] / MB, 1),
        _f(rec.get("other_cpu_s")),
        _f((rec.get("loadavg_before") or [None])[0]),
    ]


def _render_files(section: dict[str, Any]) -> list[str]:
    L = ["#### Many small files", ""]
    for r in section["runs"]:
        d = r["dataset"]
        L.append(
            f"{d['files']:,} files, {d['bytes'] / MB:,.0f} MB, {d.get('dirs', 0):,} directories "
            f"(`gen_dataset.py many-files --files {d['files']} --seed {d['seed']}`)"
        )
        L.append("")
        L.append("| tool | step | wall s | CPU s | peak RSS MiB | repo MB | other CPU s | load |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for t, steps in r["steps"].items():
            for step in ("init", "backup_initial", "backup_nochange"):
                row = _step_row(step.replace("_", " "), steps.get(step))
                L.append(f"| {t} | " + " | ".join(row) + " |")
        L.append("")
    L.append("Per file (RSS per file = the step's whole peak RSS divided by the file count):")
    L.append("")
    L.append("| tool | step | files | wall µs/file | CPU µs/file | files/s | RSS B/file |")
    L.append("|---|---|---:|---:|---:|---:|---:|")
    for t, per_step in section["analysis"].items():
        for step, entry in per_step.items():
            for row in entry["rows"]:
                L.append(
                    f"| {t} | {step.replace('_', ' ')} | {row['files']:,} | "
                    f"{_f(row['wall_us_per_file'], 1)} | {_f(row['cpu_us_per_file'], 1)} | "
                    f"{_f(row['files_per_s'], 0)} | {_f(row['rss_bytes_per_file'], 0)} |"
                )
    L.append("")
    fitted = [
        (t, step, e)
        for t, ps in section["analysis"].items()
        for step, e in ps.items()
        if "wall_us_per_added_file" in e
    ]
    if fitted:
        L.append(
            "Cost per added file (slope of a least-squares line through the counts; "
            "start-up costs and the RSS floor drop out):"
        )
        L.append("")
        L.append("| tool | step | wall µs | CPU µs | RSS bytes |")
        L.append("|---|---|---:|---:|---:|")
        for t, step, e in fitted:
            L.append(
                f"| {t} | {step.replace('_', ' ')} | {_f(e['wall_us_per_added_file'], 1)} | "
                f"{_f(e['cpu_us_per_added_file'], 1)} | {_f(e['rss_bytes_per_added_file'], 0)} |"
            )
        L.append("")
    return L


def _render_sizes(section: dict[str, Any]) -> list[str]:
    L = ["#### Backup time against data size", ""]
    L.append(
        "| tool | target GB | data GB | files | wall s | CPU s | peak RSS MiB | repo GB | "
        "wall s/GB | CPU s/GB | other CPU s | load |"
    )
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    tools = list(dict.fromkeys(t for r in section["runs"] for t in r["steps"]))
    for t in tools:
        for r in section["runs"]:
            rec = r["steps"].get(t, {}).get("backup_initial")
            d = r["dataset"]
            gb = d["bytes"] / GB
            head = f"| {t} | {r['gb']:g} | {gb:.3f} | {d['files']:,} | "
            if not rec:
                L.append(head + "not run |" + " |" * 7)
                continue
            if not rec.get("ok"):
                L.append(head + "failed |" + " |" * 7)
                continue
            L.append(
                head
                + " | ".join(
                    [
                        _f(rec["wall_s"]),
                        _f(rec["cpu_s"]),
                        _f((rss_kb(rec) or 0) / 1024, 0),
                        _f(rec["repo_bytes"] / GB, 2),
                        _f(rec["wall_s"] / gb),
                        _f(rec["cpu_s"] / gb),
                        _f(rec.get("other_cpu_s")),
                        _f((rec.get("loadavg_before") or [None])[0]),
                    ]
                )
                + " |"
            )
    L.append("")
    L.append(
        "Fit of time against GB of source data: `fixed + per_GB * GB` (least squares), "
        "the exponent k of `c * GB^k` (1 = linear; a fixed start-up cost gives k < 1), "
        "and the cost per added GB over each interval between sizes."
    )
    L.append("")
    L.append(
        "| tool | measure | per GB (fit) | fixed s | R² | k | per added GB, each interval | linear |"
    )
    L.append("|---|---|---:|---:|---:|---:|---|---|")
    for t, a in section["analysis"].items():
        for measure in ("wall", "cpu"):
            g = a[measure]
            if g.get("linear") is None:
                L.append(f"| {t} | {measure} | – | – | – | – | – | too few sizes |")
                continue
            slopes = ", ".join(_f(s) for s in g["interval_slopes"])
            L.append(
                f"| {t} | {measure} | {_f(g['fit']['slope'])} s | {_f(g['fit']['intercept'])} | "
                f"{_f(g['fit']['r2'], 4)} | {_f(g['exponent'], 3)} | {slopes} s | "
                f"{'yes' if g['linear'] else 'NO'} |"
            )
    L.append("")
    L.append(
        f"Linear means k <= {LINEAR_EXPONENT} and the last interval's cost per added GB at "
        f"most {LINEAR_SLOPE_RATIO}x the first's."
    )
    L.append("")
    return L


def _render_index(rec: dict[str, Any]) -> list[str]:
    L = ["#### In-memory index (`index_bench.py`)", ""]
    if not rec.get("ok"):
        L += ["failed: " + rec.get("stderr_tail", "")[-300:], ""]
        return L
    x = rec["result"]
    L += [
        "| measure | value |",
        "|---|---:|",
        f"| blobs / packs | {x['blobs']:,} / {x['packs']:,} |",
        f"| index arrays (`nbytes()`) per blob | {x['nbytes_per_blob']:.1f} B |",
        f"| live resident memory growth per blob | {x['rss_live_per_blob']:.1f} B |",
        f"| resident growth before `malloc_trim` per blob | {x['rss_before_trim_per_blob']:.1f} B |",
        f"| peak RSS (synthetic input included) | {x['peak_rss_mib']:,.0f} MiB |",
        f"| build (`add_decoded` + `compact`) | {x['build_seconds']:.2f} s |",
        f"| lookups that hit | {x['lookups_hit_per_s']:,.0f} /s |",
        f"| lookups that miss | {x['lookups_miss_per_s']:,.0f} /s |",
        f"| whole run: wall / CPU / other CPU | {rec['wall_s']} s / {rec['cpu_s']} s / "
        f"{rec['other_cpu_s']} s |",
        "",
    ]
    return L


# ---------------------------------------------------------------- main


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x.strip()]


def _caps(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, gb = item.partition("=")
        if not gb:
            raise argparse.ArgumentTypeError(f"--max-gb wants TOOL=GB, not {item!r}")
        out[name.strip()] = float(gb)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", choices=["files", "sizes", "index", "all"], default="all")
    ap.add_argument("--tools", default="resurgo,restic", help="comma-separated")
    ap.add_argument(
        "--files", type=_ints, default=[100_000, 1_000_000], help="file counts (comma-separated)"
    )
    ap.add_argument("--gb", type=_floats, default=[1.0, 4.0, 16.0], help="sizes in GB (10^9 B)")
    ap.add_argument(
        "--max-gb",
        action="append",
        default=[],
        metavar="TOOL=GB",
        help="run TOOL only up to GB in `sizes` (e.g. restic=4)",
    )
    ap.add_argument("--blobs", type=int, default=10_000_000, help="index size for `index`")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/scale"), help="data and repositories")
    ap.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    ap.add_argument("--no-drop-caches", action="store_true", help="measure with warm caches")
    ap.add_argument("--step-timeout", type=float, default=7200.0, help="seconds per step")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECS")
    ap.add_argument("--resurgo-cmd", help="command line for resurgo")
    ap.add_argument("--keep-data", action="store_true", help="keep (and reuse) generated data")
    ap.add_argument("--keep-repos", action="store_true", help="keep the repositories")
    ap.add_argument("--render", type=Path, help="only re-render the markdown of a results JSON")
    args = ap.parse_args(argv)
    if args.render:
        print(render_markdown(json.loads(args.render.read_text())))
        return 0
    args.max_gb = _caps(args.max_gb)
    run.ensure_time_bin()
    args.work.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")

    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    tools = make_tools(names, args.resurgo_cmd) if args.what != "index" else []
    drop_ok, drop_err = (
        (False, "disabled by --no-drop-caches") if args.no_drop_caches else run.drop_caches()
    )
    res: dict[str, Any] = {
        "schema": 1,
        "kind": "scale",
        "date": started.isoformat(timespec="seconds"),
        "machine": run.machine_info(args.work),
        "commit": commit_info(),
        "drop_caches": {"works": drop_ok, "error": drop_err},
        "loadavg_start": loadavg(),
        "tools": {},
    }
    for t in tools:
        res["tools"][t.name] = {
            "version": t.version,
            "command": t.executable,
            "config": t.config,
            "problem": t.problem,
            "source": resurgo_source(t, Workspace(args.work / "run" / t.name)),
        }
        print(
            f"{t.name}: {t.version or '-'} {res['tools'][t.name]['source']}"
            f"{(' PROBLEM: ' + t.problem) if t.problem else ''}",
            flush=True,
        )

    runner = Runner(args, tools)
    if args.what in ("index", "all"):
        res["index"] = runner.index()
    if args.what in ("files", "all"):
        res["files"] = runner.files()
    if args.what in ("sizes", "all"):
        res["sizes"] = runner.sizes()
    res["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    res["loadavg_end"] = loadavg()

    args.results.mkdir(parents=True, exist_ok=True)
    jpath = args.results / f"scale-{stamp}.json"
    jpath.write_text(json.dumps(res, indent=1) + "\n")
    md = render_markdown(res)
    jpath.with_suffix(".md").write_text(md + "\n")
    print()
    print(md)
    print(f"results: {jpath} and {jpath.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
