"""``c.jobs`` and the worker runtime (``trimaran.Jobs``, ``@app.task``, :class:`Worker`) against an
in-process cluster: a round trip, retries into the dead-letter list with the error recorded, a
``retry=False`` error, a timeout, cancellation of a running job reaching its worker, a stale
token refused, a graceful stop giving in-flight jobs back, and the blocking facade."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.node.helpers import in_process_cluster
import time
from types import SimpleNamespace

from trio.testing import wait_all_tasks_blocked

from trimaran import limits
from trimaran.client import Client, JobError, Jobs, JobsClient, NewJob, SyncJobsClient, Worker, connect_sync, current_job
from trimaran.client.jobs import Claim, Completion, Heartbeat, Lease, WorkerSession, decode, encode
from trimaran.errors import InvalidArgument, JobFailed, NotFound, StaleLease, TooLarge

TIMEOUT_S = 20
#: Short sessions, so heartbeats (every TTL/3) carry cancellations within a test's patience.
FAST = {"session_ttl_ms": 600, "grace_ms": 2_000, "poll_ms_max": 50}


@asynccontextmanager
async def cluster_client(tmp_path: Path, size: int = 1) -> AsyncIterator[tuple[Client, list[str]]]:
    async with in_process_cluster(tmp_path, size) as cluster:
        await cluster.leader(timeout_s=TIMEOUT_S)
        endpoints = [str(cluster.client_address(i)) for i in range(1, size + 1)]
        async with Client(endpoints, timeout_ms=10_000) as c:
            yield c, endpoints


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        yield worker
        worker.stop()


async def test_enqueue_worker_result_round_trip(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S * 2):
        async with cluster_client(tmp_path, 3) as (c, endpoints):
            app = Jobs(client=c)

            @app.task("math", max_attempts=3, timeout_ms=5_000)
            async def add(a: int, b: int) -> dict[str, int]:
                current_job().set_progress({"half": True})
                return {"sum": a + b}

            @app.task("text")
            def shout(text: str) -> str:  # a plain def: runs in a thread
                return text.upper()

            assert shout(text="here") == "HERE"  # calling a task runs it locally
            job = await add.enqueue(a=2, b=3)
            info = await c.jobs.job(job.id)
            assert info is not None and info.queue == "math" and info.payload == {"a": 2, "b": 3}
            assert info.state == "ready" and info.max_attempts == 3
            with pytest.raises(InvalidArgument, match="msgpack"):
                await add.enqueue(a=object())
            with pytest.raises(InvalidArgument, match="msgpack"):
                await c.jobs.enqueue("math", {1: "int keys"})

            async with running(app.worker(concurrency=4, **FAST)) as worker:
                assert await job.result(wait_ms=10_000) == {"sum": 5}
                ids = await c.jobs.enqueue_batch([shout.new_job(text="hi"), NewJob("text", {"text": "yo"}, priority=5)])
                outcomes = [await c.jobs.result(i, wait_ms=10_000) for i in ids]
                assert [o.value for o in outcomes if o is not None] == ["HI", "YO"]
                assert worker.session is not None
            done = await c.jobs.job(job.id)
            assert done is not None and done.state == "completed" and done.result == {"sum": 5} and done.attempt == 1
            stats = await c.jobs.stats("text")
            assert stats.counts["completed"] == 2 and stats.held == 2 and not stats.paused
            page = await c.jobs.list_jobs("text", state="completed")
            assert [j.id for j in page.items] == ids and page.next is None
            assert await c.jobs.result("1-999") is None
            assert worker.session is None  # closed on stop


async def test_retries_then_dead_letter_with_the_error_recorded(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with cluster_client(tmp_path) as (c, _):
            app = Jobs(client=c)
            calls: list[str] = []

            @app.task("flaky", max_attempts=3, backoff={"kind": "fixed", "delay_ms": 0, "jitter_pct": 0})
            async def flaky(n: int) -> None:
                calls.append(f"{current_job().id}/{current_job().attempt}")
                raise ValueError(f"boom {n}")

            @app.task("fatal", max_attempts=5)
            async def fatal() -> None:
                raise JobError("bad input", retry=False)

            @app.task("slow", max_attempts=1, timeout_ms=200)
            async def slow() -> None:
                await trio.sleep(30)

            async with running(app.worker(**FAST)):
                job = await flaky.enqueue(n=7)
                with pytest.raises(JobFailed) as failed:
                    await job.result(wait_ms=10_000)
                assert failed.value.details["state"] == "dead" and failed.value.details["attempt"] == 3
                assert failed.value.details["error"] == "ValueError: boom 7"
                assert calls == [f"{job.id}/1", f"{job.id}/2", f"{job.id}/3"]

                fatal_job = await fatal.enqueue()
                with pytest.raises(JobFailed) as failed:
                    await fatal_job.result(wait_ms=10_000)
                assert failed.value.details["attempt"] == 1 and failed.value.details["error"] == "JobError: bad input"

                slow_job = await slow.enqueue()
                with pytest.raises(JobFailed) as failed:
                    await slow_job.result(wait_ms=10_000)
                # The worker's own timeout, or the service's lease lapse if it came first.
                assert failed.value.details["state"] == "dead"
                assert failed.value.details["error"].startswith(("TimeoutError", "lease timed out"))

                dead = await c.jobs.dlq("flaky")
                assert [j.id for j in dead.items] == [job.id] and dead.items[0].error == "ValueError: boom 7"
                assert await c.jobs.retry(job.id) == [job.id]  # requeued, attempts reset: fails 3 more times
                await c.jobs.result(job.id, wait_ms=10_000)
                assert len(calls) == 6
                with pytest.raises(NotFound):
                    await c.jobs.retry("1-12345")


async def test_cancelling_a_running_job_reaches_its_worker(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with cluster_client(tmp_path) as (c, _):
            app = Jobs(client=c)
            started, stopped = trio.Event(), trio.Event()

            @app.task("long")
            async def long() -> None:
                started.set()
                try:
                    await trio.sleep(60)
                finally:
                    stopped.set()

            async with running(app.worker(**FAST)):
                job = await long.enqueue()
                await started.wait()
                assert await job.cancel() == "cancelling"
                await stopped.wait()  # learnt from a heartbeat: the task's scope was cancelled
                with pytest.raises(JobFailed) as failed:
                    await job.result(wait_ms=5_000)
                assert failed.value.details["state"] == "cancelled"
                pending = await long.enqueue()
                assert await pending.cancel() in ("cancelled", "cancelling")


async def test_a_stale_token_is_refused(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with cluster_client(tmp_path) as (c, _):
            job_id = await c.jobs.enqueue("q", {"x": 1})
            session = await c.jobs.open_session("w1", 10_000)
            first = (await c.jobs.claim(session.session, ["q"], 5)).jobs
            assert [lease.id for lease in first] == [job_id] and first[0].payload == {"x": 1} and first[0].attempt == 1
            assert await c.jobs.release(job_id, first[0].token) == "ready"
            second = (await c.jobs.claim(session.session, ["q"], 5)).jobs
            assert second[0].token > first[0].token
            beat = await c.jobs.heartbeat(session.session, [(job_id, first[0].token), (job_id, second[0].token)], progress={job_id: 50})
            assert beat.lost == [job_id] and beat.cancel == []  # the old token is not a lease
            with pytest.raises(StaleLease):
                await c.jobs.complete(job_id, first[0].token, "late")
            assert await c.jobs.complete(job_id, second[0].token, "ok") == "completed"
            outcome = await c.jobs.result(job_id)
            assert outcome is not None and outcome.value == "ok" and outcome.attempt == 1
            assert await c.jobs.close_session(session.session) == []


async def test_jobs_finishing_together_are_completed_in_few_batches_each_fenced(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with cluster_client(tmp_path) as (c, _):
            app = Jobs(client=c)
            started, go = [], trio.Event()

            @app.task("together")
            async def wait_then_echo(n: int) -> int:
                started.append(n)
                await go.wait()
                return n

            ids = await c.jobs.enqueue_batch([NewJob("together", {"n": n}) for n in range(16)])
            async with running(app.worker(concurrency=16, **FAST)) as worker:
                while len(started) < 16:
                    await trio.sleep(0.01)
                go.set()  # all 16 finish at once: the first goes alone, the rest wait for it
                outcomes = [await c.jobs.result(i, wait_ms=10_000) for i in ids]
                assert [o.value for o in outcomes if o is not None] == list(range(16))
                assert worker.completions is not None
                assert worker.completions.jobs == 16 and worker.completions.batches <= 3
            # A batch refuses a stale token alone; the client checks results before sending.
            job_id = await c.jobs.enqueue("q", 1)
            session = await c.jobs.open_session("w1", 10_000)
            (lease,) = (await c.jobs.claim(session.session, ["q"], 1)).jobs
            stale = Completion.of(job_id, lease.token - 1, "late")
            assert await c.jobs.complete_batch([stale, Completion.of(job_id, lease.token, "ok")]) == ["stale_lease", "completed"]
            assert (await c.jobs.result(job_id)).value == "ok"  # type: ignore[union-attr]
            with pytest.raises(InvalidArgument, match="msgpack"):
                Completion.of(job_id, lease.token, object())
            with pytest.raises(TooLarge):
                Completion.of(job_id, lease.token, b"x" * limits.job_result_bytes_max)
            assert await c.jobs.complete_batch([]) == []


class HeldCompletions:
    """A jobs client whose ``complete_batch`` answers only when the test lets it, and whose claims
    hand out ``ids`` one lease at a time (then wait, like a long poll)."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self.claims: list[int] = []
        self.completed: list[str] = []
        self.answer = trio.Event()

    async def open_session(self, worker: str, ttl_ms: int, **_: Any) -> WorkerSession:
        return WorkerSession("s1-0", 0)

    async def claim(self, session: str, queues: list[str], n: int, **_: Any) -> Claim:
        self.claims.append(n)
        if not self.ids:
            await trio.sleep_forever()
        lease_until_ms = int(time.time() * 1000) + 60_000
        return Claim([Lease(self.ids.pop(0), "q", None, 1, 1, lease_until_ms, 0, "", None)], [])

    async def complete_batch(self, completions: list[Completion], *, timeout_ms: int) -> list[str]:
        with trio.fail_after(timeout_ms / 1000):  # (the worker's reports are shielded: bounded, as on the wire)
            await self.answer.wait()
        self.completed += [c.job for c in completions]
        return ["completed"] * len(completions)

    async def heartbeat(self, *_: Any, **__: Any) -> Heartbeat:
        return Heartbeat(0, [], [])

    async def close_session(self, session: str, **_: Any) -> list[str]:
        return []


async def test_a_finished_job_frees_its_slot_while_its_completion_is_in_flight() -> None:
    fake = HeldCompletions(["1-0", "1-1", "1-2"])
    app = Jobs(client=SimpleNamespace(jobs=fake))  # type: ignore[arg-type]

    @app.task("q")
    async def done() -> None: ...

    with trio.fail_after(TIMEOUT_S):
        async with running(app.worker(concurrency=1, **FAST)) as worker:
            await wait_all_tasks_blocked()
            # 1-0 ran and its completion hangs: its slot took 1-1, which ran too and, with one
            # outcome already in flight (the bound is the concurrency), waits in its slot.
            assert fake.claims == [1, 1] and fake.completed == [] and list(worker.running) == ["1-1"]
            fake.answer.set()
            await wait_all_tasks_blocked()
            assert fake.completed == ["1-0", "1-1", "1-2"] and fake.claims == [1, 1, 1, 1] and not worker.running


async def test_a_worker_keeps_two_claims_in_flight_each_for_its_share_of_the_slots() -> None:
    fake = HeldCompletions([])  # nothing to hand out: every claim waits, as a long poll does
    app = Jobs(client=SimpleNamespace(jobs=fake))  # type: ignore[arg-type]

    @app.task("q")
    async def done() -> None: ...

    with trio.fail_after(TIMEOUT_S):
        async with running(app.worker(concurrency=5, **FAST)):
            await wait_all_tasks_blocked()
            assert fake.claims == [3, 2]  # both wait at once; together never more than the concurrency


class Outcomes(HeldCompletions):
    """Hands out ``ids`` with leases ending ``lease_ms`` from now (wall clock, as the worker reads
    it) and records every outcome reported."""

    def __init__(self, ids: list[str], lease_ms: int) -> None:
        super().__init__(ids)
        self.lease_ms = lease_ms
        self.answer.set()
        self.reported: list[tuple[str, str, Any]] = []

    async def claim(self, session: str, queues: list[str], n: int, **_: Any) -> Claim:
        while not self.ids:  # (a long poll, in mock time)
            await trio.sleep(0.05)
        lease_until_ms = int(time.time() * 1000) + self.lease_ms
        return Claim([Lease(self.ids.pop(0), "q", None, 1, 1, lease_until_ms, 0, "", None)], [])

    async def fail(self, job: str, token: int, error: str = "", *, retry: bool = True, **_: Any) -> str:
        self.reported.append(("fail", job, (error, retry)))
        return "ready"

    async def ack_cancel(self, job: str, token: int, **_: Any) -> str:
        self.reported.append(("ack_cancel", job, None))
        return "cancelled"


async def test_a_job_past_its_lease_fails_as_a_timeout_and_a_cancelled_one_is_acknowledged(autojump_clock: Any) -> None:
    fake = Outcomes(["1-0"], lease_ms=60_000)
    app = Jobs(client=SimpleNamespace(jobs=fake))  # type: ignore[arg-type]

    @app.task("q")
    async def forever() -> None:
        await trio.sleep_forever()

    async with running(app.worker(concurrency=1, **FAST)) as worker:
        await wait_all_tasks_blocked()
        worker._cancel_asked(["1-0"])  # as a heartbeat or claim answer would say
        await wait_all_tasks_blocked()
        assert fake.reported == [("ack_cancel", "1-0", None)]
        fake.lease_ms, fake.ids = 2_000, ["2-0"]
        await trio.sleep(5)  # (mock time: the lease's deadline passes)
        assert fake.reported[1:] and fake.reported[1][:2] == ("fail", "2-0")
        error, retry = fake.reported[1][2]
        assert error.startswith("TimeoutError: the job ran past its lease") and retry is True


async def test_a_graceful_stop_gives_in_flight_jobs_back(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with cluster_client(tmp_path) as (c, _):
            app = Jobs(client=c)
            started = trio.Event()
            finished: list[str] = []

            quick_started = trio.Event()

            @app.task("stuck")
            async def stuck(n: int) -> None:
                started.set()
                await trio.sleep(60)
                finished.append("never")

            @app.task("quick")
            async def quick() -> str:
                quick_started.set()
                await trio.sleep(0.3)  # ends within the grace period
                return "done"

            worker = app.worker(**{**FAST, "grace_ms": 1_000})
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.run)
                job = await stuck.enqueue(n=1)
                quick_job = await quick.enqueue()
                await started.wait()
                await quick_started.wait()
                worker.stop()
            info = await c.jobs.job(job.id)
            assert info is not None and info.state == "ready" and info.attempt == 0  # given back, not counted
            assert finished == [] and worker.session is None
            assert await quick_job.result() == "done"  # finished within the grace period


async def test_pause_resume_schedule_and_the_blocking_facade(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with cluster_client(tmp_path) as (c, endpoints):
            assert await c.jobs.pause("q") is True
            assert (await c.jobs.stats("q")).paused
            assert await c.jobs.resume("q") is True
            next_ms = await c.jobs.schedule("tick", "q", {"n": 1}, every_ms=60_000)
            assert [s.name for s in await c.jobs.schedules()] == ["tick"] and (await c.jobs.schedules())[0].next_ms == next_ms
            assert await c.jobs.unschedule("tick") is True

            def blocking() -> tuple[str, Any]:
                with connect_sync(endpoints, timeout_ms=10_000) as s:
                    job_id = s.jobs.enqueue("q", [1, 2], priority=3)
                    return job_id, s.jobs.job(job_id)

            job_id, info = await trio.to_thread.run_sync(blocking)
            assert info.id == job_id and info.payload == [1, 2] and info.priority == 3


async def test_a_lost_session_stops_its_jobs_and_the_worker_goes_on_with_a_new_one(tmp_path: Path) -> None:
    with trio.fail_after(TIMEOUT_S):
        async with cluster_client(tmp_path) as (c, _):
            app = Jobs(client=c)
            runs: list[str] = []
            first_started = trio.Event()

            @app.task("q")
            async def job() -> str:
                runs.append("start")
                if len(runs) == 1:
                    first_started.set()
                    try:
                        await trio.sleep(60)
                    finally:
                        runs.append("stopped")
                return "second run"

            async with running(app.worker(**FAST)) as worker:
                handle = await job.enqueue()
                await first_started.wait()
                old = worker.session
                assert old is not None
                assert await c.jobs.close_session(old) == [handle.id]  # as if it had lapsed
                assert await handle.result(wait_ms=10_000) == "second run"
                assert runs == ["start", "stopped", "start"] and worker.session not in (None, old)


def test_the_blocking_facade_mirrors_every_method_and_values_are_checked_before_sending() -> None:
    public = {name for name in dir(JobsClient) if not name.startswith("_")}
    assert set(dir(SyncJobsClient(JobsClient(None), lambda *a, **k: None))) >= public  # type: ignore[arg-type]
    for bad in ({1, 2}, {1: "int key"}, object(), 1 << 70):
        with pytest.raises(InvalidArgument, match="msgpack"):
            encode(bad)
    assert decode(encode({"a": [1, b"x", None, 1.5]})) == {"a": [1, b"x", None, 1.5]}
    assert decode(b"\xc1") == b"\xc1" and decode(None) is None  # not msgpack: the bytes as they are
    app = Jobs("127.0.0.1:1")

    @app.task("q")
    def f() -> None: ...

    with pytest.raises(InvalidArgument, match="already has a task"):
        app.task("q")(f)
    with pytest.raises(InvalidArgument, match="no task for queue"):
        app.worker(queues=["other"])
    with pytest.raises(InvalidArgument, match="no open client"):
        app.jobs
