"""The RESP listener's poller (:mod:`trimaran.node.resp.poller`) against a one-node in-process
cluster, over raw sockets (so many connections can have commands waiting in one pass): answers in
order per connection when many connections' commands go to the driver as one group, a connection
leaving the poller for a command its task runs (MULTI, SUBSCRIBE, PUBLISH) and coming back, a
client that does not read its answers not holding up the others, and clients closing while their
commands are in flight."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import trio

from tests.node.helpers import HOST, in_process_cluster
from tests.node.test_resp_server import resp_address
from trimaran.node.config import Address
from trimaran.node.resp import RespServer
from trimaran.node.resp.poller import Poller

#: Bounds every wait of these tests (a bug shows as a timeout, not a hang).
WAIT_S = 10


def command(*args: bytes | str | int) -> bytes:
    parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    """``size`` bytes from ``stream`` (fewer only if it closed)."""
    data = bytearray()
    with trio.fail_after(WAIT_S):
        while len(data) < size:
            chunk = await stream.receive_some(size - len(data))
            if not chunk:
                break
            data += chunk
    return bytes(data)


async def ask(stream: trio.SocketStream, request: bytes, expected: bytes) -> None:
    await stream.send_all(request)
    assert await read_exactly(stream, len(expected)) == expected


async def send_pipelines_and_check_answers(streams: list[trio.SocketStream], rounds: int) -> None:
    """Connection ``i`` sends ``rounds`` times SET k<i>, INCR c<i>, GET k<i> (every connection
    before any answer is read), then each gets its answers, in its order."""
    expected = []
    for i, stream in enumerate(streams):
        request, answers = b"", b""
        for j in range(rounds):
            value = f"v{i}-{j}".encode()
            request += command("SET", f"k{i}", value) + command("INCR", f"c{i}") + command("GET", f"k{i}")
            answers += b"+OK\r\n" + b":%d\r\n" % (j + 1) + bulk(value)
        expected.append(answers)
        await stream.send_all(request)
    for stream, answers in zip(streams, expected):
        assert await read_exactly(stream, len(answers)) == answers


async def until(check: object, what: str) -> None:
    """Wait (bounded) until ``check()`` holds."""
    with trio.fail_after(WAIT_S):
        while not check():  # type: ignore[operator]
            await trio.sleep(0.01)


@contextlib.asynccontextmanager
async def one_node(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[RespServer, Poller, Address]]:
    """A one-node cluster, its leader elected: its RESP listener, that one's poller, its port."""
    async with in_process_cluster(tmp_path, 1, resp_listen=Address(HOST, 0), **overrides) as cluster:
        await cluster.leader()
        server = cluster.nodes[1].resp_server
        assert server is not None and server.poller is not None
        yield server, server.poller, resp_address(cluster, 1)


async def connect(address: Address, receive_buffer_bytes: int = 0) -> trio.SocketStream:
    sock = trio.socket.socket()
    if receive_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
    await sock.connect((address.host, address.port))
    return trio.SocketStream(sock)


async def test_answers_in_order_per_connection_when_connections_share_a_group(tmp_path: Path) -> None:
    async with one_node(tmp_path) as (server, poller, address):
        streams = [await connect(address) for _ in range(40)]
        for i, stream in enumerate(streams):  # (each session registers on its first write)
            await ask(stream, command("SET", f"k{i}", "start"), b"+OK\r\n")
        await until(lambda: poller.connections == len(streams), "every connection in the poller")
        # Every connection sends its pipeline before any reads: writes and reads of all of them
        # are waiting together, each run of one connection's answers must land on its socket in
        # its order (a SET then an INCR then a GET that sees that SET, five times over).
        await send_pipelines_and_check_answers(streams, 5)
        # Not one connection at a time: several connections' groups went to the driver as one.
        assert poller.widest > 1
        for stream in streams:
            await stream.aclose()


async def test_a_connection_leaves_for_its_task_and_comes_back(tmp_path: Path) -> None:
    async with one_node(tmp_path) as (server, poller, address):
        a, b = await connect(address), await connect(address)
        await ask(a, command("SET", "a", "1"), b"+OK\r\n")
        await ask(b, command("GET", "a"), bulk(b"1"))
        assert poller.connections == 2
        handed = poller.handed
        # MULTI: the transaction runs in a's task, out of the poller, until EXEC.
        await ask(a, command("MULTI"), b"+OK\r\n")
        assert poller.connections == 1 and poller.handed == handed + 1
        await ask(a, command("SET", "a", "2"), b"+QUEUED\r\n")
        await ask(b, command("GET", "a"), bulk(b"1"))  # (b is served meanwhile)
        await ask(a, command("EXEC"), b"*1\r\n+OK\r\n")
        await until(lambda: poller.connections == 2, "a back in the poller")
        passes = poller.passes
        await ask(a, command("SET", "a", "3") + command("GET", "a"), b"+OK\r\n" + bulk(b"3"))
        assert poller.passes > passes and poller.handed == handed + 1  # served by the poller
        # SUBSCRIBE: a subscribed connection stays with its task (one writer for its pushes).
        await ask(a, command("SUBSCRIBE", "room"), b"*3\r\n" + bulk(b"subscribe") + bulk(b"room") + b":1\r\n")
        assert poller.connections == 1
        # PUBLISH has no planner: b leaves for its task, and comes back.
        await ask(b, command("PUBLISH", "room", "hi"), b":1\r\n")
        message = b"*3\r\n" + bulk(b"message") + bulk(b"room") + bulk(b"hi")
        assert await read_exactly(a, len(message)) == message
        await until(lambda: poller.connections == 1, "b back in the poller")
        await ask(b, command("INCR", "n") + command("GET", "a"), b":1\r\n" + bulk(b"3"))
        assert poller.connections == 1
        await a.aclose()
        await b.aclose()


async def test_a_client_not_reading_does_not_hold_up_the_others(tmp_path: Path) -> None:
    async with one_node(tmp_path) as (server, poller, address):
        value = b"x" * (512 * 1024)
        slow = await connect(address, receive_buffer_bytes=4096)
        await ask(slow, command("SET", "big", value), b"+OK\r\n")
        # 40 answers of 512 KiB (20 MiB): far more than the sockets take; the slow client reads
        # none of them for now.
        await slow.send_all(command("GET", "big") * 40)
        await until(lambda: poller.connections == 0, "the slow connection handed to its task")
        other = await connect(address)
        with trio.fail_after(WAIT_S):
            for i in range(20):
                await ask(other, command("SET", f"o{i}", i) + command("GET", f"o{i}"), b"+OK\r\n" + bulk(str(i).encode()))
        answers = await read_exactly(slow, 40 * len(bulk(value)))
        assert answers == bulk(value) * 40
        await until(lambda: poller.connections == 2, "the slow connection back in the poller")
        await slow.aclose()
        await other.aclose()


async def test_clients_closing_with_commands_in_flight(tmp_path: Path) -> None:
    async with one_node(tmp_path) as (server, poller, address):
        keeper = await connect(address)
        await ask(keeper, command("SET", "keep", "0"), b"+OK\r\n")
        leaving = [await connect(address) for _ in range(30)]
        for i, stream in enumerate(leaving):
            await ask(stream, command("SET", f"l{i}", "0"), b"+OK\r\n")
        await until(lambda: server.connections == 31 and poller.connections == 31, "every connection in the poller")
        for i, stream in enumerate(leaving):
            # A third close idle (only the poller's read sees it), a third with commands in
            # flight, a third reset with commands in flight (the poller's write of their answers
            # may fail).
            if i % 3:
                await stream.send_all((command("INCR", f"l{i}") + command("GET", f"l{i}")) * 8)
            if i % 3 == 2:
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()
        await ask(keeper, command("INCR", "n") + command("GET", "keep"), b":1\r\n" + bulk(b"0"))
        # Every closed connection's task ended (its slot free), and the poller holds only keeper.
        await until(lambda: server.connections == 1 and poller.connections == 1, "the closed connections gone")
        await ask(keeper, command("EXISTS", *[f"l{i}" for i in range(30)]), b":30\r\n")
        await keeper.aclose()


async def test_a_group_refused_as_not_the_leader_goes_to_the_leader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that knew no other leader when it took a pass's commands (an election just ended)
    and turns out not to lead: its driver refuses the group, and the connection's task sends it
    to the leader with the seqs it has (each write applied once), then the answers in order."""
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)
        server = cluster.nodes[follower].resp_server
        assert server is not None and server.poller is not None
        poller = server.poller
        # (As if the follower had not heard of the leader yet when the poller took the commands.)
        monkeypatch.setattr(server.edge, "other_leader", lambda: None)
        stream = await connect(resp_address(cluster, follower))
        await ask(stream, command("SET", "f", "0"), b"+OK\r\n")  # (its session registers)
        await until(lambda: poller.connections == 1, "the connection in the follower's poller")
        handed = poller.handed
        await ask(
            stream,
            command("SET", "f", "1") + command("INCR", "g") + command("INCR", "g") + command("GET", "f"),
            b"+OK\r\n:1\r\n:2\r\n" + bulk(b"1"),
        )
        assert poller.handed > handed  # (settled by the connection's task)
        on_leader = await connect(resp_address(cluster, leader))
        await ask(on_leader, command("GET", "g"), bulk(b"2"))
        await stream.aclose()
        await on_leader.aclose()


async def test_new_connections_first_writes_register_their_sessions_together(tmp_path: Path) -> None:
    async with one_node(tmp_path) as (server, poller, address):
        streams = [await connect(address) for _ in range(30)]
        await until(lambda: poller.connections == len(streams), "every connection in the poller")
        handed, lapsed = poller.handed, server.lapses.lapsed
        # Each connection's first write waits for its session (registered with the others', in the
        # poller: no connection goes to its task), then each write is applied once, in order.
        for i, stream in enumerate(streams):
            await stream.send_all(command("SET", f"r{i}", "a") + command("INCR", f"n{i}") + command("INCR", f"n{i}"))
        for stream in streams:
            assert await read_exactly(stream, len(b"+OK\r\n:1\r\n:2\r\n")) == b"+OK\r\n:1\r\n:2\r\n"
        assert poller.handed == handed and server.lapses.lapsed == lapsed
        client_ids = {conn.session.client_id for conn in poller._conns.values()}
        assert None not in client_ids and len(client_ids) == len(streams)
        for stream in streams:
            await stream.aclose()


async def test_a_group_the_driver_never_answers_lapses_and_the_connection_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with one_node(tmp_path, request_timeout_ms=300) as (server, poller, address):
        driver = server.edge.driver
        on_client = driver._on_client

        def lose_some(op: str, body: dict[str, Any], token: Any, size_bytes: int, now_s: float) -> None:
            if "lost" not in repr(body):  # (the round never serves the others)
                on_client(op, body, token, size_bytes, now_s)

        monkeypatch.setattr(driver, "_on_client", lose_some)
        stream = await connect(address)
        await ask(stream, command("SET", "kept", "1"), b"+OK\r\n")
        await until(lambda: poller.connections == 1, "the connection in the poller")
        lapsed = server.lapses.lapsed
        await stream.send_all(command("GET", "lost"))
        answer = await read_exactly(stream, len(b"-ERR no answer within 0.3 s; the outcome is unknown\r\n"))
        assert answer == b"-ERR no answer within 0.3 s; the outcome is unknown\r\n"
        assert server.lapses.lapsed == lapsed + 1
        await ask(stream, command("GET", "kept"), bulk(b"1"))
        await stream.aclose()


class _Registered:
    """The reply target of a session registration the test slips into a group (it waits for no
    answer): when it comes, the registration was applied."""

    edge_name = "test"

    def __init__(self, on_reply: Any) -> None:
        self._on_reply = on_reply

    def on_reply(self, index: int, ok: bool, value: Any) -> None:
        self._on_reply(ok, value)


async def test_writes_whose_session_expired_in_a_group_go_again_once_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two poller-served connections send a run of writes each; they go to the driver as one group
    (one log entry), and in that entry, after the first connection's first write, the replica's
    session table evicts both connections' sessions: nothing of their later writes is applied,
    and those come back ``SessionExpired``. Each connection's task (:meth:`Poller._settle`) sends
    exactly those writes again under a new registration: each write is applied once, every answer
    comes back in order, and the connections are then served by the poller again.

    The expiry is a real one, through the cluster's own mechanism (the session table's LRU bound,
    ``limits.sessions_max``), arranged deterministically: the test wraps the driver's
    ``_on_client`` (where a round serves each request of the group) to slip a session registration
    in right before the first write named ``second:...``, with the table's bound lowered to 1
    until that registration is applied (so it evicts every session, as 100 000 registrations
    would), then put back."""
    async with one_node(tmp_path) as (server, poller, address):
        driver = server.edge.driver
        sessions = driver.replica.sessions
        bound = sessions.sessions_max
        a, b = await connect(address), await connect(address)
        await ask(a, command("SET", "start:a", "0"), b"+OK\r\n")  # (their sessions register)
        await ask(b, command("SET", "start:b", "0"), b"+OK\r\n")
        await until(lambda: poller.connections == 2, "both connections in the poller")
        old_ids = {conn.session.client_id for conn in poller._conns.values()}
        assert None not in old_ids and len(old_ids) == 2
        keys = [f"{name}:{who}" for who in "ab" for name in ("first", "second", "third")]
        # Each write's submissions to the driver, by key: the client id each was numbered in.
        submitted: dict[str, list[int]] = {key: [] for key in keys}
        evicted: list[Any] = []
        on_client = driver._on_client

        def registered(ok: bool, value: Any) -> None:
            sessions.sessions_max = bound  # (before the settling tasks register again)
            evicted.append((ok, value, len(sessions)))

        def evict_before_a_second_write(op: str, body: dict[str, Any], token: Any, size_bytes: int, now_s: float) -> None:
            if op == "command":
                key = next((k for k in keys if k in repr(body["command"])), None)
                if key is not None:
                    submitted[key].append(body["client_id"])
                    if key.startswith("second:") and not evicted and sessions.sessions_max == bound:
                        sessions.sessions_max = 1
                        on_client("register", {}, (_Registered(registered), 0), 0, now_s)
            on_client(op, body, token, size_bytes, now_s)

        monkeypatch.setattr(driver, "_on_client", evict_before_a_second_write)
        handed, widest = poller.handed, poller.widest
        try:
            # Both pipelines reach the node before the poller's next pass (os.write does not yield
            # to trio): their writes go to the driver as one group.
            pipelines = {
                stream: command("INCR", f"first:{who}") + command("INCR", f"second:{who}") + command("SET", f"third:{who}", who) + command("GET", f"third:{who}")
                for stream, who in ((a, "a"), (b, "b"))
            }
            for stream, request in pipelines.items():
                assert os.write(stream.socket.fileno(), request) == len(request)
            for stream, who in ((a, "a"), (b, "b")):
                expected = b":1\r\n:1\r\n+OK\r\n" + bulk(who.encode())
                assert await read_exactly(stream, len(expected)) == expected
        finally:
            sessions.sessions_max = bound
        assert poller.widest == max(widest, 2)  # (the two connections' writes were one group)
        # The registration was applied and left itself alone in the table (both connections'
        # sessions evicted), and the two connections were handed to their tasks to settle.
        assert len(evicted) == 1 and evicted[0][0] is True and evicted[0][2] == 1
        assert poller.handed == handed + 2
        # Whichever connection's writes came first in the group had its first write applied (once:
        # never sent again); every other write went twice, first under its old session, then under
        # a new one (never the expired one again).
        first = min(("a", "b"), key=lambda who: len(submitted[f"first:{who}"]))
        assert len(submitted[f"first:{first}"]) == 1 and submitted[f"first:{first}"][0] in old_ids
        again = [key for key in keys if key != f"first:{first}"]
        for key in again:
            assert len(submitted[key]) == 2, (key, submitted)
            assert submitted[key][0] in old_ids and submitted[key][1] not in old_ids, (key, submitted)
        # Then both are back in the poller, with their new sessions, and served by it (not their
        # tasks): each write was applied once (the INCRs show a duplicate).
        await until(lambda: poller.connections == 2, "both connections back in the poller")
        new_ids = {conn.session.client_id for conn in poller._conns.values()}
        assert None not in new_ids and len(new_ids) == 2 and not new_ids & old_ids
        handed, passes = poller.handed, poller.passes
        for stream, who in ((a, "a"), (b, "b")):
            await ask(
                stream,
                command("GET", f"first:{who}") + command("GET", f"second:{who}") + command("GET", f"third:{who}") + command("INCR", f"second:{who}"),
                bulk(b"1") + bulk(b"1") + bulk(who.encode()) + b":2\r\n",
            )
        assert poller.handed == handed and poller.passes > passes
        await a.aclose()
        await b.aclose()
