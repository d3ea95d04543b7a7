"""Whatever bytes a committed entry holds, every replica applies it, the same way (issue 16, items 2, 5).

Item 5: an entry whose data is not valid msgpack was committed and then crashed every node at
apply, again at every restart. Now an entry that is not a command batch applies as nothing, and a
batch item that is not a command as a fixed ``invalid_argument`` result, on every replica, byte for
byte, whatever the machine (C extension or not) or its recursion limit.

Item 2: a command nested 1,022 deep was accepted, then failed to re-encode in ``Replica.flush``,
which let the exception stop the leader. Now flush answers such a command alone and proposes the rest.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from typing import Any, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import fuzz_settings
from tests.protocols.test_codec_limits import deep_values, nested_bytes, nested_list, values
from trimaran import limits
from trimaran.cluster.replica import BAD_COMMAND_TEXT, BAD_ENTRY_TEXT, Replica, Reply
from trimaran.errors import InvalidArgument
from trimaran.protocols import codec
from trimaran.protocols.codec import pack, unpack
from trimaran.simulations.harness import Harness

# ---------------------------------------------------------------------------- helpers


def run(h: Harness) -> None:
    """Persist, commit and apply what is pending (a lone node needs a round after its sync)."""
    for _ in range(3):
        h.process()
        h.settle()


def started(nodes: int = 1) -> tuple[Harness, int]:
    """A cluster with node 1 leading and one registered session; returns it and the client id."""
    h = Harness(nodes, seed=16)
    h.elect(1)
    h.nodes[1].replica.register("reg", 1_000)
    run(h)
    client_id = next(r.value for r in h.replies(1) if r.token == "reg")
    return h, client_id


def propose_raw(h: Harness, data: bytes) -> int:
    """Make exactly the fault: the leader appends ``data`` as a normal entry, as is."""
    index, _ = h.raft(1).propose([data])
    run(h)
    return int(index)


def state(replica: Replica) -> bytes:
    """Everything applied (services, sessions and their saved answers, log time), as bytes."""
    return replica.take_snapshot().data


def set_command(h: Harness, client_id: int, seq: int, key: bytes, value: bytes) -> list[Reply]:
    h.nodes[1].replica.submit(("set", seq), client_id, seq, seq - 1, "register", ["set", key, value], 2_000)
    run(h)
    return [r for r in h.replies(1) if r.token == ("set", seq)]


POISON = {
    "not msgpack": b"\xc1",
    "cut short": pack([5_000, [[1, 1, 0, "register", ["set", b"k", b"v"]]]])[:-3],
    "trailing bytes": pack([5_000, []]) + b"\x00",
    "nested 1,000 deep": nested_bytes(1_000),
    "nested past the C unpacker's stack": nested_bytes(5_000),
    "batch nested too deep": pack([5_000, [[1, 1, 0, "register", nested_list(limits.msgpack_depth_max)]]]),
    "not a list": pack({"timestamp_ms": 1}),
    "one item": pack([5_000]),
    "a negative timestamp": pack([-1, []]),
    "a str timestamp": pack(["now", []]),
    "items not a list": pack([5_000, "items"]),
    "too many items": pack([5_000, [[0, 0, 0, "", None]] * (limits.proposal_batch_commands_max + 1)]),
    "an ext type": b"\x92\x01\xd4\x05\x00",
}


# ---------------------------------------------------------------------------- item 5


class InertService:
    """A test service that does nothing (a base for the few methods a test cares about)."""

    name = "inert"

    def apply(self, command: Any, ctx: Any) -> Any:
        return None

    def on_time(self, ctx: Any) -> None:
        pass

    def next_deadline_ms(self) -> int | None:
        return None

    def query(self, query: Any, ctx: Any) -> Any:
        return None

    def snapshot(self) -> Any:
        return None

    def restore(self, data: Any) -> None:
        pass


@pytest.mark.parametrize("data", list(POISON.values()), ids=list(POISON))
def test_a_poison_entry_applies_as_nothing_on_every_replica_and_after_a_restart(data: bytes) -> None:
    h, client_id = started(nodes=3)
    assert set_command(h, client_id, 1, b"before", b"1")[0].ok
    before = state(h.nodes[1].replica)
    index = propose_raw(h, data)
    for n in (1, 2, 3):
        replica = h.nodes[n].replica
        assert replica.applied_index >= index and replica.bad_entries == 1
        assert state(replica) == before  # applied as nothing, identically
    # Every node restarts over the entry (it is in every log) and comes up.
    for n in (1, 2, 3):
        h.crash(n)
        h.restart(n)
    h.elect(1)
    # And the cluster still serves: nothing lost, the session still works.
    assert set_command(h, client_id, 2, b"after", b"2")[0].ok
    h.tick_all(2)  # followers learn the new commit index
    for n in (1, 2, 3):
        replica = h.nodes[n].replica
        assert replica.applied_index > index and replica.bad_entries == 1  # re-applied, the same way
        assert replica.services["register"].data == {b"before": b"1", b"after": b"2"}  # type: ignore[attr-defined]
    assert len({state(h.nodes[n].replica) for n in (1, 2, 3)}) == 1


def test_the_proposer_of_a_poison_entry_is_answered_with_a_typed_error() -> None:
    h, _ = started()
    replica = h.nodes[1].replica
    index, term = h.raft(1).propose([b"\xc1"])
    replica._proposals[index] = (term, ["poisoned"])  # as if a token had proposed it
    run(h)
    [reply] = [r for r in h.replies(1) if r.token == "poisoned"]
    assert not reply.ok and isinstance(reply.value, InvalidArgument) and reply.value.message == BAD_ENTRY_TEXT


def test_items_that_are_not_commands_get_a_typed_result_and_the_others_apply() -> None:
    h, client_id = started(nodes=3)
    good = [client_id, 1, 0, "register", ["set", b"k", b"v"]]
    batch = [
        good,
        "junk",
        [client_id, "2", 1, "register", ["set", b"k", b"w"]],  # seq not an int
        [client_id, 3, 1, "nope", ["set", b"k", b"w"]],  # no such service
        [client_id, 4, 1],  # too short
        [client_id, 5, 1, "register", ["set", b"k2", b"v2"]],
    ]
    propose_raw(h, pack([5_000, batch]))
    for n in (1, 2, 3):
        replica = h.nodes[n].replica
        assert replica.bad_commands == 4
        assert replica.services["register"].data == {b"k": b"v", b"k2": b"v2"}  # type: ignore[attr-defined]
    assert len({state(h.nodes[n].replica) for n in (1, 2, 3)}) == 1


def test_a_service_that_raises_something_untyped_gives_a_typed_result() -> None:
    class Brittle(InertService):
        name = "brittle"

        def apply(self, command: Any, ctx: Any) -> Any:
            return command["key"]  # a list command: TypeError

    h = Harness(1, seed=3, make_services=lambda: [Brittle()])
    h.elect(1)
    replica = h.nodes[1].replica
    replica.register("reg", 1)
    run(h)
    client_id = next(r.value for r in h.replies(1) if r.token == "reg")
    replica.submit("cmd", client_id, 1, 0, "brittle", [1, 2], 2)
    run(h)
    [reply] = [r for r in h.replies(1) if r.token == "cmd"]
    assert not reply.ok and reply.value.code == "internal"


# ---------------------------------------------------------------------------- item 2


def test_a_command_msgpack_cannot_encode_is_refused_alone_and_the_batch_goes() -> None:
    h, client_id = started()
    replica = h.nodes[1].replica
    replica.submit("good-1", client_id, 1, 0, "register", ["set", b"a", b"1"], 2_000)
    replica.submit("deep", client_id, 2, 0, "register", nested_list(1_022), 2_000)  # the command
    replica.submit("unencodable", client_id, 3, 0, "register", ["set", b"b", object()], 2_000)
    replica.submit("too-deep-for-an-entry", client_id, 4, 0, "register", nested_list(limits.command_depth_max + 1), 2_000)
    replica.submit("good-2", client_id, 5, 0, "register", ["set", b"c", b"3"], 2_000)
    replica.flush()  # used to raise ValueError("recursion limit exceeded") and stop the leader
    run(h)
    replies = {r.token: r for r in h.replies(1)}
    for token in ("deep", "unencodable", "too-deep-for-an-entry"):
        assert not replies[token].ok and isinstance(replies[token].value, InvalidArgument), token
    assert replies["good-1"].ok and replies["good-2"].ok
    assert replica.services["register"].data == {b"a": b"1", b"c": b"3"}  # type: ignore[attr-defined]
    assert replica.bad_entries == 0


def test_the_deepest_command_the_edge_accepts_fits_a_log_entry() -> None:
    h, client_id = started()
    replica = h.nodes[1].replica
    command = ["set", b"k", nested_list(limits.command_depth_max - 1)]
    replica.submit("edge", client_id, 1, 0, "register", command, 2_000)
    run(h)
    [reply] = [r for r in h.replies(1) if r.token == "edge"]
    # The register service refuses a non-bytes value: applied, with the service's own answer.
    assert not reply.ok and reply.value.message == "value must be bytes"
    assert replica.bad_entries == 0 and replica.bad_commands == 0


# ---------------------------------------------------------------------------- fuzz


@st.composite
def entry_data(draw: st.DrawFn) -> bytes:
    field = values | deep_values() | st.integers(-(1 << 63), (1 << 64) - 1)
    item = st.one_of(
        field,
        st.tuples(
            st.sampled_from([0, 1, 2, -1, 1 << 40]) | field,
            st.integers(-2, 10) | field,
            st.integers(-2, 10) | field,
            st.sampled_from(["register", "", "x"]) | field,
            st.just(["set", b"k", b"v"]) | st.just(["incr", b"n", 1]) | field,
        ).map(list),
    )
    batch = st.builds(lambda ts, items: pack([ts, items]), st.integers(-5, 1 << 64 - 1) | field, st.lists(item, max_size=6))
    data = draw(st.binary(max_size=120) | batch | st.builds(pack, field))
    if draw(st.booleans()):
        flips = draw(st.lists(st.tuples(st.integers(0, max(0, len(data) - 1)), st.integers(0, 255)), max_size=3))
        raw = bytearray(data)
        for at, byte in flips:
            if raw:
                raw[at] = byte
        data = bytes(raw)
    return data


def apply_everywhere(data: bytes) -> tuple[bytes, list[Any]]:
    """Apply ``data`` after a known history; the state and the outcomes as bytes."""
    h, client_id = started()
    assert set_command(h, client_id, 1, b"n", b"41")[0].ok
    replica = h.nodes[1].replica
    index, term = h.raft(1).propose([data])
    replica._proposals[index] = (term, [("item", i) for i in range(limits.proposal_batch_commands_max)])
    run(h)
    replies = [[r.token, r.ok, r.value if r.ok else r.value.to_wire()] for r in h.replies(1)]
    return state(replica), replies


@contextlib.contextmanager
def another_machine() -> Iterator[None]:
    """msgpack without its C extension (the pure scan decides depth) and a recursion limit close
    above the current stack: what a replica decides must not change."""
    saved_ceiling, saved_limit = codec._C_DEPTH_MAX, sys.getrecursionlimit()
    codec._C_DEPTH_MAX = None
    sys.setrecursionlimit(len(inspect.stack(0)) + 150)
    try:
        yield
    finally:
        sys.setrecursionlimit(saved_limit)
        codec._C_DEPTH_MAX = saved_ceiling


@fuzz_settings
@given(entry_data())
def test_fuzz_entries_at_apply(data: bytes) -> None:
    here = apply_everywhere(data)
    with another_machine():
        there = apply_everywhere(data)
    assert here == there


@pytest.mark.parametrize("data", list(POISON.values()), ids=list(POISON))
def test_a_poison_entry_is_decided_the_same_on_another_machine(data: bytes) -> None:
    here = apply_everywhere(data)
    with another_machine():
        assert apply_everywhere(data) == here


class Keeper(InertService):
    """Test service keeping command data inside its own structure, ten levels down."""

    name = "keeper"
    LEVELS = 10

    def __init__(self) -> None:
        self.kept: list[Any] = []

    def apply(self, command: Any, ctx: Any) -> Any:
        self.kept.append(command)
        return None

    def snapshot(self) -> Any:
        out: Any = self.kept
        for _ in range(self.LEVELS):
            out = [out]
        return out

    def restore(self, data: Any) -> None:
        for _ in range(self.LEVELS):
            data = data[0]
        self.kept = data


def test_a_snapshot_holding_the_deepest_commands_restores() -> None:
    """Services may keep command data several levels down: a frame's depth limit must not refuse
    their snapshot (a node could not boot from it)."""
    h = Harness(1, seed=5, make_services=lambda: [Keeper()])
    h.elect(1)
    replica = h.nodes[1].replica
    replica.register("reg", 1)
    run(h)
    client_id = next(r.value for r in h.replies(1) if r.token == "reg")
    replica.submit("deep", client_id, 1, 0, "keeper", nested_list(limits.command_depth_max), 2)
    run(h)
    snapshot = replica.take_snapshot()
    assert not codec.depth_within(snapshot.data, limits.msgpack_depth_max)
    restored = Harness(1, seed=5, make_services=lambda: [Keeper()]).nodes[1].replica
    restored._restore(snapshot)
    assert state(restored) == snapshot.data
