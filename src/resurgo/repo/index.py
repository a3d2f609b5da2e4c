"""The index: where each blob lives (pack, offset, length) and how big it is.

*Index objects* (``index/<id>``) are written by each writer after the packs they
describe; writers never rewrite each other's. Plaintext layout (all integers
little-endian)::

    magic "RIX1" | u32 n_packs | u32 n_entries | u32 n_supersedes
    n_packs      x pack ID (32 bytes)
    n_supersedes x index object ID (32 bytes) this object replaces (compaction)
    n_entries    x entry (52 bytes): blob ID 32 | pack number u32 (into the pack
                   list above) | offset u32 | length u32 | raw length u32 |
                   type u8 | 3 zero bytes

In memory, ``MemoryIndex`` keeps all entries as a struct of NumPy arrays sorted
by blob ID (49 bytes per blob plus 32 per pack) with a small dict in front for
entries added since the last merge. Lookups binary-search the sorted IDs.
"""

from __future__ import annotations

import struct
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

from resurgo.errors import CorruptObject
from resurgo.repo.lazynumpy import loaded as _np_loaded
from resurgo.repo.lazynumpy import numpy as _np

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"RIX1"
_HEAD = struct.Struct("<4sIII")
_ENTRY = struct.Struct("<32sIIIIB3x")  # one entry of an index object (entry_dtype)
# Lookups on an index loaded from the cache do not need NumPy (see
# MemoryIndex.load); it is imported when one is first needed. A command that
# only reads a few trees (a backup with nothing changed, `snapshots`) never
# pays its import, ~65 ms of CPU warm and ~0.1 s cold (0.23 s, stalling every
# thread, in a cold incremental backup). A lookup without it bisects every
# row, ~6 us: 4,096 of them cost less than the import, and an incremental
# backup of the benchmark's 1 % change makes ~1,100.
_LAZY_LOOKUPS = 4096
# ``lookup_many`` searches the arrays with NumPy from this many IDs on.
_MANY_LOOKUPS = 64
# ``dump`` splices up to this many added entries into a loaded index's columns
# in Python; more are merged with NumPy.
_LAZY_MERGE = 4096


@cache
def entry_dtype() -> np.dtype:
    """The dtype of an index object's entries (52 bytes)."""
    np = _np()
    dt = np.dtype(
        [
            ("id", "S32"),
            ("pack", "<u4"),
            ("offset", "<u4"),
            ("length", "<u4"),
            ("raw", "<u4"),
            ("type", "u1"),
            ("pad", "V3"),
        ]
    )
    assert dt.itemsize == 52
    return dt


def __getattr__(name: str) -> Any:
    # ``ENTRY_DTYPE`` stays importable without importing NumPy with this module.
    if name == "ENTRY_DTYPE":
        return entry_dtype()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True, slots=True)
class BlobLocation:
    type: int
    id: bytes
    pack_id: bytes  # 32 raw bytes
    offset: int
    length: int
    raw_length: int

    @property
    def pack_hex(self) -> str:
        return self.pack_id.hex()


def padded_id(item: bytes) -> bytes:
    """A blob ID read back from an ``S32`` column: NumPy drops its trailing NUL bytes."""
    item = bytes(item)
    return item if len(item) == 32 else item.ljust(32, b"\0")


def encode_index(
    packs: dict[bytes, list[tuple[int, bytes, int, int, int]]], supersedes: Iterable[bytes] = ()
) -> bytes:
    """``packs`` maps pack ID -> [(type, blob id, offset, length, raw length)]."""
    sup = list(supersedes)
    pack_ids = list(packs)
    n = sum(len(v) for v in packs.values())
    # Packed with struct, not NumPy: a writer encodes each index object it
    # writes, and one that saved a few trees should not import NumPy for it.
    out = bytearray(_ENTRY.size * n)
    pos = 0
    for pno, pid in enumerate(pack_ids):
        for t, bid, off, length, raw in packs[pid]:
            _ENTRY.pack_into(out, pos, bid, pno, off, length, raw, t)
            pos += _ENTRY.size
    return b"".join([_HEAD.pack(MAGIC, len(pack_ids), n, len(sup)), *pack_ids, *sup, out])


def encode_index_arrays(
    pack_ids: list[bytes], entries: np.ndarray, supersedes: Iterable[bytes] = ()
) -> bytes:
    """Like ``encode_index``, from an ``ENTRY_DTYPE`` array whose "pack" field
    numbers ``pack_ids`` (prune and repair rewrite large indexes this way)."""
    sup = list(supersedes)
    arr = _np().ascontiguousarray(entries, dtype=entry_dtype())
    if len(arr) and int(arr["pack"].max()) >= len(pack_ids):
        raise ValueError("index entry refers to a pack outside the table")
    return b"".join(
        [_HEAD.pack(MAGIC, len(pack_ids), len(arr), len(sup)), *pack_ids, *sup, arr.tobytes()]
    )


@dataclass
class DecodedIndex:
    pack_ids: list[bytes]
    supersedes: list[bytes]
    entries: np.ndarray  # ENTRY_DTYPE, "pack" indexes pack_ids


def decode_index(data: bytes, *, name: str) -> DecodedIndex:
    if len(data) < _HEAD.size:
        raise CorruptObject(name, "index too short")
    magic, n_packs, n_entries, n_sup = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptObject(name, "not an index object")
    pos = _HEAD.size
    need = pos + 32 * (n_packs + n_sup) + 52 * n_entries
    if len(data) != need:
        raise CorruptObject(name, "index length does not match its counts")
    pack_ids = [data[pos + 32 * i : pos + 32 * (i + 1)] for i in range(n_packs)]
    pos += 32 * n_packs
    sup = [data[pos + 32 * i : pos + 32 * (i + 1)] for i in range(n_sup)]
    pos += 32 * n_sup
    entries = _np().frombuffer(data, dtype=entry_dtype(), count=n_entries, offset=pos)
    if n_entries and int(entries["pack"].max()) >= n_packs:
        raise CorruptObject(name, "index entry refers to a pack outside its table")
    return DecodedIndex(pack_ids, sup, entries)


class IndexArrays(NamedTuple):
    ids: np.ndarray  # S32, sorted
    pack: np.ndarray  # u4, row -> number in ``packs``
    offset: np.ndarray
    length: np.ndarray
    raw: np.ndarray
    type: np.ndarray  # u1
    packs: list[bytes]


class MemoryIndex:
    """All known blob locations. Thread-safe.

    Layout: ``_ids`` (S32, sorted), ``_pack`` (u4 into ``_packs``), ``_off``,
    ``_len``, ``_raw`` (u4) and ``_type`` (u1): 49 bytes per blob. New entries
    go to ``_recent`` and are merged into the arrays in batches, so adding is
    O(1) and the sorted arrays are rebuilt rarely.
    """

    MERGE_AT = 65536
    _ARRAYS = frozenset({"_ids", "_pack", "_off", "_len", "_raw", "_type"})

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._packs: list[bytes] = []
        self._pack_no: dict[bytes, int] = {}
        self._recent: dict[tuple[int, bytes], tuple[int, int, int, int]] = {}
        self._set_columns(memoryview(b""), 0, 0)

    def _set_columns(self, buf: memoryview, pos: int, n: int) -> None:
        """Serve lookups from ``n`` dumped rows at ``pos`` of ``buf`` (as
        ``dump`` lays them out), read through memoryviews; the NumPy arrays
        (``_ids`` ... ``_type``) and the prefix table are made when first
        needed (``_materialize``)."""
        self._lazy: tuple[memoryview, int, int] | None = (buf, pos, n)
        self._lazy_lookups = 0
        self._n = n
        self._bucket: memoryview | None = None
        self._id_mv = buf[pos : pos + 32 * n]
        pos += 32 * n
        self._pack_mv = buf[pos : pos + 4 * n].cast("I")
        pos += 4 * n
        self._off_mv = buf[pos : pos + 4 * n].cast("I")
        pos += 4 * n
        self._len_mv = buf[pos : pos + 4 * n].cast("I")
        pos += 4 * n
        self._raw_mv = buf[pos : pos + 4 * n].cast("I")
        pos += 4 * n
        self._type_mv = buf[pos : pos + n]

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not set: the arrays of a loaded index
        # before its first use that needs them.
        if name in MemoryIndex._ARRAYS and self.__dict__.get("_lazy") is not None:
            with self._lock:
                self._materialize()
            return self.__dict__[name]
        raise AttributeError(name)

    def _materialize(self) -> None:
        """Read a loaded index's columns into (read-only) arrays. Caller holds the lock."""
        if self._lazy is None:
            return
        buf, pos, n = self._lazy
        np = _np()

        def take(dtype: str, size: int) -> Any:
            nonlocal pos
            a = np.frombuffer(buf, dtype=dtype, count=n, offset=pos)
            pos += size * n
            return a if a.flags.aligned else a.copy()

        self._ids = take("S32", 32)
        self._pack = take("<u4", 4)
        self._off = take("<u4", 4)
        self._len = take("<u4", 4)
        self._raw = take("<u4", 4)
        self._type = take("u1", 1)
        self._lazy = None
        self._refresh_views()

    def _refresh_views(self) -> None:
        """Rebuild the lookup helpers after the sorted arrays changed.

        ``_bucket[b]`` is the first row whose ID starts with the 16-bit prefix
        ``b``, so a lookup bisects only rows sharing its first two bytes, and
        memoryviews give Python-int access without NumPy's per-call overhead
        (a NumPy searchsorted per lookup costs tens of microseconds).
        """
        np = _np()
        self._n = len(self._ids)
        prefixes = (
            self._ids.view(np.uint8).reshape(-1, 32)[:, :2].astype(np.uint32) @ np.array([256, 1], np.uint32)
            if len(self._ids) else np.zeros(0, np.uint32)
        )
        self._bucket = np.searchsorted(prefixes, np.arange(65537, dtype=np.uint32)).astype(np.uint32).data
        self._id_mv = self._ids.view(np.uint8).data if len(self._ids) else memoryview(b"")
        self._pack_mv = self._pack.data
        self._off_mv = self._off.data
        self._len_mv = self._len.data
        self._raw_mv = self._raw.data
        self._type_mv = self._type.data

    # -- building ------------------------------------------------------------

    def _pack_number(self, pack_id: bytes) -> int:
        n = self._pack_no.get(pack_id)
        if n is None:
            n = len(self._packs)
            self._packs.append(pack_id)
            self._pack_no[pack_id] = n
        return n

    def add(self, blob_type: int, blob_id: bytes, pack_id: bytes, offset: int, length: int, raw: int) -> None:
        with self._lock:
            key = (blob_type, blob_id)
            if key in self._recent:
                return
            self._recent[key] = (self._pack_number(pack_id), offset, length, raw)
            if len(self._recent) >= self.MERGE_AT:
                self._merge_recent()

    def add_decoded(self, decoded: list[DecodedIndex]) -> None:
        """Bulk-add index objects' entries: one concatenation and one sort for all."""
        if not any(len(d.entries) for d in decoded):
            return
        with self._lock:
            np = _np()
            cols: dict[str, list[Any]] = {k: [] for k in ("id", "pack", "offset", "length", "raw", "type")}
            for d in decoded:
                if not len(d.entries):
                    continue
                mapping = np.array([self._pack_number(p) for p in d.pack_ids], dtype="<u4")
                e = d.entries
                cols["id"].append(e["id"])
                cols["pack"].append(mapping[e["pack"]])
                for k in ("offset", "length", "raw", "type"):
                    cols[k].append(e[k])
            if cols["id"]:
                self._extend(*(np.concatenate(cols[k]) for k in ("id", "pack", "offset", "length", "raw", "type")))

    def _extend(self, ids: np.ndarray, pack: np.ndarray, off: np.ndarray, ln: np.ndarray,
                raw: np.ndarray, typ: np.ndarray) -> None:
        if not len(ids):
            return
        np = _np()
        ids = np.concatenate([self._ids, ids.astype("S32")])
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]
        self._pack = np.concatenate([self._pack, pack.astype("<u4")])[order]
        self._off = np.concatenate([self._off, off.astype("<u4")])[order]
        self._len = np.concatenate([self._len, ln.astype("<u4")])[order]
        self._raw = np.concatenate([self._raw, raw.astype("<u4")])[order]
        self._type = np.concatenate([self._type, typ.astype("u1")])[order]
        self._refresh_views()

    def _merge_recent(self) -> None:
        if not self._recent:
            return
        items = list(self._recent.items())
        n = len(items)
        np = _np()
        ids = np.array([k[1] for k, _ in items], dtype="S32")
        typ = np.fromiter((k[0] for k, _ in items), dtype="u1", count=n)
        pack = np.fromiter((v[0] for _, v in items), dtype="<u4", count=n)
        off = np.fromiter((v[1] for _, v in items), dtype="<u4", count=n)
        ln = np.fromiter((v[2] for _, v in items), dtype="<u4", count=n)
        raw = np.fromiter((v[3] for _, v in items), dtype="<u4", count=n)
        self._extend(ids, pack, off, ln, raw, typ)
        self._recent = {}

    def compact(self) -> None:
        """Merge pending additions now (e.g. before saving the index cache)."""
        with self._lock:
            self._merge_recent()

    # -- queries ---------------------------------------------------------------

    def _row(self, blob_type: int, blob_id: bytes) -> int:
        """The sorted arrays' row of (type, ID), or -1. Caller holds the lock."""
        bucket = self._bucket
        if bucket is None and not self._n:
            return -1  # nothing loaded (a new repository): no arrays to make, no NumPy to import
        if bucket is None:
            # A loaded index not yet read into arrays: bisect all its rows
            # (~20 probes), until enough lookups make the prefix table pay,
            # or at once when NumPy is loaded anyway (restore, check).
            self._lazy_lookups += 1
            if self._lazy_lookups > _LAZY_LOOKUPS or _np_loaded():
                self._materialize()
                bucket = self._bucket
        if bucket is None:
            lo, hi = 0, self._n
        else:
            pfx = (blob_id[0] << 8) | blob_id[1]
            lo, hi = bucket[pfx], bucket[pfx + 1]
        mv = self._id_mv
        while lo < hi:
            mid = (lo + hi) // 2
            if mv[mid * 32 : mid * 32 + 32].tobytes() < blob_id:
                lo = mid + 1
            else:
                hi = mid
        types = self._type_mv
        n = len(types)
        # The same ID may be stored as a data and as a tree blob: adjacent rows.
        while lo < n and mv[lo * 32 : lo * 32 + 32] == blob_id:
            if types[lo] == blob_type:
                return lo
            lo += 1
        return -1

    def lookup(self, blob_type: int, blob_id: bytes) -> BlobLocation | None:
        with self._lock:
            r = self._recent.get((blob_type, blob_id))
            if r is not None:
                return BlobLocation(blob_type, blob_id, self._packs[r[0]], r[1], r[2], r[3])
            return self._at_row(blob_type, blob_id, self._row(blob_type, blob_id))

    def lookup_many(self, blob_type: int, blob_ids: list[bytes]) -> list[BlobLocation | None]:
        """``lookup`` of each of ``blob_ids``, in one NumPy search of the sorted
        arrays when NumPy is loaded and they are many: a restore looks up the
        blob of every file it writes (20,000 lookups: ~6 us each one by one)."""
        if len(blob_ids) < _MANY_LOOKUPS or not _np_loaded() or any(len(b) != 32 for b in blob_ids):
            return [self.lookup(blob_type, b) for b in blob_ids]
        np = _np()
        with self._lock:
            self._materialize()
            out: list[BlobLocation | None] = [None] * len(blob_ids)
            n = self._n
            if n:
                query = np.frombuffer(b"".join(blob_ids), dtype="S32")
                rows = np.searchsorted(self._ids, query)
                at = np.minimum(rows, n - 1)
                found = (rows < n) & (self._ids[at] == query)
                typed = found & (self._type[at] == blob_type)
                packs = self._packs
                hits = np.flatnonzero(typed)
                where = at[hits]
                for i, pack, off, length, raw in zip(
                    hits.tolist(), self._pack[where].tolist(), self._off[where].tolist(),
                    self._len[where].tolist(), self._raw[where].tolist(), strict=True,
                ):
                    out[i] = BlobLocation(blob_type, blob_ids[i], packs[pack], off, length, raw)
                # The same ID stored as another type first: its row is further on.
                for i in np.flatnonzero(found & ~typed).tolist():
                    out[i] = self._at_row(blob_type, blob_ids[i], self._row(blob_type, blob_ids[i]))
            for i, bid in enumerate(blob_ids):
                r = self._recent.get((blob_type, bid))
                if r is not None:
                    out[i] = BlobLocation(blob_type, bid, self._packs[r[0]], r[1], r[2], r[3])
            return out

    def _at_row(self, blob_type: int, blob_id: bytes, row: int) -> BlobLocation | None:
        """The location in row ``row`` of the sorted arrays (None for -1). Caller holds the lock."""
        if row < 0:
            return None
        return BlobLocation(
            blob_type, blob_id, self._packs[self._pack_mv[row]],
            self._off_mv[row], self._len_mv[row], self._raw_mv[row],
        )

    def has(self, blob_type: int, blob_id: bytes) -> bool:
        # No BlobLocation is built: a backup asks this once per chunk of every
        # unchanged file.
        with self._lock:
            return (blob_type, blob_id) in self._recent or self._row(blob_type, blob_id) >= 0

    def __len__(self) -> int:
        with self._lock:
            return self._n + len(self._recent)

    def pack_ids(self) -> set[bytes]:
        with self._lock:
            self._merge_recent()
            used = _np().unique(self._pack)
            return {self._packs[int(i)] for i in used}

    def arrays(self) -> IndexArrays:
        """All entries as read-only columns, sorted by blob ID (for prune's vectorised scans).

        The arrays are replaced, never modified, when entries are added, so the
        view stays consistent while the caller works on it.
        """
        with self._lock:
            self._merge_recent()
            return IndexArrays(self._ids, self._pack, self._off, self._len, self._raw,
                               self._type, list(self._packs))

    def entries(self) -> Iterator[BlobLocation]:
        """Every entry (duplicates included), sorted by blob ID."""
        with self._lock:
            self._merge_recent()
            ids, pack, off, ln, raw, typ = (
                self._ids, self._pack, self._off, self._len, self._raw, self._type,
            )
            packs = list(self._packs)
        for i in range(len(ids)):
            yield BlobLocation(
                int(typ[i]), padded_id(ids[i]), packs[int(pack[i])],
                int(off[i]), int(ln[i]), int(raw[i]),
            )

    def nbytes(self) -> int:
        """Bytes held by the arrays (the per-blob memory the format promises)."""
        with self._lock:
            return int(
                self._ids.nbytes + self._pack.nbytes + self._off.nbytes + self._len.nbytes
                + self._raw.nbytes + self._type.nbytes + 32 * len(self._packs)
            )

    # -- cache serialisation -----------------------------------------------------

    def dump(self, prefix: Iterable[bytes] = ()) -> bytes:
        """The arrays as one byte string (the index cache), after ``prefix``.

        ``prefix`` goes into the same join, so a caller adding a header does
        not copy the whole index a second time.
        """
        with self._lock:
            if self._lazy is not None and not self._lazy[2]:
                return self._dump_recent(prefix)
            if self._lazy is not None and len(self._recent) <= _LAZY_MERGE:
                return self._dump_lazy(prefix)
            self._merge_recent()
            n = len(self._ids)
            head = struct.pack("<QQ", n, len(self._packs))
            return b"".join(
                [*prefix, head, *self._packs, self._ids.tobytes(), self._pack.tobytes(),
                 self._off.tobytes(), self._len.tobytes(), self._raw.tobytes(),
                 self._type.tobytes()]
            )

    def _dump_recent(self, prefix: Iterable[bytes]) -> bytes:
        """``dump`` of an index that has only recent entries (a new repository's
        first backup), in Python: the same bytes as merging them with NumPy
        (a stable sort by ID), without importing it (~0.2 s cold, at the end of
        a backup, for ~30 ms of work here with 25,000 entries). Caller holds the lock."""
        items = sorted(self._recent.items(), key=lambda kv: kv[0][1])
        m = len(items)
        u32 = struct.Struct(f"<{m}I").pack
        columns = [
            b"".join(bid.ljust(32, b"\0")[:32] for (_, bid), _ in items),
            *(u32(*(loc[k] for _, loc in items)) for k in range(4)),
            bytes(t for (t, _), _ in items),
        ]
        head = struct.pack("<QQ", m, len(self._packs))
        return b"".join([*prefix, head, *self._packs, *columns])

    def _dump_lazy(self, prefix: Iterable[bytes]) -> bytes:
        """``dump`` of a loaded index whose arrays were never made, with its few
        recent entries spliced into the dumped columns: the same bytes as
        merging them with NumPy (a stable sort by ID puts an added entry after
        the rows with its ID, and added entries with one ID in the order they
        were added). Caller holds the lock."""
        assert self._lazy is not None
        buf, pos, n = self._lazy
        mv = self._id_mv
        inserts: list[tuple[int, bytes, tuple[int, int, int, int], int]] = []
        for (t, bid), loc in sorted(self._recent.items(), key=lambda kv: kv[0][1]):
            lo, hi = 0, n
            while lo < hi:  # first row with an ID above ``bid``
                mid = (lo + hi) // 2
                if mv[mid * 32 : mid * 32 + 32].tobytes() <= bid:
                    lo = mid + 1
                else:
                    hi = mid
            inserts.append((lo, bid, loc, t))
        widths = (32, 4, 4, 4, 4, 1)
        columns: list[list[bytes | memoryview]] = [[] for _ in widths]
        starts = []
        for w in widths:
            starts.append(pos)
            pos += w * n
        prev = 0
        u32 = struct.Struct("<I").pack
        for row, bid, (pno, off, ln, raw), t in inserts:
            fields = (bid.ljust(32, b"\0")[:32], u32(pno), u32(off), u32(ln), u32(raw), bytes([t]))
            for col, w, start, value in zip(columns, widths, starts, fields, strict=True):
                col.append(buf[start + prev * w : start + row * w])
                col.append(value)
            prev = row
        for col, w, start in zip(columns, widths, starts, strict=True):
            col.append(buf[start + prev * w : start + n * w])
        head = struct.pack("<QQ", n + len(inserts), len(self._packs))
        return b"".join([*prefix, head, *self._packs, *(p for col in columns for p in col)])

    @classmethod
    def load(cls, data: bytes | memoryview, offset: int = 0) -> MemoryIndex:
        """An index from ``dump()``'s bytes at ``offset`` of ``data``.

        Nothing is copied: lookups read the columns through memoryviews of
        ``data`` at first, and NumPy is not even imported until something needs
        the arrays (adding, merging, dumping, bulk scans) or enough lookups
        were made that the prefix table pays (``_LAZY_LOOKUPS``). The arrays
        are then read-only views into ``data`` too: the index cache costs its
        size once, not twice (the arrays are replaced, never written, when
        entries are added). A column that is not aligned in ``data`` is copied
        then; ``dump`` callers pad their prefix to 8 bytes.
        """
        buf = memoryview(data).cast("B")
        n, np_ = struct.unpack_from("<QQ", buf, offset)
        pos = offset + 16
        if pos + 32 * np_ + 49 * n != len(buf):
            raise ValueError("index cache length mismatch")
        idx = cls()
        idx._packs = [bytes(buf[pos + 32 * i : pos + 32 * (i + 1)]) for i in range(np_)]
        idx._pack_no = {p: i for i, p in enumerate(idx._packs)}
        idx._set_columns(buf, pos + 32 * np_, n)
        if sys.byteorder != "little":
            with idx._lock:  # the memoryviews read native order; the cache is little-endian
                idx._materialize()
        return idx
