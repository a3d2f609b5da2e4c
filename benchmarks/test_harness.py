"""Self-tests of the benchmark harness: generator determinism, the mutation and
the restore comparator. Run with ``.venv/bin/pytest benchmarks/test_harness.py``
(not part of the project's test suite: ``testpaths`` is ``tests``)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen_dataset
import run
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
