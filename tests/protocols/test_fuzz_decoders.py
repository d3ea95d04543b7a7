"""Fuzz of every decoder that reads client or peer frames (issue 16, acceptance).

Whatever the bytes, each decoder returns its value or raises a ``TrimaranError``; it never raises
anything else (which would close a node's connection task with an exception or stop the node).
The log entries a replica applies are fuzzed in ``tests/cluster/test_hostile_entries.py`` and the
peer handshake in ``tests/node/test_hostile_input.py``. ``make fuzz`` runs them all longer.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import fuzz_settings
from tests.protocols.test_codec_limits import deep_values, nested_list, values
from trimaran import limits
from trimaran.errors import InvalidArgument, ProtocolError, TrimaranError
from trimaran.node.transport import decode_from_peer, encode_for_peer
from trimaran.protocols.client_protocol import OPS, Request, hello, parse_hello, parse_request
from trimaran.protocols.codec import decode_conf_change, pack, unpack
from trimaran.protocols.messages import MESSAGE_TYPES, AppendEntries, Entry, Heartbeat, Message

# Frames built near the protocol: a real frame with a field swapped for anything, cut or flipped.
fields = values | deep_values() | st.integers(-(1 << 63), (1 << 64) - 1) | st.sampled_from([*OPS, "hello", "command", "peer_hello"])


@st.composite
def request_like(draw: st.DrawFn) -> Any:
    body = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "client_id": fields,
                "seq": fields,
                "ack_seq": fields,
                "service": fields,
                "command": fields,
                "query": fields,
                "consistency": fields,
                "kind": fields,
                "node_id": fields,
            },
        )
    )
    return draw(
        st.one_of(
            st.tuples(st.integers(-1, (1 << 64) - 1), st.sampled_from(OPS), st.just(body)).map(list),
            st.lists(fields, max_size=4),
            fields,
        )
    )


@st.composite
def mutated(draw: st.DrawFn, frames: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(frames))
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) if draw(st.booleans()) else bytes(data)


client_frames = st.binary(max_size=200) | mutated(st.builds(pack, request_like())) | st.builds(pack, request_like())
hello_frames = (
    st.binary(max_size=100)
    | mutated(st.just(pack(hello("c", "t"))))
    | st.builds(lambda k, v: pack({**hello(), k: v}), st.sampled_from(["type", "version", "cluster_id", "token"]), fields)
)


@fuzz_settings
@given(hello_frames)
def test_fuzz_client_hello(data: bytes) -> None:
    try:
        parse_hello(unpack(data, size_bytes_max=16 * limits.KIB))
    except TrimaranError as exc:
        assert len(exc.message) < 300  # no untrusted value is echoed at length


@fuzz_settings
@given(client_frames)
def test_fuzz_client_request(data: bytes) -> None:
    try:
        request = parse_request(unpack(data))
    except InvalidArgument as exc:
        assert len(exc.message) < 300
        return
    except TrimaranError:
        return
    assert isinstance(request, Request)
    pack(request.body)  # what is accepted can go into a log entry


def _message_wires() -> st.SearchStrategy[list[Any]]:
    """message_to_wire-shaped lists: a known tag, then anything."""
    return st.builds(
        lambda tag, rest: [tag, *rest],
        st.integers(-1, len(MESSAGE_TYPES)),
        st.lists(fields | st.lists(st.lists(fields, max_size=5), max_size=3), max_size=10),
    )


GOOD_PEER_FRAMES = [
    encode_for_peer(Heartbeat(3, 1, 2, 7, 9))[limits.frame_header_bytes :],
    encode_for_peer(AppendEntries(2, 1, 2, 4, 2, [Entry(5, 2, 0, b"x"), Entry(6, 2, 1, b"")], 3))[limits.frame_header_bytes :],
]
peer_frames = (
    st.binary(max_size=200)
    | mutated(st.sampled_from(GOOD_PEER_FRAMES))
    | st.builds(pack, _message_wires())
    | mutated(st.builds(pack, _message_wires()))
)


@fuzz_settings
@given(peer_frames)
def test_fuzz_peer_message(data: bytes) -> None:
    try:
        msg = decode_from_peer(data, sender=1, recipient=2)
    except TrimaranError:
        return
    assert isinstance(msg, Message) and msg.sender == 1 and msg.recipient == 2


@fuzz_settings
@given(st.binary(max_size=100) | st.builds(pack, st.lists(fields, max_size=4)))
def test_fuzz_membership_change_entry(data: bytes) -> None:
    try:
        decode_conf_change(data)
    except TrimaranError:
        pass


# ---------------------------------------------------------------------------- targeted cases


def test_a_deep_version_in_a_hello_is_refused_in_few_words() -> None:
    """A value too deep for ``repr`` (it would raise RecursionError), built without the decoder."""
    with pytest.raises(ProtocolError, match="unsupported protocol version") as caught:
        parse_hello({"type": "hello", "version": nested_list(50_000)})
    assert len(caught.value.message) < 200


def test_a_deep_op_is_refused_under_its_request_id() -> None:
    with pytest.raises(InvalidArgument, match="unknown operation") as caught:
        parse_request([1, nested_list(50_000), {}])
    assert caught.value.details == {"request_id": 1} and len(caught.value.message) < 200


@pytest.mark.parametrize("field", ["command", "query"])
def test_a_command_or_query_deeper_than_the_limit_is_an_invalid_argument(field: str) -> None:
    op = "command" if field == "command" else "read"
    body = {"client_id": 1, "seq": 1, "ack_seq": 0, "service": "kv"}
    parse_request([1, op, {**body, field: nested_list(limits.command_depth_max)}])
    with pytest.raises(InvalidArgument, match=f"deeper than {limits.command_depth_max}"):
        parse_request([1, op, {**body, field: nested_list(limits.command_depth_max + 1)}])
