"""Unit tests of the Raft core, one rule each, citing the paper (§N) or the thesis (thesis §N)."""

from __future__ import annotations

import random

import pytest

from trimaran import limits
from trimaran.cluster.config import RaftConfig
from trimaran.cluster.raft import Raft, Role
from trimaran.cluster.replica import ReplicaConfig
from trimaran.errors import ConfigError, InvalidArgument, MembershipChangeRejected, NotLeader, Unavailable
from trimaran.protocols.codec import encode_conf_change
from trimaran.protocols.messages import (
    AppendEntries,
    AppendEntriesResponse,
    ConfChange,
    ConfChangeKind,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    InstallSnapshot,
    Membership,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from trimaran.simulations.harness import Harness, fast_raft_config


def lone_raft(node_id: int = 1, voters: tuple[int, ...] = (1, 2, 3), **kw: object) -> Raft:
    return Raft(fast_raft_config(node_id, voters, **kw), random.Random(node_id), HardState(), None, [])


def tick_until(r: Raft, role: Role, ticks_max: int = 50) -> None:
    for _ in range(ticks_max):
        if r.role == role:
            return
        r.tick()
    assert r.role == role


def write(h: Harness, leader: int, count: int, key: bytes = b"k") -> None:
    """Register a session on the leader and apply ``count`` increments through the log."""
    replica = h.nodes[leader].replica
    replica.register("reg", 1000)
    h.process()
    h.settle()
    client_id = next(r.value for r in h.replies(leader) if r.token == "reg")
    for seq in range(1, count + 1):
        replica.submit(("w", seq), client_id, seq, seq - 1, "register", ["incr", key, 1], 1000 + seq)
    h.process()
    h.settle()
    h.tick(leader)
    h.settle()
    h.replies(leader)  # drop the write acknowledgements; tests look at later replies


def value(h: Harness, node: int, key: bytes = b"k") -> bytes | None:
    return h.nodes[node].replica.services["register"].data.get(key)


# --------------------------------------------------------------------------- config


def test_config_validate_checks_relations() -> None:
    members = Membership((1, 2, 3))
    with pytest.raises(ConfigError, match="election_timeout_ticks_max"):
        RaftConfig(1, members, election_timeout_ticks_min=10, election_timeout_ticks_max=10).validate()
    with pytest.raises(ConfigError, match="two heartbeat"):
        RaftConfig(1, members, election_timeout_ticks_min=4, election_timeout_ticks_max=8, heartbeat_interval_ticks=2).validate()
    with pytest.raises(ConfigError, match="lease_reads needs check_quorum"):
        RaftConfig(1, members, lease_reads=True, check_quorum=False).validate()
    with pytest.raises(ConfigError, match="node_id"):
        RaftConfig(0, members).validate()
    assert RaftConfig(1, members).validate().node_id == 1


# --------------------------------------------------------------------------- elections (§5.2)


def test_election_timeout_is_randomized_within_bounds() -> None:
    """§5.2: randomized election timeouts, drawn from the injected seeded Random."""
    rafts = [Raft(fast_raft_config(1, (1, 2, 3), election_timeout_ticks_max=50), random.Random(s)) for s in range(40)]
    timeouts = {r.randomized_election_timeout for r in rafts}
    assert len(timeouts) > 5 and min(timeouts) >= 5 and max(timeouts) < 50
    # Same seed, same timeout: determinism.
    assert Raft(fast_raft_config(1, (1, 2, 3)), random.Random(7)).randomized_election_timeout == Raft(
        fast_raft_config(1, (1, 2, 3)), random.Random(7)
    ).randomized_election_timeout


def test_natural_election_elects_exactly_one_leader() -> None:
    """§5.2: timeouts fire, a candidate wins a majority; Election Safety checked every step."""
    h = Harness(5, seed=3)
    for _ in range(40):
        h.tick_all()
        if h.leader() is not None:
            break
    leader = h.leader()
    assert leader is not None
    term = h.raft(leader).term
    assert all(h.raft(n).leader_id == leader and h.raft(n).term == term for n in h.ids)


def test_candidate_votes_for_itself_and_persists_before_asking() -> None:
    """§5.2 + Figure 2: currentTerm and votedFor are durable before RequestVote goes out."""
    r = lone_raft(1, pre_vote=False)
    tick_until(r, Role.CANDIDATE)
    rd = r.ready()
    assert r.role == Role.CANDIDATE and rd.hard_state == HardState(1, 1, 0)
    assert not [m for m in rd.messages if isinstance(m, RequestVote)]
    assert sorted(m.recipient for m in rd.messages_after_persist if isinstance(m, RequestVote)) == [2, 3]


def test_vote_grant_waits_for_persistence_and_one_vote_per_term() -> None:
    """§5.2: at most one vote per term, first-come-first-served; the grant follows the durable vote."""
    r = lone_raft(1)
    r.step(RequestVote(1, 2, 1, 0, 0))
    rd = r.ready()
    assert rd.hard_state is not None and rd.hard_state.vote == 2
    assert rd.messages == [] and rd.messages_after_persist == [RequestVoteResponse(1, 1, 2, True)]
    r.step(RequestVote(1, 3, 1, 0, 0))
    rd = r.ready()
    assert rd.messages_after_persist == [RequestVoteResponse(1, 1, 3, False)]


def test_election_restriction_rejects_a_stale_log() -> None:
    """§5.4.1: a vote is denied to a candidate whose log is less up-to-date."""
    entries = [Entry(1, 1, 0, b""), Entry(2, 2, 0, b"")]
    r = Raft(fast_raft_config(1, (1, 2, 3)), random.Random(1), HardState(2, 0, 0), None, entries)
    r.step(RequestVote(3, 2, 1, 5, 1))  # longer log, older last term
    assert r.ready().messages_after_persist == [RequestVoteResponse(3, 1, 2, False)]
    r.step(RequestVote(3, 3, 1, 2, 2))  # same last term and index: up to date
    assert r.ready().messages_after_persist == [RequestVoteResponse(3, 1, 3, True)]


def test_pre_vote_does_not_change_terms() -> None:
    """Thesis §9.6: a pre-candidate asks with term+1 but nobody (itself included) changes term."""
    r = lone_raft(1)
    tick_until(r, Role.PRE_CANDIDATE)
    rd = r.ready()
    assert r.role == Role.PRE_CANDIDATE and r.term == 0 and rd.hard_state is None
    asks = [m for m in rd.messages if isinstance(m, RequestVote)]
    assert asks and all(m.pre_vote and m.term == 1 for m in asks)
    voter = lone_raft(2)
    voter.step(asks[0])
    assert voter.term == 0 and voter.ready().messages == [RequestVoteResponse(1, 2, 1, True, True)]


def test_partitioned_node_rejoining_does_not_disrupt() -> None:
    """Thesis §9.6: an isolated node keeps pre-voting without raising its term; on rejoin the
    leader keeps its term and leadership."""
    h = Harness(3, seed=5)
    h.elect(1)
    term = h.raft(1).term
    for _ in range(60):  # node 3 is cut off: its messages are dropped
        h.tick(3)
        h.network = [m for m in h.network if m.sender != 3 and m.recipient != 3]
    assert h.raft(3).term == term
    h.tick_all(5)
    assert h.leader() == 1 and h.raft(1).term == term


def test_follower_in_lease_ignores_disruptive_vote_requests() -> None:
    """Thesis §4.2.3: a node that heard from a leader within the minimum election timeout ignores
    RequestVote (and does not adopt its term)."""
    h = Harness(3, seed=1)
    h.elect(1)
    term = h.raft(2).term
    h.nodes[2].deliver(RequestVote(term + 5, 3, 2, 100, term + 4))
    assert h.raft(2).term == term and h.raft(2).leader_id == 1


def test_check_quorum_steps_down_an_isolated_leader() -> None:
    """Thesis §6.2: a leader that hears from no majority for an election timeout steps down."""
    h = Harness(3, seed=2)
    h.elect(1)
    for _ in range(30):
        h.tick(1)
        h.network.clear()
    assert h.raft(1).role != Role.LEADER and h.raft(1).leader_id != 1


# --------------------------------------------------------------------------- replication (§5.3)


def test_new_leader_appends_a_noop_of_its_term() -> None:
    """§8 / §5.4.2: a new leader commits a no-op of its term at once."""
    h = Harness(3, seed=1)
    h.elect(2)
    raft = h.raft(2)
    first = raft.log.entry(raft.term_first_index)
    assert first.term == raft.term and first.data == b"" and raft.committed_in_term()


def test_replication_commits_and_applies_on_every_node() -> None:
    h = Harness(3, seed=1)
    h.elect(1)
    write(h, 1, 10)
    assert [value(h, n) for n in h.ids] == [b"10", b"10", b"10"]


def test_follower_rejects_mismatch_with_conflict_hints_and_truncates_conflicts() -> None:
    """§5.3: reject when prevLogIndex/Term do not match, hinting the conflicting term's first index;
    an accepted append deletes conflicting entries and what follows."""
    entries = [Entry(1, 1, 0, b""), Entry(2, 1, 0, b"a"), Entry(3, 2, 0, b"b"), Entry(4, 2, 0, b"c")]
    r = Raft(fast_raft_config(2, (1, 2, 3)), random.Random(2), HardState(3, 0, 1), None, entries)
    r.step(AppendEntries(3, 1, 2, 4, 3, [], 1))
    reject = r.ready().messages_after_persist[0]
    assert isinstance(reject, AppendEntriesResponse) and not reject.success
    assert (reject.conflict_index, reject.conflict_term) == (3, 2)
    r.step(AppendEntries(3, 1, 2, 2, 1, [Entry(3, 3, 0, b"x")], 1))
    rd = r.ready()
    assert r.log.last_index() == 3 and r.log.term_at(3) == 3
    assert rd.truncate_from == 3 and [e.index for e in rd.entries] == [3]
    assert rd.messages_after_persist == [AppendEntriesResponse(3, 2, 1, True, 3)]


def test_leader_backtracks_a_whole_term_per_round_trip() -> None:
    """§5.3 optimization: one rejection skips all of the follower's conflicting term."""
    h = Harness(3, seed=1)
    h.elect(1)
    write(h, 1, 5)
    # Node 3 falls behind; node 1 writes many entries while 3 is away; then 3 returns.
    h.crash(3)
    write(h, 1, 40)
    h.restart(3)
    round_trips = 0
    for _ in range(200):
        h.tick(1)
        before = len([m for m in h.network if isinstance(m, AppendEntriesResponse) and not m.success])
        h.settle()
        round_trips += before
        if h.raft(3).log.last_index() == h.raft(1).log.last_index():
            break
    assert h.raft(3).log.last_index() == h.raft(1).log.last_index()
    assert value(h, 3) == value(h, 1)


def test_pipelining_sends_a_window_of_appends_without_waiting() -> None:
    """Thesis §10.2.1: a leader pipelines appends up to inflight_messages_max per follower."""
    h = Harness(3, seed=1, inflight_messages_max=3, append_bytes_max=200)
    h.elect(1)
    replica = h.nodes[1].replica
    replica.register("reg", 1)
    h.process()
    h.settle()
    client_id = next(r.value for r in h.replies(1) if r.token == "reg")
    for seq in range(1, 11):
        replica.submit(seq, client_id, seq, 0, "register", ["set", b"k", b"x" * 150], seq)
        h.process()  # one entry per submit
    appends = [m for m in h.network if isinstance(m, AppendEntries) and m.recipient == 2 and m.entries]
    assert len(appends) == 3  # the window, not one at a time and not everything
    h.settle()
    h.tick(1)
    h.settle()
    assert h.raft(2).log.last_index() == h.raft(1).log.last_index()


def test_leader_counts_itself_only_after_persisting() -> None:
    """Persist before you speak: a leader's own vote in the commit quorum needs its fsync."""
    h = Harness(3, seed=1)
    h.elect(1)
    base = h.raft(1).log.commit_index
    h.nodes[1].replica.register("reg", 1)
    h.process()
    # Deliver the append to one follower and sync that follower: 1 durable copy + an unsynced leader.
    for _ in range(len(h.network)):
        h.deliver(0)
    h.sync(2)
    while h.network:
        h.deliver(0)
    assert h.raft(1).log.commit_index == base  # the leader itself is not durable yet
    h.sync(1)
    assert h.raft(1).log.commit_index > base


def test_leader_does_not_commit_an_earlier_term_entry_by_counting() -> None:
    """§5.4.2 (Figure 8): replicas of an older-term entry on a majority do not commit it; only a
    current-term entry does."""
    old = [Entry(1, 1, 0, b""), Entry(2, 2, 0, b"old")]
    r = Raft(fast_raft_config(1, (1, 2, 3), pre_vote=False), random.Random(1), HardState(2, 0, 1), None, old)
    tick_until(r, Role.CANDIDATE)
    rd = r.ready()
    r.on_persisted(rd.persist_index or 2, rd.persist_term or 2)
    r.step(RequestVoteResponse(3, 2, 1, True))
    assert r.role == Role.LEADER and r.term == 3
    rd = r.ready()
    # Follower 2 acknowledges only the old-term entry 2 (it has not yet stored the no-op).
    r.step(AppendEntriesResponse(3, 2, 1, True, 2))
    assert r.log.commit_index == 1
    r.on_persisted(r.log.last_index(), 3)
    r.step(AppendEntriesResponse(3, 2, 1, True, 3))
    assert r.log.commit_index == 3


def test_a_commit_index_alone_is_never_a_write_of_its_own() -> None:
    """Term and vote must be durable before speaking (§5.1); the commit index need not be, so a
    Ready never asks for an fsync just to record it (etcd's MustSync): it rides with entries."""
    entries = [Entry(1, 1, 0, b""), Entry(2, 1, 0, b"x")]
    r = Raft(fast_raft_config(2, (1, 2, 3)), random.Random(2), HardState(1, 1, 0), None, entries)
    r.step(Heartbeat(1, 1, 2, 2))
    rd = r.ready()
    assert r.log.commit_index == 2 and rd.hard_state is None and not rd.needs_persist()
    r.step(AppendEntries(1, 1, 2, 2, 1, [Entry(3, 1, 0, b"y")], 2))
    assert r.ready().hard_state == HardState(1, 1, 2)
    r.step(RequestVote(2, 3, 2, 3, 1, transfer=True))  # new term and vote: written without entries
    assert r.ready().hard_state == HardState(2, 3, 2)


def test_heartbeat_never_commits_past_the_followers_match() -> None:
    """A heartbeat carries min(commit, match) so a follower never commits entries it may not hold."""
    entries = [Entry(1, 1, 0, b""), Entry(2, 1, 0, b"stale")]
    r = Raft(fast_raft_config(2, (1, 2, 3)), random.Random(2), HardState(2, 0, 0), None, entries)
    r.step(Heartbeat(2, 1, 2, 1))
    assert r.log.commit_index == 1


# --------------------------------------------------------------------------- snapshots (§7)


def test_lagging_follower_catches_up_by_chunked_snapshot() -> None:
    """§7: log compacted below a follower's position → InstallSnapshot in chunks, restore, resume."""
    h = Harness(3, seed=1, replica_config=ReplicaConfig(snapshot_interval_entries=5, snapshot_keep_entries=0))
    h.elect(1)
    h.crash(3)
    for round_ in range(12):
        write(h, 1, 5, key=b"key-%d" % round_)
        for n in (1, 2):
            h.sync(n)
    assert h.raft(1).log.offset_index > 0
    h.restart(3)
    for _ in range(50):
        h.tick(1)
        h.settle()
        if h.raft(3).log.applied_index == h.raft(1).log.applied_index:
            break
    installed = h.raft(3).snapshot
    assert installed is not None and h.raft(3).log.offset_index == installed.meta.last_index
    assert installed.meta.size_bytes > 256, "the snapshot needed several chunks (snapshot_chunk_bytes=256)"
    assert h.nodes[3].replica.services["register"].data == h.nodes[1].replica.services["register"].data
    assert h.nodes[3].replica.sessions.snapshot() == h.nodes[1].replica.sessions.snapshot()


def test_restart_from_storage_restores_snapshot_and_log() -> None:
    h = Harness(3, seed=1, replica_config=ReplicaConfig(snapshot_interval_entries=4, snapshot_keep_entries=1))
    h.elect(1)
    write(h, 1, 12)
    for n in h.ids:
        h.sync(n)
    before = h.nodes[2].replica.services["register"].data.copy()
    h.crash(2)
    h.restart(2)
    h.tick(1)
    h.settle()
    assert h.nodes[2].replica.services["register"].data == before


# --------------------------------------------------------------------------- reads (thesis §6.4)


def test_read_index_waits_for_a_heartbeat_quorum() -> None:
    """Thesis §6.4: the leader records its commit index, confirms leadership with a heartbeat round,
    then serves the read once applied."""
    h = Harness(3, seed=1)
    h.elect(1)
    write(h, 1, 3)
    h.nodes[1].replica.read("r", "register", ["get", b"k"])
    h.process()
    assert h.replies(1) == []  # not before the round
    assert any(isinstance(m, Heartbeat) and m.read_seq for m in h.network)
    h.settle()
    replies = h.replies(1)
    assert [(r.token, r.value) for r in replies] == [("r", b"3")]


def test_partitioned_leader_serves_no_read() -> None:
    """Thesis §6.4: a deposed leader cannot confirm leadership, so it never answers a stale read."""
    h = Harness(3, seed=1)
    h.elect(1)
    write(h, 1, 1)
    h.nodes[1].replica.read("r", "register", ["get", b"k"])
    h.process()
    h.network = [m for m in h.network if m.sender != 1]  # node 1 is cut off
    for _ in range(30):
        h.tick(1)
        h.network = [m for m in h.network if m.sender != 1]
    replies = h.replies(1)
    assert all(not r.ok and isinstance(r.value, NotLeader) for r in replies) and replies


def test_follower_forwards_read_index_to_the_leader() -> None:
    h = Harness(3, seed=1)
    h.elect(1)
    write(h, 1, 2)
    h.nodes[3].replica.read("r", "register", ["get", b"k"])
    h.process()
    h.settle()
    h.tick(1)
    h.settle()
    assert [(r.token, r.value) for r in h.replies(3)] == [("r", b"2")]


def _round_heartbeats(h: Harness) -> list[int]:
    """Who the leader's read-round heartbeats in flight go to."""
    return sorted(m.recipient for m in h.network if isinstance(m, Heartbeat) and m.read_seq)


def _ask_read(h: Harness, token: str) -> None:
    """Node 1 (the leader) reads ``k`` for ``token`` and sends what that starts."""
    h.nodes[1].replica.read(token, "register", ["get", b"k"])
    h.process()


def _answers(h: Harness) -> list[tuple[str, object]]:
    return [(r.token, r.value) for r in h.replies(1)]


def test_a_read_round_asks_only_the_followers_that_confirmed_the_last_one() -> None:
    """Thesis §6.4 needs a majority's answers, not everyone's: once node 2's answer confirmed a
    round, the next round's heartbeat goes to node 2 alone and node 3 is not woken for it."""
    h = Harness(3, seed=1)
    h.elect(1)
    write(h, 1, 2)
    _ask_read(h, "first")
    assert _round_heartbeats(h) == [2, 3]  # no round confirmed yet: everyone is asked
    h.settle()
    assert _answers(h) == [("first", b"2")]
    _ask_read(h, "second")
    assert _round_heartbeats(h) == [2]
    h.settle()
    assert _answers(h) == [("second", b"2")]


def test_a_read_round_the_chosen_follower_ignores_is_asked_of_all_a_tick_later() -> None:
    """Node 2 confirmed the last round, then stops answering: the round waits one tick, not a
    heartbeat interval, is then asked of every follower, node 3 confirms it, and the next round
    goes to node 3."""
    h = Harness(3, seed=1, heartbeat_interval_ticks=4, election_timeout_ticks_min=10, election_timeout_ticks_max=20)
    h.elect(1)
    write(h, 1, 2)
    _ask_read(h, "first")
    h.settle()
    assert _answers(h) == [("first", b"2")]
    h.raft(1).heartbeat_elapsed = 0  # the next periodic heartbeat is a whole interval away

    def cut_node_2() -> None:
        h.network = [m for m in h.network if m.recipient != 2]

    _ask_read(h, "second")
    assert _round_heartbeats(h) == [2]
    cut_node_2()
    h.tick(1)  # the round began before this tick: it may still be answered
    assert _round_heartbeats(h) == []
    h.tick(1)
    assert _round_heartbeats(h) == [2, 3]
    cut_node_2()
    h.settle()
    assert _answers(h) == [("second", b"2")]
    _ask_read(h, "third")
    assert _round_heartbeats(h) == [3]


def test_lease_read_skips_the_round_only_when_enabled() -> None:
    """Thesis §6.4.1: with lease reads on, a leader within its lease answers without a round."""
    h = Harness(3, seed=1, lease_reads=True)
    h.elect(1)
    write(h, 1, 1)
    h.tick(1)
    h.settle()
    h.nodes[1].replica.read("lease", "register", ["get", b"k"], consistency="lease")
    h.process()
    assert [(r.token, r.value) for r in h.replies(1)] == [("lease", b"1")]


# --------------------------------------------------------------------------- transfer (thesis §3.10)


def test_leadership_transfer_hands_over_and_blocks_proposals_meanwhile() -> None:
    h = Harness(3, seed=1)
    h.elect(1)
    write(h, 1, 2)
    h.nodes[1].replica.transfer_leadership(3)
    with pytest.raises(Unavailable):
        h.raft(1).propose([b"x"])
    h.process()
    assert any(isinstance(m, TimeoutNow) for m in h.network)
    h.settle()
    assert h.leader() == 3 and h.raft(1).role == Role.FOLLOWER


def test_transfer_to_a_non_voter_is_refused() -> None:
    h = Harness(3, seed=1)
    h.elect(1)
    with pytest.raises(InvalidArgument):
        h.nodes[1].replica.transfer_leadership(9)


# --------------------------------------------------------------------------- membership (thesis §4)


def test_learner_joins_catches_up_and_is_promoted() -> None:
    """Thesis §4.2.1: a new server joins as a non-voting learner, catches up, then is promoted."""
    h = Harness(4, seed=1, voters=(1, 2, 3))  # node 4 starts outside, knowing no members
    h.elect(1)
    write(h, 1, 3)
    replica = h.nodes[1].replica
    replica.change_membership("learner", ConfChange(ConfChangeKind.ADD_LEARNER, 4))
    with pytest.raises(MembershipChangeRejected, match="in progress"):
        replica.change_membership("again", ConfChange(ConfChangeKind.REMOVE, 2))
    h.process()
    h.settle()
    assert h.raft(1).membership == Membership((1, 2, 3), (4,))
    h.tick(1)
    h.settle()
    assert value(h, 4) == b"3"
    replica.change_membership("promote", ConfChange(ConfChangeKind.PROMOTE, 4))
    h.process()
    h.settle()
    h.tick(1)
    h.settle()
    assert h.raft(1).membership == Membership((1, 2, 3, 4))
    assert h.raft(4).membership == Membership((1, 2, 3, 4))


def test_promotion_refused_until_the_learner_caught_up() -> None:
    h = Harness(3, seed=1)
    h.elect(1)
    replica = h.nodes[1].replica
    replica.change_membership("remove", ConfChange(ConfChangeKind.REMOVE, 3))
    h.process()
    h.settle()
    h.tick(1)
    h.settle()
    h.crash(3)
    replica.change_membership("learner", ConfChange(ConfChangeKind.ADD_LEARNER, 3))
    h.process()
    h.settle()
    h.tick(1)
    h.settle()
    write(h, 1, 3)
    with pytest.raises(MembershipChangeRejected, match="caught up"):
        replica.change_membership("promote", ConfChange(ConfChangeKind.PROMOTE, 3))


def test_no_membership_change_before_a_current_term_commit() -> None:
    """The single-server change fix (Ongaro, raft-dev 2015): a leader commits an entry of its own
    term before starting a change."""
    old = [Entry(1, 1, 0, b"")]
    r = Raft(fast_raft_config(1, (1,)), random.Random(1), HardState(1, 1, 1), None, old)
    tick_until(r, Role.LEADER)
    with pytest.raises(MembershipChangeRejected, match="not yet committed"):
        r.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 2))
    rd = r.ready()
    r.on_persisted(rd.persist_index, rd.persist_term)
    assert r.propose_conf_change(ConfChange(ConfChangeKind.ADD_LEARNER, 2)) == 3


def test_removed_leader_steps_down_once_the_change_commits() -> None:
    """Thesis §4.2.2: a leader removed from the configuration steps down after committing it."""
    h = Harness(3, seed=1)
    h.elect(1)
    h.nodes[1].replica.change_membership("rm", ConfChange(ConfChangeKind.REMOVE, 1))
    h.process()
    h.settle()
    h.tick(1)
    h.settle()
    assert h.raft(1).role == Role.FOLLOWER
    for _ in range(40):
        h.tick(2)
        h.tick(3)
        h.settle()
        if h.leader() in (2, 3):
            break
    assert h.leader() in (2, 3)
    assert h.raft(h.leader()).membership == Membership((2, 3))


def test_node_removed_by_an_uncommitted_change_still_campaigns() -> None:
    """Thesis §4.2.2: "a server that is not part of its own latest configuration should still start
    new elections, as it might still be needed until the Cnew entry is committed"; it does not count
    its own vote. Here leader 1 appends its own removal, is cut off before anyone else gets the entry
    and steps down (check-quorum, thesis §6.2), and node 4 is down. Nodes 2 and 3 need 3 votes of
    {1, 2, 3, 4}; node 1 refuses them (its log is longer, §5.4.1) and only node 1 can carry the
    change. Without the rule the cluster stays leaderless forever (simulator seed 100436)."""
    h = Harness(4, seed=1)
    h.elect(1)
    h.crash(4)
    h.nodes[1].replica.change_membership("rm", ConfChange(ConfChangeKind.REMOVE, 1))
    h.process()
    h.sync(1)
    h.network.clear()  # the change never leaves node 1
    for _ in range(30):
        h.tick(1)
        h.network.clear()
        if h.raft(1).role != Role.LEADER:
            break
    assert h.raft(1).role == Role.FOLLOWER and h.raft(1).membership == Membership((2, 3, 4))
    assert h.raft(2).membership == Membership((1, 2, 3, 4))
    for _ in range(200):
        for node in (1, 2, 3):
            h.tick(node)
        h.settle()
        leader = h.leader()
        if leader in (2, 3) and h.raft(leader).committed_in_term():
            break
    leader = h.leader()
    assert leader in (2, 3), f"no leader among 2 and 3: {[h.raft(n).role.name for n in (1, 2, 3)]}"
    assert h.raft(leader).membership == Membership((2, 3, 4))
    assert h.raft(leader).membership_at(h.raft(leader).log.commit_index) == Membership((2, 3, 4))
    assert h.raft(1).role == Role.FOLLOWER


def test_a_removed_node_campaigns_only_until_it_knows_the_removal_committed() -> None:
    """Thesis §4.2.2: the exception above ends once the node knows Cnew is committed; from then on
    it never campaigns (a removed server must not disturb the cluster, thesis §4.2.3)."""
    removal = encode_conf_change(ConfChange(ConfChangeKind.REMOVE, 3), Membership((1, 2)))
    entries = [Entry(1, 1, EntryKind.NORMAL, b""), Entry(2, 1, EntryKind.CONF_CHANGE, removal)]
    for commit_index, campaigns in ((1, True), (2, False)):
        r = Raft(fast_raft_config(3, (1, 2, 3)), random.Random(3), HardState(1, 0, commit_index), None, entries)
        assert r.membership == Membership((1, 2))
        asked: set[int] = set()
        for _ in range(50):
            r.tick()
            asked |= {m.recipient for m in r.ready().messages if isinstance(m, RequestVote)}
        assert (r.role == Role.PRE_CANDIDATE, asked) == ((True, {1, 2}) if campaigns else (False, set()))
        assert r.term == 1  # pre-votes only: the removed node never raises its term

def test_proposals_on_a_follower_raise_not_leader_with_a_hint() -> None:
    h = Harness(3, seed=1)
    h.elect(2)
    with pytest.raises(NotLeader) as info:
        h.nodes[1].replica.register("x", 1)
    assert info.value.leader_hint == 2


def test_a_forged_term_jump_is_dropped_and_no_term_passes_the_counter_bound() -> None:
    """§5.1 says adopt any higher term; a forged one (issue 16 item 4) must not be able to push a node
    where its next term overflows: a jump over limits.raft_term_jump_max is dropped, and a node at
    limits.raft_counter_max never campaigns past it."""
    h = Harness(3, seed=1)
    h.elect(1)
    term = h.raft(2).term
    h.nodes[2].deliver(AppendEntries(term + limits.raft_term_jump_max + 1, 3, 2, 0, 0, [], 0))
    assert h.raft(2).term == term and h.raft(2).leader_id == 1
    r = Raft(fast_raft_config(1, (1,)), random.Random(1), HardState(limits.raft_counter_max, 0, 0), None, [])
    for _ in range(30):
        r.tick()
    assert r.term == limits.raft_counter_max and r.role != Role.LEADER


def test_reads_asked_together_share_one_round_and_the_counters_say_so() -> None:
    """The node's metrics count reads asked and rounds started (reads per round is what the kv
    benchmark prints): three reads asked before the leader's next ready share one round."""
    h = Harness(3, seed=1)
    h.elect(1)
    write(h, 1, 2)
    replica = h.nodes[1].replica
    reads_before, rounds_before = replica.reads_asked, replica.raft.read_rounds_started
    for token in ("a", "b", "c"):
        replica.read(token, "register", ["get", b"k"])
    h.process()
    h.settle()
    assert sorted(_answers(h)) == [("a", b"2"), ("b", b"2"), ("c", b"2")]
    assert replica.reads_asked - reads_before == 3
    assert replica.raft.read_rounds_started - rounds_before == 1
