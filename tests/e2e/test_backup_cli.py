"""End-to-end backup failures through the real CLI: unreadable files, files that
change while read, and stream commands that fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .conftest import CLI


def test_unreadable_file_gives_exit_3_and_a_snapshot_without_it(
    cli: CLI, repo_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "readable.txt").write_bytes(b"fine")
    secret = src / "secret.txt"
    secret.write_bytes(b"nobody may read this")
    secret.chmod(0)
    # Root reads everything; a user namespace without a uid mapping keeps our
    # uid for ownership checks but drops the capability to override them, so
    # the mode-000 file is really unreadable while the rest stays usable.
    unshare = shutil.which("unshare")
    assert unshare, "util-linux unshare is needed for this test"
    argv = [unshare, "--user", sys.executable, "-m", "resurgo", "--json", "backup", str(src)]
    proc = subprocess.run(argv, env=cli.env, capture_output=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 3, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    warnings = [ln for ln in lines if '"type": "warning"' in ln]
    assert any("secret.txt" in w and "Permission denied" in w for w in warnings), lines
    target = tmp_path / "restored"
    cli("restore", "latest", "--target", target)
    restored = target / str(src).lstrip("/")
    assert (restored / "readable.txt").read_bytes() == b"fine"
    assert not (restored / "secret.txt").exists()


def test_file_changing_while_read_gives_exit_3_and_is_named(
    cli: CLI, repo_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    growing = src / "growing.log"
    growing.write_bytes(os.urandom(32 << 20))
    writer = subprocess.Popen(
        ["sh", "-c", f"while :; do echo line >> '{growing}'; done"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.2)
        result = cli("backup", str(src), expect=3)
    finally:
        writer.kill()
        writer.wait()
    assert "growing.log" in result.stderr and "changed" in result.stderr
    ls = cli("ls", "latest", str(growing), "--json")
    assert '"error": "changed while being read"' in ls.out


def test_failing_dump_command_writes_no_snapshot(cli: CLI, repo_dir: Path) -> None:
    result = cli("backup", "--stdin-from-command", "--stdin-filename", "db.sql", "--",
                 "sh", "-c", "echo 'partial dump'; exit 5", expect=1)
    assert "exit status 5" in result.stderr and "no snapshot" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one clear line, no traceback
    _, summary = cli.json("snapshots")
    assert summary["snapshots"] == 0


def test_successful_dump_command_is_restored_byte_for_byte(
    cli: CLI, repo_dir: Path, tmp_path: Path
) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(3 << 20))
    cli("backup", "--stdin-from-command", "--stdin-filename", "db.sql", "--",
        "cat", str(payload))
    dumped = cli("dump", "latest", "/db.sql")
    assert dumped.stdout == payload.read_bytes()
