"""The codec's bound on nesting depth, and bounded text about untrusted values (issue 16, item 1).

A msgpack value nested about 1,000 deep used to decode, then crash the node with ``RecursionError``
when an error message formatted it with ``repr``. Now :func:`~trimaran.protocols.codec.unpack`
refuses anything nested deeper than ``limits.msgpack_depth_max`` before building it, and
:func:`~trimaran.protocols.codec.brief` formats any value with bounded work and length.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import fuzz_settings
from trimaran import limits
from trimaran.errors import ProtocolError, TrimaranError
from trimaran.protocols import codec
from trimaran.protocols.codec import brief, depth_exceeds, depth_within, depth_within_scan, pack, unpack
from trimaran.protocols.messages import AppendEntries, ConfChange, ConfChangeKind, Entry, EntryKind, Membership

# ---------------------------------------------------------------------------- helpers


def nested_bytes(depth: int, inner: bytes = b"\xc0") -> bytes:
    """``depth`` one-item lists around ``inner``, as the issue sends them (``0x91`` x depth)."""
    return b"\x91" * depth + inner


def nested_list(depth: int) -> Any:
    """A list nested ``depth`` deep, built without recursion (``repr`` of it would recurse)."""
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


def depth_of(value: Any) -> int:
    """The reference depth: lists and maps on the longest path (iterative)."""
    best = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            depth += 1
            best = max(best, depth)
            stack.extend((child, depth) for child in (item.values() if isinstance(item, dict) else item))
    return best


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=16,
)


@st.composite
def deep_values(draw: st.DrawFn) -> Any:
    """A value wrapped in up to 150 more levels of lists or maps (some of them empty siblings)."""
    value = draw(values)
    for kind in draw(st.lists(st.sampled_from(["list", "map", "list2"]), max_size=150)):
        if kind == "list":
            value = [value]
        elif kind == "list2":
            value = [[], value]
        else:
            value = {"k": value}
    return value


# ---------------------------------------------------------------------------- the issue's bytes


def test_the_issues_deep_hello_is_refused_while_decoding() -> None:
    hello = b"\x82\xa4type\xa5hello\xa7version" + nested_bytes(990)
    with pytest.raises(ProtocolError, match="nested deeper"):
        unpack(hello)


def test_the_issues_deep_request_is_refused_while_decoding() -> None:
    request = b"\x93\x01" + nested_bytes(1000) + b"\x80"  # [1, <0x91 x 1000 0xc0>, {}]
    with pytest.raises(ProtocolError, match="nested deeper"):
        unpack(request)


def test_a_command_nested_1022_deep_is_refused_while_decoding() -> None:
    body = {"client_id": 1, "seq": 1, "ack_seq": 0, "service": "kv", "command": None}
    request = pack([1, "command", body])
    assert request.endswith(b"\xa7command\xc0")
    deep = request[: -1] + nested_bytes(1022)
    with pytest.raises(ProtocolError, match="nested deeper"):
        unpack(deep)


@pytest.mark.parametrize("depth", [limits.msgpack_depth_max + 1, 511, 1023, 1024, 1025, 5000])
def test_anything_deeper_than_the_limit_is_a_protocol_error(depth: int) -> None:
    with pytest.raises(ProtocolError, match=f"deeper than {limits.msgpack_depth_max}"):
        unpack(nested_bytes(depth))


def test_the_limit_itself_decodes_and_re_encodes() -> None:
    value = unpack(nested_bytes(limits.msgpack_depth_max))
    assert depth_of(value) == limits.msgpack_depth_max
    assert pack(value) == nested_bytes(limits.msgpack_depth_max)


def test_a_log_entry_holding_the_deepest_command_still_decodes() -> None:
    command = nested_list(limits.command_depth_max)
    entry = pack([1, [[1, 1, 0, "kv", command]]])
    assert depth_of(unpack(entry)) == limits.command_depth_max + 3


# ---------------------------------------------------------------------------- depth, three ways


@fuzz_settings
@given(deep_values())
def test_fuzz_depth_is_the_same_from_the_bytes_and_from_the_value(value: Any) -> None:
    data = pack(value)
    depth = depth_of(value)
    for depth_max in {0, max(0, depth - 1), depth, limits.msgpack_depth_max}:
        expected = depth <= depth_max
        assert depth_within_scan(data, depth_max) is expected
        assert depth_within(data, depth_max) is expected
        if codec._C_DEPTH_MAX is not None:
            assert codec._depth_within_c(data, depth_max) is expected
        assert depth_exceeds(value, depth_max) is not expected


@fuzz_settings
@given(st.binary(max_size=300) | st.builds(lambda v, cut: pack(v)[:cut], deep_values(), st.integers(0, 400)))
def test_fuzz_any_bytes_get_a_value_or_a_typed_error(data: bytes) -> None:
    """Random and cut-short bytes: the scan and the C check agree, and unpack never crashes."""
    if codec._C_DEPTH_MAX is not None:
        for depth_max in (0, 3, limits.msgpack_depth_max):
            assert codec._depth_within_c(data, depth_max) == depth_within_scan(data, depth_max)
    try:
        value = unpack(data)
    except TrimaranError:
        return
    assert depth_of(value) <= limits.msgpack_depth_max
    pack(value)  # what was accepted re-encodes


@pytest.mark.parametrize(
    "head",
    [
        b"\xdd\xff\xff\xff\xff",  # an array claiming 4 G items
        b"\xdf\xff\xff\xff\xff",  # a map claiming 4 G pairs
        b"\x92\xc7\x03\x05abc",  # an ext 8 item, then the rest
        b"\x92\xd8\x01" + bytes(16),  # a fixext 16 item
        b"\x92\xc4\x02xy",  # a bin 8 item
    ],
)
def test_the_scan_and_the_c_check_agree_after_any_item(head: bytes) -> None:
    for depth in (limits.msgpack_depth_max - 2, limits.msgpack_depth_max, limits.msgpack_depth_max + 5):
        data = head + nested_bytes(depth)
        expected = depth + 1 <= limits.msgpack_depth_max
        assert depth_within_scan(data, limits.msgpack_depth_max) is expected
        if codec._C_DEPTH_MAX is not None:
            assert codec._depth_within_c(data, limits.msgpack_depth_max) is expected


@pytest.mark.parametrize("depth", [limits.msgpack_depth_max - 1, limits.msgpack_depth_max])
@pytest.mark.parametrize("items", [3, 5_000], ids=["few large items", "many small items"])
def test_a_large_frame_is_measured_the_same_way_whatever_its_shape(items: int, depth: int) -> None:
    """Large frames take a short scan first (it steps over binaries), then the C check."""
    size = 200 * limits.KIB // items
    value = [[b"x" * size for _ in range(items)], nested_list(depth - 1)]
    data = pack(value)
    assert len(data) >= codec._SCAN_FIRST_BYTES_MIN and depth_of(value) == depth
    assert depth_within(data, limits.msgpack_depth_max - 1) is (depth <= limits.msgpack_depth_max - 1)
    assert depth_within(data, limits.msgpack_depth_max) is True


def test_the_c_unpacker_ceiling_is_measured_not_assumed() -> None:
    if codec._C_DEPTH_MAX is None:
        # Only a pure-Python msgpack lacks it (the scan then decides, tested below); the wheels
        # setup.cfg installs have it, so under CI its absence is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail("msgpack's C extension is missing")
        pytest.skip("msgpack runs without its C extension here: the scan decides")
    ceiling = codec._C_DEPTH_MAX
    assert ceiling > limits.msgpack_depth_max
    with pytest.raises(msgpack.StackError):
        msgpack.unpackb(nested_bytes(ceiling + 1))
    assert depth_of(msgpack.unpackb(nested_bytes(ceiling))) == ceiling


def test_without_the_c_extension_the_scan_gives_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_C_DEPTH_MAX", None)
    for depth in (0, 1, limits.msgpack_depth_max, limits.msgpack_depth_max + 1, 1025, 3000):
        assert depth_within(nested_bytes(depth, b"\x93\x01\x02\x03"), limits.msgpack_depth_max + 1) is (
            depth + 1 <= limits.msgpack_depth_max + 1
        )


def test_the_depth_checks_do_not_recurse() -> None:
    """Run under a recursion limit far below the depths involved: nothing may depend on it."""
    deep = nested_list(20_000)
    data = nested_bytes(20_000)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(200, len(_stack()) + 100))
    try:
        assert depth_exceeds(deep, limits.command_depth_max)
        assert not depth_within(data, limits.msgpack_depth_max)
        assert not depth_within_scan(data, limits.msgpack_depth_max)
        text = brief(deep)
    finally:
        sys.setrecursionlimit(limit)
    assert len(text) <= limits.untrusted_text_chars_max


def _stack() -> list[Any]:
    import inspect

    return inspect.stack(0)


# ---------------------------------------------------------------------------- brief


@pytest.mark.parametrize(
    "value",
    [
        nested_list(100_000),
        b"\x00" * limits.MIB,
        "x" * limits.MIB,
        {"k" * 1000: [b"v" * 1000] * 1000},
        list(range(100_000)),
        1 << 63,
    ],
)
def test_brief_is_short_whatever_it_is_given(value: Any) -> None:
    text = brief(value)
    assert 0 < len(text) <= limits.untrusted_text_chars_max


def test_brief_reads_like_repr_for_small_values() -> None:
    assert brief("v2") == "'v2'"
    assert brief(7) == "7"
    assert brief(b"ab") == "b'ab'"
    assert brief([1, "a"]) == "[1, 'a']"
    assert brief(None) == "None"


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([Entry(6, 2, EntryKind.CONF_CHANGE, b"\xc1")], "malformed"),  # a membership change that is not one
        ([Entry(6, 2, EntryKind.CONF_CHANGE, pack([2, 3, [[], []]]))], "at least one voter"),
        ([Entry(6, 2, EntryKind.CONF_CHANGE, pack([0, 3, [[3, 1], []]]))], "malformed membership"),
        ([Entry(6, 4, EntryKind.NORMAL, b"")], "terms must rise"),  # an entry newer than the message
        ([Entry(6, 2, EntryKind.NORMAL, b""), Entry(7, 1, EntryKind.NORMAL, b"")], "terms must rise"),
    ],
)
def test_an_append_no_leader_could_send_is_refused_at_decode(entries: list[Entry], reason: str) -> None:
    """Issue 16 item 5 via the peer port: a membership entry that does not decode would have failed
    in Raft at append and at every boot after; entry terms that fall break Log Matching."""
    msg = AppendEntries(3, 2, 1, 5, 1, entries, 0)
    with pytest.raises(ProtocolError, match=reason):
        codec.decode_message(codec.encode_message(msg))
    good = AppendEntries(3, 2, 1, 5, 1, [Entry(6, 2, EntryKind.CONF_CHANGE, codec.encode_conf_change(
        ConfChange(ConfChangeKind.ADD_LEARNER, 4), Membership((1, 2, 3), (4,))))], 0)
    assert codec.decode_message(codec.encode_message(good)) == good


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"session:3", "'session:3'"),
        ("héllo".encode(), "'héllo'"),
        (b"\xff\x00", "'\\xff\\x00'"),
        (b"line\nbreak", "'line\\nbreak'"),
        (b"k" * 200, "'" + "k" * 75 + "...'"),
    ],
)
def test_show_bytes_reads_as_text_without_pythons_b_prefix(data: bytes, shown: str) -> None:
    """Issue 14: keys in messages read as text when they are text, escaped only when not."""
    assert codec.show_bytes(data) == shown
