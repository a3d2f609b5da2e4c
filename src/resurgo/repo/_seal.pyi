# The native sealing of small blobs (_seal.c); see resurgo/repo/batch.py.
_Buf = bytes | bytearray | memoryview

class CDict:
    def __init__(self, data: _Buf, level: int) -> None: ...

def blob_ids(key: _Buf, data: _Buf, spans: list[tuple[int, int]], /) -> list[bytes]: ...
def seal(
    key: _Buf, kind: int, data: _Buf,
    items: list[tuple[int, int, bytes, int, CDict | None, bytes | None]], /,
) -> tuple[bytes, list[tuple[int, int]]]: ...
