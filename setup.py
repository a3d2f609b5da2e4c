"""The native extensions; everything else about the package is in pyproject.toml.

- resurgo.snapshot._dirscan: directory listing and small-file reading
  (src/resurgo/snapshot/dirscan.py).
- resurgo.snapshot._treejson: the canonical bytes of a tree
  (src/resurgo/snapshot/model.py, encode_tree).
- resurgo.snapshot._newfiles: a restore's small new files made in one call
  (src/resurgo/snapshot/newfiles.py).
- resurgo.repo._cdc: the content-defined cut points of a buffer in one call
  (src/resurgo/repo/chunker.py).
- resurgo.repo._seal: blob IDs and envelopes for a window of small blobs
  (src/resurgo/repo/batch.py), with libzstd, OpenSSL's libcrypto and the
  vendored BLAKE3 reference C (src/resurgo/repo/_blake3/README.md).

All five are optional: where they cannot be built, the same work is done in
Python, with the same result.
"""

import sys

from setuptools import Extension, setup

BLAKE3 = "src/resurgo/repo/_blake3/"

setup(
    ext_modules=[
        Extension(
            "resurgo.snapshot._dirscan",
            ["src/resurgo/snapshot/_dirscan.c"],
            extra_compile_args=["-O2", "-std=gnu11"],
            optional=True,
        ),
        Extension(
            "resurgo.snapshot._treejson",
            ["src/resurgo/snapshot/_treejson.c"],
            extra_compile_args=["-O2", "-std=gnu11"],
            optional=True,
        ),
        Extension(
            "resurgo.snapshot._newfiles",
            ["src/resurgo/snapshot/_newfiles.c"],
            extra_compile_args=["-O2", "-std=gnu11"],
            optional=True,
        ),
        Extension(
            "resurgo.repo._cdc",
            ["src/resurgo/repo/_cdc.c"],
            libraries=["m"],
            extra_compile_args=["-O3", "-std=gnu11"],
            optional=True,
        ),
        Extension(
            "resurgo.repo._seal",
            [
                "src/resurgo/repo/_seal.c",
                BLAKE3 + "blake3.c",
                BLAKE3 + "blake3_dispatch.c",
                BLAKE3 + "blake3_portable.c",
                BLAKE3 + "x86_sse2.c",
                BLAKE3 + "x86_sse41.c",
                BLAKE3 + "x86_avx2.c",
                BLAKE3 + "x86_avx512.c",
            ],
            libraries=["zstd", "crypto"],
            extra_compile_args=["-O3", "-std=gnu11"],
            optional=True,
        ),
    ]
    if sys.platform.startswith("linux")
    else [],
)
