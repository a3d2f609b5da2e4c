"""``resurgo copy``, ``init --copy-chunker-params-from`` and ``backend validate`` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resurgo.errors import EXIT_BACKEND, EXIT_OK, EXIT_USAGE, EXIT_WRONG_PASSWORD
from resurgo.repo import Repository
from resurgo.session import open_repo

from .conftest import PASSWORD, run_cli

SOURCE_PW = "source secret"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("resurgo: error: "), err
    return lines[0]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A source repository with three snapshots: host a (tag daily, twice) and host b."""
    repo = tmp_path / "source"
    env = {"RESURGO_PASSWORD": SOURCE_PW}
    assert run_cli("-r", str(repo), "init", env=env).code == 0
    for n, (host, tag) in enumerate([("a", "daily"), ("b", "weekly"), ("a", "daily")]):
        data = tmp_path / f"data{n}"
        data.mkdir()
        (data / "file.txt").write_text(f"content {n}\n" * 100)
        result = run_cli("-r", str(repo), "backup", str(data), "--host", host, "--tag", tag,
                         env=env)
        assert result.code == 0, result
    return repo


def _snapshots(repo: Path, password: str) -> list[dict[str, object]]:
    result = run_cli("-r", str(repo), "--json", "snapshots", env={"RESURGO_PASSWORD": password})
    assert result.code == 0, result
    return [d for d in map(json.loads, result.out.splitlines()) if d["type"] == "snapshot"]


def test_copy_filters_by_host_then_copies_the_rest_and_skips_what_is_there(
    source: Path, initialized_repo: Path, password_env: dict[str, str | None]
) -> None:
    env = {**password_env, "RESURGO_FROM_PASSWORD": SOURCE_PW}
    first = run_cli("-r", str(initialized_repo), "copy", "--from-repo", str(source),
                    "--host", "a", env=env)
    assert first.code == EXIT_OK, first
    assert first.out.count("copied snapshot") == 2
    copied = _snapshots(initialized_repo, PASSWORD)
    assert sorted(s["host"] for s in copied) == ["a", "a"]

    second = run_cli("-r", str(initialized_repo), "--json", "copy", "--from-repo", str(source),
                     env=env)
    assert second.code == EXIT_OK, second
    lines = [json.loads(line) for line in second.out.splitlines()]
    assert [d["type"] for d in lines if d["type"] == "copied"] == ["copied"]
    summary = lines[-1]
    assert summary["type"] == "summary" and summary["snapshots_copied"] == 1
    assert summary["snapshots_skipped"] == 2 and summary["mode"] == "translated"
    originals = {s["id"] for s in _snapshots(source, SOURCE_PW)}
    repo = open_repo(str(initialized_repo), PASSWORD, read_only=True)
    from resurgo.snapshot.store import list_snapshots

    assert {s.original for s in list_snapshots(repo)} == originals
    repo.close()


def test_copy_latest_and_explicit_ids_with_the_password_from_a_file(
    source: Path, initialized_repo: Path, password_env: dict[str, str | None], tmp_path: Path
) -> None:
    pw_file = tmp_path / "source-pw"
    pw_file.write_text(SOURCE_PW + "\n")
    snaps = _snapshots(source, SOURCE_PW)
    result = run_cli("-r", str(initialized_repo), "copy", "--from-repo", str(source),
                     "--from-password-file", str(pw_file), "--tag", "weekly",
                     "latest", str(snaps[0]["id"])[:8], env=password_env)
    assert result.code == EXIT_OK, result
    copied = _snapshots(initialized_repo, PASSWORD)
    assert sorted(s["host"] for s in copied) == ["a", "b"]
    assert {s["tags"][0] for s in copied} == {"daily", "weekly"}  # type: ignore[index]


def test_copy_refuses_a_wrong_source_password_and_a_missing_source(
    source: Path, initialized_repo: Path, password_env: dict[str, str | None]
) -> None:
    wrong = run_cli("-r", str(initialized_repo), "copy", "--from-repo", str(source),
                    env={**password_env, "RESURGO_FROM_PASSWORD": "nope"})
    assert wrong.code == EXIT_WRONG_PASSWORD
    _one_error_line(wrong.err)
    missing = run_cli("-r", str(initialized_repo), "copy", env=password_env)
    assert missing.code == EXIT_USAGE
    assert "--from-repo" in _one_error_line(missing.err)
    # The destination's password is not used for the source.
    same = run_cli("-r", str(initialized_repo), "copy", "--from-repo", str(source),
                   env=password_env)
    assert same.code == EXIT_USAGE and "no password" in same.err


def test_init_sharing_chunker_params_gives_same_ids_and_its_own_password(
    source: Path, tmp_path: Path
) -> None:
    target = tmp_path / "sharing"
    result = run_cli("-r", str(target), "init", "--copy-chunker-params-from", str(source),
                     env={"RESURGO_PASSWORD": "own", "RESURGO_FROM_PASSWORD": SOURCE_PW})
    assert result.code == EXIT_OK, result
    src = open_repo(str(source), SOURCE_PW, read_only=True)
    dst = open_repo(str(target), "own", read_only=True)
    try:
        assert dst.shares_blob_ids_with(src)
        assert dst.config.chunker_seed == src.config.chunker_seed
        assert dst.config.params == src.config.params
        assert dst.config.id != src.config.id
    finally:
        src.close()
        dst.close()
    copy = run_cli("-r", str(target), "--json", "copy", "--from-repo", str(source),
                   env={"RESURGO_PASSWORD": "own", "RESURGO_FROM_PASSWORD": SOURCE_PW})
    assert copy.code == EXIT_OK, copy
    summary = json.loads(copy.out.splitlines()[-1])
    assert summary["mode"] == "same-ids" and summary["blobs_rehashed"] == 0
    assert summary["snapshots_copied"] == 3


def test_backend_validate_a_local_directory_prints_every_check_and_an_ok_verdict(
    tmp_path: Path,
) -> None:
    target = tmp_path / "target"
    result = run_cli("backend", "validate", str(target), "--large-size", "1MiB")
    assert result.code == EXIT_OK, result
    lines = result.out.strip().splitlines()
    checks = [line.split()[1] for line in lines if line.startswith("ok ")]
    assert checks == ["write-read", "overwrite", "create-only", "listing", "ranged-read",
                      "large-object", "delete", "clock-skew", "cleanup"]
    assert lines[-1].startswith("verdict: ok")
    assert not list(target.rglob("*.*")) and not [p for p in target.rglob("*") if p.is_file()]


def test_backend_validate_fails_with_exit_15_when_reads_come_back_wrong(tmp_path: Path) -> None:
    result = run_cli("--json", "backend", "validate", str(tmp_path / "t"), "--large-size", "1MiB",
                     env={"RESURGO_TEST_FAULTS": "get:flip:validate-"})
    assert result.code == EXIT_BACKEND, result
    docs = [json.loads(line) for line in result.out.splitlines()]
    checks = {d["name"]: d["status"] for d in docs if d["type"] == "check"}
    assert checks["write-read"] == "fail"
    summary = docs[-1]
    assert summary["verdict"] == "fail" and summary["exit_code"] == EXIT_BACKEND


def test_backend_validate_defaults_to_the_repository_location(
    initialized_repo: Path, password_env: dict[str, str | None]
) -> None:
    result = run_cli("-r", str(initialized_repo), "backend", "validate", "--large-size", "1MiB")
    assert result.code == EXIT_OK, result
    assert str(initialized_repo) in result.out
    # The repository is untouched and still opens.
    Repository.open(open_repo(str(initialized_repo), PASSWORD).backend, PASSWORD).close()
    files = {str(p.relative_to(initialized_repo)) for p in initialized_repo.rglob("*") if p.is_file()}
    assert {f.split("/")[0] for f in files} == {"config", "keys"}
