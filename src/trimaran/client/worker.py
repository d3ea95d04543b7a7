"""The job worker runtime: ``trimaran.Jobs``, ``@app.task`` and the worker loop behind ``trimaran worker``.

::

    app = trimaran.Jobs("127.0.0.1:7001,127.0.0.1:7002")   # or trimaran.Jobs(client=c)

    @app.task("emails", max_attempts=5, timeout_ms=60_000)
    async def send_email(to: str, body: str) -> dict: ...   # a plain def runs in a worker thread

    async with app:                                         # opens the app's own client
        job = await send_email.enqueue(to="a@b.c", body="hi")   # also delay_ms=, priority=, unique_key=
        print(await job.result(wait_ms=10_000))

One task per queue. A job's payload is its task's keyword arguments (a map; a list is passed as
positional arguments, any other value as the one argument), packed with msgpack; the task's return
value is the job's result (msgpack-able, else the attempt fails without retry).

The worker (:class:`Worker`, run by :meth:`Jobs.run_worker` and ``trimaran worker``):

- opens **one worker session** and keeps it alive with **one heartbeat task** (every TTL/3) that
  also carries each running job's progress (:func:`current_job`) and learns which jobs were
  cancelled or lost; a lost session (``WorkerSessionLost``) stops its jobs and opens a new one;
- **claims in batches** up to its concurrency limit (jobs whose task runs: a job whose task ended
  frees its slot while its outcome is reported, up to ``concurrency`` such jobs), with two claims
  in flight (``CLAIMS_IN_FLIGHT``) each for up to half the slots, **long-polling**: each claim carries
  ``wait_ms`` (``claim_wait_ms``), so with nothing to take the leader holds it, without a log
  entry or a busy wait, until a job of its queues becomes claimable (an enqueue, a retry, a
  delayed job's run time, a slot freed under a concurrency limit), and answers at once then
  (:mod:`trimaran.node.claim_waits`). Only an error, or an empty answer well before the wait
  ended, makes it pause (doubling from ``poll_ms_min`` up to ``poll_ms_max``), so it never spins;
- runs **each job in its own cancel scope** bounded by its lease (``lease_until_ms``, by this
  host's clock); ``complete``/``fail`` carry the job's fencing token, so a late outcome from a
  lapsed lease is refused (``StaleLease``) and dropped;
- **reports completions together**: one ``complete_batch`` command in flight at a time carries
  every job that finished meanwhile (group commit: a lone job goes at once, alone; under load a
  worker's completions share one request and one log entry, and a job's task ends as soon as its
  completion is queued: the task sending the batch in flight sends it next), each job still
  fenced by its own token (claiming the freed slots in that same command was tried, and measured slower than the
  separate long-polling claims below);
- records a task's exception as ``"Type: message"``; an exception with ``retry = False`` (such
  as :class:`JobError` ``(..., retry=False)``) sends the job straight to the dead-letter list; a
  timeout is a failed attempt;
- stops a job whose cancellation it learns (heartbeat or claim answer) and confirms it
  (``ack_cancel``); the job ends ``cancelled``;
- **stops gracefully** on :meth:`Worker.stop`: no more claims, running jobs get ``grace_ms`` to
  finish, then they are cancelled and the session is closed, which gives them back unrun (their
  attempt is not counted).

Known limit: a ``claim`` whose answer never arrives (``RequestTimeout`` after the client's retries)
may have leased jobs this worker does not know of; they come back when their lease times out.

A plain ``def`` task runs in a thread (``trio.to_thread.run_sync(..., abandon_on_cancel=True)``):
on a timeout or cancellation the worker stops waiting for it, but Python cannot stop the thread.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import trio

from trimaran import limits
from trimaran.errors import (
    InvalidArgument,
    JobFailed,
    NotLeader,
    RequestTimeout,
    StaleLease,
    TrimaranError,
    Unavailable,
    WorkerSessionLost,
)

from .client import Client, Endpoints
from .jobs import Completion, GroupCommit, JobInfo, JobsClient, Lease, NewJob, encode

log = logging.getLogger("trimaran.worker")

SESSION_TTL_MS_DEFAULT = 30_000
GRACE_MS_DEFAULT = 10_000
CONCURRENCY_DEFAULT = 8
POLL_MS_MIN_DEFAULT = 20
POLL_MS_MAX_DEFAULT = 500
#: How long each claim may wait on the leader for a job (the node cuts it to half its request timeout).
CLAIM_WAIT_MS_DEFAULT = 4_000
#: Claims a worker keeps in flight, each for up to its share of the concurrency: while one waits for
#: its entry, the other's jobs run (with one, a worker takes at most its concurrency per commit).
CLAIMS_IN_FLIGHT = 2
#: Deadline of each outcome report (complete, fail, release...) and of the final session close.
REPORT_TIMEOUT_MS = 5_000
#: A job is stopped this much (at most a tenth of its lease) before its lease ends.
LEASE_MARGIN_MS_MAX = 1_000


class JobError(Exception):
    """Raise from a task to fail the attempt with ``message``; ``retry=False``: dead at once."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class JobContext:
    """The running job, inside a task: ``current_job()``."""

    id: str
    queue: str
    attempt: int
    token: int
    _progress: list[Any] = field(default_factory=list)

    def set_progress(self, value: Any) -> None:
        """Record ``value`` (msgpack-able) as the job's progress; the next heartbeat carries it."""
        encode(value, "progress")
        self._progress[:] = [value]


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("trimaran_current_job")


def current_job() -> JobContext:
    """The job the calling task runs (``LookupError`` outside a job)."""
    return _current.get()


class JobHandle:
    """An enqueued job: its ``id``, its outcome (``result``), its fields (``info``), ``cancel``."""

    def __init__(self, jobs: JobsClient, job_id: str) -> None:
        self._jobs = jobs
        self.id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    async def result(self, *, wait_ms: int = 0) -> Any:
        """The job's result once it completed (waiting up to ``wait_ms``). ``JobFailed`` if it
        ended otherwise (dead, failed, cancelled, expired), ``RequestTimeout`` if it has not
        ended in time, ``NotFound``-like None handling: ``JobFailed`` with state "unknown"."""
        outcome = await self._jobs.result(self.id, wait_ms=wait_ms)
        if outcome is None:
            raise JobFailed(f"job {self.id} is unknown (or its result was purged)", state="unknown", error=None, attempt=0)
        if outcome.state == "completed":
            return outcome.value
        if not outcome.done:
            raise RequestTimeout(f"job {self.id} has not ended within {wait_ms} ms (state: {outcome.state})")
        raise JobFailed(f"job {self.id} ended {outcome.state}: {outcome.error}", state=outcome.state, error=outcome.error, attempt=outcome.attempt)

    async def info(self) -> JobInfo | None:
        """The job's fields (None: unknown or purged)."""
        return await self._jobs.job(self.id)

    async def cancel(self) -> str:
        """Cancel the job (see :meth:`JobsClient.cancel`)."""
        return await self._jobs.cancel(self.id)


class Task:
    """A function registered with ``@app.task(queue, ...)``. Calling it runs it here; ``enqueue``
    makes a job of it."""

    def __init__(self, app: Jobs, fn: Callable[..., Any], queue: str, defaults: dict[str, Any]) -> None:
        self.app = app
        self.fn = fn
        self.queue = queue
        self.defaults = defaults
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__name__ = getattr(fn, "__name__", queue)
        self.__doc__ = fn.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    async def enqueue(
        self,
        *,
        delay_ms: int | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        run_at_ms: int | None = None,
        **kwargs: Any,
    ) -> JobHandle:
        """Enqueue a call with ``kwargs`` (the task's keyword arguments); a handle to the job."""
        return await self.enqueue_with(kwargs, delay_ms=delay_ms, priority=priority, unique_key=unique_key, run_at_ms=run_at_ms)

    async def enqueue_with(self, kwargs: dict[str, Any], **options: Any) -> JobHandle:
        """Like :meth:`enqueue`, for arguments whose names clash with its options."""
        merged = {**self.defaults, **{k: v for k, v in options.items() if v is not None}}
        if "timeout_ms" in merged:
            merged["job_timeout_ms"] = merged.pop("timeout_ms")
        jobs = self.app.jobs
        return JobHandle(jobs, await jobs.enqueue(self.queue, kwargs, **merged))

    def new_job(self, **kwargs: Any) -> NewJob:
        """A :class:`NewJob` of this task, for ``c.jobs.enqueue_batch``."""
        return NewJob(self.queue, kwargs, **self.defaults)


class Jobs:
    """An app of tasks and the client they use: ``Jobs(endpoints, **client options)`` (its own
    client, opened by ``async with app:`` or by :meth:`run_worker`) or ``Jobs(client=c)``."""

    def __init__(self, endpoints: Endpoints | None = None, *, client: Client | None = None, **client_options: Any) -> None:
        if client is not None and (endpoints is not None or client_options):
            raise InvalidArgument("give endpoints (and client options) or a client, not both")
        self.endpoints = endpoints
        self.client_options = client_options
        self._client = client
        self._owned: Client | None = None
        self.tasks: dict[str, Task] = {}

    def task(
        self,
        queue: str,
        *,
        max_attempts: int | None = None,
        timeout_ms: int | None = None,
        priority: int | None = None,
        backoff: dict[str, Any] | None = None,
        result_ttl_ms: int | None = None,
        group: str | None = None,
    ) -> Callable[[Callable[..., Any]], Task]:
        """Register the decorated function as the task of ``queue``; the options are its jobs' defaults."""
        if queue in self.tasks:
            raise InvalidArgument(f"queue {queue!r} already has a task ({self.tasks[queue].__name__})")
        defaults = {
            k: v
            for k, v in dict(max_attempts=max_attempts, timeout_ms=timeout_ms, priority=priority, backoff=backoff, result_ttl_ms=result_ttl_ms, group=group).items()
            if v is not None
        }

        def register(fn: Callable[..., Any]) -> Task:
            task = Task(self, fn, queue, defaults)
            self.tasks[queue] = task
            return task

        return register

    @property
    def client(self) -> Client:
        client = self._client or self._owned
        if client is None:
            raise InvalidArgument("the app has no open client: use `async with app:` (or Jobs(client=c))")
        return client

    @property
    def jobs(self) -> JobsClient:
        return self.client.jobs

    async def __aenter__(self) -> Jobs:
        if self._client is None and self._owned is None:
            if self.endpoints is None:
                raise InvalidArgument("Jobs() was given no endpoints and no client")
            client = Client(self.endpoints, **self.client_options)
            await client.__aenter__()
            self._owned = client
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.aclose()

    def worker(self, **options: Any) -> Worker:
        """A :class:`Worker` of this app's tasks (options: see :class:`Worker`)."""
        return Worker(self, **options)

    async def run_worker(self, *, task_status: Any = trio.TASK_STATUS_IGNORED, **options: Any) -> None:
        """Run a worker until it is stopped (opening the app's client if needed)."""
        async with self:
            await self.worker(**options).run(task_status=task_status)


@dataclass
class _Running:
    lease: Lease
    context: JobContext
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: Why the scope was cancelled: "cancel" (asked: ack_cancel), "lost" (no report), "stop".
    reason: str | None = None


class Worker:
    """Claims and runs the jobs of ``app``'s tasks (of ``queues``, default all) until :meth:`stop`."""

    def __init__(
        self,
        app: Jobs,
        *,
        queues: list[str] | None = None,
        concurrency: int = CONCURRENCY_DEFAULT,
        session_ttl_ms: int = SESSION_TTL_MS_DEFAULT,
        grace_ms: int = GRACE_MS_DEFAULT,
        poll_ms_min: int = POLL_MS_MIN_DEFAULT,
        poll_ms_max: int = POLL_MS_MAX_DEFAULT,
        claim_wait_ms: int = CLAIM_WAIT_MS_DEFAULT,
        name: str | None = None,
    ) -> None:
        queues = list(app.tasks) if queues is None else list(queues)
        if not queues:
            raise InvalidArgument("the worker has no queue to take jobs from (register a task with @app.task)")
        missing = [q for q in queues if q not in app.tasks]
        if missing:
            raise InvalidArgument(f"no task for queue(s) {', '.join(missing)} (tasks: {', '.join(app.tasks) or 'none'})")
        if len(queues) > limits.job_claim_queues_max:
            raise InvalidArgument(f"a worker takes at most {limits.job_claim_queues_max} queues")
        if not 1 <= concurrency <= limits.job_claim_jobs_max:
            raise InvalidArgument(f"concurrency must be in 1..{limits.job_claim_jobs_max}")
        if not 3 <= session_ttl_ms <= limits.job_session_ttl_ms_max or grace_ms < 0 or not 0 < poll_ms_min <= poll_ms_max:
            raise InvalidArgument("need 3 <= session_ttl_ms <= job_session_ttl_ms_max, grace_ms >= 0, 0 < poll_ms_min <= poll_ms_max")
        if not 0 <= claim_wait_ms <= limits.job_claim_wait_ms_max:
            raise InvalidArgument(f"claim_wait_ms must be in 0..{limits.job_claim_wait_ms_max}")
        self.app = app
        self.queues = queues
        self.concurrency = concurrency
        self.session_ttl_ms = session_ttl_ms
        self.grace_ms = grace_ms
        self.poll_ms = (poll_ms_min, poll_ms_max)
        self.claim_wait_ms = claim_wait_ms
        #: The waiting claims' scopes: stop() cancels them (a claim proposed anyway leases jobs to a
        #: session that is about to close, which gives them back unrun).
        self._claim_scopes: set[trio.CancelScope] = set()
        #: Jobs asked for by the claims in flight (their slots are spoken for).
        self._asked = 0
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        #: The current worker session's id (None before it opens and after it closes).
        self.session: str | None = None
        self.running: dict[str, _Running] = {}
        self._stopping = trio.Event()
        self._changed = trio.Event()  # a slot freed, or stop asked: the claim loop looks again
        self._session_lock = trio.Lock()
        #: Jobs whose task ended and whose outcome is being reported (their slots are free).
        self._reporting = 0
        #: The group commit of completions, one ``complete_batch`` in flight (made when the worker
        #: runs: the app's client is open then).
        self.completions: GroupCommit | None = None

    def stop(self) -> None:
        """Stop claiming; running jobs get ``grace_ms`` to finish, the rest are given back."""
        self._stopping.set()
        self._poke()
        for scope in self._claim_scopes:
            scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        jobs = self.app.jobs

        async def complete_batch(completions: list[Completion]) -> list[str]:
            return await jobs.complete_batch(completions, timeout_ms=REPORT_TIMEOUT_MS)

        self.completions = GroupCommit(complete_batch, limits.job_complete_batch_max, limits.job_result_bytes_max)
        await self._open_session(None)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._heartbeats)
                async with trio.open_nursery() as job_nursery:
                    async with trio.open_nursery() as claimers:
                        for _ in range(CLAIMS_IN_FLIGHT):
                            claimers.start_soon(self._claim_loop, job_nursery)
                    with trio.move_on_after(self.grace_ms / 1000):
                        while self.running:
                            await self._wait_changed()
                    for running in self.running.values():
                        running.reason = "stop"
                        running.scope.cancel()
                nursery.cancel_scope.cancel()
        finally:
            session, self.session = self.session, None
            if session is not None:
                with trio.move_on_after(REPORT_TIMEOUT_MS / 1000) as scope:
                    scope.shield = True
                    try:
                        released = await jobs.close_session(session, timeout_ms=REPORT_TIMEOUT_MS)
                        if released:
                            log.info("worker session %s closed; gave back %d job(s): %s", session, len(released), ", ".join(released))
                    except TrimaranError as exc:
                        log.warning("closing worker session %s failed (%s: %s); its jobs come back when it lapses", session, exc.code, exc.message)

    async def _wait_changed(self) -> None:
        await self._changed.wait()  # (nothing runs between a caller's look and this wait)

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _open_session(self, lost: str | None) -> str:
        async with self._session_lock:
            if self.session is not None and self.session != lost:
                return self.session  # another task already replaced it
            for running in self.running.values():  # a lost session's jobs are not ours any more
                running.reason = "lost"
                running.scope.cancel()
            opened = await self.app.jobs.open_session(self.name, self.session_ttl_ms)
            self.session = opened.session
            log.info("worker %s: session %s open (queues %s)", self.name, opened.session, ",".join(self.queues))
            return opened.session

    # ------------------------------------------------------------------ claiming

    async def _claim_loop(self, nursery: trio.Nursery) -> None:
        pause_ms = self.poll_ms[0]
        while not self.stopping:
            free = self.concurrency - len(self.running) - self._asked
            if free <= 0:
                await self._wait_changed()
                continue
            n = min(free, -(-self.concurrency // CLAIMS_IN_FLIGHT))  # (so the other claim gets slots too)
            started_s = trio.current_time()
            claimed = -1  # no answer
            self._asked += n
            try:
                with trio.CancelScope() as scope:
                    self._claim_scopes.add(scope)
                    if self.stopping:
                        break
                    claimed = await self._claim(nursery, n)
            except WorkerSessionLost:
                await self._reopen()
                continue
            except (RequestTimeout, Unavailable, NotLeader) as exc:  # the cluster, for a moment
                log.warning("worker %s: %s: %s; trying again", self.name, exc.code, exc.message)
            finally:
                self._asked -= n  # (the jobs it got are in self.running by now)
                self._claim_scopes.discard(scope)
                self._poke()
            waited_s = trio.current_time() - started_s
            if claimed > 0 or (claimed == 0 and self.claim_wait_ms and waited_s * 1000 >= self.claim_wait_ms / 2):
                pause_ms = self.poll_ms[0]
                continue  # jobs, or a wait that ran its course: claim again at once
            # An error, or nothing well before the wait ended (the node could not hold the claim,
            # or another worker took the job): pause, so the loop never spins.
            with trio.move_on_after(pause_ms / 1000):
                await self._stopping.wait()
            pause_ms = min(pause_ms * 2, self.poll_ms[1])

    async def _reopen(self) -> None:
        lost = self.session
        try:
            await self._open_session(lost)
        except TrimaranError as exc:
            log.warning("worker %s: reopening the session failed (%s: %s)", self.name, exc.code, exc.message)
            await trio.sleep(self.poll_ms[1] / 1000)

    async def _claim(self, nursery: trio.Nursery, free: int) -> int:
        session = self.session
        assert session is not None
        answer = await self.app.jobs.claim(session, self.queues, min(free, limits.job_claim_jobs_max), wait_ms=self.claim_wait_ms)
        self._cancel_asked(answer.cancel)
        for lease in answer.jobs:
            running = _Running(lease, JobContext(lease.id, lease.queue, lease.attempt, lease.token))
            self.running[lease.id] = running
            nursery.start_soon(self._run_job, running, name=f"job {lease.id}")
        return len(answer.jobs)

    def _cancel_asked(self, job_ids: list[str]) -> None:
        for job_id in job_ids:
            running = self.running.get(job_id)
            if running is not None and running.reason is None:
                running.reason = "cancel"
                running.scope.cancel()

    # ------------------------------------------------------------------ heartbeats

    async def _heartbeats(self) -> None:
        jobs = self.app.jobs
        interval_s = self.session_ttl_ms / 3 / 1000
        while True:
            await trio.sleep(interval_s)
            session = self.session
            if session is None:
                continue
            beats = [(r.lease.id, r.lease.token) for r in self.running.values() if r.reason is None]
            progress = {r.lease.id: r.context._progress[0] for r in self.running.values() if r.context._progress}
            try:
                answer = await jobs.heartbeat(session, beats, progress=progress or None, timeout_ms=max(1, int(interval_s * 1000)))
            except WorkerSessionLost:
                log.warning("worker %s: session %s lost; its jobs were released", self.name, session)
                await self._reopen()
                continue
            except TrimaranError as exc:
                log.warning("worker %s: heartbeat failed (%s: %s)", self.name, exc.code, exc.message)
                continue
            for r in self.running.values():
                if r.lease.id in progress and r.context._progress and r.context._progress[0] is progress[r.lease.id]:
                    r.context._progress.clear()  # sent (unless a newer value came meanwhile)
            self._cancel_asked(answer.cancel)
            for job_id in answer.lost:
                running = self.running.get(job_id)
                if running is not None and running.reason is None:
                    running.reason = "lost"
                    running.scope.cancel()

    # ------------------------------------------------------------------ running one job

    async def _run_job(self, running: _Running) -> None:
        lease = running.lease
        task = self.app.tasks[lease.queue]
        outcome: tuple[str, Any, bool] | None = None  # (kind, result or error, retry)
        # Stop a little before the lease ends, so the failure is recorded before the lease lapses.
        left_ms = lease.lease_until_ms - time.time() * 1000
        timeout_s = max(left_ms - min(LEASE_MARGIN_MS_MAX, left_ms / 10), 1) / 1000
        _current.set(running.context)
        # One cancel scope per job (trio's scopes are most of a job's cost to this runtime): its
        # deadline is the lease's, and a cancel, a lost session or a stop sets ``reason`` first.
        scope = running.scope
        scope.deadline = trio.current_time() + timeout_s
        try:
            with scope:
                try:
                    result = await self._call(task, lease.payload)
                    outcome = ("complete", result, False)
                except Exception as exc:
                    outcome = ("fail", f"{type(exc).__name__}: {exc}", getattr(exc, "retry", True) is not False)
            if scope.cancelled_caught and running.reason is None:
                outcome = ("fail", f"TimeoutError: the job ran past its lease ({timeout_s * 1000:.0f} ms)", True)
            if running.reason is None and self._reporting < self.concurrency:
                # The task is done: its slot takes a new job while the outcome goes out (at most
                # ``concurrency`` outcomes in flight, so at most twice that many jobs leased).
                self._free(running)
                self._reporting += 1
                await self._report(running, outcome, self._reported)
            else:
                await self._report(running, outcome, None)
        finally:
            self._free(running)

    def _free(self, running: _Running) -> None:
        if self.running.get(running.lease.id) is running:  # (a new lease of the same job may have replaced it)
            del self.running[running.lease.id]
            self._poke()

    async def _call(self, task: Task, payload: Any) -> Any:
        if isinstance(payload, dict):
            args: tuple[Any, ...] = ()
            kwargs: dict[str, Any] = payload
        elif isinstance(payload, list):
            args, kwargs = tuple(payload), {}
        elif payload is None:
            args, kwargs = (), {}
        else:
            args, kwargs = (payload,), {}
        if task.is_async:
            return await task.fn(*args, **kwargs)
        context = contextvars.copy_context()
        return await trio.to_thread.run_sync(lambda: context.run(task.fn, *args, **kwargs), abandon_on_cancel=True)

    def _reported(self) -> None:
        """An outcome reported while its job's slot was already free is settled."""
        self._reporting -= 1

    async def _report(self, running: _Running, outcome: tuple[str, Any, bool] | None, settled: Callable[[], None] | None) -> None:
        """Tell the service how the attempt ended, with the lease's token. A refusal as stale means
        another attempt owns the job now: dropped. With ``settled``, a completion is posted to the
        group commit, which calls ``settled`` once it is answered (so this returns at once while a
        batch is in flight: no wait, no wakeup per job); any other outcome is settled here.

        A stop of the worker does not cut a report short: the group commit shields the batches it
        sends and a post does not wait; everything else waits in a shielded scope here."""
        lease = running.lease
        completion = None
        if running.reason is None and outcome is not None and outcome[0] == "complete":
            try:
                completion = Completion.of(lease.id, lease.token, outcome[1])
            except InvalidArgument as exc:  # the result cannot be stored: no retry helps
                outcome = ("fail", f"InvalidArgument: {exc.message}", False)
        assert self.completions is not None
        if completion is not None and settled is not None:
            await self.completions.post(completion, completion.size_bytes, lambda answer: self._answered(lease, answer, settled))
            return
        try:
            with trio.CancelScope(shield=True):
                if completion is not None:
                    try:
                        self._answered(lease, await self.completions.submit(completion, completion.size_bytes), None)
                    except TrimaranError as exc:
                        self._answered(lease, exc, None)
                else:
                    await self._report_other(running, outcome)
        finally:
            if settled is not None:
                settled()

    async def _report_other(self, running: _Running, outcome: tuple[str, Any, bool] | None) -> None:
        """Report an outcome other than a completion and wait for its answer."""
        jobs, lease = self.app.jobs, running.lease
        try:
            if running.reason == "cancel":
                await jobs.ack_cancel(lease.id, lease.token, timeout_ms=REPORT_TIMEOUT_MS)
            elif running.reason is None and outcome is not None:
                state = await jobs.fail(lease.id, lease.token, outcome[1], retry=outcome[2], timeout_ms=REPORT_TIMEOUT_MS)
                log.info("job %s attempt %d failed (%s): now %s", lease.id, lease.attempt, outcome[1], state)
            # (else lost: not ours any more; stopped: the session close gives it back)
        except TrimaranError as exc:
            self._answered(lease, exc, None)

    @staticmethod
    def _answered(lease: Lease, answer: Any, settled: Callable[[], None] | None) -> None:
        """A report's answer: "completed", "stale_lease" or the error that refused it."""
        if answer == StaleLease.code or isinstance(answer, StaleLease):
            log.warning("job %s: the lease of attempt %d ended before its outcome arrived; dropped", lease.id, lease.attempt)
        elif isinstance(answer, TrimaranError):
            log.warning("job %s: reporting its outcome failed (%s: %s); its lease will lapse", lease.id, answer.code, answer.message)
        if settled is not None:
            settled()


__all__ = ["JobContext", "JobError", "JobHandle", "Jobs", "Task", "Worker", "current_job"]
