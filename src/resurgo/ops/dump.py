"""Dump: one file of a snapshot, streamed as plain bytes to a writable stream.

The file's *data ranges* (everything but its holes) are filled from its
content blobs in order; holes are written as zeros, so the output is exactly
the bytes the file had. Blobs are fetched a few at a time ahead of the writer
(``PREFETCH``), so a large file streams at the speed of the storage, and each
is checked against its ID before a byte of it is written.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from resurgo.errors import CorruptObject, UsageError
from resurgo.repo import BlobType, Repository
from resurgo.snapshot.fsmeta import show_path
from resurgo.snapshot.model import NodeType, Snapshot
from resurgo.snapshot.store import find_node

PREFETCH = 8
_ZEROS = bytes(1 << 20)


def _load(repo: Repository, blob_id: bytes) -> bytes:
    data = repo.load_blob(BlobType.DATA, blob_id)
    if not repo.verify_blob_id(blob_id, data):
        raise CorruptObject(f"blob {blob_id.hex()}", "content does not match its ID")
    return data


def _zeros(out: BinaryIO, length: int) -> None:
    while length > 0:
        n = min(length, len(_ZEROS))
        out.write(memoryview(_ZEROS)[:n])
        length -= n


def dump_file(repo: Repository, snap: Snapshot, path: bytes, out: BinaryIO) -> int:
    """Write the content of the regular file ``path`` of ``snap`` to ``out``; returns
    the number of bytes written.

    Raises PathNotInSnapshot (a UsageError) for a missing path, UsageError for a
    directory or any other non-regular file, and CorruptObject/BlobNotFound
    (nothing further written) for damaged content.
    """
    node = find_node(repo, snap.tree, path)
    shown = show_path(path)
    if node.type is NodeType.DIR:
        raise UsageError(f"{shown} is a directory")
    if node.type is not NodeType.FILE:
        raise UsageError(f"{shown} is not a regular file (it is a {node.type.value})")
    holes = list(node.holes)
    pos = 0  # file offset of the next byte to write
    written = 0

    def until_data() -> None:
        # Write the holes that start at ``pos``.
        nonlocal pos, written
        while holes and holes[0][0] == pos:
            _, length = holes.pop(0)
            _zeros(out, length)
            pos += length
            written += length

    with ThreadPoolExecutor(4, thread_name_prefix="resurgo-dump") as pool:
        pending: deque[Future[bytes]] = deque()
        ids = iter(node.content)
        for bid in ids:
            pending.append(pool.submit(_load, repo, bid))
            if len(pending) >= PREFETCH:
                break
        while pending:
            data = memoryview(pending.popleft().result())
            nxt = next(ids, None)
            if nxt is not None:
                pending.append(pool.submit(_load, repo, nxt))
            # Split the blob at holes: it fills data ranges only.
            while data:
                until_data()
                room = (holes[0][0] - pos) if holes else len(data)
                piece = data[: min(len(data), room)]
                if not piece:
                    raise CorruptObject(shown, "content does not fit the file's data ranges")
                out.write(piece)
                pos += len(piece)
                written += len(piece)
                data = data[len(piece):]
        until_data()
    if pos != node.size:
        raise CorruptObject(shown, f"content is {pos} bytes, the file has {node.size}")
    out.flush()
    return written
