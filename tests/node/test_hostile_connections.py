"""Issue 16, items 3 and 8: hostile clients and sockets against a real node on loopback.

- Item 3 (memory amplification): large answers a client does not read are capped in bytes, per
  connection and per node; the answers over the cap become typed errors, the node stays up and
  nothing acknowledged is lost.
- Item 8 (slots): idle connections past their hello are closed (after a typed ``idle_timeout``
  frame), so they cannot keep new clients out for good; connections that never say hello are
  counted apart from the client cap; peer sockets that never finish their handshake cannot keep a
  restarted follower from catching up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.node.helpers import HOST, InProcessCluster, RawClient, in_process_cluster
from trimaran import limits
from trimaran.errors import Unavailable
from trimaran.node.client_server import ANSWER_BYTES_ALWAYS_QUEUED, ClientServer
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.framing import FrameDecoder, encode_frame
from trimaran.node.transport import peer_hello

FAST: dict[str, Any] = {"tick_ms": 10}


def server_of(cluster: InProcessCluster, node_id: int = 1) -> ClientServer:
    server = cluster.nodes[node_id].client_server
    assert server is not None
    return server


async def kv_set(client: RawClient, key: bytes, value: bytes) -> int:
    client.seq += 1
    body = {"client_id": client.client_id, "seq": client.seq, "ack_seq": client.seq - 1, "service": "kv"}
    body["command"] = ["set", key, value]
    return int(await client.call("command", body))


def stale_scan_frame(request_id: int) -> bytes:
    return encode_frame(pack([request_id, "read", {"service": "kv", "query": ["scan", b""], "consistency": "stale"}]))


async def write_eight_large_keys(cluster: InProcessCluster) -> RawClient:
    """8 keys of 1 MiB each (so one scan page is about 8 MiB); returns the writer's connection."""
    writer = await RawClient.connect(cluster.client_address(1))
    await writer.register()
    for i in range(8):
        await kv_set(writer, b"big%d" % i, bytes([i]) * limits.MIB)  # acknowledged
    return writer


async def read_answers(client: RawClient, count: int) -> list[Any]:
    answers: list[Any] = []
    with trio.fail_after(60):
        for _ in range(count):
            answer = await client.read_obj()
            assert answer is not None, f"closed after {len(answers)} answers"
            answers.append(answer)
    return answers


async def sample_while(cluster: InProcessCluster, done: Any, seconds_max: float) -> int:
    """The largest count of queued answer bytes the node reported until ``done()`` (bounded)."""
    peak = 0
    with trio.fail_after(seconds_max):
        while True:
            peak = max(peak, cluster.status(1)["metrics"]["client_answer_bytes_queued"])
            if done():
                return peak
            await trio.sleep(0.005)


# ---------------------------------------------------------------------------- item 3


async def test_unread_large_scans_are_capped_in_queued_answer_bytes(tmp_path: Path) -> None:
    """8 keys of 1 MiB, then 150 pipelined stale scans (about 6 KB sent) whose answers are not
    read: without a byte cap the node queued about 1.2 GB of answers."""
    async with in_process_cluster(tmp_path, size=1, **FAST) as cluster:
        await cluster.leader()
        writer = await write_eight_large_keys(cluster)
        server = server_of(cluster)
        cap = cluster.configs[0].client_answer_bytes_max
        inflight_max = cluster.configs[0].client_inflight_requests_max

        greedy = await RawClient.connect(cluster.client_address(1))
        requests = b"".join(stale_scan_frame(i) for i in range(150))
        assert len(requests) < 10 * limits.KIB  # about 6 KB by the client; 8 KB here
        await greedy.stream.send_all(requests)
        # Every scan is answered (queued or refused) while the greedy client reads nothing.
        peak = await sample_while(cluster, lambda: server.answers_refused >= 100, seconds_max=30)
        await trio.sleep(0.2)
        status = cluster.status(1)
        queued = status["metrics"]["client_answer_bytes_queued"]
        assert max(peak, queued) <= cap + inflight_max * ANSWER_BYTES_ALWAYS_QUEUED, (peak, queued)
        assert status["metrics"]["client_answers_refused"] >= 100

        # The node stays up and serves others at once.
        assert (await writer.call("status", {}))["role"] == "leader"

        # The greedy client gets every answer: a full page, or a typed error saying why not.
        answers = await read_answers(greedy, 150)
        assert sorted(a[0] for a in answers) == list(range(150))
        pages = [a[2] for a in answers if a[1]]
        refusals = [a[2] for a in answers if not a[1]]
        assert pages and all(len(p["items"]) == 8 for p in pages)
        assert refusals and {r["code"] for r in refusals} == {"unavailable"}
        assert all("client_answer_bytes_max" in r["message"] for r in refusals)
        await greedy.aclose()
        # Nothing acknowledged is lost, and the queued bytes went back to 0 once written.
        for i in range(8):
            got = await writer.call("read", {"service": "kv", "query": ["get", b"big%d" % i]})
            assert got[0] == bytes([i]) * limits.MIB
        await cluster.wait_for(lambda: server.answer_bytes_queued == 0, what="no answer bytes queued")
        await writer.aclose()


async def test_the_node_caps_queued_answer_bytes_over_all_connections(tmp_path: Path) -> None:
    connection_cap, node_cap = limits.frame_bytes_max, 2 * limits.frame_bytes_max
    async with in_process_cluster(
        tmp_path, size=1, client_answer_bytes_max=connection_cap, client_answer_bytes_node_max=node_cap, **FAST
    ) as cluster:
        await cluster.leader()
        writer = await write_eight_large_keys(cluster)
        server = server_of(cluster)
        # Each may queue one page of about 8 MiB (its own cap is 16 MiB); 8 of them would take 64.
        greedy = [await RawClient.connect(cluster.client_address(1)) for _ in range(8)]
        for client in greedy:
            await client.stream.send_all(b"".join(stale_scan_frame(i) for i in range(20)))
        peak = await sample_while(cluster, lambda: server.answers_refused >= 8 * 16, seconds_max=30)
        slack = 8 * cluster.configs[0].client_inflight_requests_max * ANSWER_BYTES_ALWAYS_QUEUED
        assert peak <= node_cap + slack and server.answer_bytes_queued <= node_cap + slack
        codes = []
        for client in greedy:
            answers = await read_answers(client, 20)
            codes += [a[2]["message"] for a in answers if not a[1]]
            await client.aclose()
        assert any("client_answer_bytes_node_max" in message for message in codes)
        assert (await writer.call("status", {}))["role"] == "leader"
        await writer.aclose()


async def test_a_reader_at_its_answer_cap_stops_reading_and_goes_on_once_answers_are_read(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, size=1, client_answer_bytes_max=limits.frame_bytes_max, **FAST) as cluster:
        await cluster.leader()
        writer = await write_eight_large_keys(cluster)
        greedy = await RawClient.connect(cluster.client_address(1))
        await greedy.stream.send_all(b"".join(stale_scan_frame(i) for i in range(10)))
        await greedy.send_obj([99, "status", {}])  # read only once the answers shrink
        answers = await read_answers(greedy, 11)
        assert {a[0] for a in answers} == set(range(10)) | {99}
        assert [a for a in answers if a[0] == 99][0][1] is True
        await greedy.aclose()
        await writer.aclose()


# ---------------------------------------------------------------------------- item 8, clients


async def test_idle_connections_at_the_cap_are_closed_with_a_typed_frame_then_new_clients_get_in(
    tmp_path: Path,
) -> None:
    """1,024 connections that said hello and then idle used to block every new client for good."""
    idle_timeout_ms = 3_000
    async with in_process_cluster(
        tmp_path, size=1, client_idle_timeout_ms=idle_timeout_ms, request_timeout_ms=1_000, **FAST
    ) as cluster:
        await cluster.leader()
        cap = cluster.configs[0].client_connections_max
        assert cap == 1024
        address = cluster.client_address(1)
        started = trio.current_time()
        idle = [await RawClient.connect(address) for _ in range(cap)]
        assert trio.current_time() - started < idle_timeout_ms / 1000, "opening them took longer than the timeout"
        with pytest.raises(Unavailable, match="cap of 1024"):
            await RawClient.connect(address)  # the problem: every slot is taken
        # Within the idle timeout (and a bound), each idle connection gets a typed frame and a close.
        with trio.fail_after(idle_timeout_ms / 1000 + 10):
            for client in idle:
                frame = await client.read_obj()
                assert frame["type"] == "error" and frame["error"]["code"] == "idle_timeout", frame
                assert await client.read_obj() is None
                await client.aclose()
        newcomer = await RawClient.connect(address)
        assert (await newcomer.call("status", {}))["metrics"]["client_idle_closed"] >= cap
        await newcomer.aclose()


async def test_a_connection_that_keeps_sending_requests_is_not_idle(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, size=1, client_idle_timeout_ms=400, request_timeout_ms=400, **FAST) as cluster:
        await cluster.leader()
        client = await RawClient.connect(cluster.client_address(1))
        with trio.fail_after(10):
            for _ in range(12):  # 1.2 s, three idle timeouts, one request every 100 ms
                assert (await client.call("status", {}))["node_id"] == 1
                await trio.sleep(0.1)
        assert server_of(cluster).idle_closed == 0
        await client.aclose()


async def test_sockets_that_never_say_hello_do_not_take_client_slots(tmp_path: Path) -> None:
    handshakes_max = 32
    async with in_process_cluster(
        tmp_path, size=1, client_connections_max=4, client_handshakes_max=handshakes_max, handshake_timeout_ms=60_000, **FAST
    ) as cluster:
        await cluster.leader()
        address = cluster.client_address(1)
        silent = [await trio.open_tcp_stream(HOST, address.port) for _ in range(handshakes_max + 8)]
        server = server_of(cluster)
        await cluster.wait_for(lambda: server.handshakes_evicted >= 8, what="the oldest silent sockets closed")
        # More silent sockets than the client cap, yet a client that says hello gets in at once.
        clients = [await RawClient.connect(address) for _ in range(4)]
        for client in clients:
            assert (await client.call("status", {}))["node_id"] == 1
        # The oldest silent sockets were the ones closed, each with a typed frame.
        for stream in silent[:8]:
            frame = await first_frame_before_close(stream)
            assert frame is not None and frame["error"]["code"] == "unavailable", frame
        assert server.handshakes_pending <= handshakes_max
        for client in clients:
            await client.aclose()
        for stream in silent:
            await trio.aclose_forcefully(stream)


async def first_frame_before_close(stream: trio.SocketStream) -> Any:
    decoder = FrameDecoder()
    with trio.fail_after(5):
        while (frame := decoder.next_frame()) is None:
            data = await stream.receive_some(65536)
            if not data:
                return None
            decoder.feed(data)
    return unpack(frame)


# ---------------------------------------------------------------------------- item 8, peers


async def test_sockets_that_never_finish_the_peer_handshake_cannot_keep_a_restarted_follower_behind(
    tmp_path: Path,
) -> None:
    """64 sockets that never send a peer_hello, held open on a restarted follower's peer port."""
    sockets = 64
    async with in_process_cluster(
        tmp_path,
        handshake_timeout_ms=60_000,  # so the silent sockets are not closed for being slow
        peer_reconnect_ms_min=500,  # the silent sockets are in before the leader dials again
        peer_reconnect_ms_max=500,
        **FAST,
    ) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)
        cluster.crash(follower)
        client = await RawClient.connect(cluster.client_address(leader))
        await client.register()
        for i in range(20):
            await client.set(b"k%d" % i, b"v%d" % i)  # acknowledged while the follower is down
        target = cluster.status(leader)["commit_index"]

        node = await cluster.start(follower)
        peer_address = node.peer_address
        assert peer_address is not None
        silent: list[trio.SocketStream] = []
        caught_up = False
        with trio.fail_after(20):
            for _ in range(2000):  # keep 64 silent sockets open: reopen whatever the node closes
                while len(silent) < sockets:
                    silent.append(await trio.open_tcp_stream(HOST, peer_address.port))
                if cluster.status(follower)["applied_index"] >= target:
                    caught_up = True
                    break
                await trio.sleep(0.01)
                silent = [s for s in silent if not await closed_by_peer(s)]
        assert caught_up
        metrics = cluster.status(follower)["metrics"]
        assert metrics["peer_handshakes_evicted"] >= sockets - cluster.configs[0].peer_handshakes_max
        for i in range(20):
            assert await client.get(b"k%d" % i) == b"v%d" % i
        await client.aclose()
        for stream in silent:
            await trio.aclose_forcefully(stream)


async def closed_by_peer(stream: trio.SocketStream) -> bool:
    """Whether the node closed ``stream`` (read what it sent, without waiting)."""
    with trio.move_on_after(0):
        try:
            while True:
                if not await stream.receive_some(65536):
                    break
        except (trio.BrokenResourceError, OSError):
            pass
        await trio.aclose_forcefully(stream)
        return True
    return False


async def test_a_peer_that_connects_again_replaces_its_older_connection(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)
        transport = cluster.nodes[follower].transport
        assert transport is not None and transport.address is not None
        await cluster.wait_for(lambda: leader in transport._inbound, what="the leader's connection")
        # A second handshaken connection from the leader's id (as after a restart the follower has
        # not noticed yet): it replaces the first, and the leader's next one replaces it in turn.
        second = await trio.open_tcp_stream(HOST, transport.address.port)
        state_machine = cluster.configs[0].state_machine_settings()
        await second.send_all(encode_frame(pack(peer_hello("trimaran", leader, follower, state_machine))))
        assert await first_frame_before_close(second) is None  # closed once the leader dials again
        await cluster.wait_for(lambda: transport.connections_replaced >= 2, what="both replacements")
        others = {n for n in (1, 2, 3) if n != follower}
        await cluster.wait_for(lambda: set(transport._inbound) == others, what="one connection from each peer")
        client = await RawClient.connect(cluster.client_address(await cluster.leader()))
        await client.register()
        await client.set(b"k", b"v")
        await client.aclose()
