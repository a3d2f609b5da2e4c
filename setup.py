"""The one native extension: resurgo.snapshot._dirscan (see src/resurgo/snapshot/dirscan.py).

Everything else about the package is in pyproject.toml. The extension is
optional: where it cannot be built, the backup lists directories in Python.
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "resurgo.snapshot._dirscan",
            ["src/resurgo/snapshot/_dirscan.c"],
            extra_compile_args=["-O2", "-std=gnu11"],
            optional=True,
        )
    ]
    if sys.platform.startswith("linux")
    else [],
)
