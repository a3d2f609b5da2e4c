# The canonical bytes of a tree in C (_treejson.c); see resurgo/snapshot/model.py.
from typing import Any

def encode(nodes: list[Any], version: int, /) -> bytes | None: ...
def decode(
    data: bytes | bytearray | memoryview, node_class: type, types: dict[str, Any], version: int, /
) -> list[Any] | None: ...
