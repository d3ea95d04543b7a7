"""MemoryStorage beyond the shared contract: crashes, torn writes, rot and a full disk."""

from __future__ import annotations

import pytest

from tests.storage.helpers import entries, entry, meta_for, snapshot
from trimaran.errors import StorageCorruptError, StorageFullError
from trimaran.protocols.messages import HardState
from trimaran.storage import MemoryStorage, WriteBatch


@pytest.fixture
def store() -> MemoryStorage:
    store = MemoryStorage()
    store.write([WriteBatch(entries=entries(1, 4, term=1), hard_state=HardState(1, 1, 0))])
    return store


def test_unsynced_writes_are_visible_then_lost_on_crash(store: MemoryStorage) -> None:
    store.write([WriteBatch(entries=entries(4, 8, term=2), hard_state=HardState(2, 3, 3))], sync=False)
    assert store.last_index() == 7 and store.hard_state() == HardState(2, 3, 3)
    store.crash()
    assert store.last_index() == 3 and store.hard_state() == HardState(1, 1, 0)
    assert store.load().entries == entries(1, 4, term=1)


def test_sync_makes_writes_durable(store: MemoryStorage) -> None:
    store.write([WriteBatch(entries=entries(4, 6, term=2))], sync=False)
    store.write([WriteBatch(truncate_from=5, entries=[entry(5, 3)])], sync=False)
    store.sync()
    store.write([WriteBatch(entries=[entry(6, 3)])], sync=False)
    store.crash()
    assert store.load().entries == entries(1, 4, term=1) + [entry(4, 2), entry(5, 3)]


def test_a_torn_write_leaves_a_valid_prefix_without_its_hard_state(store: MemoryStorage) -> None:
    store.write(
        [
            WriteBatch(truncate_from=3, entries=entries(3, 8, term=2), hard_state=HardState(2, 2, 2)),
            WriteBatch(entries=entries(8, 10, term=2)),
        ],
        sync=False,
    )
    store.crash(torn=True)
    # The first unsynced batch lands as truncate + the first 5 // 2 = 2 of its entries; the
    # second batch and the first one's hard state are lost.
    assert store.load().entries == entries(1, 3, term=1) + entries(3, 5, term=2)
    assert (store.first_index(), store.last_index()) == (1, 4)
    assert store.hard_state() == HardState(1, 1, 0)
    # The torn result is durable and the store accepts the next append.
    store.write([WriteBatch(entries=[entry(5, 2)])])
    store.crash()
    assert store.last_index() == 5


def test_a_torn_snapshot_install_stays_valid(store: MemoryStorage) -> None:
    snap = snapshot(10, 3)
    store.write([WriteBatch(snapshot=snap, truncate_from=1, entries=entries(11, 14, term=3))], sync=False)
    store.crash(torn=True)
    boot = store.load()
    assert boot.snapshot == snap
    assert boot.entries == [entry(11, 3)]
    assert (store.first_index(), store.last_index()) == (11, 11)


def test_a_torn_crash_with_nothing_unsynced_changes_nothing(store: MemoryStorage) -> None:
    store.crash(torn=True)
    assert store.load().entries == entries(1, 4, term=1)


def test_a_rotten_entry_fails_every_read_that_touches_it(store: MemoryStorage) -> None:
    store.corrupt_entry(2)
    with pytest.raises(StorageCorruptError, match="log entry 2"):
        store.load()
    with pytest.raises(StorageCorruptError):
        store.entries(1, 3, 1 << 20)
    with pytest.raises(StorageCorruptError):
        store.term_at(2)
    assert store.entries(3, 4, 1 << 20) == [entry(3, 1)]
    assert store.term_at(1) == 1
    # Rewriting the record replaces the rotten one.
    store.write([WriteBatch(truncate_from=2, entries=entries(2, 4, term=2))])
    store.crash()
    assert store.load().entries == [entry(1, 1)] + entries(2, 4, term=2)


def test_rot_under_an_unsynced_rewrite_surfaces_after_the_crash(store: MemoryStorage) -> None:
    store.write([WriteBatch(truncate_from=3, entries=[entry(3, 2)])], sync=False)
    store.corrupt_entry(3)
    assert store.term_at(3) == 2  # reads see the new record
    store.crash()
    with pytest.raises(StorageCorruptError):
        store.term_at(3)


def test_a_rotten_snapshot_fails_to_load(store: MemoryStorage) -> None:
    store.write([WriteBatch(snapshot=snapshot(2, 1), compact_through=2)])
    store.corrupt_snapshot()
    with pytest.raises(StorageCorruptError):
        store.load()
    with pytest.raises(StorageCorruptError):
        list(store.snapshot_chunks(16))


def test_a_full_disk_refuses_writes_with_nothing_applied() -> None:
    store = MemoryStorage(size_bytes_max=1000)
    store.write([WriteBatch(entries=entries(1, 8, term=1, size_bytes=76))])  # 700 bytes
    with pytest.raises(StorageFullError):
        too_much = entries(8, 12, term=1, size_bytes=76)
        store.write([WriteBatch(entries=too_much), WriteBatch(hard_state=HardState(1))])
    assert store.last_index() == 7 and store.hard_state() == HardState()
    assert store.size_bytes() == 700
    # A write that frees space as it goes fits even though its new bytes alone look too many.
    store.write(
        [
            WriteBatch(snapshot=snapshot(6, 1, b"s" * 100), compact_through=6),
            WriteBatch(entries=entries(8, 11, term=1, size_bytes=76)),
        ]
    )
    assert (store.first_index(), store.last_index(), store.size_bytes()) == (7, 10, 500)


def test_publish_makes_earlier_unsynced_writes_durable(store: MemoryStorage) -> None:
    store.write([WriteBatch(entries=entries(4, 6, term=1))], sync=False)
    writer = store.begin_snapshot(meta_for(5, 1, b"snap"))
    writer.write(b"snap")
    writer.publish(compact_through=5)
    store.crash()
    assert (store.first_index(), store.last_index()) == (6, 5)
    assert store.load().snapshot is not None


def test_a_snapshot_writer_does_not_survive_a_crash(store: MemoryStorage) -> None:
    writer = store.begin_snapshot(meta_for(2, 1, b"snap"))
    writer.write(b"snap")
    store.crash()
    with pytest.raises(AssertionError):
        writer.publish()
