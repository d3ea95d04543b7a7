"""The NodeStorage contract (trimaran/storage/base.py), run against LmdbStorage and MemoryStorage."""

from __future__ import annotations

import pytest

from tests.storage.helpers import Harness, entries, entry, meta_for, snapshot
from trimaran.errors import StorageCorruptError, StorageError, StorageFullError
from trimaran.protocols.messages import HardState, Snapshot
from trimaran.storage import WriteBatch


def test_new_store_is_empty(harness: Harness) -> None:
    store = harness.store
    assert (store.first_index(), store.last_index()) == (1, 0)
    # A new store behaves as if it had an empty snapshot at index 0, term 0.
    assert store.term_at(0) == 0
    assert store.term_at(1) is None
    assert store.hard_state() == HardState()
    assert store.snapshot_meta() is None
    assert list(store.snapshot_chunks(10)) == []
    boot = store.load()
    assert (boot.hard_state, boot.snapshot, boot.entries) == (HardState(), None, [])


def test_append_read_and_reopen(harness: Harness) -> None:
    log = entries(1, 6, term=1) + entries(6, 9, term=2)
    harness.store.write([WriteBatch(entries=log[:4]), WriteBatch(entries=log[4:])])
    for reopened in (False, True):
        if reopened:
            harness.reopen()
        store = harness.store
        assert (store.first_index(), store.last_index()) == (1, 8)
        assert [store.term_at(i) for i in range(0, 10)] == [0, 1, 1, 1, 1, 1, 2, 2, 2, None]
        assert store.entries(1, 9, 1 << 20) == log
        assert store.entries(3, 6, 1 << 20) == log[2:5]
        assert store.entries(4, 4, 1 << 20) == []
        assert store.load().entries == log


def test_truncate_replaces_a_conflicting_suffix(harness: Harness) -> None:
    harness.store.write([WriteBatch(entries=entries(1, 8, term=1))])
    replacement = entries(5, 7, term=3)
    harness.store.write([WriteBatch(truncate_from=5, entries=replacement)])
    harness.reopen()
    store = harness.store
    assert store.last_index() == 6
    assert store.entries(1, 7, 1 << 20) == entries(1, 5, term=1) + replacement
    assert store.term_at(7) is None
    # Truncation alone, and beyond the end (a no-op).
    store.write([WriteBatch(truncate_from=3)])
    store.write([WriteBatch(truncate_from=10)])
    assert (store.first_index(), store.last_index()) == (1, 2)


def test_snapshot_in_a_batch_then_compaction(harness: Harness) -> None:
    store = harness.store
    store.write([WriteBatch(entries=entries(1, 11, term=2))])
    snap = snapshot(6, 2)
    store.write([WriteBatch(snapshot=snap)])
    # Not compacted yet: the log still holds 1..10, but booting starts after the snapshot.
    assert (store.first_index(), store.last_index()) == (1, 10)
    assert store.load().entries == entries(7, 11, term=2)
    store.write([WriteBatch(compact_through=4)])
    assert store.first_index() == 5
    store.write([WriteBatch(compact_through=6)])
    harness.reopen()
    store = harness.store
    assert (store.first_index(), store.last_index()) == (7, 10)
    assert store.snapshot_meta() == snap.meta
    boot = store.load()
    assert boot.snapshot == snap
    assert boot.entries == entries(7, 11, term=2)


def test_term_at_the_snapshot_boundary(harness: Harness) -> None:
    store = harness.store
    store.write([WriteBatch(entries=entries(1, 6, term=1) + entries(6, 9, term=3))])
    store.write([WriteBatch(snapshot=snapshot(6, 3), compact_through=6)])
    harness.reopen()
    store = harness.store
    assert store.first_index() == 7
    assert store.term_at(5) is None  # compacted
    assert store.term_at(6) == 3  # the snapshot's last entry
    assert store.term_at(7) == 3
    assert store.term_at(0) is None  # the implicit empty snapshot is gone
    assert store.entries(7, 9, 1 << 20) == entries(7, 9, term=3)


def test_installed_snapshot_discards_the_log(harness: Harness) -> None:
    store = harness.store
    store.write([WriteBatch(entries=entries(1, 4, term=1))])
    snap = snapshot(20, 5)
    store.write([WriteBatch(snapshot=snap, truncate_from=1, entries=[entry(21, 5)])])
    harness.reopen()
    store = harness.store
    assert (store.first_index(), store.last_index()) == (21, 21)
    assert store.term_at(20) == 5
    assert store.term_at(3) is None
    assert store.load().entries == [entry(21, 5)]
    # Compacting a log that is entirely below the snapshot empties it; it then follows the snapshot.
    store.write([WriteBatch(snapshot=snapshot(21, 5), compact_through=21)])
    assert (store.first_index(), store.last_index()) == (22, 21)
    store.write([WriteBatch(entries=[entry(22, 6)])])
    assert store.load().entries == [entry(22, 6)]


def test_snapshot_writer_publishes_in_chunks(harness: Harness) -> None:
    store = harness.store
    store.write([WriteBatch(entries=entries(1, 31, term=4))])
    data = bytes(range(256)) * 40  # 10240 bytes
    writer = store.begin_snapshot(meta_for(25, 4, data))
    for offset in range(0, len(data), 3000):
        writer.write(data[offset : offset + 3000])
    assert store.snapshot_meta() is None  # invisible until published
    writer.publish(compact_through=20)
    harness.reopen()
    store = harness.store
    assert store.snapshot_meta() == meta_for(25, 4, data)
    assert store.first_index() == 21
    chunks = list(store.snapshot_chunks(4096))
    assert [len(c) for c in chunks] == [4096, 4096, 2048]
    assert b"".join(chunks) == data
    boot = store.load()
    assert boot.snapshot == Snapshot(meta_for(25, 4, data), data)
    assert boot.entries == entries(26, 31, term=4)


def test_publish_checks_size_and_checksum(harness: Harness) -> None:
    store = harness.store
    store.write([WriteBatch(entries=entries(1, 6, term=1))])
    data = b"x" * 100
    writer = store.begin_snapshot(meta_for(5, 1, data))
    writer.write(data[:99] + b"y")
    with pytest.raises(StorageCorruptError):
        writer.publish()
    assert store.snapshot_meta() is None
    # A damaged snapshot inside a batch: the whole write is refused, nothing applied.
    bad = Snapshot(meta_for(5, 1, data), data[:50])
    with pytest.raises(StorageCorruptError):
        store.write([WriteBatch(entries=[entry(6, 1)]), WriteBatch(snapshot=bad)])
    assert (store.last_index(), store.snapshot_meta()) == (5, None)
    # An aborted writer leaves nothing behind, and a later one at the same index works.
    aborted = store.begin_snapshot(meta_for(5, 1, data))
    aborted.write(b"z" * 500)
    aborted.abort()
    writer = store.begin_snapshot(meta_for(5, 1, data))
    writer.write(data)
    writer.publish()
    assert b"".join(store.snapshot_chunks(1000)) == data


def test_entries_byte_budget(harness: Harness) -> None:
    store = harness.store
    log = entries(1, 11, term=1, size_bytes=76)  # size_bytes() == 100 each
    store.write([WriteBatch(entries=log)])
    assert store.entries(1, 11, 350) == log[:3]
    assert store.entries(1, 11, 300) == log[:3]  # exactly at the budget still fits
    assert store.entries(4, 11, 0) == log[3:4]  # always at least one
    assert store.entries(9, 11, 1 << 20) == log[8:]
    big = entries(11, 12, term=1, size_bytes=5000)
    store.write([WriteBatch(entries=big)])
    assert store.entries(11, 12, 100) == big


def test_hard_state_round_trip(harness: Harness) -> None:
    harness.store.write([WriteBatch(hard_state=HardState(term=3, vote=2, commit_index=0))])
    harness.store.write([WriteBatch(hard_state=HardState(term=7, vote=1, commit_index=12))])
    harness.reopen()
    assert harness.store.hard_state() == HardState(7, 1, 12)
    assert harness.store.load().hard_state == HardState(7, 1, 12)


def test_group_commit_applies_batches_in_order(harness: Harness) -> None:
    store = harness.store
    store.write(
        [
            WriteBatch(hard_state=HardState(1, 1), entries=entries(1, 6, term=1)),
            WriteBatch(truncate_from=4, entries=entries(4, 8, term=2), hard_state=HardState(2, 0, 3)),
            WriteBatch(snapshot=snapshot(5, 2), compact_through=3),
            WriteBatch(entries=[entry(8, 2)], hard_state=HardState(2, 0, 6)),
        ]
    )
    harness.reopen()
    store = harness.store
    assert (store.first_index(), store.last_index()) == (4, 8)
    assert store.hard_state() == HardState(2, 0, 6)
    assert store.entries(4, 9, 1 << 20) == entries(4, 8, term=2) + [entry(8, 2)]
    assert store.load().entries == entries(6, 8, term=2) + [entry(8, 2)]


def test_stored_data_is_isolated_from_the_caller(harness: Harness) -> None:
    log = entries(1, 4, term=1)
    batch = WriteBatch(entries=log)
    harness.store.write([batch])
    log.append(entry(4, 1))
    batch.entries.clear()
    assert harness.store.entries(1, 4, 1 << 20) == entries(1, 4, term=1)
    assert harness.store.last_index() == 3


def test_snapshot_replaced_while_being_read(harness: Harness) -> None:
    store = harness.store
    store.write([WriteBatch(entries=entries(1, 11, term=1))])
    store.write([WriteBatch(snapshot=snapshot(5, 1, b"a" * 3000))])
    reader = store.snapshot_chunks(1000)
    assert next(reader) == b"a" * 1000
    store.write([WriteBatch(snapshot=snapshot(8, 1, b"b" * 3000))])
    with pytest.raises(StorageError):
        list(reader)
    assert b"".join(store.snapshot_chunks(1000)) == b"b" * 3000


@pytest.mark.parametrize(
    "batch",
    [
        WriteBatch(entries=[entry(5, 1)]),  # not contiguous
        WriteBatch(compact_through=2),  # above the snapshot (none)
        WriteBatch(snapshot=snapshot(8, 1)),  # a log 1..3 that does not reach snapshot 8
        WriteBatch(hard_state=HardState(term=0)),  # a term going back
    ],
)
def test_programmer_errors_are_assertions(harness: Harness, batch: WriteBatch) -> None:
    harness.store.write([WriteBatch(entries=entries(1, 4, term=1), hard_state=HardState(term=1))])
    with pytest.raises(AssertionError):
        harness.store.write([batch])
    with pytest.raises(AssertionError):
        harness.store.entries(2, 6, 1 << 20)


def test_older_snapshot_is_a_programmer_error(harness: Harness) -> None:
    store = harness.store
    store.write([WriteBatch(entries=entries(1, 11, term=1)), WriteBatch(snapshot=snapshot(6, 1))])
    with pytest.raises(AssertionError):
        store.begin_snapshot(meta_for(6, 1, b""))
    with pytest.raises(AssertionError):
        store.write([WriteBatch(snapshot=snapshot(4, 1))])


# A store with room for a few dozen 16 KiB entries: the LMDB map's cap, the twin's size cap.
_CAPPED_BYTES = 1024 * 1024
_ENTRY_BYTES = 16 * 1024
_FILL_WRITES_MAX = 200


def test_a_refused_write_changes_nothing_and_succeeds_once_space_returns(harness: Harness) -> None:
    """A full store (issue 16 item 7) refuses a write as a whole: nothing of it is applied, reads
    and the boot state are what the last accepted write left, and the very same write (the writer
    thread retries it) succeeds once space is freed, here by compacting the log below a snapshot."""
    harness.cap(_CAPPED_BYTES)
    store = harness.store
    store.write([WriteBatch(hard_state=HardState(1, 1))])
    index = 1
    refused: WriteBatch | None = None
    for _ in range(_FILL_WRITES_MAX):
        batch = WriteBatch(entries=entries(index, index + 2, term=1, size_bytes=_ENTRY_BYTES), hard_state=HardState(1, 1, index))
        try:
            store.write([batch])
        except StorageFullError:
            refused = batch
            break
        index += 2
    assert refused is not None, "the capped store never filled"
    accepted = entries(1, index, term=1, size_bytes=_ENTRY_BYTES)
    assert (store.first_index(), store.last_index()) == (1, index - 1)
    assert store.hard_state() == HardState(1, 1, index - 2)
    assert store.entries(1, index, 1 << 30) == accepted
    with pytest.raises(StorageFullError):
        store.write([refused])  # still full: refused again, still nothing applied
    assert store.load().entries == accepted
    # Free space: a snapshot through most of the log, and the log compacted below it.
    through = index - 3
    store.write([WriteBatch(snapshot=snapshot(through, 1), compact_through=through)])
    store.write([refused])
    harness.reopen()
    store = harness.store
    boot = store.load()
    assert boot.snapshot is not None and boot.snapshot.meta.last_index == through
    assert boot.entries == accepted[through:] + refused.entries
    assert boot.hard_state == refused.hard_state
