"""A node's durable state: the contract (``NodeStorage``) and its two implementations."""

from trimaran.storage.base import BootState, NodeStorage, SnapshotWriter, WriteBatch
from trimaran.storage.lmdb_store import LmdbStorage
from trimaran.storage.memory import MemoryStorage

__all__ = ["BootState", "LmdbStorage", "MemoryStorage", "NodeStorage", "SnapshotWriter", "WriteBatch"]
