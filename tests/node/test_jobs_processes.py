"""Issue 10's real-process proof: ``trimaran node run`` processes and ``trimaran worker`` processes
(app :mod:`tests.node.jobs_app`), killed and stopped by PID.

- kill -9 a worker in the middle of a job: the job comes back when the worker's session lapses, a
  second worker runs it, and it completes once;
- kill -9 the leader while producers enqueue and two workers claim and complete: every enqueued job
  completes, exactly once in the service, each attempt run by one worker only;
- SIGSTOP a worker past its session, SIGCONT: its late completion is refused (``StaleLease``, the
  worker logs the drop) and the job keeps the outcome of the attempt that owned it.

Every task run leaves a line in a marks file (start/done, job, attempt, pid), so the tests see each
execution whichever process ran it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import pytest
import trio

from tests.node.procs import STOP_WAIT_S, ProcessCluster
from trimaran.client import Client
from trimaran.errors import NotLeader, RequestTimeout, Unavailable

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SESSION_TTL_MS = 1_500


class Workers:
    """``trimaran worker`` processes, each stopped by its PID (SIGCONT, SIGTERM, then SIGKILL)."""

    def __init__(self, root: Path, endpoints: str) -> None:
        self.root, self.endpoints = root, endpoints
        self.marks = root / "marks.txt"
        self.marks.touch()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, queue: str, concurrency: int = 4) -> subprocess.Popen[bytes]:
        argv = [
            sys.executable, "-m", "trimaran", "worker", "tests.node.jobs_app:app", "--endpoints", self.endpoints,
            "--queues", queue, "--concurrency", str(concurrency), "--session-ttl-ms", str(SESSION_TTL_MS),
            "--grace-ms", "500", "--log-level", "info",
        ]  # fmt: skip
        log = open(self.root / f"worker{len(self.procs)}.log", "ab")
        env = {**os.environ, "TRIMARAN_TEST_MARKS": str(self.marks), "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.root / f"worker{self.procs.index(proc)}.log").read_text(errors="replace")

    def lines(self) -> list[list[str]]:
        return [line.split() for line in self.marks.read_text().splitlines() if line.strip()]

    async def wait_mark(self, *words: str, timeout_s: float = 10.0) -> list[str]:
        with trio.fail_after(timeout_s):
            while True:
                for line in self.lines():
                    if line[: len(words)] == list(words):
                        return line
                await trio.sleep(0.02)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_WAIT_S)


def started(root: Path, size: int) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(root, size=size)
    try:
        procs.start_all()
        yield procs
    finally:
        procs.close()


@pytest.fixture
def one_node(tmp_path: Path) -> Iterator[ProcessCluster]:
    yield from started(tmp_path, 1)


@pytest.fixture
def three_nodes(tmp_path: Path) -> Iterator[ProcessCluster]:
    yield from started(tmp_path, 3)


WorkersFor = Callable[[ProcessCluster], Awaitable[Workers]]


@pytest.fixture
def workers_for(tmp_path: Path) -> Iterator[WorkersFor]:
    """``await workers_for(cluster)``: once the cluster has a leader, a Workers on it, closed after the test."""
    made: list[Workers] = []

    async def make(cluster: ProcessCluster) -> Workers:
        await cluster.leader()
        made.append(Workers(tmp_path, ",".join(str(cluster.client[i]) for i in cluster.ids)))
        return made[-1]

    yield make
    for w in made:
        w.close()


async def test_a_job_of_a_killed_worker_is_redelivered_and_completes_once(one_node: ProcessCluster, workers_for: WorkersFor) -> None:
    with trio.fail_after(20):
        workers = await workers_for(one_node)
        first = workers.start("hold")
        async with Client(workers.endpoints, timeout_ms=10_000) as c:
            job = await c.jobs.enqueue("hold", {"n": 1, "hold_s": [60]})
            await workers.wait_mark("start", job, "1", str(first.pid))
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=STOP_WAIT_S)
            second = workers.start("hold")
            result = await c.jobs.result(job, wait_ms=12_000)
            assert result is not None and result.state == "completed", result
            assert result.value == {"n": 1, "pid": second.pid, "attempt": 2}
            done = [line for line in workers.lines() if line[0] == "done" and line[1] == job]
            assert done == [["done", job, "2", str(second.pid)]], workers.lines()
            stats = await c.jobs.stats("hold")
            assert stats.counts["completed"] == 1 and stats.held == 1


async def test_killing_the_leader_under_load_loses_nothing_and_completes_each_job_once(
    three_nodes: ProcessCluster, workers_for: WorkersFor
) -> None:
    jobs_count = 300
    with trio.fail_after(20):
        workers = await workers_for(three_nodes)
        leader, _ = await three_nodes.leader()
        for _ in range(2):
            workers.start("load", concurrency=16)
        ids: dict[int, str] = {}
        async with Client(workers.endpoints, timeout_ms=3_000) as c:

            async def produce(first: int) -> None:
                for n in range(first, jobs_count, 8):
                    for _ in range(20):  # bounded: a leader change takes a second or two
                        try:
                            # unique_key: an enqueue whose outcome was unknown, sent again, is the same job
                            ids[n] = await c.jobs.enqueue("load", {"n": n}, unique_key=f"n{n}")
                            break
                        except (RequestTimeout, Unavailable, NotLeader):
                            await trio.sleep(0.1)
                    if n == jobs_count // 3:
                        three_nodes.kill9(leader)  # under load: enqueues, claims and completes in flight

            async with trio.open_nursery() as nursery:
                for first in range(8):
                    nursery.start_soon(produce, first)
            assert len(ids) == jobs_count and len(set(ids.values())) == jobs_count
            while (await c.jobs.stats("load")).counts["completed"] < jobs_count:
                await trio.sleep(0.1)
            stats = await c.jobs.stats("load")
            assert stats.held == jobs_count and stats.counts["completed"] == jobs_count, stats
            assert not three_nodes.alive(leader)
            for n, job in sorted(ids.items()):
                result = await c.jobs.result(job)
                assert result is not None and result.state == "completed" and result.value["n"] == n, (n, result)
                assert result.value["attempt"] == result.attempt, (n, result)  # the outcome of the last lease
        runs = Counter((line[1], line[2]) for line in workers.lines() if line[0] == "done")
        assert set(job for job, _ in runs) == set(ids.values())
        assert max(runs.values()) == 1, "one lease (job, attempt) ran in one worker only"


async def test_a_stopped_workers_late_completion_is_refused(one_node: ProcessCluster, workers_for: WorkersFor) -> None:
    with trio.fail_after(20):
        workers = await workers_for(one_node)
        stopped = workers.start("hold")
        async with Client(workers.endpoints, timeout_ms=10_000) as c:
            job = await c.jobs.enqueue("hold", {"n": 7, "hold_s": [0.5, 2.0]})
            await workers.wait_mark("start", job, "1", str(stopped.pid))
            stopped.send_signal(signal.SIGSTOP)  # past its session TTL: the job is released
            other = workers.start("hold")
            await workers.wait_mark("start", job, "2", str(other.pid))
            # The job runs under the other worker's newer lease when the stopped one wakes up: its
            # attempt finishes and reports with the old token: refused, logged, dropped.
            stopped.send_signal(signal.SIGCONT)
            await workers.wait_mark("done", job, "1", str(stopped.pid))
            with trio.fail_after(5):
                while "ended before its outcome arrived; dropped" not in workers.log(stopped):
                    await trio.sleep(0.05)
            info = await c.jobs.job(job)
            assert info is not None and info.state == "running" and info.attempt == 2, info
            result = await c.jobs.result(job, wait_ms=12_000)
            assert result is not None and result.value == {"n": 7, "pid": other.pid, "attempt": 2}, result
            stats = await c.jobs.stats("hold")
            assert stats.counts["completed"] == 1 and stats.held == 1
