"""What both stores share, so that their observable behaviour cannot drift apart.

:class:`LogView` is the small in-memory picture each store keeps of its log (bounds, latest snapshot,
hard state). :func:`apply_batch` is the one definition of how a :class:`WriteBatch` changes that
picture: it asserts the programmer errors, updates the view and tells a :class:`LogSink` which
primitive changes to make (delete a range, append, store a snapshot, store the hard state). Each
store implements the sink over its own medium: an LMDB write transaction, or Python lists.

The invariant every committed state keeps: the log is one contiguous run ``[first, last]`` that
*reaches the snapshot* (``first <= snapshot_index + 1`` and ``last >= snapshot_index``), or it is
empty and then ``first == snapshot_index + 1``, ``last == snapshot_index``. Within a batch it must
already hold after the truncation step, so any prefix of the appends keeps it too; this is what
lets the simulator tear a batch after some of its entries and still leave a valid store.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Protocol, Sequence

from trimaran.errors import StorageCorruptError
from trimaran.protocols.messages import Entry, HardState, Snapshot, SnapshotMeta
from trimaran.storage.base import WriteBatch


@dataclass(slots=True)
class LogView:
    """Bounds of the stored log plus the latest snapshot and hard state, cached in memory.

    An empty log is ``first_index == last_index + 1``, both following the snapshot (or 1 and 0).
    """

    first_index: int = 1
    last_index: int = 0
    snapshot: SnapshotMeta | None = None
    hard_state: HardState = field(default_factory=HardState)

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.last_index if self.snapshot is not None else 0

    def copy(self) -> LogView:
        return LogView(self.first_index, self.last_index, self.snapshot, self.hard_state)

    def is_empty(self) -> bool:
        return self.first_index > self.last_index

    def holds(self, index: int) -> bool:
        """True if the log table holds an entry at ``index``."""
        return self.first_index <= index <= self.last_index

    def snapshot_term(self, index: int) -> int | None:
        """Term known without reading the log: the snapshot's at its last index (0 at index 0 of a
        store that never had a snapshot, the implicit empty snapshot), else None."""
        if self.snapshot is not None:
            return self.snapshot.last_term if index == self.snapshot.last_index else None
        return 0 if index == 0 else None

    def assert_range(self, lo: int, hi: int) -> None:
        assert self.first_index <= lo <= hi <= self.last_index + 1, (
            f"entries [{lo}, {hi}) outside the log [{self.first_index}, {self.last_index}]"
        )

    def assert_reaches_snapshot(self, when: str) -> None:
        snapshot_index = self.snapshot_index
        if self.is_empty():
            assert self.first_index == snapshot_index + 1, "an empty log follows the snapshot"
            return
        assert self.first_index <= snapshot_index + 1 and self.last_index >= snapshot_index, (
            f"{when}: log [{self.first_index}, {self.last_index}] does not reach snapshot "
            f"{snapshot_index}; discard it with truncate_from (or compact it away on publish)"
        )

    def clear_log(self) -> None:
        """Record that the log is now empty: it follows the snapshot."""
        self.first_index = self.snapshot_index + 1
        self.last_index = self.snapshot_index


class LogSink(Protocol):
    """The primitive changes a store makes when a batch is applied, in the order they are called."""

    def put_snapshot(self, snapshot: Snapshot) -> None:
        """Store the snapshot's bytes and make it the latest; older snapshots may be dropped."""

    def delete_log(self, lo: int, hi: int) -> None:
        """Delete the log entries with lo <= index <= hi (all of them are held)."""

    def append_log(self, entries: Sequence[Entry]) -> None:
        """Append entries that directly follow the log (or start it after the snapshot)."""

    def put_hard_state(self, hard_state: HardState) -> None:
        """Store the hard state."""


def set_snapshot(view: LogView, meta: SnapshotMeta) -> None:
    """Make ``meta`` the latest snapshot in ``view``; an empty log moves to follow it."""
    assert meta.last_index > view.snapshot_index, (
        f"snapshot {meta.last_index} is not newer than the published {view.snapshot_index}"
    )
    was_empty = view.is_empty()
    view.snapshot = meta
    if was_empty:
        view.clear_log()


def _truncate(view: LogView, index_from: int, sink: LogSink) -> None:
    if view.is_empty() or index_from > view.last_index:
        return
    if index_from <= view.first_index:
        sink.delete_log(view.first_index, view.last_index)
        view.clear_log()
    else:
        sink.delete_log(index_from, view.last_index)
        view.last_index = index_from - 1


def _append(view: LogView, entries: Sequence[Entry], sink: LogSink) -> None:
    expected = view.last_index + 1
    for entry in entries:
        assert entry.index == expected, f"append of entry {entry.index} where {expected} was due"
        expected += 1
    sink.append_log(entries)
    view.last_index = expected - 1


def _compact(view: LogView, index_through: int, sink: LogSink) -> None:
    assert index_through <= view.snapshot_index, (
        f"compaction through {index_through} is above snapshot {view.snapshot_index}"
    )
    if view.is_empty() or index_through < view.first_index:
        return
    if index_through >= view.last_index:
        sink.delete_log(view.first_index, view.last_index)
        view.clear_log()
    else:
        sink.delete_log(view.first_index, index_through)
        view.first_index = index_through + 1


def apply_batch(view: LogView, batch: WriteBatch, sink: LogSink) -> None:
    """Apply one batch in the documented order: snapshot, truncate, append, compact, hard state."""
    if batch.snapshot is not None:
        set_snapshot(view, batch.snapshot.meta)
        sink.put_snapshot(batch.snapshot)
    if batch.truncate_from:
        _truncate(view, batch.truncate_from, sink)
    view.assert_reaches_snapshot("after truncation")
    if batch.entries:
        _append(view, batch.entries, sink)
    if batch.compact_through:
        _compact(view, batch.compact_through, sink)
    if batch.hard_state is not None:
        assert batch.hard_state.term >= view.hard_state.term, "a term never goes back"
        view.hard_state = batch.hard_state
        sink.put_hard_state(batch.hard_state)


def apply_publish(view: LogView, meta: SnapshotMeta, compact_through: int, sink: LogSink) -> None:
    """The log side of publishing a snapshot whose bytes the caller has already stored.

    Unlike a batch there is no truncation step, so the log only has to reach the snapshot after the
    compaction (compacting through the snapshot's index discards a log it replaces).
    """
    set_snapshot(view, meta)
    if compact_through:
        _compact(view, compact_through, sink)
    view.assert_reaches_snapshot("after publishing")


def take_within_budget(entries: Iterable[Entry], bytes_max: int) -> list[Entry]:
    """Take entries until the next would bring the total :meth:`Entry.size_bytes` over
    ``bytes_max``; the first is always taken. Lazy, so a store decodes only what it returns."""
    out: list[Entry] = []
    size_bytes = 0
    for entry in entries:
        size_bytes += entry.size_bytes()
        if out and size_bytes > bytes_max:
            break
        out.append(entry)
    return out


def copy_batch(batch: WriteBatch) -> WriteBatch:
    """A copy the caller cannot change behind the store's back (entries are immutable, lists not)."""
    return WriteBatch(
        hard_state=batch.hard_state,
        snapshot=batch.snapshot,
        truncate_from=batch.truncate_from,
        entries=list(batch.entries),
        compact_through=batch.compact_through,
    )


def check_snapshot_bytes(meta: SnapshotMeta, size_bytes: int, checksum: int, what: str) -> None:
    """Raise ``StorageCorruptError`` unless size and CRC-32 match the snapshot's meta.

    Snapshot bytes usually arrive from the network or are read back from disk, so a mismatch is
    damaged data (a typed error), not a programmer error.
    """
    if size_bytes != meta.size_bytes or checksum != meta.checksum:
        raise StorageCorruptError(
            f"{what}: snapshot {meta.last_index} has {size_bytes} bytes with CRC {checksum:#010x}, "
            f"its meta says {meta.size_bytes} bytes with CRC {meta.checksum:#010x}",
            snapshot_index=meta.last_index,
        )


def check_snapshot(snapshot: Snapshot, what: str) -> None:
    check_snapshot_bytes(snapshot.meta, len(snapshot.data), zlib.crc32(snapshot.data), what)


def verified_chunks(
    stored: Iterable[bytes], chunk_bytes: int, meta: SnapshotMeta, what: str
) -> Iterator[bytes]:
    """Re-slice stored pieces into chunks of exactly ``chunk_bytes`` (the last may be shorter).

    The final chunk is held back until the whole snapshot's size and CRC-32 are checked, so a reader
    never sees the complete bytes of a snapshot that fails its checksum.
    """
    assert chunk_bytes > 0, "chunk_bytes must be positive"
    checksum = 0
    size_bytes = 0
    pending = bytearray()
    for piece in stored:
        checksum = zlib.crc32(piece, checksum)
        size_bytes += len(piece)
        pending += piece
        # Strictly greater: at least one byte stays pending until the end (unless the snapshot is
        # empty), so the last chunk waits for the checksum.
        while len(pending) > chunk_bytes:
            yield bytes(pending[:chunk_bytes])
            del pending[:chunk_bytes]
    check_snapshot_bytes(meta, size_bytes, checksum, what)
    if pending:
        yield bytes(pending)


def slices(data: bytes, slice_bytes: int) -> Iterator[bytes]:
    """``data`` in consecutive slices of at most ``slice_bytes`` (nothing for empty data)."""
    for offset in range(0, len(data), slice_bytes):
        yield data[offset : offset + slice_bytes]
