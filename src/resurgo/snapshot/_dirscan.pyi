# The native listing (_dirscan.c); see resurgo/snapshot/dirscan.py.
import os

def scan(fd: int, /) -> list[tuple[bytes, os.stat_result, bytes]] | None: ...

ReadResult = tuple[int, int, int, int, int, bool] | tuple[int, int]

def read_small(
    items: list[tuple[bytes, int, int, int]], limit: int, /
) -> tuple[bytes, list[ReadResult]]: ...

def subdirs(fd: int, dev: int, /) -> list[bytes]: ...
