"""Log time: services expire things from leader timestamps in the log, identically everywhere."""

from __future__ import annotations

from typing import Any

from trimaran.protocols.service import ApplyContext
from trimaran.simulations.harness import Harness


class TimerService:
    """Test service: ``["at", ms]`` schedules a deadline; ``on_time`` records when each fired."""

    name = "timer"

    def __init__(self) -> None:
        self.deadlines: list[int] = []
        self.fired: list[tuple[int, int]] = []  # (deadline, log index where it fired)

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        self.deadlines.append(command[1])
        self.deadlines.sort()
        return None

    def on_time(self, ctx: ApplyContext) -> None:
        while self.deadlines and self.deadlines[0] <= ctx.timestamp_ms:
            self.fired.append((self.deadlines.pop(0), ctx.index))

    def next_deadline_ms(self) -> int | None:
        return self.deadlines[0] if self.deadlines else None

    def query(self, query: Any, ctx: ApplyContext) -> Any:
        return list(self.fired)

    def snapshot(self) -> Any:
        return [self.deadlines, [list(f) for f in self.fired]]

    def restore(self, data: Any) -> None:
        self.deadlines = list(data[0])
        self.fired = [(a, b) for a, b in data[1]]


def settle(h: Harness, leader: int) -> None:
    h.process()
    h.settle()
    h.tick(leader)
    h.settle()


def test_idle_leader_appends_a_clock_entry_once_a_deadline_passes() -> None:
    h = Harness(3, seed=1, make_services=lambda: [TimerService()])
    h.elect(1)
    replica = h.nodes[1].replica
    replica.register("reg", 1_000)
    settle(h, 1)
    client_id = next(r.value for r in h.replies(1) if r.token == "reg")
    replica.submit("t", client_id, 1, 0, "timer", ["at", 5_000], 1_000)
    settle(h, 1)
    last = h.raft(1).log.last_index()
    replica.advance_clock(4_000)  # nothing due yet
    settle(h, 1)
    assert h.raft(1).log.last_index() == last
    replica.advance_clock(6_000)
    replica.advance_clock(6_500)  # one clock entry in flight at a time
    settle(h, 1)
    assert h.raft(1).log.last_index() == last + 1
    fired = {n: h.nodes[n].replica.services["timer"].fired for n in h.ids}
    assert fired[1] == [(5_000, last + 1)] and fired[1] == fired[2] == fired[3]


def test_followers_never_propose_clock_entries() -> None:
    h = Harness(3, seed=1, make_services=lambda: [TimerService()])
    h.elect(1)
    before = h.raft(2).log.last_index()
    h.nodes[2].replica.services["timer"].deadlines.append(1)
    h.nodes[2].replica.advance_clock(10_000)
    h.process()
    assert h.raft(2).log.last_index() == before
