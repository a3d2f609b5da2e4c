"""Tree and snapshot serialization: round trips, determinism, strict validation."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resurgo.errors import CorruptObject, UnsupportedVersion
from resurgo.snapshot import model
from resurgo.snapshot.model import (
    Node,
    NodeType,
    Snapshot,
    decode_snapshot,
    decode_tree,
    encode_snapshot,
    encode_tree,
)

TREE_ID = bytes(range(32))
BLOB = "ab" * 32

# --- strategies ------------------------------------------------------------------

text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
names = st.one_of(
    text.map(lambda s: s.encode("utf-8")),
    st.binary(max_size=16),
).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"-")).filter(
    lambda b: b not in (b"", b".", b"..")
)
blob_ids = st.binary(min_size=32, max_size=32)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
times = st.integers(-(2**62), 2**62)
xattr_names = st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\0", b"."))


@st.composite
def nodes(draw: st.DrawFn, name: bytes | None = None) -> Node:
    ntype = draw(st.sampled_from(list(NodeType)))
    node = Node(
        name=draw(names) if name is None else name,
        type=ntype,
        mode=draw(st.integers(0, 0o7777)),
        uid=draw(u32),
        gid=draw(u32),
        user=draw(st.none() | text),
        group=draw(st.none() | text),
        mtime_ns=draw(times),
        atime_ns=draw(times),
        ctime_ns=draw(times),
        inode=draw(u64),
        device_id=draw(u64),
        nlink=draw(u64),
        rdev=draw(u64),
        xattrs=draw(st.dictionaries(xattr_names, st.binary(max_size=40), max_size=4)),
        error=draw(st.none() | text),
    )
    if ntype is NodeType.FILE:
        node.size = draw(st.integers(0, 2**40))
        node.content = draw(st.lists(blob_ids, max_size=4))
        cuts = sorted(draw(st.sets(st.integers(0, node.size), max_size=6)))
        node.holes = [(a, b - a) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if b > a]
    elif ntype is NodeType.DIR:
        node.subtree = draw(blob_ids)
    elif ntype is NodeType.SYMLINK:
        node.linktarget = draw(st.binary(min_size=1, max_size=30).map(lambda b: b.replace(b"\0", b"x")))
    return node


@st.composite
def trees(draw: st.DrawFn) -> list[Node]:
    unique = draw(st.lists(names, unique=True, max_size=8))
    return [draw(nodes(name=n)) for n in unique]


def raw_tree(*node_objs: dict[str, Any], v: Any = 1) -> bytes:
    return json.dumps({"v": v, "nodes": list(node_objs)}).encode()


def file_obj(name: str | None = "a", **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "file", **extra}


# --- round trips and determinism --------------------------------------------------


@settings(max_examples=200)
@given(trees())
def test_decode_tree_returns_the_encoded_nodes_sorted_by_raw_name(tree: list[Node]) -> None:
    data = encode_tree(tree)
    assert decode_tree(data) == sorted(tree, key=lambda n: n.name)


@given(trees(), st.randoms(use_true_random=False))
def test_encode_tree_is_independent_of_input_order(tree: list[Node], rnd: Any) -> None:
    shuffled = list(tree)
    rnd.shuffle(shuffled)
    assert encode_tree(shuffled) == encode_tree(tree)


@given(trees())
def test_reencoding_a_decoded_tree_gives_identical_bytes(tree: list[Node]) -> None:
    data = encode_tree(tree)
    assert encode_tree(decode_tree(data)) == data


@given(trees())
def test_xattr_order_does_not_change_the_bytes(tree: list[Node]) -> None:
    reversed_attrs = [
        Node(**{**{f: getattr(n, f) for f in Node.__slots__},
                "xattrs": dict(reversed(list(n.xattrs.items())))})
        for n in tree
    ]
    assert encode_tree(reversed_attrs) == encode_tree(tree)


def reference_encoding(tree: list[Node]) -> bytes:
    """The canonical form as docs/format-tree.md defines it: sorted keys, no spaces, json.dumps."""
    ordered = sorted(tree, key=lambda n: n.name)
    return model._canonical_json({"v": 1, "nodes": [model._encode_node(n) for n in ordered]})


surrogate_text = st.text(max_size=12)  # lone surrogates too (undecodable bytes in messages)


@settings(max_examples=300)
@given(trees(), st.lists(surrogate_text, min_size=3, max_size=3))
def test_encode_tree_writes_exactly_the_reference_json_encoding(tree: list[Node], texts: list[str]) -> None:
    if tree:
        tree[0].user, tree[0].group, tree[0].error = texts
    assert encode_tree(tree) == reference_encoding(tree)


def test_node_at_defaults_encodes_to_name_and_type_only() -> None:
    data = encode_tree([Node(name=b"a", type=NodeType.FILE)])
    assert data == b'{"nodes":[{"name":"a","type":"file"}],"v":1}'


def test_encoding_is_compact_sorted_key_utf8_json() -> None:
    node = Node(name="é".encode(), type=NodeType.DIR, mode=0o755, nlink=2,
                subtree=bytes.fromhex(BLOB), user="ünï")
    data = encode_tree([node])
    assert data == (
        '{"nodes":[{"mode":493,"name":"é","nlink":2,"subtree":"' + BLOB
        + '","type":"dir","user":"ünï"}],"v":1}'
    ).encode("utf-8")


def test_non_utf8_names_and_targets_are_stored_as_base64() -> None:
    node = Node(name=b"\xff\xfe", type=NodeType.SYMLINK, linktarget=b"/tmp/\x80",
                xattrs={b"user.\xff": b"\x00\x01", b"user.ok": b"v"})
    obj = json.loads(encode_tree([node]))["nodes"][0]
    assert obj["name_b64"] == base64.b64encode(b"\xff\xfe").decode()
    assert "name" not in obj
    assert obj["linktarget_b64"] == base64.b64encode(b"/tmp/\x80").decode()
    assert obj["xattrs"] == [  # sorted by raw name bytes: b"user.o" < b"user.\xff"
        {"name": "user.ok", "value": "dg=="},
        {"name_b64": base64.b64encode(b"user.\xff").decode(), "value": "AAE="},
    ]
    assert decode_tree(encode_tree([node])) == [node]


def test_error_text_with_undecodable_path_bytes_is_still_encodable() -> None:
    node = Node(name=b"f", type=NodeType.FILE, error="read /x/\udcff failed")
    decoded = decode_tree(encode_tree([node]))
    assert decoded[0].error == "read /x/\\udcff failed"


@pytest.mark.parametrize("bad", [b"", b".", b"..", b"a/b", b"a\0b"])
def test_encode_tree_refuses_hostile_names(bad: bytes) -> None:
    with pytest.raises(ValueError):
        encode_tree([Node(name=bad, type=NodeType.FILE)])


def test_encode_tree_refuses_duplicate_names() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        encode_tree([Node(name=b"x", type=NodeType.FILE), Node(name=b"x", type=NodeType.FIFO)])


# --- strict decoding ------------------------------------------------------------------


def assert_corrupt(data: bytes, reason: str) -> None:
    with pytest.raises(CorruptObject) as info:
        decode_tree(data, tree_id=TREE_ID)
    assert info.value.name == f"tree {TREE_ID.hex()}"
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        (file_obj(""), "empty name"),
        (file_obj("."), "forbidden name"),
        (file_obj(".."), "forbidden name"),
        (file_obj("a/b"), "contains '/'"),
        (file_obj("/etc"), "contains '/'"),
        (file_obj("a\u0000b"), "NUL"),
        ({"name_b64": base64.b64encode(b"..").decode(), "type": "file"}, "forbidden name"),
        ({"name_b64": base64.b64encode(b"x/../y").decode(), "type": "file"}, "contains '/'"),
        ({"type": "file"}, "no name"),
        ({"name": "a", "name_b64": "YQ==", "type": "file"}, "both"),
        ({"name": "a", "type": "door"}, "unknown node type"),
        ({"name": "a"}, "unknown node type"),
        (file_obj(content=["AB" * 32]), "hex"),
        (file_obj(content=["ab" * 31]), "hex"),
        (file_obj(content=["zz" * 32]), "hex"),
        ({"name": "d", "type": "dir", "subtree": BLOB.upper()}, "hex"),
        ({"name": "d", "type": "dir"}, "no subtree"),
        (file_obj(subtree=BLOB), "has a subtree"),
        ({"name": "d", "type": "dir", "subtree": BLOB, "content": [BLOB]}, "file content"),
        ({"name": "l", "type": "symlink"}, "target"),
        ({"name": "l", "type": "symlink", "linktarget": "a\u0000b"}, "target"),
        (file_obj(linktarget="x"), "link target"),
        (file_obj(mode=0o10755), "out of range"),
        (file_obj(mode=-1), "out of range"),
        (file_obj(uid=2**32), "out of range"),
        (file_obj(size=True), "not an integer"),
        (file_obj(mtime_ns=1.5), "not an integer"),
        (file_obj(user=5), "not a string"),
        (file_obj(size=10, holes=[[0, 20]]), "exceeds size"),
        (file_obj(size=10, holes=[[4, 2], [0, 2]]), "unsorted"),
        (file_obj(size=10, holes=[[0, 0]]), "hole"),
        (file_obj(size=10, holes=[[0]]), "malformed hole"),
        (file_obj(xattrs=[{"name": "user.a", "value": "!!"}]), "base64"),
        (file_obj(xattrs=[{"name": "user.a", "value": "YQ"}]), "base64"),
        (file_obj(xattrs=[{"name": "user.a"}]), "no value"),
        (file_obj(xattrs=[{"name": "", "value": ""}]), "invalid xattr name"),
        (file_obj(xattrs=[{"name": "u.a", "value": ""}, {"name": "u.a", "value": ""}]),
         "duplicate xattr"),
        (file_obj(colour="red"), "unknown node fields"),
        (file_obj(name_b64="@@@", name=None), "base64"),
    ],
)
def test_decode_tree_rejects_malformed_or_hostile_nodes(node: dict[str, Any], reason: str) -> None:
    node = {k: v for k, v in node.items() if v is not None}
    assert_corrupt(raw_tree(node), reason)
    # In the canonical form too (sorted keys, no spaces): the form the native
    # decoder parses, which must leave every one of these to Python.
    canonical = json.dumps({"nodes": [node], "v": 1}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()
    assert_corrupt(canonical, reason)


def test_decode_tree_rejects_duplicate_names() -> None:
    assert_corrupt(raw_tree(file_obj("x"), {"name_b64": "eA==", "type": "fifo"}), "duplicate name")


def test_decode_tree_rejects_duplicate_json_keys() -> None:
    assert_corrupt(b'{"v":1,"nodes":[{"name":"a","name":"..","type":"file"}]}', "duplicate JSON key")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "invalid JSON"),
        (b"{", "invalid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "not a JSON object"),
        (b'{"nodes":[]}', "format version"),
        (b'{"v":"1","nodes":[]}', "format version"),
        (b'{"v":1}', "unexpected tree fields"),
        (b'{"v":1,"nodes":{}}', "not a list"),
        (b'{"v":1,"nodes":[],"extra":1}', "unexpected tree fields"),
        (b'{"v":1,"nodes":[1]}', "not a JSON object"),
        (b'{"v":1,"nodes":[{"name":"a","type":"file","size":NaN}]}', "NaN"),
        (b"[" * 100000 + b"]" * 100000, "JSON"),
        (b'{"v":1,"nodes":[{"name":"a","type":"file","size":' + b"9" * 5000 + b"}]}",
         "invalid JSON"),
    ],
)
def test_decode_tree_rejects_malformed_documents(data: bytes, reason: str) -> None:
    assert_corrupt(data, reason)


def test_decode_tree_rejects_unknown_format_version() -> None:
    with pytest.raises(UnsupportedVersion, match="version 2"):
        decode_tree(raw_tree(file_obj(), v=2), tree_id=TREE_ID)


def test_decode_tree_accepts_noncanonical_but_unambiguous_input() -> None:
    data = b'{ "v": 1, "nodes": [ {"type":"file","name_b64":"Yg=="}, {"name":"a","type":"fifo"} ] }'
    assert decode_tree(data) == [Node(name=b"a", type=NodeType.FIFO), Node(name=b"b", type=NodeType.FILE)]


def test_unreadable_directory_may_lack_a_subtree_when_it_has_an_error() -> None:
    node = Node(name=b"d", type=NodeType.DIR, error="permission denied")
    assert decode_tree(encode_tree([node])) == [node]


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_decode_tree_on_garbage_raises_only_corrupt_object(data: bytes) -> None:
    try:
        decode_tree(data)
    except (CorruptObject, UnsupportedVersion):
        pass


@given(trees(), st.data())
def test_decode_tree_on_mutated_encodings_raises_only_typed_errors(
    tree: list[Node], data: st.DataObject
) -> None:
    encoded = bytearray(encode_tree(tree))
    pos = data.draw(st.integers(0, len(encoded) - 1))
    encoded[pos] = data.draw(st.integers(0, 255))
    try:
        for node in decode_tree(bytes(encoded)):
            assert node.name not in (b"", b".", b"..") and b"/" not in node.name
    except (CorruptObject, UnsupportedVersion):
        pass


# --- the native decoder ------------------------------------------------------------------


class _PythonOnly:
    """Within it, trees are decoded in Python only (hypothesis cannot use monkeypatch)."""

    def __enter__(self) -> None:
        self.saved = model._native_decode
        model._native_decode = None

    def __exit__(self, *exc: object) -> None:
        model._native_decode = self.saved


def _outcome(data: bytes) -> tuple[str, Any]:
    try:
        return "nodes", decode_tree(data, tree_id=TREE_ID)
    except (CorruptObject, UnsupportedVersion) as e:
        return type(e).__name__, str(e)


def _plain(node: Node) -> bool:
    """Whether the native decoder parses ``node``'s encoding itself (no escapes,
    no base64, no extended attributes or holes)."""
    texts = [t for t in (node.user, node.group, node.error) if t is not None]
    raw = [node.name] + ([node.linktarget] if node.linktarget is not None else [])
    try:
        texts += [b.decode("utf-8") for b in raw]
    except UnicodeDecodeError:
        return False  # base64
    return (
        not node.xattrs and not node.holes
        and all(min(map(ord, t), default=32) >= 32 and '"' not in t and "\\" not in t for t in texts)
    )


@settings(max_examples=300)
@given(trees())
def test_native_decoder_returns_what_the_python_decoder_does(native_decode, tree: list[Node]) -> None:
    data = encode_tree(tree)
    native = model._native_decode(data, Node, model._TYPES_BY_NAME, model.TREE_VERSION)
    with _PythonOnly():
        expected = decode_tree(data)
    if all(_plain(n) for n in tree):
        assert native == expected  # parsed natively, in name order
    assert decode_tree(data) == expected


@settings(max_examples=500)
@given(trees(), st.data())
def test_native_decoder_agrees_with_python_on_damaged_trees(
    native_decode, tree: list[Node], data: st.DataObject
) -> None:
    encoded = bytearray(encode_tree(tree))
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(encoded) - 1))
        encoded[pos] = data.draw(st.sampled_from(b'0123456789abcdefABCDEF-,:{}[]"\\ ./\x00\xff'))
    damaged = bytes(encoded)
    with _PythonOnly():
        expected = _outcome(damaged)
    assert _outcome(damaged) == expected


@settings(max_examples=300)
@given(trees(), st.data())
def test_reordered_repeated_or_padded_trees_decode_as_python_decodes_them(
    native_decode, tree: list[Node], data: st.DataObject
) -> None:
    # The native decoder trusts no canonical form: nodes out of order or
    # twice, fields in another order, defaults written out, a name that is
    # not UTF-8 must all come out as Python's decoder has them.
    doc = json.loads(encode_tree(tree))
    nodes = doc["nodes"]
    bad_name = False
    for _ in range(data.draw(st.integers(1, 3))):
        change = data.draw(st.sampled_from(["swap", "repeat", "keys", "default", "bad-name"]))
        if not nodes:
            break
        i = data.draw(st.integers(0, len(nodes) - 1))
        if change == "swap":
            j = data.draw(st.integers(0, len(nodes) - 1))
            nodes[i], nodes[j] = nodes[j], nodes[i]
        elif change == "repeat":
            nodes.insert(i, dict(nodes[i]))
        elif change == "keys":
            nodes[i] = dict(data.draw(st.permutations(list(nodes[i].items()))))
        elif change == "default":
            key = data.draw(st.sampled_from(["mode", "uid", "size", "nlink"]))
            nodes[i].setdefault(key, 1 if key == "nlink" else 0)
        else:
            bad_name = True
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    if bad_name:
        text = text.replace(b'"name":"', b'"name":"\xff', 1)  # a byte that is not UTF-8
    with _PythonOnly():
        expected = _outcome(text)
    assert _outcome(text) == expected


@pytest.mark.parametrize(
    "data",
    [
        b'{"nodes":[{"name":"a","nlink":1,"type":"file"}],"v":1}',  # a default written out
        b'{"nodes":[{"mode":0,"name":"a","type":"file"}],"v":1}',
        b'{"nodes":[{"mtime_ns":-0,"name":"a","type":"file"}],"v":1}',
        b'{"nodes":[{"name":"b","type":"file"},{"name":"a","type":"file"}],"v":1}',  # unsorted
        b'{"nodes":[{"type":"file","name":"a"}],"v":1}',  # keys out of order
        b'{"nodes":[{"content":[],"name":"a","type":"file"}],"v":1}',
        b'{"nodes":[{"name":"a","type":"file"}], "v":1}',
        # beyond 64 bits: valid, and left to Python
        b'{"nodes":[{"mtime_ns":-9223372036854775809,"name":"a","type":"file"}],"v":1}',
    ],
)
def test_noncanonical_trees_are_decoded_as_python_decodes_them(native_decode, data: bytes) -> None:
    with _PythonOnly():
        expected = _outcome(data)
    assert expected[0] == "nodes"
    assert _outcome(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b'{"nodes":[{"mode":4096,"name":"a","type":"file"}],"v":1}',
        b'{"nodes":[{"name":"a","type":"file","uid":4294967296}],"v":1}',
        b'{"nodes":[{"name":"a","size":18446744073709551616,"type":"file"}],"v":1}',
        b'{"nodes":[{"name":"a","subtree":"' + BLOB.encode() + b'","type":"file"}],"v":1}',
        b'{"nodes":[{"name":"d","type":"dir"}],"v":1}',
        b'{"nodes":[{"content":["' + BLOB.encode() + b'"],"name":"d","subtree":"' + BLOB.encode()
        + b'","type":"dir"}],"v":1}',
        b'{"nodes":[{"name":"l","type":"symlink"}],"v":1}',
        b'{"nodes":[{"linktarget":"x","name":"a","type":"file"}],"v":1}',
        b'{"nodes":[{"name":"..","type":"file"}],"v":1}',
        b'{"nodes":[{"name":"a/b","type":"file"}],"v":1}',
        b'{"nodes":[{"name":"a","name":"b","type":"file"}],"v":1}',
        b'{"nodes":[{"name":"\xed\xa0\x80","type":"file"}],"v":1}',  # a surrogate in UTF-8
        b'{"nodes":[{"name":"a","type":"file","user":"\xff"}],"v":1}',
        b'{"nodes":[{"name":"a","type":"file"}],"v":2}',
        b'{"nodes":[{"name":"a","type":"file"}],"v":1}x',
        b'{"nodes":[{"name":"b","type":"file"},{"name":"b","type":"file"}],"v":1}',  # twice
        b'{"nodes":[{"name":"\xff","type":"file"}],"v":1}',  # not UTF-8
        b'{"nodes":[{"linktarget":"\xc3","name":"l","type":"symlink"}],"v":1}',
    ],
)
def test_native_decoder_leaves_what_python_rejects_to_python(native_decode, data: bytes) -> None:
    # Left to Python, which names the error: the native decoder returns nothing.
    assert model._native_decode(data, Node, model._TYPES_BY_NAME, model.TREE_VERSION) is None
    with _PythonOnly():
        expected = _outcome(data)
    assert expected[0] != "nodes"
    assert _outcome(data) == expected


# --- snapshots -------------------------------------------------------------------------

paths = st.text(max_size=20)  # includes lone surrogates (undecodable bytes via surrogateescape)


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    return Snapshot(
        time_ns=draw(times),
        tree=draw(blob_ids),
        paths=draw(st.lists(paths, max_size=3)),
        hostname=draw(text),
        username=draw(text),
        uid=draw(u32),
        gid=draw(u32),
        tags=draw(st.lists(text, max_size=3)),
        parent=draw(st.none() | st.binary(min_size=32, max_size=32).map(bytes.hex)),
        summary=draw(st.dictionaries(text, st.integers() | st.floats(allow_nan=False, allow_infinity=False) | text,
                                     max_size=4)),
        program_version=draw(text),
        excludes=draw(st.lists(paths, max_size=3)),
        damaged=draw(st.booleans()),
    )


@settings(max_examples=200)
@given(snapshots())
def test_decode_snapshot_returns_the_encoded_snapshot(snap: Snapshot) -> None:
    decoded = decode_snapshot(encode_snapshot(snap), snapshot_id="ff00")
    snap.id = "ff00"
    assert decoded == snap


@given(snapshots())
def test_snapshot_encoding_is_deterministic_and_ascii(snap: Snapshot) -> None:
    data = encode_snapshot(snap)
    assert data == encode_snapshot(decode_snapshot(data))
    assert data.isascii()


def test_snapshot_id_is_not_serialized_and_defaults_are_omitted() -> None:
    snap = Snapshot(time_ns=5, tree=bytes.fromhex(BLOB), id="abcd")
    assert encode_snapshot(snap) == b'{"time_ns":5,"tree":"' + BLOB.encode() + b'","v":1}'


def test_snapshot_time_is_an_aware_utc_datetime() -> None:
    snap = Snapshot(time_ns=1_700_000_000_123_456_789, tree=bytes(32))
    assert snap.time.isoformat() == "2023-11-14T22:13:20.123456+00:00"


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"time_ns": 1}, "lacks"),
        ({"tree": BLOB}, "lacks"),
        ({"time_ns": 1, "tree": "xy"}, "hex"),
        ({"time_ns": 1.0, "tree": BLOB}, "not an integer"),
        ({"time_ns": 1, "tree": BLOB, "paths": "/"}, "not a list"),
        ({"time_ns": 1, "tree": BLOB, "tags": [1]}, "list of strings"),
        ({"time_ns": 1, "tree": BLOB, "parent": "XYZ"}, "parent"),
        ({"time_ns": 1, "tree": BLOB, "summary": []}, "summary"),
        ({"time_ns": 1, "tree": BLOB, "damaged": 1}, "damaged"),
        ({"time_ns": 1, "tree": BLOB, "comment": ""}, "unknown snapshot fields"),
    ],
)
def test_decode_snapshot_rejects_malformed_documents(doc: dict[str, Any], reason: str) -> None:
    with pytest.raises(CorruptObject) as info:
        decode_snapshot(json.dumps({"v": 1, **doc}).encode(), snapshot_id="beef")
    assert info.value.name == "snapshot beef"
    assert reason in info.value.reason


def test_decode_snapshot_rejects_unknown_format_version() -> None:
    data = json.dumps({"v": 7, "time_ns": 1, "tree": BLOB}).encode()
    with pytest.raises(UnsupportedVersion, match="snapshot beef"):
        decode_snapshot(data, snapshot_id="beef")


@given(
    field=st.sampled_from([f[0] for f in model._INT_FIELDS] + ["user", "group", "error"]),
    value=st.one_of(st.integers(-(2**66), 2**66), st.sampled_from([0, 1, 2**32 - 1, 2**32,
                    2**64 - 1, 2**64, -1, 0o7777, 0o10000]), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False),  # JSON has no others
                    st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=1)),
)
def test_a_node_field_is_accepted_exactly_when_of_its_type_and_in_range(field: str, value: Any) -> None:
    # The decoder checks all integer fields in one expression and only looks
    # for the culprit when that fails: both must agree with the field table.
    bounds = {f[0]: f[2:] for f in model._INT_FIELDS}
    if field in bounds:
        lo, hi = bounds[field]
        ok = type(value) is int and (lo is None or value >= lo) and (hi is None or value <= hi)
    else:
        ok = value is None or type(value) is str
    node = file_obj(**{field: value})
    if ok:
        (decoded,) = decode_tree(raw_tree(node))
        assert getattr(decoded, field) == value
    else:
        assert_corrupt(raw_tree(node), "not an integer" if field in bounds and type(value) is not int
                       else "out of range" if field in bounds else "not a string")


def test_the_text_field_named_is_the_one_that_is_not_a_string() -> None:
    # A null user before it must not be blamed (null is allowed).
    assert_corrupt(raw_tree(file_obj(user=None, group=5)), "field 'group' is not a string")


# --- the native encoder (_treejson.c) -----------------------------------------------


escapey = st.text(alphabet=st.sampled_from(list('ab"\\/\b\f\n\r\t\x00\x01\x1f\x7f é€😀')), max_size=10)


@settings(max_examples=300)
@given(trees(), st.lists(st.none() | escapey, min_size=3, max_size=3), escapey)
def test_the_native_encoder_writes_the_same_bytes_as_python(
    native_encode, tree: list[Node], texts: list[str | None], name: str
) -> None:
    for node in tree:
        node.holes = []  # sparse files are left to Python
    if tree:
        tree[0].user, tree[0].group, tree[0].error = texts
        raw = name.encode("utf-8").replace(b"/", b"_").replace(b"\0", b"-")
        if raw not in (b"", b".", b"..") and raw not in {n.name for n in tree[1:]}:
            tree[0].name = raw
    native = native_encode(tree, model.TREE_VERSION)
    assert native is not None
    assert native == model._encode_tree(tree) == reference_encoding(tree)


def test_the_native_encoder_leaves_the_unusual_to_python(native_encode) -> None:
    sparse = Node(b"s", NodeType.FILE, size=10, holes=[(0, 5)])
    surrogate = Node(b"u", NodeType.FILE, user="bad\udcff")
    big = Node(b"b", NodeType.FILE, inode=2**64, mtime_ns=-(2**63) - 1)
    for odd in (sparse, surrogate, big):
        assert native_encode([Node(b"a", NodeType.FILE), odd], 1) is None
        assert encode_tree([odd]) == reference_encoding([odd])
    for bad in (b"", b".", b"..", b"a/b", b"a\0b"):
        assert native_encode([Node(bad, NodeType.FILE)], 1) is None
    assert native_encode([Node(b"a", NodeType.FILE), Node(b"a", NodeType.DIR)], 1) is None
    assert native_encode([Node(b"a", NodeType.FILE), "not a node"], 1) is None
    assert native_encode([], 1) == b'{"nodes":[],"v":1}'
