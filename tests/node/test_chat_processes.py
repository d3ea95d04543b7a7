"""Chat on real processes (issue 11): subscribers on all three nodes' WebSocket gateways, a
publisher, and kill -9 of the leader mid-stream. Every subscriber ends with every acknowledged
message exactly once, in offset order (resuming on another node when its own was the one
killed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from tests.node.procs import ProcessCluster
from trimaran.client import Client
from trimaran.client.chat import frame_objects
from trimaran.node.config import Address

pytestmark = pytest.mark.slow

WAIT_S = 60
TOTAL = 60


async def follow(cluster: ProcessCluster, first: int, channel: str, want: int, got: list[int]) -> None:
    """Subscribe through node ``first``'s gateway; on a broken connection go to the next node and
    resume after the last offset received (what the client library does, by hand here so each
    subscriber starts on a chosen node)."""
    order = [first] + [i for i in cluster.ids if i != first]
    attempt = 0
    while len(got) < want:
        node = order[attempt % len(order)]
        address: Address = cluster.http[node]
        try:
            async with open_websocket_url(f"ws://{address.host}:{address.port}/v1/ws") as ws:
                since = got[-1] if got else 0
                await ws.send_message(json.dumps({"id": 1, "type": "subscribe", "channel": channel, "since": since}))
                while len(got) < want:
                    for frame in frame_objects(await ws.get_message()):
                        if frame.get("type") == "error":
                            raise ConnectionClosed(None)  # not servable right now (no leader): elsewhere
                        if frame.get("type") == "message":
                            got.append(frame["offset"])
        except (ConnectionClosed, HandshakeError, OSError):
            attempt += 1
            await trio.sleep(0.2)


async def test_subscribers_on_every_node_get_every_message_once_through_a_leader_kill(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, 3, http=True)
    try:
        cluster.start_all()
        leader, _ = await cluster.leader(timeout_s=WAIT_S)
        endpoints = [str(cluster.client[i]) for i in cluster.ids]
        received: dict[int, list[int]] = {i: [] for i in cluster.ids}
        acknowledged: list[int] = []
        with trio.fail_after(WAIT_S * 2):
            async with Client(endpoints, timeout_ms=20_000) as publisher, trio.open_nursery() as nursery:
                for node in cluster.ids:
                    nursery.start_soon(follow, cluster, node, "live", TOTAL, received[node])
                for n in range(1, TOTAL + 1):
                    offset, _ = await publisher.chat.publish("live", f"m{n}")
                    assert offset is not None
                    acknowledged.append(offset)
                    if n == TOTAL // 3:
                        cluster.kill9(leader)  # mid-stream, under the publisher and one subscriber
        # Retried publishes (through the leader change) were applied once: offsets 1..TOTAL.
        assert acknowledged == list(range(1, TOTAL + 1))
        for node, offsets in received.items():
            assert offsets == list(range(1, TOTAL + 1)), (node, offsets)
    finally:
        cluster.close()
