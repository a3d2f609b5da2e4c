"""What a test may assume about the machine it runs on, and what happens when it cannot.

A developer's machine may lack root, user xattrs or atime updates; there a
test that needs them is skipped. In CI (``CI`` set, run as root on ext4) every
such requirement holds by construction, so a missing one is a broken CI
machine: the test fails, loudly, instead of skipping.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def unavailable(reason: str) -> NoReturn:
    """Skip the calling test because ``reason``; in CI, fail it instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI must provide this; not skipping)")
    pytest.skip(reason)


# Outside CI a non-root developer may skip these; in CI they always run, so a
# lost privilege fails loudly instead of skipping.
as_root = pytest.mark.skipif(os.geteuid() != 0 and not in_ci(), reason="needs root")


def as_nobody(check: Callable[[], bool]) -> bool:
    """``check()`` run in a child process that dropped to the user "nobody"
    (root may open and search anything); whether it returned True. Needs root."""
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 3
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            code = 0 if check() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
