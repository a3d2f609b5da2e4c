"""Compression dictionaries: the envelope layout, and how writers train, store and use them."""

from __future__ import annotations

import os
import random
import threading

import blake3
import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from resurgo.backend import layout
from resurgo.backend.memory import MemoryBackend
from resurgo.errors import CorruptObject
from resurgo.ops.check import check_repository
from resurgo.repo import BlobType, Repository
from resurgo.repo.crypto import (
    DICT_TAG_LEN,
    FORMAT_VERSION,
    FORMAT_VERSION_DICT,
    OVERHEAD,
    Compression,
    Dictionary,
    Kind,
    Sealer,
    peek_header,
)
from resurgo.repo.dictionary import DictionaryStore, train

from .helpers import (
    PASSWORD,
    QUICK,
    FailPutsUnder,
    RecordingBackend,
    blobs_of,
    keys_under,
    new_repo,
)

KEY = bytes(range(32))
_r = random.Random(3)
_WORDS = ["".join(_r.choice("abcdefghijklmnop") for _ in range(_r.randrange(3, 9))) for _ in range(300)]
LINES = [f"    {_r.choice(_WORDS)} = {_r.choice(_WORDS)}({_r.choice(_WORDS)}, {i})\n".encode()
         for i in range(400)]


def source_file(r: random.Random, lines: int = 40) -> bytes:
    """Code-like text: lines drawn from one shared pool, as files of one project share idioms."""
    return b"".join(r.choice(LINES) for _ in range(lines))


def source_files(seed: int, count: int) -> list[bytes]:
    r = random.Random(seed)
    return [source_file(r, r.randrange(20, 80)) for _ in range(count)]


_TRAINED = train(source_files(1, 400), 3)
assert _TRAINED is not None
DICT = Dictionary(b"tag-8byt", _TRAINED)
SEALER = Sealer(KEY, 3, dictionaries=lambda tag: DICT if tag == DICT.tag else _missing(tag))


def _missing(tag: bytes) -> Dictionary:
    raise CorruptObject(f"dictionary {tag.hex()}", "not found")


def small_repo(backend: MemoryBackend | RecordingBackend | FailPutsUnder | None = None) -> Repository:
    repo = new_repo(backend if backend is not None else MemoryBackend())
    repo.dictionaries.sample_bytes = 32 << 10  # tests train on 32 KiB, not 2 MiB
    return repo


# -- the envelope -----------------------------------------------------------------

any_data = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda s, n: source_file(random.Random(s), n), st.integers(0, 10**6), st.integers(1, 200)),
)


@QUICK
@given(kind=st.sampled_from([k for k in Kind if k != Kind.DICT]), data=any_data, context=st.binary(max_size=40))
def test_envelope_sealed_with_a_dictionary_opens_to_the_same_plaintext(
    kind: Kind, data: bytes, context: bytes
) -> None:
    env = SEALER.seal(kind, data, context, dictionary=DICT)
    assert SEALER.open(kind, env, context, name="x") == data
    version, _, comp, _ = peek_header(env)
    # Version 2 exactly when the body needs the dictionary.
    assert (version, comp) in ((FORMAT_VERSION, Compression.NONE), (FORMAT_VERSION_DICT, Compression.ZSTD_DICT))
    if comp == Compression.NONE:
        assert len(env) == len(data) + OVERHEAD


@QUICK
@given(seed=st.integers(0, 10**6), lines=st.integers(5, 300), context=st.binary(max_size=40))
def test_dictionary_body_is_the_tag_then_a_zstd_frame_of_the_plaintext(
    seed: int, lines: int, context: bytes
) -> None:
    # docs/format.md section 4: body = tag (8) || zstd frame made with the dictionary.
    data = source_file(random.Random(seed), lines)
    env = SEALER.seal(Kind.DATA, data, context, dictionary=DICT)
    assert env[:4] == bytes([2, 1, 2, Kind.DATA])
    body = AESGCM(KEY).decrypt(env[4:16], env[16:], env[:4] + context)
    assert body[:DICT_TAG_LEN] == DICT.tag
    params = zstandard.get_frame_parameters(body[DICT_TAG_LEN:])
    assert params.content_size == len(data)
    assert params.dict_id == 0  # the tag names the dictionary, not the frame
    d = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(_TRAINED))
    assert d.decompress(body[DICT_TAG_LEN:]) == data


def test_dictionary_makes_small_similar_files_much_smaller() -> None:
    files = source_files(2, 200)
    plain = sum(len(SEALER.seal(Kind.DATA, f)) for f in files)
    with_dict = sum(len(SEALER.seal(Kind.DATA, f, dictionary=DICT)) for f in files)
    assert with_dict < plain * 0.7


def test_unknown_dictionary_tag_is_damage() -> None:
    env = SEALER.seal(Kind.DATA, source_file(random.Random(1)), dictionary=Dictionary(b"other-tg", _TRAINED))
    with pytest.raises(CorruptObject, match="not found"):
        SEALER.open(Kind.DATA, env, name="x")
    with pytest.raises(CorruptObject, match="needs a dictionary"):
        Sealer(KEY, 3).open(Kind.DATA, env, name="x")


def _handmade(version: int, comp: int, body: bytes) -> bytes:
    header = bytes([version, 1, comp, Kind.DATA])
    nonce = os.urandom(12)
    return header + nonce + AESGCM(KEY).encrypt(nonce, body, header)


def test_dictionary_compression_in_a_version_1_envelope_is_damage() -> None:
    frame = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(_TRAINED),
                                     write_dict_id=False).compress(LINES[0] * 3)
    assert SEALER.open(Kind.DATA, _handmade(2, 2, DICT.tag + frame), name="x") == LINES[0] * 3
    with pytest.raises(CorruptObject, match="unknown compression"):
        SEALER.open(Kind.DATA, _handmade(1, 2, DICT.tag + frame), name="x")
    with pytest.raises(CorruptObject, match="too short"):
        SEALER.open(Kind.DATA, _handmade(2, 2, b"short"), name="x")
    with pytest.raises(CorruptObject, match="bad compressed data"):
        SEALER.open(Kind.DATA, _handmade(2, 2, DICT.tag + b"not a frame"), name="x")


def test_training_refuses_samples_a_dictionary_does_not_help() -> None:
    assert train(blobs_of(1, 300), 3) is None  # random
    assert train(source_files(1, 5), 3) is None  # too few samples
    assert train(source_files(1, 400), 0) is None  # compression off


# -- writers and readers ------------------------------------------------------------


def test_writer_trains_a_dictionary_from_its_first_small_blobs_and_stores_it_first() -> None:
    backend = RecordingBackend(MemoryBackend())
    repo = small_repo(backend)
    files = source_files(3, 300)
    ids = [repo.save_blob(BlobType.DATA, f)[0] for f in files]
    repo.flush()
    (dict_key,) = keys_under(backend, layout.DICTS)
    writes = [k for v, k in backend.writes() if v == "put-start"]
    # The dictionary is durable before the first pack (every one may need it).
    first_pack = next(i for i, k in enumerate(writes) if k.startswith(layout.DATA))
    assert [v for v, k in backend.writes() if k == dict_key] == ["put-start", "put-done"]
    assert writes.index(dict_key) < first_pack
    assert backend.writes().index(("put-done", dict_key)) < backend.writes().index(("put-start", writes[first_pack]))
    # Every blob, the kept-back samples included, uses it.
    tag = layout.name_of(dict_key)[:16]
    for bid in ids:
        loc = repo.lookup(BlobType.DATA, bid)
        assert loc is not None
        env = repo.read_pack_range(loc.pack_id, loc.offset, loc.length)
        assert peek_header(env)[:3] == (FORMAT_VERSION_DICT, 1, Compression.ZSTD_DICT)
        body = AESGCM(repo._master.encrypt).decrypt(env[4:16], env[16:], env[:4] + b"\0" + bid)
        assert body[:8].hex() == tag
    # A fresh reader finds the dictionary by its tag.
    fresh = Repository.open(backend.inner, PASSWORD)
    assert [fresh.load_blob(BlobType.DATA, bid) for bid in ids] == files
    assert check_repository(fresh, read_all_data=True).ok


def test_second_writer_uses_the_stored_dictionary_without_training() -> None:
    backend = MemoryBackend()
    repo = small_repo(backend)
    for f in source_files(4, 300):
        repo.save_blob(BlobType.DATA, f)
    repo.flush()
    before = keys_under(backend, layout.DICTS)
    second = Repository.open(backend, PASSWORD)
    files = source_files(5, 50)
    ids = [second.save_blob(BlobType.DATA, f)[0] for f in files]
    second.flush()
    assert keys_under(backend, layout.DICTS) == before
    for bid in ids:  # sealed with it at once: nothing kept back
        loc = second.lookup(BlobType.DATA, bid)
        assert loc is not None
        env = second.read_pack_range(loc.pack_id, loc.offset, loc.length)
        assert peek_header(env)[2] == Compression.ZSTD_DICT
    assert [Repository.open(backend, PASSWORD).load_blob(BlobType.DATA, b) for b in ids] == files


def test_incompressible_blobs_are_never_kept_back() -> None:
    backend = RecordingBackend(MemoryBackend())
    repo = small_repo(backend)
    for b in blobs_of(6, 100):
        repo.save_blob(BlobType.DATA, b)
    # Packs went out as they filled (64 KiB test packs), before any flush.
    assert backend.count("put-done", layout.DATA) >= 2
    assert keys_under(backend, layout.DICTS) == []


def test_flush_before_a_full_sample_seals_without_a_dictionary() -> None:
    backend = MemoryBackend()
    repo = small_repo(backend)
    files = source_files(7, 10)
    ids = [repo.save_blob(BlobType.DATA, f)[0] for f in files]
    assert keys_under(backend, layout.DATA) == []  # kept back
    repo.flush()
    assert keys_under(backend, layout.DICTS) == []
    assert [repo.load_blob(BlobType.DATA, b) for b in ids] == files
    for bid in ids:
        loc = repo.lookup(BlobType.DATA, bid)
        assert loc is not None
        assert peek_header(repo.read_pack_range(loc.pack_id, loc.offset, loc.length))[2] == Compression.ZSTD


def test_a_failed_dictionary_upload_stores_the_blobs_without_one() -> None:
    backend = MemoryBackend()
    repo = small_repo(FailPutsUnder(backend, layout.DICTS))
    files = source_files(8, 300)
    ids = [repo.save_blob(BlobType.DATA, f)[0] for f in files]
    repo.flush()
    assert keys_under(backend, layout.DICTS) == []
    fresh = Repository.open(backend, PASSWORD)
    assert [fresh.load_blob(BlobType.DATA, b) for b in ids] == files


def test_check_reports_a_damaged_dictionary_and_the_blobs_that_need_it() -> None:
    backend = MemoryBackend()
    repo = small_repo(backend)
    for f in source_files(9, 300):
        repo.save_blob(BlobType.DATA, f)
    repo.flush()
    (key,) = keys_under(backend, layout.DICTS)
    raw = bytearray(backend.get(key))
    raw[40] ^= 1
    backend.put(key, bytes(raw))
    report = check_repository(Repository.open(backend, PASSWORD), read_all_data=True)
    kinds = {p.kind for p in report.problems}
    assert "corrupt-dictionary" in kinds
    assert any(p.object == key for p in report.problems)
    assert len(kinds) > 1  # the blobs compressed with it cannot be read either
    backend.delete(key)
    with pytest.raises(CorruptObject, match="not found"):
        fresh = Repository.open(backend, PASSWORD)
        for loc in fresh.index.entries():
            fresh.load_blob(loc.type, loc.id)


def test_two_dictionaries_with_one_tag_are_damage() -> None:
    backend = MemoryBackend()
    repo = small_repo(backend)
    store = DictionaryStore(backend)
    store.bind(repo.sealer())
    env = repo.sealer().seal(Kind.DICT, _TRAINED)
    name = blake3.blake3(env).hexdigest()
    backend.put(layout.DICTS + name, env)
    backend.put(layout.DICTS + name[:16] + "0" * 48, env)
    with pytest.raises(CorruptObject, match="several"):
        store.resolve(bytes.fromhex(name[:16]))


def test_writers_threads_racing_through_training_store_every_blob_once() -> None:
    backend = MemoryBackend()
    repo = small_repo(backend)
    files = source_files(10, 800)
    ids: list[bytes] = [b""] * len(files)

    def work(k: int) -> None:
        for i in range(k, len(files), 4):
            ids[i] = repo.save_blob(BlobType.DATA, files[i])[0]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    repo.flush()
    assert len(keys_under(backend, layout.DICTS)) == 1
    fresh = Repository.open(backend, PASSWORD)
    assert len(fresh.index) == len(set(ids))
    assert [fresh.load_blob(BlobType.DATA, b) for b in ids] == files
