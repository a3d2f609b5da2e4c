"""The command context: what a command's ``run(args, ctx)`` may use, resolved lazily.

``Context`` turns the global options and the environment into values
(repository URL, cache directory, backend options, password) and hands them
to ``resurgo.session``. Nothing happens until a command asks: ``resurgo key
--help`` never prompts, and a command that never opens the repository never
touches storage. The repository it opens is closed by ``close()`` when the
command ends.

Test-only knobs read here (docs/testing.md): ``RESURGO_TEST_WEAK_KDF=1`` and
``RESURGO_TEST_FAULTS=<spec>``.
"""

from __future__ import annotations

import argparse
import getpass
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from resurgo.cli.passwords import (
    PasswordSources,
    PromptFn,
    resolve_new_password,
    resolve_password,
)
from resurgo.cli.render import Renderer

if TYPE_CHECKING:
    from resurgo.repo import Repository
    from resurgo.repo.config import RepoParams
    from resurgo.repo.keys import KDFParams


class Context:
    """Per-run services for commands: ``out``, ``env``, ``open_repo``, passwords."""

    def __init__(
        self,
        args: argparse.Namespace,
        env: Mapping[str, str],
        out: Renderer,
        *,
        interactive: bool,
        prompt: PromptFn | None = None,
    ) -> None:
        self.args = args
        self.env = env
        self.out = out
        self.interactive = interactive
        self._prompt = prompt
        self._password: str | None = None
        self._repo: Repository | None = None
        self.repo_write = False  # whether the open repository accepts writes

    # -- resolved settings --------------------------------------------------------

    @property
    def repo_url(self) -> str:
        from resurgo.session import default_repository_url

        url = getattr(self.args, "repo", None) or self.env.get("RESURGO_REPOSITORY")
        return url or default_repository_url(self.env)

    @property
    def cache_dir(self) -> Path | None:
        from resurgo.session import default_cache_dir

        if getattr(self.args, "no_cache", False):
            return None
        explicit = getattr(self.args, "cache_dir", None)
        return Path(explicit) if explicit else default_cache_dir(self.env)

    @property
    def backend_options(self) -> dict[str, str]:
        return dict(getattr(self.args, "options", None) or [])

    @property
    def fault_spec(self) -> str | None:
        """RESURGO_TEST_FAULTS: wrap the backend with injected faults (tests only)."""
        return self.env.get("RESURGO_TEST_FAULTS") or None

    def kdf(self) -> KDFParams | None:
        """Key-derivation cost for new key files; cheap only under RESURGO_TEST_WEAK_KDF=1."""
        if self.env.get("RESURGO_TEST_WEAK_KDF") == "1":
            from resurgo.repo.keys import KDFParams

            return KDFParams.weak_for_tests()
        return None

    # -- passwords -----------------------------------------------------------------

    def _sources(self) -> PasswordSources:
        return PasswordSources(
            file=getattr(self.args, "password_file", None),
            command=getattr(self.args, "password_command", None),
            env=self.env,
            interactive=self.interactive,
            # looked up at call time so tests can replace getpass.getpass
            prompt=self._prompt or getpass.getpass,
        )

    def password(self, *, confirm: bool = False) -> str:
        """The repository password (asked for once per run)."""
        if self._password is None:
            label = "password for new repository" if confirm else "repository password"
            self._password = resolve_password(self._sources(), label=label, confirm=confirm)
        return self._password

    def new_password(self, new_password_file: str | None) -> str:
        """A password being set (key add / key passwd): the file, or the prompt twice."""
        return resolve_new_password(self._sources(), new_password_file=new_password_file)

    # -- the repository ------------------------------------------------------------

    def open_repo(self, write: bool, preload: Sequence[str] = (),
                  warm: Sequence[Callable[[threading.Event], object]] = ()) -> Repository:
        """The repository named by the global options, opened once per run.

        ``write`` declares whether the command modifies the repository. A
        read-only command gets a repository whose backend refuses every write
        (``ReadOnlyError``), so a read path cannot mutate it by mistake.
        ``preload`` names the modules the command imports next, imported
        while the key is derived, and ``warm`` tasks run meanwhile
        (``session.open_repo``).
        """
        if self._repo is not None and write and not self.repo_write:
            self.close()  # opened read-only earlier in this run; reopen writable
        if self._repo is None:
            # Opening derives the key, then imports the repository facade.
            self._repo = self._open(self.password(), read_only=not write, preload=preload,
                                    warm=warm)
            self.repo_write = write
        return self._repo

    def create_repo(self, params: RepoParams | None = None) -> Repository:
        """Initialise a new repository at the configured location (``init``)."""
        self._repo = self._open(self.password(confirm=True), create=True, params=params,
                                kdf=self.kdf())
        self.repo_write = True
        return self._repo

    def _open(self, password: str, **how: Any) -> Repository:
        """``session.open_repo`` on the location and options of the global flags."""
        from resurgo.session import open_repo

        return open_repo(self.repo_url, password, cache_dir=self.cache_dir,
                         options=self.backend_options, fault_spec=self.fault_spec, **how)

    def close(self) -> None:
        repo, self._repo = self._repo, None
        if repo is not None:
            repo.close()
