# The native listing (_dirscan.c); see resurgo/snapshot/dirscan.py.
import os

def scan(fd: int, /) -> list[tuple[bytes, os.stat_result, bytes]] | None: ...

ReadResult = tuple[int, bytes, int, int, int, bool] | tuple[int, int]

def read_small(items: list[tuple[bytes, int, int]], limit: int, /) -> list[ReadResult]: ...
