"""Self-tests of the benchmark harness: generator determinism, the mutation, the
restore comparator and the scale runs (tiny sizes). Run with ``.venv/bin/pytest benchmarks/test_harness.py``
(not part of the project's test suite: ``testpaths`` is ``tests``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_dataset
import run
import scale_bench
import treecmp

SCALE = 0.003  # ~60 small files, 2 media files, 1 MiB large files


def test_generate_is_deterministic_in_bytes_and_metadata(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ia = gen_dataset.generate(a, SCALE, 5)
    gen_dataset.generate(b, SCALE, 5)
    assert treecmp.compare(treecmp.manifest(a), treecmp.manifest(b)) == []
    assert ia["files"] > 60
    kinds = treecmp.summarize(treecmp.manifest(a))
    assert kinds["symlink"] == 6
    assert (a / "large" / "random-copy.bin").stat().st_size > (
        a / "large" / "random.bin"
    ).stat().st_size


def test_generate_with_another_seed_differs(tmp_path: Path) -> None:
    gen_dataset.generate(tmp_path / "a", SCALE, 5)
    gen_dataset.generate(tmp_path / "b", SCALE, 6)
    a = (tmp_path / "a" / "large" / "random.bin").read_bytes()
    b = (tmp_path / "b" / "large" / "random.bin").read_bytes()
    assert a != b


def test_random_copy_is_random_bin_with_small_insertions(tmp_path: Path) -> None:
    gen_dataset.generate(tmp_path / "d", SCALE, 5)
    orig = (tmp_path / "d" / "large" / "random.bin").read_bytes()
    copy = (tmp_path / "d" / "large" / "random-copy.bin").read_bytes()
    assert 5 * 16 <= len(copy) - len(orig) <= 5 * 200
    assert copy[:4096] == orig[:4096] or copy[-4096:] == orig[-4096:]


def test_mutation_is_deterministic_and_changes_the_promised_things(tmp_path: Path) -> None:
    gen_dataset.generate(tmp_path / "a", SCALE, 5)
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    before = treecmp.manifest(tmp_path / "a")
    ma = gen_dataset.mutate(tmp_path / "a", 9)
    gen_dataset.mutate(tmp_path / "b", 9)
    after = treecmp.manifest(tmp_path / "a")
    assert treecmp.compare(after, treecmp.manifest(tmp_path / "b")) == []
    added = after.keys() - before.keys()
    deleted = before.keys() - after.keys()
    assert len(added) == ma["added"] >= 1
    assert len(deleted) == ma["deleted"] >= 1
    changed = [
        k
        for k in before.keys() & after.keys()
        if before[k].kind == "file" and before[k] != after[k]
    ]
    assert ma["inserted_into"] in changed
    assert after[ma["inserted_into"]].size == before[ma["inserted_into"]].size + 4096
    assert len(changed) >= ma["edited"] + 1


def test_compare_reports_content_mode_mtime_symlink_missing_and_extra(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    gen_dataset.generate(src, SCALE, 5)
    shutil.copytree(src, dst, symlinks=True)
    ref = treecmp.manifest(src)
    assert treecmp.compare(ref, treecmp.manifest(dst)) == []

    big = dst / "large" / "random.bin"
    data = bytearray(big.read_bytes())
    data[1000] ^= 1
    st = big.stat()
    big.write_bytes(bytes(data))
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only bytes differ
    os.chmod(dst / "media" / "export-0000.csv", 0o600)
    os.utime(dst / "large" / "app.log", ns=(0, 1))
    os.unlink(dst / "src" / "link-0")
    os.symlink("elsewhere", dst / "src" / "link-0")
    (dst / "src" / "empty-file").unlink()
    (dst / "extra").write_text("x")
    diffs = treecmp.compare(ref, treecmp.manifest(dst))
    joined = "\n".join(diffs)
    assert "content differs: large/random.bin" in joined
    assert "mode differs: media/export-0000.csv: 0o644 != 0o600" in joined
    assert "mtime_ns differs: large/app.log" in joined
    assert "content differs: src/link-0" in joined
    assert "missing: src/empty-file" in joined
    assert "extra: extra" in joined


def test_find_restored_root_handles_absolute_and_flat_layouts(tmp_path: Path) -> None:
    source = tmp_path / "data"
    (source / "x").mkdir(parents=True)
    absolute = tmp_path / "t1"
    (absolute / str(source).lstrip("/") / "x").mkdir(parents=True)
    flat = tmp_path / "t2"
    (flat / "x").mkdir(parents=True)

    def is_root(p: Path) -> bool:
        return set(os.listdir(p)) == {"x"}

    assert treecmp.find_restored_root(absolute, source, is_root) == absolute / str(source).lstrip(
        "/"
    )
    assert treecmp.find_restored_root(flat, source, is_root) == flat
    assert treecmp.find_restored_root(tmp_path / "none", source, is_root) is None


def test_time_and_summary_parsers() -> None:
    tv = run.parse_time_v(
        '\tCommand being timed: "x"\n\tUser time (seconds): 1.25\n\tSystem time (seconds): 0.50\n'
        "\tMaximum resident set size (kbytes): 12345\n"
    )
    assert tv == {"user_s": 1.25, "sys_s": 0.5, "max_rss_kb": 12345.0}
    assert run.parse_summary('{"a": 1}\n{"type": "summary", "n": 2}\n') == {
        "type": "summary",
        "n": 2,
    }
    assert run.parse_summary('{\n  "archive": {"name": "x"}\n}\n') == {"archive": {"name": "x"}}
    assert run.parse_summary("no json here") is None


def test_targets_compare_resurgo_with_restic() -> None:
    def steps(scale: float, repo: int, rss: int) -> dict[str, object]:
        return {
            s: {"ok": True, "wall_s": 10.0 * scale, "repo_bytes": repo, "max_rss_kb": rss}
            for s in run.STEPS
        }

    results = {
        "tools": {
            "resurgo": {"steps": steps(0.4, 90, 100)},
            "restic": {"steps": steps(1.0, 100, 200)},
        }
    }
    t = {x["target"]: x for x in run.evaluate_targets(results)}
    assert t["backup_initial"]["met"] is True  # 2.5x the throughput
    assert t["backup_nochange"]["met"] is True  # 0.4x the time
    assert t["repo_size"]["ratio"] == 0.9 and t["repo_size"]["met"] is True
    assert t["peak_rss"]["met"] is True
    results["tools"]["resurgo"]["steps"]["restore"]["wall_s"] = 9.0  # type: ignore[index]
    assert {x["target"]: x for x in run.evaluate_targets(results)}["restore"]["met"] is False


def _tree_digest(root: Path) -> str:
    """Paths, types, modes, sizes, mtimes and contents (not owners or directory sizes)."""
    h = hashlib.sha256()
    for rel, e in sorted(treecmp.manifest(root).items()):
        size = e.size if e.kind != "dir" else 0
        h.update(f"{rel}\0{e.kind}\0{e.mode:o}\0{size}\0{e.mtime_ns}\0{e.content}\n".encode())
    return h.hexdigest()


def test_generate_output_is_unchanged(tmp_path: Path) -> None:
    # Published figures were measured on this exact tree: the scale shapes were added
    # without changing a byte of it. (A new NumPy with another random stream would
    # change it too; then regenerate the figures.)
    gen_dataset.generate(tmp_path / "d", SCALE, 5)
    assert treecmp.HASH_NAME == "blake3"
    assert (
        _tree_digest(tmp_path / "d")
        == "f0fc0bcdd951b857b93e7b6ffd745aab7ace1c861d5084bb0753cff34931f07a"
    )


def test_many_files_is_deterministic_distinct_and_small(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    info = gen_dataset.generate_many_files(a, 250, 3)
    gen_dataset.generate_many_files(b, 250, 3)
    assert treecmp.compare(treecmp.manifest(a), treecmp.manifest(b)) == []
    m = treecmp.manifest(a)
    files = [e for e in m.values() if e.kind == "file"]
    assert len(files) == info["files"] == 250
    assert info["dirs"] == sum(e.kind == "dir" for e in m.values()) - 1 == 3 + 2
    assert len({e.content for e in files}) == 250  # no whole-file duplicates
    assert sum(e.size for e in files) == info["bytes"]
    assert max(e.size for e in files) <= 16 * 1024
    assert {e.mode for e in files} <= {0o644, 0o600, 0o755}
    gen_dataset.generate_many_files(tmp_path / "c", 250, 4)
    assert _tree_digest(a) != _tree_digest(tmp_path / "c")


def test_sized_is_parts_of_the_mixed_shape_near_the_target(tmp_path: Path) -> None:
    info = gen_dataset.generate_sized(tmp_path / "s", 24_000_000, 7, part_bytes=12_000_000)
    assert info["parts"] == 2
    assert sorted(os.listdir(tmp_path / "s")) == ["part-000", "part-001"]
    assert abs(info["bytes"] - 24_000_000) < 0.1 * 24_000_000
    gen_dataset.generate(tmp_path / "g", info["part_scale"], 7 * 1000 + 1)
    assert _tree_digest(tmp_path / "s" / "part-001") == _tree_digest(tmp_path / "g")


def test_growth_tells_linear_from_superlinear() -> None:
    gb = [1.0, 4.0, 16.0]
    lin = scale_bench.growth(gb, [2.0 + 10.0 * x for x in gb])
    assert lin["linear"] is True
    assert lin["fit"]["slope"] == pytest.approx(10.0)
    assert lin["fit"]["intercept"] == pytest.approx(2.0)
    assert lin["interval_slopes"] == pytest.approx([10.0, 10.0])
    assert lin["exponent"] < 1.0  # the fixed cost
    quad = scale_bench.growth(gb, [10.0 * x + 0.5 * x * x for x in gb])
    assert quad["linear"] is False
    assert quad["last_to_first_slope"] > 1.25
    assert scale_bench.growth([1.0], [3.0])["linear"] is None


def test_scale_bench_runs_end_to_end_at_tiny_sizes(tmp_path: Path) -> None:
    tools = scale_bench.make_tools(["resurgo"], None)
    if tools[0].problem:
        pytest.skip(tools[0].problem)
    results = tmp_path / "results"
    argv = ["--tools", "resurgo", "--work", str(tmp_path / "w"), "--results", str(results)]
    argv += ["--no-drop-caches", "--files", "40,120", "--gb", "0.002,0.004", "--blobs", "20000"]
    assert scale_bench.main(["all", *argv]) == 0
    (out,) = results.glob("scale-*.json")
    res = json.loads(out.read_text())
    files, sizes, index = res["files"], res["sizes"], res["index"]
    assert res["tools"]["resurgo"]["source"].startswith(str(scale_bench.PROJECT_DIR / "src"))
    assert [r["files"] for r in files["runs"]] == [40, 120]
    for r in files["runs"]:
        steps = r["steps"]["resurgo"]
        assert all(steps[s]["ok"] for s in ("init", "backup_initial", "backup_nochange"))
    per_file = files["analysis"]["resurgo"]["backup_initial"]
    assert len(per_file["rows"]) == 2 and "cpu_us_per_added_file" in per_file
    assert [r["steps"]["resurgo"]["backup_initial"]["ok"] for r in sizes["runs"]] == [True, True]
    assert sizes["analysis"]["resurgo"]["wall"]["fit"]["slope"] is not None
    # Data and repositories are gone; the report renders.
    assert not [p for p in (tmp_path / "w").iterdir() if p.name.startswith("data-")]
    assert not (tmp_path / "w" / "run" / "resurgo").exists()
    assert index["ok"] and index["result"]["blobs"] == 20000
    md = out.with_suffix(".md").read_text()
    assert "Many small files" in md and "Backup time against data size" in md
    assert "In-memory index" in md
