"""``resurgo backup`` keeps its directory cache in the local cache directory."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import PASSWORD, run_cli

ENV = {"RESURGO_PASSWORD": PASSWORD}


def backup(repo: Path, *args: str) -> dict:
    r = run_cli("-r", str(repo), "--json", *args, env=ENV)
    assert r.code == 0, r
    return [json.loads(line) for line in r.out.splitlines() if line.startswith("{")][-1]


def test_backup_keeps_a_directory_cache_per_set_of_paths_and_none_with_no_cache(
        initialized_repo: Path, tmp_path: Path, isolated_env: dict[str, Path]) -> None:
    cache = isolated_env["XDG_CACHE_HOME"] / "resurgo"
    src, other = tmp_path / "src", tmp_path / "other"
    for top in (src, other):
        (top / "d").mkdir(parents=True)
        (top / "d" / "f").write_bytes(b"content")
    assert backup(initialized_repo, "backup", str(src))["files_new"] == 1
    first = sorted(cache.glob("*/dirs-*"))
    assert len(first) == 1
    again = backup(initialized_repo, "backup", str(src))
    assert (again["files_unchanged"], again["files_new"]) == (1, 0)
    assert sorted(cache.glob("*/dirs-*")) == first  # rewritten in place, for the new parent
    backup(initialized_repo, "--no-cache", "backup", str(other))
    assert sorted(cache.glob("*/dirs-*")) == first
    backup(initialized_repo, "backup", str(other))
    assert len(list(cache.glob("*/dirs-*"))) == 2
