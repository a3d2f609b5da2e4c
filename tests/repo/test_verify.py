"""check: subsets of packs for --read-data-subset, and the counts of a clean check."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resurgo.errors import UsageError
from resurgo.repo import BlobType, Repository
from resurgo.repo.verify import CheckReport, check_structure, parse_subset, read_data, select_subset

from .helpers import PASSWORD, QUICK, blobs_of, new_repo, save_all

pack_names = st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), unique=True, max_size=200)


@QUICK
@given(ids=pack_names, m=st.integers(1, 12))
def test_slices_one_to_m_cover_every_pack_exactly_once(ids: list[str], m: int) -> None:
    seen: list[str] = []
    for n in range(1, m + 1):
        part = select_subset(ids, f"{n}/{m}")
        assert part == sorted(part)
        assert part == select_subset(list(reversed(ids)), f"{n}/{m}")  # deterministic
        seen += part
    assert sorted(seen) == sorted(ids)


@QUICK
@given(ids=pack_names, pct=st.floats(0.01, 100), seed=st.integers())
def test_percentage_selects_that_share_of_packs_at_least_one(ids: list[str], pct: float, seed: int) -> None:
    part = select_subset(ids, f"{pct}%", random.Random(seed))
    assert set(part) <= set(ids)
    assert len(part) == len(set(part))
    if ids:
        assert len(part) == min(len(ids), max(1, round(len(ids) * pct / 100)))
    else:
        assert part == []
    assert part == select_subset(ids, f"{pct}%", random.Random(seed))


def test_no_spec_selects_every_pack_and_100_percent_too() -> None:
    ids = [f"{i:064x}" for i in range(50)]
    assert select_subset(reversed(ids), None) == ids
    assert select_subset(ids, "100%") == ids


@pytest.mark.parametrize(
    "spec", ["0/3", "4/3", "1/0", "-1/2", "a/b", "1/2/3", "0%", "101%", "-5%", "nan%", "inf%", "abc", "", "%", "/"]
)
def test_bad_subset_spec_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_subset(spec)
    assert e.value.exit_code == 2
    with pytest.raises(UsageError):
        select_subset(["ab" * 32], spec)


def test_good_subset_specs_parse() -> None:
    assert parse_subset("25%") == ("percent", 25.0)
    assert parse_subset(" 2.5% ") == ("percent", 2.5)
    assert parse_subset("3/7") == ("slice", (3, 7))
    assert parse_subset("1/1") == ("slice", (1, 1))


def test_read_data_slices_together_read_every_pack_once() -> None:
    backend_repo = new_repo()
    save_all(backend_repo, blobs_of(40, 150))
    backend_repo.flush()
    repo = Repository.open(backend_repo.backend, PASSWORD)
    structure = CheckReport()
    check_structure(repo, structure)
    assert structure.ok and structure.packs_checked >= 4
    total = CheckReport()
    for n in range(1, 4):
        part = CheckReport()
        read_data(repo, part, subset=f"{n}/3")
        assert part.ok
        total.packs_read += part.packs_read
        total.blobs_read += part.blobs_read
    assert total.packs_read == structure.packs_checked
    assert total.blobs_read == 150


def test_structure_check_matches_blob_ids_that_end_in_nul_bytes() -> None:
    # The index's ID column drops trailing NULs when read back (NumPy "S").
    writer = new_repo()
    ids = [b"\xab" * 30 + b"\0\0", bytes(31) + b"\1", b"\1" + bytes(31)]
    for data, blob_id in zip(blobs_of(7, 3), ids, strict=True):
        writer.save_blob(BlobType.DATA, data, blob_id=blob_id)
    writer.flush()
    report = CheckReport()
    check_structure(Repository.open(writer.backend, PASSWORD), report)
    assert report.ok, report.problems
    assert report.packs_checked >= 1
