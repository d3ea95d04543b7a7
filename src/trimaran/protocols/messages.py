"""Raft's wire vocabulary: log entries, persistent state and the messages nodes exchange.

Plain slotted dataclasses, no behaviour: the consensus core (``trimaran.cluster``) decides, the
codec (``trimaran.protocols.codec``) turns these into bytes with hard limits. Node ids are positive
integers; ``0`` means "none" (no vote, no known leader).

Treat every instance as immutable once built (they are not frozen only because frozen dataclasses
are slower to construct, and the core builds many of them per second).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

NO_NODE = 0


class EntryKind(IntEnum):
    #: Opaque bytes for the Replica (a batch of client commands, or empty for a leader's no-op).
    NORMAL = 0
    #: A membership change; ``data`` is an encoded :class:`ConfChange`.
    CONF_CHANGE = 1


@dataclass(slots=True)
class Entry:
    index: int
    term: int
    kind: int
    data: bytes

    def size_bytes(self) -> int:
        """Approximate encoded size, for byte budgets (data plus a fixed header allowance)."""
        return len(self.data) + 24


@dataclass(slots=True, frozen=True)
class HardState:
    """What Raft must persist before it speaks (§5.1, Figure 2 "persistent state")."""

    term: int = 0
    vote: int = NO_NODE
    #: Persisting commit is not needed for safety; it lets a restarted node apply sooner.
    commit_index: int = 0


@dataclass(slots=True, frozen=True)
class Membership:
    """Voters decide; learners receive the log but neither vote nor count toward a quorum."""

    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        assert list(self.voters) == sorted(set(self.voters)), "voters sorted and unique"
        assert list(self.learners) == sorted(set(self.learners)), "learners sorted and unique"
        assert not set(self.voters) & set(self.learners), "a node is a voter or a learner"
        assert all(n > 0 for n in self.voters + self.learners), "node ids are positive"

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(sorted(self.voters + self.learners))

    def contains(self, node_id: int) -> bool:
        return node_id in self.voters or node_id in self.learners


class ConfChangeKind(IntEnum):
    ADD_LEARNER = 0
    PROMOTE = 1
    REMOVE = 2


@dataclass(slots=True, frozen=True)
class ConfChange:
    kind: int
    node_id: int


@dataclass(slots=True, frozen=True)
class SnapshotMeta:
    last_index: int
    last_term: int
    membership: Membership
    size_bytes: int = 0
    #: CRC-32 of the snapshot bytes, checked by whoever reads them back.
    checksum: int = 0


# --- Messages ------------------------------------------------------------------------------------


@dataclass(slots=True)
class AppendEntries:
    term: int
    sender: int
    recipient: int
    prev_index: int
    prev_term: int
    entries: list[Entry]
    commit_index: int


@dataclass(slots=True)
class AppendEntriesResponse:
    term: int
    sender: int
    recipient: int
    success: bool
    #: On success the last index now known to match the leader; on reject, the prev_index refused
    #: (so the leader can ignore a stale rejection).
    index: int
    #: Fast backtracking hints on reject (§5.3, "the follower can include the term of the
    #: conflicting entry and the first index it stores for that term").
    conflict_index: int = 0
    conflict_term: int = 0


@dataclass(slots=True)
class Heartbeat:
    term: int
    sender: int
    recipient: int
    #: min(leader commit, follower match): never tells a follower to commit what it may not have.
    commit_index: int
    #: ReadIndex round this heartbeat confirms (thesis §6.4); 0 when none.
    read_seq: int = 0


@dataclass(slots=True)
class HeartbeatResponse:
    term: int
    sender: int
    recipient: int
    read_seq: int = 0
    #: The follower's last log index, so a leader can resume a follower it thought was stalled.
    last_index: int = 0


@dataclass(slots=True)
class RequestVote:
    term: int
    sender: int
    recipient: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    #: Set when campaigning because of TimeoutNow: voters then ignore their leader lease.
    transfer: bool = False


@dataclass(slots=True)
class RequestVoteResponse:
    term: int
    sender: int
    recipient: int
    granted: bool
    pre_vote: bool = False


@dataclass(slots=True)
class InstallSnapshot:
    term: int
    sender: int
    recipient: int
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(slots=True)
class InstallSnapshotResponse:
    term: int
    sender: int
    recipient: int
    #: The snapshot this answers (its last_index).
    snapshot_index: int
    #: The next byte offset the follower wants; equals the size when done.
    next_offset: int
    done: bool
    rejected: bool = False


@dataclass(slots=True)
class TimeoutNow:
    term: int
    sender: int
    recipient: int


@dataclass(slots=True)
class ReadIndexRequest:
    """A follower forwarding a linearizable read to the leader (thesis §6.4)."""

    term: int
    sender: int
    recipient: int
    request_id: int


@dataclass(slots=True)
class ReadIndexResponse:
    term: int
    sender: int
    recipient: int
    request_id: int
    #: The commit index the read must wait for; meaningful only when ``ok``.
    index: int
    ok: bool


Message = (
    AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | RequestVote
    | RequestVoteResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
    | ReadIndexRequest
    | ReadIndexResponse
)

MESSAGE_TYPES: tuple[type, ...] = (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    RequestVote,
    RequestVoteResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
)


@dataclass(slots=True)
class Snapshot:
    """Snapshot bytes plus what they describe."""

    meta: SnapshotMeta
    data: bytes = field(repr=False)
