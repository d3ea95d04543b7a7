"""``RespSession.number``: a connection's writes are numbered in order, and each body's ``ack_seq``
is one below its session's oldest unanswered seq (the replicas may forget answers up to it). The
one-command path must agree with the general one, and both with that rule."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trimaran.node.resp.groups import Lapses, RespSession

# (commands numbered, or None: answer some of the outstanding seqs, chosen by the int)
_STEPS = st.lists(st.one_of(st.integers(1, 4), st.tuples(st.none(), st.integers(0, 2**16))), max_size=40)


@settings(max_examples=300, deadline=None)
@given(_STEPS)
def test_numbering_follows_the_oldest_unanswered_seq(steps: list[Any]) -> None:
    session = RespSession(None, 8, Lapses(1.0))  # type: ignore[arg-type]  # numbering needs no edge
    next_seq, outstanding = 1, set()
    for step in steps:
        if isinstance(step, int):
            commands = [["set", b"k%d" % i, b"v"] for i in range(step)]
            seqs, bodies = session.number(7, "kv", commands)
            assert seqs == list(range(next_seq, next_seq + step))
            outstanding.update(seqs)
            expected_ack = min(outstanding) - 1
            assert [b["seq"] for b in bodies] == seqs and [b["command"] for b in bodies] == commands
            assert all(b["ack_seq"] == expected_ack and b["client_id"] == 7 and b["service"] == "kv" for b in bodies)
            next_seq += step
        elif outstanding:
            ordered = sorted(outstanding)
            done = [s for k, s in enumerate(ordered) if (step[1] >> k) & 1]
            session.answered(done)
            outstanding.difference_update(done)
