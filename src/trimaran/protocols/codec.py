"""msgpack encoding of the wire vocabulary, with hard limits on everything untrusted.

Every decode of bytes that came from outside the process goes through :func:`unpack`, which sets
msgpack's length ceilings, refuses values nested deeper than ``limits.msgpack_depth_max`` (checked
on the bytes, before any object is built), refuses ext types and non-string map keys, and turns any
failure into a typed :class:`~trimaran.errors.ProtocolError`. Message decoding then checks each
field's type, so the consensus core never sees a malformed value. An untrusted value shown in an
error message or a log line goes through :func:`brief`, whose output and work are bounded.
"""

from __future__ import annotations

import reprlib
from itertools import compress
from typing import Any, Callable

import msgpack

from trimaran import limits
from trimaran.errors import FrameTooLarge, ProtocolError
from trimaran.protocols.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    ConfChange,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Membership,
    Message,
    SnapshotMeta,
)

# --- raw msgpack with limits --------------------------------------------------------------------


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack ext type {code} is not accepted")


def pack(obj: Any) -> bytes:
    """Encode plain data (ints, bytes, str, lists, str-keyed maps) to msgpack."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(
    data: bytes, *, size_bytes_max: int = limits.frame_bytes_max, depth_max: int = limits.msgpack_depth_max
) -> Any:
    """Decode untrusted msgpack bytes under hard limits; raise ``ProtocolError`` on anything odd.

    ``depth_max``: lists and maps nested deeper are refused before anything is built (see
    :func:`depth_within`)."""
    if len(data) > size_bytes_max:
        raise FrameTooLarge(f"{len(data)} bytes is over the limit of {size_bytes_max}")
    if not depth_within(data, depth_max):
        raise ProtocolError(f"msgpack value nested deeper than {depth_max} levels")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            max_str_len=limits.msgpack_str_len_max,
            max_bin_len=limits.msgpack_bin_len_max,
            max_array_len=limits.msgpack_array_len_max,
            max_map_len=limits.msgpack_map_len_max,
            max_ext_len=0,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"malformed msgpack: {exc}") from None


# --- nesting depth ------------------------------------------------------------------------------
#
# The depth of a value is the number of lists and maps on its longest path from the top (a scalar:
# 0, ``[]``: 1, ``[[1], 2]``: 2); an empty list or map counts like any other. msgpack's C unpacker
# has no depth option, and its fallback recurses, so :func:`depth_within` answers from the bytes,
# the same way on every machine and under any recursion limit.

#: Bytes that open a list or a map: fixmap, fixarray, array 16/32, map 16/32.
_CONTAINER_HEADS = frozenset(range(0x80, 0xA0)) | {0xDC, 0xDD, 0xDE, 0xDF}
_NOT_CONTAINER_HEADS = bytes(b for b in range(256) if b not in _CONTAINER_HEADS)
#: Up to this size, counting the bytes that could open a container is cheaper than a scan.
_COUNT_HEADS_BYTES_MAX = 1024
#: From this size, a short scan is tried first: a frame this big is mostly strings and binaries
#: (log entries), which the scan steps over, while the C check copies every byte.
_SCAN_FIRST_BYTES_MIN = 64 * limits.KIB
#: Items the short scan reads before it leaves the rest to the C check.
_SCAN_FIRST_ITEMS_MAX = 256

# Per first byte: the kind of item it starts, and the bytes that follow it (for a string, binary or
# container of 16 or 32 bits: the bytes of its length).
_SCALAR, _FIXSTR, _SIZED, _SIZED_EXT, _FIXARRAY, _FIXMAP, _ARRAY, _MAP, _BAD = range(9)
_KIND = [_BAD] * 256
_EXTRA = [0] * 256
for _b in range(256):
    if _b <= 0x7F or _b >= 0xE0 or _b in (0xC0, 0xC2, 0xC3):
        _KIND[_b] = _SCALAR
    elif _b <= 0x8F:
        _KIND[_b] = _FIXMAP
    elif _b <= 0x9F:
        _KIND[_b] = _FIXARRAY
    elif _b <= 0xBF:
        _KIND[_b] = _FIXSTR
for _b, _kind, _extra in (
    (0xCC, _SCALAR, 1), (0xCD, _SCALAR, 2), (0xCE, _SCALAR, 4), (0xCF, _SCALAR, 8),
    (0xD0, _SCALAR, 1), (0xD1, _SCALAR, 2), (0xD2, _SCALAR, 4), (0xD3, _SCALAR, 8),
    (0xCA, _SCALAR, 4), (0xCB, _SCALAR, 8),
    (0xC4, _SIZED, 1), (0xC5, _SIZED, 2), (0xC6, _SIZED, 4),  # bin 8/16/32
    (0xD9, _SIZED, 1), (0xDA, _SIZED, 2), (0xDB, _SIZED, 4),  # str 8/16/32
    (0xDC, _ARRAY, 2), (0xDD, _ARRAY, 4), (0xDE, _MAP, 2), (0xDF, _MAP, 4),
    (0xD4, _SCALAR, 2), (0xD5, _SCALAR, 3), (0xD6, _SCALAR, 5), (0xD7, _SCALAR, 9), (0xD8, _SCALAR, 17),  # fixext
    (0xC7, _SIZED_EXT, 1), (0xC8, _SIZED_EXT, 2), (0xC9, _SIZED_EXT, 4),  # ext 8/16/32: length, type, data
):  # fmt: skip
    _KIND[_b], _EXTRA[_b] = _kind, _extra


def depth_within_scan(data: bytes, depth_max: int) -> bool:
    """False if ``data`` opens more than ``depth_max`` nested lists or maps before it ends or turns
    out malformed (a malformed value is :func:`unpack`'s to refuse). One pass, no recursion."""
    answer = _scan(data, depth_max, -1)
    assert answer is not None
    return answer


def _scan(data: bytes, depth_max: int, items_max: int) -> bool | None:
    """:func:`depth_within_scan`, or None once ``items_max`` items are read (-1: no bound)."""
    kind_of, extra_of = _KIND, _EXTRA
    end = len(data)
    pos = 0
    depth = 0
    # Items still to read in each open container (a map's count is doubled: keys and values).
    left = [1]
    while pos < end:
        while left[-1] == 0:
            left.pop()
            depth -= 1
            if not left:
                return True  # one whole value read (trailing bytes are unpack's to refuse)
        left[-1] -= 1
        if items_max == 0:
            return None
        items_max -= 1
        b = data[pos]
        pos += 1
        kind = kind_of[b]
        if kind == _SCALAR:
            pos += extra_of[b]
        elif kind == _FIXSTR:
            pos += b & 0x1F
        elif kind == _SIZED or kind == _SIZED_EXT:
            n = extra_of[b]
            pos += n + int.from_bytes(data[pos : pos + n], "big") + (kind == _SIZED_EXT)  # ext: a type byte
        elif kind == _BAD:
            return True
        else:
            if kind == _FIXARRAY or kind == _FIXMAP:
                count = b & 0x0F
            else:
                n = extra_of[b]
                if pos + n > end:
                    return True
                count = int.from_bytes(data[pos : pos + n], "big")
                pos += n
            depth += 1
            if depth > depth_max:
                return False
            left.append(count * 2 if kind == _FIXMAP or kind == _MAP else count)
    return True


def _c_unpacker_depth_max() -> int | None:
    """How many nested lists msgpack's C unpacker accepts before it raises ``StackError`` (the size
    of its fixed parse stack), or None without the C extension or without such a ceiling."""
    if getattr(msgpack.Unpacker, "__module__", "") != "msgpack._cmsgpack":
        return None

    def accepts(depth: int) -> bool:
        unpacker = msgpack.Unpacker()
        unpacker.feed(b"\x91" * depth + b"\xc0")
        try:
            unpacker.skip()
        except msgpack.StackError:
            return False
        return True

    low, high = 1, 1 << 14  # low is accepted; high is refused
    if not accepts(low) or accepts(high):
        return None
    while high - low > 1:
        mid = (low + high) // 2
        if accepts(mid):
            low = mid
        else:
            high = mid
    return low


_C_DEPTH_MAX = _c_unpacker_depth_max()
_U32_MAX = (1 << 32) - 1
_PADDING: dict[int, bytes] = {}


def _depth_within_c(data: bytes, depth_max: int) -> bool:
    """:func:`depth_within_scan` at C speed: msgpack's C unpacker refuses to nest deeper than
    ``_C_DEPTH_MAX``, so skipping ``data`` wrapped in ``_C_DEPTH_MAX - depth_max`` one-item lists
    fails exactly when ``data`` itself nests deeper than ``depth_max``. It builds no object."""
    assert _C_DEPTH_MAX is not None and 0 <= depth_max < _C_DEPTH_MAX
    padding = _PADDING.get(depth_max)
    if padding is None:
        padding = _PADDING.setdefault(depth_max, b"\x91" * (_C_DEPTH_MAX - depth_max))
    # Lengths are unpack's to bound: skipping, only nesting may fail (as in the scan).
    unpacker = msgpack.Unpacker(
        max_buffer_size=len(padding) + len(data),
        max_str_len=_U32_MAX,
        max_bin_len=_U32_MAX,
        max_array_len=_U32_MAX,
        max_map_len=_U32_MAX,
        max_ext_len=_U32_MAX,
    )
    unpacker.feed(padding)
    unpacker.feed(data)
    try:
        unpacker.skip()
    except msgpack.StackError:
        return False
    except Exception:  # noqa: BLE001 - malformed or cut short: unpack's to refuse
        return True
    return True


def depth_within(data: bytes, depth_max: int) -> bool:
    """Whether the msgpack value in ``data`` nests at most ``depth_max`` lists and maps (a
    malformed value answers True: :func:`unpack` refuses it for that). Same answer everywhere."""
    size = len(data)
    if size <= depth_max:
        return True  # every level takes a byte
    if size <= _COUNT_HEADS_BYTES_MAX and len(data.translate(None, _NOT_CONTAINER_HEADS)) <= depth_max:
        return True  # every level starts with one of these bytes
    if size >= _SCAN_FIRST_BYTES_MIN:
        answer = _scan(data, depth_max, _SCAN_FIRST_ITEMS_MAX)
        if answer is not None:
            return answer
    if _C_DEPTH_MAX is not None and depth_max < _C_DEPTH_MAX:
        return _depth_within_c(data, depth_max)
    return depth_within_scan(data, depth_max)


_IS_CONTAINER = frozenset((list, dict)).__contains__


def depth_exceeds(value: Any, depth_max: int) -> bool:
    """Whether a decoded value nests more than ``depth_max`` lists and maps (breadth first, no
    recursion; a flat list costs one pass in C)."""
    if not _IS_CONTAINER(type(value)):
        return False
    items = value.values() if type(value) is dict else value
    if not any(map(_IS_CONTAINER, map(type, items))):
        return depth_max < 1  # the common flat command, without building a level
    level = [value]
    depth = 0
    while level:
        depth += 1
        if depth > depth_max:
            return True
        below: list[Any] = []
        for container in level:
            items = container.values() if type(container) is dict else container
            below.extend(compress(items, map(_IS_CONTAINER, map(type, items))))
        level = below
    return False


# --- text about untrusted values -----------------------------------------------------------------


class _BriefRepr(reprlib.Repr):
    def repr_bytes(self, x: bytes, level: int) -> str:
        s = repr(x[: self.maxstring])
        return s if len(x) <= self.maxstring else s[:-1] + "..." + s[-1]

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return self.repr_bytes(bytes(x[: self.maxstring + 1]), level)


_BRIEF = _BriefRepr()
_BRIEF.maxlevel = 3
_BRIEF.maxstring = 40
_BRIEF.maxother = 40
_BRIEF.maxlong = 40
_BRIEF.maxlist = _BRIEF.maxtuple = _BRIEF.maxdict = _BRIEF.maxset = _BRIEF.maxfrozenset = 4


def brief(value: Any, chars_max: int = limits.untrusted_text_chars_max) -> str:
    """``repr`` for an untrusted value in a message or a log line: at most ``chars_max``
    characters, and bounded work (no recursion past three levels, long strings cut first)."""
    text = _BRIEF.repr(value)
    return text if len(text) <= chars_max else text[: chars_max - 3] + "..."


def show_bytes(data: bytes, chars_max: int = 80) -> str:
    """A key or value as a user should read it in a message: quoted text when it is printable
    UTF-8 (``'session:3'``), else escaped bytes without Python's ``b`` prefix (``'\\xff\\x00'``);
    at most ``chars_max`` characters."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        shown = repr(data)[1:]
    else:
        shown = repr(text) if text.isprintable() else repr(data)[1:]
    return shown if len(shown) <= chars_max else shown[: chars_max - 4] + "...'"


# --- typed field checks -------------------------------------------------------------------------


def _int(v: Any) -> int:
    # Bounded far below int64 (limits.raft_counter_max), so no counter a peer sets can overflow.
    if type(v) is not int or v < 0 or v > limits.raft_counter_max:
        raise ProtocolError(f"expected an int in 0..2**53, got {type(v).__name__}")
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise ProtocolError(f"expected a bool, got {type(v).__name__}")
    return v


def _bytes(v: Any) -> bytes:
    if type(v) is not bytes:
        raise ProtocolError(f"expected bytes, got {type(v).__name__}")
    return v


def _list(v: Any, length: int | None = None) -> list[Any]:
    if type(v) is not list or (length is not None and len(v) != length):
        raise ProtocolError(f"expected a list of {length} items")
    return v


def entry_to_wire(e: Entry) -> list[Any]:
    return [e.index, e.term, e.kind, e.data]


def entry_from_wire(v: Any) -> Entry:
    index, term, kind, data = _list(v, 4)
    kind = _int(kind)
    if kind > 1:
        raise ProtocolError(f"unknown entry kind {kind}")
    return Entry(_int(index), _int(term), kind, _bytes(data))


def membership_to_wire(m: Membership) -> list[Any]:
    return [list(m.voters), list(m.learners)]


def membership_from_wire(v: Any) -> Membership:
    voters, learners = _list(v, 2)
    vs = [_int(x) for x in _list(voters)]
    ls = [_int(x) for x in _list(learners)]
    if len(vs) + len(ls) > limits.members_max:
        raise ProtocolError("membership over members_max")
    if vs != sorted(set(vs)) or ls != sorted(set(ls)) or set(vs) & set(ls) or 0 in vs or 0 in ls:
        raise ProtocolError("malformed membership")
    return Membership(tuple(vs), tuple(ls))


def meta_to_wire(m: SnapshotMeta) -> list[Any]:
    return [m.last_index, m.last_term, membership_to_wire(m.membership), m.size_bytes, m.checksum]


def meta_from_wire(v: Any) -> SnapshotMeta:
    last_index, last_term, membership, size_bytes, checksum = _list(v, 5)
    return SnapshotMeta(
        _int(last_index), _int(last_term), membership_from_wire(membership), _int(size_bytes), _int(checksum)
    )


def hard_state_to_wire(h: HardState) -> list[Any]:
    return [h.term, h.vote, h.commit_index]


def hard_state_from_wire(v: Any) -> HardState:
    term, vote, commit_index = _list(v, 3)
    return HardState(_int(term), _int(vote), _int(commit_index))


def encode_conf_change(c: ConfChange, result: Membership) -> bytes:
    """A membership-change entry carries the change AND the membership it results in, so a node
    replaying the log needs no knowledge of earlier configurations (e.g. a brand-new learner)."""
    return pack([c.kind, c.node_id, membership_to_wire(result)])


def decode_conf_change(data: bytes) -> tuple[ConfChange, Membership]:
    kind, node_id, membership = _list(unpack(data), 3)
    kind = _int(kind)
    if kind > 2 or _int(node_id) == 0:
        raise ProtocolError("malformed membership change")
    result = membership_from_wire(membership)
    if not result.voters:
        raise ProtocolError("a membership change must leave at least one voter")
    return ConfChange(kind, node_id), result


# --- messages -----------------------------------------------------------------------------------

# Field schema per message type, in dataclass field order. The tag is the index in MESSAGE_TYPES,
# so adding a type at the end keeps old tags stable.
_FIELD_DECODERS: dict[str, Callable[[Any], Any]] = {
    "int": _int,
    "bool": _bool,
    "bytes": _bytes,
    "entries": lambda v: [entry_from_wire(e) for e in _list(v)],
    "meta": meta_from_wire,
}


def _schema(cls: type) -> list[tuple[str, str]]:
    out = []
    for name, annotation in cls.__annotations__.items():
        kind = {"int": "int", "bool": "bool", "bytes": "bytes", "list[Entry]": "entries", "SnapshotMeta": "meta"}[
            str(annotation)
        ]
        out.append((name, kind))
    return out


_SCHEMAS: list[list[tuple[str, str]]] = [_schema(cls) for cls in MESSAGE_TYPES]
_TAG: dict[type, int] = {cls: i for i, cls in enumerate(MESSAGE_TYPES)}


def message_to_wire(msg: Message) -> list[Any]:
    tag = _TAG[type(msg)]
    out: list[Any] = [tag]
    for name, kind in _SCHEMAS[tag]:
        v = getattr(msg, name)
        if kind == "entries":
            v = [[e.index, e.term, e.kind, e.data] for e in v]
        elif kind == "meta":
            v = meta_to_wire(v)
        out.append(v)
    return out


def message_from_wire(v: Any) -> Message:
    items = _list(v)
    if not items or type(items[0]) is not int or not 0 <= items[0] < len(MESSAGE_TYPES):
        raise ProtocolError("unknown message tag")
    tag = items[0]
    schema = _SCHEMAS[tag]
    if len(items) != len(schema) + 1:
        raise ProtocolError(f"{MESSAGE_TYPES[tag].__name__}: expected {len(schema)} fields")
    kwargs = {name: _FIELD_DECODERS[kind](value) for (name, kind), value in zip(schema, items[1:])}
    msg: Message = MESSAGE_TYPES[tag](**kwargs)
    if isinstance(msg, AppendEntries):
        # What every real leader's append satisfies; a peer that breaks it is refused here rather
        # than let into the log (where a bad membership entry would fail at every boot).
        expected, term = msg.prev_index + 1, msg.prev_term
        for e in msg.entries:
            if e.index != expected:
                raise ProtocolError("AppendEntries entries are not consecutive")
            if not term <= e.term <= msg.term:
                raise ProtocolError("AppendEntries entry terms must rise from prev_term to the message's term")
            if e.kind == EntryKind.CONF_CHANGE:
                decode_conf_change(e.data)
            expected, term = expected + 1, e.term
    if isinstance(msg, InstallSnapshot) and len(msg.data) > limits.snapshot_chunk_bytes_max:
        raise ProtocolError("snapshot chunk over snapshot_chunk_bytes_max")
    return msg


def encode_message(msg: Message) -> bytes:
    return pack(message_to_wire(msg))


def decode_message(data: bytes) -> Message:
    return message_from_wire(unpack(data))
