"""Protocol rules checked where they are broken, with the simulator's view of every disk.

Raft's end-to-end properties (election safety, linearizability...) fail only when a broken rule
meets the fault that exposes it: a vote sent before it is durable matters only if the voter
crashes in the fsync window AND a second candidate asks it in the same term. A simulator sees
every disk, so it can check the rules themselves, at the moment they are broken:

- Persist before you speak (ARCHITECTURE.md rule 1, §5.1 Figure 2): a message that promises
  durable state — a granted vote, a vote request, a success acknowledgement — leaves a node only
  once its disk holds what it promises.
- Commit durability (§5.3, §5.4.2): a leader advances its commit index only to an entry of its
  own term, and only once a majority of its voters hold that entry on disk.
- One leader per term, followed (§5.2): a node that names a leader for its term names the one that
  was elected in that term.
- Single-server membership changes (thesis §4.1, and the fix of §4.1's bug): a leader appends a
  change only after committing an entry of its term, and never while another change is uncommitted.
- ReadIndex (thesis §6.4): a linearizable read is answered from a state that includes every entry
  committed anywhere when the read arrived.

Each rule holds in correct Raft under any faults the simulator injects; a violation is a bug.
"""

from __future__ import annotations

from typing import Any

from trimaran.cluster.quorum import majority
from trimaran.cluster.raft import Raft, Role
from trimaran.protocols.messages import (
    AppendEntriesResponse,
    EntryKind,
    HardState,
    RequestVote,
    RequestVoteResponse,
)
from trimaran.simulations.checkers import CheckFailure
from trimaran.storage.memory import MemoryStorage

#: ``durable_term_at`` for an index inside the durable snapshot.
IN_SNAPSHOT = -1


def durable_hard_state(storage: MemoryStorage) -> HardState:
    return storage.durable_hard_state()


def durable_term_at(storage: MemoryStorage, index: int) -> int | None:
    """The term of the durable entry at ``index``; IN_SNAPSHOT if a durable snapshot covers it;
    None if the disk does not hold it."""
    term = storage.durable_term_at(index)
    return IN_SNAPSHOT if term == 0 else term


def _fail(rule: str, message: str) -> None:
    raise CheckFailure("rule", f"{rule}: {message}")


class ProtocolRules:
    """Checks the rules above; the loop calls it after every Ready and for every read answered."""

    def __init__(self, leader_of_term: dict[int, int]) -> None:
        #: Shared with RaftInvariants, which records each term's leader at its first Ready.
        self.leader_of_term = leader_of_term
        self._commit: dict[int, int] = {}
        #: (node, term) of a leader -> (last index scanned, indexes of its conf entries).
        self._conf_scan: dict[tuple[int, int], tuple[int, list[int]]] = {}

    # ------------------------------------------------------------------ persist before speak

    def check_sent(self, node_id: int, storage: MemoryStorage, raft: Raft, messages: list[Any]) -> None:
        """Messages a node sends right after a Ready (not those its fsync released)."""
        for msg in messages:
            kind = type(msg)
            if kind is AppendEntriesResponse and msg.success and msg.index > 0:
                term = durable_term_at(storage, msg.index)
                expected = raft.log.term_at(msg.index)  # None: compacted here, any durable copy will do
                if term is None or (term != IN_SNAPSHOT and expected is not None and term != expected):
                    _fail("persist before speak", f"node {node_id} acknowledged entries through {msg.index} before they were on disk")
            elif kind is RequestVoteResponse and msg.granted and not msg.pre_vote:
                self._vote_durable(node_id, storage, msg.term, msg.recipient, "granted its vote to")
            elif kind is RequestVote and not msg.pre_vote:
                self._vote_durable(node_id, storage, msg.term, node_id, "asked for votes as")

    @staticmethod
    def _vote_durable(node_id: int, storage: MemoryStorage, term: int, vote: int, what: str) -> None:
        hs = durable_hard_state(storage)
        if hs.term < term or (hs.term == term and hs.vote != vote):
            _fail(
                "persist before speak",
                f"node {node_id} {what} {vote} in term {term} while its disk says term {hs.term} vote {hs.vote}",
            )

    # ------------------------------------------------------------------ after every Ready

    def check_node(self, node_id: int, raft: Raft, storages: dict[int, MemoryStorage]) -> None:
        if raft.role == Role.LEADER:
            self._check_leader_commit(node_id, raft, storages)
            self._check_membership_changes(node_id, raft)
        else:
            self._commit[node_id] = raft.log.commit_index
            leader = self.leader_of_term.get(raft.term)
            if raft.leader_id and leader is not None and raft.leader_id != leader:
                _fail("one leader per term", f"node {node_id} follows {raft.leader_id} in term {raft.term}, led by {leader}")

    def node_restarted(self, node_id: int) -> None:
        self._commit.pop(node_id, None)

    def _check_leader_commit(self, node_id: int, raft: Raft, storages: dict[int, MemoryStorage]) -> None:
        commit = raft.log.commit_index
        if commit <= self._commit.get(node_id, 0):
            return
        self._commit[node_id] = commit
        term = raft.log.term_at(commit)
        if term != raft.term:
            _fail("current-term commit", f"leader {node_id} of term {raft.term} committed through ({commit}, {term}) by counting")
        voters = raft.membership.voters
        holders = [v for v in voters if v in storages and durable_term_at(storages[v], commit) in (term, IN_SNAPSHOT)]
        if len(holders) < majority(len(voters)):
            _fail(
                "commit durability",
                f"leader {node_id} committed ({commit}, {term}) held on disk by {holders} of voters {list(voters)}",
            )

    def _check_membership_changes(self, node_id: int, raft: Raft) -> None:
        log = raft.log
        key = (node_id, raft.term)
        scanned, conf = self._conf_scan.get(key, (log.commit_index, []))
        start = max(scanned, log.offset_index) + 1
        for index in range(start, log.last_index() + 1):
            entry = log.entry(index)
            if entry.kind != EntryKind.CONF_CHANGE:
                continue
            pending = [i for i in conf if i > log.commit_index]
            if entry.term == raft.term:
                if not raft.committed_in_term():
                    _fail("membership change", f"leader {node_id} appended a change at {index} before committing in term {raft.term}")
                if pending:
                    _fail("membership change", f"leader {node_id} appended a change at {index} while {pending} is uncommitted")
            conf.append(index)
        self._conf_scan[key] = (log.last_index(), [i for i in conf if i > log.commit_index])

    # ------------------------------------------------------------------ reads

    @staticmethod
    def check_read(node_id: int, applied_index: int, floor_index: int) -> None:
        """A linearizable read answered at ``applied_index`` arrived when ``floor_index`` was
        committed somewhere."""
        if applied_index < floor_index:
            _fail(
                "read index",
                f"node {node_id} answered a read at applied index {applied_index}, but {floor_index} was committed when it arrived",
            )
