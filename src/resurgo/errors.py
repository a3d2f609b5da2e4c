"""The exception tree: every error resurgo raises on purpose, with its exit code.

Each class carries a one-line user message, the process exit code the CLI uses
for it, and a ``retryable`` flag the retry wrapper trusts (it retries nothing
else). Engine code raises these and never prints or exits; the CLI maps them to
one line on stderr and ``exit_code``. The table of codes is ``EXIT_CODES``; every
command's ``--help`` ends with it.
"""

from __future__ import annotations

# Exit codes (documented in docs/cli.md and at the end of every --help).
EXIT_OK = 0
EXIT_FAILURE = 1  # fatal error not covered below
EXIT_USAGE = 2  # bad command line or plan file
EXIT_PARTIAL = 3  # completed with warnings: backup skipped unreadable files, restore left entries
EXIT_DAMAGE = 4  # integrity problem: corrupt or missing object, check found damage
EXIT_NO_REPOSITORY = 10  # repository does not exist
EXIT_LOCKED = 11  # repository is locked by another process
EXIT_WRONG_PASSWORD = 12  # no key could be opened with the password
EXIT_UNSUPPORTED = 14  # unsupported format version
EXIT_BACKEND = 15  # storage unavailable, permission denied, disk full
EXIT_EXISTS = 16  # refusing to overwrite (init on an existing repository, restore target)
EXIT_INTERRUPTED = 130  # SIGINT / SIGTERM

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILURE: "fatal error",
    EXIT_USAGE: "usage error (bad arguments or input)",
    EXIT_PARTIAL: "completed with warnings (backup: snapshot created but some files could not "
    "be read; restore: some entries were left untouched)",
    EXIT_DAMAGE: "data damage: a corrupt or missing object, or check found errors",
    EXIT_NO_REPOSITORY: "repository does not exist",
    EXIT_LOCKED: "repository is locked",
    EXIT_WRONG_PASSWORD: "wrong password or no usable key",
    EXIT_UNSUPPORTED: "unsupported repository format version",
    EXIT_BACKEND: "storage backend unavailable, permission denied or full",
    EXIT_EXISTS: "target already exists",
    EXIT_INTERRUPTED: "interrupted",
}


class ResurgoError(Exception):
    """Base of every deliberate error. ``str(err)`` is the one-line user message."""

    exit_code: int = EXIT_FAILURE
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class UsageError(ResurgoError):
    """The user asked for something malformed (bad flag value, bad pattern, bad name)."""

    exit_code = EXIT_USAGE


# --- storage backends -------------------------------------------------------


class BackendError(ResurgoError):
    """A storage operation failed. ``retryable`` says whether trying again may help."""

    exit_code = EXIT_BACKEND


class BackendUnavailable(BackendError):
    """Network failure, timeout, throttling, 5xx: transient unless proven otherwise."""

    retryable = True


class BackendPermissionError(BackendError):
    """Credentials rejected or access denied: retrying cannot help."""


class BackendFull(BackendError):
    """No space left on the storage target."""


class ObjectNotFound(BackendError):
    """The key does not exist in the backend."""

    exit_code = EXIT_DAMAGE

    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class ObjectExists(BackendError):
    """A create-only put found the key already present."""

    exit_code = EXIT_EXISTS

    def __init__(self, key: str) -> None:
        super().__init__(f"object already exists: {key}")
        self.key = key


class InvalidRange(BackendError):
    """A ranged read asked for bytes past the end of the object."""

    exit_code = EXIT_DAMAGE


class ReadOnlyError(BackendError):
    """A write was attempted through a read-only backend."""


class InjectedFault(BackendUnavailable):
    """Raised by the fault-injecting backend (tests); retryable by default."""


# --- repository -------------------------------------------------------------


class RepositoryNotFound(ResurgoError):
    exit_code = EXIT_NO_REPOSITORY


class RepositoryExists(ResurgoError):
    exit_code = EXIT_EXISTS


class RepositoryLocked(ResurgoError):
    exit_code = EXIT_LOCKED


class SessionLost(ResurgoError):
    """This writer can no longer prove to prune that it is alive; nothing more is saved.

    Raised instead of writing an index object or a snapshot that might point at
    data a concurrent prune has deleted. Running the operation again is safe.
    """

    exit_code = EXIT_FAILURE
    retryable = True


class WrongPassword(ResurgoError):
    exit_code = EXIT_WRONG_PASSWORD


class UnsupportedVersion(ResurgoError):
    exit_code = EXIT_UNSUPPORTED


class CorruptObject(ResurgoError):
    """An object failed authentication, its hash, or its structure. Names the object."""

    exit_code = EXIT_DAMAGE

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"corrupt object {name}: {reason}")
        self.name = name
        self.reason = reason


class BlobNotFound(ResurgoError):
    """A blob referenced by a tree or snapshot is not in the index."""

    exit_code = EXIT_DAMAGE


class KeyError_(ResurgoError):
    """Key management refused an operation (e.g. removing the last key)."""


class SnapshotNotFound(ResurgoError):
    """No snapshot matched the given ID prefix or filter."""


class AmbiguousSnapshot(UsageError):
    """An ID prefix matched more than one snapshot."""


class IntegrityError(ResurgoError):
    """check, restore --verify or a copy found damage (details in the report)."""

    exit_code = EXIT_DAMAGE


# --- operations -------------------------------------------------------------


class SourceError(ResurgoError):
    """The backup source failed as a whole (missing path, failed dump command)."""


class RestoreError(ResurgoError):
    """Restore refused or failed (hostile entry, existing file, write error)."""


class TargetExists(RestoreError):
    exit_code = EXIT_EXISTS


class Interrupted(ResurgoError):
    exit_code = EXIT_INTERRUPTED
