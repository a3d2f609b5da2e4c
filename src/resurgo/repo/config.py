"""The repository config: parameters fixed at ``init`` and shared by every writer.

``RepoParams`` are what a user may choose at ``init`` (pack size, chunk sizes,
compression level). ``RepoConfig`` is what is stored, encrypted, in the
``config`` object: the params plus the repository ID and the chunker seed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from resurgo.errors import CorruptObject, UsageError

CONFIG_VERSION = 1
MiB = 1 << 20
KiB = 1 << 10
SEED_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class RepoParams:
    # 32 MiB packs: few enough objects for object stores that bill per request
    # (borg #8572), small enough to retry cheaply over a slow link.
    pack_size: int = 32 * MiB
    # FastCDC 2020 sizes. pyfastcdc's effective average is avg + min, so the
    # mean chunk is about 640 KiB: an edit or a copied extent in a large file
    # costs half as much as with 256 KiB / 1 MiB / 8 MiB, and repositories vary
    # less with the chunker seed, for ~1.6 index entries per MiB of large
    # files (docs/design.md, "Chunk and pack sizes").
    chunk_min: int = 128 * KiB
    chunk_avg: int = 512 * KiB
    chunk_max: int = 4 * MiB
    compression_level: int = 3

    @classmethod
    def tiny_for_tests(cls) -> RepoParams:
        """Tiny packs and chunks so small test data crosses many pack boundaries."""
        return cls(pack_size=64 * KiB, chunk_min=256, chunk_avg=2 * KiB, chunk_max=8 * KiB)

    def validate(self) -> None:
        if not 64 <= self.chunk_min <= 1 * MiB:
            raise UsageError("chunk_min must be between 64 bytes and 1 MiB")
        if not 256 <= self.chunk_avg <= 4 * MiB:
            raise UsageError("chunk_avg must be between 256 bytes and 4 MiB")
        if not max(1024, self.chunk_avg) <= self.chunk_max <= 16 * MiB:
            raise UsageError("chunk_max must be at least chunk_avg and at most 16 MiB")
        if not 4 * KiB <= self.pack_size <= 1024 * MiB:
            raise UsageError("pack size must be between 4 KiB and 1 GiB")
        if not 0 <= self.compression_level <= 22:
            raise UsageError("compression level must be between 0 (off) and 22")


@dataclass(frozen=True)
class RepoConfig:
    id: str
    params: RepoParams
    chunker_seed: int

    @classmethod
    def new(cls, params: RepoParams) -> RepoConfig:
        params.validate()
        return cls(
            id=os.urandom(16).hex(),
            params=params,
            # pyfastcdc XORs the seed into its gear table; see docs/design.md
            # ("Chunk boundaries and what they leak"). It converts the seed (and
            # the seed shifted left by one) to a C uint64, so seeds must be below
            # 2**63; 0 would mean "no seed".
            chunker_seed=(int.from_bytes(os.urandom(8), "little") & SEED_MASK) or 1,
        )

    def to_json(self) -> bytes:
        p = self.params
        return json.dumps(
            {
                "v": CONFIG_VERSION,
                "id": self.id,
                "chunker": {
                    "algorithm": "fastcdc2020",
                    "min": p.chunk_min,
                    "avg": p.chunk_avg,
                    "max": p.chunk_max,
                    "normalization": 1,
                    "seed": self.chunker_seed,
                },
                "pack_size": p.pack_size,
                "compression": {"algorithm": "zstd", "level": p.compression_level},
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> RepoConfig:
        try:
            d = json.loads(raw)
            if d["v"] != CONFIG_VERSION:
                from resurgo.errors import UnsupportedVersion

                raise UnsupportedVersion(f"repository config version {d['v']} is not supported")
            c = d["chunker"]
            if c["algorithm"] != "fastcdc2020" or c.get("normalization", 1) != 1:
                raise CorruptObject("config", f"unknown chunker {c['algorithm']!r}")
            params = RepoParams(
                pack_size=int(d["pack_size"]),
                chunk_min=int(c["min"]),
                chunk_avg=int(c["avg"]),
                chunk_max=int(c["max"]),
                compression_level=int(d["compression"]["level"]),
            )
            seed = int(c["seed"])
            if not 0 < seed <= SEED_MASK:
                raise CorruptObject("config", f"chunker seed {seed} out of range")
            return cls(id=str(d["id"]), params=params, chunker_seed=seed)
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptObject("config", f"malformed config: {e}")
