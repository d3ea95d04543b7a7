"""The storage contract: what the runtime and the simulator may ask of a node's disk.

Raft keeps the live part of its log in memory (bounded by compaction), so the disk is written on
the hot path and read only at boot. One :class:`WriteBatch` is what one Raft ``Ready`` asks to be
made durable; :meth:`NodeStorage.write` takes several and applies them in order in one transaction
with one fsync (group commit). Everything is synchronous: the runtime calls it from a dedicated
writer thread, the simulator calls it inline.

Two implementations honour this contract: ``LmdbStorage`` (real disk) and ``MemoryStorage`` (the
simulator's twin, which can lose unsynced writes on a simulated crash). One contract test suite
runs against both.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from trimaran.protocols.messages import Entry, HardState, Snapshot, SnapshotMeta


@dataclass(slots=True)
class WriteBatch:
    """One unit of durable work, applied in this order: snapshot, truncate, append, compact, hard state."""

    hard_state: HardState | None = None
    #: Publish this snapshot as the latest (older snapshots may then be deleted).
    snapshot: Snapshot | None = None
    #: Drop every log entry with index >= this (0: drop nothing). Used when a follower's log
    #: conflicts with the leader's, and (with ``snapshot``) to discard a log a snapshot replaces.
    truncate_from: int = 0
    #: Append these; the first must be last_index + 1 after the truncation (or the log is empty
    #: and it is first_index).
    entries: list[Entry] = field(default_factory=list)
    #: Drop every log entry with index <= this (0: none). Only below a published snapshot.
    compact_through: int = 0

    def is_empty(self) -> bool:
        return (
            self.hard_state is None
            and self.snapshot is None
            and not self.truncate_from
            and not self.entries
            and not self.compact_through
        )


@dataclass(slots=True)
class BootState:
    """Everything a node needs to rebuild its Raft state after a restart."""

    hard_state: HardState
    #: The latest published snapshot, if any.
    snapshot: Snapshot | None
    #: The log after the snapshot: entries[0].index == snapshot.last_index + 1 (or 1), contiguous.
    entries: list[Entry]


class NodeStorage(abc.ABC):
    """One node's durable state: log, hard state and snapshots, in one store."""

    @abc.abstractmethod
    def load(self) -> BootState:
        """Read everything back, verifying each record's CRC.

        Raises ``StorageCorruptError`` if any record fails its check: a node never boots from, applies
        or serves corrupt data.
        """

    @abc.abstractmethod
    def write(self, batches: Sequence[WriteBatch]) -> None:
        """Apply the batches in order, atomically, durably (fsynced) before returning.

        Raises ``StorageFullError`` when the store is at its size cap; nothing of the call is then
        applied and the store stays usable for reads and for smaller writes after compaction.
        """

    @abc.abstractmethod
    def first_index(self) -> int:
        """First log index held (snapshot last_index + 1 when the log is empty)."""

    @abc.abstractmethod
    def last_index(self) -> int:
        """Last log index held, or the snapshot's last_index (0 for a new store) when empty."""

    @abc.abstractmethod
    def term_at(self, index: int) -> int | None:
        """Term of the entry at ``index``; the snapshot's term at its last_index; None if not held."""

    @abc.abstractmethod
    def entries(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        """Entries in [lo, hi) up to ``bytes_max`` of data (always at least one if any is in range)."""

    @abc.abstractmethod
    def hard_state(self) -> HardState:
        """The last persisted hard state (all zeros for a new store)."""

    @abc.abstractmethod
    def snapshot_meta(self) -> SnapshotMeta | None:
        """Metadata of the latest published snapshot."""

    @abc.abstractmethod
    def snapshot_chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The latest snapshot's bytes, in chunks of at most ``chunk_bytes``; CRC-checked."""

    @abc.abstractmethod
    def begin_snapshot(self, meta: SnapshotMeta) -> "SnapshotWriter":
        """Start writing a snapshot in chunks (for large ones received or made incrementally)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store; further calls are programmer errors."""


class SnapshotWriter(abc.ABC):
    @abc.abstractmethod
    def write(self, chunk: bytes) -> None:
        """Append a chunk; not visible to readers until :meth:`publish`."""

    @abc.abstractmethod
    def publish(self, compact_through: int = 0) -> None:
        """Atomically make this the latest snapshot (checksum and size checked against the meta);
        optionally drop log entries <= ``compact_through`` in the same transaction."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard what was written."""
