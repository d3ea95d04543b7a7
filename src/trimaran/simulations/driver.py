"""A pure driver for one Replica over the in-memory storage twin.

It follows the same protocol as the trio runtime (:mod:`trimaran.cluster.ready`): persist each
Ready's batch, send its ``messages`` at once, hold ``messages_after_persist`` until the batch is
durable, then report ``on_persisted``. Durability is a separate step (:meth:`SimNode.sync`), so a
harness or the simulator can crash a node between writing and syncing, or between syncing and
sending, and see what a real machine would lose.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from trimaran.cluster.config import RaftConfig
from trimaran.cluster.replica import ApplyObserver, Replica, ReplicaConfig, Reply
from trimaran.protocols.messages import Message, Snapshot
from trimaran.protocols.service import Service
from trimaran.storage.base import WriteBatch
from trimaran.storage.memory import MemoryStorage


@dataclass(slots=True)
class _PendingWrite:
    after: list[Message]
    persist_index: int
    persist_term: int
    local_snapshot: Snapshot | None


@dataclass
class SimNode:
    node_id: int
    raft_config: RaftConfig
    make_services: Callable[[], list[Service]]
    rng: random.Random
    storage: MemoryStorage = field(default_factory=MemoryStorage)
    replica_config: ReplicaConfig = ReplicaConfig()
    observer: ApplyObserver | None = None
    #: "ack_before_fsync"-style bugs of the driver itself, for mutation tests.
    mutants: frozenset[str] = frozenset()
    up: bool = True
    replica: Replica = field(init=False)
    pending: list[_PendingWrite] = field(default_factory=list, init=False)
    replies: list[Reply] = field(default_factory=list, init=False)
    #: Applied (index -> entry data) for the state-machine-safety checker, this lifetime.
    on_apply_entry: Callable[[int, int, int, bytes], None] | None = None
    #: Readies taken so far: lets a loop tell "nothing to do" from "a Ready with no messages"
    #: without asking has_ready() twice.
    readies_taken: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.replica = self._boot()

    def _boot(self) -> Replica:
        boot = self.storage.load()
        return Replica(
            self.raft_config,
            self.rng,
            self.make_services(),
            boot.hard_state,
            boot.snapshot,
            boot.entries,
            self.replica_config,
            self.observer,
        )

    def process(self) -> list[Message]:
        """Take one Ready: write its batch (not yet synced) and return the messages to send now."""
        if not self.up or not self.replica.has_ready():
            return []
        self.readies_taken += 1
        out = self.replica.ready()
        rd = out.raft
        batch = WriteBatch(rd.hard_state, rd.snapshot, rd.truncate_from, list(rd.entries), 0)
        if out.local_snapshot is not None:
            batch.snapshot = out.local_snapshot
            batch.compact_through = out.compact_through
        if self.on_apply_entry is not None:
            for e in rd.committed:
                self.on_apply_entry(self.node_id, e.index, e.term, e.data)
        self.replies.extend(out.replies)
        if batch.is_empty() and not self.pending:
            # Nothing to make durable and nothing ahead of us: "after persist" is now.
            return list(rd.messages) + list(rd.messages_after_persist)
        if not batch.is_empty():
            self.storage.write([batch], sync=False)
        self.pending.append(_PendingWrite(list(rd.messages_after_persist), rd.persist_index, rd.persist_term, out.local_snapshot))
        return list(rd.messages)

    def sync(self) -> list[Message]:
        """Make every written batch durable; returns the messages that were waiting for it."""
        if not self.up or not self.pending:
            return []
        self.storage.sync()
        pending, self.pending = self.pending, []
        out: list[Message] = []
        for p in pending:
            out.extend(p.after)
            if p.persist_index:
                self.replica.on_persisted(p.persist_index, p.persist_term)
            if p.local_snapshot is not None:
                self.replica.on_snapshot_saved(p.local_snapshot)
        return out

    def crash(self, torn: bool = False) -> None:
        """Power loss: unsynced writes are lost (the first one possibly torn); volatile state is gone."""
        self.storage.crash(torn=torn)
        self.pending = []
        self.replies = []
        self.up = False

    def restart(self) -> None:
        self.replica = self._boot()
        self.up = True

    def take_replies(self) -> list[Reply]:
        replies, self.replies = self.replies, []
        return replies

    def deliver(self, msg: Message) -> None:
        if self.up:
            self.replica.step(msg)

    def tick(self) -> None:
        if self.up:
            self.replica.tick()

    def __repr__(self) -> str:  # short, for hypothesis failure output
        r = self.replica.raft
        return f"SimNode({self.node_id}, up={self.up}, role={r.role.name}, term={r.term}, commit={r.log.commit_index})"


def summary(node: SimNode) -> dict[str, Any]:
    r = node.replica.raft
    return {"id": node.node_id, "up": node.up, "role": r.role.name, "term": r.term, "last": r.log.last_index()}
