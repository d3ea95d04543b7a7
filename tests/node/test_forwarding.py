"""A follower's edges forward to the leader over kept-open connections (``node/forwarding.py``):
one per token, reused request after request, each request's answer to its caller; a token the
leader refuses is its typed refusal; a leader that goes away is a fallback, not a hang."""

from __future__ import annotations

from pathlib import Path

import trio

from tests.node.helpers import HOST, in_process_cluster
from tests.node.test_auth_edge import Signer
from tests.node.test_http_rest import call
from trimaran.node.config import Address

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
