"""Client sessions for exactly-once commands (thesis §6.3) and the Replica's replies."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trimaran.cluster.replica import ReplicaConfig
from trimaran.cluster.sessions import SessionTable
from trimaran.errors import SessionExpired, Unavailable
from trimaran.simulations.harness import Harness


def register(h: Harness, leader: int, now_ms: int = 1000) -> int:
    h.nodes[leader].replica.register("reg", now_ms)
    h.process()
    h.settle()
    replies = h.replies(leader)
    return next(r.value for r in replies if r.token == "reg")


def run(h: Harness, leader: int) -> None:
    h.process()
    h.settle()
    h.tick(leader)
    h.settle()


def test_duplicate_command_returns_the_saved_answer_without_applying_twice() -> None:
    """Thesis §6.3: a retried (client, seq) is answered from the session, not applied again."""
    h = Harness(3, seed=1)
    h.elect(1)
    cid = register(h, 1)
    replica = h.nodes[1].replica
    replica.submit("a", cid, 1, 0, "register", ["incr", b"n", 5], 2000)
    replica.submit("retry", cid, 1, 0, "register", ["incr", b"n", 5], 2001)
    run(h, 1)
    answers = {r.token: r.value for r in h.replies(1)}
    assert answers == {"a": 5, "retry": 5}
    assert all(h.nodes[n].replica.services["register"].data[b"n"] == b"5" for n in h.ids)


def test_retry_after_leader_change_is_still_applied_once() -> None:
    h = Harness(3, seed=1)
    h.elect(1)
    cid = register(h, 1)
    h.nodes[1].replica.submit("a", cid, 1, 0, "register", ["incr", b"n", 1], 2000)
    run(h, 1)
    h.elect(2)
    h.nodes[2].replica.submit("again", cid, 1, 0, "register", ["incr", b"n", 1], 3000)
    run(h, 2)
    assert [(r.token, r.value) for r in h.replies(2)] == [("again", 1)]
    assert h.nodes[2].replica.services["register"].data[b"n"] == b"1"


def test_acknowledged_answers_are_discarded_and_not_replayed() -> None:
    table = SessionTable(timeout_ms=10_000)
    table.register(7, now_ms=0)
    session, saved = table.lookup(7, 1, 0, now_ms=1)
    assert session is not None and saved is None
    session.keep(1, ("ok", 1))
    session, saved = table.lookup(7, 2, 1, now_ms=2)  # client acknowledged seq 1
    assert session is not None and saved is None and 1 not in session.responses


def test_sessions_expire_by_log_time_identically_everywhere() -> None:
    """Thesis §6.3: expiry is decided from leader timestamps in the log, so every replica agrees."""
    h = Harness(3, seed=1, replica_config=ReplicaConfig(session_timeout_ms=1_000))
    h.elect(1)
    old = register(h, 1, now_ms=1_000)
    fresh = register(h, 1, now_ms=5_000)  # this entry's timestamp expires the first session
    h.nodes[1].replica.submit("late", old, 1, 0, "register", ["incr", b"n", 1], 5_001)
    h.nodes[1].replica.submit("ok", fresh, 1, 0, "register", ["incr", b"n", 1], 5_002)
    run(h, 1)
    answers = {r.token: r for r in h.replies(1)}
    assert isinstance(answers["late"].value, SessionExpired) and not answers["late"].ok
    assert answers["ok"].ok and answers["ok"].value == 1
    assert len({repr(h.nodes[n].replica.sessions.snapshot()) for n in h.ids}) == 1


def test_session_table_is_bounded_and_evicts_the_least_recently_active() -> None:
    table = SessionTable(timeout_ms=10**9, sessions_max=3)
    for cid, t in ((1, 0), (2, 1), (3, 2)):
        table.register(cid, t)
    table.lookup(1, 1, 0, now_ms=3)  # 1 is active again: 2 is now the oldest
    table.register(4, 4)
    assert len(table) == 3
    assert table.lookup(2, 1, 0, 5)[0] is None
    assert table.lookup(1, 2, 0, 5)[0] is not None


def test_session_table_is_part_of_the_snapshot() -> None:
    table = SessionTable(timeout_ms=1000)
    table.register(5, 10)
    session, _ = table.lookup(5, 1, 0, 11)
    assert session is not None
    session.keep(1, ("ok", b"x"))
    copy = SessionTable(timeout_ms=1000)
    copy.restore(table.snapshot())
    assert copy.snapshot() == table.snapshot()
    assert copy.lookup(5, 1, 0, 12)[1] == ("ok", b"x")


def test_overwritten_proposal_is_answered_as_unavailable() -> None:
    """A proposal whose entry another leader overwrote will never commit: the caller learns at once
    (and retries with the same sequence number, which stays exactly-once)."""
    h = Harness(3, seed=1)
    h.elect(1)
    cid = register(h, 1)
    h.nodes[1].replica.submit("lost", cid, 1, 0, "register", ["incr", b"n", 1], 2000)
    h.process()
    h.network.clear()  # the append never leaves node 1
    h.sync(1)
    h.network.clear()
    h.elect(2)  # node 2 wins without node 1's entry and overwrites its index
    h.tick(2)
    h.settle()
    h.tick(2)
    h.settle()
    replies = h.replies(1)
    assert [(r.token, type(r.value)) for r in replies] == [("lost", Unavailable)]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.just("keep"), st.integers(1, 40)), st.tuples(st.just("ack"), st.integers(0, 45))), max_size=80))
def test_acknowledging_drops_exactly_the_answers_up_to_it_in_or_out_of_seq_order(steps: list[tuple[str, int]]) -> None:
    """Answers kept in ascending seq order are dropped from the front (the common case), out of
    order by a scan: either way every answer at or below the acknowledgement goes and every other
    stays, as with a plain dict, also after a snapshot restore."""
    table = SessionTable(60_000)
    table.register(7, 0)
    model: dict[int, tuple[str, int]] = {}
    ack = 0
    for action, seq in steps:
        session, saved = table.lookup(7, seq, ack, 0)
        assert session is not None
        if action == "keep" and seq not in model and seq > ack:
            assert saved is None
            session.keep(seq, ("ok", seq))
            model[seq] = ("ok", seq)
        elif action == "ack" and seq > ack:
            ack = seq
            table.lookup(7, seq + 1, ack, 0)
            model = {q: o for q, o in model.items() if q > ack}
        assert session.responses == model
    restored = SessionTable(60_000)
    restored.restore(table.snapshot())
    assert restored.snapshot() == table.snapshot()
    again, _ = restored.lookup(7, 99, ack + 5, 0)
    assert again is not None and again.responses == {q: o for q, o in model.items() if q > ack + 5}
