"""RESP pub/sub on chat channels against an in-process cluster, through redis-py unchanged (RESP2
and RESP3): PUBLISH on one node delivered to SUBSCRIBE and PSUBSCRIBE on another, confirmations
with counts, the subscribed-mode refusal, chat's channel names, scopes with auth on, and a slow
subscriber cut off with its reason."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import redis

from tests.node.helpers import HOST, TokenSigner, in_process_cluster
from tests.node.test_resp_server import client, in_thread, redis_tool, resp_address
from trimaran.node.config import Address
from trimaran.node.http.chat_gateway import ChatHub


@contextlib.asynccontextmanager
async def _one_node(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Any, Address, ChatHub]]:
    """A one-node cluster with a RESP port, its leader elected: (the cluster, the port, its hub)."""
    async with in_process_cluster(tmp_path, 1, resp_listen=Address(HOST, 0), **overrides) as cluster:
        await cluster.leader()
        hub = cluster.nodes[1].chat_hub
        assert hub is not None
        yield cluster, resp_address(cluster, 1), hub


def _next_message(p: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    """The next pub/sub message (subscribe confirmations included), or a failure after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = p.get_message(timeout=0.5)
        if message is not None:
            return dict(message)
    raise AssertionError(f"no pub/sub message within {timeout_s} s")


@pytest.mark.parametrize("protocol", [2, 3])
async def test_publish_on_one_node_reaches_subscribers_on_another(tmp_path: Path, protocol: int) -> None:
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)

        def scenario() -> None:
            publisher = client(resp_address(cluster, leader), protocol=protocol)
            subscriber = client(resp_address(cluster, follower), protocol=protocol)
            p = subscriber.pubsub()
            p.subscribe("room.1", "room.2")
            assert _next_message(p) == {"type": "subscribe", "pattern": None, "channel": b"room.1", "data": 1}
            assert _next_message(p) == {"type": "subscribe", "pattern": None, "channel": b"room.2", "data": 2}
            p.psubscribe("news.*")
            assert _next_message(p) == {"type": "psubscribe", "pattern": None, "channel": b"news.*", "data": 3}
            # The reply counts this node's subscriptions: none on the leader.
            assert publisher.publish("room.1", "hello") == 0
            assert _next_message(p) == {"type": "message", "pattern": None, "channel": b"room.1", "data": b"hello"}
            assert publisher.publish("news.eu", b"\x00bytes\xff") == 0
            assert _next_message(p) == {"type": "pmessage", "pattern": b"news.*", "channel": b"news.eu", "data": b"\x00bytes\xff"}
            for i in range(20):  # in order, none twice
                publisher.publish("room.2", str(i))
            assert [_next_message(p)["data"] for _ in range(20)] == [str(i).encode() for i in range(20)]
            # On the subscriber's node the reply counts its subscriptions (channel and pattern).
            local = client(resp_address(cluster, follower), protocol=protocol)
            assert local.publish("room.1", "x") == 1
            assert _next_message(p)["data"] == b"x"
            p.subscribe("news.eu")
            assert _next_message(p)["type"] == "subscribe"
            assert local.publish("news.eu", "y") == 2  # by name and by pattern, as Redis counts
            got = [_next_message(p), _next_message(p)]
            assert sorted(m["type"] for m in got) == ["message", "pmessage"]
            p.unsubscribe("room.1")
            assert _next_message(p) == {"type": "unsubscribe", "pattern": None, "channel": b"room.1", "data": 3}
            p.punsubscribe()
            assert _next_message(p) == {"type": "punsubscribe", "pattern": None, "channel": b"news.*", "data": 2}
            publisher.publish("room.1", "not for us")
            publisher.publish("room.2", "for us")
            assert _next_message(p)["data"] == b"for us"
            # Chat's names, and a clear error for others.
            with pytest.raises(redis.ResponseError, match="must be 1 or more of the characters"):
                publisher.publish("no spaces", "x")
            with pytest.raises(redis.ResponseError, match="must be 1 or more of the characters"):
                publisher.execute_command("SUBSCRIBE", "bad/name")
            p.close()
            for c in (publisher, subscriber, local):
                c.close()

        await in_thread(scenario)


def _exchange(sock: socket.socket, payload: bytes, expected: bytes) -> None:
    sock.sendall(payload)
    got = b""
    while len(got) < len(expected):
        chunk = sock.recv(65536)
        assert chunk, got
        got += chunk
    assert got == expected


async def test_resp2_subscribed_mode_allows_only_the_subscribe_family(tmp_path: Path) -> None:
    async with _one_node(tmp_path) as (cluster, address, hub):

        def scenario() -> None:
            with socket.create_connection((address.host, address.port), timeout=10) as sock:
                _exchange(sock, b"SUBSCRIBE a\r\n", b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
                _exchange(
                    sock,
                    b"GET k\r\n",
                    b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
                )
                _exchange(sock, b"PING\r\n", b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
                _exchange(sock, b"UNSUBSCRIBE\r\n", b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:0\r\n")
                _exchange(sock, b"PING\r\n", b"+PONG\r\n")  # out of subscribed mode
                _exchange(sock, b"SUBSCRIBE a\r\nRESET\r\nGET k\r\n", b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n+RESET\r\n$-1\r\n")
            # RESP3: any command while subscribed; pushes are '>'.
            with socket.create_connection((address.host, address.port), timeout=10) as sock:
                sock.sendall(b"HELLO 3\r\n")
                assert sock.recv(65536).startswith(b"%")
                _exchange(sock, b"SUBSCRIBE a\r\n", b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n")
                _exchange(sock, b"GET k\r\n", b"_\r\n")
                _exchange(sock, b"PUBLISH a hi\r\n", b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n:1\r\n")

        await in_thread(scenario)


async def test_scopes_with_auth_on(tmp_path: Path) -> None:
    signer = TokenSigner()
    reader = signer.token(["chat:subscribe:room.*"], "r")
    writer = signer.token(["chat:publish:room.1"], "w")
    async with _one_node(tmp_path, auth_keys=(signer.trusted,)) as (cluster, address, hub):

        def scenario() -> None:
            anonymous = client(address)
            with pytest.raises(redis.AuthenticationError):
                anonymous.publish("room.1", "x")
            anonymous.close()
            r = client(address, password=reader, protocol=3)
            p = r.pubsub()
            # (a refusal is a plain reply: a pubsub object would only see it in get_message)
            with pytest.raises(redis.exceptions.NoPermissionError, match="chat:subscribe:other"):
                r.execute_command("SUBSCRIBE", "other")
            with pytest.raises(redis.exceptions.NoPermissionError, match=r"chat:subscribe:\*"):
                r.execute_command("PSUBSCRIBE", "*")
            with pytest.raises(redis.exceptions.NoPermissionError, match=r"chat:subscribe:\*'"):
                r.execute_command("PSUBSCRIBE", "room.1*", "*")  # one refused: none taken
            with pytest.raises(redis.exceptions.NoPermissionError, match="chat:publish:room.1"):
                r.publish("room.1", "x")
            p.subscribe("room.1")
            assert _next_message(p)["type"] == "subscribe"
            p.psubscribe("room.2*")
            assert _next_message(p)["type"] == "psubscribe"
            w = client(address, password=writer)
            with pytest.raises(redis.exceptions.NoPermissionError, match="chat:publish:room.2"):
                w.publish("room.2", "x")
            assert w.publish("room.1", "ok") == 1
            assert _next_message(p) == {"type": "message", "pattern": None, "channel": b"room.1", "data": b"ok"}
            for c in (p, r, w):
                c.close()

        await in_thread(scenario)
        # A revocation applied while subscribed: -NOAUTH, and the connection is closed.
        sock = socket.create_connection((address.host, address.port), timeout=10)
        with sock:
            auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(reader), reader.encode())
            await in_thread(lambda: _exchange(sock, auth + b"SUBSCRIBE room.1\r\n", b"+OK\r\n*3\r\n$9\r\nsubscribe\r\n$6\r\nroom.1\r\n:1\r\n"))
            resp_server = cluster.nodes[1].resp_server
            assert resp_server is not None
            admin = signer.token(["admin:*"], "admin")
            await resp_server.edge.command("auth", ["revoke", "r", int(time.time() * 1000) + 600_000], 0, admin)

            def rest() -> bytes:
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
                return data

            closing = await in_thread(rest)
            assert closing.startswith(b"-NOAUTH ") and closing.endswith(b"\r\n") and closing.count(b"\r\n") == 1


async def test_a_subscriber_that_does_not_read_is_cut_off_with_its_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trimaran.node.resp import pubsub

    monkeypatch.setattr(pubsub, "WS_QUEUE_FRAMES_MAX", 50)
    async with _one_node(tmp_path) as (cluster, address, hub):

        def scenario() -> None:
            with socket.create_connection((address.host, address.port), timeout=10) as slow:
                _exchange(slow, b"SUBSCRIBE big\r\n", b"*3\r\n$9\r\nsubscribe\r\n$3\r\nbig\r\n:1\r\n")
                publisher = client(address)
                payload = b"x" * 60_000
                for _ in range(20):  # up to 48 MB: far past what the sockets buffer and the outbox take
                    pipe = publisher.pipeline(transaction=False)
                    for _ in range(40):
                        pipe.publish("big", payload)
                    pipe.execute()
                    if hub.slow_closed:
                        break
                assert hub.slow_closed == 1
                data = b""
                while chunk := slow.recv(1 << 20):  # what was written, the reason, then the close
                    data += chunk
                message = b"*3\r\n$7\r\nmessage\r\n$3\r\nbig\r\n$60000\r\n" + payload + b"\r\n"
                reason = pubsub.SLOW.wire
                assert data.endswith(reason) and b"slow subscriber" in reason
                received = data[: -len(reason)]
                assert received == message * (len(received) // len(message))  # whole messages, then the reason
                publisher.close()

        await in_thread(scenario)


async def test_redis_cli_subscribe(tmp_path: Path) -> None:
    cli = redis_tool("redis-cli")
    async with _one_node(tmp_path) as (cluster, address, hub):

        def scenario() -> str:
            process = subprocess.Popen(
                [cli, "-h", address.host, "-p", str(address.port), "SUBSCRIBE", "room.1"], stdout=subprocess.PIPE, text=True
            )
            try:
                deadline = time.monotonic() + 10
                while "room.1" not in hub.by_channel and time.monotonic() < deadline:
                    time.sleep(0.02)
                publisher = client(address)
                assert publisher.publish("room.1", "hello from redis-py") == 1
                publisher.close()
                assert process.stdout is not None
                lines = [process.stdout.readline().strip() for _ in range(6)]
                return "\n".join(lines)
            finally:
                process.terminate()  # this test's own child, by its handle
                process.wait(timeout=10)

        assert await in_thread(scenario) == "subscribe\nroom.1\n1\nmessage\nroom.1\nhello from redis-py"


async def test_a_subscriber_that_missed_live_events_gets_them_from_history_in_order(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)
        hub = cluster.nodes[follower].chat_hub
        assert hub is not None
        publisher = client(resp_address(cluster, leader))
        subscriber = client(resp_address(cluster, follower)).pubsub()
        await in_thread(lambda: subscriber.subscribe("room.1"))
        assert (await in_thread(lambda: _next_message(subscriber)))["type"] == "subscribe"
        (subs,) = hub.others
        # The hub stops handing it the channel's events (as if the events window lost them) ...
        hub.unfollow(subs, "room.1")
        for i in range(3):
            await in_thread(lambda: publisher.publish("room.1", f"missed {i}"))
        # ... then follows again and says the window had a gap: the feed reads the history.
        hub.follow(subs, "room.1")
        subs.resync_all()
        await in_thread(lambda: publisher.publish("room.1", "live"))
        got = [(await in_thread(lambda: _next_message(subscriber)))["data"] for _ in range(4)]
        assert got == [b"missed 0", b"missed 1", b"missed 2", b"live"]
        for c in (publisher, subscriber):
            await in_thread(c.close)


async def test_redis_py_asyncio_pubsub_resp3(tmp_path: Path) -> None:
    import asyncio

    import redis.asyncio as aioredis

    async with _one_node(tmp_path) as (cluster, address, hub):

        async def scenario() -> list[Any]:
            r = aioredis.Redis(host=address.host, port=address.port, protocol=3, socket_timeout=10)
            p = r.pubsub()
            await p.subscribe("room.1")
            await p.psubscribe("room.*")
            got = []
            for _ in range(2):
                got.append(await p.get_message(timeout=5))
            assert await r.publish("room.1", "hi") == 2
            for _ in range(2):
                got.append(await p.get_message(timeout=5))
            await p.aclose()
            await r.aclose()
            return [(m["type"], m["channel"], m["data"]) for m in got if m is not None]

        got = await in_thread(lambda: asyncio.run(scenario()))
        assert got[:2] == [("subscribe", b"room.1", 1), ("psubscribe", b"room.*", 2)]
        assert sorted(got[2:]) == [("message", b"room.1", b"hi"), ("pmessage", b"room.1", b"hi")]
