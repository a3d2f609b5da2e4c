"""Backend options: the ``-o name=value`` settings shared by remote backends.

An option may carry its scheme (``s3.region`` is ``region`` for S3), so one
command line can hold options for several backends; each backend takes only
its own. Values arrive as strings from the command line or plan files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from resurgo.errors import UsageError


def own_options(options: Mapping[str, Any] | None, scheme: str) -> dict[str, Any]:
    """The options meant for ``scheme``: unprefixed or ``<scheme>.<name>``."""
    own: dict[str, Any] = {}
    for name, value in (options or {}).items():
        head, dot, rest = name.partition(".")
        if not dot:
            own[name] = value
        elif head == scheme:
            own[rest] = value
    return own


def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"option {name} expects true or false, not {value!r}")
