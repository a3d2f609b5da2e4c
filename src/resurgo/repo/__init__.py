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

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
