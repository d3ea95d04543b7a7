"""Chat in the simulator: the workload does what the checks need (publishes acknowledged, resumes
on other nodes, recovered: false, presence lapses, resets), and each chat checker fails when its
property breaks (the mutants in MATRIX show the same end to end)."""

from __future__ import annotations

from typing import Any

import pytest

from trimaran.simulations.chat_edge import ChatRecord, RecordingChat
from trimaran.simulations.chat_workload import Subscriber
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.loop import Simulation
from trimaran.simulations.plan import draw_plan
from trimaran.simulations.run import sim_config
from trimaran.simulations.verdict import check_replicas_agree
from trimaran.simulations.workload import draw_workload


def _run(seed: int, sim_seconds: float = 40.0) -> Simulation:
    config = sim_config(seed, 5, sim_seconds)
    sim = Simulation(config, draw_plan(seed, 5, config.heal_us // 1000), draw_workload(seed))
    sim.run()
    assert sim.failure is None, sim.failure
    return sim


@pytest.fixture(scope="module")
def runs() -> list[Simulation]:
    return [_run(seed) for seed in (1, 5, 14)]


def test_publishers_subscribers_and_presence_all_act_under_the_faults(runs: list[Simulation]) -> None:
    acked = [sum(len(c.acked) for c in sim.chat.clients) for sim in runs]
    assert all(n >= 10 for n in acked), acked
    for sim in runs:
        # Every acknowledged publish is in the record where its answer said.
        for client in sim.chat.clients:
            for channel, data, offset, epoch in client.acked:
                assert sim.chat.record.applied[(channel, epoch, offset)] == data
        subs = sim.chat.subscribers
        assert all(s.connections >= 5 for s in subs), [s.connections for s in subs]
        assert sum(s.received for s in subs) >= 10
    assert sum(s.unrecovered for sim in runs for s in sim.chat.subscribers) >= 1
    assert sum(c.presence_refusals for sim in runs for c in sim.chat.clients) >= 1
    assert any(sum(1 for (_, epoch, offset) in sim.chat.record.applied if offset == 1) > 3 for sim in runs)


def test_replica_agreement_covers_the_chat_state(runs: list[Simulation]) -> None:
    sim = runs[0]
    up = [n for n, slot in sim.slots.items() if slot.sim.up]
    check_replicas_agree(sim)
    # Two replicas at one index, one with a presence session the other lacks: caught.
    a, b = (sim.slots[n].sim.replica for n in up[:2])
    b.raft.log.applied_index = a.applied_index
    b.services = {**b.services, "chat": RecordingChat(1, sim.chat.record, **sim.chat.settings)}
    with pytest.raises(CheckFailure, match="different chat state"):
        check_replicas_agree(sim)


def test_the_record_refuses_an_offset_naming_two_messages_and_a_publish_taken_twice() -> None:
    record = ChatRecord()
    record.note(1, ("c", "e", 1), b"a")
    record.note(2, ("c", "e", 1), b"a")  # the same publish on another replica: fine
    with pytest.raises(CheckFailure, match="an offset named two messages"):
        record.note(1, ("c", "e", 1), b"b")
    with pytest.raises(CheckFailure, match="a publish taken twice"):
        record.note(1, ("c", "e", 2), b"a")


class _Side:
    def __init__(self) -> None:
        self.record = ChatRecord()


def _subscriber(applied: dict[int, bytes]) -> Subscriber:
    side: Any = _Side()
    for offset, data in applied.items():
        side.record.note(1, ("c", "e", offset), data)
    sub = Subscriber(0, ("c",), None, side)  # type: ignore[arg-type]
    sub.node = 1
    sub.state["c"] = ["e", 0]
    return sub


def _message(offset: int, data: bytes, epoch: str = "e") -> tuple[Any, ...]:
    return ("message", offset, epoch, data, 0)


def test_a_subscriber_refuses_a_gap_a_duplicate_and_a_message_no_replica_applied() -> None:
    sub = _subscriber({1: b"a", 2: b"b", 3: b"c"})
    sub.receive(1, "c", _message(1, b"a"))
    sub.receive(1, "c", ("event", [9, "message", "c", 2, "e", 0, b"b"]))  # live, as the feed sends it
    with pytest.raises(CheckFailure, match="a duplicate"):
        sub.receive(1, "c", _message(2, b"b"))
    with pytest.raises(CheckFailure, match="a gap"):
        sub.receive(1, "c", _message(4, b"d"))
    with pytest.raises(CheckFailure, match="no replica had applied"):
        _subscriber({}).receive(1, "c", _message(1, b"x"))


def test_a_subscriber_told_recovered_false_goes_on_after_the_oldest_kept() -> None:
    sub = _subscriber({7: b"g"})
    sub.receive(1, "c", ("epoch", "e", False, 6))
    sub.receive(1, "c", _message(7, b"g"))
    assert sub.unrecovered == 1 and sub.state["c"] == ["e", 7]
