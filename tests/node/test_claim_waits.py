"""Long-polling job claims on a real in-process node (:mod:`trimaran.node.claim_waits`): a claim
with ``wait_ms`` and nothing to take adds nothing to the log while it waits, is answered as soon as
an enqueue (or a delayed job's run time) makes a job claimable, answers empty when its wait ends,
wakes only as many waiters as there are jobs, and is bounded per connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import trio

from trimaran import limits
from trimaran.client import Client
from trimaran.node.claim_waits import ClaimWaits
from trimaran.node.node import Node
from trimaran.protocols.service import ApplyContext
from trimaran.services.jobs import JobsService

from tests.node.helpers import in_process_cluster

TIMEOUT_S = 20


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with in_process_cluster(tmp_path, 1) as cluster:
        await cluster.leader(timeout_s=TIMEOUT_S)
        yield cluster.nodes[1]


def last_index(node: Node) -> int:
    assert node.driver is not None
    return node.driver.replica.raft.log.last_index()


def waits(node: Node) -> int:
    assert node.client_server is not None
    return len(node.client_server.claim_waits)


async def wait_until_parked(node: Node, count: int) -> None:
    for _ in range(500):
        if waits(node) == count:
            return
        await trio.sleep(0.01)
    raise AssertionError(f"{waits(node)} claims parked, expected {count}")


async def test_a_waiting_claim_costs_no_entry_and_an_enqueue_answers_it_at_once(node: Node) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with Client(str(node.client_address)) as worker, Client(str(node.client_address)) as producer:
            session = (await worker.jobs.open_session("w", 30_000)).session
            await producer.jobs.enqueue("other", 0)  # registers the producer's session now
            got: list[float] = []
            async with trio.open_nursery() as nursery:

                async def claim() -> None:
                    answer = await worker.jobs.claim(session, ["emails"], 4, wait_ms=4_000)
                    got.append(trio.current_time())
                    assert [lease.payload for lease in answer.jobs] == ["hi"]

                nursery.start_soon(claim)
                await wait_until_parked(node, 1)
                index = last_index(node)
                await trio.sleep(0.5)  # several ticks: the wait adds nothing to the log
                assert last_index(node) == index and waits(node) == 1 and not got
                enqueued_at = trio.current_time()
                await producer.jobs.enqueue("emails", "hi")
            assert waits(node) == 0
            # Woken by the enqueue's apply, far before its 4 s wait (a loaded machine may take a while).
            assert got[0] - enqueued_at < 2.0, "the enqueue's apply wakes the claim"


async def test_a_wait_ends_empty_and_a_delayed_job_wakes_it_at_its_run_time(node: Node) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with Client(str(node.client_address)) as c:
            session = (await c.jobs.open_session("w", 30_000)).session
            start = trio.current_time()
            assert (await c.jobs.claim(session, ["none"], wait_ms=300)).jobs == []
            assert 0.3 <= trio.current_time() - start < 2.0
            await c.jobs.enqueue("later", "x", delay_ms=600)
            start = trio.current_time()
            claimed = await c.jobs.claim(session, ["later"], wait_ms=4_000)
            assert [lease.payload for lease in claimed.jobs] == ["x"]
            assert 0.45 <= trio.current_time() - start < 2.0  # not before run_at, soon after


async def test_one_job_wakes_one_waiter_of_many(node: Node) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with Client(str(node.client_address)) as c:
            sessions = [(await c.jobs.open_session(f"w{i}", 30_000)).session for i in range(4)]
            answers: list[float] = []
            async with trio.open_nursery() as nursery:
                for session in sessions:

                    async def claim(session: str = session) -> None:
                        if (await c.jobs.claim(session, ["q"], wait_ms=1_500)).jobs:
                            answers.append(trio.current_time())

                    nursery.start_soon(claim)
                await wait_until_parked(node, 4)
                await c.jobs.enqueue("q", 1)
                await trio.sleep(0.3)
                assert waits(node) == 3, "the other waiters keep waiting (no herd for one job)"
            assert len(answers) == 1


async def test_waiters_are_bounded_per_connection(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "job_claim_waiters_connection_max", 2)
    with trio.fail_after(TIMEOUT_S):
        async with Client(str(node.client_address)) as c:
            session = (await c.jobs.open_session("w", 30_000)).session
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(lambda: c.jobs.claim(session, ["q"], wait_ms=800))
                await wait_until_parked(node, 2)
                start = trio.current_time()
                assert (await c.jobs.claim(session, ["q"], wait_ms=5_000)).jobs == []  # over the bound: at once
                assert trio.current_time() - start < 2.5 and waits(node) == 2  # (its wait was 5 s)


class Answers:
    """A connection's side of the edge: the answers it got."""

    def __init__(self) -> None:
        self.got: list[tuple[int, bool, Any]] = []

    def on_reply(self, seq: int, ok: bool, value: Any) -> None:
        self.got.append((seq, ok, value))


class Edge:
    """What ClaimWaits needs of a driver and its replica, around a real JobsService."""

    def __init__(self) -> None:
        self.jobs = JobsService()
        self.services = {"jobs": self.jobs}
        self.is_leader = True
        self.applied_index = 0
        self.replica = self
        self.after_round_hooks: list[Any] = []
        self.proposed: list[tuple[Any, int]] = []

    def submit_client_nowait(self, op: str, body: dict[str, Any], token: tuple[Any, int], size_bytes: int) -> None:
        self.proposed.append(token)

    def apply(self, command: list[Any]) -> Any:
        self.applied_index += 1
        return self.jobs.apply(command, ApplyContext(self.applied_index, 1_000))


async def test_a_job_promised_to_a_woken_claim_wakes_no_second_waiter_until_that_claim_is_answered() -> None:
    edge = Edge()
    waits = ClaimWaits(edge, lambda: 1_000, request_timeout_ms=10_000)  # type: ignore[arg-type]
    session = edge.apply(["session_open", "w", 60_000])["session"]
    conns = [Answers(), Answers()]
    for seq, conn in enumerate(conns):
        body = {"service": "jobs", "command": ["claim", session, ["q"], 1, {"wait_ms": 4_000}]}
        assert waits.park(conn, seq, "command", body, 100)  # type: ignore[arg-type]
    edge.apply(["enqueue", "q", b"job"])
    waits.after_round()
    assert len(edge.proposed) == 1 and len(waits) == 1  # one job: one waiter
    edge.apply(["heartbeat", session])  # an entry applied before the woken claim's
    waits.after_round()
    assert len(edge.proposed) == 1 and len(waits) == 1, "the job is promised: the other waiter waits"
    body = {"service": "jobs", "command": ["claim", session, ["q"], 1, {"wait_ms": 4_000}]}
    assert waits.park(Answers(), 9, "command", body, 100)  # type: ignore[arg-type]  # a new claim parks too
    target, seq = edge.proposed[0]
    target.on_reply(seq, True, "leased")  # the woken claim is answered (here without taking the job)
    assert conns[0].got == [(0, True, "leased")]
    edge.apply(["heartbeat", session])
    waits.after_round()
    assert len(edge.proposed) == 2, "no longer promised: the job wakes the next waiter"


async def test_a_promise_whose_claim_is_never_answered_lapses_after_the_request_timeout(mock_clock: trio.testing.MockClock) -> None:
    """A woken claim whose answer never comes (a lost connection, a log entry that never commits)
    keeps its job promised for the node's request timeout at most; then the job wakes another."""
    edge = Edge()
    waits = ClaimWaits(edge, lambda: 1_000, request_timeout_ms=2_000)  # type: ignore[arg-type]
    session = edge.apply(["session_open", "w", 60_000])["session"]
    body = {"service": "jobs", "command": ["claim", session, ["q"], 1, {"wait_ms": 60_000}]}
    assert waits.park(Answers(), 0, "command", body, 100)  # type: ignore[arg-type]
    edge.apply(["enqueue", "q", b"job"])
    waits.after_round()
    assert len(edge.proposed) == 1  # woken, and now never answered
    mock_clock.jump(1.5)
    later = Answers()
    assert waits.park(later, 1, "command", body, 100)  # type: ignore[arg-type]  # the job is promised: it parks
    mock_clock.jump(0.4)  # 1.9 s: still promised
    edge.apply(["heartbeat", session])
    waits.after_round()
    assert len(edge.proposed) == 1 and len(waits) == 1
    mock_clock.jump(0.2)  # 2.1 s: past the request timeout, the promise is gone
    edge.apply(["heartbeat", session])
    waits.after_round()
    assert len(edge.proposed) == 2 and edge.proposed[1][1] == 1 and len(waits) == 0
