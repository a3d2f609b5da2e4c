"""Unlocking before the facade: keys.unlock / keys.new_key, and what they need imported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resurgo.backend.local import LocalBackend
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import RepositoryNotFound, WrongPassword
from resurgo.repo import KDFParams, RepoParams, Repository
from resurgo.repo.keys import new_key, unlock

from .helpers import PASSWORD, new_repo

WEAK = KDFParams.weak_for_tests()
SRC = Path(__file__).resolve().parents[2] / "src"


def test_unlock_finds_the_master_key_and_the_config_the_password_opens() -> None:
    backend = MemoryBackend()
    repo = new_repo(backend)
    other = repo.add_key("second password", kdf=WEAK)

    unlocked = unlock(backend, "second password")

    assert unlocked.key_id == other
    reopened = Repository.open_unlocked(backend, unlocked)
    assert reopened.config == repo.config
    assert reopened.blob_id(b"x") == repo.blob_id(b"x")


def test_unlock_raises_wrong_password_and_not_found() -> None:
    backend = MemoryBackend()
    new_repo(backend)
    with pytest.raises(WrongPassword):
        unlock(backend, "not it")
    with pytest.raises(RepositoryNotFound):
        unlock(MemoryBackend(), PASSWORD)


def test_a_key_made_before_init_opens_the_new_repository() -> None:
    backend = MemoryBackend()
    key = new_key(PASSWORD, WEAK)

    repo = Repository.init(backend, PASSWORD, params=RepoParams.tiny_for_tests(), key=key)

    assert repo.key_id == key.key_id
    assert backend.get(f"keys/{key.key_id}") == key.raw
    again = Repository.open(backend, PASSWORD)
    assert again.blob_id(b"x") == repo.blob_id(b"x")


def test_a_prepared_key_cannot_also_share_another_repositorys_ids() -> None:
    source = new_repo(MemoryBackend())
    with pytest.raises(ValueError):
        Repository.init(MemoryBackend(), PASSWORD, key=new_key(PASSWORD, WEAK),
                        chunker_params_from=source)


def test_unlocking_needs_neither_numpy_nor_the_facade_before_the_derivation(
    tmp_path: Path,
) -> None:
    new_repo(LocalBackend(tmp_path / "repo"))
    code = textwrap.dedent(f"""
        import sys
        import resurgo.repo.keys as keys
        from resurgo.backend.local import LocalBackend
        seen = []
        derive = keys._derive
        keys._derive = lambda *a: seen.append(
            sorted(m for m in ("numpy", "cryptography", "resurgo.repo.repository")
                   if m in sys.modules)) or derive(*a)
        keys.unlock(LocalBackend({str(tmp_path / "repo")!r}), {PASSWORD!r})
        print(seen)
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True, timeout=120).stdout
    assert out.strip() == "[[]]"
