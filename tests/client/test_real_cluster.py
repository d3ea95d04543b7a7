"""The client (trio and blocking) and the client CLI against a real 3-node cluster in subprocesses.

Includes kill -9 of the leader under a write load: every acknowledged write must be readable after
the failover, and a counter incremented through the failover must count each increment once; and
the kv API (TTL, CAS, counters, scan) with a watch that follows a leader kill without losing or
repeating a change.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import trimaran
from tests.client.real_cluster import RealCluster
from trimaran import errors

pytestmark = pytest.mark.slow

#: Generous: includes the first election and a failover on a loaded 2-core machine.
TIMEOUT_MS = 20_000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RealCluster]:
    c = RealCluster(tmp_path)
    c.start_all()
    try:
        yield c
    finally:
        c.stop_all()


async def test_trio_client_keeps_every_acknowledged_write_through_a_leader_kill(cluster: RealCluster) -> None:
    writers, writes_before_kill, writes_after_kill = 8, 40, 40
    acknowledged: dict[str, str] = {}
    increments = 0
    killed = trio.Event()
    async with trimaran.connect(cluster.endpoints, timeout_ms=TIMEOUT_MS) as c:
        await c.set("warm", "up")  # waits out the first election
        old_leader = c.leader_id
        assert old_leader in cluster.processes

        async def writer(w: int) -> None:
            nonlocal increments
            for n in range(writes_before_kill + writes_after_kill):
                if n == writes_before_kill:
                    await killed.wait()
                key, value = f"w{w}-{n}", f"{w}:{n}"
                await c.set(key, value)
                acknowledged[key] = value
                await c.incr("counter")
                increments += 1

        async def killer() -> None:
            while len(acknowledged) < writers * writes_before_kill // 2:
                await trio.sleep(0.01)
            cluster.kill(old_leader, signal.SIGKILL)  # in the middle of the load
            killed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(killer)
            for w in range(writers):
                nursery.start_soon(writer, w)

        assert c.leader_id != old_leader
        for key, value in acknowledged.items():
            assert await c.get(key) == value.encode(), key
        # Retries through the failover kept their sequence numbers: no increment applied twice.
        assert await c.incr("counter", 0) == increments == writers * (writes_before_kill + writes_after_kill)


def test_blocking_client_and_cli_against_the_cluster(cluster: RealCluster) -> None:
    with trimaran.connect_sync(",".join(cluster.endpoints), timeout_ms=TIMEOUT_MS) as c:
        c.set("k", "v")
        assert c.get("k") == b"v"
        assert c.get("k", consistency="stale") in (b"v", None)  # any replica, maybe behind
        assert c.cas("k", "v", "w") is True
        assert c.cas("k", "v", "x") is False
        assert c.incr("n", 7) == 7
        assert c.delete("n") is True
        status = c.status()
        assert status["role"] == "leader" and status["leader_id"] == status["node_id"] == c.leader_id
        with pytest.raises(errors.InvalidArgument):
            c.incr("k")
        # The KV cache beside the register: same client, its own keys.
        rev = c.kv.set("k", "kv-value", ttl_ms=60_000)
        entry = c.kv.get("k")
        assert entry is not None and entry.value == b"kv-value" and entry.revision == rev
        assert 0 < (entry.ttl_remaining_ms or 0) <= 60_000
        assert c.get("k") == b"w"
        leader = c.leader_id

    cli = [sys.executable, "-m", "trimaran"]
    env_args = ["--endpoints", ",".join(cluster.endpoints)]
    out = subprocess.run([*cli, "kv", "get", "k", *env_args], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "kv-value\n"), out.stderr
    out = subprocess.run([*cli, "kv", "incr", "hits", "--by", "3", *env_args], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "3\n"), out.stderr
    out = subprocess.run([*cli, "kv", "scan", *env_args], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "hits\t3\nk\tkv-value\n"), out.stderr
    out = subprocess.run([*cli, "status", "--json", *env_args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    view = json.loads(out.stdout)
    assert view["leader_id"] == leader and view["voters"] == [1, 2, 3]
    assert [n["node_id"] for n in view["nodes"]] == [1, 2, 3] and all(n["up"] for n in view["nodes"])

    # A stopped follower shows as down; the others still answer.
    follower = next(i for i in cluster.processes if i != leader)
    cluster.kill(follower)
    status_cmd = [*cli, "status", "--json", "--timeout-ms", "1000", *env_args]
    out = subprocess.run(status_cmd, capture_output=True, text=True, timeout=60)
    nodes = {n["node_id"]: n for n in json.loads(out.stdout)["nodes"]}
    assert out.returncode == 0 and nodes[follower]["up"] is False
    assert all(nodes[i]["up"] for i in nodes if i != follower)


async def test_graceful_leader_stop_is_invisible_to_callers(cluster: RealCluster) -> None:
    """SIGTERM: the leader finishes what is in flight and hands over; callers only see answers."""
    async with trimaran.connect(cluster.endpoints, timeout_ms=TIMEOUT_MS) as c:
        await c.set("warm", "up")
        old_leader = c.leader_id
        assert old_leader is not None
        done = 0

        async def writer() -> None:
            nonlocal done
            for _ in range(60):
                await c.incr("counter")
                done += 1

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(writer)
            while done < 60:
                await trio.sleep(0.01)
            await trio.to_thread.run_sync(cluster.kill, old_leader, signal.SIGTERM)
        assert c.leader_id != old_leader
        assert await c.incr("counter", 0) == done == 240
    assert cluster.exit_codes.get(old_leader) == 0


async def test_kv_api_and_a_watch_through_a_leader_kill(cluster: RealCluster) -> None:
    async with trimaran.connect(cluster.endpoints, timeout_ms=TIMEOUT_MS) as c:
        first = await c.kv.set("cfg:a", "1")
        assert await c.kv.cas("cfg:a", first, "2") > first
        with pytest.raises(errors.ConditionFailed):
            await c.kv.cas("cfg:a", first, "3")
        assert await c.kv.incr("cfg:n", 5) == 5
        await c.kv.mset({"cfg:b": "x", "cfg:c": "y"}, ttl_ms=60_000)
        assert [i.key async for i in c.kv.scan("cfg:", page_size=2)] == [b"cfg:a", b"cfg:b", b"cfg:c", b"cfg:n"]
        await c.kv.set("cfg:short", "gone soon", ttl_ms=200)
        old_leader = c.leader_id
        assert old_leader is not None

        writes = 40
        seen: list[bytes] = []

        async def watcher() -> None:
            async for event in c.kv.watch("w", first, poll_ms_max=50):
                assert event.kind == "put"
                seen.append(event.value or b"")
                if len(seen) == writes:
                    return

        with trio.fail_after(60):  # a lost event fails the test rather than hanging it
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watcher)
                for i in range(writes):
                    if i == writes // 2:
                        await trio.to_thread.run_sync(cluster.kill, old_leader, signal.SIGKILL)
                    await c.kv.set("w", str(i))
        assert c.leader_id != old_leader
        assert seen == [str(i).encode() for i in range(writes)]  # none lost, none twice
        # Log time moved on under the new leader: the short TTL expired (idle leaders stamp time too).
        with trio.fail_after(10):
            while await c.kv.get("cfg:short") is not None:
                await trio.sleep(0.05)
        stats = await c.kv.stats()
        assert stats["expired_keys_total"] >= 1
