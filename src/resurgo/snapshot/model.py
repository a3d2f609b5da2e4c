"""The snapshot and tree model and its deterministic JSON serialization.

Vocabulary: a *node* is one directory entry (file, directory, symlink, device,
fifo, socket) with its metadata; a *tree* is the sorted list of the nodes of one
directory, stored as a TREE blob whose ID is the keyed hash of its bytes; a
*snapshot* names the root tree of one backup plus who/when/what.

Trees are serialized deterministically (same nodes, same bytes), so unchanged
directories deduplicate to the same tree blob across backups. The exact byte
format, defaults and validation rules are documented under "Trees and
snapshots" in the format documentation (``docs/``); this module implements it. Decoding is strict: anything malformed or hostile
(names such as ``..`` or containing ``/``) raises ``CorruptObject`` rather than
reaching the restore code.
"""

from __future__ import annotations

import binascii
import itertools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from json.encoder import encode_basestring as _json_str  # C; non-ASCII kept, as ensure_ascii=False
from typing import Any

from resurgo.errors import CorruptObject, UnsupportedVersion

_native_encode: Callable[[list[Any], int], bytes | None] | None
_native_decode: Callable[[bytes | memoryview, type, dict[str, Any], int], list[Any] | None] | None
try:
    from resurgo.snapshot._treejson import decode as _native_decode
    from resurgo.snapshot._treejson import encode as _native_encode
except ImportError:  # not built: trees are encoded and decoded in Python, alike
    _native_encode = _native_decode = None

TREE_VERSION = 1
SNAPSHOT_VERSION = 1

BLOB_ID_SIZE = 32
MAX_MODE = 0o7777  # permission bits plus setuid, setgid, sticky
MAX_ID = 2**32 - 1  # uid/gid
MAX_U64 = 2**64 - 1


class NodeType(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    BLOCKDEV = "blockdev"
    CHARDEV = "chardev"
    FIFO = "fifo"
    SOCKET = "socket"


@dataclass(slots=True)
class Node:
    """One directory entry. Field defaults are the values omitted on disk."""

    name: bytes
    type: NodeType
    mode: int = 0  # permission + setuid/setgid/sticky bits, never file-type bits
    uid: int = 0
    gid: int = 0
    user: str | None = None
    group: str | None = None
    mtime_ns: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    device_id: int = 0  # st_dev of the filesystem the entry lived on
    nlink: int = 1
    rdev: int = 0  # device number of block/char devices
    linktarget: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    content: list[bytes] = field(default_factory=list)  # data blob IDs, in file order
    holes: list[tuple[int, int]] = field(default_factory=list)  # (offset, length)
    subtree: bytes | None = None  # tree blob ID of a directory
    error: str | None = None  # set when the entry could not be fully read, or was damaged


@dataclass(slots=True)
class Snapshot:
    """One backup: the root tree plus its provenance. ``id`` is set on load/save."""

    time_ns: int
    tree: bytes
    paths: list[str] = field(default_factory=list)
    hostname: str = ""
    username: str = ""
    uid: int = 0
    gid: int = 0
    tags: list[str] = field(default_factory=list)
    parent: str | None = None  # snapshot ID (hex) this backup was based on
    summary: dict[str, Any] = field(default_factory=dict)
    program_version: str = ""
    excludes: list[str] = field(default_factory=list)
    damaged: bool = False  # set by repair when parts of the tree were replaced
    # ID (hex) of the snapshot this one was copied from, in another repository
    # (the first one, for a copy of a copy); None for a snapshot made by backup.
    original: str | None = None
    id: str | None = None  # not serialized

    @property
    def time(self) -> datetime:
        """The snapshot time as an aware UTC datetime (microsecond precision)."""
        secs, ns = divmod(self.time_ns, 1_000_000_000)
        return datetime.fromtimestamp(secs, UTC).replace(microsecond=ns // 1000)

    @property
    def short_id(self) -> str:
        return (self.id or "")[:8]


# --- encoding helpers ---------------------------------------------------------


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _put_bytes(out: dict[str, Any], key: str, value: bytes) -> None:
    """Store raw bytes as a string when they are valid UTF-8, else as base64."""
    try:
        out[key] = value.decode("utf-8")
    except UnicodeDecodeError:
        out[key + "_b64"] = _b64(value)


def _canonical_json(obj: Any, *, ascii_only: bool = False) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only, allow_nan=False
    ).encode("utf-8")


def _text(value: str) -> str:
    """``value`` made encodable as UTF-8: lone surrogates (undecodable bytes carried by
    ``surrogateescape``, e.g. in an error message naming a path) become ``\\udcNN`` text."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def check_name(name: bytes) -> str | None:
    """Why ``name`` is not a safe directory entry name, or None when it is."""
    if not name:
        return "empty name"
    if name in (b".", b".."):
        return f"forbidden name {name!r}"
    if b"/" in name or b"\0" in name:
        return f"name contains '/' or NUL: {name!r}"
    return None


def _encode_node(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"type": node.type.value}
    _put_bytes(out, "name", node.name)
    for key in ("mode", "uid", "gid", "mtime_ns", "atime_ns", "ctime_ns", "size", "inode",
                "device_id", "rdev"):
        value = getattr(node, key)
        if value != 0:
            out[key] = value
    if node.nlink != 1:
        out["nlink"] = node.nlink
    if node.user is not None:
        out["user"] = _text(node.user)
    if node.group is not None:
        out["group"] = _text(node.group)
    if node.error is not None:
        out["error"] = _text(node.error)
    if node.linktarget is not None:
        _put_bytes(out, "linktarget", node.linktarget)
    if node.xattrs:
        attrs = []
        for xname in sorted(node.xattrs):
            entry: dict[str, Any] = {"value": _b64(node.xattrs[xname])}
            _put_bytes(entry, "name", xname)
            attrs.append(entry)
        out["xattrs"] = attrs
    if node.content:
        out["content"] = [blob_id.hex() for blob_id in node.content]
    if node.holes:
        out["holes"] = [[offset, length] for offset, length in node.holes]
    if node.subtree is not None:
        out["subtree"] = node.subtree.hex()
    return out


def _json_bytes(key: str, value: bytes) -> str:
    """``"key":"text"`` for bytes that are UTF-8, else ``"key_b64":"base64"`` (as ``_put_bytes``)."""
    try:
        return f'"{key}":{_json_str(value.decode("utf-8"))}'
    except UnicodeDecodeError:
        return f'"{key}_b64":"{_b64(value)}"'


def _node_json(node: Node) -> str:
    """The canonical JSON object of one node, as ``_canonical_json(_encode_node(node))``
    writes it, built directly: the fields are appended in sorted key order."""
    parts: list[str] = []
    add = parts.append
    if node.atime_ns:
        add(f'"atime_ns":{int(node.atime_ns)}')
    if node.content:
        add('"content":["' + '","'.join([b.hex() for b in node.content]) + '"]')
    if node.ctime_ns:
        add(f'"ctime_ns":{int(node.ctime_ns)}')
    if node.device_id:
        add(f'"device_id":{int(node.device_id)}')
    if node.error is not None:
        add('"error":' + _json_str(_text(node.error)))
    if node.gid:
        add(f'"gid":{int(node.gid)}')
    if node.group is not None:
        add('"group":' + _json_str(_text(node.group)))
    if node.holes:
        add('"holes":[' + ",".join([f"[{int(o)},{int(n)}]" for o, n in node.holes]) + "]")
    if node.inode:
        add(f'"inode":{int(node.inode)}')
    if node.linktarget is not None:
        add(_json_bytes("linktarget", node.linktarget))
    if node.mode:
        add(f'"mode":{int(node.mode)}')
    if node.mtime_ns:
        add(f'"mtime_ns":{int(node.mtime_ns)}')
    add(_json_bytes("name", node.name))
    if node.nlink != 1:
        add(f'"nlink":{int(node.nlink)}')
    if node.rdev:
        add(f'"rdev":{int(node.rdev)}')
    if node.size:
        add(f'"size":{int(node.size)}')
    if node.subtree is not None:
        add(f'"subtree":"{node.subtree.hex()}"')
    add(f'"type":"{node.type.value}"')
    if node.uid:
        add(f'"uid":{int(node.uid)}')
    if node.user is not None:
        add('"user":' + _json_str(_text(node.user)))
    if node.xattrs:
        add('"xattrs":[' + ",".join([
            "{" + _json_bytes("name", xname) + f',"value":"{_b64(node.xattrs[xname])}"' + "}"
            for xname in sorted(node.xattrs)
        ]) + "]")
    return "{" + ",".join(parts) + "}"


def _node_name(node: Node) -> bytes:
    return node.name


def encode_tree(nodes: Iterable[Node]) -> bytes:
    """Canonical bytes of a tree: nodes sorted by raw name, canonical JSON.

    Raises ValueError for nodes no valid tree may contain (bad or duplicate
    names): those are programming errors, not damage. The bytes equal
    ``_canonical_json`` of the ``_encode_node`` dicts; they are written
    directly because a backup encodes every directory it saves (about 3x
    faster than building dicts for ``json.dumps``), in C when the extension
    is built (``_treejson.c``: the same bytes, ~3x faster again), which
    leaves anything unusual (holes, lone surrogates, bad names) to the code
    below.
    """
    nodes = list(nodes)
    if _native_encode is not None:
        encoded = _native_encode(nodes, TREE_VERSION)
        if encoded is not None:
            return encoded
    return _encode_tree(nodes)


def _encode_tree(nodes: list[Node]) -> bytes:
    """``encode_tree`` in Python."""
    ordered = sorted(nodes, key=_node_name)
    prev = None
    for node in ordered:
        name = node.name
        if not name or name == b"." or name == b".." or b"/" in name or b"\0" in name:
            raise ValueError(f"cannot encode tree: {check_name(name)}")
        if name == prev:
            raise ValueError(f"cannot encode tree: duplicate name {name!r}")
        prev = name
    return ('{"nodes":[' + ",".join([_node_json(n) for n in ordered])
            + '],"v":' + str(TREE_VERSION) + "}").encode("utf-8")


# --- decoding -------------------------------------------------------------------


class _Invalid(Exception):
    """Internal: a validation failure, turned into CorruptObject with the object name."""




def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Built in C, then a count comparison: a duplicate key is the only way the
    # dict can come out smaller than the pair list.
    out = dict(pairs)
    if len(out) != len(pairs):
        keys = [k for k, _ in pairs]
        dup = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise _Invalid(f"duplicate JSON key {dup!r}")
    return out


def _reject_constant(token: str) -> Any:
    raise _Invalid(f"invalid JSON number {token}")


def _parse_json(data: bytes) -> Any:
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Invalid(f"not UTF-8: {exc}") from None
    try:
        return json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        raise _Invalid(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise _Invalid("JSON nested too deeply") from None


def _check_version(obj: Any, expected: int, what: str, name: str) -> None:
    if not isinstance(obj, dict):
        raise _Invalid(f"{what} is not a JSON object")
    version = obj.get("v")
    if type(version) is not int:
        raise _Invalid(f"{what} has no integer format version 'v'")
    if version != expected:
        raise UnsupportedVersion(
            f"{name}: {what} format version {version} is not supported "
            f"(this resurgo reads version {expected})"
        )


def _int(obj: dict[str, Any], key: str, default: int, lo: int | None, hi: int | None) -> int:
    value = obj.get(key, default)
    if type(value) is not int:
        raise _Invalid(f"field {key!r} is not an integer")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _Invalid(f"field {key!r} out of range: {value}")
    return value


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise _Invalid(f"field {key!r} is not a string")
    return value


def _str(obj: dict[str, Any], key: str, default: str) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str):
        raise _Invalid(f"field {key!r} is not a string")
    return value


def _unb64(value: Any, key: str) -> bytes:
    if not isinstance(value, str):
        raise _Invalid(f"field {key!r} is not a string")
    try:
        return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _Invalid(f"field {key!r} is not valid base64: {exc}") from None


def _get_bytes(obj: dict[str, Any], key: str) -> bytes | None:
    """Inverse of _put_bytes: exactly one of ``key`` / ``key_b64`` (or neither)."""
    plain, b64 = obj.get(key), obj.get(key + "_b64")
    if plain is not None and b64 is not None:
        raise _Invalid(f"both {key!r} and {key + '_b64'!r} present")
    if plain is not None:
        if not isinstance(plain, str):
            raise _Invalid(f"field {key!r} is not a string")
        try:
            return plain.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid(f"field {key!r} is not valid Unicode") from None
    if b64 is not None:
        return _unb64(b64, key + "_b64")
    return None


def _blob_id(value: Any, key: str) -> bytes:
    # fromhex + hex() round trip: as strict as the regular expression (64
    # lowercase hex digits, nothing else) at a fraction of its cost per blob.
    try:
        raw = bytes.fromhex(value)
        if len(raw) == 32 and raw.hex() == value:
            return raw
    except (TypeError, ValueError):
        pass
    raise _Invalid(f"field {key!r} is not a 64-character lowercase hex blob ID")


def _list(obj: dict[str, Any], key: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise _Invalid(f"field {key!r} is not a list")
    return value


_NODE_KEYS = frozenset({
    "name", "name_b64", "type", "mode", "uid", "gid", "user", "group", "mtime_ns", "atime_ns",
    "ctime_ns", "size", "inode", "device_id", "nlink", "rdev", "linktarget", "linktarget_b64",
    "xattrs", "content", "holes", "subtree", "error",
})
_NODE_TYPES = {t.value: t for t in NodeType}


def _decode_xattrs(raw: list[Any]) -> dict[bytes, bytes]:
    xattrs: dict[bytes, bytes] = {}
    for entry in raw:
        if not isinstance(entry, dict) or not set(entry) <= {"name", "name_b64", "value"}:
            raise _Invalid("malformed xattr entry")
        xname = _get_bytes(entry, "name")
        if not xname or b"\0" in xname:
            raise _Invalid(f"invalid xattr name {xname!r}")
        if xname in xattrs:
            raise _Invalid(f"duplicate xattr {xname!r}")
        if "value" not in entry:
            raise _Invalid(f"xattr {xname!r} has no value")
        xattrs[xname] = _unb64(entry["value"], "xattrs.value")
    return xattrs


def _decode_holes(raw: list[Any], size: int) -> list[tuple[int, int]]:
    holes: list[tuple[int, int]] = []
    end = 0
    for hole in raw:
        if (not isinstance(hole, list) or len(hole) != 2
                or not all(type(x) is int for x in hole)):
            raise _Invalid("malformed hole entry")
        offset, length = hole
        if offset < end or length <= 0 or offset + length > size:
            raise _Invalid(f"hole ({offset}, {length}) overlaps, is unsorted or exceeds size")
        holes.append((offset, length))
        end = offset + length
    return holes


_INT_FIELDS: tuple[tuple[str, int, int | None, int | None], ...] = (
    ("mode", 0, 0, MAX_MODE),
    ("uid", 0, 0, MAX_ID),
    ("gid", 0, 0, MAX_ID),
    ("mtime_ns", 0, None, None),
    ("atime_ns", 0, None, None),
    ("ctime_ns", 0, None, None),
    ("size", 0, 0, MAX_U64),
    ("inode", 0, 0, MAX_U64),
    ("device_id", 0, 0, MAX_U64),
    ("nlink", 1, 0, MAX_U64),
    ("rdev", 0, 0, MAX_U64),
)


def _reject_int_fields(obj: dict[str, Any]) -> None:
    """Raise for the first integer field of a node that is not an integer in range."""
    for key, default, lo, hi in _INT_FIELDS:
        value = obj.get(key, default)
        if type(value) is not int:
            raise _Invalid(f"field {key!r} is not an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise _Invalid(f"field {key!r} out of range: {value}")
    raise AssertionError("integer fields rejected and accepted at once")


def _decode_node(obj: Any) -> Node:
    # Every parent tree a backup compares with passes through here, one call per
    # entry: the common cases (plain UTF-8 name, absent optional fields) are
    # checked inline; the rare ones go through the general helpers.
    if type(obj) is not dict:
        raise _Invalid("node is not a JSON object")
    if not obj.keys() <= _NODE_KEYS:
        raise _Invalid(f"unknown node fields {sorted(set(obj) - _NODE_KEYS)}")
    get = obj.get
    plain_name = get("name")
    if type(plain_name) is str and "name_b64" not in obj:
        try:
            name = plain_name.encode("utf-8")
        except UnicodeEncodeError:
            raise _Invalid("field 'name' is not valid Unicode") from None
    else:
        got = _get_bytes(obj, "name")
        if got is None:
            raise _Invalid("node has no name")
        name = got
    if not name or name == b"." or name == b".." or b"/" in name or b"\0" in name:
        raise _Invalid(check_name(name) or "invalid name")
    type_name = get("type")
    ntype = _NODE_TYPES.get(type_name) if type(type_name) is str else None
    if ntype is None:
        raise _Invalid(f"unknown node type {type_name!r} for {name!r}")
    # The integer fields, checked in one expression (a loop over _INT_FIELDS
    # costs a third of the decoding); on failure the loop finds which one.
    mode, uid, gid = get("mode", 0), get("uid", 0), get("gid", 0)
    mtime_ns, atime_ns, ctime_ns = get("mtime_ns", 0), get("atime_ns", 0), get("ctime_ns", 0)
    size, inode, device_id = get("size", 0), get("inode", 0), get("device_id", 0)
    nlink, rdev = get("nlink", 1), get("rdev", 0)
    if not (
        type(mode) is int and type(uid) is int and type(gid) is int
        and type(mtime_ns) is int and type(atime_ns) is int and type(ctime_ns) is int
        and type(size) is int and type(inode) is int and type(device_id) is int
        and type(nlink) is int and type(rdev) is int
        and 0 <= mode <= MAX_MODE and 0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID
        and 0 <= size <= MAX_U64 and 0 <= inode <= MAX_U64 and 0 <= device_id <= MAX_U64
        and 0 <= nlink <= MAX_U64 and 0 <= rdev <= MAX_U64
    ):
        _reject_int_fields(obj)
    user, group, error = get("user"), get("group"), get("error")
    if not ((user is None or type(user) is str) and (group is None or type(group) is str)
            and (error is None or type(error) is str)):
        for key in ("user", "group", "error"):
            value = get(key)
            if value is not None and type(value) is not str:
                raise _Invalid(f"field {key!r} is not a string")
    linktarget = (_get_bytes(obj, "linktarget")
                  if "linktarget" in obj or "linktarget_b64" in obj else None)
    if ntype is NodeType.SYMLINK:
        if not linktarget or b"\0" in linktarget:
            raise _Invalid(f"symlink {name!r} has an empty or NUL-containing target")
    elif linktarget is not None:
        raise _Invalid(f"{type_name} {name!r} has a link target")
    xattrs = _decode_xattrs(_list(obj, "xattrs")) if "xattrs" in obj else {}
    content = get("content")
    if content is None:
        content = []
    elif type(content) is list:
        content = [_blob_id(v, "content") for v in content]
    else:
        raise _Invalid("field 'content' is not a list")
    holes = _decode_holes(_list(obj, "holes"), size) if "holes" in obj else []
    if (content or holes) and ntype is not NodeType.FILE:
        raise _Invalid(f"{type_name} {name!r} has file content")
    node = Node(name, ntype, mode, uid, gid, user, group, mtime_ns, atime_ns, ctime_ns,
                size, inode, device_id, nlink, rdev, linktarget, xattrs, content, holes, None,
                error)
    if "subtree" in obj:
        if ntype is not NodeType.DIR:
            raise _Invalid(f"{type_name} {name!r} has a subtree")
        node.subtree = _blob_id(obj["subtree"], "subtree")
    elif ntype is NodeType.DIR and node.error is None:
        raise _Invalid(f"directory {name!r} has no subtree")
    return node


_TYPES_BY_NAME: dict[str, NodeType] = {t.value: t for t in NodeType}


def _tree_name(tree_id: bytes | None) -> str:
    return f"tree {tree_id.hex()}" if tree_id is not None else "tree"


def decode_tree(data: bytes, *, tree_id: bytes | None = None) -> list[Node]:
    """Parse and validate a tree; nodes come back sorted by raw name.

    Raises CorruptObject("tree <id>", reason) for anything malformed or hostile,
    UnsupportedVersion for an unknown format version.
    """
    if _native_decode is not None:
        # Decoded in C (_treejson.c) when it can, with the same result and the
        # same rules as the code below; anything it leaves, damage included,
        # is decoded (and its error named) below.
        nodes = _native_decode(data, Node, _TYPES_BY_NAME, TREE_VERSION)
        if nodes is not None:
            return nodes
    name = _tree_name(tree_id)
    try:
        obj = _parse_json(data)
        _check_version(obj, TREE_VERSION, "tree", name)
        if set(obj) != {"v", "nodes"}:
            raise _Invalid(f"unexpected tree fields {sorted(set(obj) - {'v'})}")
        raw_nodes = obj["nodes"]
        if not isinstance(raw_nodes, list):
            raise _Invalid("'nodes' is not a list")
        nodes = sorted((_decode_node(n) for n in raw_nodes), key=lambda n: n.name)
        for prev, cur in itertools.pairwise(nodes):
            if prev.name == cur.name:
                raise _Invalid(f"duplicate name {cur.name!r}")
        return nodes
    except _Invalid as exc:
        raise CorruptObject(name, str(exc)) from None


# --- snapshots ----------------------------------------------------------------------


_SNAPSHOT_KEYS = frozenset({
    "v", "time_ns", "tree", "paths", "hostname", "username", "uid", "gid", "tags", "parent",
    "summary", "program_version", "excludes", "damaged", "original",
})


def encode_snapshot(snap: Snapshot) -> bytes:
    """Canonical JSON of a snapshot (``id`` excluded); defaults are omitted.

    Non-ASCII is written as ``\\u`` escapes so that paths carrying undecodable
    bytes (surrogate escapes) survive the round trip.
    """
    out: dict[str, Any] = {"v": SNAPSHOT_VERSION, "time_ns": snap.time_ns, "tree": snap.tree.hex()}
    for key in ("paths", "tags", "excludes"):
        value = getattr(snap, key)
        if value:
            out[key] = list(value)
    for key in ("hostname", "username", "program_version"):
        value = getattr(snap, key)
        if value:
            out[key] = value
    for key in ("uid", "gid"):
        value = getattr(snap, key)
        if value:
            out[key] = value
    if snap.parent is not None:
        out["parent"] = snap.parent
    if snap.summary:
        out["summary"] = snap.summary
    if snap.damaged:
        out["damaged"] = True
    if snap.original is not None:
        out["original"] = snap.original
    return _canonical_json(out, ascii_only=True)


def _str_list(obj: dict[str, Any], key: str) -> list[str]:
    value = _list(obj, key)
    if not all(isinstance(v, str) for v in value):
        raise _Invalid(f"field {key!r} is not a list of strings")
    return list(value)


def decode_snapshot(data: bytes, *, snapshot_id: str | None = None) -> Snapshot:
    """Parse and validate a snapshot; ``snapshot_id`` names it in errors and sets ``id``."""
    name = f"snapshot {snapshot_id}" if snapshot_id else "snapshot"
    try:
        obj = _parse_json(data)
        _check_version(obj, SNAPSHOT_VERSION, "snapshot", name)
        unknown = set(obj) - _SNAPSHOT_KEYS
        if unknown:
            raise _Invalid(f"unknown snapshot fields {sorted(unknown)}")
        if "time_ns" not in obj or "tree" not in obj:
            raise _Invalid("snapshot lacks 'time_ns' or 'tree'")
        parent = _opt_str(obj, "parent")
        if parent is not None and not re.fullmatch(r"[0-9a-f]+", parent):
            raise _Invalid("field 'parent' is not a lowercase hex snapshot ID")
        original = _opt_str(obj, "original")
        if original is not None and not re.fullmatch(r"[0-9a-f]+", original):
            raise _Invalid("field 'original' is not a lowercase hex snapshot ID")
        summary = obj.get("summary", {})
        if not isinstance(summary, dict):
            raise _Invalid("field 'summary' is not an object")
        damaged = obj.get("damaged", False)
        if not isinstance(damaged, bool):
            raise _Invalid("field 'damaged' is not a boolean")
        return Snapshot(
            time_ns=_int(obj, "time_ns", 0, None, None),
            tree=_blob_id(obj["tree"], "tree"),
            paths=_str_list(obj, "paths"),
            hostname=_str(obj, "hostname", ""),
            username=_str(obj, "username", ""),
            uid=_int(obj, "uid", 0, 0, MAX_ID),
            gid=_int(obj, "gid", 0, 0, MAX_ID),
            tags=_str_list(obj, "tags"),
            parent=parent,
            summary=summary,
            program_version=_str(obj, "program_version", ""),
            excludes=_str_list(obj, "excludes"),
            damaged=damaged,
            original=original,
            id=snapshot_id,
        )
    except _Invalid as exc:
        raise CorruptObject(name, str(exc)) from None
