"""Start-up: only the given command is loaded, and the key is derived before the heavy imports."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resurgo.cli import main as cli_main
from resurgo.cli.main import COMMANDS, _command_in, build_parser
from resurgo.repo import KDFParams
from resurgo.repo.lazynumpy import BLAS_THREADS_VARIABLE, one_blas_thread
from resurgo.session import open_repo

SRC = Path(__file__).resolve().parents[2] / "src"


def _python(code: str, **env: str) -> str:
    child_env = {**os.environ, "PYTHONPATH": str(SRC), **env}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=child_env, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_command_table_names_what_each_module_registers():
    for module, names in COMMANDS:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        cli_main.command_module(module).register(sub)
        assert tuple(sub.choices) == names, module


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["backup", "/x"], "backup"),
        (["-r", "check", "snapshots"], "snapshots"),
        (["--repo=/r", "--json", "-q", "check", "--read-data"], "check"),
        (["--rep", "ls", "restore", "latest"], "restore"),  # an abbreviated --repo
        (["-qr", "backup", "snapshots"], "snapshots"),
        (["-rbackup", "stats"], "stats"),
        (["-vv", "-o", "s3.x=1", "--cache-dir", "/c", "--no-cache", "key", "list"], "key"),
        (["--password-command", "echo ls", "ls", "latest"], "ls"),
    ],
)
def test_the_command_is_found_after_global_options(argv, command):
    assert _command_in(argv) == command


@pytest.mark.parametrize(
    "argv",
    [[], ["--help"], ["--pass", "x", "init"], ["--bogus", "init"], ["-x", "init"], ["nope"],
     ["--", "init"], ["/some/path"]],
)
def test_the_scan_leaves_anything_unclear_to_the_full_parser(argv):
    assert _command_in(argv) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["-r", "/r", "backup", "--tag", "a", "-e", "*.tmp", "/x"],
        ["--json", "check", "--read-data-subset", "1/5"],
        ["ls", "-l", "latest", "/etc"],
        ["key", "passwd", "--new-password-file", "f"],
        ["-v", "restore", "latest", "--target", "/t"],
    ],
)
def test_the_parser_of_one_command_parses_as_the_full_parser_does(argv):
    alone = build_parser(_command_in(argv)).parse_args(argv)
    full = build_parser().parse_args(argv)
    assert vars(alone) == vars(full)


def test_importing_the_cli_loads_no_engine_library():
    out = _python("""
        import sys
        import resurgo.cli.main
        heavy = ("numpy", "cryptography", "argon2", "zstandard", "blake3", "pyfastcdc", "rich",
                 "pathspec", "resurgo.repo.repository", "resurgo.cli.cmd_plan")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy))
    """)
    assert out.strip() == "[]"


def test_a_backup_without_excludes_does_not_load_the_pattern_library():
    out = _python("""
        import sys
        import resurgo.cli.cmd_backup, resurgo.ops.backup
        print("pathspec" in sys.modules)
    """)
    assert out.strip() == "False"


def test_the_key_is_derived_before_numpy_and_the_repository_facade_are_imported(tmp_path):
    repo = tmp_path / "repo"
    open_repo(str(repo), "pw", create=True, kdf=KDFParams.weak_for_tests()).close()
    out = _python(f"""
        import sys
        import resurgo.repo.keys as keys
        from resurgo.cli.main import main

        seen = []
        derive = keys._derive

        def spy(*args, **kwargs):
            seen.append(sorted(m for m in ("numpy", "cryptography", "resurgo.repo.repository")
                               if m in sys.modules))
            return derive(*args, **kwargs)

        keys._derive = spy
        assert main(["-r", {str(repo)!r}, "--no-cache", "--json", "snapshots"]) == 0
        print(seen)
    """, RESURGO_PASSWORD="pw")
    assert out.strip().splitlines()[-1] == "[[]]"


@pytest.mark.parametrize("command", [["check", "--read-data"], ["check", "--read-data-subset", "1/2"],
                                     ["restore", "latest", "--target", "RESTORED"]])
def test_commands_with_large_buffers_import_while_the_key_is_derived(tmp_path, command):
    repo = tmp_path / "repo"
    open_repo(str(repo), "pw", create=True, kdf=KDFParams.weak_for_tests()).close()
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    argv = [a.replace("RESTORED", str(tmp_path / "out")) for a in command]
    _python(f"""
        from resurgo.cli.main import main
        assert main(["-r", {str(repo)!r}, "--no-cache", "--quiet", "backup", {str(src)!r}]) == 0
    """, RESURGO_PASSWORD="pw")
    out = _python(f"""
        import sys, time
        import resurgo.repo.keys as keys
        from resurgo.cli.main import main

        seen = []
        derive = keys._derive

        def spy(*args, **kwargs):
            # The imports run beside the derivation: they finish while it waits.
            deadline = time.monotonic() + 60
            while "resurgo.repo.repository" not in sys.modules and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append("resurgo.repo.repository" in sys.modules)
            return derive(*args, **kwargs)

        keys._derive = spy
        assert main(["-r", {str(repo)!r}, "--no-cache", "--json", "--quiet", *{argv!r}]) == 0
        print(seen)
    """, RESURGO_PASSWORD="pw")
    assert out.strip().splitlines()[-1] == "[True]"


def test_init_derives_the_new_key_before_the_heavy_imports(tmp_path):
    out = _python(f"""
        import sys
        import resurgo.repo.keys as keys
        from resurgo.cli.main import main

        seen = []
        derive = keys._derive

        def spy(*args, **kwargs):
            seen.append(sorted(m for m in ("numpy", "cryptography", "resurgo.repo.repository")
                               if m in sys.modules))
            return derive(*args, **kwargs)

        keys._derive = spy
        assert main(["-r", {str(tmp_path / "new")!r}, "--no-cache", "--json", "init"]) == 0
        print(seen)
    """, RESURGO_PASSWORD="pw", RESURGO_TEST_WEAK_KDF="1")
    assert out.strip().splitlines()[-1] == "[[]]"


def test_openblas_starts_without_worker_threads_and_children_see_the_old_environment(monkeypatch):
    monkeypatch.delenv(BLAS_THREADS_VARIABLE, raising=False)
    with one_blas_thread():
        assert os.environ[BLAS_THREADS_VARIABLE] == "1"
    assert BLAS_THREADS_VARIABLE not in os.environ

    monkeypatch.setenv(BLAS_THREADS_VARIABLE, "4")
    with one_blas_thread():
        assert os.environ[BLAS_THREADS_VARIABLE] == "4"
    assert os.environ[BLAS_THREADS_VARIABLE] == "4"


def test_a_backup_of_a_few_changes_and_snapshots_never_import_numpy(tmp_path):
    repo, cache, src = tmp_path / "repo", tmp_path / "cache", tmp_path / "src"
    open_repo(str(repo), "pw", create=True, kdf=KDFParams.weak_for_tests()).close()
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_text("x" * 5000)
    common = ["-r", str(repo), "--cache-dir", str(cache), "--quiet"]
    _python(f"""
        from resurgo.cli.main import main
        assert main({[*common, "backup", str(src)]!r}) == 0
    """, RESURGO_PASSWORD="pw")
    out = _python(f"""
        import os, sys
        from resurgo.cli.main import main
        assert main({[*common, "backup", str(src)]!r}) == 0
        assert main({[*common, "snapshots"]!r}) == 0
        print("numpy:", "numpy" in sys.modules)
        print("chunker library:", "pyfastcdc" in sys.modules)  # nothing was cut
        with open({str(src / "d" / "small")!r}, "w") as f:
            f.write("a few bytes")
        assert main({[*common, "backup", str(src)]!r}) == 0
        print("numpy:", "numpy" in sys.modules)
        with open({str(src / "d" / "large")!r}, "wb") as f:
            f.write(os.urandom(20 << 20))  # read as a stream, cut into chunks
        assert main({[*common, "backup", str(src)]!r}) == 0
        print("numpy:", "numpy" in sys.modules)
    """, RESURGO_PASSWORD="pw")
    seen = [line.split()[1] for line in out.splitlines() if line.startswith("numpy:")]
    # Nothing changed (only the trees above the target are saved: an index
    # object, the index cache spliced in Python); then a small file; then a
    # large one, read into buffers that do not need NumPy either.
    assert seen == ["False", "False", "False"]
    assert "chunker library: False" in out.splitlines()


def test_envelopes_without_numpy_are_limited_and_buffers_are_writable():
    out = _python("""
        import sys
        from resurgo.repo import crypto
        from resurgo.repo.crypto import Kind, Sealer
        from resurgo.repo.lazynumpy import buffer

        for size in (0, 100, 1 << 20):
            b = buffer(size)
            b[:] = bytes(size)
            assert len(b) == size and not b.readonly
        assert "numpy" not in sys.modules
        crypto.ENVELOPES_WITHOUT_NUMPY = 3
        sealer = Sealer(bytes(32), compression_level=3)
        seen = []
        for i in range(5):
            env = sealer.seal_view(Kind.DATA, b"blob %d" % i * 100)
            assert sealer.open(Kind.DATA, env, name="b") == b"blob %d" % i * 100
            seen.append("numpy" in sys.modules)
        print(seen)
        b = buffer(1 << 20)
        print(type(b.obj).__module__)
    """)
    lines = out.strip().splitlines()
    assert lines[0] == "[False, False, False, True, True]"
    assert lines[1] == "numpy"
