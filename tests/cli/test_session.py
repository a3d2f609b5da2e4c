"""The session: default locations and the order in which the storage stack is assembled."""

from __future__ import annotations

from pathlib import Path

import pytest

from resurgo.errors import (
    InjectedFault,
    ReadOnlyError,
    RepositoryExists,
    RepositoryNotFound,
    WrongPassword,
)
from resurgo.repo import KDFParams
from resurgo.session import default_cache_dir, default_repository_url, open_repo

PW = "pw"
WEAK = KDFParams.weak_for_tests()


def test_default_repository_follows_xdg_data_home():
    assert default_repository_url({"XDG_DATA_HOME": "/d", "HOME": "/h"}) == "/d/resurgo/repository"


def test_default_repository_falls_back_to_home_local_share():
    expected = "/h/.local/share/resurgo/repository"
    assert default_repository_url({"HOME": "/h"}) == expected
    # the XDG spec says relative values must be ignored
    assert default_repository_url({"HOME": "/h", "XDG_DATA_HOME": "rel"}) == expected


def test_default_cache_dir_follows_xdg_cache_home():
    assert default_cache_dir({"XDG_CACHE_HOME": "/c", "HOME": "/h"}) == Path("/c/resurgo")
    assert default_cache_dir({"HOME": "/h"}) == Path("/h/.cache/resurgo")


def test_create_then_open_sees_the_same_repository(tmp_path):
    url = str(tmp_path / "r")
    created = open_repo(url, PW, create=True, kdf=WEAK)
    created.close()

    opened = open_repo(url, PW, cache_dir=tmp_path / "cache")
    try:
        assert opened.config.id == created.config.id
    finally:
        opened.close()


def test_create_refuses_an_existing_repository(tmp_path):
    url = str(tmp_path / "r")
    open_repo(url, PW, create=True, kdf=WEAK).close()

    with pytest.raises(RepositoryExists):
        open_repo(url, PW, create=True, kdf=WEAK)


def test_open_of_a_missing_repository_raises_not_found(tmp_path):
    with pytest.raises(RepositoryNotFound):
        open_repo(str(tmp_path / "absent"), PW)


def test_read_only_repository_refuses_writes(tmp_path):
    url = str(tmp_path / "r")
    open_repo(url, PW, create=True, kdf=WEAK).close()
    keys_before = sorted(p.name for p in (tmp_path / "r" / "keys").iterdir())

    repo = open_repo(url, PW, read_only=True)
    try:
        assert len(repo.list_keys()) == 1
        with pytest.raises(ReadOnlyError):
            repo.add_key("second", kdf=WEAK)
    finally:
        repo.close()
    assert sorted(p.name for p in (tmp_path / "r" / "keys").iterdir()) == keys_before


def test_injected_transient_faults_sit_below_the_retry_layer(tmp_path):
    created = open_repo(str(tmp_path / "a"), PW, create=True, kdf=WEAK, fault_spec="put:fail:2")
    created.close()
    assert (tmp_path / "a" / "config").is_file()

    with pytest.raises(InjectedFault):
        open_repo(str(tmp_path / "b"), PW, create=True, kdf=WEAK, fault_spec="put:fail:1",
                  retry=False)


def test_preloading_imports_the_modules_and_a_failing_one_is_left_to_the_caller(tmp_path, capfd):
    url = str(tmp_path / "r")
    open_repo(url, PW, create=True, kdf=WEAK).close()

    repo = open_repo(url, PW, preload=("resurgo.ops.check", "resurgo.no_such_module"))
    try:
        import sys

        assert "resurgo.ops.check" in sys.modules
        assert "resurgo.no_such_module" not in sys.modules
    finally:
        repo.close()
    assert capfd.readouterr().err == ""  # the thread's failure printed nothing


def test_preloading_still_reports_a_wrong_password(tmp_path):
    url = str(tmp_path / "r")
    open_repo(url, PW, create=True, kdf=WEAK).close()

    with pytest.raises(WrongPassword):
        open_repo(url, "not the password", preload=("resurgo.ops.check",))


def test_warm_tasks_run_while_the_key_is_derived_and_are_stopped_after(tmp_path, monkeypatch):
    import resurgo.repo.keys as keys

    url = str(tmp_path / "repo")
    open_repo(url, PW, create=True, kdf=WEAK).close()
    events = []
    derive = keys._derive

    def spy(*args, **kwargs):
        events.append("derive")
        return derive(*args, **kwargs)

    monkeypatch.setattr(keys, "_derive", spy)
    seen = []

    def task(stop):
        seen.append(stop)
        stop.wait(10)  # until the key is derived
        events.append("stopped")

    def failing(stop):
        raise RuntimeError("a warm-up error is dropped")

    repo = open_repo(url, PW, warm=[task, failing], cache_dir=tmp_path / "cache")
    repo.close()
    assert events == ["derive", "stopped"] and seen[0].is_set()


def test_the_code_imported_after_the_key_is_read_ahead_meanwhile(monkeypatch):
    """``warm_code`` asks for this package's compiled modules and the large
    extension modules imported once the key is derived, without importing them."""
    import os
    import threading

    import resurgo
    from resurgo import session

    files = session._code_files()
    package = os.path.dirname(os.path.abspath(resurgo.__file__))
    assert any(f.startswith(package) and f.endswith((".pyc", ".py")) for f in files)
    assert any(f.startswith(package) and f.endswith(".so") for f in files)  # the native stages
    names = {os.path.basename(f).split(".")[0] for f in files}
    assert "backend_c" in names  # zstandard's
    assert "_rust" not in names  # cryptography's: not imported where the native AEAD is built
    assert all(os.path.isfile(f) for f in files)

    asked: list[int] = []
    real = os.posix_fadvise
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, off, n, advice: asked.append(advice) or real(fd, off, n, advice))
    assert session.warm_code(threading.Event()) == len(files) == len(asked)
    assert set(asked) == {os.POSIX_FADV_WILLNEED}
    stop = threading.Event()
    stop.set()
    assert session.warm_code(stop) == 0
