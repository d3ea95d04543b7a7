"""The client (trio and blocking) and the client CLI against a real 3-node cluster in subprocesses.

Includes kill -9 of the leader under a write load: every acknowledged write must be readable after
the failover, and a counter incremented through the failover must count each increment once.
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
        leader = c.leader_id

    cli = [sys.executable, "-m", "trimaran"]
    env_args = ["--endpoints", ",".join(cluster.endpoints)]
    out = subprocess.run([*cli, "kv", "get", "k", *env_args], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout) == (0, "w\n"), out.stderr
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
