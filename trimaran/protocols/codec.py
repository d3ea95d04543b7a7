"""msgpack encoding of the wire vocabulary, with hard limits on everything untrusted.

Every decode of bytes that came from outside the process goes through :func:`unpack`, which sets
msgpack's length ceilings, refuses ext types and non-string map keys, and turns any failure into a
typed :class:`~trimaran.errors.ProtocolError`. Message decoding then checks each field's type, so the
consensus core never sees a malformed value.
"""

from __future__ import annotations

from typing import Any, Callable

import msgpack

from trimaran import limits
from trimaran.errors import FrameTooLarge, ProtocolError
from trimaran.protocols.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    ConfChange,
    Entry,
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


def unpack(data: bytes, *, size_bytes_max: int = limits.frame_bytes_max) -> Any:
    """Decode untrusted msgpack bytes under hard limits; raise ``ProtocolError`` on anything odd."""
    if len(data) > size_bytes_max:
        raise FrameTooLarge(f"{len(data)} bytes is over the limit of {size_bytes_max}")
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
    return ConfChange(kind, node_id), membership_from_wire(membership)


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
        expected = msg.prev_index + 1
        for e in msg.entries:
            if e.index != expected:
                raise ProtocolError("AppendEntries entries are not consecutive")
            expected += 1
    if isinstance(msg, InstallSnapshot) and len(msg.data) > limits.snapshot_chunk_bytes_max:
        raise ProtocolError("snapshot chunk over snapshot_chunk_bytes_max")
    return msg


def encode_message(msg: Message) -> bytes:
    return pack(message_to_wire(msg))


def decode_message(data: bytes) -> Message:
    return message_from_wire(unpack(data))
