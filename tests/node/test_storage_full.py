"""A full disk (issue 16 item 7): the driver's side, message by message, then a real cluster whose
data directories sit on small file systems the test mounts.

What Raft needs from a node whose writes are refused: it says nothing that depends on them (no
vote, no append acknowledgement: §5.1 Figure 2, "persist before you speak"), yet keeps answering
heartbeats, so a leader keeps its quorum for reads (thesis §6.4); its leader refuses client writes
rather than proposing entries it cannot persist, and hands off to a voter that still can (§3.10).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import pytest
import trio

from tests.node.helpers import InProcessCluster, RawClient, cluster_configs
from tests.node.helpers import make_driver as make_test_driver
from tests.small_fs import SmallFs, small_filesystem
from trimaran.cluster.raft import Role
from trimaran.errors import NotLeader, RequestTimeout, StorageFullError, Unavailable
from trimaran.node.config import NodeConfig
from trimaran.node.driver import Driver
from trimaran.node.writer import StorageWriter, WriteResult
from trimaran.protocols.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    Heartbeat,
    HeartbeatResponse,
    Message,
    RequestVoteResponse,
    TimeoutNow,
)
from trimaran.storage import LmdbStorage, WriteBatch

FULL = StorageFullError("the file system is full", reason="disk_full")


class Writer:
    """Records what the driver hands over; the test reports durability (or a full disk)."""

    def __init__(self) -> None:
        self.submitted: list[tuple[int, WriteBatch]] = []
        self.groups_written = 0
        self.batches_written = 0
        #: What disk_space() reports: (free, size) bytes.
        self.space: tuple[int, int] = (1 << 30, 1 << 31)

    def submit(self, seq: int, batch: WriteBatch) -> None:
        self.submitted.append((seq, batch))

    def disk_space(self) -> tuple[int, int]:
        return self.space


class Answers:
    """A client connection: records the answers the driver gives."""

    def __init__(self) -> None:
        self.got: dict[int, tuple[bool, Any]] = {}

    def on_reply(self, seq: int, ok: bool, value: Any) -> None:
        self.got[seq] = (ok, value)


def make_driver(tmp_path: Path, **overrides: Any) -> tuple[Driver, Writer, list[Message]]:
    writer = Writer()
    driver, sent = make_test_driver(tmp_path, writer, **overrides)
    return driver, writer, sent


def tick(driver: Driver) -> None:
    driver._next_tick_at = trio.current_time()
    driver._round()


def acks(sent: list[Message]) -> list[int]:
    return [m.index for m in sent if isinstance(m, AppendEntriesResponse) and m.success]


async def test_a_follower_whose_write_is_refused_stays_silent_on_it_but_answers_heartbeats(tmp_path: Path) -> None:
    driver, writer, sent = make_driver(tmp_path)
    await driver.deliver_peer(AppendEntries(1, 2, 1, 0, 0, [Entry(1, 1, 0, b"x")], 0))
    driver._round()
    [(seq, _)] = writer.submitted
    driver.on_write_result(WriteResult(seq, FULL))
    driver._round()
    assert driver.storage_full and driver.status()["storage_full"] is True
    assert acks(sent) == []  # not durable: no acknowledgement (§5.1 Figure 2)
    # A heartbeat depends on nothing unwritten: answered at once, so the leader keeps its quorum
    # and can confirm reads (thesis §6.4) while this disk is full.
    await driver.deliver_peer(Heartbeat(1, 2, 1, 0, read_seq=7))
    driver._round()
    assert [(m.recipient, m.read_seq) for m in sent if isinstance(m, HeartbeatResponse)] == [(2, 7)]
    assert acks(sent) == []
    # The writer's retry lands once space returns: the acknowledgement goes out, writes resume.
    driver.on_write_result(WriteResult(seq))
    driver._round()
    assert acks(sent) == [1] and not driver.storage_full


async def make_leader(tmp_path: Path, **overrides: Any) -> tuple[Driver, Writer, list[Message]]:
    """Node 1 leads term 1, its no-op entry durable and committed on both followers."""
    driver, writer, sent = make_driver(tmp_path, **overrides)
    await driver.deliver_peer(TimeoutNow(0, 2, 1))
    driver._round()
    driver.on_write_result(WriteResult(writer.submitted[-1][0]))
    driver._round()
    await driver.deliver_peer(RequestVoteResponse(1, 2, 1, True, False))
    driver._round()
    assert driver.replica.raft.role == Role.LEADER
    driver.on_write_result(WriteResult(writer.submitted[-1][0]))
    last = driver.replica.raft.log.last_index()
    await driver.deliver_peer(AppendEntriesResponse(1, 2, 1, True, last))
    await driver.deliver_peer(AppendEntriesResponse(1, 3, 1, True, last))
    driver._round()
    assert driver.replica.raft.log.commit_index == last
    sent.clear()
    return driver, writer, sent


async def register(driver: Driver, answers: Answers, seq: int) -> None:
    await driver.submit_client("register", {}, (answers, seq), 16)
    driver._round()


async def test_a_full_leader_refuses_writes_and_hands_off_only_to_a_voter_that_can_write(tmp_path: Path) -> None:
    driver, writer, sent = await make_leader(tmp_path)
    answers = Answers()
    await register(driver, answers, 1)  # proposed; sent to both followers before its own write
    index = driver.replica.raft.log.last_index()
    driver.on_write_result(WriteResult(writer.submitted[-1][0], FULL))
    driver._round()
    assert driver.storage_full
    await register(driver, answers, 2)
    ok, error = answers.got[2]
    assert not ok and isinstance(error, StorageFullError) and error.code == "storage_full"
    # Nobody has shown it can write what this node could not: no transfer (a node that cannot
    # persist its new term would leave the cluster leaderless). Ticks pass; it keeps leading.
    for _ in range(3):
        tick(driver)
    assert driver.replica.raft.transferee == 0 and not [m for m in sent if isinstance(m, TimeoutNow)]
    assert driver.replica.raft.role == Role.LEADER
    # Node 3 persisted the entry this node could not: leadership goes to it (thesis §3.10).
    await driver.deliver_peer(AppendEntriesResponse(1, 3, 1, True, index))
    driver._round()
    tick(driver)
    assert [m.recipient for m in sent if isinstance(m, TimeoutNow)] == [3]


async def test_a_leader_below_its_reserve_refuses_client_writes_before_the_disk_fills(tmp_path: Path) -> None:
    driver, writer, sent = await make_leader(tmp_path, storage_reserve_bytes=1_000_000)
    answers = Answers()
    writer.space = (999_999, 20_000_000)
    tick(driver)
    await register(driver, answers, 1)
    ok, error = answers.got[1]
    assert not ok and isinstance(error, StorageFullError) and error.details["reason"] == "reserve"
    assert driver.status()["storage_low"] is True and not driver.storage_full
    assert driver.replica.raft.role == Role.LEADER  # Raft itself is untouched: no hand-off
    writer.space = (1_000_000, 20_000_000)  # space returned: accepted again, by itself
    tick(driver)
    await register(driver, answers, 2)
    assert 2 not in answers.got and len(writer.submitted) > 0  # proposed, waits for its commit


# ---------------------------------------------------------------------------- a real cluster

FS_BYTES = 8 * 1024 * 1024
VALUE_BYTES = 64 * 1024
#: Bounds of the fill loop: writes tried, and seconds.
FILL_WRITES_MAX = 400
FILL_S = 120.0
RESUME_S = 20.0
CLUSTER = {"tick_ms": 20, "storage_full_retry_ms": 100, "request_timeout_ms": 3_000}


def value_of(i: int) -> bytes:
    return i.to_bytes(4, "big") * (VALUE_BYTES // 4)


@contextlib.contextmanager
def small_data_dirs(tmp_path: Path, size: int = 3) -> Iterator[list[SmallFs]]:
    """One small file system per node; always unmounted."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(small_filesystem(tmp_path / f"fs{i}", FS_BYTES)) for i in range(1, size + 1)]


def configs_on(tmp_path: Path, filesystems: list[SmallFs], **overrides: Any) -> list[NodeConfig]:
    configs = cluster_configs(tmp_path, len(filesystems), **CLUSTER, **overrides)
    out = []
    for config, fs in zip(configs, filesystems):
        cap = fs.map_bytes_max
        caps: dict[str, Any] = {} if cap is None else {"storage_map_bytes_initial": cap, "storage_map_bytes_max": cap}
        out.append(config.replace(data_dir=str(fs.path / f"node{config.node_id}"), **caps).validate())
    return out


class LeaderClient:
    """A client that follows the leader: a RawClient on the register service."""

    def __init__(self, cluster: InProcessCluster) -> None:
        self.cluster = cluster
        self.client: RawClient | None = None

    async def connect(self) -> RawClient:
        if self.client is None:
            self.client = await RawClient.connect(self.cluster.client_address(await self.cluster.leader(timeout_s=10)))
            await self.client.register()
        return self.client

    async def drop(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def set(self, i: int) -> None:
        client = await self.connect()
        try:
            await client.set(b"k%d" % i, value_of(i))
        except (NotLeader, trio.BrokenResourceError):
            await self.drop()
            raise

    async def get(self, i: int) -> Any:
        return await (await self.connect()).get(b"k%d" % i)


async def fill_until_refused(writer: LeaderClient) -> tuple[list[int], StorageFullError]:
    """Acknowledged writes until one is refused with storage_full; the acknowledged keys."""
    acked: list[int] = []
    with trio.fail_after(FILL_S):
        for i in range(FILL_WRITES_MAX):
            try:
                await writer.set(i)
            except StorageFullError as exc:
                return acked, exc
            except (RequestTimeout, Unavailable, NotLeader, trio.BrokenResourceError):
                continue  # outcome unknown (or not taken): not acknowledged, not counted
            acked.append(i)
    raise AssertionError(f"no storage_full after {len(acked)} acknowledged writes of {VALUE_BYTES} bytes")


async def test_a_cluster_on_small_file_systems_refuses_writes_keeps_reads_and_resumes(tmp_path: Path) -> None:
    """The issue's scene, smaller: every node's data directory on its own small tmpfs (a capped
    map without root), filled with acknowledged 64 KiB writes. Then: writes refused with
    storage_full, every node up, linearizable reads served, nothing acknowledged lost; and once
    the file systems grow, writes resume with nobody restarting anything."""
    with small_data_dirs(tmp_path) as filesystems:
        configs = configs_on(tmp_path, filesystems)
        async with trio.open_nursery() as nursery:
            cluster = InProcessCluster(configs, nursery)
            for node_id in (1, 2, 3):
                await cluster.start(node_id)
            writer = LeaderClient(cluster)
            acked, refused = await fill_until_refused(writer)
            assert refused.code == "storage_full" and len(acked) > 10, (len(acked), refused)
            statuses = {n: cluster.status(n) for n in (1, 2, 3)}  # every node is up and answers
            assert any(s["storage_low"] or s["storage_full"] for s in statuses.values()), statuses
            with trio.fail_after(60):
                for i in acked:  # linearizable reads, through the leader's heartbeat round
                    assert await writer.get(i) == value_of(i), i
            if filesystems[0].mounted:
                for fs in filesystems:
                    fs.grow(2 * FS_BYTES)
                await resumes(writer, acked)
            await writer.drop()
            nursery.cancel_scope.cancel()
        if not filesystems[0].mounted:
            # A capped map grows only when its node restarts with a larger cap.
            configs = [c.replace(storage_map_bytes_max=2 * c.storage_map_bytes_max) for c in configs]
            async with trio.open_nursery() as nursery:
                cluster = InProcessCluster(configs, nursery)
                for node_id in (1, 2, 3):
                    await cluster.start(node_id)
                writer = LeaderClient(cluster)
                await resumes(writer, acked)
                await writer.drop()
                nursery.cancel_scope.cancel()


async def resumes(writer: LeaderClient, acked: list[int]) -> None:
    """Writes are accepted again within RESUME_S, and what was acknowledged is all there."""
    resumed = None
    with trio.fail_after(RESUME_S):
        while resumed is None:
            try:
                await writer.set(FILL_WRITES_MAX)
                resumed = FILL_WRITES_MAX
            except (StorageFullError, RequestTimeout, Unavailable, NotLeader, trio.BrokenResourceError):
                await trio.sleep(0.1)
    with trio.fail_after(60):
        for i in acked + [resumed]:
            assert await writer.get(i) == value_of(i), i


async def test_a_leader_whose_disk_fills_hands_off_and_catches_up_when_space_returns(tmp_path: Path) -> None:
    """The hard wall, on the leader alone: its commits fail (ENOSPC/EIO), it stays up, refuses
    writes, hands leadership to a follower that persisted what it could not, and catches up by
    itself once the filler is deleted. Needs a real file system to fill: skipped without root."""
    with small_data_dirs(tmp_path) as filesystems:
        filesystems[0].require_mounted()
        async with trio.open_nursery() as nursery:
            # No reserve: the leader meets the full disk itself, as with a disk filled by others.
            cluster = InProcessCluster(configs_on(tmp_path, filesystems, storage_reserve_bytes=0), nursery)
            for node_id in (1, 2, 3):
                await cluster.start(node_id)
            writer = LeaderClient(cluster)
            await writer.set(0)
            old = await cluster.leader()
            filler = filesystems[old - 1].fill(leave_bytes=0)
            acked = [0]
            with trio.fail_after(FILL_S):
                for i in range(1, 40):
                    try:
                        await writer.set(i)
                        acked.append(i)
                    except (StorageFullError, RequestTimeout, Unavailable, NotLeader, trio.BrokenResourceError):
                        await trio.sleep(0.05)
            assert len(acked) > 20, repr((acked, {n: {k: v for k, v in cluster.status(n).items() if k not in ("members", "metrics")} for n in (1, 2, 3)}))  # the others carried on
            new = await cluster.leader()
            assert new != old and cluster.status(old)["storage_full"] is True  # up, and says why
            for i in acked:
                assert await writer.get(i) == value_of(i), i
            filler.unlink()
            await cluster.wait_for(
                lambda: not cluster.status(old)["storage_full"]
                and cluster.status(old)["applied_index"] >= cluster.status(new)["commit_index"],
                timeout_s=RESUME_S,
                what="the old leader writing and caught up",
            )
            await writer.drop()
            nursery.cancel_scope.cancel()


async def test_the_writer_retries_a_refused_group_on_its_own_pace_and_lands_it_whole(tmp_path: Path) -> None:
    """The writer thread on a file system that fills: the refused group is retried every
    retry_ms (new batches do not make it retry sooner), nothing of it lands while the disk is
    full, and once the filler is gone it lands whole, with what queued behind it, in order."""
    with small_filesystem(tmp_path / "fs", 2 * 1024 * 1024) as fs:
        fs.require_mounted()
        results: list[WriteResult] = []
        retry_ms = 200
        store_path = str(fs.path / "node")
        writer = StorageWriter(store_path, results.append, map_bytes_initial=1 << 20, map_bytes_max=1 << 30, retry_ms=retry_ms)
        await writer.start()
        try:
            filler = fs.fill(leave_bytes=0)
            started = trio.current_time()
            for seq in range(1, 11):  # one batch every 50 ms, for half a second
                writer.submit(seq, WriteBatch(hard_state=None, entries=[Entry(seq, 1, 0, b"v" * 100_000)]))
                await trio.sleep(0.05)
            elapsed_s = trio.current_time() - started
            assert results and all(isinstance(r.error, StorageFullError) for r in results), results
            assert len(results) <= elapsed_s * 1000 / retry_ms + 2, (len(results), elapsed_s)
            filler.unlink()
            with trio.fail_after(10):
                while results[-1].error is not None or results[-1].seq < 10:
                    await trio.sleep(0.02)
        finally:
            await writer.stop()
        store = LmdbStorage(store_path)
        try:
            assert [e.index for e in store.load().entries] == list(range(1, 11))
        finally:
            store.close()
