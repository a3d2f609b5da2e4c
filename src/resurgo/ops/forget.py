"""forget: remove snapshots, chosen by a retention policy or by ID.

Vocabulary: a *plan* is the decisions for every selected snapshot, grouped
(``resurgo.ops.retention`` decides; this module only applies). Forgetting a
snapshot deletes its ``snapshots/<id>`` object and nothing else: the data it
referenced stays until ``prune`` finds it unused. That is why forget is safe
beside running backups and needs no lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from resurgo.ops.retention import (
    DEFAULT_GROUP_BY,
    Decision,
    GroupKey,
    RetentionPolicy,
    apply_policy,
    group_snapshots,
)
from resurgo.progress import NULL, Reporter
from resurgo.repo import Repository
from resurgo.snapshot.model import Snapshot
from resurgo.snapshot.store import SNAPSHOTS

NAMED_REASON = "named for removal"


@dataclass
class ForgetPlan:
    groups: list[tuple[GroupKey, list[Decision]]] = field(default_factory=list)

    def decisions(self) -> list[Decision]:
        return [d for _, ds in self.groups for d in ds]

    @property
    def keep(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions() if d.keep]

    @property
    def remove(self) -> list[Snapshot]:
        return [d.snapshot for d in self.decisions() if not d.keep]


def plan_policy(
    snaps: Iterable[Snapshot],
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    group_by: Iterable[str] = DEFAULT_GROUP_BY,
    tz: tzinfo = UTC,
) -> ForgetPlan:
    """Apply ``policy`` to each group of ``snaps`` (``now`` defaults to the current time)."""
    when = now or datetime.now(UTC)
    return ForgetPlan([
        (key, apply_policy(members, policy, when, tz=tz))
        for key, members in group_snapshots(snaps, group_by).items()
    ])


def plan_ids(snaps: Sequence[Snapshot], remove_ids: Iterable[str]) -> ForgetPlan:
    """Remove exactly the snapshots with these full IDs; all others are not touched."""
    wanted = set(remove_ids)
    chosen = [s for s in snaps if s.id in wanted]
    return ForgetPlan([(GroupKey(), [Decision(s, False, [NAMED_REASON]) for s in chosen])])


def forget(repo: Repository, plan: ForgetPlan, *, reporter: Reporter = NULL) -> list[str]:
    """Delete the snapshot objects the plan removes; returns their IDs."""
    removed: list[str] = []
    victims = plan.remove
    for s in victims:
        assert s.id is not None
        repo.delete_object(SNAPSHOTS, s.id)
        removed.append(s.id)
        reporter.event("snapshot-removed", id=s.id, time=s.time.isoformat(), host=s.hostname)
        reporter.progress(snapshots_removed=len(removed), snapshots_total=len(victims))
    return removed
