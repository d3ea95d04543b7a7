"""Core behaviour the runtime depends on, found while building it (fixed in the core by 990569d).

These run the pure harness (no IO): the runtime drops peer messages by design (full queues, broken
connections), so the core must survive the loss of any single message. Kept as regression tests."""

from __future__ import annotations

import pytest

from trimaran.protocols.messages import ReadIndexRequest, ReadIndexResponse
from trimaran.simulations.harness import Harness


@pytest.mark.parametrize("lost", [ReadIndexRequest, ReadIndexResponse])
def test_a_follower_read_survives_one_lost_read_index_message(lost: type) -> None:
    h = Harness(3, seed=7)
    h.elect(1)
    h.nodes[2].replica.read("token", "register", ["get", b"k"], "linearizable")
    h.process()
    for _ in range(10):  # deliver until the message to lose is in flight, then lose it
        positions = [i for i, m in enumerate(h.network) if isinstance(m, lost)]
        if positions:
            h.drop(positions[0])
            break
        h.deliver(0)
    else:
        raise AssertionError(f"no {lost.__name__} was sent")
    # Plenty of time with a healthy leader and every other message delivered (thesis §6.4 liveness:
    # the read should be answered, or failed so the client can retry).
    h.tick_all(rounds=100)
    assert h.raft(1).role.name == "LEADER" and h.raft(1).term == h.raft(2).term
    replies = [r for r in h.replies(2) if r.token == "token"]
    assert replies, "the read was neither answered nor failed"


def test_a_leader_read_survives_lost_read_round_heartbeats() -> None:
    from trimaran.protocols.messages import Heartbeat

    h = Harness(3, seed=7)
    h.elect(1)
    h.nodes[1].replica.read("token", "register", ["get", b"k"], "linearizable")
    h.process()
    round_heartbeats = [i for i, m in enumerate(h.network) if isinstance(m, Heartbeat) and m.read_seq]
    assert len(round_heartbeats) == 2
    for i in reversed(round_heartbeats):
        h.drop(i)
    h.tick_all(rounds=100)  # periodic heartbeats flow and are answered; thesis §6.4 step 3
    assert [r for r in h.replies(1) if r.token == "token"], "the read was neither answered nor failed"
