"""``c.chat`` against an in-process cluster: publish (exactly-once through the session), history,
presence, and a subscription that survives the crash of the node it is attached to, resuming with
no gap and no duplicate."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.node.helpers import HOST, in_process_cluster
from trimaran.client import Client
from trimaran.errors import InvalidArgument
from trimaran.node.config import Address

TIMEOUT_S = 30


async def test_publish_history_presence_and_a_subscription_through_a_crash(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            await cluster.leader(timeout_s=TIMEOUT_S)
            endpoints = [str(cluster.client_address(i)) for i in (1, 2, 3)]
            async with Client(endpoints, timeout_ms=10_000) as c:
                offset, epoch = await c.chat.publish("room", "one")
                assert offset == 1 and epoch
                assert (await c.chat.publish("room", b"\x00two"))[0] == 2
                page = await c.chat.history("room", since=0)
                assert [(m.offset, m.data) for m in page.messages] == [(1, b"one"), (2, b"\x00two")]
                assert page.recovered and page.epoch == epoch and page.next is None
                assert await c.chat.presence("room") == []
                with pytest.raises(InvalidArgument):
                    await c.chat.publish("bad name", "x")

                got: list[int] = []
                total = 40

                async def consume() -> None:
                    async with Client(endpoints, timeout_ms=10_000) as sub_client:
                        async with sub_client.chat.subscribe("room", since=0) as events:
                            async for event in events:
                                if event.kind == "message":
                                    assert event.offset is not None
                                    got.append(event.offset)
                                    if len(got) == total:
                                        return

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(consume)
                    for n in range(3, 21):
                        await c.chat.publish("room", f"m{n}")
                    await cluster.wait_for(lambda: len(got) >= 20, what="the first 20 delivered")
                    # Crash the node the subscriber's gateway is most likely on (the leader: the
                    # client connects there), keep publishing: it resumes elsewhere.
                    leader = await cluster.leader(timeout_s=TIMEOUT_S)
                    cluster.crash(leader)
                    for n in range(21, total + 1):
                        await c.chat.publish("room", f"m{n}")
                assert got == list(range(1, total + 1))


async def test_a_refusal_retrying_cannot_cure_is_raised_from_the_iteration(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S):
            await cluster.leader(timeout_s=TIMEOUT_S)
            async with Client([str(cluster.client_address(1))], timeout_ms=10_000) as c:
                with pytest.raises(InvalidArgument):
                    async with c.chat.subscribe("bad name", since=0) as events:
                        async for _ in events:
                            pass
