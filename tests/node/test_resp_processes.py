"""The RESP port on real node processes: redis-py writing through a leader kill (reconnecting to
any node; every acknowledged write readable after), MULTI/EXEC and TTLs the same on every replica."""

from __future__ import annotations

import time
from pathlib import Path
import redis
import trio

from tests.node.procs import ProcessCluster

#: Writes of the kill test, and the write after which the leader is killed.
WRITES = 300
KILL_AFTER = 100
#: Bound on one write's retries over the nodes (each try is bounded by the socket timeout).
TRIES_MAX = 60


def clients(cluster: ProcessCluster, among: list[int]) -> list[redis.Redis]:
    return [redis.Redis(host=cluster.resp[i].host, port=cluster.resp[i].port, socket_timeout=5, socket_connect_timeout=2) for i in among]


async def test_redis_py_writes_through_a_leader_kill_and_replicas_agree(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, resp=True)
    try:
        cluster.start_all()
        leader, term = await cluster.leader(timeout_s=30)
        acknowledged: dict[str, str] = {}
        killed = trio.Event()
        reached_kill_point = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def writer() -> None:
            nodes = clients(cluster, cluster.ids)
            at = cluster.ids.index(leader)
            for i in range(WRITES):
                key, value = f"k{i}", f"v{i}"
                for _ in range(TRIES_MAX):
                    try:
                        nodes[at].set(key, value)
                        break
                    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                        at = (at + 1) % len(nodes)  # any node: a follower forwards to the leader
                        time.sleep(0.05)
                else:
                    raise AssertionError(f"write {i} not acknowledged within {TRIES_MAX} tries")
                acknowledged[key] = value
                if i == KILL_AFTER:
                    trio.from_thread.run_sync(reached_kill_point.set, trio_token=token)
                    trio.from_thread.run(killed.wait, trio_token=token)
            for r in nodes:
                r.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, writer)
            with trio.fail_after(60):
                await reached_kill_point.wait()
            cluster.kill9(leader)
            killed.set()
        survivors = [i for i in cluster.ids if i != leader]
        new_leader, _ = await cluster.leader(among=survivors, timeout_s=30, min_term=term + 1)
        assert len(acknowledged) == WRITES

        def check() -> None:
            nodes = clients(cluster, survivors)
            keys = sorted(acknowledged)
            for r in nodes:  # every acknowledged write, on each survivor (linearizable reads)
                found = [v.decode() if v is not None else None for v in r.mget(keys)]
                assert found == [acknowledged[k] for k in keys]
            # MULTI/EXEC: one entry, the same on both replicas.
            p = nodes[0].pipeline(transaction=True)
            p.set("tx:a", "1").incr("tx:n").set("tx:b", "2", ex=300).getset("k0", "after")
            assert p.execute() == [True, 1, True, b"v0"]
            for r in nodes:
                assert r.mget("tx:a", "tx:b", "tx:n", "k0") == [b"1", b"2", b"1", b"after"]
            # TTLs: the deadline is in the log (the writing entry's time + ttl), so replicas that
            # applied the same entries answer the same remaining time (a clock entry between two
            # reads moves both; ask again then).
            same = False
            for _ in range(20):
                ttls = [r.pttl("tx:b") for r in nodes]
                assert all(290_000 < t <= 300_000 for t in ttls), ttls
                if len(set(ttls)) == 1:
                    same = True
                    break
            assert same, ttls
            for r in nodes:
                r.close()

        await trio.to_thread.run_sync(check)
        assert new_leader in survivors
    finally:
        cluster.close()
