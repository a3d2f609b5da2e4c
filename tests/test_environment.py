"""resurgo.testing.environment: a missing machine requirement skips, except in CI."""

from __future__ import annotations

import pytest

from resurgo.testing.environment import unavailable


def test_outside_ci_a_missing_requirement_skips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no xattrs"):
        unavailable("no xattrs")


def test_in_ci_a_missing_requirement_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no xattrs .*not skipping"):
        unavailable("no xattrs")
