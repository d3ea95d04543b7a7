"""The chat WebSocket gateway (/v1/ws) on an in-process cluster: subscribe on one node, publish on
another, replay from history and resume by (offset, epoch) without gap or duplicate, presence,
ephemeral messages, scopes, and hostile frames closed with the documented codes."""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from tests.node.helpers import HOST, in_process_cluster
from trimaran.client.chat import frame_objects
from trimaran.node.config import Address
from trimaran.node.node import default_services
from trimaran.services.chat import ChatService
from trimaran.protocols import tokens
from trimaran.protocols.tokens import TrustedKey

TIMEOUT_S = 20


class Ws:
    """A JSON client over one WebSocket: requests by id, pushes kept in order."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.pushes: list[dict[str, Any]] = []
        #: Objects of the last frame not taken yet (a frame carries one or more).
        self.unread: deque[dict[str, Any]] = deque()
        #: How many objects each frame carried.
        self.frame_sizes: list[int] = []

    async def frame(self) -> dict[str, Any]:
        """The next JSON object the gateway sent."""
        while not self.unread:
            objects = frame_objects(await self.ws.get_message())
            self.frame_sizes.append(len(objects))
            self.unread.extend(objects)
        return self.unread.popleft()

    async def call(self, **frame: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_message(json.dumps({"id": self.next_id, **frame}))
        while True:
            answer = await self.frame()
            if answer.get("id") == self.next_id:
                return answer
            self.pushes.append(answer)

    async def messages(self, count: int, channel: str) -> list[dict[str, Any]]:
        """The next ``count`` message pushes of ``channel`` (pushes seen during calls first)."""
        got = [p for p in self.pushes if p["type"] == "message" and p["channel"] == channel]
        self.pushes = [p for p in self.pushes if not (p["type"] == "message" and p["channel"] == channel)]
        while len(got) < count:
            frame = await self.frame()
            if frame["type"] == "message" and frame["channel"] == channel:
                got.append(frame)
            else:
                self.pushes.append(frame)
        return got


def url(address: Address) -> str:
    return f"ws://{address.host}:{address.port}/v1/ws"


async def ready(ws: WebSocketConnection) -> Ws:
    client = Ws(ws)
    first = await client.frame()
    assert first["type"] == "ready", first
    return client


async def test_subscribers_on_every_node_get_every_message_once_in_order_and_resume(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            follower = next(i for i in cluster.nodes if i != leader)
            addresses = {i: cluster.nodes[i].http_address for i in cluster.nodes}
            async with open_websocket_url(url(addresses[follower])) as pub_ws:
                pub = await ready(pub_ws)
                # History first: two messages before anyone subscribes (published through a follower).
                for n in (1, 2):
                    answer = await pub.call(type="publish", channel="room.1", data=f"m{n}")
                    assert answer["type"] == "published" and answer["offset"] == n, answer
                epoch = answer["epoch"]
                async with open_websocket_url(url(addresses[1])) as a, open_websocket_url(
                    url(addresses[2])
                ) as b, open_websocket_url(url(addresses[3])) as c:
                    subs = [await ready(ws) for ws in (a, b, c)]
                    for sub in subs:
                        answer = await sub.call(type="subscribe", channel="room.1", since=0)
                        assert answer["type"] == "subscribed" and answer["recovered"] is True and answer["epoch"] == epoch
                    # Live only (no since) on a second channel: nothing before, everything after.
                    await pub.call(type="publish", channel="room.live", data="before")
                    assert (await subs[0].call(type="subscribe", channel="room.live"))["type"] == "subscribed"
                    for n in range(3, 13):
                        await pub.call(type="publish", channel="room.1", data=f"m{n}")
                    await pub.call(type="publish", channel="room.live", data="after")
                    for sub in subs:
                        got = await sub.messages(12, "room.1")
                        assert [m["offset"] for m in got] == list(range(1, 13))
                        assert [m["data"] for m in got] == [f"m{n}" for n in range(1, 13)]
                        assert all(m["epoch"] == epoch for m in got)
                    assert [m["data"] for m in await subs[0].messages(1, "room.live")] == ["after"]
                # Resume on another node from offset 7: 8..14, with 13 and 14 published meanwhile.
                for n in (13, 14):
                    await pub.call(type="publish", channel="room.1", data=f"m{n}")
                async with open_websocket_url(url(addresses[leader])) as again_ws:
                    again = await ready(again_ws)
                    answer = await again.call(type="subscribe", channel="room.1", since=7, epoch=epoch)
                    assert answer["recovered"] is True
                    got = await again.messages(7, "room.1")
                    assert [m["offset"] for m in got] == list(range(8, 15))
                    # The replay was queued at once, so it travelled in one frame (newline-delimited).
                    assert max(again.frame_sizes) >= 7, again.frame_sizes
                    # Another epoch than the channel's: told it did not recover.
                    answer = await again.call(type="subscribe", channel="room.live", since=1, epoch="not-its-epoch")
                    assert answer["recovered"] is False
                    history = await again.call(type="history", channel="room.1", since=12)
                    assert [m["offset"] for m in history["messages"]] == [13, 14]


async def test_presence_joins_leaves_and_ephemeral_messages(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            await cluster.leader(timeout_s=TIMEOUT_S)
            addresses = [cluster.nodes[i].http_address for i in (1, 2)]
            async with open_websocket_url(url(addresses[0])) as w1, open_websocket_url(url(addresses[1])) as w2:
                alice, bob = await ready(w1), await ready(w2)
                await alice.call(type="subscribe", channel="room", since=0)
                joined = await bob.call(type="join", channel="room", info="bob")
                assert joined["type"] == "joined"
                presence = await alice.call(type="presence", channel="room")
                assert [m["info"] for m in presence["members"]] == ["bob"]
                await bob.call(type="publish", channel="room", data="bob is typing", ephemeral=True)
                seen: list[dict[str, Any]] = list(alice.pushes)
                while not any(p["type"] == "ephemeral" for p in seen):
                    seen.append(await alice.frame())
                kinds = [p["type"] for p in seen]
                assert kinds.index("join") < kinds.index("ephemeral")
                # Ephemeral messages take no offset and stay out of history.
                assert (await alice.call(type="history", channel="room"))["messages"] == []
                await bob.call(type="leave", channel="room")
                while not any(p["type"] == "leave" for p in seen):
                    seen.append(await alice.frame())
                assert (await alice.call(type="presence", channel="room"))["members"] == []


async def test_tokens_scopes_and_hostile_frames(tmp_path: Path) -> None:
    private = tokens.new_private_key()
    public = tokens.public_key_of(private)
    kid = tokens.key_id(public)

    def token(scopes: list[str], jti: str) -> str:
        now_ms = int(time.time() * 1000)
        return tokens.sign(private, kid=kid, sub="u", scopes=scopes, audience="trimaran", now_ms=now_ms, ttl_ms=600_000, jti=jti)

    overrides = dict(http_listen=Address(HOST, 0), auth_keys=(TrustedKey(kid, public),))
    async with in_process_cluster(tmp_path, 3, **overrides) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            address = cluster.nodes[leader].http_address
            assert address is not None

            async def close_code(first: str | bytes | None) -> int:
                async with open_websocket_url(url(address)) as ws:
                    if first is not None:
                        await ws.send_message(first)
                    with pytest.raises(ConnectionClosed) as closed:
                        while True:
                            await ws.get_message()
                    assert closed.value.reason is not None
                    return int(closed.value.reason.code)

            assert await close_code(json.dumps({"type": "subscribe", "channel": "x"})) == 4001  # no auth frame
            assert await close_code(json.dumps({"type": "auth", "token": "v4.public.bad"})) == 4001
            reader = token(["chat:subscribe:room.*"], "reader")
            async with open_websocket_url(url(address)) as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": reader}))
                client = await ready(ws)
                assert (await client.call(type="subscribe", channel="room.1", since=0))["type"] == "subscribed"
                denied = await client.call(type="publish", channel="room.1", data="x")
                assert denied["type"] == "error" and denied["error"]["code"] == "permission_denied"
                assert denied["error"]["details"]["scope"] == "chat:publish:room.1"
                other = await client.call(type="subscribe", channel="secret", since=0)
                assert other["type"] == "error" and other["error"]["code"] == "permission_denied"
                bad = await client.call(type="subscribe", channel="room.2", since=-1)
                assert bad["type"] == "error" and bad["error"]["code"] == "invalid_argument"
                unknown = await client.call(type="nonsense", channel="room.1")
                assert unknown["error"]["code"] == "invalid_argument"
                await ws.send_message(b"\x00binary")
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
                assert closed.value.reason is not None and closed.value.reason.code == 4002
            # Not JSON at all, after a good auth frame.
            async with open_websocket_url(url(address)) as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": reader}))
                await ready(ws)
                await ws.send_message("{not json")
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
                assert closed.value.reason is not None and closed.value.reason.code == 4002
            # A revocation closes a live subscriber with 4001.
            admin = token(["admin:*"], "admin")
            async with open_websocket_url(url(address)) as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": reader}))
                await ready(ws)
                edge = cluster.nodes[leader].http_edge
                assert edge is not None
                await edge.command("auth", ["revoke", "reader", int(time.time() * 1000) + 600_000], 0, admin)
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
                assert closed.value.reason is not None and closed.value.reason.code == 4001
            assert cluster.nodes[leader].status()["role"] == "leader"


async def test_subscribing_while_messages_flow_gives_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    """Subscriptions start (with replay) while a publisher runs, so the history read and the live
    events overlap: each subscriber must still see offsets 1..N exactly once, in order."""
    total = 120
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S * 3):
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            addresses = [cluster.nodes[i].http_address for i in (1, 2, 3)]
            leader_address = cluster.nodes[leader].http_address
            assert leader_address is not None
            results: list[list[int]] = []

            async def subscriber(address: Address, start_after: int) -> None:
                async with open_websocket_url(url(address)) as ws:
                    client = await ready(ws)
                    await trio.sleep(start_after / 1000)
                    await client.call(type="subscribe", channel="flow", since=0)
                    got = await client.messages(total, "flow")
                    results.append([m["offset"] for m in got])

            async def publisher() -> None:
                async with open_websocket_url(url(leader_address)) as ws:
                    client = await ready(ws)
                    for n in range(total):
                        await client.call(type="publish", channel="flow", data=str(n))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publisher)
                for i, delay_ms in enumerate((5, 20, 40, 80, 120, 200)):
                    nursery.start_soon(subscriber, addresses[i % 3], delay_ms)
            assert len(results) == 6
            for offsets in results:
                assert offsets == list(range(1, total + 1))


async def test_a_slow_subscriber_is_cut_off_and_resumes_with_nothing_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trimaran.node.http import chat_gateway

    monkeypatch.setattr(chat_gateway, "WS_QUEUE_FRAMES_MAX", 50)  # reached long before the real cap
    total, size = 200, 32 * 1024

    def services() -> list[Any]:
        # A history that keeps all 200 messages of 32 KiB (the default keeps 1 MiB a channel).
        services = default_services()
        return [ChatService(history_bytes_max=16 << 20) if isinstance(s, ChatService) else s for s in services]

    async with in_process_cluster(tmp_path, 3, services, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S * 3):
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            address = cluster.nodes[leader].http_address
            edge = cluster.nodes[leader].http_edge
            hub = cluster.nodes[leader].chat_hub
            assert address is not None and edge is not None and hub is not None
            got: list[int] = []
            async with open_websocket_url(url(address), max_message_size=1 << 20) as ws:
                slow = await ready(ws)
                await slow.call(type="subscribe", channel="bulk", since=0)
                # It reads nothing while 200 messages of 32 KiB go by: the socket fills, then its
                # queue, and the node cuts it off (4008) rather than hold more for it.
                for n in range(total):
                    await edge.command("chat", ["publish", "bulk", bytes([n % 256]) * size], size)
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        frame = await slow.frame()
                        if frame["type"] == "message":
                            got.append(frame["offset"])
                assert closed.value.reason is not None and closed.value.reason.code == 4008
            assert hub.slow_closed == 1 and 0 < len(got) < total
            # It resumes from the last offset it has: the rest, once each.
            async with open_websocket_url(url(address), max_message_size=1 << 20) as ws:
                again = await ready(ws)
                answer = await again.call(type="subscribe", channel="bulk", since=got[-1])
                assert answer["recovered"] is True
                rest = await again.messages(total - len(got), "bulk")
            assert got + [m["offset"] for m in rest] == list(range(1, total + 1))
            assert cluster.nodes[leader].status()["role"] == "leader"
