"""Exclude patterns, pattern files, marker files and cache directories."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from resurgo.errors import UsageError
from resurgo.ops.excludes import CACHEDIR_SIGNATURE, Excluder, read_pattern_file


def ex(*patterns: str) -> Excluder:
    return Excluder(exclude=patterns)


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "expected"),
    [
        # a bare name or glob matches at any depth, files and directories
        ("*.log", b"/var/log/syslog.log", False, True),
        ("*.log", b"/x.log", False, True),
        ("*.log", b"/var/x.log", True, True),
        ("*.log", b"/var/x.logs", False, False),
        ("*.log", b"/var/log", True, False),
        ("core", b"/home/ann/core", False, True),
        # a leading or middle slash anchors at "/"
        ("/home/*/cache", b"/home/ann/cache", True, True),
        ("/home/*/cache", b"/home/ann/cache/x/y", False, True),
        ("/home/*/cache", b"/srv/home/ann/cache", True, False),
        ("/home/*/cache", b"/home/ann/b/cache", True, False),
        ("home/*/cache", b"/home/ann/cache", True, True),
        ("home/*/cache", b"/srv/home/ann/cache", True, False),
        ("/tmp", b"/tmp", True, True),
        ("/tmp", b"/var/tmp", True, False),
        # a trailing slash matches directories only, and everything below them
        ("node_modules/", b"/src/app/node_modules", True, True),
        ("node_modules/", b"/src/app/node_modules", False, False),
        ("node_modules/", b"/src/app/node_modules/pkg/index.js", False, True),
        # ** spans components, * and ? do not
        ("/srv/**/tmp", b"/srv/a/b/c/tmp", True, True),
        ("/srv/**/tmp", b"/srv/tmp", True, True),
        ("**/build", b"/a/b/build", True, True),
        ("/srv/*", b"/srv/a/b", False, True),  # matched via its parent directory /srv/a
        ("/srv/?", b"/srv/ab", False, False),
        ("/srv/[ab]x", b"/srv/bx", False, True),
        ("/srv/[ab]x", b"/srv/cx", False, False),
        # case-sensitive by default
        ("*.LOG", b"/x.log", False, False),
        # undecodable bytes match wildcards but no literal
        ("*.log", b"/caf\xe9.log", False, True),
        ("/caf?.log", b"/caf\xe9.log", False, True),
        ("/cafe.log", b"/caf\xe9.log", False, False),
        # the root itself is never excluded
        ("*", b"/", True, False),
    ],
)
def test_pattern_semantics(pattern: str, path: bytes, is_dir: bool, expected: bool) -> None:
    assert ex(pattern).excluded(path, is_dir) is expected


def test_negation_re_includes_and_last_matching_rule_wins() -> None:
    e = ex("*.log", "!important.log", "/var/important.log")
    assert e.excluded(b"/a/debug.log", False)
    assert not e.excluded(b"/a/important.log", False)
    assert e.excluded(b"/var/important.log", False)


def test_iexclude_patterns_ignore_case_including_non_ascii() -> None:
    e = Excluder(iexclude=["*.TMP", "/ÉTÉ"])
    assert e.excluded(b"/a/x.tmp", False)
    assert e.excluded(b"/a/x.TmP", False)
    assert e.excluded("/été".encode(), True)
    assert not e.excluded(b"/a/x.tmpl", False)


def test_case_sensitive_and_insensitive_lists_are_evaluated_separately() -> None:
    e = Excluder(exclude=["!keep.tmp"], iexclude=["*.tmp"])
    assert e.excluded(b"/keep.tmp", False)  # a negation only undoes rules of its own list
    e2 = Excluder(exclude=["*.bak"], iexclude=["!*.BAK"])
    assert e2.excluded(b"/x.bak", False)


def test_exclude_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "excludes"
    f.write_bytes(b"\xef\xbb\xbf# caches\n\n  *.cache  \r\n\\#literal\n/tmp/\n   # indented comment\n")
    assert read_pattern_file(f) == ["*.cache", "\\#literal", "/tmp/"]
    e = Excluder(exclude=["*.o"], exclude_files=[f])
    assert e.excluded(b"/x/y.cache", False)
    assert e.excluded(b"/#literal", False)
    assert e.excluded(b"/tmp", True)
    assert e.excluded(b"/a.o", False)
    assert not e.excluded(b"/caches", True)
    assert e.describe() == ["*.o", "*.cache", "\\#literal", "/tmp/"]


def test_iexclude_file_patterns_ignore_case(tmp_path: Path) -> None:
    f = tmp_path / "iexcludes"
    f.write_text("*.JPG\n")
    assert Excluder(iexclude_files=[f]).excluded(b"/p/a.jpg", False)


def test_missing_exclude_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read exclude file"):
        Excluder(exclude_files=[tmp_path / "nope"])


@pytest.mark.parametrize("bad", ["[z-a]", "!", "foo\\", "", "/", "# only a comment"])
def test_bad_pattern_is_a_usage_error_naming_it(bad: str) -> None:
    with pytest.raises(UsageError) as info:
        ex(bad)
    assert repr(bad) in str(info.value)


def test_bad_pattern_in_a_file_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "ex"
    f.write_text("ok\n[z-a]\n")
    with pytest.raises(UsageError, match=r"'\[z-a\]' \(from .*ex\)"):
        Excluder(exclude_files=[f])


def test_cachedir_tag_with_valid_signature_excludes_the_directory(tmp_path: Path) -> None:
    (tmp_path / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n# This file is a cache tag.\n")
    names = set(os.listdir(os.fsencode(tmp_path)))
    assert Excluder(exclude_caches=True).dir_excluded_by_content(os.fsencode(tmp_path), names)
    assert not Excluder().dir_excluded_by_content(os.fsencode(tmp_path), names)


@pytest.mark.parametrize(
    "content", [b"", b"Signature: 8a477f597d28d172789f06886806bc5", b"signature: 8a477f597d28d172789f06886806bc55"]
)
def test_cachedir_tag_with_bad_signature_does_not_exclude(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "CACHEDIR.TAG").write_bytes(content)
    e = Excluder(exclude_caches=True)
    assert not e.dir_excluded_by_content(os.fsencode(tmp_path), {b"CACHEDIR.TAG"})


def test_cachedir_tag_symlink_or_directory_does_not_exclude(tmp_path: Path) -> None:
    real = tmp_path / "real-tag"
    real.write_bytes(CACHEDIR_SIGNATURE)
    linked = tmp_path / "linked"
    linked.mkdir()
    os.symlink(real, linked / "CACHEDIR.TAG")
    asdir = tmp_path / "asdir"
    (asdir / "CACHEDIR.TAG").mkdir(parents=True)
    e = Excluder(exclude_caches=True)
    assert not e.dir_excluded_by_content(os.fsencode(linked), {b"CACHEDIR.TAG"})
    assert not e.dir_excluded_by_content(os.fsencode(asdir), {b"CACHEDIR.TAG"})


def test_exclude_if_present_by_name_and_by_header(tmp_path: Path) -> None:
    (tmp_path / ".nobackup").write_bytes(b"")
    (tmp_path / "MARK").write_bytes(b"skip me please")
    d = os.fsencode(tmp_path)
    assert Excluder(exclude_if_present=[".nobackup"]).dir_excluded_by_content(d, {b".nobackup"})
    assert not Excluder(exclude_if_present=[".nobackup"]).dir_excluded_by_content(d, {b"x"})
    assert Excluder(exclude_if_present=["MARK:skip me"]).dir_excluded_by_content(d, {b"MARK"})
    assert not Excluder(exclude_if_present=["MARK:keep"]).dir_excluded_by_content(d, {b"MARK"})


@pytest.mark.parametrize("bad", ["", "a/b", ":header", "..", "."])
def test_exclude_if_present_rejects_names_that_are_not_file_names(bad: str) -> None:
    with pytest.raises(UsageError, match="exclude-if-present"):
        Excluder(exclude_if_present=[bad])


def test_describe_lists_every_rule_and_active_reflects_them() -> None:
    e = Excluder(exclude=["*.o"], iexclude=["*.TMP"], exclude_if_present=[".nobackup", "M:h"],
                 exclude_caches=True, one_file_system=True)
    assert e.describe() == ["*.o", "iexclude:*.TMP", "if-present:.nobackup", "if-present:M:h",
                            "exclude-caches"]
    assert e.active and e.one_file_system
    empty = Excluder(one_file_system=True)
    assert not empty.active and empty.describe() == []
    assert not empty.excluded(b"/anything", False)
