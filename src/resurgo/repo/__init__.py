"""The repository layer: keys, envelopes, chunking, packs, index and the facade.

``Repository`` (repository.py) is the API everything above uses; the other
modules own one piece of the on-disk format each (docs/format.md).

The names below are imported on first use (PEP 562), not with the package:
``resurgo.repo.keys`` must be importable without NumPy and the rest of the
facade, so that a command can derive its key (Argon2id, 64 MiB) before the
heavy imports and allocations happen, and the two peaks do not add up
(docs/design.md, "Start-up").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resurgo._lazy import lazy_exports

if TYPE_CHECKING:
    from resurgo.repo.config import RepoConfig, RepoParams
    from resurgo.repo.index import BlobLocation
    from resurgo.repo.keys import KDFParams
    from resurgo.repo.repository import BlobType, KeyInfo, Repository

_WHERE = {
    "BlobLocation": "resurgo.repo.index",
    "BlobType": "resurgo.repo.repository",
    "KDFParams": "resurgo.repo.keys",
    "KeyInfo": "resurgo.repo.repository",
    "RepoConfig": "resurgo.repo.config",
    "RepoParams": "resurgo.repo.config",
    "Repository": "resurgo.repo.repository",
}

__all__ = [
    "BlobLocation",
    "BlobType",
    "KDFParams",
    "KeyInfo",
    "RepoConfig",
    "RepoParams",
    "Repository",
]


__getattr__, __dir__ = lazy_exports(__name__, globals(), _WHERE)
