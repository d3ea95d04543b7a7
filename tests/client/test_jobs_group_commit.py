"""Concurrent enqueues on one client share commands (``GroupCommit``), against a real ``JobsService``
behind a fake client: each caller still gets its own job id, a batch refused as a whole sends its
jobs again alone so only the bad one fails, and a cancelled caller neither loses the others'
answers nor sends a job it took back."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio.testing import wait_all_tasks_blocked

from trimaran import limits
from trimaran.client.jobs import ENQUEUE_GROUPS_MAX, Completion, GroupCommit, JobsClient
from trimaran.protocols.codec import pack
from trimaran.errors import NotFound, QueueFull, RequestTimeout
from trimaran.protocols.service import ApplyContext
from trimaran.services.jobs import JobsService

TIMEOUT_S = 10


class HeldService:
    """The ``command`` a JobsClient sends, applied to a JobsService; while ``hold`` is set, every
    command waits for the test to clear it (so others pile up behind the one in flight)."""

    def __init__(self, queue_jobs_max: int = 1_000_000) -> None:
        self.service = JobsService(queue_jobs_max=queue_jobs_max)
        self.index = 0
        self.sent: list[Any] = []
        self.hold: trio.Event | None = None

    async def command(self, service: str, command: Any, *, timeout_ms: int | None = None) -> Any:
        assert service == "jobs"
        self.sent.append(command)
        if self.hold is not None:
            await self.hold.wait()
        await trio.lowlevel.checkpoint()
        self.index += 1
        return self.service.apply(command, ApplyContext(self.index, 1_000 + self.index))

    async def read(self, service: str, query: Any, consistency: str = "linearizable", *, timeout_ms: int | None = None) -> Any:
        return self.service.query(query, ApplyContext(self.index, 1_000 + self.index))

    def ops(self) -> list[tuple[str, int]]:
        """Each command sent: (op, jobs in it)."""
        return [(c[0], len(c[1]) if c[0] == "enqueue_batch" else 1) for c in self.sent]


async def test_concurrent_enqueues_share_commands_and_each_gets_its_own_id() -> None:
    fake = HeldService()
    jobs = JobsClient(fake)
    ids: dict[int, str] = {}

    async def enqueue(n: int) -> None:
        ids[n] = await jobs.enqueue("q", {"n": n})

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(enqueue, n)
        assert fake.ops() == [("enqueue_batch", 10)]  # started together: one command
        for n, job_id in ids.items():  # each caller got the id of its own job
            info = await jobs.job(job_id)
            assert info is not None and info.payload == {"n": n} and info.state == "ready"
        fake.hold = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(enqueue, 10)
            await wait_all_tasks_blocked()  # 10 is in flight, alone
            for n in range(11, 14):
                nursery.start_soon(enqueue, n)
            await wait_all_tasks_blocked()
            fake.hold.set()
        assert fake.ops()[1:] == [("enqueue", 1), ("enqueue_batch", 3)]  # the rest waited, then went together
        assert len(set(ids.values())) == 14
        stats = await jobs.stats("q")
        assert stats.counts["ready"] == 14
        assert [(g.batches, g.jobs) for g in jobs.enqueues.values()] == [(3, 14)]


async def test_a_batch_refused_as_a_whole_sends_its_jobs_again_alone() -> None:
    fake = HeldService()
    jobs = JobsClient(fake)
    outcomes: dict[str, Any] = {}

    async def enqueue(name: str, depends_on: list[str] | None = None) -> None:
        try:
            outcomes[name] = await jobs.enqueue("q", name, depends_on=depends_on)
        except NotFound as exc:
            outcomes[name] = exc

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(enqueue, "a")
            nursery.start_soon(enqueue, "orphan", ["9-9"])  # no such job: refuses the batch
            nursery.start_soon(enqueue, "b")
    assert fake.ops() == [("enqueue_batch", 3), ("enqueue", 1), ("enqueue", 1), ("enqueue", 1)]
    assert isinstance(outcomes["orphan"], NotFound)
    for name in ("a", "b"):
        info = await jobs.job(outcomes[name])
        assert info is not None and info.payload == name


async def test_a_full_queue_refuses_only_the_jobs_over_its_room() -> None:
    fake = HeldService(queue_jobs_max=1_000)  # (the smallest the service allows)
    jobs = JobsClient(fake)
    fake.service.apply(["enqueue_batch", [["q", b""]] * 998], ApplyContext(1, 1_000))
    fake.index = 1
    results: list[Any] = []

    async def enqueue() -> None:
        try:
            results.append(await jobs.enqueue("q", 1))
        except QueueFull as exc:
            results.append(exc)

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(enqueue)
    assert sum(isinstance(r, str) for r in results) == 2 and sum(isinstance(r, QueueFull) for r in results) == 1
    assert (await jobs.stats("q")).counts["ready"] == 1_000


async def test_a_cancelled_caller_takes_back_its_unsent_job_and_the_sender_still_answers_the_others() -> None:
    fake = HeldService()
    jobs = JobsClient(fake)
    fake.hold = trio.Event()
    answers: dict[str, Any] = {}

    async def enqueue(name: str, scope: trio.CancelScope) -> None:
        with scope:
            answers[name] = await jobs.enqueue("q", name)

    scopes = {name: trio.CancelScope() for name in ("sender", "rider", "quitter", "later")}
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(enqueue, "sender", scopes["sender"])
            nursery.start_soon(enqueue, "rider", scopes["rider"])
            await wait_all_tasks_blocked()  # sender and rider in flight together
            nursery.start_soon(enqueue, "quitter", scopes["quitter"])
            nursery.start_soon(enqueue, "later", scopes["later"])
            await wait_all_tasks_blocked()
            scopes["quitter"].cancel()  # not sent yet: taken back
            scopes["sender"].cancel()  # in flight with the rider's job (sending it, or riding along)
            await wait_all_tasks_blocked()
            fake.hold.set()
    assert fake.ops() == [("enqueue_batch", 2), ("enqueue", 1)]  # the quitter's job was never sent
    # Whichever of the two sent the batch, the rider got its answer; the cancelled one's job was
    # applied (it was in flight) whether or not its cancel came before its answer.
    assert {"rider", "later"} <= set(answers)
    for name, job_id in answers.items():
        assert (await jobs.job(job_id)).payload == name  # type: ignore[union-attr]
    assert (await jobs.stats("q")).counts["ready"] == 3


async def test_a_batch_whose_request_fails_gives_every_caller_that_error() -> None:
    class Failing(HeldService):
        async def command(self, service: str, command: Any, *, timeout_ms: int | None = None) -> Any:
            self.sent.append(command)
            await trio.lowlevel.checkpoint()
            raise RequestTimeout("no answer")

    fake = Failing()
    jobs = JobsClient(fake)
    errors: list[Exception] = []

    async def enqueue() -> None:
        with pytest.raises(RequestTimeout) as caught:
            await jobs.enqueue("q", 1)
        errors.append(caught.value)

    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(enqueue)
    assert fake.ops() == [("enqueue_batch", 3)] and len(errors) == 3  # outcome unknown: not resent alone


class HeldSend:
    """A group commit's ``send``: records each batch and, while ``hold`` is set, waits for the test."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.hold: trio.Event | None = None

    async def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(items)
        if self.hold is not None:
            await self.hold.wait()
        return [f"ok {item}" for item in items]


async def test_posted_items_go_with_the_next_batch_and_their_callbacks_get_the_answers() -> None:
    send = HeldSend()
    group = GroupCommit(send, 100, 1_000)
    answers: dict[str, Any] = {}
    send.hold = trio.Event()
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(group.post, "first", 1, lambda a: answers.__setitem__("first", a))
            await wait_all_tasks_blocked()  # "first" is in flight: its poster sends it
            for name in ("a", "b"):  # returns at once, without a checkpoint
                with trio.CancelScope() as scope:
                    scope.cancel()  # (a cancelled caller: nothing here may wait)
                    await group.post(name, 1, lambda a, name=name: answers.__setitem__(name, a))
            assert answers == {} and send.batches == [["first"]]
            send.hold.set()  # the poster of "first" goes on: only posted items are left
        assert send.batches == [["first"], ["a", "b"]]
        assert answers == {"first": "ok first", "a": "ok a", "b": "ok b"}
        assert (group.batches, group.jobs) == (2, 3)


async def test_a_waiter_taken_back_leaves_no_posted_item_unsent() -> None:
    send = HeldSend()
    group = GroupCommit(send, 100, 1_000)
    answers: list[Any] = []
    send.hold = trio.Event()
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(group.submit, "sender", 1)
            await wait_all_tasks_blocked()
            quitter = trio.CancelScope()

            async def waiter() -> None:
                with quitter:
                    await group.submit("quitter", 1)

            nursery.start_soon(waiter)
            await wait_all_tasks_blocked()
            await group.post("posted", 1, answers.append)  # in flight: returns at once
            # Together: whichever runs first, the posted item is sent and the quitter's is not. If
            # the sender does, it sees a waiting caller left and returns; the quitter, taking its
            # item back, finds nobody sending and sends the posted one. If the quitter does, the
            # sender finds only the posted item left and sends it.
            quitter.cancel()
            send.hold.set()
    assert send.batches[0] == ["sender"] and ["posted"] in send.batches[1:] and all("quitter" not in b for b in send.batches)
    assert answers == ["ok posted"]


async def test_a_full_batch_leaves_the_rest_for_the_next_one() -> None:
    send = HeldSend()
    group = GroupCommit(send, 2, 1_000)
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(group.submit, n, 1)
    assert [len(b) for b in send.batches] == [2, 2, 1] and sorted(x for b in send.batches for x in b) == list(range(5))


async def test_a_client_keeps_few_enqueue_groups_whatever_deadlines_its_callers_pass() -> None:
    fake = HeldService()
    jobs = JobsClient(fake)
    ids = [await jobs.enqueue("q", n, timeout_ms=1_000 + n) for n in range(40)]  # one deadline each
    assert len(set(ids)) == 40 and len(jobs.enqueues) <= ENQUEUE_GROUPS_MAX
    assert (await jobs.stats("q")).counts["ready"] == 40


# --------------------------------------------------------------------------- completions' size


@given(
    job=st.text(min_size=1, max_size=limits.job_name_chars_max),
    token=st.integers(min_value=0, max_value=2**63 - 1),
    result=st.binary(max_size=70_000),
)
def test_a_completions_size_is_at_least_its_encoding(job: str, token: int, result: bytes) -> None:
    completion = Completion(job, token, result)
    assert len(pack(completion.wire())) <= completion.size_bytes


async def test_a_full_batch_of_completions_fits_one_command() -> None:
    """A worker bounds its batches of completions by ``size_bytes``: a thousand completions whose
    results alone fill the batch's byte bound still leave in commands that fit. (Bounded by the
    results' bytes alone, the batch overflowed command_bytes_max by the jobs' framing.)"""
    sizes: list[int] = []

    async def send(items: list[Completion]) -> list[str]:
        sizes.append(len(pack([1, "command", {"service": "jobs", "command": ["complete_batch", [c.wire() for c in items]]}])))
        await trio.lowlevel.checkpoint()
        return ["completed"] * len(items)

    commit = GroupCommit(send, limits.job_complete_batch_max, limits.job_result_bytes_max)
    result_bytes = limits.job_result_bytes_max // limits.job_complete_batch_max
    completions = [Completion.of(f"{index}-0" * 20, 2**40 + index, b"x" * result_bytes) for index in range(2 * limits.job_complete_batch_max)]
    with trio.fail_after(TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            for completion in completions:
                nursery.start_soon(commit.submit, completion, completion.size_bytes)
    assert len(sizes) >= 2 and max(sizes) <= limits.command_bytes_max, (len(sizes), max(sizes))
