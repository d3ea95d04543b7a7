"""``LmdbStorage``: a node's log, hard state and snapshots in one LMDB environment.

Layout, as named databases of one environment (so one transaction covers them all)::

    log   key: index, 8 bytes big-endian                    value: record(msgpack [term, kind, data])
    meta  key: b"hard_state" | b"snapshot"                  value: record(msgpack hard state | meta)
    snap  key: snapshot index (8 bytes BE) + chunk (4 BE)   value: record(raw snapshot bytes)

Big-endian keys sort numerically, so cursor scans walk the log (and a snapshot's chunks) in order.
Every value is a *record*: a 4-byte big-endian CRC-32 then the payload. The CRC is computed over the
key followed by the payload, so a record found under the wrong key (a flipped key bit) fails its
check just like a damaged payload. Every read verifies it; a failure raises ``StorageCorruptError``
and never returns wrong data.

Threading: LMDB ties a write transaction to the OS thread that began it, and allows one write
transaction at a time. So every write (the constructor, :meth:`LmdbStorage.write`,
:meth:`~LmdbStorage.begin_snapshot` and the writer it returns, :meth:`~LmdbStorage.close`) must
begin and commit on one thread, and writes must not overlap; they need not all come from the same
thread (the node's writer thread does most, its event loop writes inline when that thread is
idle, and the two never overlap). Reads may run on any thread:
each takes its own short read transaction. Growing the map waits for in-flight reads to finish
because LMDB invalidates every open transaction when the map is resized.
"""

from __future__ import annotations

import errno
import os
import threading
import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeAlias, TypeVar

import lmdb

from trimaran import limits
from trimaran.errors import ProtocolError, StorageCorruptError, StorageError, StorageFullError
from trimaran.protocols.codec import (
    entry_from_wire,
    hard_state_from_wire,
    hard_state_to_wire,
    meta_from_wire,
    meta_to_wire,
    pack,
    unpack,
)
from trimaran.protocols.messages import Entry, HardState, Snapshot, SnapshotMeta
from trimaran.storage._shared import (
    LogView,
    apply_batch,
    apply_publish,
    check_snapshot,
    check_snapshot_bytes,
    slices,
    take_within_budget,
    verified_chunks,
)
from trimaran.storage.base import BootState, NodeStorage, SnapshotWriter, WriteBatch

_LOG_DB = b"log"
_META_DB = b"meta"
_SNAP_DB = b"snap"
_DBS_MAX = 3
_HARD_STATE_KEY = b"hard_state"
_SNAPSHOT_KEY = b"snapshot"
_CRC_BYTES = 4
_INDEX_BYTES = 8
_CHUNK_NO_BYTES = 4
#: Snapshot bytes are stored in pieces of at most this size: big enough that a multi-GiB snapshot is
#: a few thousand records, small enough that one piece never dominates a transaction.
_STORED_CHUNK_BYTES_MAX = 1 * limits.MIB

_T = TypeVar("_T")

if TYPE_CHECKING:
    # Subscriptable only in lmdb's type stubs: the runtime class is not generic.
    Txn: TypeAlias = lmdb.Transaction[bytes]


# --- records ------------------------------------------------------------------------------------


def _index_key(index: int) -> bytes:
    return index.to_bytes(_INDEX_BYTES, "big")


def _chunk_key(snapshot_index: int, chunk_no: int) -> bytes:
    return _index_key(snapshot_index) + chunk_no.to_bytes(_CHUNK_NO_BYTES, "big")


def _seal(key: bytes, payload: bytes) -> bytes:
    return zlib.crc32(payload, zlib.crc32(key)).to_bytes(_CRC_BYTES, "big") + payload


def _unseal(key: bytes, value: bytes, what: str) -> bytes:
    """The payload of a record, after checking its CRC; ``what`` names the record in the error."""
    payload = value[_CRC_BYTES:]
    if value[:_CRC_BYTES] != zlib.crc32(payload, zlib.crc32(key)).to_bytes(_CRC_BYTES, "big"):
        raise StorageCorruptError(f"{what}: CRC mismatch", record=what)
    return payload


def _decode(key: bytes, value: bytes, what: str, from_wire: Callable[[Any], _T]) -> _T:
    payload = _unseal(key, value, what)
    try:
        return from_wire(unpack(payload))
    except ProtocolError as exc:
        # A valid CRC over an undecodable payload means a bug wrote it; still never serve it.
        raise StorageCorruptError(f"{what}: undecodable ({exc})", record=what) from None


def _encode_entry(entry: Entry) -> bytes:
    return _seal(_index_key(entry.index), pack([entry.term, entry.kind, entry.data]))


def _decode_entry(key: bytes, value: bytes) -> Entry:
    if len(key) != _INDEX_BYTES:
        raise StorageCorruptError(f"log key {key.hex()} is not {_INDEX_BYTES} bytes", record="log")
    index = int.from_bytes(key, "big")

    def from_wire(v: Any) -> Entry:
        if type(v) is not list:
            raise ProtocolError("expected [term, kind, data]")
        # The index is the key, not part of the payload; the CRC covers both.
        return entry_from_wire([index, *v])

    return _decode(key, value, f"log entry {index}", from_wire)


class _ResizeGuard:
    """Readers share; a map resize excludes them (LMDB invalidates open transactions on resize)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def resizing(self) -> Iterator[None]:
        with self._cond:
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


# --- the store ----------------------------------------------------------------------------------


class LmdbStorage(NodeStorage):
    """A node's durable state in an LMDB environment at ``path`` (a directory, created if missing).

    The map starts at ``map_bytes_initial`` (or the size the file already has) and doubles on demand
    up to ``map_bytes_max``; past that, writes raise ``StorageFullError``. Opening reads the hard
    state, the snapshot pointer and the log's bounds, and raises ``StorageCorruptError`` if those
    fail their checks. Call every writing method from one thread (see the module docstring).
    """

    def __init__(
        self,
        path: str,
        map_bytes_initial: int = limits.storage_map_bytes_initial,
        map_bytes_max: int = limits.storage_map_bytes_max,
    ) -> None:
        assert 0 < map_bytes_initial <= map_bytes_max, "map_bytes_initial must be in (0, map_bytes_max]"
        os.makedirs(path, exist_ok=True)
        self._path = path
        # sync + metasync: a commit returns only once it is on disk. lock: readers on other threads.
        self._env = lmdb.open(
            path, map_size=map_bytes_initial, max_dbs=_DBS_MAX, sync=True, metasync=True, lock=True
        )
        self._log_db = self._env.open_db(_LOG_DB)
        self._meta_db = self._env.open_db(_META_DB)
        self._snap_db = self._env.open_db(_SNAP_DB)
        self._map_bytes_max = map_bytes_max
        # An existing file keeps the size it grew to, which may exceed what we asked for.
        self._map_bytes = self._env.info()["map_size"]
        self._guard = _ResizeGuard()
        try:
            self._view = self._read_view()
        except BaseException:
            # LMDB refuses a second open of one environment in a process; don't leak this one.
            self._env.close()
            raise

    # --- opening and booting ---

    @contextmanager
    def _read_txn(self) -> Iterator[Txn]:
        with self._guard.reading(), self._env.begin() as txn:
            yield txn

    def _read_hard_state(self, txn: Txn) -> HardState:
        value = txn.get(_HARD_STATE_KEY, db=self._meta_db)
        if value is None:
            return HardState()
        return _decode(_HARD_STATE_KEY, value, "hard state", hard_state_from_wire)

    def _read_snapshot_meta(self, txn: Txn) -> SnapshotMeta | None:
        value = txn.get(_SNAPSHOT_KEY, db=self._meta_db)
        if value is None:
            return None
        return _decode(_SNAPSHOT_KEY, value, "snapshot pointer", meta_from_wire)

    def _read_view(self) -> LogView:
        """The cached view, from disk: hard state, snapshot pointer, and the log's bounds."""
        with self._read_txn() as txn:
            view = LogView(snapshot=self._read_snapshot_meta(txn), hard_state=self._read_hard_state(txn))
            view.clear_log()
            cursor = txn.cursor(db=self._log_db)
            if cursor.first():
                view.first_index = int.from_bytes(cursor.key(), "big")
                cursor.last()
                view.last_index = int.from_bytes(cursor.key(), "big")
            count = txn.stat(self._log_db)["entries"]
        snapshot_index = view.snapshot_index
        contiguous = count == max(view.last_index - view.first_index + 1, 0)
        reaches = not count or view.first_index <= snapshot_index + 1 <= view.last_index + 1
        if not (contiguous and reaches):
            raise StorageCorruptError(
                f"log holds {count} records for indexes [{view.first_index}, {view.last_index}] "
                f"with snapshot {snapshot_index}: not one contiguous run reaching the snapshot"
            )
        return view

    def load(self) -> BootState:
        """Everything after the snapshot, in one read transaction, every record checked."""
        with self._read_txn() as txn:
            hard_state = self._read_hard_state(txn)
            meta = self._read_snapshot_meta(txn)
            snapshot = None
            if meta is not None:
                snapshot = Snapshot(meta, b"".join(self._stored_pieces(txn, meta)))
                check_snapshot(snapshot, "load")
            expected = (meta.last_index if meta is not None else 0) + 1
            entries: list[Entry] = []
            cursor = txn.cursor(db=self._log_db)
            if cursor.set_range(_index_key(expected)):
                for key, value in cursor.iternext():
                    if key != _index_key(expected):
                        raise StorageCorruptError(f"log entry {expected} is missing", record="log")
                    entries.append(_decode_entry(key, value))
                    expected += 1
        return BootState(hard_state=hard_state, snapshot=snapshot, entries=entries)

    # --- writing ---

    def _transact(self, body: Callable[[Txn, LogView], None]) -> None:
        """Run ``body`` in one write transaction on a copy of the view; publish the view on commit.

        On a full map the transaction is aborted (nothing applied), the map grows and ``body`` runs
        again from scratch; at ``map_bytes_max`` this raises ``StorageFullError`` instead. A full
        file system raises ``StorageFullError`` too (see :meth:`_check_disk_full`): LMDB aborts the
        transaction whose pages it could not write, so nothing of it is applied, the last commit
        stays intact, and the same write succeeds once space returns.
        """
        bumped = False
        while True:
            view = self._view.copy()
            txn = self._env.begin(write=True)
            try:
                body(txn, view)
                txn.commit()
            except lmdb.MapFullError:
                txn.abort()
                try:
                    self._grow_map()
                except StorageFullError:
                    if bumped or not self._bump():
                        raise
                    bumped = True
                continue
            except (lmdb.Error, OSError) as exc:
                txn.abort()
                try:
                    self._check_disk_full(exc)
                except StorageFullError:
                    if bumped or not self._bump():
                        raise
                    bumped = True
                    continue
                raise
            except BaseException:
                txn.abort()
                raise
            # One reference swap: readers on other threads see the old view or the new one.
            self._view = view
            return

    def _grow_map(self) -> None:
        if self._map_bytes >= self._map_bytes_max:
            raise StorageFullError(
                f"the store is at its cap of {self._map_bytes_max} bytes",
                reason="map_full",
                map_bytes_max=self._map_bytes_max,
            )
        map_bytes = min(self._map_bytes * 2, self._map_bytes_max)
        with self._guard.resizing():
            self._env.set_mapsize(map_bytes)
        self._map_bytes = map_bytes

    def _bump(self) -> bool:
        """Commit a transaction that changes nothing a reader sees (it rewrites the hard state); True
        if it committed.

        LMDB reuses the pages a commit freed only from the commit after next (the one in between
        may still need the old tree), and a refused transaction commits nothing. So after a
        compaction the next write might be refused although the space is there; once full, this
        commit makes the freed pages usable and the write is tried once more. It needs a page or
        two, which the refused transaction has just given back.
        """
        txn = self._env.begin(write=True)
        try:
            _LmdbSink(self, txn).put_hard_state(self._view.hard_state)
            txn.commit()
        except (lmdb.Error, OSError):
            txn.abort()
            return False
        return True

    def _check_disk_full(self, exc: BaseException) -> None:
        """Raise ``StorageFullError`` if ``exc`` (from a write transaction) means the file system is
        full; return (the caller re-raises ``exc``, a fatal storage error) otherwise.

        LMDB reports ENOSPC as ``DiskError``; a write that fits only in part (the last free blocks)
        comes back as a bare ``lmdb.Error`` for EIO ("Input/output error"). An EIO on a disk with
        room left is a failing device, not a full one, so it is told apart by the free space now.
        LMDB's own fatal states (``PanicError``, corruption) are subclasses and never count: retrying
        them would spin on a store that cannot recover without a restart.
        """
        if isinstance(exc, OSError):
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        elif isinstance(exc, lmdb.DiskError):
            full = True
        else:
            full = type(exc) is lmdb.Error and self.free_bytes() < limits.storage_disk_full_free_bytes_max
        if full:
            raise StorageFullError(
                f"the file system holding {self._path} is full ({exc}); writes are refused until space is freed",
                reason="disk_full",
                free_bytes=self.free_bytes(),
            ) from exc

    def free_bytes(self) -> int:
        """Bytes the file system holding the store still gives an unprivileged writer (statvfs)."""
        stat = os.statvfs(self._path)
        return stat.f_bavail * stat.f_frsize

    def space(self) -> tuple[int, int]:
        """(free, size) in bytes: room left for records before a write is refused, and the size of
        whichever bound is tighter, the map cap or the file system. Any thread.

        Free is the lesser of the map's room (``map_bytes_max`` less the pages in use) and the
        file system's (its free bytes plus the pages of the data file LMDB can reuse). Approximate
        (page granularity, the transaction's own copy-on-write pages), but never counts freed
        pages as used, so a compacted log gives its room back.
        """
        with self._read_txn() as txn:
            pages = 2  # the two meta pages
            for db in (None, self._log_db, self._meta_db, self._snap_db):
                stat = txn.stat(db) if db is not None else txn.stat()
                pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        page_bytes = self._env.stat()["psize"]
        used_bytes = pages * page_bytes
        fs = os.statvfs(self._path)
        try:
            file_bytes = os.stat(os.path.join(self._path, "data.mdb")).st_size
        except OSError:
            file_bytes = used_bytes
        disk_free = fs.f_bavail * fs.f_frsize + max(0, file_bytes - used_bytes)
        map_free = max(0, self._map_bytes_max - used_bytes)
        return min(disk_free, map_free), min(fs.f_blocks * fs.f_frsize, self._map_bytes_max)

    def write(self, batches: Sequence[WriteBatch]) -> None:
        """Apply the batches in one transaction with one fsync (group commit); one write at a time."""
        # Checked before the transaction so a damaged snapshot costs no disk work.
        for batch in batches:
            if batch.snapshot is not None:
                check_snapshot(batch.snapshot, "write")
        if all(batch.is_empty() for batch in batches):
            return

        def body(txn: Txn, view: LogView) -> None:
            sink = _LmdbSink(self, txn)
            for batch in batches:
                apply_batch(view, batch, sink)

        self._transact(body)

    # --- reading ---

    def first_index(self) -> int:
        return self._view.first_index

    def last_index(self) -> int:
        return self._view.last_index

    def term_at(self, index: int) -> int | None:
        view = self._view
        term = view.snapshot_term(index)
        if term is not None or not view.holds(index):
            return term
        key = _index_key(index)
        with self._read_txn() as txn:
            value = txn.get(key, db=self._log_db)
        if value is None:
            assert self._view.holds(index), f"entry {index} was dropped while being read"
            raise StorageCorruptError(f"log entry {index} is missing", record="log")
        return _decode_entry(key, value).term

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        """Entries in [lo, hi) (which must lie within the log), up to ``bytes_max`` by
        :meth:`Entry.size_bytes`; always the first one if the range is not empty."""
        self._view.assert_range(lo, hi)
        if lo == hi:
            return []
        with self._read_txn() as txn:
            return take_within_budget(self._scan(txn, lo, hi), bytes_max)

    def _scan(self, txn: Txn, lo: int, hi: int) -> Iterator[Entry]:
        """Decode entries lo, lo+1, ... hi-1 lazily, raising if one is missing."""
        expected = lo
        cursor = txn.cursor(db=self._log_db)
        if cursor.set_range(_index_key(lo)):
            for key, value in cursor.iternext():
                if key != _index_key(expected):
                    break
                yield _decode_entry(key, value)
                expected += 1
                if expected == hi:
                    return
        assert self._view.holds(expected), f"entry {expected} was dropped while being read"
        raise StorageCorruptError(f"log entry {expected} is missing", record="log")

    def hard_state(self) -> HardState:
        return self._view.hard_state

    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._view.snapshot

    def snapshot_chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The latest snapshot in chunks of exactly ``chunk_bytes`` (the last may be shorter).

        Each stored piece is read in its own short transaction, so a slow consumer never holds
        LMDB pages. If a newer snapshot is published meanwhile (and the old one's pieces deleted),
        this raises ``StorageError``; the caller starts again from the new one.
        """
        meta = self._view.snapshot
        if meta is None:
            return iter(())
        return verified_chunks(self._stored_pieces(None, meta), chunk_bytes, meta, "snapshot_chunks")

    def _stored_pieces(self, txn: Txn | None, meta: SnapshotMeta) -> Iterator[bytes]:
        """The snapshot's stored pieces, CRC-checked, read in ``txn`` or one short txn per piece."""
        chunk_no = 0
        while True:
            key = _chunk_key(meta.last_index, chunk_no)
            if txn is not None:
                value = txn.get(key, db=self._snap_db)
            else:
                with self._read_txn() as piece_txn:
                    value = piece_txn.get(key, db=self._snap_db)
                    current = self._read_snapshot_meta(piece_txn) if value is None else meta
                if current is None or current.last_index != meta.last_index:
                    raise StorageError(f"snapshot {meta.last_index} was replaced while being read")
            if value is None:
                return
            yield _unseal(key, value, f"snapshot {meta.last_index} chunk {chunk_no}")
            chunk_no += 1

    def begin_snapshot(self, meta: SnapshotMeta) -> SnapshotWriter:
        """A writer that stores chunks under ``meta.last_index`` (one write at a time)."""
        assert meta.last_index > self._view.snapshot_index, "a snapshot must be newer than the latest"
        # Pieces left by a writer that crashed or was abandoned at this index would otherwise be
        # read back as the tail of this snapshot.
        self._transact(lambda txn, view: _LmdbSink(self, txn).delete_chunks(meta.last_index))
        return _LmdbSnapshotWriter(self, meta)

    def close(self) -> None:
        self._env.close()


class _LmdbSink:
    """The primitive changes of a batch, made in one LMDB write transaction."""

    def __init__(self, store: LmdbStorage, txn: Txn) -> None:
        self._store = store
        self._txn = txn

    def put_snapshot(self, snapshot: Snapshot) -> None:
        index = snapshot.meta.last_index
        self.delete_chunks(index)
        self.put_chunks(index, 0, snapshot.data)
        self.point_snapshot(snapshot.meta)

    def put_chunks(self, snapshot_index: int, chunk_no: int, data: bytes) -> int:
        """Store ``data`` as pieces numbered from ``chunk_no``; return the next free number."""
        for piece in slices(data, _STORED_CHUNK_BYTES_MAX):
            key = _chunk_key(snapshot_index, chunk_no)
            self._txn.put(key, _seal(key, piece), db=self._store._snap_db)
            chunk_no += 1
        return chunk_no

    def point_snapshot(self, meta: SnapshotMeta) -> None:
        """Make ``meta`` the latest snapshot and drop the pieces of every older one."""
        self._txn.put(_SNAPSHOT_KEY, _seal(_SNAPSHOT_KEY, pack(meta_to_wire(meta))), db=self._store._meta_db)
        cursor = self._txn.cursor(db=self._store._snap_db)
        bound = _index_key(meta.last_index)
        while cursor.first() and cursor.key()[:_INDEX_BYTES] < bound:
            cursor.delete()

    def delete_chunks(self, snapshot_index: int) -> None:
        cursor = self._txn.cursor(db=self._store._snap_db)
        prefix = _index_key(snapshot_index)
        if cursor.set_range(prefix):
            while cursor.key()[:_INDEX_BYTES] == prefix:
                cursor.delete()

    def delete_log(self, lo: int, hi: int) -> None:
        cursor = self._txn.cursor(db=self._store._log_db)
        hi_key = _index_key(hi)
        if cursor.set_range(_index_key(lo)):
            # delete() moves to the next record; key() is b"" once past the last one.
            while cursor.key() and cursor.key() <= hi_key:
                cursor.delete()

    def append_log(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            # append=True: the fast path for keys above the last one (the view asserted that).
            self._txn.put(_index_key(entry.index), _encode_entry(entry), append=True, db=self._store._log_db)

    def put_hard_state(self, hard_state: HardState) -> None:
        payload = pack(hard_state_to_wire(hard_state))
        self._txn.put(_HARD_STATE_KEY, _seal(_HARD_STATE_KEY, payload), db=self._store._meta_db)


class _LmdbSnapshotWriter(SnapshotWriter):
    """Stores a snapshot's chunks, one transaction each, invisible to readers until published."""

    def __init__(self, store: LmdbStorage, meta: SnapshotMeta) -> None:
        self._store = store
        self._meta = meta
        self._chunk_no = 0
        self._size_bytes = 0
        self._checksum = 0
        self._done = False

    def write(self, chunk: bytes) -> None:
        assert not self._done, "snapshot writer already published or aborted"
        index = self._meta.last_index
        chunk_no = self._chunk_no

        def body(txn: Txn, view: LogView) -> None:
            self._chunk_no = _LmdbSink(self._store, txn).put_chunks(index, chunk_no, chunk)

        self._store._transact(body)
        self._size_bytes += len(chunk)
        self._checksum = zlib.crc32(chunk, self._checksum)

    def publish(self, compact_through: int = 0) -> None:
        """Raises ``StorageCorruptError`` (and discards the chunks) if the bytes written do not
        match the meta's size and CRC-32: they usually came from the network, so that is damaged
        input rather than a programmer error."""
        assert not self._done, "snapshot writer already published or aborted"
        try:
            check_snapshot_bytes(self._meta, self._size_bytes, self._checksum, "publish")
        except StorageCorruptError:
            self.abort()
            raise
        meta = self._meta

        def body(txn: Txn, view: LogView) -> None:
            sink = _LmdbSink(self._store, txn)
            apply_publish(view, meta, compact_through, sink)
            sink.point_snapshot(meta)

        # Marked done only on success: after a StorageFullError the caller may compact and retry.
        self._store._transact(body)
        self._done = True

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        index = self._meta.last_index
        self._store._transact(lambda txn, view: _LmdbSink(self._store, txn).delete_chunks(index))
