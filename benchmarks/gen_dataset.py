#!/usr/bin/env python3
"""Deterministic benchmark dataset: generation and a deterministic mutation.

``generate DIR --scale S --seed N`` writes a mixed tree of about S GB:

* ``src/``    ~20,000*S small source-like text files in a nested tree. Lines are
              drawn from a shared pool, files share license headers and ~2 % are
              verbatim duplicates, so data compresses ~3x and partly deduplicates.
              Also executables, private files, symlinks (one dangling), an empty
              file and an empty directory.
* ``media/``  ~200*S files of ~1 MB: half compressible text records, half random.
* ``large/``  four files of 150*S MiB each: ``random.bin`` (incompressible),
              ``app.log`` (log lines, compressible, not deduplicable),
              ``disk.img`` (zero runs, repeated blocks and copied extents) and
              ``random-copy.bin`` (``random.bin`` with a few small insertions:
              content-defined chunking must deduplicate it).

All modes and timestamps (with nanoseconds) are set explicitly, so the same
seed and scale always give the same bytes and metadata.

``mutate DIR --seed N`` changes an existing tree (generated or not) the way a
day of work does: ~1 % of the small files (< 64 KiB) edited in the middle or
appended to, 4 KiB inserted in the middle of the largest file (in place, same
inode), 100 new small files and 50 deleted ones per 20,000 small files
(at least 1 each). Needs only the standard library and numpy.

Two shapes for scale runs (``scale_bench.py``), equally deterministic:
``many-files DIR --files N`` writes N small distinct text files (median ~0.5 KB,
100 per directory), and ``sized DIR --gb G`` writes about G GB of the mixed shape
above as ~1 GB parts (``part-000/`` ...), each a ``generate`` tree with its own
seed, so every size has the same mix per GB. Neither changes what ``generate``
writes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import stat
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

MiB = 1 << 20
SMALL_LIMIT = 64 * 1024
BASE_TIME = 1_700_000_000  # 2023-11-14, a fixed epoch for reproducible mtimes
MUTATE_TIME = BASE_TIME + 90 * 86400

_SYLLABLES = [
    "ab",
    "ac",
    "ad",
    "al",
    "an",
    "ar",
    "as",
    "at",
    "ba",
    "be",
    "bi",
    "bo",
    "ca",
    "ce",
    "ch",
    "ci",
    "co",
    "cu",
    "da",
    "de",
    "di",
    "do",
    "du",
    "el",
    "en",
    "er",
    "es",
    "fa",
    "fe",
    "fi",
    "fo",
    "ga",
    "ge",
    "gi",
    "go",
    "ha",
    "he",
    "hi",
    "ho",
    "id",
    "il",
    "im",
    "in",
    "io",
    "is",
    "it",
    "ka",
    "ke",
    "ki",
    "la",
    "le",
    "li",
    "lo",
    "lu",
    "ma",
    "me",
    "mi",
    "mo",
    "mu",
    "na",
    "ne",
    "ni",
    "no",
    "nu",
    "ob",
    "ol",
    "om",
    "on",
    "op",
    "or",
    "os",
    "pa",
    "pe",
    "pi",
    "po",
    "pu",
    "ra",
    "re",
    "ri",
    "ro",
    "ru",
    "sa",
    "se",
    "si",
    "so",
    "st",
    "su",
    "ta",
    "te",
    "ti",
    "to",
    "tr",
    "tu",
    "ul",
    "um",
    "un",
    "ur",
    "us",
    "va",
    "ve",
    "vi",
    "vo",
    "xe",
    "yo",
    "za",
    "ze",
    "zo",
]

_LICENSES = [
    "# SPDX-License-Identifier: Apache-2.0\n# Copyright (c) 2019-2024 The {p} Authors.\n"
    '# Licensed under the Apache License, Version 2.0 (the "License"); you may not use\n'
    "# this file except in compliance with the License. You may obtain a copy at\n"
    "#     http://www.apache.org/licenses/LICENSE-2.0\n\n",
    "/*\n * Copyright (C) 2021 {p} contributors\n *\n * This program is free software: you can"
    " redistribute it and/or modify\n * it under the terms of the GNU General Public License"
    " as published by\n * the Free Software Foundation, either version 3 of the License.\n"
    " */\n\n",
    "// MIT License - Copyright (c) 2022 {p}\n// Permission is hereby granted, free of charge,"
    " to any person obtaining a copy\n// of this software and associated documentation"
    ' files (the "Software").\n\n',
    "",
]

_EXTENSIONS = [".py", ".py", ".py", ".c", ".h", ".go", ".js", ".md", ".txt", ".json"]


class Vocabulary:
    """Identifier words and a pool of code-like lines, all from one seed."""

    def __init__(self, seed: int) -> None:
        r = random.Random(seed)
        words: set[str] = set()
        while len(words) < 3000:
            words.add("".join(r.choice(_SYLLABLES) for _ in range(r.randint(1, 4))))
        self.words = sorted(words)
        w = self.words
        templates = [
            lambda: f"def {r.choice(w)}_{r.choice(w)}({r.choice(w)}, {r.choice(w)}=None):",
            lambda: (
                f"    {r.choice(w)} = {r.choice(w)}.{r.choice(w)}({r.choice(w)}, {r.randint(0, 999)})"
            ),
            lambda: f"    # {' '.join(r.choice(w) for _ in range(r.randint(3, 9)))}",
            lambda: f"        return {r.choice(w)}[{r.choice(w)}]",
            lambda: f"    if {r.choice(w)} is not None and {r.choice(w)} > {r.randint(0, 64)}:",
            lambda: f"import {r.choice(w)}.{r.choice(w)}",
            lambda: f"from {r.choice(w)} import {r.choice(w)}, {r.choice(w)}",
            lambda: (
                f"class {r.choice(w).capitalize()}{r.choice(w).capitalize()}({r.choice(w).capitalize()}):"
            ),
            lambda: f'        raise ValueError("{r.choice(w)} {r.choice(w)} {r.choice(w)}")',
            lambda: f"    for {r.choice(w)} in range({r.choice(w)}):",
            lambda: "",
            lambda: f"static int {r.choice(w)}_{r.choice(w)}(struct {r.choice(w)} *{r.choice(w)});",
            lambda: f'    "{r.choice(w)}": {r.randint(0, 100000)},',
        ]
        pool = {t() for t in (r.choice(templates) for _ in range(30000))}
        self.lines = sorted(pool)
        self.mean_len = sum(len(x) + 1 for x in self.lines) / len(self.lines)

    def text(self, rng: np.random.Generator, size: int, header: str = "") -> bytes:
        """About ``size`` bytes of code-like text (lines drawn from the pool)."""
        n = max(1, int(size / self.mean_len) + 2)
        idx = rng.integers(0, len(self.lines), n)
        lines = self.lines
        body = (header + "\n".join([lines[i] for i in idx.tolist()]) + "\n").encode()
        return body[:size]


def _log_text(rng: np.random.Generator, vocab: Vocabulary, size: int, t0_ms: int) -> bytes:
    """``size`` bytes of application log lines: compressible, but every line unique."""
    levels = ["INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR"]
    comps = [f"{a}.{b}" for a, b in zip(vocab.words[:64], vocab.words[64:128], strict=True)]
    msgs = [
        " ".join(vocab.words[(i * 7 + k * 13) % len(vocab.words)] for k in range(3 + i % 6))
        for i in range(400)
    ]
    out: list[str] = []
    total = 0
    t = t0_ms
    block = 4096
    while total < size:
        steps = rng.integers(0, 40, block).tolist()
        lv = rng.integers(0, len(levels), block).tolist()
        cp = rng.integers(0, len(comps), block).tolist()
        ms = rng.integers(0, len(msgs), block).tolist()
        nums = rng.integers(0, 10**6, block).tolist()
        lat = rng.integers(0, 5000, block).tolist()
        sec_cache = -1
        prefix = ""
        chunk = []
        for i in range(block):
            t += steps[i]
            s = t // 1000
            if s != sec_cache:
                sec_cache = s
                prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
            chunk.append(
                f"{prefix}.{t % 1000:03d}Z {levels[lv[i]]:5} [{comps[cp[i]]}] "
                f"{msgs[ms[i]]} request_id={nums[i]:06d} latency_ms={lat[i]}\n"
            )
        s_block = "".join(chunk)
        out.append(s_block)
        total += len(s_block)
    return "".join(out).encode()[:size]


def _write(path: Path, data: bytes | list[bytes], mode: int, mtime_ns: int) -> int:
    with open(path, "wb") as f:
        if isinstance(data, list):
            n = 0
            for part in data:
                f.write(part)
                n += len(part)
        else:
            f.write(data)
            n = len(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return n


def _mtime(r: random.Random, base: int = BASE_TIME, spread: int = 300 * 86400) -> int:
    return (base - r.randint(0, spread)) * 1_000_000_000 + r.randint(0, 999_999_999)


def _stream_random(path: Path, rng: np.random.Generator, size: int, mtime_ns: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(rng.bytes(n))
            left -= n
    os.chmod(path, 0o644)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _copy_with_insertions(
    src: Path, dst: Path, rng: np.random.Generator, r: random.Random, inserts: int, mtime_ns: int
) -> None:
    size = src.stat().st_size
    offsets = sorted(r.randrange(1, max(2, size)) for _ in range(inserts))
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        pos = 0
        for off in [*offsets, size]:
            while pos < off:
                buf = fi.read(min(16 * MiB, off - pos))
                fo.write(buf)
                pos += len(buf)
            if off < size:
                fo.write(rng.bytes(r.randint(16, 200)))
    os.chmod(dst, 0o644)
    os.utime(dst, ns=(mtime_ns, mtime_ns))


def _disk_image(
    path: Path,
    rng: np.random.Generator,
    r: random.Random,
    vocab: Vocabulary,
    size: int,
    mtime_ns: int,
) -> None:
    """A disk-image-like file: zero runs, repeated 64 KiB blocks, random and text
    extents, and copies of earlier extents at unaligned offsets (like duplicate
    files inside a filesystem image)."""
    block_pool = [rng.bytes(64 * 1024) for _ in range(8)] + [
        vocab.text(rng, 64 * 1024)[: 64 * 1024].ljust(64 * 1024, b"\0") for _ in range(8)
    ]
    recent: list[bytes] = []
    written = 0
    with open(path, "wb") as f:
        while written < size:
            kind = r.random()
            if kind < 0.25:
                data = bytes(r.randint(1, 16) * 64 * 1024)
            elif kind < 0.40:
                blk = r.choice(block_pool)
                data = blk * r.randint(1, 8)
            elif kind < 0.75:
                data = rng.bytes(r.randint(1, 32) * 64 * 1024)
            elif kind < 0.90:
                data = vocab.text(rng, r.randint(1, 16) * 64 * 1024)
            elif recent:
                src = r.choice(recent)
                data = bytes(r.randint(1, 4000)) + src
            else:
                continue
            data = data[: size - written]
            f.write(data)
            written += len(data)
            if len(data) >= 512 * 1024:
                recent.append(data)
                recent = recent[-8:]
    os.chmod(path, 0o644)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _make_dirs(r: random.Random, vocab: Vocabulary, root: Path, n_dirs: int) -> list[Path]:
    dirs = [root]
    depth = {root: 0}
    names: set[Path] = set()
    while len(dirs) < n_dirs + 1:
        parent = r.choice(dirs[-50:] if r.random() < 0.5 else dirs)
        if depth[parent] >= 5:
            continue
        d = parent / r.choice(vocab.words)
        if d in names:
            continue
        names.add(d)
        depth[d] = depth[parent] + 1
        dirs.append(d)
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def _set_dir_times(root: Path, r: random.Random) -> None:
    """Directory modes and mtimes last, deepest first (writing entries changes them)."""
    all_dirs = sorted((Path(p) for p, _, _ in os.walk(root)), key=lambda p: -len(p.parts))
    for d in all_dirs:
        if d != root and r.random() < 0.03:
            os.chmod(d, 0o700)
        t = _mtime(r)
        os.utime(d, ns=(t, t))


def generate(root: Path, scale: float, seed: int) -> dict[str, Any]:
    t_start = time.perf_counter()
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)
    r = random.Random(seed)
    rng = np.random.default_rng(seed)
    vocab = Vocabulary(seed)

    n_small = max(10, round(20000 * scale))
    n_media = max(2, round(200 * scale))
    large = max(MiB, round(150 * MiB * scale))
    files = 0
    total = 0

    # Small source-like files.
    src = root / "src"
    dirs = _make_dirs(r, vocab, src, max(2, n_small // 20))
    project_names = vocab.words[:4]
    written_small: list[tuple[Path, bytes]] = []
    for i in range(n_small):
        d = r.choice(dirs)
        ext = r.choice(_EXTENSIONS)
        p = d / f"{r.choice(vocab.words)}_{i}{ext}"
        if written_small and r.random() < 0.02:
            data = r.choice(written_small)[1]  # a vendored / copied file
        else:
            size = min(SMALL_LIMIT - 1024, int(rng.lognormal(8.0, 1.0)) + 64)
            header = r.choice(_LICENSES).format(p=r.choice(project_names))
            data = vocab.text(rng, size, header)
        mode = (
            0o755 if ext == ".py" and r.random() < 0.05 else (0o600 if r.random() < 0.02 else 0o644)
        )
        total += _write(p, data, mode, _mtime(r))
        files += 1
        if len(written_small) < 500:
            written_small.append((p, data))
    # Special entries.
    (src / "empty-dir").mkdir()
    total += _write(src / "empty-file", b"", 0o644, _mtime(r))
    files += 1
    for k in range(5):
        target = written_small[k * 7][0]
        link = src / f"link-{k}"
        os.symlink(os.path.relpath(target, src), link)
        t = _mtime(r)
        os.utime(link, ns=(t, t), follow_symlinks=False)
    os.symlink("does/not/exist", src / "dangling-link")
    t = _mtime(r)
    os.utime(src / "dangling-link", ns=(t, t), follow_symlinks=False)

    # ~1 MB files: half compressible records, half random.
    media = root / "media"
    media.mkdir()
    for i in range(n_media):
        size = int(MiB * r.uniform(0.7, 1.3))
        if i % 2 == 0:
            data = vocab.text(rng, size)[:size]
            name = f"export-{i:04d}.csv"
        else:
            data = rng.bytes(size)
            name = f"photo-{i:04d}.jpg"
        total += _write(media / name, data, 0o644, _mtime(r))
        files += 1

    # Large files.
    big = root / "large"
    big.mkdir()
    _stream_random(big / "random.bin", rng, large, _mtime(r))
    log = _log_text(rng, vocab, large, BASE_TIME * 1000 - 40 * 86400 * 1000)
    _write(big / "app.log", log, 0o640, _mtime(r))
    del log
    _disk_image(big / "disk.img", rng, r, vocab, large, _mtime(r))
    _copy_with_insertions(big / "random.bin", big / "random-copy.bin", rng, r, 5, _mtime(r))
    for p in big.iterdir():
        total += p.stat().st_size
        files += 1

    _set_dir_times(root, r)
    return {
        "root": str(root),
        "scale": scale,
        "seed": seed,
        "files": files,
        "bytes": total,
        "seconds": round(time.perf_counter() - t_start, 2),
    }


# ---------------------------------------------------------------- scale shapes

FILES_PER_DIR = 100
# What ``generate(scale=1.0)`` writes (939 MB for seed 1; other seeds differ by
# well under 1 %): ``generate_sized`` divides by it to pick each part's scale.
SCALE_1_BYTES = 939_000_000
SIZED_PART_BYTES = 1_000_000_000


def generate_many_files(root: Path, n_files: int, seed: int) -> dict[str, Any]:
    """``n_files`` small text files, 100 per directory in two directory levels.

    Sizes are log-normal (median ~0.5 KB, mean ~0.85 KB, at most 16 KiB); each
    file is a slice of a shared pool of code-like text headed by its own number,
    so every file's content is distinct (no whole-file deduplication). Modes
    (1 % 0600, 1 % 0755) and nanosecond mtimes are set explicitly, so the same
    count and seed always give the same tree. Writing goes through raw file
    descriptors; the time is almost all file creation in the kernel.
    """
    t_start = time.perf_counter()
    if n_files < 1:
        raise SystemExit("--files must be at least 1")
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} exists and is not empty")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = Vocabulary(seed)
    limit = 16 * 1024
    pool = vocab.text(rng, 8 * MiB)
    sizes = np.minimum(rng.lognormal(6.2, 1.0, n_files).astype(np.int64) + 16, limit).tolist()
    offsets = rng.integers(0, len(pool) - limit, n_files).tolist()
    modes = rng.choice(np.array([0o644, 0o600, 0o755]), n_files, p=[0.98, 0.01, 0.01]).tolist()
    mtimes = (
        (BASE_TIME - rng.integers(0, 300 * 86400, n_files)) * 1_000_000_000
        + rng.integers(0, 1_000_000_000, n_files)
    ).tolist()
    n_dirs = -(-n_files // FILES_PER_DIR)
    fan = max(1, math.isqrt(n_dirs - 1) + 1)  # top-level directories, each with <= fan leaves
    leaves: list[str] = []
    total = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    base = str(root)
    leaf = ""
    for i in range(n_files):
        if i % FILES_PER_DIR == 0:
            d = i // FILES_PER_DIR
            leaf = f"{base}/d{d // fan:03d}/d{d % fan:03d}"
            os.makedirs(leaf)
            leaves.append(leaf)
        head = b"# %d\n" % i
        data = head + pool[offsets[i] : offsets[i] + max(0, sizes[i] - len(head))]
        fd = os.open(f"{leaf}/f{i:07d}.txt", flags, 0o600)
        try:
            os.write(fd, data)
            os.fchmod(fd, modes[i])
            os.utime(fd, ns=(mtimes[i], mtimes[i]))
        finally:
            os.close(fd)
        total += len(data)
    tops = sorted({os.path.dirname(x) for x in leaves})
    dir_times = (
        (BASE_TIME - rng.integers(0, 300 * 86400, len(leaves) + len(tops) + 1)) * 1_000_000_000
    ).tolist()
    for path, t in zip([*leaves, *tops, base], dir_times, strict=True):
        os.utime(path, ns=(t, t))
    return {
        "root": str(root),
        "shape": "many-files",
        "seed": seed,
        "files": n_files,
        "dirs": len(leaves) + len(tops),
        "bytes": total,
        "seconds": round(time.perf_counter() - t_start, 2),
    }


def generate_sized(
    root: Path, target_bytes: int, seed: int, part_bytes: int = SIZED_PART_BYTES
) -> dict[str, Any]:
    """About ``target_bytes`` of the mixed ``generate`` shape, as parts of ~1 GB.

    ``part-000/``, ``part-001/``, ... are each a ``generate`` tree with its own
    seed (``seed * 1000 + k``) at the scale that gives ``target_bytes / parts``,
    so 1, 4 and 16 GB have the same mix of file sizes, compressibility and
    in-file duplication per GB, and memory stays bounded while writing.
    """
    t_start = time.perf_counter()
    if target_bytes <= 0:
        raise SystemExit("the target size must be positive")
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} exists and is not empty")
    n_parts = max(1, round(target_bytes / part_bytes))
    if n_parts >= 1000:
        raise SystemExit("at most 999 parts")
    scale = target_bytes / n_parts / SCALE_1_BYTES
    root.mkdir(parents=True, exist_ok=True)
    files = total = 0
    for k in range(n_parts):
        info = generate(root / f"part-{k:03d}", scale, seed * 1000 + k)
        files += info["files"]
        total += info["bytes"]
    t = (BASE_TIME - random.Random(seed).randint(0, 86400)) * 1_000_000_000
    os.utime(root, ns=(t, t))
    return {
        "root": str(root),
        "shape": "sized",
        "seed": seed,
        "target_bytes": target_bytes,
        "parts": n_parts,
        "part_scale": scale,
        "files": files,
        "bytes": total,
        "seconds": round(time.perf_counter() - t_start, 2),
    }


def _regular_files(root: Path) -> list[tuple[Path, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISREG(st.st_mode):
                out.append((p, st.st_size))
    return out


def mutate(root: Path, seed: int) -> dict[str, Any]:
    """Apply the same change set for the same tree and seed; returns counts."""
    t_start = time.perf_counter()
    r = random.Random(seed)
    rng = np.random.default_rng(seed)
    vocab = Vocabulary(seed)
    files = _regular_files(root)
    if not files:
        raise SystemExit(f"{root} has no regular files")
    small = [p for p, s in files if s < SMALL_LIMIT]
    largest = max(files, key=lambda ps: (ps[1], str(ps[0])))[0]
    touched_dirs: set[Path] = set()

    n_edit = max(1, round(len(small) * 0.01))
    per_20k = len(small) / 20000
    n_add = max(1, round(100 * per_20k))
    n_del = max(1, min(len(small) - n_edit, round(50 * per_20k)))
    picked = r.sample(small, n_edit + n_del)
    edit, delete = picked[:n_edit], picked[n_edit:]
    t_new = MUTATE_TIME * 1_000_000_000

    edited_bytes = 0
    for k, p in enumerate(edit):
        old = p.read_bytes()
        st = p.stat()
        patch = vocab.text(rng, r.randint(40, 2000))
        if k % 2 == 0 and len(old) > 2:
            a = r.randrange(len(old) // 2)
            b = min(len(old), a + r.randint(0, 400))
            new = old[:a] + patch + old[b:]
            p.write_bytes(new)
        else:
            with open(p, "ab") as f:
                f.write(patch)
        edited_bytes += len(patch)
        t = t_new + k
        os.utime(p, ns=(t, t))
        os.chmod(p, stat.S_IMODE(st.st_mode))

    # Insert 4 KiB in the middle of the largest file, in place (the inode stays).
    insert = rng.bytes(4096)
    size = largest.stat().st_size
    mid = size // 2
    with open(largest, "r+b") as f:
        f.seek(mid)
        tail = f.read()
        f.seek(mid)
        f.write(insert)
        f.write(tail)
    del tail
    os.utime(largest, ns=(t_new, t_new))

    dirs = sorted({p.parent for p in small})
    for i in range(n_add):
        d = r.choice(dirs)
        p = d / f"added_{seed}_{i}.py"
        _write(p, vocab.text(rng, r.randint(200, 12000)), 0o644, t_new + i)
        touched_dirs.add(d)
    for p in delete:
        p.unlink()
        touched_dirs.add(p.parent)
    for d in touched_dirs:
        os.utime(d, ns=(t_new, t_new))
    return {
        "root": str(root),
        "seed": seed,
        "edited": n_edit,
        "edited_bytes": edited_bytes,
        "inserted_into": str(largest.relative_to(root)),
        "inserted_bytes": len(insert),
        "added": n_add,
        "deleted": n_del,
        "seconds": round(time.perf_counter() - t_start, 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write a new dataset into an empty directory")
    g.add_argument("dir", type=Path)
    g.add_argument("--scale", type=float, default=1.0, help="1.0 = about 1 GB (default)")
    g.add_argument("--seed", type=int, default=1)
    m = sub.add_parser("mutate", help="apply the deterministic day-of-work mutation in place")
    m.add_argument("dir", type=Path)
    m.add_argument("--seed", type=int, default=2)
    f = sub.add_parser("many-files", help="write N small files (default one million)")
    f.add_argument("dir", type=Path)
    f.add_argument("--files", type=int, default=1_000_000)
    f.add_argument("--seed", type=int, default=1)
    z = sub.add_parser("sized", help="write about GB gigabytes of the mixed shape, in ~1 GB parts")
    z.add_argument("dir", type=Path)
    z.add_argument("--gb", type=float, required=True, help="target size in GB (10^9 bytes)")
    z.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if a.cmd == "generate":
        info = generate(a.dir, a.scale, a.seed)
    elif a.cmd == "many-files":
        info = generate_many_files(a.dir, a.files, a.seed)
    elif a.cmd == "sized":
        info = generate_sized(a.dir, round(a.gb * 1e9), a.seed)
    else:
        info = mutate(a.dir, a.seed)
    json.dump(info, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
