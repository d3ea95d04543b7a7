"""``MemoryStorage``: the simulator's in-memory twin of ``LmdbStorage``, with simulated crashes.

It honours the same contract (the same contract tests run against both) and adds what a
deterministic simulator needs to inject disk faults. It has no clock and no randomness: every
choice (when to sync, whether a crash tears a write, which record rots) is passed in.

Two copies of the contents are kept: the *visible* one, which every read sees, and the *durable*
one, which is what survives :meth:`MemoryStorage.crash`. ``write(batches, sync=False)`` changes
only the visible copy and remembers the batches; :meth:`~MemoryStorage.sync` applies them to the
durable copy. Like a real disk, durability is in order: publishing a snapshot syncs first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from trimaran.errors import StorageCorruptError, StorageError, StorageFullError
from trimaran.protocols.messages import Entry, HardState, Snapshot, SnapshotMeta
from trimaran.storage._shared import (
    LogView,
    apply_batch,
    apply_publish,
    check_snapshot,
    copy_batch,
    slices,
    take_within_budget,
    verified_chunks,
)
from trimaran.storage.base import BootState, NodeStorage, SnapshotWriter, WriteBatch


@dataclass(slots=True)
class _Disk:
    """One copy of a store's contents; also the sink :func:`apply_batch` changes it through."""

    view: LogView = field(default_factory=LogView)
    #: log[i].index == view.first_index + i.
    log: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    snapshot_corrupt: bool = False
    #: Indexes of log records marked corrupt.
    corrupt: set[int] = field(default_factory=set)
    #: Entries by Entry.size_bytes() plus snapshot bytes: what the size cap counts.
    size_bytes: int = 0

    def copy(self) -> _Disk:
        return _Disk(
            self.view.copy(),
            list(self.log),
            self.snapshot,
            self.snapshot_corrupt,
            set(self.corrupt),
            self.size_bytes,
        )

    def entry(self, index: int) -> Entry:
        """The entry at ``index`` (which the log holds), unless it is marked corrupt."""
        if index in self.corrupt:
            raise StorageCorruptError(f"log entry {index}: CRC mismatch", record=f"log entry {index}")
        return self.log[index - self.view.first_index]

    def put_snapshot(self, snapshot: Snapshot) -> None:
        old_bytes = len(self.snapshot.data) if self.snapshot is not None else 0
        self.size_bytes += len(snapshot.data) - old_bytes
        self.snapshot = snapshot
        self.snapshot_corrupt = False

    def delete_log(self, lo: int, hi: int) -> None:
        # Called before the view's bounds move, so the view still locates log[0].
        start = lo - self.view.first_index
        stop = hi - self.view.first_index + 1
        self.size_bytes -= sum(entry.size_bytes() for entry in self.log[start:stop])
        del self.log[start:stop]
        if self.corrupt:
            # A deleted record takes its corruption with it; a rewrite is a fresh record.
            self.corrupt = {index for index in self.corrupt if not lo <= index <= hi}

    def append_log(self, entries: Sequence[Entry]) -> None:
        self.log.extend(entries)
        self.size_bytes += sum(entry.size_bytes() for entry in entries)

    def put_hard_state(self, hard_state: HardState) -> None:
        pass  # The view holds it.


def _torn(batch: WriteBatch) -> WriteBatch:
    """The part of ``batch`` a torn write leaves: everything up to half its entries (rounded
    down), in the documented order, so neither compaction nor the hard state lands."""
    return WriteBatch(
        snapshot=batch.snapshot,
        truncate_from=batch.truncate_from,
        entries=batch.entries[: len(batch.entries) // 2],
    )


class MemoryStorage(NodeStorage):
    """The in-memory twin. ``size_bytes_max`` (None: unbounded) models a full disk: a write that
    would take the contents over it raises ``StorageFullError`` with nothing applied."""

    def __init__(self, size_bytes_max: int | None = None) -> None:
        self.size_bytes_max = size_bytes_max
        self._durable = _Disk()
        self._visible = _Disk()
        #: Batches applied to the visible copy but not yet to the durable one, oldest first.
        self._unsynced: list[WriteBatch] = []
        #: Counts crashes, so a snapshot writer from before a crash cannot publish after it.
        self._epoch = 0
        self._closed = False

    # --- writing and crashing ---

    def write(self, batches: Sequence[WriteBatch], sync: bool = True) -> None:
        """Apply the batches in order, all or nothing; durable now if ``sync``, else at the next
        :meth:`sync` (and lost, or torn, by a :meth:`crash` before it)."""
        assert not self._closed, "the store is closed"
        for batch in batches:
            if batch.snapshot is not None:
                check_snapshot(batch.snapshot, "write")
        copies = [copy_batch(batch) for batch in batches if not batch.is_empty()]
        if copies:
            added_bytes = sum(
                sum(entry.size_bytes() for entry in batch.entries)
                + (len(batch.snapshot.data) if batch.snapshot is not None else 0)
                for batch in copies
            )

            def change(disk: _Disk) -> None:
                for batch in copies:
                    apply_batch(disk.view, batch, disk)

            self._change_visible(change, added_bytes)
            self._unsynced.extend(copies)
        if sync:
            self.sync()

    def _change_visible(self, change: Callable[[_Disk], None], added_bytes: int) -> None:
        """Apply ``change`` to the visible copy, all or nothing against the size cap."""
        cap = self.size_bytes_max
        # Deletions only shrink the contents, so below this bound no check (and no copy) is needed.
        if cap is None or self._visible.size_bytes + added_bytes <= cap:
            change(self._visible)
            return
        staged = self._visible.copy()
        change(staged)
        if staged.size_bytes > cap:
            raise StorageFullError(
                f"{staged.size_bytes} bytes would exceed the cap of {cap}", size_bytes_max=cap
            )
        self._visible = staged

    # ------------------------------------------------------------------ what a crash would keep
    # Read-only views for checkers (the simulator's protocol rules): the state that survives a
    # crash now, whatever is visible to the node.

    def durable_hard_state(self) -> HardState:
        """The hard state as it is on disk (synced)."""
        return self._durable.view.hard_state

    def durable_term_at(self, index: int) -> int | None:
        """The term of the synced entry at ``index``; 0 if a synced snapshot covers it (or
        ``index`` <= 0); None if the synced log does not hold it."""
        view = self._durable.view
        if index <= 0 or (view.snapshot is not None and index <= view.snapshot.last_index):
            return 0
        if view.first_index <= index <= view.last_index:
            return self._durable.log[index - view.first_index].term
        return None

    def sync(self) -> None:
        """Make everything written so far durable."""
        for batch in self._unsynced:
            apply_batch(self._durable.view, batch, self._durable)
        self._unsynced.clear()

    def crash(self, torn: bool = False) -> None:
        """Lose every unsynced write: the visible contents revert to the durable ones.

        With ``torn``, the first unsynced non-empty batch (if any) lands partially, as a torn
        write would: its snapshot and truncation, then the first half (rounded down) of its
        entries, and nothing after (no compaction, no hard state). The store stays valid either
        way, because a batch's log must already reach its snapshot after the truncation step.
        """
        if torn and self._unsynced:
            apply_batch(self._durable.view, _torn(self._unsynced[0]), self._durable)
        self._unsynced.clear()
        self._visible = self._durable.copy()
        self._epoch += 1

    def corrupt_entry(self, index: int) -> None:
        """Rot the durable record of entry ``index``: any read touching it raises
        ``StorageCorruptError``, as LMDB's CRC check would (until it is deleted or rewritten)."""
        assert self._durable.view.holds(index), f"entry {index} is not durable"
        self._durable.corrupt.add(index)
        durable_entry = self._durable.log[index - self._durable.view.first_index]
        visible = self._visible
        # Only if reads still see that very record, not an unsynced rewrite of the index.
        if visible.view.holds(index) and visible.log[index - visible.view.first_index] is durable_entry:
            visible.corrupt.add(index)

    def corrupt_snapshot(self) -> None:
        """Rot the durable snapshot's bytes: loading or reading them raises ``StorageCorruptError``."""
        assert self._durable.snapshot is not None, "no durable snapshot"
        self._durable.snapshot_corrupt = True
        if self._visible.snapshot is self._durable.snapshot:
            self._visible.snapshot_corrupt = True

    def size_bytes(self) -> int:
        """What the size cap counts for the visible contents."""
        return self._visible.size_bytes

    # --- reading ---

    def load(self) -> BootState:
        """Everything after the snapshot, as reads see it (after a crash: the durable contents)."""
        disk = self._visible
        if disk.snapshot_corrupt:
            raise StorageCorruptError("snapshot: CRC mismatch", record="snapshot")
        start = disk.view.snapshot_index + 1
        indexes = range(max(start, disk.view.first_index), disk.view.last_index + 1)
        entries = [disk.entry(index) for index in indexes]
        return BootState(hard_state=disk.view.hard_state, snapshot=disk.snapshot, entries=entries)

    def first_index(self) -> int:
        return self._visible.view.first_index

    def last_index(self) -> int:
        return self._visible.view.last_index

    def term_at(self, index: int) -> int | None:
        disk = self._visible
        term = disk.view.snapshot_term(index)
        if term is not None or not disk.view.holds(index):
            return term
        return disk.entry(index).term

    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        """Entries in [lo, hi) (which must lie within the log), up to ``bytes_max`` by
        :meth:`Entry.size_bytes`; always the first one if the range is not empty."""
        disk = self._visible
        disk.view.assert_range(lo, hi)
        return take_within_budget((disk.entry(index) for index in range(lo, hi)), bytes_max)

    def hard_state(self) -> HardState:
        return self._visible.view.hard_state

    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._visible.view.snapshot

    def snapshot_chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The latest snapshot in chunks of exactly ``chunk_bytes`` (the last may be shorter);
        raises ``StorageError`` if a newer one is published while iterating, like LmdbStorage."""
        snapshot = self._visible.snapshot
        if snapshot is None:
            return iter(())
        pieces = self._pieces(snapshot, chunk_bytes)
        return verified_chunks(pieces, chunk_bytes, snapshot.meta, "snapshot_chunks")

    def _pieces(self, snapshot: Snapshot, piece_bytes: int) -> Iterator[bytes]:
        for piece in slices(snapshot.data, piece_bytes):
            if self._visible.snapshot is not snapshot:
                raise StorageError(f"snapshot {snapshot.meta.last_index} was replaced while being read")
            if self._visible.snapshot_corrupt:
                raise StorageCorruptError("snapshot: CRC mismatch", record="snapshot")
            yield piece

    def begin_snapshot(self, meta: SnapshotMeta) -> SnapshotWriter:
        assert meta.last_index > self._visible.view.snapshot_index, "a snapshot must be newer than the latest"
        return _MemorySnapshotWriter(self, meta)

    def _publish(self, snapshot: Snapshot, compact_through: int, epoch: int) -> None:
        assert epoch == self._epoch, "a snapshot writer does not survive a crash"
        # A publish is a durable commit, and commits become durable in order.
        self.sync()

        def change(disk: _Disk) -> None:
            apply_publish(disk.view, snapshot.meta, compact_through, disk)
            disk.put_snapshot(snapshot)

        self._change_visible(change, len(snapshot.data))
        self._durable = self._visible.copy()

    def close(self) -> None:
        self._closed = True


class _MemorySnapshotWriter(SnapshotWriter):
    def __init__(self, store: MemoryStorage, meta: SnapshotMeta) -> None:
        self._store = store
        self._meta = meta
        self._epoch = store._epoch
        self._chunks: list[bytes] = []
        self._done = False

    def write(self, chunk: bytes) -> None:
        assert not self._done, "snapshot writer already published or aborted"
        self._chunks.append(bytes(chunk))

    def publish(self, compact_through: int = 0) -> None:
        """Raises ``StorageCorruptError`` (and discards the chunks) if the bytes written do not
        match the meta's size and CRC-32, like LmdbStorage."""
        assert not self._done, "snapshot writer already published or aborted"
        snapshot = Snapshot(self._meta, b"".join(self._chunks))
        try:
            check_snapshot(snapshot, "publish")
        except StorageCorruptError:
            self.abort()
            raise
        self._store._publish(snapshot, compact_through, self._epoch)
        self._done = True
        self._chunks = []

    def abort(self) -> None:
        self._done = True
        self._chunks = []
