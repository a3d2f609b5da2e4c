# The native making of small new files (_newfiles.c); see resurgo/snapshot/newfiles.py.
MADE: int
MADE_NO_TIMES: int
NO_TMPFILE: int
FAILED: int

def create(
    files: list[tuple[int, bytes, bytes | bytearray | memoryview, int, int, int, int]], /
) -> list[tuple[int, int]]: ...
