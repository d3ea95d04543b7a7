"""The ``c.kv`` API (async and blocking) against the fake cluster, which runs the real KvService:
argument encoding, result types, typed errors, scan paging, and a watch that survives lost
answers and leader changes without losing or repeating an event."""

from __future__ import annotations

import itertools
from contextlib import aclosing
from typing import Any

import pytest
import trio

import trimaran
from tests.client.fake_server import HANG, FakeNode, cluster_in_thread, start_cluster
from trimaran import errors
from trimaran.client import KvEntry, KvEvent, KvItem
from trimaran.services.kv import KvService

FAST_POLL: dict[str, Any] = {"poll_ms_min": 1, "poll_ms_max": 5}


async def test_set_get_and_conditions(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    async with trimaran.connect(cluster.addresses()) as c:
        assert await c.kv.get("k") is None
        rev = await c.kv.set("k", "v1")
        assert await c.kv.get(b"k") == KvEntry(b"v1", rev, None)
        with pytest.raises(errors.ConditionFailed) as failed:
            await c.kv.set("k", "v2", if_absent=True)
        assert failed.value.details["revision"] == rev
        with pytest.raises(errors.ConditionFailed):
            await c.kv.set("k", "v2", if_revision=rev + 100)
        rev2 = await c.kv.set("k", "v2", if_revision=rev, if_value="v1")
        assert rev2 > rev
        # cas: expected is a value, a revision, or None (absent); a miss raises, nothing changes.
        rev3 = await c.kv.cas("k", "v2", "v3")
        with pytest.raises(errors.ConditionFailed):
            await c.kv.cas("k", rev2, "nope")
        rev4 = await c.kv.cas("k", rev3, b"v4")
        assert await c.kv.cas("fresh", None, "x") > rev4
        with pytest.raises(errors.ConditionFailed):
            await c.kv.cas("fresh", None, "y")
        assert (await c.kv.get("k", consistency="stale")) == KvEntry(b"v4", rev4, None)
        with pytest.raises(errors.ConditionFailed):
            await c.kv.delete("k", if_value="v3")
        assert await c.kv.delete("k", if_revision=rev4) is True
        assert await c.kv.delete("k") is False
    # Nothing above used the register service, and it is still there beside the kv one.
    assert {call.body["service"] for call in cluster.calls if call.op in ("command", "read")} == {"kv"}


async def test_counters_mset_mget_touch_expire_and_stats(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    async with trimaran.connect(cluster.addresses()) as c:
        assert await c.kv.incr("n") == 1
        assert await c.kv.incr("n", 41) == 42
        assert await c.kv.decr("n", 2) == 40
        assert (await c.kv.get("n")).value == b"40"  # type: ignore[union-attr]
        await c.kv.set("text", "abc")
        with pytest.raises(errors.InvalidArgument, match="not a decimal int64"):
            await c.kv.incr("text")
        rev = await c.kv.mset({"a": "1", b"b": b"2"})
        rev2 = await c.kv.mset([("c", "3"), ("d", "4", 5_000)], ttl_ms=60_000)
        found = await c.kv.mget(["a", "b", "c", "d", "missing"])
        assert found[:2] == [KvEntry(b"1", rev, None), KvEntry(b"2", rev, None)]
        assert found[2] == KvEntry(b"3", rev2, 60_000) and found[3] == KvEntry(b"4", rev2, 5_000)
        assert found[4] is None
        assert await c.kv.touch("a") is True and await c.kv.touch("zz") is False
        assert await c.kv.expire("a", 1_000) is True
        assert (await c.kv.get("a")).ttl_remaining_ms == 1_000  # type: ignore[union-attr]
        assert await c.kv.expire("a", None) is True and (await c.kv.get("a")).ttl_remaining_ms is None  # type: ignore[union-attr]
        stats = await c.kv.stats()
        assert stats["keys"] == 6 and stats["eviction_policy"] == "lru" and stats["revision"] == rev2


async def test_ttl_expires_in_log_time(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    async with trimaran.connect(cluster.addresses()) as c:
        await c.kv.set("short", "x", ttl_ms=100)
        await c.kv.set("long", "y", ttl_ms=10_000)
        cluster.now_ms += 50
        assert (await c.kv.get("short")).ttl_remaining_ms == 50  # type: ignore[union-attr]
        cluster.advance_time(60)
        assert await c.kv.get("short") is None
        assert (await c.kv.get("long")).value == b"y"  # type: ignore[union-attr]
        stats = await c.kv.stats()
        assert stats["expired_keys_total"] == 1 and stats["keys"] == 1


async def test_typed_service_errors_and_fail_fast_arguments(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, kv=KvService(maxmemory_bytes=2_000, eviction_policy="noeviction"))
    async with trimaran.connect(cluster.addresses()) as c:
        await c.kv.set("a", b"x" * 1_000)
        with pytest.raises(errors.OutOfMemory) as oom:
            await c.kv.set("b", b"x" * 1_000)
        assert oom.value.details["maxmemory_bytes"] == 2_000
        sent_before = len(cluster.calls)
        with pytest.raises(errors.TooLarge):
            await c.kv.set("k" * 5_000, "v")
        for bad in (
            lambda: c.kv.set("k", "v", ttl_ms=0),
            lambda: c.kv.set("k", "v", ttl_ms=1.5),  # type: ignore[arg-type]
            lambda: c.kv.set("k", 7),  # type: ignore[arg-type]
            lambda: c.kv.set("k", "v", if_revision=-1),
            lambda: c.kv.incr("k", 1 << 64),
            lambda: c.kv.mset({}),
            lambda: c.kv.cas("k", True, "v"),
            lambda: c.kv.get(""),
        ):
            with pytest.raises(errors.InvalidArgument):
                await bad()
        assert len(cluster.calls) == sent_before  # refused before anything was sent


async def test_scan_pages_in_key_order(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    async with trimaran.connect(cluster.addresses()) as c:
        await c.kv.mset({f"user:{i:02d}": str(i) for i in range(23)})
        await c.kv.set("other", "x")
        await c.kv.set("user:05", "dies", ttl_ms=10)
        cluster.advance_time(20)
        items = [item async for item in c.kv.scan("user:", page_size=4)]
        assert [i.key for i in items] == [b"user:%02d" % i for i in range(23) if i != 5]
        assert all(isinstance(i, KvItem) and i.value == str(int(i.key[5:])).encode() for i in items)
        limited = [i.key async for i in c.kv.scan("user:", page_size=4, limit=6, start_after="user:10")]
        assert limited == [b"user:%02d" % i for i in range(11, 17)]
        page = await c.kv.scan_page(b"", limit=3)
        assert [i.key for i in page.items] == [b"other", b"user:00", b"user:01"] and page.next == b"user:01"
        assert [i.key async for i in c.kv.scan("nothing-here")] == []
    pages = [call for call in cluster.calls if call.op == "read" and call.body["query"][0] == "scan"]
    assert len(pages) == 6 + 2 + 1 + 1  # 22 items by 4, then 4 + 2, one page, one empty


async def collect(events: Any, count: int, timeout_s: float = 10.0) -> list[KvEvent]:
    """The first ``count`` events of a watch (bounded: a lost event fails, never hangs)."""
    out: list[KvEvent] = []
    with trio.fail_after(timeout_s):
        async with aclosing(events) as stream:
            async for event in stream:
                out.append(event)
                if len(out) == count:
                    break
    return out


async def test_watch_replays_then_follows_a_key_and_a_prefix(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    async with trimaran.connect(cluster.addresses()) as c:
        r1 = await c.kv.set("job:1", "queued")
        await c.kv.set("other", "x")
        r2 = await c.kv.set("job:2", "queued", ttl_ms=100)

        async def later() -> None:
            await trio.sleep(0.05)
            await c.kv.set("job:1", "done")
            await c.kv.delete("job:1")
            cluster.advance_time(200)  # job:2 expires

        nursery.start_soon(later)
        events = await collect(c.kv.watch("job:", 0, prefix=True, **FAST_POLL), 5)
        assert [(e.key, e.kind, e.value, e.reason) for e in events] == [
            (b"job:1", "put", b"queued", None),
            (b"job:2", "put", b"queued", None),
            (b"job:1", "put", b"done", None),
            (b"job:1", "delete", None, "deleted"),
            (b"job:2", "delete", None, "expired"),
        ]
        assert events[0].revision == r1 and events[1].revision == r2
        assert [e.revision for e in events] == sorted(e.revision for e in events)
        # A single key, from now on: earlier changes are not replayed. (Written repeatedly: the
        # watch's "now" may be read before or after any one write.)
        await c.kv.set("job:3", "old")

        async def keep_writing() -> None:
            for i in range(1_000):
                await c.kv.set("job:3", f"new{i}")
                await trio.sleep(0.01)

        async with trio.open_nursery() as writers:
            writers.start_soon(keep_writing)
            only = await collect(c.kv.watch("job:3", **FAST_POLL), 2)
            writers.cancel_scope.cancel()
        assert [e.key for e in only] == [b"job:3"] * 2 and b"old" not in [e.value for e in only]
        assert only[1].value == b"new" + str(int(only[0].value[3:]) + 1).encode()  # type: ignore[index]


async def test_watch_resumes_through_timeouts_and_a_leader_change(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery)
    writes = 30
    stalled = False
    stalled_polls = 0

    async def stall_watch_reads(node: FakeNode, op: str, body: dict[str, Any]) -> Any:
        nonlocal stalled_polls
        if stalled and op == "read" and body["query"][0] == "watch":
            stalled_polls += 1
            return HANG
        return None

    for node in cluster.nodes.values():
        node.hooks.append(stall_watch_reads)

    async with trimaran.connect(cluster.addresses(), timeout_ms=150) as c:

        async def writer() -> None:
            nonlocal stalled
            for i in range(writes):
                await c.kv.set("k", str(i))
                if i == 10:
                    stalled = True  # polls get no answer: each times out, and the watch goes on
                    await trio.sleep(0.4)
                    stalled = False
                if i == 20:
                    cluster.leader_id = 2  # node 1 now answers not_leader: the client moves
                await trio.sleep(0.005)

        nursery.start_soon(writer)
        events = await collect(c.kv.watch("k", 0, **FAST_POLL), writes)
        assert c.leader_id == 2
    assert [e.value for e in events] == [str(i).encode() for i in range(writes)]
    assert stalled_polls >= 2


async def test_watch_raises_compacted_with_the_oldest_revision(nursery: trio.Nursery) -> None:
    cluster = await start_cluster(nursery, kv=KvService(watch_history_max=3))
    async with trimaran.connect(cluster.addresses()) as c:
        revs = [await c.kv.set("k", str(i)) for i in range(6)]
        with pytest.raises(errors.RevisionCompacted) as compacted:
            await collect(c.kv.watch("k", revs[0], **FAST_POLL), 1)
        oldest = compacted.value.details["oldest_revision"]
        assert oldest == revs[2]
        events = await collect(c.kv.watch("k", oldest, **FAST_POLL), 3)
        assert [e.revision for e in events] == revs[3:]


def test_blocking_kv_has_the_same_api() -> None:
    with cluster_in_thread() as cluster, trimaran.connect_sync(",".join(cluster.addresses())) as c:
        rev = c.kv.set("k", "v", ttl_ms=5_000)
        assert c.kv.get("k") == KvEntry(b"v", rev, 5_000)
        assert c.kv.cas("k", "v", "w") > rev
        with pytest.raises(errors.ConditionFailed):
            c.kv.set("k", "x", if_absent=True)
        assert c.kv.incr("n", 5) == 5 and c.kv.decr("n") == 4
        assert c.kv.mset({"p:1": "a", "p:2": "b", "p:3": "c"}) > rev
        assert [e.value if e else None for e in c.kv.mget(["p:1", "zz"])] == [b"a", None]
        assert [i.key for i in c.kv.scan("p:", page_size=2)] == [b"p:1", b"p:2", b"p:3"]
        assert c.kv.touch("p:1") and c.kv.expire("p:1", 10) and not c.kv.delete("zz")
        assert c.kv.stats()["keys"] == 5
        events = list(itertools.islice(c.kv.watch("p:", 0, prefix=True, **FAST_POLL), 3))
        assert [(e.key, e.kind) for e in events] == [(b"p:1", "put"), (b"p:2", "put"), (b"p:3", "put")]
        assert c.kv.watch_page("p:", 0, prefix=True).next >= events[-1].revision
        assert c.node_read(cluster.nodes[3].address, "kv", ["get", b"p:2"])[0] == b"b"
        with pytest.raises(errors.TooLarge):
            c.kv.set("k" * 5_000, "v")
