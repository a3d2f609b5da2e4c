"""The repository layer: keys, envelopes, chunking, packs, index and the facade.

``Repository`` (repository.py) is the API everything above uses; the other
modules own one piece of the on-disk format each (docs/format.md).
"""

from resurgo.repo.config import RepoConfig, RepoParams
from resurgo.repo.index import BlobLocation
from resurgo.repo.keys import KDFParams
from resurgo.repo.repository import BlobType, KeyInfo, Repository

__all__ = [
    "BlobLocation",
    "BlobType",
    "KDFParams",
    "KeyInfo",
    "RepoConfig",
    "RepoParams",
    "Repository",
]
