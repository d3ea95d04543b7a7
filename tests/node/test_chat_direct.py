"""The chat fan-out's fast path: the HTTP port's own listener (node/http/front.py) takes chat
WebSocket upgrades and hands the rest to hypercorn; its frames are written straight to the socket
and never interleave with trio-websocket's own (pongs, close); a subscriber in step takes a run of
live messages whole (Feed.take_run), exactly as Feed.on_event would one by one."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio
from hypothesis import given
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, open_websocket_url

from tests.node.helpers import HOST, in_process_cluster
from tests.node.test_chat_gateway import TIMEOUT_S, ready, url
from trimaran.client.chat import frame_objects
from trimaran.node.config import Address
from trimaran.node.http.chat_gateway import WS_FRAME_PUSH_BYTES_MAX, WsConnection, _Run
from trimaran.node.http.front import DirectWebSocket, frame_header, is_chat_upgrade, text_frame
from trimaran.services.chat.feed import Feed

# ---------------------------------------------------------------------------------- Feed.take_run


_feeds = st.tuples(st.booleans(), st.sampled_from(["e1", "e2"]), st.integers(min_value=0, max_value=6))
_runs = st.tuples(st.integers(min_value=1, max_value=8), st.integers(min_value=1, max_value=5), st.sampled_from(["e1", "e2"]))


@given(_feeds, _runs)
def test_take_run_is_on_event_one_by_one_in_the_common_case(feed_state: tuple[bool, str, int], run: tuple[int, int, str]) -> None:
    syncing, epoch, last = feed_state
    first, count, run_epoch = run
    feed = Feed("c", last, epoch)
    feed.syncing = syncing
    events = [[i, "message", "c", first + i, run_epoch, 0, b"x"] for i in range(count)]
    one_by_one = copy.deepcopy(feed)
    pushes = [one_by_one.on_event(event) for event in events]
    plain = all(p == [("event", event)] for p, event in zip(pushes, events))
    before = (feed.last, feed.epoch, feed.syncing, list(feed.pending))
    took = feed.take_run(first, first + count - 1, run_epoch)
    assert took == plain
    if took:  # the same state as one by one
        assert (feed.last, feed.epoch, feed.syncing, feed.pending) == (one_by_one.last, one_by_one.epoch, one_by_one.syncing, one_by_one.pending)
    else:  # untouched: the events then go through on_event
        assert (feed.last, feed.epoch, feed.syncing, feed.pending) == before


def _message(offset: int, epoch: str = "e1", data: bytes = b"x", channel: str = "c") -> list[Any]:
    return [offset, "message", channel, offset, epoch, 0, data]


def test_a_run_is_taken_whole_only_when_its_messages_are_consecutive_in_one_epoch() -> None:
    run = _Run([_message(4), _message(5), _message(6)])
    assert (run.first, run.last, run.epoch) == (4, 6, "e1")
    assert _Run([_message(4), _message(6)]).first is None  # a gap
    assert _Run([_message(4), _message(5, "e2")]).first is None  # another epoch
    assert _Run([_message(4), [5, "ephemeral", "c", None, "e1", 0, b"t"]]).first is None
    assert _Run([[5, "reset", "c", None, "e2", 0, None]]).first is None


async def test_a_subscriber_in_step_queues_a_run_as_one_entry_and_a_large_one_push_by_push() -> None:
    hub = SimpleNamespace(edge=None, to_flush=None, pushed=0, slow_closed=0)

    async def never() -> dict[str, Any]:
        raise AssertionError("not read")

    async def unused(_: dict[str, Any]) -> None:
        raise AssertionError("not written")

    conn = WsConnection(hub, {}, never, unused, None)  # type: ignore[arg-type]
    feed = conn.subscriptions["c"] = Feed("c", 0, "e1")
    feed.syncing = False
    conn.on_run(_Run([_message(1), _message(2), _message(3)]))
    assert feed.last == 3 and hub.pushed == 3 and len(conn._queue) == 1
    assert [p["offset"] for p in frame_objects(conn._queue[0])] == [1, 2, 3]
    big = b"y" * (WS_FRAME_PUSH_BYTES_MAX // 2)
    conn.on_run(_Run([_message(4, data=big), _message(5, data=big)]))  # over a frame together
    assert feed.last == 5 and hub.pushed == 5 and len(conn._queue) == 3
    assert [frame_objects(text)[0]["offset"] for text in list(conn._queue)[1:]] == [4, 5]
    conn.on_run(_Run([_message(7), _message(8)]))  # skips 6: not in step, so read from history
    assert feed.last == 5 and feed.syncing and len(conn._queue) == 3


# ---------------------------------------------------------------------------------- routing


def test_only_a_whole_upgrade_of_v1_ws_is_taken_by_the_listener() -> None:
    head = b"GET /v1/ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    assert is_chat_upgrade(head)
    assert is_chat_upgrade(b"GET /v1/ws?x=1 HTTP/1.1\r\nupgrade: WebSocket\r\n\r\n")
    assert not is_chat_upgrade(head[:-2])  # not whole yet: hypercorn reads the rest
    assert not is_chat_upgrade(head + b"\x81\x80")  # a frame sent before the answer: hypercorn's
    assert not is_chat_upgrade(head.replace(b"/v1/ws", b"/v1/wsx"))
    assert not is_chat_upgrade(head.replace(b"/v1/ws", b"/v1/status"))
    assert not is_chat_upgrade(head.replace(b"GET", b"POST"))
    assert not is_chat_upgrade(b"GET /v1/ws HTTP/1.1\r\nHost: h\r\n\r\nUpgrade: websocket\r\n\r\n")  # in the body


def test_frame_headers_follow_rfc6455_lengths() -> None:
    assert frame_header(5) == b"\x81\x05"
    assert frame_header(126) == b"\x81\x7e\x00\x7e"
    assert frame_header(70_000, 0x2) == b"\x82\x7f" + (70_000).to_bytes(8, "big")
    assert text_frame(b"hi") == b"\x81\x02hi"


async def test_chat_websockets_go_direct_and_the_rest_to_hypercorn(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 1, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S):
            await cluster.leader(timeout_s=TIMEOUT_S)
            node = cluster.nodes[1]
            assert node.http_edge is not None and node.http_address is not None
            front = node.http_edge.front
            assert front is not None
            address = node.http_address
            async with open_websocket_url(url(address)) as ws:
                client = await ready(ws)
                assert (await client.call(type="subscribe", channel="room"))["type"] == "subscribed"
                for n in range(1, 4):
                    await client.call(type="publish", channel="room", data=f"m{n}")
                got = await client.messages(3, "room")
                assert [m["offset"] for m in got] == [1, 2, 3]
                await ws.ping(b"p")  # answered by trio-websocket, through the same writer
            assert (front.direct_connections, front.hypercorn_connections) == (1, 0)
            stream = await trio.open_tcp_stream(address.host, address.port)
            await stream.send_all(b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200") and b'"openapi"' in answer
            assert front.hypercorn_connections == 1
            # Another WebSocket path goes to hypercorn and is refused by the app as before.
            try:
                async with open_websocket_url(f"ws://{address.host}:{address.port}/v1/other") as other:
                    await other.get_message()
                raise AssertionError("a WebSocket on /v1/other was served")
            except ConnectionClosed as exc:
                assert exc.reason is not None and exc.reason.code == 1008
            except Exception as exc:  # noqa: BLE001 (refused during the handshake)
                assert "403" in str(exc) or "1008" in str(exc), exc
            assert (front.direct_connections, front.hypercorn_connections) == (1, 2)


# ---------------------------------------------------------------------------------- write order


async def test_a_frame_begun_is_finished_before_any_other_write() -> None:
    """A frame the socket took only part of is finished before trio-websocket's next write (a pong
    here) and before the next frame: the reader sees whole frames, in order."""
    server_sock, client_sock = trio.socket.socketpair()
    server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = DirectWebSocket(trio.SocketStream(server_sock))
    big = text_frame(json.dumps({"data": "x" * 500_000}).encode())
    pong, small = b"\x8a\x00", text_frame(b'{"offset":2}')
    received = bytearray()
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.drain)
            assert ws.ready()
            ws.write_now(big)
            assert not ws.ready()  # the socket took part of it: the rest is owed first

            async def then_pong_and_frame() -> None:
                await ws.send_bytes(pong)
                await ws.send_bytes(small)

            nursery.start_soon(then_pong_and_frame)
            want = len(big) + len(pong) + len(small)
            while len(received) < want:
                received += await client_sock.recv(65536)
                await trio.sleep(0)
            nursery.cancel_scope.cancel()
    assert bytes(received) == big + pong + small
