"""Issue 5's real-process proof: TTL expiry and LRU eviction agree on all three nodes after a
leader change.

Three ``trimaran node run`` processes with a small ``--kv-maxmemory-bytes`` (policy lru). Keys are
written with and without TTLs, enough of them to evict; some early keys are touched so LRU order
(not write order) decides which survive; then the leader is killed with SIGKILL, writes go on under
the new leader, and the killed node is restarted (it catches up from its own log and its peers).
Once every TTL has passed and all three report the same applied index, each node's own state is
read on its own endpoint (stale reads, never redirected) and compared: the same counters (keys,
bytes, expired and evicted totals, revision) and the same keys, values, revisions and remaining
TTLs. That only holds if expiry and eviction are decided by the log, not by each node's clock or
memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import trio

import trimaran
from tests.node.procs import ProcessCluster
from trimaran.client import Client
from trimaran.services.kv import entry_bytes

pytestmark = pytest.mark.slow

VALUE = b"v" * 200
#: Room for 49 keys of ``VALUE`` (461 bytes each, see entry_bytes); 111 are written.
MAXMEMORY_BYTES = 23_000
#: Keys used again after each write phase: LRU order, not write order, must keep them.
TOUCHED = ("a:001", "a:002", "a:004")
#: TTLs of the expiring keys: all well past before the comparison, some only after the kill.
SHORT_TTLS_MS = (300, 600, 900, 1_500, 2_500)
CALL_TIMEOUT_MS = 15_000


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[ProcessCluster]:
    extra = ("--kv-maxmemory-bytes", str(MAXMEMORY_BYTES), "--kv-eviction", "lru")
    procs = ProcessCluster(tmp_path, extra_args=extra)
    try:
        procs.start_all()
        yield procs
    finally:
        procs.close()


async def write_phase(c: Client, phase: str, count: int) -> None:
    """``count`` keys of 200 bytes; every third one with a short TTL, the rest without."""
    for i in range(count):
        ttl = SHORT_TTLS_MS[i % len(SHORT_TTLS_MS)] if i % 3 == 0 else None
        await c.kv.set(f"{phase}:{i:03d}", VALUE, ttl_ms=ttl)


async def settled_applied_index(cluster: ProcessCluster, timeout_s: float = 15.0) -> int:
    """The applied index once all nodes report the same one and it stays put for a moment."""
    last: tuple[int, ...] = ()
    with trio.fail_after(timeout_s):
        while True:
            statuses = [await cluster.status(i, timeout_s=1.0) for i in cluster.ids]
            applied = tuple(s["applied_index"] if s else -1 for s in statuses)
            if len(set(applied)) == 1 and applied[0] > 0 and applied == last:
                return applied[0]
            last = applied
            await trio.sleep(0.2)


async def node_view(c: Client, address: str) -> dict[str, Any]:
    """One node's own kv state: its stats and every live key (paged scan), read on that node."""
    stats = await c.node_read(address, "kv", ["stats"])
    items: list[Any] = []
    start_after: bytes | None = None
    for _ in range(100):  # bounded: a few hundred keys fit in one page
        page = await c.node_read(address, "kv", ["scan", b"", {"start_after": start_after, "limit": 1_000}])
        items += page["items"]
        start_after = page["next"]
        if start_after is None:
            break
    return {"stats": stats, "items": items}


async def views_at_one_index(c: Client, cluster: ProcessCluster) -> tuple[int, list[dict[str, Any]]]:
    """Every node's view, all taken at the same applied index (retried if the log moved meanwhile)."""
    for _ in range(20):
        index = await settled_applied_index(cluster)
        views = [await node_view(c, str(cluster.client[i])) for i in cluster.ids]
        if await settled_applied_index(cluster) == index:
            return index, views
    raise AssertionError("the applied index never stayed put long enough to compare the nodes")


async def test_ttl_and_eviction_agree_on_all_nodes_after_a_leader_change(cluster: ProcessCluster) -> None:
    async with trimaran.connect([str(a) for _, a in sorted(cluster.client.items())], timeout_ms=CALL_TIMEOUT_MS) as c:
        await write_phase(c, "a", 30)
        for key in TOUCHED:  # LRU, not write order: the overflow must evict keys written after these
            assert await c.kv.touch(key) is True
        await write_phase(c, "b", 40)
        for key in TOUCHED:
            assert await c.kv.touch(key) is True
        old_leader = c.leader_id
        assert old_leader is not None

        cluster.kill9(old_leader)
        await write_phase(c, "c", 40)  # under the new leader, which waits out the election
        assert c.leader_id != old_leader
        await c.kv.incr("counter", 7)
        cluster.start(old_leader)  # back from its own data; catches up from the new leader

        # Every short TTL has passed (log time moves without writes: idle leaders stamp entries).
        await trio.sleep(max(SHORT_TTLS_MS) / 1000)
        with trio.fail_after(15):
            while (await c.kv.stats())["next_expiry_ms"] is not None:
                await trio.sleep(0.1)

        index, views = await views_at_one_index(c, cluster)

    first = views[0]
    for node_id, view in zip(cluster.ids, views):
        assert view["stats"] == first["stats"], f"node {node_id} differs at applied index {index}\n{cluster.logs()}"
        assert view["items"] == first["items"], f"node {node_id} holds other keys at applied index {index}"
    stats = first["stats"]
    keys = {item[0] for item in first["items"]}
    assert stats["evicted_keys_total"] > 0 and stats["expired_keys_total"] > 0, stats
    assert stats["used_bytes"] <= MAXMEMORY_BYTES and stats["keys"] == len(keys)
    assert stats["used_bytes"] == sum(entry_bytes(item[0], item[1]) for item in first["items"])
    # The touched keys outlived untouched ones written after them (a:005 has no TTL: it was
    # evicted); nothing with a TTL is left.
    assert {k.encode() for k in TOUCHED} <= keys and b"a:005" not in keys
    assert all(item[3] is None for item in first["items"])
    assert b"counter" in keys and b"c:038" in keys
