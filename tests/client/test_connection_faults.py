"""Issue 16, items 8 and 9, from the client library's side, against real nodes on loopback.

- A node closes idle connections (``client_idle_timeout_ms``): the client's own idle connection
  reconnects silently, and a watch, which polls, is never idle and never cut off.
- Item 9: a leader stopped with SIGSTOP (its kernel still accepts bytes) used to stall every
  writer on an open connection for the whole pause; each attempt now has a deadline below the
  call's, after which the client tries another node. Nothing acknowledged is lost.
"""

from __future__ import annotations

import signal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

import trimaran
from tests.node.helpers import in_process_cluster
from tests.node.procs import ProcessCluster
from trimaran.errors import RequestTimeout

FAST: dict[str, Any] = {"tick_ms": 10}


async def test_the_clients_idle_connection_reconnects_silently(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, size=1, client_idle_timeout_ms=300, request_timeout_ms=300, **FAST) as cluster:
        await cluster.leader()
        server = cluster.nodes[1].client_server
        assert server is not None
        async with trimaran.connect([str(cluster.client_address(1))]) as c:
            await c.kv.set("a", "1")
            first = c._conn
            await cluster.wait_for(lambda: server.idle_closed >= 1, what="the idle connection closed")
            assert first is not None
            with trio.fail_after(5):
                await first.closed_event.wait()
            started = trio.current_time()
            assert await c.kv.incr("n") == 1  # on a new connection, at once, with no error
            assert (await c.kv.get("a")).value == b"1"  # type: ignore[union-attr]
            assert trio.current_time() - started < 1.0
            assert c._conn is not first and c.leader_id == 1


async def test_a_watch_that_polls_is_never_cut_off_as_idle(tmp_path: Path) -> None:
    idle_timeout_ms = 300
    async with in_process_cluster(
        tmp_path, size=1, client_idle_timeout_ms=idle_timeout_ms, request_timeout_ms=idle_timeout_ms, **FAST
    ) as cluster:
        await cluster.leader()
        server = cluster.nodes[1].client_server
        assert server is not None
        address = [str(cluster.client_address(1))]
        async with trimaran.connect(address) as watcher, trimaran.connect(address) as writer:
            start = await writer.kv.set("w0", "0")
            seen: list[bytes] = []

            async def watch() -> None:
                # Empty polls back off up to poll_ms_max: well below the idle timeout.
                async for event in watcher.kv.watch("w", prefix=True, from_revision=start, poll_ms_max=100):
                    seen.append(event.key)
                    if len(seen) == 5:
                        return

            with trio.fail_after(20):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    for i in range(1, 6):  # 5 writes over 4 idle timeouts
                        await trio.sleep(idle_timeout_ms * 0.8 / 1000)
                        await writer.kv.set(f"w{i}", str(i))
        assert seen == [b"w1", b"w2", b"w3", b"w4", b"w5"]
        # The writer idled between its writes; the watcher never did (it polls every 100 ms).
        assert server.idle_closed <= 5


# ---------------------------------------------------------------------------- item 9


@pytest.mark.slow
async def test_writers_on_an_open_connection_move_on_from_a_stopped_leader(tmp_path: Path) -> None:
    """SIGSTOP the leader (started here, stopped by PID, SIGCONT in a finally): writes issued on
    the open connection go on with the new leader well within their deadline."""
    cluster = ProcessCluster(tmp_path)
    cluster.start_all()
    try:
        leader, _ = await cluster.leader(timeout_s=30)
        endpoints = [str(cluster.client[i]) for i in cluster.ids]
        acknowledged: dict[str, str] = {}
        async with trimaran.connect(endpoints, timeout_ms=5_000) as c:
            with trio.fail_after(30):
                while True:  # the first election may still be settling
                    try:
                        await c.kv.set("warm", "up")
                        break
                    except RequestTimeout:
                        continue
            if c.leader_id != leader:  # a re-election moved it: stop the one the client uses
                leader = c.leader_id or leader
            cluster.signal(leader, signal.SIGSTOP)
            try:
                slowest_s = 0.0
                for n in range(10):  # each write is issued on the open connection to the stopped leader first
                    key, value = f"k{n}", f"v{n}"
                    started = trio.current_time()
                    await c.kv.set(key, value)  # RequestTimeout here is the bug: the whole pause
                    slowest_s = max(slowest_s, trio.current_time() - started)
                    acknowledged[key] = value
                assert c.leader_id != leader
                assert slowest_s < 4.0, slowest_s
            finally:
                cluster.signal(leader, signal.SIGCONT)
            # Nothing acknowledged is lost, and the old leader rejoins and catches up.
            for key, value in acknowledged.items():
                assert (await c.kv.get(key)).value == value.encode()  # type: ignore[union-attr]
            with trio.fail_after(30):
                while True:
                    status = await c.node_status(str(cluster.client[leader]))
                    if status["applied_index"] >= (await c.status())["commit_index"]:
                        break
                    await trio.sleep(0.1)
            assert (await c.node_read(str(cluster.client[leader]), "kv", ["get", b"k9"]))[0] == b"v9"
    finally:
        cluster.close()


async def test_a_node_that_resets_the_connection_mid_handshake_is_just_a_failed_attempt(tmp_path: Path) -> None:
    """Found by the chaos test: a node killed while a client's hello was on its way reset the
    connection, and the client let trio's BrokenResourceError out of the call instead of trying
    the next endpoint. Here a listener takes the hello and answers with a reset (RST)."""
    import socket
    import struct

    from trimaran.client.connection import ConnectionLost, open_connection
    from trimaran.node.config import Address

    async def reset_after_hello(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    async with in_process_cluster(tmp_path, size=1, **FAST) as cluster, trio.open_nursery() as nursery:
        await cluster.leader()
        (listener,) = await nursery.start(partial(trio.serve_tcp, reset_after_hello, 0, host="127.0.0.1"))
        resetting = Address("127.0.0.1", listener.socket.getsockname()[1])
        with pytest.raises(ConnectionLost, match="broke the connection during the handshake"):
            await open_connection(nursery, resetting, cluster_id=None, token=None)
        # The client moves on to the next endpoint, every time.
        async with trimaran.connect([str(resetting), str(cluster.client_address(1))]) as c:
            for i in range(5):
                await c.kv.set(f"k{i}", "v")
                assert c._conn is not None
                c._conn.close()  # the next call connects again, trying the resetting node first
        nursery.cancel_scope.cancel()
