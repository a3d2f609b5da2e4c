"""Settings shared by the whole suite.

Hypothesis judges examples by wall time (a 200 ms deadline, a "too slow"
health check). On a shared 2-core CI machine the same example can take ten
times longer than on an idle one, so wall time says nothing about the code
under test: the properties are checked without those timing rules.
"""

import errno
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "resurgo", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("resurgo")


def _native(name: str):
    """A function of the native stage (snapshot/_dirscan.c). Where it should be
    built and is not, the test fails in CI (resurgo.testing.environment)."""
    from resurgo.snapshot import dirscan

    return _built(getattr(dirscan, name), dirscan.NATIVE_EXPECTED, "resurgo.snapshot._dirscan")


def _built(found, expected: bool, extension: str):
    """``found``, a function of ``extension``; where that should be built
    (``expected``) and is not, the test fails in CI (resurgo.testing.environment)."""
    from resurgo.testing.environment import unavailable

    if found is None:
        if expected:
            unavailable(f"{extension} is not built (scripts/setup.sh builds it)")
        pytest.skip("no native stage on this platform")
    return found


@pytest.fixture
def scan():
    """The native directory listing."""
    return _native("scan")


@pytest.fixture
def read_small():
    """The native reader of small files."""
    return _native("read_small")


@pytest.fixture
def subdirs():
    """The native listing of a directory's subdirectories (for warming)."""
    return _native("subdirs")


@pytest.fixture
def xattr_free():
    """The native check for entries without extended attributes."""
    return _native("xattr_free")


@pytest.fixture(scope="session")
def native_seal():
    """The native sealing of a window of blobs (repo/batch.py): ``batch.seal``."""
    from resurgo.repo import batch

    return _built(batch.seal, batch.NATIVE_EXPECTED, "resurgo.repo._seal")


@pytest.fixture(scope="session")
def native_newfiles():
    """The native maker of a restore's small new files (snapshot/_newfiles.c)."""
    from resurgo.snapshot import newfiles

    return _built(newfiles.create, newfiles.NATIVE_EXPECTED, "resurgo.snapshot._newfiles")


@pytest.fixture(scope="session")
def native_cutter():
    """The native FastCDC cutter (repo/_cdc.c): ``chunker.Cutter``."""
    from resurgo.repo import batch, chunker

    return _built(chunker.Cutter, batch.NATIVE_EXPECTED, "resurgo.repo._cdc")


@pytest.fixture(scope="session")
def native_encode():
    """The native tree encoder (snapshot/_treejson.c)."""
    from resurgo.snapshot import dirscan, model

    return _built(model._native_encode, dirscan.NATIVE_EXPECTED, "resurgo.snapshot._treejson")


@pytest.fixture(scope="session")
def native_decode():
    """The native tree decoder (snapshot/_treejson.c)."""
    from resurgo.snapshot import dirscan, model

    return _built(model._native_decode, dirscan.NATIVE_EXPECTED, "resurgo.snapshot._treejson")


@pytest.fixture
def deny_open(monkeypatch) -> Callable[..., None]:
    """``deny_open(*suffixes)``: a backup's files whose paths end with one of
    them fail to open with EACCES, in Python (``open_for_backup``) and in the
    native reader alike (root may open anything, so tests pretend)."""
    from resurgo.ops import backup as backup_mod
    from resurgo.snapshot import dirscan

    def deny(*suffixes: bytes) -> None:
        real_open = backup_mod.open_for_backup

        def refuse(path: bytes) -> int:
            if path.endswith(suffixes):
                raise PermissionError(errno.EACCES, "Permission denied", path)
            return real_open(path)

        monkeypatch.setattr(backup_mod, "open_for_backup", refuse)
        real_read = dirscan.read_small
        if real_read is not None:
            def read(items, limit):  # type: ignore[no-untyped-def]
                window, got = real_read(items, limit)
                return window, [(dirscan.READ_OPEN_ERROR, errno.EACCES) if item[0].endswith(suffixes)
                                else result for item, result in zip(items, got, strict=True)]

            monkeypatch.setattr(dirscan, "read_small", read)

    return deny
