"""Builders and a reopen-able harness shared by the storage tests."""

from __future__ import annotations

import zlib
from pathlib import Path

from trimaran.protocols.messages import Entry, EntryKind, Membership, Snapshot, SnapshotMeta
from trimaran.storage import LmdbStorage, MemoryStorage, NodeStorage

MEMBERSHIP = Membership(voters=(1, 2, 3))
#: A small starting map so the tests also exercise growing it.
MAP_BYTES_INITIAL = 256 * 1024


def entry(index: int, term: int, data: bytes | None = None) -> Entry:
    return Entry(index, term, EntryKind.NORMAL, data if data is not None else f"e{index}t{term}".encode())


def entries(lo: int, hi: int, term: int, size_bytes: int | None = None) -> list[Entry]:
    """Entries lo..hi-1 of one term; ``size_bytes`` of data each (default: a short label)."""
    return [
        entry(i, term, None if size_bytes is None else bytes([i % 251]) * size_bytes) for i in range(lo, hi)
    ]


def meta_for(index: int, term: int, data: bytes) -> SnapshotMeta:
    return SnapshotMeta(index, term, MEMBERSHIP, size_bytes=len(data), checksum=zlib.crc32(data))


def snapshot(index: int, term: int, data: bytes | None = None) -> Snapshot:
    data = data if data is not None else f"state-through-{index}".encode() * 10
    return Snapshot(meta_for(index, term, data), data)


class Harness:
    """A store that can be "restarted": LMDB closes and reopens its directory; the memory twin,
    whose writes here are all synced, crashes (keeping exactly its durable contents)."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        #: The store's size cap (LMDB: its map, the twin: its contents); None: the defaults.
        self.cap_bytes: int | None = None
        self.store: NodeStorage = self._open()

    def _open(self) -> NodeStorage:
        if self.kind == "lmdb":
            if self.cap_bytes is not None:
                return LmdbStorage(str(self.path), map_bytes_initial=self.cap_bytes, map_bytes_max=self.cap_bytes)
            return LmdbStorage(str(self.path), map_bytes_initial=MAP_BYTES_INITIAL)
        return MemoryStorage(self.cap_bytes)

    def cap(self, size_bytes: int) -> None:
        """Start over with an empty store capped at ``size_bytes``."""
        self.store.close()
        self.cap_bytes = size_bytes
        if self.kind == "lmdb":
            for name in ("data.mdb", "lock.mdb"):
                (self.path / name).unlink(missing_ok=True)
        self.store = self._open()

    def reopen(self) -> None:
        if isinstance(self.store, MemoryStorage):
            self.store.crash()
        else:
            self.store.close()
            self.store = self._open()

    def close(self) -> None:
        self.store.close()
