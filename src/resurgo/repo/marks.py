"""Prune marks: packs set aside for deletion, waiting out the grace period.

A *mark* is the object ``prune/<id>`` (encrypted JSON) written by prune's
mark phase *after* the packs it lists (the *candidates*) have left the index.
It records the *mark time* (wall clock, taken after the rewritten index was
durable and the superseded index objects deleted), the candidates with their
sizes, which of them were repacked, and the IDs of the snapshots the mark
phase accounted for. A later sweep deletes the candidates (or rescues some);
while it works the mark's ``state`` is ``"sweeping"``, which a writer that is
just starting checks (``Repository`` session start), then the mark is removed.

Only the process holding the exclusive lock (``repo.lock``) writes marks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from resurgo.backend import ObjectInfo, layout
from resurgo.errors import ObjectNotFound, ResurgoError
from resurgo.repo.sessions import ControlStore

PRUNE = layout.PRUNE
MARK_VERSION = 1
MARKED = "marked"
SWEEPING = "sweeping"


@dataclass
class PruneMark:
    time: float
    candidates: dict[str, int]  # pack ID (hex) -> size in bytes
    snapshots: list[str] = field(default_factory=list)
    repacked: list[str] = field(default_factory=list)
    host: str = ""
    pid: int = 0
    state: str = MARKED
    sweep_started: float | None = None
    # os.urandom, as secrets.token_hex: secrets would load libcrypto (docs/design.md, "Start-up")
    id: str = field(default_factory=lambda: os.urandom(16).hex())

    @property
    def key(self) -> str:
        return PRUNE + self.id

    def to_doc(self) -> dict[str, Any]:
        return {
            "v": MARK_VERSION, "id": self.id, "time": self.time, "host": self.host,
            "pid": self.pid, "state": self.state, "sweep_started": self.sweep_started,
            "candidates": self.candidates, "repacked": self.repacked,
            "snapshots": self.snapshots,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> PruneMark:
        if doc.get("v") != MARK_VERSION:
            raise ValueError(f"unknown prune mark version {doc.get('v')!r}")
        return cls(
            id=str(doc["id"]), time=float(doc["time"]), host=str(doc.get("host", "")),
            pid=int(doc.get("pid", 0)), state=str(doc["state"]),
            sweep_started=None if doc.get("sweep_started") is None else float(doc["sweep_started"]),
            candidates={str(k): int(v) for k, v in dict(doc["candidates"]).items()},
            repacked=[str(p) for p in doc.get("repacked", [])],
            snapshots=[str(s) for s in doc.get("snapshots", [])],
        )


def save_mark(store: ControlStore, mark: PruneMark) -> None:
    store.put_control(mark.key, mark.to_doc())


def delete_mark(store: ControlStore, mark_id: str) -> None:
    store.backend.delete(PRUNE + mark_id)


def list_marks(store: ControlStore) -> tuple[list[PruneMark], list[ObjectInfo]]:
    """Readable marks (oldest first) and the objects under ``prune/`` that are not."""
    good: list[PruneMark] = []
    bad: list[ObjectInfo] = []
    for info in list(store.backend.list(PRUNE)):
        try:
            mark = PruneMark.from_doc(store.get_control(info.key))
        except ObjectNotFound:
            continue
        except (ResurgoError, KeyError, TypeError, ValueError):
            bad.append(info)
            continue
        if mark.id != layout.name_of(info.key):
            bad.append(info)
            continue
        good.append(mark)
    good.sort(key=lambda m: (m.time, m.id))
    return good, bad
