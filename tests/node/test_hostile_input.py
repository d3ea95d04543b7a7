"""Issue 16's hostile bytes and faults, against real nodes on loopback.

Each test sends exactly the issue's bytes (or makes exactly its fault) and checks that the node
stays up (a node task that raised would fail the cluster's nursery, and so the test), answers with
a typed error, and loses nothing. The peer handshake's decoder is fuzzed here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmdb
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trimaran
from tests.fuzz import fuzz_settings
from tests.node.helpers import DEFAULT_STATE_MACHINE, InProcessCluster, RawClient, bare_transport, in_process_cluster
from tests.node.test_transport import closed_with, peer_connect
from tests.protocols.test_fuzz_decoders import fields, mutated
from trimaran import limits
from trimaran.cluster import replica as replica_module
from trimaran.errors import InvalidArgument, TrimaranError
from trimaran.node.transport import HANDSHAKE_REFUSED, HELLO_FRAME_BYTES_MAX, PeerQueue, peer_hello
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.framing import encode_frame

FAST = {"tick_ms": 10}


def deep(depth: int) -> bytes:
    """The issue's nesting: ``0x91`` x depth, then ``0xc0``."""
    return b"\x91" * depth + b"\xc0"


async def wait_applied_everywhere(cluster: InProcessCluster, index: int) -> None:
    await cluster.wait_for(
        lambda: all(cluster.status(n)["applied_index"] >= index for n in cluster.nodes), what=f"index {index} applied"
    )


def register_state(cluster: InProcessCluster, node_id: int) -> dict[bytes, bytes]:
    return dict(cluster.nodes[node_id].driver.replica.services["register"].data)  # type: ignore[attr-defined]


async def still_serving(cluster: InProcessCluster, expected: dict[bytes, bytes]) -> None:
    """Every node up; the cluster serves reads and writes; every replica holds what was written.

    Through the client library, which follows a leader change: a forged peer hello under a real
    peer's id replaces that peer's connection for a moment (the peer port is unauthenticated until
    mutual TLS), which may cost an election on a loaded machine; that is not what these tests test."""
    addresses = [str(cluster.client_address(n)) for n in sorted(cluster.nodes)]
    async with trimaran.connect(addresses, timeout_ms=20_000) as client:
        for key, value in expected.items():
            assert await client.get(key) == value
        await client.set(b"after", b"ok")
    leader = await cluster.leader()
    await wait_applied_everywhere(cluster, cluster.status(leader)["applied_index"])
    for n in cluster.nodes:
        assert register_state(cluster, n) == {**expected, b"after": b"ok"}, n


async def written_before(cluster: InProcessCluster) -> dict[bytes, bytes]:
    leader = await cluster.leader()
    client = await RawClient.connect(cluster.client_address(leader))
    await client.register()
    await client.set(b"before", b"1")
    await client.aclose()
    await wait_applied_everywhere(cluster, cluster.status(leader)["applied_index"])
    return {b"before": b"1"}


async def error_and_close(client: RawClient) -> dict[str, Any]:
    """The node's one error frame, then the close."""
    with trio.fail_after(5):
        frame = await client.read_obj()
        assert await client.read_obj() is None, "the connection should be closed"
    assert isinstance(frame, dict) and frame["type"] == "error", frame
    return frame["error"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- item 1


async def test_item_1_a_deep_version_before_hello_gets_a_typed_error(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        expected = await written_before(cluster)
        for node_id in cluster.nodes:  # followers and the leader alike
            address = cluster.client_address(node_id)
            client = RawClient(await trio.open_tcp_stream(address.host, address.port))
            # {"type": "hello", "version": 0x91 x 990 0xc0}
            await client.stream.send_all(encode_frame(b"\x82\xa4type\xa5hello\xa7version" + deep(990)))
            error = await error_and_close(client)
            assert error["code"] == "protocol_error" and "nested deeper" in error["message"]
        await still_serving(cluster, expected)


async def test_item_1_a_deep_op_after_hello_gets_a_typed_error(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        expected = await written_before(cluster)
        leader = await cluster.leader()
        client = await RawClient.connect(cluster.client_address(leader))
        await client.stream.send_all(encode_frame(b"\x93\x01" + deep(1000) + b"\x80"))  # [1, <deep>, {}]
        error = await error_and_close(client)
        assert error["code"] == "protocol_error" and "nested deeper" in error["message"]
        await still_serving(cluster, expected)


def hello_to(node_id: int) -> bytes:
    sender = 1 if node_id != 1 else 2
    return encode_frame(pack(peer_hello("trimaran", sender, node_id, DEFAULT_STATE_MACHINE)))


@pytest.mark.parametrize(
    ("after_hello", "frame"),
    [
        (False, encode_frame(b"\x82\xa4type\xaapeer_hello\xa7version" + deep(990))),  # the peer_hello
        (True, encode_frame(deep(1000))),  # a message after the handshake
        (True, encode_frame(b"\x93\x00\x01" + deep(1000))),
    ],
    ids=["peer_hello", "after the handshake", "inside a message"],
)
async def test_item_1_deep_peer_frames_close_the_connection_only(tmp_path: Path, after_hello: bool, frame: bytes) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        expected = await written_before(cluster)
        for node_id in cluster.nodes:
            stream = await peer_connect(cluster, node_id)
            await stream.send_all((hello_to(node_id) if after_hello else b"") + frame)
            error = await closed_with(stream)
            assert error is not None and error["error"]["code"] == "protocol_error"
            if after_hello:
                assert "nested deeper" in error["error"]["message"]
            else:
                assert error["error"]["message"] == HANDSHAKE_REFUSED
        await still_serving(cluster, expected)


# ---------------------------------------------------------------------------- item 2


async def test_item_2_a_command_nested_1022_deep_gets_a_typed_error(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        expected = await written_before(cluster)
        leader = await cluster.leader()
        client = await RawClient.connect(cluster.client_address(leader))
        await client.register()
        body = client.command_body(None)
        frame = pack([7, "command", body])
        assert frame.endswith(b"\xa7command\xc0")
        await client.stream.send_all(encode_frame(frame[:-1] + deep(1022)))
        error = await error_and_close(client)
        assert error["code"] == "protocol_error" and "nested deeper" in error["message"]
        await still_serving(cluster, expected)


async def test_item_2_a_command_past_command_depth_max_is_answered_and_the_connection_stays(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        expected = await written_before(cluster)
        leader = await cluster.leader()
        client = await RawClient.connect(cluster.client_address(leader))
        await client.register()
        command: Any = None
        for _ in range(limits.command_depth_max + 1):
            command = [command]
        with pytest.raises(InvalidArgument, match="deeper than"):
            await client.call("command", client.command_body(command))
        await client.set(b"same-connection", b"yes")  # it stays open
        await client.aclose()
        await still_serving(cluster, {**expected, b"same-connection": b"yes"})


# ---------------------------------------------------------------------------- item 5


async def start_when_closed(cluster: InProcessCluster, node_id: int) -> None:
    """Start a crashed node again once its writer thread has closed its LMDB environment."""
    with trio.fail_after(10):
        while True:
            try:
                await cluster.start(node_id)
                return
            except lmdb.Error:  # "already open in this process": the old writer is still closing
                await trio.sleep(0.05)


async def test_item_5_a_committed_poison_entry_stops_no_node_even_at_restart(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        expected = await written_before(cluster)
        leader = await cluster.leader()
        driver = cluster.nodes[leader].driver
        # Make exactly the fault: the leader appends data that is not msgpack, and it commits.
        index, _ = driver.replica.raft.propose([b"\xc1\xc1\xc1"])
        driver.wake()
        await wait_applied_everywhere(cluster, index)
        for n in cluster.nodes:
            assert cluster.status(n)["metrics"]["log_entries_malformed"] == 1
        # A client's command whose entry the leader writes as garbage (exactly the fault, with a
        # client waiting on it): the client gets the typed failure every replica applied.
        client = await RawClient.connect(cluster.client_address(leader))
        await client.register()
        real_pack = replica_module.pack
        poisoned = []

        def pack_once_badly(obj: Any) -> bytes:
            if not poisoned and isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], list) and obj[1]:
                poisoned.append(obj)
                return b"\xc1"
            return real_pack(obj)

        replica_module.pack = pack_once_badly  # type: ignore[assignment]
        try:
            with pytest.raises(InvalidArgument, match="not a batch of commands"):
                await client.set(b"lost", b"?")
        finally:
            replica_module.pack = real_pack  # type: ignore[assignment]
        await client.aclose()
        index = cluster.status(leader)["applied_index"]
        await wait_applied_everywhere(cluster, index)
        for n in cluster.nodes:
            assert cluster.status(n)["metrics"]["log_entries_malformed"] == 2
        # Every node restarts over them (they are in every log, no snapshot covers them).
        for n in sorted(cluster.nodes):
            cluster.crash(n)
        for n in (1, 2, 3):
            await start_when_closed(cluster, n)
        await wait_applied_everywhere(cluster, index)
        for n in cluster.nodes:
            assert cluster.status(n)["metrics"]["log_entries_malformed"] == 2  # applied again, as nothing
        await still_serving(cluster, expected)


# ---------------------------------------------------------------------------- item 6


async def test_item_6_a_refused_handshake_leaks_no_configuration(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with in_process_cluster(tmp_path, cluster_id="secret-cluster", kv_maxmemory_bytes=12345, **FAST) as cluster:
        await cluster.leader()
        stream = await peer_connect(cluster, 1)
        await stream.send_all(encode_frame(pack(peer_hello("guess", 2, 1, DEFAULT_STATE_MACHINE))))
        error = await closed_with(stream)
        assert error == {"type": "error", "error": {"code": "protocol_error", "message": HANDSHAKE_REFUSED, "details": {}}}
        assert "secret-cluster" in caplog.text  # the operator sees why, in the node's log


# ---------------------------------------------------------------------------- fuzz


_TRANSPORT = bare_transport()
_TRANSPORT._queues = {2: PeerQueue(10, limits.MIB)}
_GOOD_HELLO = pack(peer_hello("trimaran", 2, 1, DEFAULT_STATE_MACHINE))

peer_hellos = (
    st.binary(max_size=100)
    | mutated(st.just(_GOOD_HELLO))
    | st.builds(
        lambda k, v: pack({**peer_hello("trimaran", 2, 1, DEFAULT_STATE_MACHINE), k: v}),
        st.sampled_from(["type", "version", "cluster_id", "node_id", "recipient", "state_machine"]),
        fields,
    )
)


def test_the_good_peer_hello_passes() -> None:
    assert _TRANSPORT._check_hello(unpack(_GOOD_HELLO)) == 2


@fuzz_settings
@given(peer_hellos)
def test_fuzz_peer_hello(data: bytes) -> None:
    try:
        sender = _TRANSPORT._check_hello(unpack(data, size_bytes_max=HELLO_FRAME_BYTES_MAX))
    except TrimaranError as exc:
        assert len(exc.message) < 1000
        return
    assert sender == 2
