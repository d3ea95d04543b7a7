"""Raft's safety properties (§5.2, Figure 3), checked after every step of a harness or simulation.

- Election Safety: at most one leader per term.
- Leader Append-Only: a leader never overwrites or deletes entries of its log during its term.
- Log Matching: two logs holding an entry with the same index and term are identical up to it
  (checked incrementally: every (index, term) ever seen must always follow the same previous term
  and carry the same data — by induction that is the whole property).
- Leader Completeness: an entry committed before a term began is in the log of that term's leader.
- State Machine Safety: no two nodes apply different entries at the same index.
- Monotonicity: a node's term, commit and applied indexes never decrease during one lifetime of a
  node. (Across a crash the in-memory term may fall back to the last durable one: nothing that
  depended on the lost term was sent, which is what persist-before-speak guarantees; a double vote
  would show up as two leaders of one term.)

A violation raises :class:`InvariantViolation` (an ``AssertionError``: it is a bug in trimaran).
"""

from __future__ import annotations

from typing import Iterable

from trimaran.cluster.raft import Raft, Role


class InvariantViolation(AssertionError):
    pass


class RaftInvariants:
    def __init__(self) -> None:
        self.leader_of_term: dict[int, int] = {}
        #: (index, term) -> (previous entry's term, data): Log Matching by induction.
        self._seen: dict[tuple[int, int], tuple[int, bytes]] = {}
        #: index -> (term, lowest node term at which it was seen committed).
        self.committed: dict[int, tuple[int, int]] = {}
        self._committed_max = 0
        self.applied: dict[int, tuple[int, bytes]] = {}
        self._checked_leaders: set[tuple[int, int]] = set()
        self._leader_last: dict[tuple[int, int], tuple[int, int]] = {}
        self._term: dict[int, int] = {}
        self._commit: dict[int, int] = {}
        self._applied_index: dict[int, int] = {}
        self._log_checked: dict[int, tuple[int, object]] = {}
        self.checks = 0

    def fail(self, message: str) -> None:
        raise InvariantViolation(message)

    def node_restarted(self, node_id: int) -> None:
        """Volatile state starts again after a restart."""
        self._term.pop(node_id, None)
        self._commit.pop(node_id, None)
        self._applied_index.pop(node_id, None)
        self._log_checked.pop(node_id, None)

    def on_apply(self, node_id: int, index: int, term: int, data: bytes) -> None:
        seen = self.applied.get(index)
        if seen is None:
            self.applied[index] = (term, data)
        elif seen != (term, data):
            self.fail(f"state machine safety: node {node_id} applied ({index}, {term}) but ({index}, {seen[0]}) was applied elsewhere")

    def check(self, rafts: Iterable[tuple[int, Raft]]) -> None:
        """Check every property over the live nodes' Raft states."""
        self.checks += 1
        live = list(rafts)
        for node_id, raft in live:
            self._check_monotonic(node_id, raft)
            self._check_log(node_id, raft)
            self._record_committed(raft)
        for node_id, raft in live:
            if raft.role == Role.LEADER:
                self._check_leader(node_id, raft)

    def _check_monotonic(self, node_id: int, raft: Raft) -> None:
        for name, table, value in (
            ("term", self._term, raft.term),
            ("commit index", self._commit, raft.log.commit_index),
            ("applied index", self._applied_index, raft.log.applied_index),
        ):
            if value < table.get(node_id, 0):
                self.fail(f"node {node_id}: {name} went back from {table[node_id]} to {value}")
            table[node_id] = value

    def _check_log(self, node_id: int, raft: Raft) -> None:
        log = raft.log
        checked_index, checked_entry = self._log_checked.get(node_id, (log.offset_index, None))
        # Restart from the point where this node's log still holds the very entry we checked last.
        if checked_index > log.last_index() or (
            checked_index > log.offset_index and log.entry(checked_index) is not checked_entry
        ):
            checked_index = log.offset_index
        checked_index = max(checked_index, log.offset_index)
        for index in range(checked_index + 1, log.last_index() + 1):
            e = log.entry(index)
            prev_term = log.term_at(index - 1)
            assert prev_term is not None
            key = (index, e.term)
            found = self._seen.get(key)
            if found is None:
                self._seen[key] = (prev_term, e.data)
            elif found != (prev_term, e.data):
                self.fail(f"log matching: node {node_id} holds ({index}, {e.term}) with a different prefix or data")
        if log.last_index() > log.offset_index:
            self._log_checked[node_id] = (log.last_index(), log.entry(log.last_index()))
        else:
            self._log_checked[node_id] = (log.offset_index, None)

    def _record_committed(self, raft: Raft) -> None:
        log = raft.log
        for index in range(max(self._committed_max, log.offset_index) + 1, log.commit_index + 1):
            term = log.term_at(index)
            assert term is not None
            self.committed[index] = (term, raft.term)
        if log.commit_index > self._committed_max:
            self._committed_max = log.commit_index
        # An entry seen committed at an index must never be seen committed with another term.
        index = log.commit_index
        if index > log.offset_index and index in self.committed and self.committed[index][0] != log.term_at(index):
            self.fail(f"state machine safety: index {index} committed with two different terms")

    def _check_leader(self, node_id: int, raft: Raft) -> None:
        holder = self.leader_of_term.setdefault(raft.term, node_id)
        if holder != node_id:
            self.fail(f"election safety: nodes {holder} and {node_id} both lead term {raft.term}")
        log = raft.log
        key = (node_id, raft.term)
        last = self._leader_last.get(key)
        if last is not None:
            index, term = last
            if log.last_index() < index or (index > log.offset_index and log.term_at(index) != term):
                self.fail(f"leader append-only: leader {node_id} of term {raft.term} lost entry {index}")
        self._leader_last[key] = (log.last_index(), log.last_term())
        if key in self._checked_leaders:
            return
        self._checked_leaders.add(key)
        for index, (term, seen_at_term) in self.committed.items():
            if seen_at_term < raft.term and index > log.offset_index and log.term_at(index) != term:
                self.fail(f"leader completeness: leader {node_id} of term {raft.term} lacks committed ({index}, {term})")
