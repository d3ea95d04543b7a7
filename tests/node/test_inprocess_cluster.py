"""Three runtimes in one trio process on loopback: election, commit, redirects, failover, restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.node.helpers import RawClient, in_process_cluster
from trimaran import errors
from trimaran.errors import NotLeader
from trimaran.services.register import RegisterService

FAST = {"tick_ms": 10}


async def test_three_nodes_elect_one_leader_and_commit(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        leader = await cluster.leader()
        client = await RawClient.connect(cluster.client_address(leader), "trimaran")
        assert client.welcome["node_id"] == leader and client.welcome["leader_id"] == leader
        await client.register()
        for i in range(20):
            await client.set(b"k%d" % i, b"v%d" % i)
        assert await client.get(b"k19") == b"v19"
        status = cluster.status(leader)
        # Every write was acknowledged only after a majority persisted it (§5.3): the leader's
        # progress shows both followers matched, give or take the last round in flight.
        assert status["commit_index"] >= 21 and status["applied_index"] == status["commit_index"]
        assert sorted(p["node_id"] for p in status["progress"]) == [n for n in (1, 2, 3) if n != leader]
        await cluster.wait_for(
            lambda: all(cluster.status(n)["applied_index"] >= status["commit_index"] for n in (1, 2, 3)),
            what="followers applied everything",
        )
        await client.aclose()


async def test_follower_answers_not_leader_with_the_leaders_address(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)
        await cluster.wait_for(lambda: cluster.status(follower)["leader_id"] == leader, what="follower knows the leader")
        client = await RawClient.connect(cluster.client_address(follower))
        assert client.welcome["leader_address"] == str(cluster.client_address(leader))
        with pytest.raises(NotLeader) as caught:
            await client.register()
        assert caught.value.leader_hint == leader
        assert caught.value.details["leader_address"] == str(cluster.client_address(leader))
        await client.aclose()


async def test_follower_serves_linearizable_and_stale_reads(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        leader = await cluster.leader()
        writer = await RawClient.connect(cluster.client_address(leader))
        await writer.register()
        await writer.set(b"x", b"1")
        follower = next(n for n in (1, 2, 3) if n != leader)
        reader = await RawClient.connect(cluster.client_address(follower))
        # Thesis §6.4: the follower asks the leader for a read index, waits to apply it, answers.
        assert await reader.get(b"x", "linearizable") == b"1"
        await writer.set(b"x", b"2")
        assert await reader.get(b"x", "linearizable") == b"2"
        assert await reader.get(b"x", "stale") in (b"1", b"2")
        await writer.aclose()
        await reader.aclose()


async def test_leader_crash_elects_a_new_leader_and_keeps_acknowledged_writes(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        old = await cluster.leader()
        client = await RawClient.connect(cluster.client_address(old))
        await client.register()
        for i in range(10):
            await client.set(b"a%d" % i, b"%d" % i)
        await client.aclose()
        cluster.crash(old)
        new = await cluster.leader(timeout_s=5)
        assert new != old
        client = await RawClient.connect(cluster.client_address(new))
        await client.register()
        for i in range(10):
            assert await client.get(b"a%d" % i) == b"%d" % i  # §5.4 Leader Completeness
        await client.set(b"after", b"crash")
        # The crashed node comes back from its LMDB data and catches up.
        await cluster.start(old)
        await cluster.wait_for(
            lambda: cluster.status(old)["applied_index"] >= cluster.status(new)["commit_index"],
            what="restarted node caught up",
        )
        stale = await RawClient.connect(cluster.client_address(old))
        assert await stale.get(b"after", "stale") == b"crash"
        await client.aclose()
        await stale.aclose()


async def test_snapshot_install_brings_back_a_node_that_missed_compacted_entries(tmp_path: Path) -> None:
    overrides = dict(FAST, snapshot_interval_entries=20, snapshot_keep_entries=5)
    async with in_process_cluster(tmp_path, **overrides) as cluster:
        leader = await cluster.leader()
        lagging = next(n for n in (1, 2, 3) if n != leader)
        cluster.crash(lagging)
        client = await RawClient.connect(cluster.client_address(leader))
        await client.register()
        for i in range(80):
            await client.set(b"s%d" % i, b"%d" % i)
        await cluster.wait_for(lambda: cluster.status(leader)["snapshot_index"] > 30, what="leader snapshot")
        await cluster.start(lagging)
        target = cluster.status(leader)["commit_index"]
        await cluster.wait_for(lambda: cluster.status(lagging)["applied_index"] >= target, what="snapshot install")
        assert cluster.status(lagging)["snapshot_index"] > 0  # it came back through a snapshot (§7)
        reader = await RawClient.connect(cluster.client_address(lagging))
        for i in (0, 41, 79):
            assert await reader.get(b"s%d" % i, "stale") == b"%d" % i
        await client.aclose()
        await reader.aclose()


async def test_graceful_stop_of_the_leader_hands_leadership_over(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        leader = await cluster.leader()
        node = cluster.nodes[leader]
        node.request_stop()
        # Thesis §3.10: the leaving leader transfers leadership instead of letting it time out.
        with trio.fail_after(5):
            others = [n for n in (1, 2, 3) if n != leader]
            while not any(cluster.status(n)["role"] == "leader" for n in others):
                await trio.sleep(0.01)


class AlarmService:
    """A service with one deadline, to see the runtime drive log time on an idle leader."""

    name = "alarm"

    def __init__(self, deadline_ms: int) -> None:
        self.deadline_ms: int | None = deadline_ms
        self.fired_at_ms: int | None = None

    def on_time(self, ctx: Any) -> None:
        if self.deadline_ms is not None and ctx.timestamp_ms >= self.deadline_ms:
            self.fired_at_ms, self.deadline_ms = ctx.timestamp_ms, None

    def next_deadline_ms(self) -> int | None:
        return self.deadline_ms

    def apply(self, command: Any, ctx: Any) -> Any:
        return None

    def query(self, query: Any, ctx: Any) -> Any:
        return self.fired_at_ms

    def snapshot(self) -> Any:
        return [self.deadline_ms, self.fired_at_ms]

    def restore(self, data: Any) -> None:
        self.deadline_ms, self.fired_at_ms = data


async def test_an_idle_leader_moves_log_time_past_a_service_deadline(tmp_path: Path) -> None:
    deadline_ms = int(time.time() * 1000) + 300
    services = lambda: [RegisterService(), AlarmService(deadline_ms)]  # noqa: E731
    async with in_process_cluster(tmp_path, make_services=services, **FAST) as cluster:
        leader = await cluster.leader()
        client = await RawClient.connect(cluster.client_address(leader))
        # No client writes at all: only the leader's timestamp-only entry can fire the alarm, on
        # every replica, at the same log position.
        with trio.fail_after(5):
            while (fired := await client.call("read", {"service": "alarm", "query": None})) is None:
                await trio.sleep(0.05)
        assert fired >= deadline_ms
        await cluster.wait_for(
            lambda: all(cluster.status(n)["applied_index"] == cluster.status(leader)["commit_index"] for n in (1, 2, 3)),
            what="followers applied the clock entry",
        )
        for n in (1, 2, 3):
            peer = await RawClient.connect(cluster.client_address(n))
            assert await peer.call("read", {"service": "alarm", "query": None, "consistency": "stale"}) == fired
            await peer.aclose()
        await client.aclose()


async def test_after_a_pause_a_leader_does_not_serve_from_its_old_lease(tmp_path: Path) -> None:
    # Thesis §6.4.1: a lease is only as good as the clock that measures it. A process paused
    # (SIGSTOP, a long GC) past its lease must count the paused time before serving anything, so the
    # runtime delivers the missed ticks before any request of the same round.
    async with in_process_cluster(tmp_path, lease_reads=True, **FAST) as cluster:
        leader = await cluster.leader()
        client = await RawClient.connect(cluster.client_address(leader))
        await client.register()
        await client.set(b"x", b"1")
        assert await client.get(b"x", "lease") == b"1"  # served from the lease while healthy
        driver = cluster.nodes[leader].driver
        assert driver is not None
        # The pause: ten seconds of ticks become due at once, and the read is in the same round.
        driver._next_tick_at -= 10.0
        request_id = await client.send_request("read", {"service": "register", "query": ["get", b"x"], "consistency": "lease"})
        answer = await client.read_obj()
        assert answer[0] == request_id
        assert answer[1] is False and answer[2]["code"] in ("not_leader", "unavailable"), answer
        await client.aclose()


async def test_transfer_and_membership_ops(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        leader = await cluster.leader()
        target = next(n for n in (1, 2, 3) if n != leader)
        client = await RawClient.connect(cluster.client_address(leader))
        assert await client.call("transfer", {"node_id": target}) is None
        await client.aclose()
        # Thesis §3.10: the target catches up, gets TimeoutNow, and wins the next term at once.
        await cluster.wait_for(lambda: cluster.status(target)["role"] == "leader", what="transfer done")
        client = await RawClient.connect(cluster.client_address(target))
        removed = next(n for n in (1, 2, 3) if n != target)
        # Thesis §4.1: one server at a time; the answer comes once the change is applied.
        assert await client.call("membership", {"kind": "remove", "node_id": removed}) == {
            "voters": sorted(n for n in (1, 2, 3) if n != removed),
            "learners": [],
        }
        assert await client.call("membership", {"kind": "add_learner", "node_id": removed}) == {
            "voters": sorted(n for n in (1, 2, 3) if n != removed),
            "learners": [removed],
        }
        status = await client.call("status", {})
        assert {m["node_id"]: m["role"] for m in status["members"]}[removed] == "learner"
        await client.aclose()


async def test_a_port_taken_before_the_nodes_listen_gets_the_cluster_new_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ports are picked before the nodes listen; one taken in between (CI met it once) must
    not fail a test: the cluster starts again on new ports."""
    import socket

    from tests.node import helpers

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real_free_ports = helpers.free_ports
    first = [True]

    def picks(count: int) -> list[int]:
        ports = real_free_ports(count)
        if first[0]:  # the first cluster's node 1 gets the taken port for its client port
            first[0] = False
            ports[0] = taken.getsockname()[1]
        return ports

    monkeypatch.setattr(helpers, "free_ports", picks)
    try:
        async with helpers.in_process_cluster(tmp_path, tick_ms=10) as cluster:
            assert not first[0], "the taken port was handed to the first attempt"
            assert cluster.configs[0].listen.port != taken.getsockname()[1]
            await cluster.leader()
    finally:
        taken.close()


async def test_membership_refusals_each_give_their_reason(tmp_path: Path) -> None:
    """Issue 13: the changes that would lose quorum or availability are refused with a reason:
    promoting a learner that has not caught up, a change while another is pending, removing the
    leader or a voter of a 2-voter cluster (these two pass with force)."""
    async with in_process_cluster(tmp_path, **FAST) as cluster:
        leader = await cluster.leader()
        client = await RawClient.connect(cluster.client_address(leader))
        await client.call("membership", {"kind": "add_learner", "node_id": 9})  # never started
        with pytest.raises(errors.MembershipChangeRejected, match="learner 9 has not caught up"):
            await client.call("membership", {"kind": "promote", "node_id": 9})
        # Two changes in one round: the second finds the first pending.
        first = await client.send_request("membership", {"kind": "remove", "node_id": 9})
        second = await client.send_request("membership", {"kind": "add_learner", "node_id": 8})
        answers = {a[0]: a for a in [await client.read_obj(), await client.read_obj()]}
        assert answers[first][1] is True
        assert answers[second][1] is False and "another membership change is in progress" in answers[second][2]["message"]
        with pytest.raises(errors.MembershipChangeRejected, match="is the leader"):
            await client.call("membership", {"kind": "remove", "node_id": leader})
        follower = next(n for n in (1, 2, 3) if n != leader)
        await client.call("membership", {"kind": "remove", "node_id": follower})
        other = next(n for n in (1, 2, 3) if n not in (leader, follower))
        with pytest.raises(errors.MembershipChangeRejected, match="2-voter"):
            await client.call("membership", {"kind": "remove", "node_id": other})
        assert await client.call("membership", {"kind": "remove", "node_id": other, "force": True}) == {
            "voters": [leader],
            "learners": [],
        }
        await client.aclose()
