"""The clock-suspect input of the Raft core (:meth:`Raft.set_clock_suspect`): a node whose wall clock
is beyond the runtime's bound from a majority must not lead, because a leader's clock stamps the
log (TTLs, session expiry). Leadership transfer is thesis §3.10; elections §5.2 and Pre-Vote
thesis §9.6."""

from __future__ import annotations

from trimaran.cluster.raft import Role
from trimaran.protocols.messages import RequestVote, TimeoutNow
from trimaran.simulations.harness import Harness

from tests.cluster.test_raft import lone_raft, tick_until, write


def test_a_suspect_follower_never_campaigns_and_does_once_cleared() -> None:
    r = lone_raft(1)
    r.set_clock_suspect(True)
    for _ in range(10 * r.config.election_timeout_ticks_max):
        r.tick()
    assert r.role == Role.FOLLOWER and r.term == 0
    assert not any(isinstance(m, RequestVote) for m in r.ready().messages)  # not even a pre-vote (§9.6)
    # Its election count stayed past the timeout (never in a lease, so it keeps voting for others)...
    assert not r.in_lease()
    r.set_clock_suspect(False)
    r.tick()  # ... and it campaigns at the next tick once its clock agrees again
    assert r.role == Role.PRE_CANDIDATE


def test_a_suspect_node_ignores_timeout_now() -> None:
    """Thesis §3.10: a transfer target campaigns at once on TimeoutNow, unless its clock is suspect."""
    h = Harness(3, seed=1)
    h.elect(1)
    h.raft(3).set_clock_suspect(True)
    h.nodes[1].replica.transfer_leadership(3)
    h.process()
    assert any(isinstance(m, TimeoutNow) for m in h.network)
    h.settle()
    assert h.leader() == 1 and h.raft(3).role == Role.FOLLOWER


def test_a_suspect_candidate_gives_up_its_campaign() -> None:
    r = lone_raft(1)
    tick_until(r, Role.PRE_CANDIDATE)
    r.set_clock_suspect(True)
    assert r.role == Role.FOLLOWER
    r2 = lone_raft(2, pre_vote=False)
    tick_until(r2, Role.CANDIDATE)
    term = r2.term
    r2.set_clock_suspect(True)
    assert r2.role == Role.FOLLOWER and r2.term == term and r2.vote == 2


def test_a_suspect_leader_hands_over_to_its_most_up_to_date_voter() -> None:
    h = Harness(3, seed=2)
    h.elect(1)
    write(h, 1, 3)
    # Node 3 misses the last entry: node 2 is the most up to date, and gets leadership (§3.10).
    h.crash(3)
    h.raft(1).propose([b""])
    h.process()
    h.settle()
    h.restart(3)
    assert h.raft(1).progress[2].match > h.raft(1).progress[3].match
    h.raft(1).set_clock_suspect(True)
    assert h.raft(1).transferee == 2
    h.process()
    h.settle()
    assert h.leader() == 2 and h.raft(1).role == Role.FOLLOWER


def test_a_suspect_leader_whose_hand_off_fails_steps_down_within_an_election_timeout() -> None:
    h = Harness(3, seed=3)
    h.elect(1)
    h.raft(2).set_clock_suspect(True)
    h.raft(3).set_clock_suspect(True)  # nobody may take over
    h.raft(1).set_clock_suspect(True)
    h.process()
    h.settle()
    assert h.raft(1).role == Role.LEADER  # the transfer target ignored TimeoutNow
    ticks = 0
    while h.raft(1).role == Role.LEADER:
        assert ticks <= h.raft(1).config.election_timeout_ticks_min
        h.tick(1)
        h.settle()
        ticks += 1
    assert h.raft(1).role == Role.FOLLOWER
    h.tick_all(5 * h.raft(1).config.election_timeout_ticks_max)
    assert h.leader() is None  # no majority of agreeing clocks: no leader, rather than wrong stamps


def test_a_suspect_node_still_votes_for_others() -> None:
    h = Harness(3, seed=4)
    h.raft(2).set_clock_suspect(True)
    h.raft(3).set_clock_suspect(True)
    h.tick_all(5 * h.raft(1).config.election_timeout_ticks_max)
    assert h.leader() == 1  # elected with the suspect nodes' votes (§5.2)
