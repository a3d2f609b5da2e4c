"""The native stage for a window of blobs (repo/_seal.c through repo/batch.py):
blob IDs as ``MasterKey.blob_id`` names them, envelopes that ``Sealer`` opens,
built by the same rules, and a repository that stores them as ``save_blob`` would."""

from __future__ import annotations

import os
import random

import blake3
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from resurgo.errors import CorruptObject
from resurgo.ops.check import check_repository
from resurgo.repo import BlobType, Repository, batch
from resurgo.repo.crypto import (
    DICT_TAG_LEN,
    FORMAT_VERSION,
    FORMAT_VERSION_DICT,
    OVERHEAD,
    SMALL_BLOB,
    Compression,
    Dictionary,
    Kind,
    Sealer,
    peek_header,
)
from resurgo.repo.repository import blob_context

from .helpers import PASSWORD, QUICK, new_repo
from .test_crypto_dictionary import (
    DICT,
    KEY,
    SEALER,
    _handmade,
    any_data,
    small_repo,
    source_file,
    source_files,
)


def spans_of(size: int, cuts: list[int]) -> list[tuple[int, int]]:
    """(offset, length) pairs within ``size`` bytes, from pairs of cut points."""
    points = [c % (size + 1) for c in cuts]
    return [(min(a, b), abs(a - b)) for a, b in zip(points[::2], points[1::2], strict=False)]


# -- blob IDs ---------------------------------------------------------------------


@QUICK
@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=24),
       key=st.binary(min_size=32, max_size=32))
def test_blob_ids_are_the_keyed_blake3_of_each_span(
    native_seal, data: bytes, cuts: list[int], key: bytes
) -> None:
    spans = [*spans_of(len(data), cuts), (0, len(data))]
    assert batch.blob_ids is not None
    assert batch.blob_ids(key, data, spans) == [
        blake3.blake3(data[o : o + n], key=key).digest() for o, n in spans
    ]


def test_blob_ids_of_large_spans_use_every_simd_width(native_seal) -> None:
    # Long inputs go through hash_many (several chunks at once); odd lengths
    # end in a partial block and chunk.
    data = random.Random(1).randbytes(3 << 20)
    spans = [(0, 3 << 20), (1, 1 << 20), (17, 65_537), (4096, 8191)]
    assert batch.blob_ids is not None
    assert batch.blob_ids(KEY, memoryview(data), spans) == [
        blake3.blake3(data[o : o + n], key=KEY).digest() for o, n in spans
    ]


def test_blob_ids_refuse_bad_arguments_with_a_clear_error(native_seal) -> None:
    assert batch.blob_ids is not None
    with pytest.raises(ValueError, match="32 bytes"):
        batch.blob_ids(b"short", b"data", [(0, 4)])
    with pytest.raises(ValueError, match="outside the 4-byte buffer"):
        batch.blob_ids(KEY, b"data", [(2, 3)])
    with pytest.raises(ValueError, match="outside"):
        batch.blob_ids(KEY, b"data", [(-1, 1)])
    with pytest.raises(TypeError):
        batch.blob_ids(KEY, b"data", [(0, "4")])  # type: ignore[list-item]


# -- envelopes --------------------------------------------------------------------


def _check_envelope(kind: Kind, env: memoryview, data: bytes, context: bytes, with_dict: bool) -> None:
    """The envelope opens to ``data`` and is framed as docs/format.md says, by crypto.py's rules."""
    assert SEALER.open(kind, env, context, name="x") == data
    version, cipher, comp, got_kind = peek_header(env)
    assert (cipher, got_kind) == (1, kind)
    body = AESGCM(KEY).decrypt(bytes(env[4:16]), bytes(env[16:]), bytes(env[:4]) + context)
    n = len(data)
    if comp == Compression.NONE:
        assert version == FORMAT_VERSION and body == data and len(env) == n + OVERHEAD
        return
    # Compressed only when that saves more than 1/64 of the plaintext.
    assert len(body) < n - n // 64 and n > 64
    if with_dict and n <= SMALL_BLOB:
        assert (version, comp) == (FORMAT_VERSION_DICT, Compression.ZSTD_DICT)
        assert body[:DICT_TAG_LEN] == DICT.tag
        frame = body[DICT_TAG_LEN:]
    else:
        assert (version, comp) == (FORMAT_VERSION, Compression.ZSTD)
        frame = body
    params = zstandard.get_frame_parameters(frame)
    assert params.content_size == n and params.dict_id == 0 and not params.has_checksum


@QUICK
@given(kind=st.sampled_from([Kind.DATA, Kind.TREE]), blobs=st.lists(any_data, max_size=8),
       context=st.binary(max_size=40), with_dict=st.booleans())
def test_native_envelopes_open_and_follow_the_sealers_rules(
    native_seal, kind: Kind, blobs: list[bytes], context: bytes, with_dict: bool
) -> None:
    data = b"".join(blobs)
    items, offset = [], 0
    for b in blobs:
        items.append((offset, len(b), context, DICT if with_dict else None))
        offset += len(b)
    envs = SEALER.seal_window(kind, data, items)
    assert len(envs) == len(blobs)
    for env, b in zip(envs, blobs, strict=True):
        _check_envelope(kind, env, b, context, with_dict)


def test_native_and_python_decide_alike_where_the_choice_is_clear(native_seal) -> None:
    r = random.Random(7)
    text, noise, tiny = source_file(r, 60), r.randbytes(9000), source_file(r, 1)[:60]
    big_text = source_file(r, 3000)  # over SMALL_BLOB: no dictionary, the repository's level
    data = text + noise + tiny + big_text
    spans = [(0, len(text)), (len(text), len(noise)), (len(text) + len(noise), len(tiny)),
             (len(data) - len(big_text), len(big_text))]
    for dictionary in (None, DICT):
        native = SEALER.seal_window(Kind.DATA, data, [(o, n, b"c", dictionary) for o, n in spans])
        python = [SEALER.seal(Kind.DATA, data[o : o + n], b"c", dictionary=dictionary) for o, n in spans]
        assert [bytes(e[:4]) for e in native] == [e[:4] for e in python]
        # A dictionary's gain shows in the native sizes as in Python's.
        for e, p in zip(native, python, strict=True):
            assert abs(len(e) - len(p)) <= max(64, len(p) // 10)


def test_each_envelope_gets_its_own_nonce(native_seal) -> None:
    data = b"same plaintext " * 20
    envs = SEALER.seal_window(Kind.DATA, data * 50, [(i * len(data), len(data), b"", None) for i in range(50)])
    assert len({bytes(e[4:16]) for e in envs}) == 50
    assert len({bytes(e) for e in envs}) == 50


def test_an_envelope_under_another_context_or_key_fails_authentication(native_seal) -> None:
    (env,) = SEALER.seal_window(Kind.DATA, b"secret" * 40, [(0, 240, b"blob-a", DICT)])
    with pytest.raises(Exception, match="authentication failed"):
        SEALER.open(Kind.DATA, env, b"blob-b", name="x")
    with pytest.raises(Exception, match="authentication failed"):
        Sealer(bytes(32), 3, dictionaries=lambda tag: DICT).open(Kind.DATA, env, b"blob-a", name="x")


# -- opening small envelopes ------------------------------------------------------------


@QUICK
@given(kind=st.sampled_from([Kind.DATA, Kind.TREE]), data=any_data, context=st.binary(max_size=40),
       native=st.booleans())
def test_open_small_opens_what_the_sealer_seals_without_a_dictionary(
    native_seal, kind: Kind, data: bytes, context: bytes, native: bool
) -> None:
    assert batch.open_small is not None
    env = (SEALER.seal_window(kind, data, [(0, len(data), context, None)])[0] if native
           else SEALER.seal_view(kind, data, context))
    assert batch.open_small(SEALER._key, kind, env, context) == data
    assert SEALER.open(kind, env, context, name="x") == data


def test_open_small_leaves_everything_else_to_python(native_seal) -> None:
    assert batch.open_small is not None
    r = random.Random(3)
    text = source_file(r, 40)
    env = SEALER.seal(Kind.TREE, text, b"ctx")
    key = SEALER._key
    assert batch.open_small(key, Kind.TREE, env, b"ctx") == text
    damaged = bytearray(env)
    damaged[len(env) // 2] ^= 1
    with_dict = SEALER.seal(Kind.DATA, text, b"ctx", dictionary=DICT)
    assert peek_header(with_dict)[0] == FORMAT_VERSION_DICT
    for args in [
        (key, Kind.DATA, env, b"ctx"),  # another kind
        (key, Kind.TREE, env, b"other"),  # another context
        (bytes(32), Kind.TREE, env, b"ctx"),  # another key
        (key, Kind.TREE, bytes(damaged), b"ctx"),
        (key, Kind.TREE, env[:20], b"ctx"),
        (key, Kind.DATA, with_dict, b"ctx"),  # a dictionary: Python's
    ]:
        assert batch.open_small(*args) is None
    # Python then names the error, as before.
    with pytest.raises(Exception, match="authentication failed"):
        SEALER.open(Kind.TREE, bytes(damaged), b"ctx", name="x")
    with pytest.raises(Exception, match="expected a data object"):
        SEALER.open(Kind.DATA, env, b"ctx", name="x")
    assert Sealer(KEY, 3, dictionaries=lambda tag: DICT).open(Kind.DATA, with_dict, b"ctx", name="x") == text


def test_small_blobs_are_named_and_sealed_holding_the_gil_as_before(native_seal) -> None:
    """``Repository.blob_id`` and ``save_blob`` of small blobs go through the
    native stage: the same IDs as keyed BLAKE3, envelopes that open."""
    repo = new_repo()
    r = random.Random(5)
    for size in (0, 1, 100, batch.SEAL_HOLDS_GIL_UPTO, batch.HASH_HOLDS_GIL_UPTO, batch.HASH_HOLDS_GIL_UPTO + 1):
        data = r.randbytes(size)
        assert repo.blob_id(data) == blake3.blake3(data, key=repo._master.id_mac).digest()
        bid, added = repo.save_blob(BlobType.TREE, data)
        assert added and bid == repo.blob_id(data)
    repo.flush()
    assert check_repository(repo, read_all_data=True).ok


def test_seal_refuses_bad_items_with_a_clear_error(native_seal) -> None:
    assert batch.seal is not None and batch.CDict is not None
    cdict = DICT.native(4)
    seal = batch.seal
    with pytest.raises(ValueError, match="32-byte key"):
        seal(b"k", 0, b"data", [])
    with pytest.raises(ValueError, match="outside the 4-byte buffer"):
        seal(KEY, 0, b"data", [(3, 2, b"", 3, None, None)])
    with pytest.raises(ValueError, match="at most 64 bytes"):
        seal(KEY, 0, b"data", [(0, 4, b"x" * 65, 3, None, None)])
    with pytest.raises(ValueError, match="8-byte tag"):
        seal(KEY, 0, b"data", [(0, 4, b"", 4, cdict, b"short")])
    with pytest.raises(ValueError, match="digested for 4"):
        seal(KEY, 0, b"data", [(0, 4, b"", 3, cdict, DICT.tag)])
    with pytest.raises(TypeError, match="CDict or None"):
        seal(KEY, 0, b"data", [(0, 4, b"", 3, object(), DICT.tag)])
    with pytest.raises(ValueError, match="one byte"):
        seal(KEY, 256, b"data", [])


# -- the repository ---------------------------------------------------------------


def test_a_window_is_saved_as_save_blob_would_each_blob_once(native_seal) -> None:
    repo = new_repo()
    r = random.Random(2)
    files = [r.randbytes(300), source_file(r, 30), b"", source_file(r, 30)]
    files.append(files[1])  # the same content twice in one window
    stored_before = r.randbytes(700)
    repo.save_blob(BlobType.DATA, stored_before)
    files.append(stored_before)
    data = b"".join(files)
    spans, offset = [], 0
    for f in files:
        spans.append((offset, len(f)))
        offset += len(f)
    ids = repo.save_data_window(data, spans)
    assert ids == [repo.blob_id(f) for f in files]
    repo.flush()  # blobs kept back as dictionary samples are sealed now
    assert repo.stats_added["blobs"] == 1 + 4  # the duplicate and the earlier blob are not stored again
    for bid, f in zip(ids, files, strict=True):
        assert repo.load_blob(BlobType.DATA, bid) == f
    assert check_repository(repo, read_all_data=True).ok


def test_a_window_uses_the_dictionary_once_it_is_trained(native_seal) -> None:
    repo = small_repo()
    files = source_files(4, 400)
    ids: list[bytes] = []
    for start in range(0, len(files), 40):
        window = files[start : start + 40]
        data = b"".join(window)
        offsets = [sum(map(len, window[:i])) for i in range(len(window))]
        ids += repo.save_data_window(data, [(o, len(f)) for o, f in zip(offsets, window, strict=True)])
    assert ids == [repo.blob_id(f) for f in files]
    repo.flush()
    by_comp: dict[int, int] = {}
    for bid, f in zip(ids, files, strict=True):
        loc = repo.lookup(BlobType.DATA, bid)
        assert loc is not None
        env = repo.read_pack_range(loc.pack_id, loc.offset, loc.length)
        comp = peek_header(env)[2]
        by_comp[comp] = by_comp.get(comp, 0) + 1
        assert repo.open_blob(loc, env) == f
    assert by_comp.get(Compression.ZSTD_DICT, 0) == len(set(files))
    assert check_repository(repo, read_all_data=True).ok


def test_without_the_native_stage_a_window_gets_the_same_ids(monkeypatch, native_seal) -> None:
    repo = new_repo()
    files = [*source_files(5, 20), os.urandom(90000)]
    data = b"".join(files)
    spans = [(sum(map(len, files[:i])), len(f)) for i, f in enumerate(files)]
    native = repo.save_data_window(data, spans)
    monkeypatch.setattr(batch, "seal", None)
    other = new_repo()
    python = other.save_data_window(data, spans)
    assert native == [repo.blob_id(f) for f in files] and python == [other.blob_id(f) for f in files]


def test_a_sealing_error_stores_nothing_and_a_later_save_stores_the_blobs(monkeypatch, native_seal) -> None:
    repo = new_repo()
    size = repo.dictionaries.sample_max + 1  # never a dictionary sample: sealed natively at once
    files = [os.urandom(size) for _ in range(5)]
    data = b"".join(files)
    spans = [(i * size, size) for i in range(5)]

    def broken(*args: object, **kwargs: object) -> object:
        raise OSError("injected")

    monkeypatch.setattr(Sealer, "seal_window", broken)
    with pytest.raises(OSError, match="injected"):
        repo.save_data_window(data, spans)
    monkeypatch.undo()
    assert repo.save_data_window(data, spans) == [repo.blob_id(f) for f in files]
    assert repo.stats_added["blobs"] == 5
    repo.flush()
    assert [repo.load_blob(BlobType.DATA, repo.blob_id(f)) for f in files] == files


def test_blob_context_binds_the_type_and_id() -> None:
    # The context the window's envelopes are sealed under is save_blob's.
    assert blob_context(BlobType.DATA, b"\x01" * 32) == bytes([BlobType.DATA]) + b"\x01" * 32


@QUICK
@given(parts=st.lists(st.binary(max_size=3000), max_size=40), big=st.booleans())
def test_digest_is_blake3_of_the_parts_joined(native_seal, parts: list[bytes], big: bool) -> None:
    assert batch.digest is not None
    if big:  # past HASH_HOLDS_GIL_UPTO: hashed with the GIL released
        parts = [*parts, random.Random(len(parts)).randbytes(batch.HASH_HOLDS_GIL_UPTO + 1)]
    kinds = [bytes, bytearray, memoryview]
    mixed = [kinds[i % 3](p) for i, p in enumerate(parts)]
    assert batch.digest(mixed) == blake3.blake3(b"".join(parts)).digest()


def test_digest_refuses_what_is_not_a_list_of_buffers(native_seal) -> None:
    assert batch.digest is not None
    with pytest.raises(TypeError):
        batch.digest((b"a", b"b"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        batch.digest([b"a", "text"])  # type: ignore[list-item]


# -- opening a range of blobs (a restore's small files) ------------------------------

ID_KEY = bytes(range(100, 132))


def _opening(env_list: list[tuple[bytes, Kind, bytes, bytes]]) -> tuple[bytes, list[batch.Opening]]:
    """The envelopes laid end to end (as in a pack range), and their items."""
    data, items = b"", []
    for env, kind, context, plain in env_list:
        bid = blake3.blake3(plain, key=ID_KEY).digest()
        items.append((len(data), len(env), int(kind), context, len(plain), bid))
        data += env
    return data, items


@QUICK
@given(blobs=st.lists(st.tuples(any_data, st.sampled_from([Kind.DATA, Kind.TREE]), st.booleans(),
                                st.booleans(), st.binary(max_size=33)), max_size=12),
       pad=st.integers(0, 40))
def test_open_blobs_opens_what_the_sealer_seals(native_seal, blobs, pad: int) -> None:
    envs = []
    for plain, kind, use_dict, compress, context in blobs:
        env = SEALER.seal(kind, plain, context, compress=compress,
                          dictionary=DICT if use_dict else None)
        envs.append((env, kind, context, plain))
    data, items = _opening(envs)
    data = bytes(pad) + data  # a range starts anywhere in its pack
    items = [(o + pad, *rest) for o, *rest in items]
    got = SEALER.open_blobs(memoryview(data), items, ID_KEY, [DICT])
    assert got == [plain for _, _, _, plain in envs]
    assert SEALER.check_blobs(memoryview(data), items, ID_KEY, [DICT]) == b"\x01" * len(items)


def test_open_blobs_leaves_anything_wrong_or_unknown_to_the_sealer(native_seal) -> None:
    plain = source_file(random.Random(3), 80)
    good = SEALER.seal(Kind.DATA, plain, b"ctx", dictionary=DICT)
    assert peek_header(good)[2] == Compression.ZSTD_DICT
    flipped = bytearray(good)
    flipped[30] ^= 1
    other_dict = Dictionary(b"othertag", DICT.data)
    cases = {
        "good": (good, Kind.DATA, b"ctx", plain),
        "damaged": (bytes(flipped), Kind.DATA, b"ctx", plain),
        "other context": (good, Kind.DATA, b"other", plain),
        "other kind": (good, Kind.TREE, b"ctx", plain),
        "unknown dictionary": (SEALER.seal(Kind.DATA, plain, b"ctx", dictionary=other_dict),
                               Kind.DATA, b"ctx", plain),
        "truncated": (good[:10], Kind.DATA, b"ctx", plain),
        "dictionary in version 1": (_handmade(1, 2, DICT.tag + zstandard.ZstdCompressor(
            dict_data=zstandard.ZstdCompressionDict(DICT.data), write_dict_id=False).compress(plain)),
            Kind.DATA, b"", plain),
    }
    data, items = _opening(list(cases.values()))
    wrong_id = list(items[0])
    wrong_id[5] = bytes(32)
    wrong_length = list(items[0])
    wrong_length[4] -= 1
    items += [tuple(wrong_id), tuple(wrong_length)]  # type: ignore[list-item]
    got = SEALER.open_blobs(data, items, ID_KEY, [DICT])
    assert got == [plain] + [None] * (len(items) - 1)
    assert SEALER.check_blobs(data, items, ID_KEY, [DICT]) == b"\x01" + bytes(len(items) - 1)
    # What it left, the sealer opens or names the error of.
    assert SEALER.open(Kind.DATA, data[items[0][0]:][:items[0][1]], b"ctx", name="x") == plain
    with pytest.raises(CorruptObject, match="authentication failed"):
        SEALER.open(Kind.DATA, bytes(flipped), b"ctx", name="x")
    # Without the dictionaries it needs, none of the dictionary envelopes opens.
    assert SEALER.open_blobs(data, items[:1], ID_KEY, []) == [None]


def test_open_blobs_refuses_bad_arguments_with_a_clear_error(native_seal) -> None:
    assert batch.open_blobs is not None
    env = SEALER.seal(Kind.DATA, b"x" * 100, b"")
    item = (0, len(env), int(Kind.DATA), b"", 100, bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        batch.open_blobs(KEY[:16], ID_KEY, env, [item], [])
    with pytest.raises(ValueError, match="outside the data"):
        batch.open_blobs(KEY, ID_KEY, env, [(1, len(env), *item[2:])], [])
    with pytest.raises(ValueError, match="8 bytes"):
        batch.open_blobs(KEY, ID_KEY, env, [item], [(b"short", DICT.native_reading())])
    with pytest.raises(TypeError):
        batch.open_blobs(KEY, ID_KEY, env, [item], [(DICT.tag, object())])
    with pytest.raises(ValueError, match="bad context"):
        batch.open_blobs(KEY, ID_KEY, env, [(*item[:3], b"c" * 65, *item[4:])], [])


def test_a_repository_opens_a_range_of_its_blobs_as_it_loads_them(native_seal) -> None:
    repo = small_repo()
    files = source_files(7, 200)
    ids = [repo.save_blob(BlobType.DATA, f)[0] for f in files]
    repo.flush()
    locs = sorted((repo.lookup(BlobType.DATA, i) for i in ids), key=lambda loc: (loc.pack_id, loc.offset))
    pack = locs[0].pack_id
    mine = [loc for loc in locs if loc.pack_id == pack]
    start = mine[0].offset
    end = max(loc.offset + loc.length for loc in mine)
    data = repo.read_pack_range(pack, start, end - start)
    got = repo.open_blobs(memoryview(data), start, mine)
    assert got == [repo.load_blob(BlobType.DATA, loc.id) for loc in mine]
    assert repo.dictionaries.loaded()  # the writer's dictionary, sealed into most of them
    # Another process, which has loaded no dictionary yet, loads them first.
    other = Repository.open(repo.backend, PASSWORD)
    assert not other.dictionaries.loaded()
    assert other.open_blobs(memoryview(data), start, mine) == got
