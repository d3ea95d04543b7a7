"""LmdbStorage beyond the shared contract: records damaged on disk, a full map, reader threads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import lmdb
import pytest

from tests.small_fs import small_filesystem
from tests.storage.helpers import MAP_BYTES_INITIAL, entries, entry, snapshot
from trimaran import limits
from trimaran.errors import StorageCorruptError, StorageFullError
from trimaran.protocols.messages import HardState
from trimaran.storage import LmdbStorage, WriteBatch
from trimaran.storage.lmdb_store import _chunk_key, _index_key, _seal


def tamper(path: Path, db_name: bytes, change: Callable[[lmdb.Transaction[bytes]], object]) -> None:
    """Change the closed store's files through a raw LMDB handle, as bit rot or a bug would."""
    env = lmdb.open(str(path), max_dbs=3)
    db = env.open_db(db_name)
    with env.begin(write=True, db=db) as txn:
        change(txn)
    env.close()


def flip_byte(key: bytes, offset: int = -1) -> Callable[[lmdb.Transaction[bytes]], None]:
    def change(txn: lmdb.Transaction[bytes]) -> None:
        value = bytearray(txn.get(key, b""))
        value[offset] ^= 0x01
        txn.put(key, bytes(value))

    return change


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "node"


def test_a_flipped_entry_byte_is_caught_on_every_read(path: Path) -> None:
    store = LmdbStorage(str(path))
    store.write([WriteBatch(entries=entries(1, 6, term=2))])
    store.close()
    tamper(path, b"log", flip_byte(_index_key(3)))
    store = LmdbStorage(str(path))  # bounds come from keys alone, so opening works
    with pytest.raises(StorageCorruptError, match="log entry 3"):
        store.load()
    with pytest.raises(StorageCorruptError):
        store.entries(2, 5, 1 << 20)
    with pytest.raises(StorageCorruptError):
        store.term_at(3)
    assert store.entries(4, 6, 1 << 20) == entries(4, 6, term=2)
    # Rewriting the record repairs it.
    store.write([WriteBatch(truncate_from=3, entries=entries(3, 6, term=3))])
    assert store.load().entries == entries(1, 3, term=2) + entries(3, 6, term=3)
    store.close()


def test_a_record_under_the_wrong_key_is_caught(path: Path) -> None:
    store = LmdbStorage(str(path))
    store.write([WriteBatch(entries=[entry(1, 1), entry(2, 1, b"same"), entry(3, 1, b"same")])])
    store.close()

    def swap(txn: lmdb.Transaction[bytes]) -> None:
        txn.put(_index_key(2), txn.get(_index_key(3), b""))

    # The payloads are equal; only the key, which the CRC covers, tells the records apart.
    tamper(path, b"log", swap)
    store = LmdbStorage(str(path))
    with pytest.raises(StorageCorruptError, match="log entry 2"):
        store.load()
    store.close()


def test_an_undecodable_payload_with_a_valid_crc_is_caught(path: Path) -> None:
    store = LmdbStorage(str(path))
    store.write([WriteBatch(entries=entries(1, 3, term=1))])
    store.close()
    tamper(path, b"log", lambda txn: txn.put(_index_key(2), _seal(_index_key(2), b"\xc1")))
    store = LmdbStorage(str(path))
    with pytest.raises(StorageCorruptError, match="undecodable"):
        store.load()
    store.close()


def test_a_flipped_snapshot_byte_is_caught(path: Path) -> None:
    store = LmdbStorage(str(path))
    snap = snapshot(4, 1, b"s" * 5000)
    store.write([WriteBatch(entries=entries(1, 6, term=1)), WriteBatch(snapshot=snap)])
    store.close()
    tamper(path, b"snap", flip_byte(_chunk_key(4, 0), offset=100))
    store = LmdbStorage(str(path))
    with pytest.raises(StorageCorruptError, match="snapshot 4 chunk 0"):
        store.load()
    with pytest.raises(StorageCorruptError):
        list(store.snapshot_chunks(1000))
    store.close()


def test_a_missing_snapshot_chunk_is_caught(path: Path) -> None:
    store = LmdbStorage(str(path))
    data = bytes(range(256)) * 8192  # 2 MiB: two stored pieces
    store.write([WriteBatch(entries=entries(1, 6, term=1)), WriteBatch(snapshot=snapshot(4, 1, data))])
    store.close()
    tamper(path, b"snap", lambda txn: txn.delete(_chunk_key(4, 1)))
    store = LmdbStorage(str(path))
    with pytest.raises(StorageCorruptError, match="snapshot 4"):
        list(store.snapshot_chunks(1 << 16))
    store.close()


def test_damaged_hard_state_refuses_to_open(path: Path) -> None:
    store = LmdbStorage(str(path))
    store.write([WriteBatch(hard_state=HardState(4, 2, 0))])
    store.close()
    tamper(path, b"meta", flip_byte(b"hard_state"))
    with pytest.raises(StorageCorruptError, match="hard state"):
        LmdbStorage(str(path))
    # The failed open released the environment: it can be opened again (and fails the same way).
    with pytest.raises(StorageCorruptError, match="hard state"):
        LmdbStorage(str(path))


def test_a_gap_in_the_log_refuses_to_open(path: Path) -> None:
    store = LmdbStorage(str(path))
    store.write([WriteBatch(entries=entries(1, 6, term=1))])
    store.close()
    tamper(path, b"log", lambda txn: txn.delete(_index_key(3)))
    with pytest.raises(StorageCorruptError, match="contiguous"):
        LmdbStorage(str(path))


def test_a_full_map_grows_then_refuses_with_nothing_applied(path: Path) -> None:
    map_bytes_max = 4 * MAP_BYTES_INITIAL
    store = LmdbStorage(str(path), map_bytes_initial=MAP_BYTES_INITIAL, map_bytes_max=map_bytes_max)
    store.write([WriteBatch(entries=entries(1, 6, term=1, size_bytes=60_000))])  # ~300 KB: grows once
    assert store._env.info()["map_size"] == 2 * MAP_BYTES_INITIAL
    too_big = WriteBatch(entries=entries(6, 30, term=1, size_bytes=60_000), hard_state=HardState(1, 1))
    with pytest.raises(StorageFullError):
        store.write([too_big])
    assert store._env.info()["map_size"] == map_bytes_max
    assert store.last_index() == 5 and store.hard_state() == HardState()
    assert store.entries(1, 6, 1 << 30) == entries(1, 6, term=1, size_bytes=60_000)
    # The store stays usable: a small write, then a restart, then a snapshot writer at the cap.
    store.write([WriteBatch(entries=[entry(6, 1)], hard_state=HardState(1, 1))])
    store.close()
    store = LmdbStorage(str(path), map_bytes_initial=MAP_BYTES_INITIAL, map_bytes_max=map_bytes_max)
    assert store.load().entries == entries(1, 6, term=1, size_bytes=60_000) + [entry(6, 1)]
    writer = store.begin_snapshot(snapshot(5, 1, b"").meta)
    with pytest.raises(StorageFullError):
        writer.write(b"x" * (2 * map_bytes_max))
    writer.abort()
    store.close()


def test_reads_on_other_threads_survive_map_growth(path: Path) -> None:
    store = LmdbStorage(str(path), map_bytes_initial=MAP_BYTES_INITIAL)
    store.write([WriteBatch(entries=[entry(1, 1)])])
    failures: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                last = store.last_index()
                assert len(store.entries(1, last + 1, 1 << 30)) == last
        except BaseException as exc:
            failures.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for index in range(2, 42):  # ~2.4 MB: the map doubles several times under the reader
            store.write([WriteBatch(entries=[entry(index, 1, b"r" * 60_000)])])
    finally:
        done.set()
        reader.join()
    assert store._env.info()["map_size"] > 4 * MAP_BYTES_INITIAL
    assert failures == []
    store.close()


# ---------------------------------------------------------------------------- a full file system

_FS_BYTES = 2 * 1024 * 1024
_FS_ENTRY_BYTES = 64 * 1024
_FS_WRITES_MAX = 200


def test_a_full_file_system_refuses_with_nothing_applied_then_recovers(tmp_path: Path) -> None:
    """Issue 16 item 7: on a full tmpfs, mdb_txn_commit fails with EIO (a write that fits in part)
    or ENOSPC; both must be a StorageFullError with the store intact, not a fatal lmdb.Error.
    Without permission to mount, the same walk goes through a map capped at the same size."""
    with small_filesystem(tmp_path / "fs", _FS_BYTES) as fs:
        store_path = fs.path / "node"
        cap = fs.map_bytes_max or limits.storage_map_bytes_max

        def open_store() -> LmdbStorage:
            return LmdbStorage(str(store_path), map_bytes_initial=min(MAP_BYTES_INITIAL, cap), map_bytes_max=cap)

        store = open_store()
        try:
            refused = None
            for index in range(1, _FS_WRITES_MAX):
                batch = WriteBatch(entries=[entry(index, 1, bytes([index % 251]) * _FS_ENTRY_BYTES)], hard_state=HardState(1, 1, index))
                try:
                    store.write([batch])
                except StorageFullError as exc:
                    refused = (batch, exc)
                    break
            assert refused is not None, "the small file system never filled"
            batch, exc = refused
            assert exc.details["reason"] == ("disk_full" if fs.mounted else "map_full"), exc
            last = batch.entries[0].index - 1
            accepted = [entry(i, 1, bytes([i % 251]) * _FS_ENTRY_BYTES) for i in range(1, last + 1)]
            assert store.last_index() == last and store.hard_state() == HardState(1, 1, last)
            assert store.entries(1, last + 1, 1 << 30) == accepted
            assert store.space()[0] < _FS_ENTRY_BYTES * 2  # the driver's reserve check sees it
            with pytest.raises(StorageFullError):
                store.write([batch])  # still full: refused again, the store still intact
            if fs.mounted:
                fs.grow(2 * _FS_BYTES)  # space returns without a restart
            else:
                store.close()  # a capped map grows only when reopened with a larger cap
                cap *= 2
                store = open_store()
            store.write([batch])
            store.close()
            store = open_store()
            boot = store.load()
            assert boot.entries == accepted + batch.entries and boot.hard_state == batch.hard_state
        finally:
            store.close()


def test_an_io_error_with_room_on_the_disk_stays_fatal(path: Path) -> None:
    """EIO on a disk with free space is a failing device: not retried as "full"; nor is an LMDB
    panic, which no retry can clear."""
    store = LmdbStorage(str(path), map_bytes_initial=MAP_BYTES_INITIAL)
    try:
        for error in (lmdb.Error("mdb_txn_commit: Input/output error"), lmdb.PanicError("panic")):

            def fail(txn: object, view: object, error: Exception = error) -> None:
                raise error

            with pytest.raises(type(error)):
                store._transact(fail)
        store.write([WriteBatch(entries=[entry(1, 1)])])  # nothing of the failed ones applied
        assert store.load().entries == [entry(1, 1)]
    finally:
        store.close()
