# The native listing (_dirscan.c); see resurgo/snapshot/dirscan.py.
import os

def scan(fd: int, /) -> list[tuple[bytes, os.stat_result, bytes]] | None: ...
