"""A follower's edges forward to the leader over kept-open connections (``node/forwarding.py``):
one per token, reused request after request, each request's answer to its caller; a token the
leader refuses is its typed refusal; a leader that goes away is a fallback, not a hang."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from tests.node.helpers import HOST, in_process_cluster
from tests.node.test_auth_edge import Signer
from tests.node.test_fast_path import InlineWriter, acks, append_from_leader, make_driver
from tests.node.test_http_rest import call
from trimaran.node.config import Address
from trimaran.node.forwarding import LeaderLinks
from trimaran.node.writer import WriteResult

TIMEOUT_S = 20


async def test_a_followers_forwarded_writes_share_one_connection_per_token(tmp_path: Path) -> None:
    admin = Signer("admin-key")
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0), auth_keys=(admin.trusted,)) as cluster:
        with trio.fail_after(TIMEOUT_S):
            leader = await cluster.leader()
            follower = next(n for n in (1, 2, 3) if n != leader)
            node = cluster.nodes[follower]
            http = node.http_address
            assert http is not None and node.http_edge is not None and node.http_edge.links is not None
            links = node.http_edge.links
            alice, bob = admin.token(["kv:*"]), admin.token(["kv:*"], sub="bob")
            for i in range(10):  # sequentially and concurrently, two tokens
                assert (await call(http, "PUT", f"/v1/kv/a{i}", f"{i}".encode(), token=alice)).status == 200
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(call, http, "PUT", f"/v1/kv/b{i}", f"{i}".encode(), bob)
            assert links.opened == 2, f"one connection per token, kept open: {links.opened} opened"
            for i in range(10):
                got = await call(cluster.nodes[leader].http_address, "GET", f"/v1/kv/b{i}", token=alice)  # type: ignore[arg-type]
                assert got.status == 200 and f"{i}".encode() in got.body
            # A token the leader refuses (signed by a key nobody trusts): its typed refusal, at the
            # follower's edge already (the edge checks it before forwarding).
            stranger = Signer("stranger").token(["kv:*"])
            assert (await call(http, "PUT", "/v1/kv/x", b"1", token=stranger)).status == 401
            # The leader goes away: the follower's link breaks, and writes go on once a new leader
            # is elected (the edge's fallback asks its own node again, then the new leader).
            cluster.crash(leader)
            with trio.fail_after(TIMEOUT_S):
                while True:
                    answer = await call(http, "PUT", "/v1/kv/after", b"1", token=alice)
                    if answer.status == 200:
                        break
                    assert answer.status in (503, 504), answer.body
                    await trio.sleep(0.2)


async def test_a_follower_relaying_requests_to_the_leader_writes_off_its_loop(tmp_path: Path) -> None:
    """While its edges wait for the leader's answers, a follower hands appends to its writer
    thread: an inline fsync would hold every relayed answer behind it. Idle again: inline."""
    relaying = [True]
    writer = InlineWriter()
    driver, sent = make_driver(tmp_path, writer)
    driver.relaying = lambda: relaying[0]
    await driver.deliver_peer(append_from_leader(1))
    driver._round()
    assert writer.inline == [] and [seq for seq, _ in writer.submitted] == [1]
    driver.on_write_result(WriteResult(1))
    driver._round()
    assert acks(sent) == [1]
    relaying[0] = False
    await driver.deliver_peer(append_from_leader(2))
    driver._round()
    assert len(writer.inline) == 1 and acks(sent) == [1, 2]


async def test_leader_links_are_busy_exactly_while_a_request_waits(tmp_path: Path) -> None:
    """``busy`` (what a follower's driver asks, wired by the node) is true while a relayed request
    waits for its answer (here a leader that never answers), and false once it ended."""
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        node = cluster.nodes[next(n for n in (1, 2, 3) if n != leader)]
        assert node.http_edge is not None and node.driver is not None
        assert node.driver.relaying == node.http_edge.links.busy  # type: ignore[union-attr]
    links = LeaderLinks("c")
    [silent] = await trio.open_tcp_listeners(0, host=HOST)
    async with silent, trio.open_nursery() as nursery:
        await nursery.start(links.run)
        address = Address(HOST, silent.socket.getsockname()[1])
        with trio.move_on_after(0.5):
            nursery.start_soon(links.request_many, address, [("status", {}), ("status", {})], None)
            await trio.testing.wait_all_tasks_blocked()
            assert links.busy() and links.in_flight == 2
            nursery.cancel_scope.cancel()
    assert not links.busy() and links.in_flight == 0
