"""The runtime's fast path: inline writes, held commit notices, one write per peer and per client
connection per round. Behaviour only; the numbers these buy are in benchmarks/kv_cluster.py.

Durability order is checked as in test_writer_and_driver: a real Replica, a fake writer whose
durability the test controls, and every message the driver sends recorded in order.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.node.helpers import make_driver
from trimaran import limits
from trimaran.cluster.raft import Role
from trimaran.node.driver import Driver
from trimaran.node.transport import PeerQueue
from trimaran.node.writer import StorageWriter, WriteResult
from trimaran.protocols.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    HardState,
    Heartbeat,
    Message,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from trimaran.storage import LmdbStorage, WriteBatch


class InlineWriter:
    """A writer that can also write on the caller's thread; ``inline_ok`` decides if it does."""

    def __init__(self, inline_ok: bool = True) -> None:
        self.inline_ok = inline_ok
        self.inline: list[list[WriteBatch]] = []
        self.submitted: list[tuple[int, WriteBatch]] = []
        self.groups_written = 0
        self.batches_written = 0

    def submit(self, seq: int, batch: WriteBatch) -> None:
        self.submitted.append((seq, batch))

    def write_inline(self, batches: list[WriteBatch]) -> bool:
        if not self.inline_ok:
            return False
        self.inline.append(batches)
        return True


def append_from_leader(index: int, commit_index: int = 0) -> AppendEntries:
    return AppendEntries(1, 2, 1, index - 1, 1 if index > 1 else 0, [Entry(index, 1, 0, b"x")], commit_index)


def acks(sent: list[Message]) -> list[int]:
    return [m.index for m in sent if isinstance(m, AppendEntriesResponse) and m.success]


# ---------------------------------------------------------------------------- inline writes


async def test_a_follower_writes_inline_and_acknowledges_in_the_same_round(tmp_path: Path) -> None:
    writer = InlineWriter()
    driver, sent = make_driver(tmp_path, writer)
    await driver.deliver_peer(append_from_leader(1))
    driver._round()
    [[batch]] = writer.inline
    assert [e.index for e in batch.entries] == [1] and batch.hard_state is not None
    assert writer.submitted == []
    assert acks(sent) == [1]  # sent only after the write returned: durable first (§5.1)
    assert driver.replica.raft.log.persisted_index == 1


async def test_a_refused_inline_write_goes_to_the_thread_and_the_ack_waits_for_it(tmp_path: Path) -> None:
    writer = InlineWriter(inline_ok=False)
    driver, sent = make_driver(tmp_path, writer)
    await driver.deliver_peer(append_from_leader(1))
    driver._round()
    [(seq, _)] = writer.submitted
    assert acks(sent) == []
    driver.on_write_result(WriteResult(seq))
    driver._round()
    assert acks(sent) == [1]


async def test_nothing_is_written_inline_while_the_thread_has_writes_outstanding(tmp_path: Path) -> None:
    writer = InlineWriter(inline_ok=False)
    driver, sent = make_driver(tmp_path, writer)
    await driver.deliver_peer(append_from_leader(1))
    driver._round()
    writer.inline_ok = True
    # The thread still holds batch 1: batch 2 must queue behind it, not overtake it on this thread.
    await driver.deliver_peer(append_from_leader(2))
    driver._round()
    assert writer.inline == [] and [seq for seq, _ in writer.submitted] == [1, 2]
    assert acks(sent) == []
    driver.on_write_result(WriteResult(2))
    driver._round()
    assert acks(sent) == [1, 2]
    await driver.deliver_peer(append_from_leader(3))
    driver._round()
    assert len(writer.inline) == 1 and acks(sent) == [1, 2, 3]  # idle again: inline


async def test_inline_writes_are_bounded_by_size_and_can_be_turned_off(tmp_path: Path) -> None:
    writer = InlineWriter()
    driver, sent = make_driver(tmp_path, writer, write_inline_bytes_max=0)
    await driver.deliver_peer(append_from_leader(1))
    driver._round()
    assert writer.inline == [] and len(writer.submitted) == 1


async def test_a_vote_written_inline_is_granted_in_the_same_round(tmp_path: Path) -> None:
    writer = InlineWriter()
    driver, sent = make_driver(tmp_path, writer)
    await driver.deliver_peer(RequestVote(1, 2, 1, 0, 0))
    driver._round()
    [[batch]] = writer.inline
    assert batch.hard_state is not None and batch.hard_state.vote == 2
    assert [(m.recipient, m.granted) for m in sent if isinstance(m, RequestVoteResponse)] == [(2, True)]


# ---------------------------------------------------------------------------- commit notices


async def make_leader(tmp_path: Path, **overrides: Any) -> tuple[Driver, list[Message]]:
    """Node 1 leads term 1 (a transfer skips Pre-Vote), both followers replicating, and its last
    entry (a client registration) committed: the commit announced to both followers."""
    driver, sent = make_driver(tmp_path, InlineWriter(), **overrides)
    await driver.deliver_peer(TimeoutNow(0, 2, 1))
    driver._round()
    await driver.deliver_peer(RequestVoteResponse(1, 2, 1, True, False))
    driver._round()
    assert driver.replica.raft.role == Role.LEADER
    for _ in range(2):  # the no-op entry, then a registration
        last = driver.replica.raft.log.last_index()
        await driver.deliver_peer(AppendEntriesResponse(1, 2, 1, True, last))
        await driver.deliver_peer(AppendEntriesResponse(1, 3, 1, True, last))
        driver._round()
        assert driver.replica.raft.log.commit_index == last
        sent.clear()
        await driver.submit_client("register", {}, (Sink(), 1), 16)
        driver._round()
    last = driver.replica.raft.log.last_index()
    await driver.deliver_peer(AppendEntriesResponse(1, 2, 1, True, last))
    await driver.deliver_peer(AppendEntriesResponse(1, 3, 1, True, last))
    driver._round()
    assert driver.replica.raft.log.commit_index == last
    return driver, sent


def empty_appends(sent: list[Message]) -> list[tuple[int, int]]:
    return [(m.recipient, m.commit_index) for m in sent if isinstance(m, AppendEntries) and not m.entries]


async def test_a_commit_notice_is_held_and_dropped_when_the_next_append_carries_it(tmp_path: Path) -> None:
    driver, sent = await make_leader(tmp_path)
    commit = driver.replica.raft.log.commit_index
    assert empty_appends(sent) == [] and sorted(driver._held) == [2, 3]
    dropped = driver.held_notices_dropped
    sent.clear()
    await driver.submit_client("register", {}, (Sink(), 1), 16)
    driver._round()
    appends = [m for m in sent if isinstance(m, AppendEntries)]
    assert sorted(m.recipient for m in appends) == [2, 3]
    assert all(m.entries and m.commit_index >= commit for m in appends)
    assert driver._held == {} and driver.held_notices_dropped == dropped + 2


async def test_a_held_commit_notice_is_sent_when_its_delay_runs_out(tmp_path: Path) -> None:
    driver, sent = await make_leader(tmp_path)
    commit = driver.replica.raft.log.commit_index
    driver._held_until = trio.current_time()  # as if commit_notice_delay_ms had passed
    driver._round()
    assert sorted(empty_appends(sent)) == [(2, commit), (3, commit)]
    assert driver._held == {}


async def test_commit_notices_are_sent_at_once_when_the_delay_is_zero(tmp_path: Path) -> None:
    driver, sent = await make_leader(tmp_path, commit_notice_delay_ms=0)
    commit = driver.replica.raft.log.commit_index
    assert sorted(empty_appends(sent)) == [(2, commit), (3, commit)]


async def test_hold_keeps_order_with_other_messages_and_drops_only_superseded_notices(tmp_path: Path) -> None:
    driver, _ = make_driver(tmp_path, InlineWriter())
    notice = AppendEntries(1, 1, 2, 5, 1, [], 4)
    assert driver._hold([notice]) == [] and driver._held == {2: notice}
    # Another kind of message to that follower: the notice goes first, in order.
    beat = Heartbeat(1, 1, 2, 4)
    assert driver._hold([beat]) == [notice, beat] and driver._held == {}
    # An append from an earlier position does not tell the follower everything the notice would.
    driver._hold([notice])
    probe = AppendEntries(1, 1, 2, 3, 1, [Entry(4, 1, 0, b"")], 4)
    assert driver._hold([probe]) == [notice, probe]
    # A later notice with a higher commit index replaces the held one.
    driver._hold([notice])
    newer = AppendEntries(1, 1, 2, 5, 1, [], 5)
    assert driver._hold([newer]) == [] and driver._held == {2: newer} and driver.held_notices_dropped == 1
    # Messages to other followers pass untouched and leave the notice held.
    other = AppendEntries(1, 1, 3, 5, 1, [Entry(6, 1, 0, b"")], 5)
    assert driver._hold([other]) == [other] and driver._held == {2: newer}
    # The next append to that follower carries the same commit index: the notice is dropped.
    nxt = AppendEntries(1, 1, 2, 5, 1, [Entry(6, 1, 0, b"")], 5)
    assert driver._hold([nxt]) == [nxt] and driver._held == {} and driver.held_notices_dropped == 2


# ---------------------------------------------------------------------------- rounds run where the input arrives


async def start_parked(nursery: trio.Nursery, driver: Driver) -> None:
    """Run the driver's loop and wait until it has parked (nothing to do)."""
    await nursery.start(driver.run)
    await trio.testing.wait_all_tasks_blocked()
    assert len(driver._wake) == 1


async def test_an_input_to_a_parked_loop_is_served_in_the_delivering_task(tmp_path: Path) -> None:
    writer = InlineWriter()
    driver, sent = make_driver(tmp_path, writer)
    async with trio.open_nursery() as nursery:
        await start_parked(nursery, driver)
        rounds = driver.rounds
        await driver.deliver_peer(append_from_leader(1))
        # No pass of the scheduler in between: the round ran inside deliver_peer, wrote inline and
        # acknowledged only after the write (persist before you speak), and the loop stays parked.
        assert driver.rounds == rounds + 1 and len(writer.inline) == 1 and acks(sent) == [1]
        assert len(driver._wake) == 1
        nursery.cancel_scope.cancel()


async def test_messages_read_together_are_taken_by_one_round(tmp_path: Path) -> None:
    writer = InlineWriter()
    driver, sent = make_driver(tmp_path, writer)
    async with trio.open_nursery() as nursery:
        await start_parked(nursery, driver)
        await driver.deliver_peer(append_from_leader(1), more=True)
        await driver.deliver_peer(append_from_leader(2), more=True)
        assert writer.inline == [] and acks(sent) == []  # the last one starts the round
        await driver.deliver_peer(append_from_leader(3))
        assert len(writer.inline) == 1 and max(acks(sent)) == 3  # one write for all three
        nursery.cancel_scope.cancel()


async def test_a_round_that_fails_in_the_delivering_task_fails_the_loop(tmp_path: Path) -> None:
    driver, _ = make_driver(tmp_path, InlineWriter())

    def broken_step(msg: Message) -> None:
        raise RuntimeError("a bug in a round")

    with pytest.raises(BaseExceptionGroup) as caught:
        async with trio.open_nursery() as nursery:
            await start_parked(nursery, driver)
            driver.replica.step = broken_step  # type: ignore[method-assign]
            await driver.deliver_peer(append_from_leader(1))  # the reader carries on ...
    assert caught.group_contains(RuntimeError, match="a bug")  # ... the loop raises it


async def test_a_client_request_runs_at_once_only_when_nothing_else_is_in_flight(tmp_path: Path) -> None:
    driver, sent = await make_leader(tmp_path)
    driver.on_write_result(WriteResult(driver._write_seq_submitted))  # the leader's own writes too
    driver._round()
    async with trio.open_nursery() as nursery:
        await start_parked(nursery, driver)
        sent.clear()
        await driver.submit_client("register", {}, (Sink(), 1), 16)
        first = [m for m in sent if isinstance(m, AppendEntries) and m.entries]
        assert sorted(m.recipient for m in first) == [2, 3]  # proposed and replicated already
        sent.clear()
        # The first is not committed yet: this one waits for the loop, which would take every
        # request read meanwhile into the same proposal.
        await driver.submit_client("register", {}, (Sink(), 2), 16)
        assert sent == []
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(m.recipient for m in sent if isinstance(m, AppendEntries) and m.entries) == [2, 3]
        nursery.cancel_scope.cancel()


async def test_a_leader_writes_inline_once_its_clients_come_one_at_a_time(tmp_path: Path) -> None:
    driver, _ = await make_leader(tmp_path, write_inline_leader_serial_requests=2)
    writer = driver._writer
    assert isinstance(writer, InlineWriter)

    async def settle() -> None:
        """The leader's writes durable and its last entry acknowledged: nothing in flight."""
        if driver._write_seq_durable < driver._write_seq_submitted:
            driver.on_write_result(WriteResult(driver._write_seq_submitted))
            await trio.testing.wait_all_tasks_blocked()
        last = driver.replica.raft.log.last_index()
        await driver.deliver_peer(AppendEntriesResponse(1, 2, 1, True, last))
        await driver.deliver_peer(AppendEntriesResponse(1, 3, 1, True, last))
        assert driver._quiescent()

    async with trio.open_nursery() as nursery:
        await start_parked(nursery, driver)
        await settle()
        inline = len(writer.inline)
        await driver.submit_client("register", {}, (Sink(), 1), 16)
        assert len(writer.inline) == inline  # one request to an idle node is not yet a pattern
        await settle()
        await driver.submit_client("register", {}, (Sink(), 2), 16)
        assert len(writer.inline) == inline + 1  # the second in a row: written here, no hand-off
        # A request that finds another in flight means concurrent clients: back to the thread.
        await driver.submit_client("register", {}, (Sink(), 3), 16)
        await trio.testing.wait_all_tasks_blocked()
        await settle()
        submitted = len(writer.submitted)
        await driver.submit_client("register", {}, (Sink(), 4), 16)
        assert len(writer.inline) == inline + 1 and len(writer.submitted) == submitted + 1
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------- client answers


class Sink:
    """A reply target that records answers and flushes."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bool]] = []
        self.flushes = 0

    def on_reply(self, seq: int, ok: bool, value: Any) -> None:
        self.answers.append((seq, ok))

    def flush_replies(self) -> None:
        self.flushes += 1


async def test_answers_given_in_one_round_are_flushed_once_per_connection(tmp_path: Path) -> None:
    driver, _ = make_driver(tmp_path, InlineWriter())
    a, b = Sink(), Sink()
    for seq in (1, 2, 3):  # a follower refuses writes at once (not_leader)
        await driver.submit_client("register", {}, (a, seq), 16)
    await driver.submit_client("register", {}, (b, 1), 16)
    driver._round()
    assert a.answers == [(1, False), (2, False), (3, False)] and b.answers == [(1, False)]
    assert a.flushes == 1 and b.flushes == 1


async def test_a_group_is_one_inbox_item_answered_by_index_and_counted_per_request(tmp_path: Path) -> None:
    driver, _ = make_driver(tmp_path, InlineWriter(), driver_inputs_per_round_max=4)
    first, alone, second = Sink(), Sink(), Sink()
    await driver.submit_client_group("register", [{}, {}, {}], first, [16] * 3)
    await driver.submit_client("register", {}, (alone, 7), 16, more=True)
    await driver.submit_client_group("register", [{} for _ in range(6)], second, [16] * 6)
    assert len(driver._inbox) == 3
    # A round takes four inputs: the first group's three and the lone request ...
    driver._take_inputs()
    assert first.answers == [(0, False), (1, False), (2, False)] and alone.answers == [(7, False)]
    assert second.answers == []
    # ... then four of the second group's six, and the rest in the round after, in order.
    driver._take_inputs()
    assert second.answers == [(i, False) for i in range(4)] and len(driver._inbox) == 1
    driver._take_inputs()
    assert second.answers == [(i, False) for i in range(6)] and not driver._inbox


# ---------------------------------------------------------------------------- peer queue writes


def test_a_peer_queue_writes_its_frames_in_one_go_and_keeps_order_when_the_socket_is_full() -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        b.setblocking(False)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        q = PeerQueue(frames_max=100_000, bytes_max=1 << 30)
        assert not q.flush()  # not attached: nothing written
        q.attach(a.fileno())
        frames = [bytes([i % 251]) * 1000 for i in range(2000)]
        for frame in frames[:3]:
            q.push(frame)
        assert q.flush() and q.writes == 1 and q.sent_frames == 3  # three frames, one write
        for frame in frames[3:]:
            q.push(frame)
        assert not q.flush() and q.blocked and q.pending  # the socket took only part of it
        received = bytearray()
        while q.pending:
            while True:
                try:
                    received += b.recv(1 << 20)
                except BlockingIOError:
                    break
            q.blocked = False
            q.flush()
        while len(received) < 2000 * 1000:
            received += b.recv(1 << 20)
        assert bytes(received) == b"".join(frames)
        q.detach()
        q.push(b"late")
        assert not q.flush() and len(q) == 1  # detached: never written to a closed descriptor
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------- writer thread


def entry_batch(index: int) -> WriteBatch:
    return WriteBatch(HardState(1, 1, index - 1), None, 0, [Entry(index, 1, 0, b"x" * 100)], 0)


async def test_inline_and_thread_writes_interleave_in_order_and_are_durable(tmp_path: Path) -> None:
    results: list[WriteResult] = []
    writer = StorageWriter(str(tmp_path), results.append, map_bytes_initial=limits.MIB * 8, map_bytes_max=limits.MIB * 64)
    assert not writer.write_inline([entry_batch(1)])  # not open yet
    await writer.start()
    assert writer.write_inline([entry_batch(1), entry_batch(2)])
    writer.submit(1, entry_batch(3))
    with trio.fail_after(10):
        while not results:
            await trio.sleep(0.005)
    with writer._store_lock:  # the thread is writing: an inline write steps aside
        assert not writer.write_inline([entry_batch(4)])
    assert writer.write_inline([entry_batch(4)])
    assert writer.groups_written == 3 and writer.batches_written == 4 and writer.inline_groups == 2
    await writer.stop()
    assert not writer.write_inline([entry_batch(5)])  # closed
    store = LmdbStorage(str(tmp_path))
    try:
        assert [e.index for e in store.load().entries] == [1, 2, 3, 4]
    finally:
        store.close()
