"""The writer thread (group commit, order, storage full) and the driver's durability ordering.

The driver tests use a real Replica and a fake writer whose durability the test controls, so
"persist before you speak" (§5.1 Figure 2; :mod:`trimaran.cluster.ready` step 4) is checked
message by message.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.node.helpers import make_driver as make_test_driver
from trimaran import limits
from trimaran.errors import StorageFullError
from trimaran.node.driver import TICKS_CATCH_UP_MAX_FACTOR, Driver
from trimaran.node.writer import StorageWriter, WriteResult
from trimaran.protocols.messages import Entry, HardState, Message, RequestVote, RequestVoteResponse
from trimaran.storage import LmdbStorage, WriteBatch


def entry_batch(index: int, size_bytes: int = 100) -> WriteBatch:
    return WriteBatch(HardState(1, 1, index - 1), None, 0, [Entry(index, 1, 0, b"x" * size_bytes)], 0)


async def test_queued_batches_are_coalesced_into_few_transactions_in_order(tmp_path: Path) -> None:
    results: list[WriteResult] = []
    writer = StorageWriter(str(tmp_path), results.append, map_bytes_initial=limits.MIB * 8, map_bytes_max=limits.MIB * 64)
    boot = await writer.start()
    assert boot.entries == [] and boot.hard_state == HardState()
    for i in range(1, 201):
        writer.submit(i, entry_batch(i))
    with trio.fail_after(10):
        while not results or results[-1].seq < 200:
            await trio.sleep(0.005)
    assert all(r.error is None for r in results)
    seqs = [r.seq for r in results]
    assert seqs == sorted(seqs)  # durability is reported in submission order
    assert writer.batches_written == 200
    assert writer.groups_written <= 20, writer.groups_written  # group commit: one fsync per group
    await writer.stop()
    store = LmdbStorage(str(tmp_path))
    try:
        loaded = store.load()
        assert [e.index for e in loaded.entries] == list(range(1, 201))
        assert loaded.hard_state == HardState(1, 1, 199)
    finally:
        store.close()


async def test_storage_full_is_reported_and_the_writer_stays_stoppable(tmp_path: Path) -> None:
    results: list[WriteResult] = []
    cap = 256 * limits.KIB
    writer = StorageWriter(str(tmp_path), results.append, map_bytes_initial=cap, map_bytes_max=cap, retry_ms=50)
    await writer.start()
    writer.submit(1, entry_batch(1, size_bytes=1024 * 1024))
    with trio.fail_after(5):
        while not results:
            await trio.sleep(0.005)
    assert isinstance(results[0].error, StorageFullError)
    with trio.fail_after(5):
        await writer.stop()


# ---------------------------------------------------------------------------- driver ordering


class FakeWriter:
    """Records what the driver hands over; the test decides when it becomes durable."""

    def __init__(self) -> None:
        self.submitted: list[tuple[int, WriteBatch]] = []
        self.groups_written = 0
        self.batches_written = 0

    def submit(self, seq: int, batch: WriteBatch) -> None:
        self.submitted.append((seq, batch))


def make_driver(tmp_path: Path) -> tuple[Driver, FakeWriter, list[Message]]:
    writer = FakeWriter()
    driver, sent = make_test_driver(tmp_path, writer)
    return driver, writer, sent


def votes(sent: list[Message]) -> list[tuple[int, bool]]:
    return [(m.recipient, m.granted) for m in sent if isinstance(m, RequestVoteResponse)]


async def test_a_vote_is_sent_only_once_it_is_durable(tmp_path: Path) -> None:
    driver, writer, sent = make_driver(tmp_path)
    await driver.deliver_peer(RequestVote(1, 2, 1, 0, 0))
    driver._round()
    assert votes(sent) == []  # granted in memory, not yet on disk: silent (§5.1 Figure 2)
    [(seq, batch)] = writer.submitted
    assert batch.hard_state is not None and batch.hard_state.vote == 2
    driver.on_write_result(WriteResult(seq))
    driver._round()
    assert votes(sent) == [(2, True)]


async def test_an_answer_with_nothing_to_write_waits_behind_earlier_writes(tmp_path: Path) -> None:
    driver, writer, sent = make_driver(tmp_path)
    await driver.deliver_peer(RequestVote(1, 2, 1, 0, 0))
    driver._round()
    # A second candidate in the same term: refused, which needs no write of its own, but the refusal
    # must not overtake the grant whose vote is still being written (ready.py: batches in order).
    await driver.deliver_peer(RequestVote(1, 3, 1, 0, 0))
    driver._round()
    assert len(writer.submitted) == 1 and votes(sent) == []
    driver.on_write_result(WriteResult(writer.submitted[0][0]))
    driver._round()
    assert votes(sent) == [(2, True), (3, False)]


async def test_missed_ticks_after_a_pause_are_delivered_at_once_but_bounded(tmp_path: Path) -> None:
    driver, _, _ = make_driver(tmp_path)
    driver._next_tick_at = trio.current_time() - 3600  # as after a long SIGSTOP
    driver._take_ticks()
    assert driver.ticks == TICKS_CATCH_UP_MAX_FACTOR * driver.config.election_timeout_ticks_max
    assert driver._next_tick_at > trio.current_time()


async def test_a_fatal_storage_error_stops_the_driver(tmp_path: Path) -> None:
    driver, _, _ = make_driver(tmp_path)
    driver.on_write_result(WriteResult(1, OSError(5, "Input/output error")))
    try:
        driver._round()
    except OSError as exc:
        assert exc.errno == 5
    else:
        raise AssertionError("a failed fsync must stop the node (fail-stop), not be ignored")
