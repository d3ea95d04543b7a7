"""The Raft consensus core: pure, deterministic, no IO.

Inputs are method calls — :meth:`Raft.tick`, :meth:`Raft.step` (a received message),
:meth:`Raft.propose`, :meth:`Raft.propose_conf_change`, :meth:`Raft.read_index`,
:meth:`Raft.transfer_leadership`, :meth:`Raft.compact` (a snapshot is ready),
:meth:`Raft.on_persisted` and :meth:`Raft.set_clock_suspect` (the runtime's clock check).
Outputs accumulate until the driver takes them with :meth:`Raft.ready` (see
:mod:`trimaran.cluster.ready` for the order the driver must respect).

Section references are to Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm"
(§N) and Ongaro's thesis "Consensus: Bridging Theory and Practice" (thesis §N).

Randomness comes only from the injected ``random.Random``; time only as ticks.
"""

from __future__ import annotations

import random
import zlib
from enum import IntEnum
from typing import Any, Callable

from trimaran import limits
from trimaran.cluster.config import RaftConfig
from trimaran.cluster.log import RaftLog
from trimaran.cluster.progress import Progress, ProgressState
from trimaran.cluster.quorum import VoteResult, committed_index, has_quorum, vote_result
from trimaran.cluster.ready import ReadState, Ready
from trimaran.errors import InvalidArgument, MembershipChangeRejected, NotLeader, Unavailable
from trimaran.protocols.codec import decode_conf_change, encode_conf_change
from trimaran.protocols.messages import (
    NO_NODE,
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Membership,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
)


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


# Planted bugs (simulator mutation testing). Each name switches one safety rule off.
MUTANTS = {
    "vote_not_persisted": "a vote is granted before the vote is durable",
    "no_up_to_date_check": "votes are granted without the election restriction (§5.4.1)",
    "commit_old_term": "a leader commits an earlier-term entry by counting replicas (§5.4.2)",
    "ack_before_fsync": "a follower acknowledges entries before they are durable",
    "leader_counts_unpersisted": "a leader counts itself in a quorum for entries not yet durable",
    "accept_stale_term": "AppendEntries from a stale term is accepted",
    "no_prev_term_check": "a follower appends without checking the previous entry's term (§5.3)",
    "heartbeat_commit_unbounded": "a heartbeat lets a follower commit entries it may not match",
    "no_noop_on_election": "a new leader neither appends a no-op nor waits for a current-term commit",
    "read_without_read_index": "a leader serves reads without confirming leadership (thesis §6.4)",
    "conf_change_before_term_commit": "membership changes start before a current-term commit",
    "vote_twice_in_term": "a node grants its vote to a second candidate in the same term",
    "removed_never_campaigns": "a node removed by a change not yet committed never campaigns (thesis §4.2.2)",
}


class _ReadRound:
    """One ReadIndex heartbeat round (thesis §6.4): reads served once a majority acknowledges it."""

    __slots__ = ("seq", "index", "contexts", "acks")

    def __init__(self, seq: int, index: int, contexts: list[tuple[int, int]], self_id: int) -> None:
        self.seq = seq
        self.index = index
        #: (requester node id, context): the requester is this node or a follower that forwarded.
        self.contexts = contexts
        self.acks = {self_id}


class Raft:
    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: list[Entry] | None = None,
    ) -> None:
        self.config = config.validate()
        self.id = config.node_id
        self._rng = rng
        self._mutants = config.mutants
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote = hs.vote
        self.leader_id = NO_NODE
        self.role = Role.FOLLOWER
        offset_index, offset_term = (snapshot.meta.last_index, snapshot.meta.last_term) if snapshot else (0, 0)
        self.log = RaftLog(offset_index, offset_term, entries or [], hs.commit_index)
        #: Latest local snapshot: what a lagging follower is sent (§7).
        self.snapshot: Snapshot | None = snapshot
        # Membership in force is the latest one in the log, committed or not (thesis §4.1).
        base = snapshot.meta.membership if snapshot else config.initial_membership
        self._conf_history: list[tuple[int, Membership]] = [(offset_index, base)]
        for e in self.log.entries:
            if e.kind == EntryKind.CONF_CHANGE:
                self._conf_history.append((e.index, self._changed(self._conf_history[-1][1], e.data)))
        self.membership = self._conf_history[-1][1]
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.tick_count = 0
        self.randomized_election_timeout = self._random_timeout()
        self.transferee = NO_NODE
        self.transfer_elapsed = 0
        #: This node's wall clock is off from a majority's (an input: :meth:`set_clock_suspect`).
        self.clock_suspect = False
        # ReadIndex bookkeeping.
        self._read_seq = 0
        self._read_rounds: list[_ReadRound] = []
        self._reads_new: list[tuple[int, int]] = []
        self._reads_waiting_commit: list[tuple[int, int]] = []
        #: The followers whose acks confirmed the last read round. A round needs only a majority
        #: (thesis §6.4), so the next round's heartbeats go to them alone while they keep answering:
        #: the other followers are not woken for every round (they still get the periodic
        #: heartbeat), which halves the messages a round costs in a 3-node cluster. Empty: all.
        self._read_quorum: frozenset[int] = frozenset()
        #: The newest read round at the last tick: a round still waiting one tick later is asked
        #: of every follower (one of the chosen few is slow or gone).
        self._read_seq_at_tick = 0
        #: Reads forwarded to the leader: request id -> (context, tick sent).
        self._forwarded_reads: dict[int, tuple[int, int]] = {}
        self._forward_seq = 0
        # Incoming snapshot being assembled from chunks.
        self._incoming: tuple[SnapshotMeta, int, list[bytes]] | None = None
        # Outputs, taken by ready().
        self._msgs: list[Message] = []
        self._msgs_after: list[Message] = []
        self._read_states: list[ReadState] = []
        self._snapshot_out: Snapshot | None = None
        self._handed_hard_state = hs
        self.term_first_index = 0

    # ================================================================================ queries

    @property
    def is_leader(self) -> bool:
        return self.role == Role.LEADER

    @property
    def read_rounds_started(self) -> int:
        """ReadIndex rounds this node started as leader (a counter for the node's metrics: the
        reads per round tell how well reads share a round's heartbeats)."""
        return self._read_seq

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.commit_index)

    def _vote_state_changed(self) -> bool:
        handed = self._handed_hard_state
        return self.term != handed.term or self.vote != handed.vote

    def promotable(self) -> bool:
        """A voter of the latest membership: may lead, and counts its own vote."""
        return self.id in self.membership.voters

    def may_campaign(self) -> bool:
        """Thesis §4.2.2: a voter, or a node removed by a change not yet known to be committed.

        "A server that is not part of its own latest configuration should still start new elections,
        as it might still be needed until the Cnew entry is committed": when a leader appends its own
        removal and loses its majority before the entry spreads, its log is the longest, so it
        refuses the others' votes (§5.4.1) and only it can carry the change. Its own vote does not
        count (the tally uses the latest voters). Once it knows the removal committed, it stops.
        """
        if self.promotable():
            return True
        if "removed_never_campaigns" in self._mutants:
            return False
        return self.id in self.membership_at(self.log.commit_index).voters

    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._msgs_after
            or self._read_states
            or self._snapshot_out
            or (self._reads_new and len(self._read_rounds) < self.config.read_rounds_inflight_max)
            or self.log.unstable_from <= self.log.last_index()
            or self._vote_state_changed()
            or min(self.log.commit_index, self.log.persisted_index) > self.log.applied_index
        )

    def membership_at(self, index: int) -> Membership:
        """The membership in force at ``index`` (for snapshot metadata)."""
        found = self._conf_history[0][1]
        for at, m in self._conf_history:
            if at <= index:
                found = m
        return found

    def committed_in_term(self) -> bool:
        """Thesis §6.4 step 1: a leader knows the commit index only after committing in its term."""
        return self.log.commit_index >= self.term_first_index > 0

    # ================================================================================ inputs

    def tick(self) -> None:
        """One unit of logical time (§5.2: elections and heartbeats are counted in ticks)."""
        self.tick_count += 1
        if self.role == Role.LEADER:
            self._tick_leader()
            return
        if self._forwarded_reads:
            self._expire_forwarded_reads()
        self.election_elapsed += 1
        if self.may_campaign() and self.election_elapsed >= self.randomized_election_timeout:
            if self.clock_suspect:
                # No campaign (see set_clock_suspect). The count stays past the timeout, not reset:
                # a follower whose count restarted would think itself in a lease (in_lease) and
                # ignore the vote requests of the nodes that may lead.
                self.election_elapsed = self.randomized_election_timeout
                return
            self.election_elapsed = 0
            self._campaign(transfer=False)

    def step(self, msg: Message) -> None:
        """Handle one message from a peer."""
        if not self._check_term(msg):
            return
        handler = _HANDLERS.get(type(msg))
        assert handler is not None
        handler(self, msg)

    def propose(self, datas: list[bytes]) -> tuple[int, int]:
        """Append client data as NORMAL entries; returns (first index, term). Leader only."""
        self._require_leader()
        if self.transferee != NO_NODE:
            raise Unavailable("leadership transfer in progress", transferee=self.transferee)
        first = self.log.last_index() + 1
        self._append([Entry(first + i, self.term, EntryKind.NORMAL, d) for i, d in enumerate(datas)])
        return first, self.term

    def propose_conf_change(self, change: ConfChange) -> int:
        """Start one membership change (thesis §4.1); returns its log index. Leader only."""
        self._require_leader()
        self._check_conf_change(change)
        index = self.log.last_index() + 1
        data = encode_conf_change(change, self._apply_change(self.membership, change))
        self._append([Entry(index, self.term, EntryKind.CONF_CHANGE, data)])
        return index

    def transfer_leadership(self, target: int) -> None:
        """Thesis §3.10: bring ``target`` up to date, then tell it to campaign at once."""
        self._require_leader()
        if target == self.id:
            return
        if target not in self.membership.voters:
            raise InvalidArgument(f"node {target} is not a voter")
        self.transferee = target
        self.transfer_elapsed = 0
        pr = self.progress[target]
        if pr.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, target))
        else:
            self._send_append(target)

    def set_clock_suspect(self, suspect: bool) -> None:
        """Whether this node's wall clock is beyond the runtime's bound from a majority of the voters.

        A leader stamps the entries it proposes with its wall clock, and log time (TTLs, session
        expiry) follows those stamps; so, like CockroachDB's maximum clock offset, a node whose
        clock disagrees with a majority must not lead. While suspect, a node does not campaign
        (no pre-vote, no election, a TimeoutNow is ignored) and stops a campaign under way; a
        suspect leader hands leadership to its most up-to-date voter (thesis §3.10) and steps down
        if that has not happened within an election timeout. It still votes and replicates.

        An input like a message (the runtime measures the clocks, :mod:`trimaran.node.clock`): the
        core reads no clock and stays deterministic.
        """
        if suspect == self.clock_suspect:
            return
        self.clock_suspect = suspect
        if not suspect or self.role == Role.FOLLOWER:
            return
        if self.role != Role.LEADER:
            self._become_follower(self.term, NO_NODE)
            return
        voters = [(pr.match, n) for n, pr in sorted(self.progress.items()) if n in self.membership.voters]
        if not voters:
            self._become_follower(self.term, NO_NODE)
            return
        # The transfer gets one election timeout, then _tick_leader steps down (as etcd resets the
        # count when a transfer starts).
        self.election_elapsed = 0
        if self.transferee == NO_NODE:
            self.transfer_leadership(max(voters)[1])

    def read_index(self, context: int, lease: bool = False) -> None:
        """Ask for a linearizable read point (thesis §6.4); answered by a ReadState with ``context``.

        ``lease``: a leader may answer from its lease without a heartbeat round when the config
        allows lease reads (thesis §6.4.1); followers always forward to the leader.
        """
        if self.role == Role.LEADER:
            self._leader_read(self.id, context, lease)
            return
        if self.leader_id == NO_NODE:
            self._read_states.append(ReadState(context, 0, ok=False))
            return
        if len(self._forwarded_reads) >= self.config.pending_reads_max:
            self._read_states.append(ReadState(context, 0, ok=False))
            return
        self._forward_seq += 1
        self._forwarded_reads[self._forward_seq] = (context, self.tick_count)
        self._send(ReadIndexRequest(self.term, self.id, self.leader_id, self._forward_seq))

    def compact(self, snapshot: Snapshot, keep_entries: int = 0) -> int:
        """A snapshot of the applied state is durable: keep it to send, drop the log below it (§7).

        Keeps ``keep_entries`` before the snapshot point so slightly lagging followers still catch up
        from the log. Returns the index compacted through (storage should drop the same prefix).
        """
        meta = snapshot.meta
        assert meta.last_index <= self.log.applied_index, "snapshot beyond what is applied"
        if self.snapshot is None or meta.last_index > self.snapshot.meta.last_index:
            self.snapshot = snapshot
        through = max(self.log.offset_index, meta.last_index - keep_entries)
        self.log.compact(through)
        self._conf_history = self._conf_history_after(through)
        return through

    def snapshot_meta(self, index: int, data: bytes) -> SnapshotMeta:
        """Metadata for a snapshot of the state machine at applied ``index``."""
        term = self.log.term_at(index)
        assert term is not None, "snapshot point not held in the log"
        return SnapshotMeta(index, term, self.membership_at(index), len(data), zlib.crc32(data))

    def on_persisted(self, index: int, term: int) -> None:
        """Storage made the log durable through (index, term)."""
        if self.log.mark_persisted(index, term) and self.role == Role.LEADER:
            self._commit_and_broadcast()

    # ================================================================================ output

    def ready(self) -> Ready:
        """Take everything the driver must do now (see :mod:`trimaran.cluster.ready`)."""
        if self._reads_new and len(self._read_rounds) < self.config.read_rounds_inflight_max:
            # Otherwise they ride on the next round, started once one in flight is confirmed (or
            # given up: the periodic heartbeat carries the latest round's number, so a lost one
            # is confirmed within a heartbeat interval).
            self._start_read_round()
        rd = Ready()
        if self._snapshot_out is not None:
            rd.snapshot = self._snapshot_out
            rd.truncate_from = 1
            self._snapshot_out = None
        truncate_from, entries = self.log.take_unstable()
        if truncate_from and not rd.truncate_from:
            rd.truncate_from = truncate_from
        rd.entries = entries
        if rd.entries or rd.snapshot is not None:
            rd.persist_index = self.log.last_index()
            rd.persist_term = self.log.last_term()
        # Term and vote must be durable before the node speaks (§5.1). A commit index alone is not
        # needed for safety, so it is never a write of its own: it rides with the next one (etcd's
        # MustSync rule), saving a leader a second fsync per client write.
        hs = self.hard_state()
        if hs != self._handed_hard_state and (self._vote_state_changed() or rd.persist_index or truncate_from):
            rd.hard_state = hs
            self._handed_hard_state = hs
        if rd.persist_index and "leader_counts_unpersisted" in self._mutants and self.role == Role.LEADER:
            self.log.persisted_index = rd.persist_index
            self._commit_and_broadcast()
        rd.committed = self.log.take_committed()
        rd.messages, self._msgs = self._msgs, []
        rd.messages_after_persist, self._msgs_after = self._msgs_after, []
        rd.read_states, self._read_states = self._read_states, []
        return rd

    # ================================================================================ internals: roles

    def _random_timeout(self) -> int:
        return self._rng.randrange(self.config.election_timeout_ticks_min, self.config.election_timeout_ticks_max)

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NO_NODE
        self.leader_id = NO_NODE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self._random_timeout()
        self.votes = {}
        self.transferee = NO_NODE
        self._fail_reads()

    def _become_follower(self, term: int, leader_id: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self.progress = {}

    def _become_leader(self) -> None:
        assert self.role == Role.CANDIDATE
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.id
        last = self.log.last_index()
        self.progress = {n: Progress(last + 1) for n in self.membership.members if n != self.id}
        for pr in self.progress.values():
            pr.recent_active = True
        if "no_noop_on_election" in self._mutants:
            self.term_first_index = max(1, self.log.commit_index)
            self._broadcast_append()
            return
        # §5.4.2 / §8: a no-op of the new term lets earlier entries commit, and tells the leader
        # its commit index (needed before serving reads, thesis §6.4).
        self.term_first_index = last + 1
        self._append([Entry(last + 1, self.term, EntryKind.NORMAL, b"")])

    def _campaign(self, transfer: bool) -> None:
        """§5.2, with thesis §9.6 Pre-Vote first unless this is a leadership transfer (thesis §3.10)."""
        if self.config.pre_vote and not transfer:
            self._reset(self.term)
            self.role = Role.PRE_CANDIDATE
            self._request_votes(self.term + 1, pre_vote=True, transfer=False)
        else:
            self._start_election(transfer)

    def _start_election(self, transfer: bool) -> None:
        if self.term >= limits.raft_counter_max:
            return  # unreachable but by forged terms: a term past the bound would be refused
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.id
        self._request_votes(self.term, pre_vote=False, transfer=transfer)

    def _request_votes(self, vote_term: int, pre_vote: bool, transfer: bool) -> None:
        self.votes = {self.id: True}
        if self._tally() != VoteResult.PENDING:
            return
        for peer in self.membership.voters:
            if peer != self.id:
                msg = RequestVote(
                    vote_term, self.id, peer, self.log.last_index(), self.log.last_term(), pre_vote, transfer
                )
                # A real vote request names a term and a vote that must be durable first.
                self._send(msg, after_persist=not pre_vote)

    def _tally(self) -> VoteResult:
        result = vote_result(self.membership.voters, self.votes)
        if result == VoteResult.WON:
            if self.role == Role.PRE_CANDIDATE:
                self._start_election(transfer=False)
            else:
                self._become_leader()
        elif result == VoteResult.LOST:
            self._become_follower(self.term, NO_NODE)
        return result

    def _require_leader(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeader(leader_hint=self.leader_id or None)

    # ================================================================================ internals: terms

    def in_lease(self) -> bool:
        """Thesis §4.2.3: a follower that heard from a leader recently ignores vote requests."""
        return (
            self.config.check_quorum
            and self.leader_id != NO_NODE
            and self.election_elapsed < self.config.election_timeout_ticks_min
        )

    def _check_term(self, msg: Message) -> bool:
        """§5.1 term rules, with Pre-Vote and lease exceptions. False: drop the message."""
        if msg.term > self.term + limits.raft_term_jump_max:
            return False  # forged or corrupt: no real gap is this large (see limits.raft_term_jump_max)
        if msg.term > self.term:
            if isinstance(msg, RequestVote):
                if not msg.transfer and self.in_lease():
                    return False
                if msg.pre_vote:
                    return True  # a pre-vote never changes our term
            if isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
                return True  # the pre-candidate's own future term, echoed back
            leader = msg.sender if isinstance(msg, (AppendEntries, Heartbeat, InstallSnapshot)) else NO_NODE
            self._become_follower(msg.term, leader)
            return True
        if msg.term < self.term:
            if "accept_stale_term" in self._mutants and isinstance(msg, AppendEntries):
                return True
            if isinstance(msg, (AppendEntries, Heartbeat)) and (self.config.check_quorum or self.config.pre_vote):
                # A leader of an old term (or this node's term raced ahead in a partition): tell it our
                # term so it steps down instead of staying a stale leader forever.
                self._send(AppendEntriesResponse(self.term, self.id, msg.sender, False, 0))
            elif isinstance(msg, RequestVote) and msg.pre_vote:
                self._send(RequestVoteResponse(self.term, self.id, msg.sender, False, True))
            return False
        return True

    # ================================================================================ internals: votes

    def _on_request_vote(self, msg: RequestVote) -> None:
        can_vote = (
            self.vote == msg.sender
            or (self.vote == NO_NODE and self.leader_id == NO_NODE)
            or (msg.pre_vote and msg.term > self.term)
            or "vote_twice_in_term" in self._mutants
        )
        up_to_date = self.log.is_up_to_date(msg.last_index, msg.last_term)
        if "no_up_to_date_check" in self._mutants:
            up_to_date = True
        if can_vote and up_to_date:
            if msg.pre_vote:
                self._send(RequestVoteResponse(msg.term, self.id, msg.sender, True, True))
                return
            self.election_elapsed = 0
            self.vote = msg.sender
            after = "vote_not_persisted" not in self._mutants
            self._send(RequestVoteResponse(self.term, self.id, msg.sender, True, False), after_persist=after)
            return
        self._send(RequestVoteResponse(self.term, self.id, msg.sender, False, msg.pre_vote), after_persist=True)

    def _on_vote_response(self, msg: RequestVoteResponse) -> None:
        expected = Role.PRE_CANDIDATE if msg.pre_vote else Role.CANDIDATE
        if self.role != expected:
            return
        self.votes[msg.sender] = msg.granted
        self._tally()

    def _on_timeout_now(self, msg: TimeoutNow) -> None:
        if self.promotable() and self.role != Role.LEADER and not self.clock_suspect:
            self._campaign(transfer=True)

    # ================================================================================ internals: follower

    def _heard_from_leader(self, leader: int) -> None:
        self.election_elapsed = 0
        self.leader_id = leader
        if self.role != Role.FOLLOWER:
            self._become_follower(self.term, leader)

    def _on_append(self, msg: AppendEntries) -> None:
        self._heard_from_leader(msg.sender)
        log = self.log
        after = "ack_before_fsync" not in self._mutants
        if msg.prev_index < log.commit_index:
            # Already committed here: everything up to commit matches the leader (Log Matching).
            self._send(AppendEntriesResponse(self.term, self.id, msg.sender, True, log.commit_index), after)
            return
        prev_term = log.term_at(msg.prev_index)
        if "no_prev_term_check" in self._mutants and prev_term is not None:
            prev_term = msg.prev_term
        if prev_term != msg.prev_term:
            conflict_index, conflict_term = log.conflict_hint(msg.prev_index)
            reject = AppendEntriesResponse(
                self.term, self.id, msg.sender, False, msg.prev_index, conflict_index, conflict_term
            )
            self._send(reject, after_persist=True)
            return
        first_changed = log.merge(msg.prev_index, msg.entries)
        if first_changed:
            self._on_log_changed(first_changed, msg.entries)
        last_new = msg.prev_index + len(msg.entries)
        if msg.commit_index > log.commit_index:
            log.commit_index = min(msg.commit_index, last_new)
        self._send(AppendEntriesResponse(self.term, self.id, msg.sender, True, last_new), after)

    def _on_log_changed(self, first_index: int, entries: list[Entry]) -> None:
        """Entries from ``first_index`` were (re)written: keep the membership history in step."""
        history = [(at, m) for at, m in self._conf_history if at < first_index]
        if not history:
            history = self._conf_history[:1]
        for e in entries:
            if e.index >= first_index and e.kind == EntryKind.CONF_CHANGE:
                history.append((e.index, self._changed(history[-1][1], e.data)))
        self._conf_history = history
        self.membership = history[-1][1]

    def _on_heartbeat(self, msg: Heartbeat) -> None:
        self._heard_from_leader(msg.sender)
        commit = min(msg.commit_index, self.log.last_index())
        if commit > self.log.commit_index:
            self.log.commit_index = commit
        resp = HeartbeatResponse(self.term, self.id, msg.sender, msg.read_seq, self.log.last_index())
        self._send(resp)

    def _on_install_snapshot(self, msg: InstallSnapshot) -> None:
        self._heard_from_leader(msg.sender)
        meta = msg.meta
        index = meta.last_index

        def answer(next_offset: int, done: bool, rejected: bool = False) -> None:
            resp = InstallSnapshotResponse(self.term, self.id, msg.sender, index, next_offset, done, rejected)
            self._send(resp, after_persist=True)

        if index <= self.log.commit_index:
            answer(meta.size_bytes, True)
            return
        if msg.offset == 0 and (self._incoming is None or self._incoming[0] != meta):
            # A new transfer. A late duplicate of the first chunk of the transfer under way must
            # not throw away what arrived since (it is answered with the offset expected next).
            self._incoming = (meta, 0, [])
        incoming = self._incoming
        if incoming is None or incoming[0] != meta or incoming[1] != msg.offset:
            answer(incoming[1] if incoming and incoming[0] == meta else 0, False)
            return
        received = msg.offset + len(msg.data)
        if received > meta.size_bytes or received > self.config.snapshot_bytes_max:
            self._incoming = None
            answer(0, False, rejected=True)
            return
        incoming[2].append(msg.data)
        self._incoming = (meta, received, incoming[2])
        if not msg.done:
            answer(received, False)
            return
        self._incoming = None
        data = b"".join(incoming[2])
        if len(data) != meta.size_bytes or zlib.crc32(data) != meta.checksum:
            answer(0, False, rejected=True)
            return
        self._restore(Snapshot(meta, data))
        answer(meta.size_bytes, True)

    def _restore(self, snapshot: Snapshot) -> None:
        meta = snapshot.meta
        if self.log.term_at(meta.last_index) == meta.last_term:
            # We already hold this prefix (§7): fast-forward the commit, keep the suffix.
            self.log.commit_index = max(self.log.commit_index, meta.last_index)
            return
        self.log.restore(meta.last_index, meta.last_term)
        self.snapshot = snapshot
        self._snapshot_out = snapshot
        self._conf_history = [(meta.last_index, meta.membership)]
        self.membership = meta.membership

    # ================================================================================ internals: leader

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_timeout_ticks_min:
            self.election_elapsed = 0
            if self.config.check_quorum:
                active = {n: pr.recent_active for n, pr in self.progress.items()}
                active[self.id] = True
                for pr in self.progress.values():
                    pr.recent_active = False
                if not has_quorum(self.membership.voters, active):
                    # Thesis §6.2: a leader that cannot reach a majority steps down.
                    self._become_follower(self.term, NO_NODE)
                    return
            if self.clock_suspect:
                # The hand-off set_clock_suspect started did not finish within an election timeout.
                self._become_follower(self.term, NO_NODE)
                return
            if self.transferee != NO_NODE:
                self.transferee = NO_NODE  # thesis §3.10: abort a transfer that did not finish in time
        if self.heartbeat_elapsed >= self.config.heartbeat_interval_ticks:
            self.heartbeat_elapsed = 0
            # While reads wait, every heartbeat re-asks for the newest round: an answer confirms
            # leadership after that round began, so a round whose own heartbeats were lost is still
            # confirmed (thesis §6.4 step 3).
            self._broadcast_heartbeat(self._read_seq if self._read_rounds else 0)
        elif self._read_rounds and self._read_rounds[0].seq <= self._read_seq_at_tick and self._read_quorum:
            # A round sent to the last round's quorum alone is still unconfirmed a tick later: ask
            # everyone, and choose again from whoever answers first.
            self._read_quorum = frozenset()
            self._broadcast_heartbeat(self._read_seq)
        self._read_seq_at_tick = self._read_seq

    def _append(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        for e in entries:
            if e.kind == EntryKind.CONF_CHANGE:
                self._apply_conf_change_on_append(e)
        # A leader removing itself keeps replicating until the change commits (thesis §4.2.2).
        self._broadcast_append()

    def _broadcast_append(self) -> None:
        for peer in self.progress:
            self._send_append(peer, allow_empty=True)

    def _broadcast_heartbeat(self, read_seq: int, only: frozenset[int] = frozenset()) -> None:
        """A heartbeat to every follower, or to those in ``only`` when it is not empty."""
        for peer, pr in self.progress.items():
            if only and peer not in only:
                continue
            commit = self.log.commit_index
            if "heartbeat_commit_unbounded" not in self._mutants:
                commit = min(commit, pr.match)
            self._send(Heartbeat(self.term, self.id, peer, commit, read_seq))

    def _send_append(self, peer: int, allow_empty: bool = False) -> bool:
        """Send the next AppendEntries (or snapshot chunk) to ``peer``; False when nothing was sent."""
        pr = self.progress[peer]
        if pr.is_paused(self.config.inflight_messages_max, self.config.inflight_bytes_max):
            return False
        log = self.log
        prev_index = pr.next - 1
        prev_term = log.term_at(prev_index)
        if prev_term is None:
            return self._send_snapshot(peer, pr)
        entries = log.slice(pr.next, log.last_index() + 1, self.config.append_bytes_max) if pr.next <= log.last_index() else []
        if not entries and not allow_empty:
            return False
        self._send(AppendEntries(self.term, self.id, peer, prev_index, prev_term, entries, log.commit_index))
        if pr.state == ProgressState.REPLICATE:
            if entries:
                last = entries[-1].index
                pr.next = last + 1
                pr.add_inflight(last, sum(len(e.data) + 24 for e in entries))
        else:
            pr.probe_sent = True
        return True

    def _send_snapshot(self, peer: int, pr: Progress) -> bool:
        if self.snapshot is None:
            return False  # the compacted prefix is covered by a snapshot we are still writing
        pr.become_snapshot(self.snapshot)
        self._send_snapshot_chunk(peer, pr)
        return True

    def _send_snapshot_chunk(self, peer: int, pr: Progress) -> None:
        snap = pr.snapshot
        assert snap is not None
        lo = pr.snapshot_offset
        hi = min(lo + self.config.snapshot_chunk_bytes, len(snap.data))
        done = hi >= len(snap.data)
        self._send(InstallSnapshot(self.term, self.id, peer, snap.meta, lo, snap.data[lo:hi], done))

    def _on_append_response(self, msg: AppendEntriesResponse) -> None:
        pr = self._answering_peer(msg.sender)
        if pr is None:
            return
        if not msg.success:
            self._on_append_reject(msg, pr)
            return
        if pr.update_match(msg.index):
            if pr.state == ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state == ProgressState.SNAPSHOT and pr.match >= (pr.snapshot.meta.last_index if pr.snapshot else 0):
                pr.become_probe()
                pr.become_replicate()
            pr.free_inflight_through(msg.index)
            if not self._commit_and_broadcast():
                return
            if msg.sender == self.transferee and pr.match == self.log.last_index():
                self._send(TimeoutNow(self.term, self.id, msg.sender))
        elif pr.state == ProgressState.REPLICATE:
            pr.free_inflight_through(msg.index)
        while self._send_append(msg.sender):
            pass

    def _on_append_reject(self, msg: AppendEntriesResponse, pr: Progress) -> None:
        rejected = msg.index
        if pr.state == ProgressState.REPLICATE and rejected <= pr.match:
            return  # stale: it answers an append sent before a later success
        if pr.state == ProgressState.PROBE and rejected != pr.next - 1:
            return  # stale: it answers a probe we already moved past
        if pr.state == ProgressState.SNAPSHOT:
            return
        # §5.3 fast backtracking: skip the follower's whole conflicting term at once.
        next_index = msg.conflict_index
        if msg.conflict_term:
            ours = self.log.last_index_of_term(msg.conflict_term, rejected)
            if ours:
                next_index = ours + 1
        next_index = max(min(next_index, rejected), pr.match + 1, 1)
        pr.become_probe()
        pr.next = next_index
        self._send_append(msg.sender, allow_empty=True)

    def _on_heartbeat_response(self, msg: HeartbeatResponse) -> None:
        pr = self._answering_peer(msg.sender)
        if pr is None:
            return
        pr.probe_sent = False
        if pr.state == ProgressState.SNAPSHOT:
            # Resend the current chunk if the transfer did not move since the last heartbeat answer
            # (a chunk or its answer was lost).
            if pr.snapshot_offset == pr.progress_seen:
                self._send_snapshot_chunk(msg.sender, pr)
            pr.progress_seen = pr.snapshot_offset
        elif pr.match < self.log.last_index():
            if pr.state == ProgressState.REPLICATE and pr.match == pr.progress_seen:
                # Nothing acknowledged across a whole heartbeat interval while appends were due:
                # assume they were lost and probe again from the match.
                pr.become_probe()
            pr.progress_seen = pr.match
            self._send_append(msg.sender, allow_empty=True)
        if msg.read_seq:
            self._ack_read_round(msg.sender, msg.read_seq)

    def _on_snapshot_response(self, msg: InstallSnapshotResponse) -> None:
        pr = self._answering_peer(msg.sender)
        if pr is None:
            return
        if pr.state != ProgressState.SNAPSHOT or pr.snapshot is None or pr.snapshot.meta.last_index != msg.snapshot_index:
            if msg.done:
                pr.update_match(msg.snapshot_index)
            return
        if msg.rejected:
            pr.become_probe()
            return
        if msg.done:
            pr.update_match(msg.snapshot_index)
            pr.become_probe()
            pr.become_replicate()
            if not self._commit_and_broadcast():
                return
            while self._send_append(msg.sender):
                pass
            return
        if msg.next_offset <= pr.snapshot_offset:
            # A duplicate or stale answer: the chunk it asks for is already on its way, and sending
            # it again for every such answer multiplies the chunks in flight (a storm under message
            # duplication: seed 1092042825). A follower really behind (it lost the transfer) is
            # served by the heartbeat's resend of a stalled transfer, from the offset it names.
            pr.snapshot_offset = min(pr.snapshot_offset, msg.next_offset)
            return
        pr.snapshot_offset = msg.next_offset
        self._send_snapshot_chunk(msg.sender, pr)

    def _answering_peer(self, peer: int) -> Progress | None:
        """A leader's progress for a peer that just answered (marked as heard from); else None."""
        if self.role != Role.LEADER:
            return None
        pr = self.progress.get(peer)
        if pr is not None:
            pr.recent_active = True
            pr.last_heard_tick = self.tick_count
        return pr

    def _commit_and_broadcast(self) -> bool:
        """Advance commit if a majority allows, telling followers; False if this node is no longer
        leader afterwards (a committed change removed it, thesis §4.2.2)."""
        if self._maybe_commit():
            if self.role != Role.LEADER:
                return False
            self._broadcast_append()
        return True

    def _maybe_commit(self) -> bool:
        """§5.3/§5.4.2: advance commit to what a majority holds, only through a current-term entry."""
        log = self.log
        match = {n: pr.match for n, pr in self.progress.items()}
        match[self.id] = log.persisted_index
        index = committed_index(self.membership.voters, match)
        if index <= log.commit_index:
            return False
        if log.term_at(index) != self.term and "commit_old_term" not in self._mutants:
            return False
        log.commit_index = index
        self._on_commit_advanced()
        return True

    def _on_commit_advanced(self) -> None:
        if self._reads_waiting_commit and self.committed_in_term():
            waiting, self._reads_waiting_commit = self._reads_waiting_commit, []
            for requester, context in waiting:
                self._leader_read(requester, context)
        if self.id not in self.membership.voters and self._conf_history[-1][0] <= self.log.commit_index:
            # Thesis §4.2.2: a leader removed by a committed change steps down.
            self._become_follower(self.term, NO_NODE)

    # ================================================================================ internals: reads

    def _leader_read(self, requester: int, context: int, lease: bool = False) -> None:
        if "read_without_read_index" in self._mutants:
            self._deliver_read(requester, context, self.log.commit_index)
            return
        if not self.committed_in_term():
            if len(self._reads_waiting_commit) >= self.config.pending_reads_max:
                self._deliver_read(requester, context, 0, ok=False)
            else:
                self._reads_waiting_commit.append((requester, context))
            return
        if self.membership.voters == (self.id,) or (lease and self._lease_valid()):
            self._deliver_read(requester, context, self.log.commit_index)
            return
        self._reads_new.append((requester, context))

    def _lease_valid(self) -> bool:
        """Thesis §6.4.1: within the lease no other leader can exist, assuming bounded clock drift."""
        if not self.config.lease_reads:
            return False
        window = self.config.election_timeout_ticks_min - self.config.lease_margin_ticks
        heard = {n: self.tick_count - pr.last_heard_tick < window for n, pr in self.progress.items()}
        heard[self.id] = True
        return has_quorum(self.membership.voters, heard)

    def _start_read_round(self) -> None:
        self._read_seq += 1
        round_ = _ReadRound(self._read_seq, self.log.commit_index, self._reads_new, self.id)
        self._reads_new = []
        self._read_rounds.append(round_)
        only = self._read_quorum
        if only:
            # Still a majority with the leader (a member may have been removed since)?
            voters = self.membership.voters
            if not has_quorum(voters, {n: n in only or n == self.id for n in voters}):
                only = self._read_quorum = frozenset()
        self._broadcast_heartbeat(round_.seq, only)

    def _ack_read_round(self, sender: int, seq: int) -> None:
        if sender not in self.membership.voters:
            return
        confirmed = 0
        for round_ in self._read_rounds:
            if round_.seq > seq:
                break
            round_.acks.add(sender)
            if has_quorum(self.membership.voters, {n: True for n in round_.acks}):
                confirmed = round_.seq
        if not confirmed:
            return
        # A confirmed round also confirms every earlier one.
        while self._read_rounds and self._read_rounds[0].seq <= confirmed:
            round_ = self._read_rounds.pop(0)
            if round_.seq == confirmed:
                self._read_quorum = frozenset(round_.acks - {self.id})
            for requester, context in round_.contexts:
                self._deliver_read(requester, context, round_.index)

    def _deliver_read(self, requester: int, context: int, index: int, ok: bool = True) -> None:
        if requester == self.id:
            self._read_states.append(ReadState(context, index, ok))
        else:
            self._send(ReadIndexResponse(self.term, self.id, requester, context, index, ok))

    def _on_read_index_request(self, msg: ReadIndexRequest) -> None:
        if self.role != Role.LEADER:
            self._send(ReadIndexResponse(self.term, self.id, msg.sender, msg.request_id, 0, False))
            return
        self._leader_read(msg.sender, msg.request_id)

    def _on_read_index_response(self, msg: ReadIndexResponse) -> None:
        forwarded = self._forwarded_reads.pop(msg.request_id, None)
        if forwarded is not None:
            self._read_states.append(ReadState(forwarded[0], msg.index, msg.ok))

    def _expire_forwarded_reads(self) -> None:
        """A forwarded read whose request or answer was lost fails after an election timeout, so
        the caller retries (at the leader) instead of waiting for a term change."""
        deadline = self.tick_count - self.config.election_timeout_ticks_min
        # Forward ids increase with time, so the oldest are first in the dict.
        for request_id, (context, sent_tick) in list(self._forwarded_reads.items()):
            if sent_tick > deadline:
                break
            del self._forwarded_reads[request_id]
            self._read_states.append(ReadState(context, 0, ok=False))

    def _fail_reads(self) -> None:
        """Leadership changed: every read not yet confirmed fails (the caller retries)."""
        pending = list(self._reads_waiting_commit) + list(self._reads_new)
        for round_ in self._read_rounds:
            pending.extend(round_.contexts)
        self._reads_waiting_commit, self._reads_new, self._read_rounds = [], [], []
        self._read_quorum = frozenset()
        for requester, context in pending:
            self._deliver_read(requester, context, 0, ok=False)
        for context, _ in self._forwarded_reads.values():
            self._read_states.append(ReadState(context, 0, ok=False))
        self._forwarded_reads = {}

    # ================================================================================ internals: membership

    @staticmethod
    def _changed(membership: Membership, data: bytes) -> Membership:
        """The membership a change entry results in (it carries it: see encode_conf_change)."""
        return decode_conf_change(data)[1]

    @staticmethod
    def _apply_change(membership: Membership, change: ConfChange) -> Membership:
        voters, learners = set(membership.voters), set(membership.learners)
        if change.kind == ConfChangeKind.ADD_LEARNER:
            learners.add(change.node_id)
        elif change.kind == ConfChangeKind.PROMOTE:
            learners.discard(change.node_id)
            voters.add(change.node_id)
        else:
            voters.discard(change.node_id)
            learners.discard(change.node_id)
        return Membership(tuple(sorted(voters)), tuple(sorted(learners)))

    def _check_conf_change(self, change: ConfChange) -> None:
        if "conf_change_before_term_commit" not in self._mutants:
            if not self.committed_in_term():
                raise MembershipChangeRejected("the leader has not yet committed an entry of its term")
            if self._conf_history[-1][0] > self.log.commit_index:
                raise MembershipChangeRejected("another membership change is in progress")
        if self.transferee != NO_NODE:
            raise MembershipChangeRejected("leadership transfer in progress")
        m, node = self.membership, change.node_id
        if change.kind == ConfChangeKind.ADD_LEARNER:
            if m.contains(node):
                raise MembershipChangeRejected(f"node {node} is already a member")
            if len(m.members) >= limits.members_max:
                raise MembershipChangeRejected("cluster is at members_max")
        elif change.kind == ConfChangeKind.PROMOTE:
            if node not in m.learners:
                raise MembershipChangeRejected(f"node {node} is not a learner")
            pr = self.progress.get(node)
            lag = self.log.last_index() - (pr.match if pr else 0)
            if pr is None or lag > self.config.learner_catchup_entries_max:
                raise MembershipChangeRejected(f"learner {node} has not caught up ({lag} entries behind)")
            # Within the bound but never heard from (a learner that is not running, on a short
            # log): promoting it would add a voter that cannot vote.
            if self.tick_count - pr.last_heard_tick >= self.config.election_timeout_ticks_min:
                raise MembershipChangeRejected(f"learner {node} has not caught up (not heard from within an election timeout)")
        elif change.kind == ConfChangeKind.REMOVE:
            if not m.contains(node):
                raise MembershipChangeRejected(f"node {node} is not a member")
            if m.voters == (node,):
                raise MembershipChangeRejected("cannot remove the last voter")
        else:
            raise InvalidArgument(f"unknown membership change kind {change.kind}")

    def _apply_conf_change_on_append(self, entry: Entry) -> None:
        new = self._changed(self.membership, entry.data)
        self._conf_history.append((entry.index, new))
        self.membership = new
        if self.role != Role.LEADER:
            return
        last = self.log.last_index()
        for node in new.members:
            if node != self.id and node not in self.progress:
                pr = Progress(last)
                pr.recent_active = True
                self.progress[node] = pr
        for node in list(self.progress):
            if not new.contains(node):
                del self.progress[node]

    def _conf_history_after(self, through: int) -> list[tuple[int, Membership]]:
        base = self.membership_at(through)
        return [(through, base)] + [(at, m) for at, m in self._conf_history if at > through]

    # ================================================================================ internals: output

    def _send(self, msg: Message, after_persist: bool = False) -> None:
        (self._msgs_after if after_persist else self._msgs).append(msg)


_HANDLERS: dict[type, Callable[[Raft, Any], None]] = {
    AppendEntries: Raft._on_append,
    AppendEntriesResponse: Raft._on_append_response,
    Heartbeat: Raft._on_heartbeat,
    HeartbeatResponse: Raft._on_heartbeat_response,
    RequestVote: Raft._on_request_vote,
    RequestVoteResponse: Raft._on_vote_response,
    InstallSnapshot: Raft._on_install_snapshot,
    InstallSnapshotResponse: Raft._on_snapshot_response,
    TimeoutNow: Raft._on_timeout_now,
    ReadIndexRequest: Raft._on_read_index_request,
    ReadIndexResponse: Raft._on_read_index_response,
}
