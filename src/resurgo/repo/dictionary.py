"""Compression dictionaries: trained from a writer's first small blobs, stored as ``dicts/<id>``.

A *dictionary* is a zstd dictionary (RFC 8878, section 5) kept in the
repository as an envelope of kind DICT under ``dicts/<hex BLAKE3 of the
envelope>``. Data blobs compressed with it name it by its *tag*, the first 8
bytes of that name (docs/format.md, sections 4 and 10).

Why: zstd learns nothing useful from a few kilobytes, so small files (source
trees, configuration, mail) compress poorly one by one; a dictionary primes
every frame with the text such files share. On the benchmark's 20,000 source
files it halves what they store, for little CPU (docs/benchmarks.md).

Writer policy (not format; readers accept any dictionary an envelope names):

* At its first data blob a writer lists ``dicts/`` and uses the dictionary
  with the smallest name it can load, so writers converge on one dictionary.
* If there is none, it keeps back its first small data blobs (at most
  ``SAMPLE_MAX`` bytes each, and only those zstd alone shrinks by at least
  1/16) until it holds ``SAMPLE_BYTES`` of them, trains a dictionary on them,
  and keeps it only if it compresses samples it was not trained on at least
  ``MIN_GAIN`` better than zstd alone (``train``). The dictionary is stored, durably,
  before any blob that needs it is sealed; then the kept-back blobs and every
  later small data blob are sealed with it (small blobs saved during the
  training wait for it). Blobs larger than ``SAMPLE_MAX`` are never kept back
  and never use the dictionary: a dictionary trained on small files gains a
  few percent on large chunks, for zstd's slower dictionary path and a
  megabyte-sized context per compressing thread (docs/benchmarks.md). A
  writer that flushes with less than a full sample seals what it kept back
  without a dictionary.
* Dictionaries are never deleted (prune leaves ``dicts/`` alone): a
  repository holds one, or a few if several writers started at once.
"""

from __future__ import annotations

import threading

import blake3
import zstandard

from resurgo.backend import Backend, layout
from resurgo.errors import BackendError, CorruptObject, ObjectNotFound, UnsupportedVersion
from resurgo.repo.crypto import DICT_TAG_LEN, SMALL_BLOB, Dictionary, Kind, Sealer, dictionary_level

SAMPLE_MAX = SMALL_BLOB
SAMPLE_BYTES = 2 << 20
DICT_SIZE = 1 << 20
MIN_GAIN = 0.10
# Fewer samples than this and zstd's trainer has too little to go on.
MIN_SAMPLES = 16

_UNKNOWN, _COLLECTING, _TRAINING, _READY, _OFF = range(5)

Batch = list[tuple[bytes, bytes | memoryview]]


def train(samples: list[bytes], level: int, *, size: int = DICT_SIZE) -> bytes | None:
    """A dictionary for data like ``samples``, or None if it would not pay for itself.

    FastCOVER with fixed parameters (one pass, ~0.1 s for 2 MiB) rather than
    zstd's parameter search (~20 s): on the benchmark's source files the search
    gains ~1 % more. Whether it helps is judged on every fourth sample with a
    dictionary trained on the others (a dictionary always compresses its own
    training data well); if it does, the one kept is trained on all of them.
    """
    if len(samples) < MIN_SAMPLES or level <= 0:
        return None
    held_out = samples[3::4]
    trial = _train([s for i, s in enumerate(samples) if i % 4 != 3], level, size)
    if trial is None:
        return None
    plain = _stored(zstandard.ZstdCompressor(level=level), held_out, 0)
    d = Dictionary(bytes(DICT_TAG_LEN), trial)
    # Samples are at most SAMPLE_MAX (= SMALL_BLOB): judged as the writer seals them.
    with_dict = _stored(d.compressor(dictionary_level(level)), held_out, DICT_TAG_LEN)
    if with_dict > plain * (1 - MIN_GAIN):
        return None
    return _train(samples, level, size)


def _stored(c: zstandard.ZstdCompressor, samples: list[bytes], overhead: int) -> int:
    """What ``samples`` would store compressed with ``c`` (raw where that is smaller).

    One call for all of them: a writer trains while its other threads run, and
    a call per sample would wait for the GIL after each one (the training of
    the benchmark's first 2 MiB took 0.8 s instead of 0.15 s).
    """
    buffers: list[bytes | bytearray | memoryview] = list(samples)
    frames = c.multi_compress_to_buffer(buffers, threads=1)
    return sum(min(len(frames[i]) + overhead, len(s)) for i, s in enumerate(samples))


def _train(samples: list[bytes], level: int, size: int) -> bytes | None:
    buffers: list[bytes | bytearray | memoryview] = list(samples)
    try:
        trained = zstandard.train_dictionary(
            min(size, max(4096, sum(map(len, samples)) // 2)), buffers,
            k=1024, d=8, f=18, accel=1, steps=0, threads=1, level=level,
        )
    except zstandard.ZstdError:
        return None  # e.g. samples too uniform or too few to learn from
    return trained.as_bytes()


class DictionaryStore:
    """The repository's dictionaries: found by tag for readers, chosen or trained for writers.

    Thread-safe. ``bind`` must be called with the repository's sealer before
    use (the sealer in turn resolves tags through ``resolve``).
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._sealer: Sealer | None = None
        self._loaded: dict[bytes, Dictionary] = {}
        self._load_lock = threading.Lock()
        self._names: list[str] | None = None
        self._all_tried = False
        # Writer state.
        self._cond = threading.Condition()
        self._state = _UNKNOWN
        self._writing: Dictionary | None = None
        self._samples: Batch = []
        self._sample_bytes = 0
        self.sample_bytes = SAMPLE_BYTES
        self.sample_max = SAMPLE_MAX

    def bind(self, sealer: Sealer) -> None:
        self._sealer = sealer

    # -- reading -----------------------------------------------------------------

    def names(self, *, refresh: bool = False) -> list[str]:
        """Names of the dictionaries in the repository, sorted."""
        if self._names is None or refresh:
            self._names = sorted(layout.name_of(o.key) for o in self._backend.list(layout.DICTS))
        return self._names

    def load(self, name: str) -> Dictionary:
        """Fetch, verify and open ``dicts/<name>``. Raises CorruptObject if damaged or missing."""
        assert self._sealer is not None
        key = layout.DICTS + name
        try:
            env = self._backend.get(key)
        except ObjectNotFound:
            raise CorruptObject(key, "dictionary not found")
        if blake3.blake3(env).hexdigest() != name:
            raise CorruptObject(key, "content does not match its name (hash mismatch)")
        data = self._sealer.open(Kind.DICT, env, name=key)
        return Dictionary(bytes.fromhex(name[: 2 * DICT_TAG_LEN]), data)

    def resolve(self, tag: bytes) -> Dictionary:
        """The dictionary an envelope names by ``tag``; raises CorruptObject if none or several."""
        d = self._loaded.get(tag)
        if d is not None:
            return d
        with self._load_lock:
            d = self._loaded.get(tag)
            if d is not None:
                return d
            prefix = tag.hex()
            found = [n for n in self.names() if n.startswith(prefix)]
            if not found:  # written by another writer since we listed
                found = [n for n in self.names(refresh=True) if n.startswith(prefix)]
            if not found:
                raise CorruptObject(f"dictionary {prefix}", "not found in the repository")
            if len(found) > 1:
                raise CorruptObject(f"dictionary {prefix}", "several dictionaries have this tag")
            d = self._loaded[tag] = self.load(found[0])
            return d

    def loaded(self) -> list[Dictionary]:
        """The dictionaries loaded so far (by ``resolve``, or made by this writer)."""
        return list(self._loaded.values())

    def for_reading(self) -> list[Dictionary]:
        """Every dictionary of the repository that loads, for a reader about to open
        many blobs (restore, check --read-data): listed and loaded on the first
        call. One that fails to load is left out; opening a blob that names it
        then reports why (``resolve``)."""
        if not self._all_tried:
            try:
                names = self.names()
            except BackendError:
                names = []  # opening a blob that needs one reports the error
            for name in names:
                try:
                    self.resolve(bytes.fromhex(name[: 2 * DICT_TAG_LEN]))
                except (CorruptObject, UnsupportedVersion, ValueError):
                    continue
            self._all_tried = True
        return self.loaded()

    def verify(self) -> dict[str, str]:
        """Every dictionary that fails to load: {name: error} (for check)."""
        problems: dict[str, str] = {}
        for name in self.names(refresh=True):
            try:
                self.load(name)
            except (CorruptObject, UnsupportedVersion) as e:
                problems[name] = str(e)
        return problems

    # -- writing -----------------------------------------------------------------

    def admit(self, blob_id: bytes, data: bytes | memoryview) -> tuple[Dictionary | None, Batch] | None:
        """How to seal a new data blob: (dictionary or None, blobs to seal with it).

        None means the blob is kept back as a training sample; it comes out
        of a later call, or of ``release``. The batch holds the blob itself,
        plus, once training ends, the blobs kept back.
        """
        if len(data) > self.sample_max:
            return None, [(blob_id, data)]
        with self._cond:
            if self._state == _READY:
                return self._writing, [(blob_id, data)]
            if self._state == _UNKNOWN:
                self._start()
            if self._state in (_READY, _OFF):
                return self._writing, [(blob_id, data)]
        # Collecting (or training): judge the blob outside the lock.
        worth = self._worth_keeping(data)
        with self._cond:
            # While the dictionary is trained, a small blob that would use it
            # waits for it (a fraction of a second, the other cores busy with
            # the large files), rather than being copied and kept back: that
            # cost megabytes of copies, then sealing them all on one thread.
            while worth and self._state == _TRAINING:
                self._cond.wait()
            if not worth or self._state in (_READY, _OFF):
                return self._writing, [(blob_id, data)]
            keep = bytes(data)
            self._samples.append((blob_id, keep))
            self._sample_bytes += len(keep)
            if self._sample_bytes < self.sample_bytes:
                return None
            self._state = _TRAINING
            batch, self._samples, self._sample_bytes = self._samples, [], 0
        dictionary: Dictionary | None = None
        try:
            dictionary = self._train_and_store([bytes(d) for _, d in batch])
        finally:
            with self._cond:
                self._state = _READY if dictionary is not None else _OFF
                self._writing = dictionary
                self._cond.notify_all()
        return dictionary, batch

    def settled(self) -> tuple[Dictionary | None] | None:
        """``(dictionary,)`` once this writer's choice is made (``dictionary`` for
        the blobs up to ``sample_max`` bytes, None for none); None while it is
        still to be made, when each blob must go through ``admit``."""
        with self._cond:
            if self._state in (_READY, _OFF):
                return (self._writing,)
        return None

    def release(self) -> tuple[Dictionary | None, Batch]:
        """The blobs kept back, with the dictionary to seal them with (at flush)."""
        with self._cond:
            while self._state == _TRAINING:
                self._cond.wait()
            batch, self._samples, self._sample_bytes = self._samples, [], 0
            return self._writing, batch

    def _worth_keeping(self, data: bytes | memoryview) -> bool:
        """Whether a small blob compresses on its own (else a dictionary will not help it)."""
        assert self._sealer is not None
        n = len(data)
        return n > 64 and len(self._sealer.compress(data)) < n - n // 16

    def _start(self) -> None:
        """First data blob of this writer: use a stored dictionary, or start collecting."""
        assert self._sealer is not None
        if self._sealer.compression_level <= 0:
            self._state = _OFF
            return
        for name in self.names(refresh=True):
            try:
                d = self.load(name)
            except (CorruptObject, UnsupportedVersion):
                continue  # check reports it; another one, or a new one, will do
            with self._load_lock:
                d = self._loaded.setdefault(d.tag, d)
            self._writing = d
            self._state = _READY
            return
        self._state = _COLLECTING

    def _train_and_store(self, samples: list[bytes]) -> Dictionary | None:
        assert self._sealer is not None
        data = train(samples, self._sealer.compression_level)
        if data is None:
            return None
        env = self._sealer.seal(Kind.DICT, data)
        name = blake3.blake3(env).hexdigest()
        tag = bytes.fromhex(name[: 2 * DICT_TAG_LEN])
        try:
            if any(n.startswith(name[: 2 * DICT_TAG_LEN]) for n in self.names(refresh=True)):
                return None  # a tag must name one dictionary (never seen in practice: 2^-64)
            # Durable before any blob sealed with it can reach a pack.
            self._backend.put(layout.DICTS + name, env)
        except BackendError:
            # Not worth failing a backup for: the blobs are sealed without a
            # dictionary, and a broken backend shows up at the next pack.
            return None
        d = Dictionary(tag, data)
        with self._load_lock:
            self._loaded[tag] = d
            if self._names is not None:
                self._names = sorted([*self._names, name])
        return d
