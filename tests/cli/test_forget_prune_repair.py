"""``resurgo forget``, ``prune`` and ``repair`` on the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .conftest import PASSWORD, run_cli

ENV = {"RESURGO_PASSWORD": PASSWORD}


def cli(repo: Path, *args: str):
    return run_cli("-r", str(repo), *args, env=ENV)


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture
def repo_with_snapshots(initialized_repo: Path, tmp_path: Path) -> tuple[Path, Path, list[str]]:
    src = tmp_path / "src"
    src.mkdir()
    ids = []
    for i in range(4):
        (src / f"f{i}").write_bytes(os.urandom(50_000))
        r = cli(initialized_repo, "--json", "backup", str(src), "--tag", f"t{i}")
        assert r.code == 0, r
        ids.append(json_lines(r.out)[-1]["snapshot_id"])
    return initialized_repo, src, ids


def test_forget_dry_run_lists_every_snapshot_with_its_decision_and_reasons(repo_with_snapshots):
    repo, _, ids = repo_with_snapshots
    r = cli(repo, "--json", "forget", "--keep-last", "2", "--keep-tag", "t0", "--dry-run")
    assert r.code == 0, r
    decisions = {d["id"]: d for d in json_lines(r.out) if d["type"] == "decision"}
    assert set(decisions) == set(ids)
    assert decisions[ids[3]]["keep"] and decisions[ids[3]]["reasons"] == ["last snapshot"]
    assert decisions[ids[0]]["reasons"] == ["has tags t0"]
    assert not decisions[ids[1]]["keep"] and decisions[ids[1]]["reasons"] == []
    summary = json_lines(r.out)[-1]
    assert summary["dry_run"] and summary["removed"] == 1
    listed = cli(repo, "--json", "snapshots")
    assert len([d for d in json_lines(listed.out) if d["type"] == "snapshot"]) == 4


def test_forget_text_output_is_a_table_per_group(repo_with_snapshots):
    repo, _, ids = repo_with_snapshots
    r = cli(repo, "forget", "--keep-last", "1", "--dry-run")
    assert r.code == 0
    assert "keep 1, remove 3" in r.out
    assert ids[3][:8] in r.out and "remove" in r.out and "last snapshot" in r.out


def test_forget_with_prune_frees_the_data_and_check_stays_clean(repo_with_snapshots):
    repo, _, ids = repo_with_snapshots
    r = cli(repo, "--json", "forget", "--keep-last", "1", "--prune", "--grace", "0",
            "--max-clock-skew", "0")
    assert r.code == 0, r
    summary = json_lines(r.out)[-1]
    assert summary["removed"] == 3 and set(summary["removed_ids"]) == set(ids[:3])
    assert summary["marks_swept"]  # the prune ran and swept its own mark
    check = cli(repo, "check", "--read-data")
    assert check.code == 0, check
    restored = cli(repo, "snapshots")
    assert ids[3][:8] in restored.out and ids[0][:8] not in restored.out


def test_forget_by_id_and_usage_errors(repo_with_snapshots):
    repo, _, ids = repo_with_snapshots
    assert cli(repo, "forget").code == 2  # no policy, no IDs
    assert cli(repo, "forget", ids[0][:10], "--keep-last", "1").code == 2
    assert cli(repo, "forget", "--keep-within", "7w").code == 2
    assert cli(repo, "forget", "--group-by", "user", "--keep-last", "1").code == 2
    r = cli(repo, "forget", ids[0][:10])
    assert r.code == 0, r
    assert ids[0][:8] not in cli(repo, "snapshots").out


def test_prune_dry_run_writes_nothing_and_says_what_it_would_do(repo_with_snapshots):
    repo = repo_with_snapshots[0]
    assert cli(repo, "forget", "--keep-last", "1").code == 0
    before = sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_file())
    r = cli(repo, "prune", "--dry-run")
    assert r.code == 0, r
    assert "would mark" in r.out
    after = sorted(p.relative_to(repo) for p in repo.rglob("*") if p.is_file())
    assert after == before


def test_prune_refuses_with_exit_11_while_another_holds_the_lock(repo_with_snapshots):
    repo = repo_with_snapshots[0]
    from resurgo.backend.local import LocalBackend
    from resurgo.repo import Repository
    from resurgo.repo.lock import ExclusiveLock

    r = Repository.open(LocalBackend(repo), PASSWORD)
    lock = ExclusiveLock(r, operation="prune")
    lock.acquire()
    try:
        res = cli(repo, "prune")
        assert res.code == 11
        assert "locked by prune" in res.err
    finally:
        lock.release()
        r.close()


def test_repair_index_and_snapshots_after_a_lost_pack(repo_with_snapshots):
    repo = repo_with_snapshots[0]
    pack = max((p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    pack.unlink()
    assert cli(repo, "check").code == 4
    r = cli(repo, "repair", "index")
    assert r.code == 4, r  # something could not be recovered
    assert "missing pack" in r.out
    r = cli(repo, "--json", "repair", "snapshots", "--forget")
    assert r.code == 4, r
    lost = [d for d in json_lines(r.out) if d["type"] == "lost"]
    assert lost
    check = cli(repo, "check", "--read-data")
    assert check.code == 0, check
    again = cli(repo, "repair", "snapshots")
    assert again.code == 0 and "0 rewritten" in again.out


@pytest.mark.parametrize("command", [["forget"], ["prune"], ["repair", "index"],
                                     ["repair", "snapshots"]])
def test_help_ends_with_the_exit_codes(command):
    r = run_cli(*command, "--help")
    assert r.code == 0
    tail = r.out.rstrip().splitlines()
    assert "exit codes:" in r.out and tail[-1].strip().startswith("130")
    assert any(line.strip().startswith("11") for line in tail)
