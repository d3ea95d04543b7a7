"""The ``jobs`` service on a client (``c.jobs``): enqueue, inspect, cancel, dead letters, pause,
schedules, and the worker-side calls (sessions, claim, complete, fail, release, heartbeat).

::

    job_id = await c.jobs.enqueue("emails", {"to": "a@b.c"}, delay_ms=5_000, max_attempts=5)
    info = await c.jobs.job(job_id)                      # JobInfo(state="delayed", payload={...}, ...)
    outcome = await c.jobs.result(job_id, wait_ms=10_000)  # JobResult(state="completed", value=...)

Payloads, results and progress are any msgpack-able value (None, bool, int, float, str, bytes,
lists, maps with str keys): this module packs them with :func:`trimaran.protocols.codec.pack`
(the service stores bytes) and unpacks what comes back; anything else is ``InvalidArgument``
before it is sent. Commands go through the client's session (exactly-once across retries);
queries are linearizable reads. The service's refusals arrive typed: ``NotFound``, ``QueueFull``,
``StaleLease``, ``WorkerSessionLost``, ``InvalidArgument``/``TooLarge``. Formats and semantics:
:mod:`trimaran.services.jobs.service`.

:meth:`JobsClient.claim` with ``wait_ms`` long-polls on the leader (:mod:`trimaran.node.claim_waits`).
The service has no server-side wait for results yet: :meth:`JobsClient.result` with ``wait_ms``
polls the ``result`` query with a short doubling pause (bounded by ``RESULT_POLL_MS_MAX``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import trio

from trimaran import limits
from trimaran.errors import InvalidArgument, PermissionDenied, ProtocolError, RequestTimeout, ServiceError, StaleLease, TooLarge, TrimaranError
from trimaran.protocols.codec import pack, unpack

SERVICE = "jobs"
#: The states in which a job will not change again (dead: until requeued).
TERMINAL_STATES = frozenset(("completed", "failed", "dead", "cancelled", "expired"))
#: Pause between two polls of ``result(wait_ms=...)``: doubles from the min to the max.
RESULT_POLL_MS_MIN = 10
RESULT_POLL_MS_MAX = 250
#: The deadline past a long-polling claim's wait when the client has no timeout of its own.
CLAIM_TIMEOUT_MS_MIN = 5_000
#: Group commits of enqueues a client keeps, one per call deadline (``timeout_ms``) in use.
ENQUEUE_GROUPS_MAX = 16

_ENQUEUE_OPTIONS = (
    "priority", "delay_ms", "run_at_ms", "unique_key", "unique_window_ms", "max_attempts", "backoff",
    "timeout_ms", "expires_at_ms", "depends_on", "group", "result_ttl_ms",
)  # fmt: skip


class _Calls(Protocol):
    async def command(self, service: str, command: Any, *, timeout_ms: int | None = None) -> Any: ...

    async def read(
        self, service: str, query: Any, consistency: str = "linearizable", *, timeout_ms: int | None = None
    ) -> Any: ...


def encode(value: Any, what: str = "payload") -> bytes:
    """``value`` packed for the service; ``InvalidArgument`` if msgpack cannot carry it faithfully."""
    try:
        data = pack(value)
        unpack(data)  # refuses what the other side could not read back (non-str map keys...)
    except (TypeError, ValueError, OverflowError, TrimaranError) as exc:
        raise InvalidArgument(f"the {what} is not msgpack-able (None, bool, int, float, str, bytes, lists, maps with str keys): {exc}") from None
    return data


def decode(data: bytes | None) -> Any:
    """The value packed in ``data`` (None stays None; bytes that are not msgpack come back as they are)."""
    if data is None:
        return None
    try:
        return unpack(data)
    except ProtocolError:
        return data


@dataclass(frozen=True, slots=True)
class JobInfo:
    """What the ``job`` query shows of a job; ``payload``, ``result`` and ``progress`` decoded."""

    id: str
    queue: str
    state: str
    payload: Any
    priority: int
    group: str
    attempt: int
    max_attempts: int
    created_at_ms: int
    run_at_ms: int
    started_at_ms: int
    finished_at_ms: int
    lease_until_ms: int
    session: str | None
    progress: Any
    result: Any
    error: str | None
    unique_key: str | None
    depends_on: list[str]
    cancel_requested: bool
    expires_at_ms: int

    @classmethod
    def from_wire(cls, view: dict[str, Any]) -> JobInfo:
        values: dict[str, Any] = {name: view.get(name) for name in cls.__dataclass_fields__}
        for name in ("payload", "result", "progress"):
            values[name] = decode(values[name])
        values["depends_on"] = list(values["depends_on"] or [])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True, slots=True)
class JobResult:
    """A job's outcome (the ``result`` query): ``value`` is the decoded result of a completed job."""

    id: str
    state: str
    value: Any
    error: str | None
    attempt: int
    finished_at_ms: int | None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class Lease:
    """One claimed job: run it, then ``complete``/``fail``/``release`` with its ``token``."""

    id: str
    queue: str
    payload: Any
    attempt: int
    token: int
    lease_until_ms: int
    priority: int
    group: str
    progress: Any


@dataclass(frozen=True, slots=True)
class Claim:
    jobs: list[Lease]
    #: Jobs of this session whose cancellation was asked: stop them and ``ack_cancel``.
    cancel: list[str]


#: msgpack's framing of one completion at most: the 3-element array (1), the job id's str header
#: (3), the token as an int (9), the 1-entry map (1), its "result" key (7), the bin header (5).
_COMPLETION_FRAMING_BYTES_MAX = 26


@dataclass(frozen=True, slots=True)
class Completion:
    """One job for :meth:`JobsClient.complete_batch`, its result already packed: make it with
    :meth:`of`, which refuses a result msgpack cannot carry (``InvalidArgument``) or one over
    ``job_result_bytes_max`` (``TooLarge``), so one bad result never refuses a whole batch."""

    job: str
    token: int
    result: bytes

    @classmethod
    def of(cls, job: str, token: int, result: Any = None) -> Completion:
        data = encode(result, "result")
        if len(data) > limits.job_result_bytes_max:
            raise TooLarge(f"a result of {len(data)} bytes is over job_result_bytes_max={limits.job_result_bytes_max}")
        return cls(job, token, data)

    def wire(self) -> list[Any]:
        return [self.job, self.token, {"result": self.result}]

    @property
    def size_bytes(self) -> int:
        """At least the bytes of :meth:`wire` packed, without packing it: what a batch of
        completions is bounded by, so that a full batch still fits one command (the result alone
        would leave out a few dozen bytes per job, a thousand of which overflow the command)."""
        return len(self.result) + len(self.job.encode()) + _COMPLETION_FRAMING_BYTES_MAX


@dataclass(frozen=True, slots=True)
class WorkerSession:
    session: str
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class Heartbeat:
    expires_at_ms: int
    cancel: list[str]
    #: Jobs named in the heartbeat that this session no longer holds (lease lapsed or ended).
    lost: list[str]


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    #: state -> number of jobs in it.
    counts: dict[str, int]
    held: int
    paused: bool
    settings: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"queue": self.queue, **self.counts, "held": self.held, "paused": self.paused, **self.settings}


@dataclass(frozen=True, slots=True)
class QueuePage:
    """A page of the cluster's job queues (name order): each one's counts by state, whether it is
    paused, and the leases that expired and jobs dead-lettered since the answering node built it."""

    items: list[dict[str, Any]]
    #: The ``start_after`` of the next page; None at the end.
    next: str | None


@dataclass(frozen=True, slots=True)
class JobPage:
    items: list[JobInfo]
    #: The ``start_after`` of the next page; None at the end.
    next: str | None


@dataclass(frozen=True, slots=True)
class ReadyInfo:
    #: Jobs claimable in the unpaused queues asked (before concurrency and rate limits).
    ready: int
    #: Log time (ms) at which more may become ready (a delayed job, a rate window's end), or None.
    next_ms: int | None


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    name: str
    queue: str
    cron: str | None
    every_ms: int | None
    catch_up: bool
    next_ms: int
    last_slot_ms: int | None
    fired: int
    skipped: int


@dataclass(frozen=True, slots=True)
class NewJob:
    """One job for :meth:`JobsClient.enqueue_batch` (None options: the service's defaults).
    ``backoff``: ``{"kind": "fixed"|"exponential", "delay_ms", "max_ms", "jitter_pct"}``."""

    queue: str
    payload: Any = None
    priority: int | None = None
    delay_ms: int | None = None
    run_at_ms: int | None = None
    unique_key: str | None = None
    unique_window_ms: int | None = None
    max_attempts: int | None = None
    backoff: Mapping[str, Any] | None = None
    timeout_ms: int | None = None
    expires_at_ms: int | None = None
    depends_on: Sequence[str] | None = None
    group: str | None = None
    result_ttl_ms: int | None = None

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _ENQUEUE_OPTIONS:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "backoff":
                value = dict(value)
            elif name == "depends_on":
                value = list(value)
            out[name] = value
        return out

    def wire(self) -> list[Any]:
        options = self.options()
        return [self.queue, encode(self.payload)] + ([options] if options else [])


def _options(**options: Any) -> list[dict[str, Any]]:
    given = {k: v for k, v in options.items() if v is not None}
    return [given] if given else []


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise ProtocolError(f"the jobs service answered {what} with {value!r:.80}, not an integer")
    return value


def _lease(view: dict[str, Any]) -> Lease:
    return Lease(
        view["id"], view["queue"], decode(view["payload"]), view["attempt"], view["token"], view["lease_until_ms"],
        view["priority"], view["group"], decode(view.get("progress")),
    )  # fmt: skip


def _page(answer: dict[str, Any]) -> JobPage:
    return JobPage([JobInfo.from_wire(v) for v in answer["items"]], answer.get("next"))


class _Unanswered:
    """The outcome of an item whose batch has not been answered yet."""


_UNANSWERED = _Unanswered()
#: The answer to each item of an enqueue batch refused as a whole (nothing enqueued): send it alone.
_ALONE = _Unanswered()


@dataclass(slots=True, eq=False)
class _Item:
    value: Any
    size_bytes: int
    #: Called with the outcome of a posted item (None: its caller waits for it).
    then: Callable[[Any], None] | None = None
    #: The item's answer, or the error that refused its batch.
    outcome: Any = _UNANSWERED


class GroupCommit:
    """Group commit of one kind of command: at most one request in flight; the items that arrive
    meanwhile go together in the next one (up to ``items_max`` items and ``bytes_max`` bytes; a
    lone item goes at once, alone). ``send`` answers a batch with one outcome per item, in order.
    Used for a client's enqueues and a worker's completions: under load one request, one session
    number and one log command carry many, and each item still gets its own answer.

    The caller that finds no batch in flight sends one, shielded (the others need its answer; the
    command's deadline bounds it), and goes on sending while items are left that no waiting caller
    would send: a :meth:`submit` waits for its item's answer, a :meth:`post` (a worker's completion)
    hands it to a callback and returns at once when a batch is in flight."""

    def __init__(self, send: Callable[[list[Any]], Awaitable[list[Any]]], items_max: int, bytes_max: int) -> None:
        self._send_batch = send
        self._items_max = items_max
        self._bytes_max = bytes_max
        self._pending: list[_Item] = []
        #: Set when the batch in flight is answered (None: none in flight).
        self._in_flight: trio.Event | None = None
        #: Counters: batches answered, jobs in them.
        self.batches = 0
        self.jobs = 0

    @property
    def idle(self) -> bool:
        """Nothing pending and nothing in flight."""
        return not self._pending and self._in_flight is None

    async def submit(self, value: Any, size_bytes: int) -> Any:
        """The answer to ``value``; raises what refused its batch (``RequestTimeout`` if the batch
        carrying it was cancelled). A caller cancelled before its item was sent takes it back."""
        mine = _Item(value, size_bytes)
        self._pending.append(mine)
        try:
            while mine.outcome is _UNANSWERED:
                if self._in_flight is not None:
                    await self._in_flight.wait()  # (every waiter wakes at once; one sends the next batch)
                    continue
                await self._send_batches(mine)
        finally:
            if mine.outcome is _UNANSWERED and mine in self._pending:
                self._pending.remove(mine)  # cancelled before it was sent: never sent
                if self._pending and self._in_flight is None:
                    await self._send_batches(None)  # (posted items that were waiting on this caller)
        if isinstance(mine.outcome, TrimaranError):
            raise mine.outcome
        return mine.outcome

    async def post(self, value: Any, size_bytes: int, then: Callable[[Any], None]) -> None:
        """Queue ``value``; ``then`` gets its outcome (the answer, or the error that refused its
        batch) from whichever caller sends it. Returns at once, without a checkpoint, while a batch
        is in flight; otherwise sends batches until none is left for it to send."""
        self._pending.append(_Item(value, size_bytes, then))
        if self._in_flight is None:
            await self._send_batches(None)

    async def _send_batches(self, mine: _Item | None) -> None:
        """Send batches until ``mine`` (if any) is answered and every item left, if any, has a
        waiting caller to send it."""
        with trio.CancelScope(shield=True):
            while True:
                self._in_flight = done = trio.Event()
                try:
                    # Let the tasks already runnable add theirs first (those woken by the last
                    # answer: two passes whatever order trio runs them in), so a burst goes in
                    # one batch rather than as a lone first item and then the rest.
                    for _ in range(2):
                        await trio.lowlevel.checkpoint()
                    batch = self._take()
                    if batch:  # (empty if every item left was taken back meanwhile)
                        await self._send(batch)
                finally:
                    self._in_flight = None
                    done.set()
                if not self._pending:
                    return
                if (mine is None or mine.outcome is not _UNANSWERED) and any(item.then is None for item in self._pending):
                    return  # a waiting caller (woken by ``done``) sends the rest
                # Mine is still to go (the batch was full), or only posted items are left.

    def _take(self) -> list[_Item]:
        """The next batch: the oldest pending items, up to the bounds (the first one whatever its size)."""
        count, size_bytes = 0, 0
        for item in self._pending:
            size_bytes += item.size_bytes
            if count and (count >= self._items_max or size_bytes > self._bytes_max):
                break
            count += 1
        batch, self._pending = self._pending[:count], self._pending[count:]
        return batch

    async def _send(self, batch: list[_Item]) -> None:
        try:
            try:
                outcomes = await self._send_batch([item.value for item in batch])
            except TrimaranError as exc:
                for item in batch:
                    item.outcome = exc
            else:
                for item, outcome in zip(batch, outcomes, strict=True):
                    item.outcome = outcome
                self.batches += 1
                self.jobs += len(batch)
        finally:
            for item in batch:  # (cancelled: nobody learns more than that the request failed)
                if item.outcome is _UNANSWERED:
                    item.outcome = RequestTimeout("the request carrying this item was cancelled; it may or may not have been applied")
                if item.then is not None:
                    item.then(item.outcome)


class JobsClient:
    """``c.jobs`` on an async client."""

    def __init__(self, client: _Calls) -> None:
        self._client = client
        #: Concurrent enqueues (one group commit per call deadline) go in shared commands.
        self.enqueues: dict[int | None, GroupCommit] = {}

    async def _command(self, command: list[Any], timeout_ms: int | None) -> Any:
        return await self._client.command(SERVICE, command, timeout_ms=timeout_ms)

    async def _read(self, query: list[Any], timeout_ms: int | None) -> Any:
        return await self._client.read(SERVICE, query, timeout_ms=timeout_ms)

    # ------------------------------------------------------------------ producers

    async def enqueue(self, queue: str, payload: Any = None, *, timeout_ms: int | None = None, **options: Any) -> str:
        """Enqueue one job; its id (with ``unique_key``: the live job's id if there is one).
        Options: those of :class:`NewJob`, except that the job's own timeout is ``job_timeout_ms``
        here (``timeout_ms`` is this call's deadline, as everywhere in the client). ``QueueFull``
        if the queue is full (nothing enqueued). Enqueues made at the same time on one client
        (several tasks) share commands (:class:`GroupCommit`): one in flight, the others go
        together in the next, each still acknowledged only once its job is committed and applied."""
        if "job_timeout_ms" in options:
            options["timeout_ms"] = options.pop("job_timeout_ms")
        unknown = sorted(set(options) - set(_ENQUEUE_OPTIONS))
        if unknown:
            raise InvalidArgument(f"enqueue: unknown option(s) {', '.join(unknown)} (allowed: {', '.join(_ENQUEUE_OPTIONS)})")
        item = NewJob(queue, payload, **options).wire()
        job_id = await self._enqueue_group(timeout_ms).submit(item, len(pack(item)))
        if job_id is _ALONE:
            job_id = await self._command(["enqueue", *item], timeout_ms)
        return str(job_id)

    def _enqueue_group(self, timeout_ms: int | None) -> GroupCommit:
        """The group commit of enqueues with this deadline; at most ``ENQUEUE_GROUPS_MAX`` are kept
        (idle ones are dropped first: a caller may pass a different deadline on every call)."""
        group = self.enqueues.get(timeout_ms)
        if group is None:
            if len(self.enqueues) >= ENQUEUE_GROUPS_MAX:
                self.enqueues = {t: g for t, g in self.enqueues.items() if not g.idle}
            group = GroupCommit(lambda items: self._enqueue_together(items, timeout_ms), limits.job_enqueue_batch_max, limits.job_payload_bytes_max)
            if len(self.enqueues) < ENQUEUE_GROUPS_MAX:
                self.enqueues[timeout_ms] = group  # (else this one serves this call alone)
        return group

    async def _enqueue_together(self, items: list[list[Any]], timeout_ms: int | None) -> list[Any]:
        """Concurrent enqueues in one command: ``enqueue`` for one, ``enqueue_batch`` for more. A batch
        is all or nothing, so when the service refuses it (one job's error: a full queue, a missing
        dependency, a queue out of the token's scope...) nothing was enqueued and each job goes
        again alone, to get its own answer."""
        if len(items) == 1:
            return [await self._command(["enqueue", *items[0]], timeout_ms)]
        try:
            answer = await self._command(["enqueue_batch", items], timeout_ms)
        except (ServiceError, InvalidArgument, PermissionDenied):
            return [_ALONE] * len(items)
        if type(answer) is not list or len(answer) != len(items):
            raise ProtocolError(f"the jobs service answered enqueue_batch with {answer!r:.80}")
        return answer

    async def enqueue_batch(self, jobs: Iterable[NewJob], *, timeout_ms: int | None = None) -> list[str]:
        """Enqueue several jobs in one log entry, all or none; their ids in order."""
        items = [job.wire() for job in jobs]
        if not items:
            return []
        if len(items) > limits.job_enqueue_batch_max:
            raise InvalidArgument(f"a batch holds at most job_enqueue_batch_max={limits.job_enqueue_batch_max} jobs")
        return [str(i) for i in await self._command(["enqueue_batch", items], timeout_ms)]

    async def cancel(self, job: str, *, timeout_ms: int | None = None) -> str:
        """Cancel ``job``: "cancelled", "cancelling" (running: its worker is told), or its end state."""
        return str(await self._command(["cancel", job], timeout_ms))

    # ------------------------------------------------------------------ queries

    async def job(self, job: str, *, timeout_ms: int | None = None) -> JobInfo | None:
        """The job's fields, or None (unknown, or purged after its result TTL)."""
        view = await self._read(["job", job], timeout_ms)
        return None if view is None else JobInfo.from_wire(view)

    async def result(self, job: str, *, wait_ms: int = 0, timeout_ms: int | None = None) -> JobResult | None:
        """The job's outcome; with ``wait_ms``, polls until it ended (or ``wait_ms`` passed: then
        its current state). None: unknown or purged."""
        deadline = trio.current_time() + wait_ms / 1000
        pause_ms = RESULT_POLL_MS_MIN
        while True:
            answer = await self._read(["result", job], timeout_ms)
            if answer is None:
                return None
            outcome = JobResult(job, answer["state"], decode(answer["result"]), answer["error"], answer["attempt"], answer["finished_at_ms"])
            left_s = deadline - trio.current_time()
            if outcome.done or left_s <= 0:
                return outcome
            await trio.sleep(min(pause_ms / 1000, left_s))
            pause_ms = min(pause_ms * 2, RESULT_POLL_MS_MAX)

    async def stats(self, queue: str, *, timeout_ms: int | None = None) -> QueueStats:
        answer = await self._read(["stats", queue], timeout_ms)
        counts = {s: answer.pop(s) for s in list(answer) if s in TERMINAL_STATES | {"waiting", "delayed", "ready", "running"}}
        held, paused = answer.pop("held"), answer.pop("paused")
        return QueueStats(queue, counts, held, paused, answer)

    async def queues(self, *, start_after: str | None = None, limit: int | None = None, timeout_ms: int | None = None) -> QueuePage:
        """A page of every queue's counts (needs ``jobs:read:*``)."""
        answer = await self._read(["queues", {"start_after": start_after, "limit": limit}], timeout_ms)
        return QueuePage(answer["items"], answer["next"])

    async def list_jobs(
        self, queue: str, *, state: str | None = None, start_after: str | None = None, limit: int | None = None, timeout_ms: int | None = None
    ) -> JobPage:
        """A page of the queue's jobs in creation order (of one ``state``, or all)."""
        return _page(await self._read(["list", queue, *_options(state=state, start_after=start_after, limit=limit)], timeout_ms))

    async def dlq(self, queue: str, *, start_after: str | None = None, limit: int | None = None, timeout_ms: int | None = None) -> JobPage:
        """A page of the queue's dead-letter list, oldest death first."""
        return _page(await self._read(["dlq", queue, *_options(start_after=start_after, limit=limit)], timeout_ms))

    async def ready(self, queues: Sequence[str], *, timeout_ms: int | None = None) -> ReadyInfo:
        """How many jobs are claimable now, and when more may be (what a polling worker sleeps on)."""
        answer = await self._read(["ready", list(queues)], timeout_ms)
        return ReadyInfo(answer["ready"], answer["next_ms"])

    async def schedules(self, *, timeout_ms: int | None = None) -> list[ScheduleInfo]:
        return [ScheduleInfo(**s) for s in await self._read(["schedules"], timeout_ms)]

    async def session(self, session: str, *, timeout_ms: int | None = None) -> dict[str, Any] | None:
        """A worker session's fields, or None."""
        answer: dict[str, Any] | None = await self._read(["session", session], timeout_ms)
        return answer

    # ------------------------------------------------------------------ dead letters and queues

    async def retry(self, job: str, *, timeout_ms: int | None = None) -> list[str]:
        """Requeue one dead job (found by id) with its attempts reset; ``NotFound`` if not dead."""
        from trimaran.errors import NotFound

        info = await self.job(job, timeout_ms=timeout_ms)
        if info is None:
            raise NotFound(f"job {job} does not exist", kind="job", id=job)
        return await self.dlq_requeue(info.queue, [job], timeout_ms=timeout_ms)

    async def dlq_requeue(self, queue: str, jobs: Sequence[str] | None = None, *, timeout_ms: int | None = None) -> list[str]:
        """Make dead jobs of ``queue`` ready again (None: the oldest ``job_dlq_batch_max``)."""
        command = ["dlq_requeue", queue, *_options(jobs=None if jobs is None else list(jobs))]
        return [str(i) for i in await self._command(command, timeout_ms)]

    async def dlq_purge(self, queue: str, jobs: Sequence[str] | None = None, *, timeout_ms: int | None = None) -> int:
        command = ["dlq_purge", queue, *_options(jobs=None if jobs is None else list(jobs))]
        return _int(await self._command(command, timeout_ms), "dlq_purge")

    async def pause(self, queue: str, *, timeout_ms: int | None = None) -> bool:
        """Claims hand out nothing from ``queue``; True if it changed."""
        return bool(await self._command(["pause", queue], timeout_ms))

    async def resume(self, queue: str, *, timeout_ms: int | None = None) -> bool:
        return bool(await self._command(["resume", queue], timeout_ms))

    async def configure(self, queue: str, *, timeout_ms: int | None = None, **settings: int) -> dict[str, int]:
        """Queue limits: concurrency, rate_max, rate_window_ms, group_concurrency, group_rate_max,
        group_rate_window_ms (0: no limit). The queue's settings after."""
        answer: dict[str, int] = await self._command(["queue_config", queue, *_options(**settings)], timeout_ms)
        return answer

    async def schedule(
        self,
        name: str,
        queue: str,
        payload: Any = None,
        *,
        cron: str | None = None,
        every_ms: int | None = None,
        start_ms: int | None = None,
        catch_up: bool | None = None,
        job: Mapping[str, Any] | None = None,
        timeout_ms: int | None = None,
    ) -> int:
        """Enqueue ``payload`` to ``queue`` at every slot (``cron``, UTC, or ``every_ms``); replaces
        a schedule of that name. ``job``: enqueue options of each job. The next slot (ms)."""
        opts = _options(cron=cron, every_ms=every_ms, start_ms=start_ms, catch_up=catch_up, job=None if job is None else dict(job))
        return _int(await self._command(["schedule", name, queue, encode(payload), *opts], timeout_ms), "schedule")

    async def unschedule(self, name: str, *, timeout_ms: int | None = None) -> bool:
        return bool(await self._command(["unschedule", name], timeout_ms))

    # ------------------------------------------------------------------ workers

    async def open_session(self, worker: str, ttl_ms: int, *, timeout_ms: int | None = None) -> WorkerSession:
        """A worker session: kept alive by :meth:`heartbeat` within ``ttl_ms`` (log time)."""
        answer = await self._command(["session_open", worker, ttl_ms], timeout_ms)
        return WorkerSession(answer["session"], answer["expires_at_ms"])

    async def heartbeat(
        self,
        session: str,
        jobs: Sequence[tuple[str, int]] = (),
        *,
        progress: Mapping[str, Any] | None = None,
        extend_ms: int | None = None,
        timeout_ms: int | None = None,
    ) -> Heartbeat:
        """Renew the session; for each ``(job, token)``: extend its lease to now + ``extend_ms`` and
        record ``progress[job]`` (any msgpack-able value) if given. ``WorkerSessionLost`` if it lapsed."""
        items: list[list[Any]] = []
        for job, token in jobs:
            extra = _options(extend_ms=extend_ms, progress=encode(progress[job], "progress") if progress and job in progress else None)
            items.append([job, token, *extra])
        answer = await self._command(["heartbeat", session, *_options(jobs=items or None)], timeout_ms)
        return Heartbeat(answer["expires_at_ms"], list(answer["cancel"]), list(answer["lost"]))

    async def close_session(self, session: str, *, timeout_ms: int | None = None) -> list[str]:
        """End the session: its jobs are given back unrun (attempts not counted); their ids."""
        return [str(i) for i in await self._command(["session_close", session], timeout_ms)]

    async def claim(
        self, session: str, queues: Sequence[str], n: int = 1, *, wait_ms: int = 0, timeout_ms: int | None = None
    ) -> Claim:
        """Up to ``n`` ready jobs of ``queues`` (priority, then FIFO), leased to ``session``.

        ``wait_ms``: a long poll. With nothing to take, the leader holds the claim (no log entry,
        no busy wait) until a job of ``queues`` becomes claimable, then proposes it; after
        ``wait_ms`` (cut to ``limits.job_claim_wait_ms_max`` and to half the node's request
        timeout) it answers what it finds, usually nothing. The call's deadline is ``timeout_ms``
        past the wait (default: the client's)."""
        if type(wait_ms) is not int or wait_ms < 0:
            raise InvalidArgument(f"wait_ms must be an int >= 0, not {wait_ms!r:.40}")
        wait_ms = min(wait_ms, limits.job_claim_wait_ms_max)
        command: list[Any] = ["claim", session, list(queues), n]
        if wait_ms:
            command.append({"wait_ms": wait_ms})
            after_ms: int = timeout_ms or getattr(self._client, "timeout_ms", None) or CLAIM_TIMEOUT_MS_MIN
            timeout_ms = wait_ms + after_ms
        answer = await self._command(command, timeout_ms)
        return Claim([_lease(v) for v in answer["jobs"]], list(answer["cancel"]))

    async def complete(self, job: str, token: int, result: Any = None, *, timeout_ms: int | None = None) -> str:
        """The job completed with ``result``; ``StaleLease`` if ``token`` is not its current lease."""
        return str(await self._command(["complete", job, token, {"result": encode(result, "result")}], timeout_ms))

    async def complete_batch(self, completions: Sequence[Completion], *, timeout_ms: int | None = None) -> list[str]:
        """Several jobs completed, in one command (one log entry, one round trip): for each, in
        order, "completed" or "stale_lease" (its token is not its current lease: refused alone,
        nothing changed for it). At most ``job_complete_batch_max`` jobs; keep the results' sum
        well under ``command_bytes_max`` (the request must fit a frame)."""
        if not completions:
            return []
        if len(completions) > limits.job_complete_batch_max:
            raise InvalidArgument(f"a batch holds at most job_complete_batch_max={limits.job_complete_batch_max} jobs")
        answer = await self._command(["complete_batch", [c.wire() for c in completions]], timeout_ms)
        if type(answer) is not list or len(answer) != len(completions) or any(a not in ("completed", StaleLease.code) for a in answer):
            raise ProtocolError(f"the jobs service answered complete_batch with {answer!r:.80}")
        return [str(a) for a in answer]

    async def fail(self, job: str, token: int, error: str = "", *, retry: bool = True, timeout_ms: int | None = None) -> str:
        """The attempt failed: retried after the backoff, or dead (no attempts left, or ``retry=False``).
        The job's state after."""
        error = error[: limits.job_error_chars_max]
        return str(await self._command(["fail", job, token, {"error": error, "retry": retry}], timeout_ms))

    async def release(self, job: str, token: int, *, timeout_ms: int | None = None) -> str:
        """Give the job back unrun (the attempt is not counted); its state after."""
        return str(await self._command(["release", job, token], timeout_ms))

    async def ack_cancel(self, job: str, token: int, *, timeout_ms: int | None = None) -> str:
        """The worker stopped a job whose cancellation was asked: it ends ``cancelled``."""
        return str(await self._command(["ack_cancel", job, token], timeout_ms))


class SyncJobsClient:
    """``c.jobs`` on a blocking client: the same methods as :class:`JobsClient`, blocking."""

    def __init__(self, inner: JobsClient, call: Callable[..., Any]) -> None:
        self._inner = inner
        self._call = call

    def enqueue(self, queue: str, payload: Any = None, **options: Any) -> str:
        """Blocking :meth:`JobsClient.enqueue`."""
        answer: str = self._call(self._inner.enqueue, queue, payload, **options)
        return answer

    def enqueue_batch(self, jobs: Iterable[NewJob], **options: Any) -> list[str]:
        """Blocking :meth:`JobsClient.enqueue_batch`."""
        answer: list[str] = self._call(self._inner.enqueue_batch, jobs, **options)
        return answer

    def cancel(self, job: str, **options: Any) -> str:
        """Blocking :meth:`JobsClient.cancel`."""
        answer: str = self._call(self._inner.cancel, job, **options)
        return answer

    def job(self, job: str, **options: Any) -> JobInfo | None:
        """Blocking :meth:`JobsClient.job`."""
        answer: JobInfo | None = self._call(self._inner.job, job, **options)
        return answer

    def result(self, job: str, **options: Any) -> JobResult | None:
        """Blocking :meth:`JobsClient.result`."""
        answer: JobResult | None = self._call(self._inner.result, job, **options)
        return answer

    def stats(self, queue: str, **options: Any) -> QueueStats:
        """Blocking :meth:`JobsClient.stats`."""
        answer: QueueStats = self._call(self._inner.stats, queue, **options)
        return answer

    def queues(self, **options: Any) -> QueuePage:
        """Blocking :meth:`JobsClient.queues`."""
        answer: QueuePage = self._call(self._inner.queues, **options)
        return answer

    def list_jobs(self, queue: str, **options: Any) -> JobPage:
        """Blocking :meth:`JobsClient.list_jobs`."""
        answer: JobPage = self._call(self._inner.list_jobs, queue, **options)
        return answer

    def dlq(self, queue: str, **options: Any) -> JobPage:
        """Blocking :meth:`JobsClient.dlq`."""
        answer: JobPage = self._call(self._inner.dlq, queue, **options)
        return answer

    def ready(self, queues: Sequence[str], **options: Any) -> ReadyInfo:
        """Blocking :meth:`JobsClient.ready`."""
        answer: ReadyInfo = self._call(self._inner.ready, queues, **options)
        return answer

    def schedules(self, **options: Any) -> list[ScheduleInfo]:
        """Blocking :meth:`JobsClient.schedules`."""
        answer: list[ScheduleInfo] = self._call(self._inner.schedules, **options)
        return answer

    def session(self, session: str, **options: Any) -> dict[str, Any] | None:
        """Blocking :meth:`JobsClient.session`."""
        answer: dict[str, Any] | None = self._call(self._inner.session, session, **options)
        return answer

    def retry(self, job: str, **options: Any) -> list[str]:
        """Blocking :meth:`JobsClient.retry`."""
        answer: list[str] = self._call(self._inner.retry, job, **options)
        return answer

    def dlq_requeue(self, queue: str, jobs: Sequence[str] | None = None, **options: Any) -> list[str]:
        """Blocking :meth:`JobsClient.dlq_requeue`."""
        answer: list[str] = self._call(self._inner.dlq_requeue, queue, jobs, **options)
        return answer

    def dlq_purge(self, queue: str, jobs: Sequence[str] | None = None, **options: Any) -> int:
        """Blocking :meth:`JobsClient.dlq_purge`."""
        answer: int = self._call(self._inner.dlq_purge, queue, jobs, **options)
        return answer

    def pause(self, queue: str, **options: Any) -> bool:
        """Blocking :meth:`JobsClient.pause`."""
        answer: bool = self._call(self._inner.pause, queue, **options)
        return answer

    def resume(self, queue: str, **options: Any) -> bool:
        """Blocking :meth:`JobsClient.resume`."""
        answer: bool = self._call(self._inner.resume, queue, **options)
        return answer

    def configure(self, queue: str, **options: Any) -> dict[str, int]:
        """Blocking :meth:`JobsClient.configure`."""
        answer: dict[str, int] = self._call(self._inner.configure, queue, **options)
        return answer

    def schedule(self, name: str, queue: str, payload: Any = None, **options: Any) -> int:
        """Blocking :meth:`JobsClient.schedule`."""
        answer: int = self._call(self._inner.schedule, name, queue, payload, **options)
        return answer

    def unschedule(self, name: str, **options: Any) -> bool:
        """Blocking :meth:`JobsClient.unschedule`."""
        answer: bool = self._call(self._inner.unschedule, name, **options)
        return answer

    def open_session(self, worker: str, ttl_ms: int, **options: Any) -> WorkerSession:
        """Blocking :meth:`JobsClient.open_session`."""
        answer: WorkerSession = self._call(self._inner.open_session, worker, ttl_ms, **options)
        return answer

    def heartbeat(self, session: str, jobs: Sequence[tuple[str, int]] = (), **options: Any) -> Heartbeat:
        """Blocking :meth:`JobsClient.heartbeat`."""
        answer: Heartbeat = self._call(self._inner.heartbeat, session, jobs, **options)
        return answer

    def close_session(self, session: str, **options: Any) -> list[str]:
        """Blocking :meth:`JobsClient.close_session`."""
        answer: list[str] = self._call(self._inner.close_session, session, **options)
        return answer

    def claim(self, session: str, queues: Sequence[str], n: int = 1, **options: Any) -> Claim:
        """Blocking :meth:`JobsClient.claim`."""
        answer: Claim = self._call(self._inner.claim, session, queues, n, **options)
        return answer

    def complete(self, job: str, token: int, result: Any = None, **options: Any) -> str:
        """Blocking :meth:`JobsClient.complete`."""
        answer: str = self._call(self._inner.complete, job, token, result, **options)
        return answer

    def complete_batch(self, completions: Sequence[Completion], **options: Any) -> list[str]:
        """Blocking :meth:`JobsClient.complete_batch`."""
        answer: list[str] = self._call(self._inner.complete_batch, completions, **options)
        return answer

    def fail(self, job: str, token: int, error: str = "", **options: Any) -> str:
        """Blocking :meth:`JobsClient.fail`."""
        answer: str = self._call(self._inner.fail, job, token, error, **options)
        return answer

    def release(self, job: str, token: int, **options: Any) -> str:
        """Blocking :meth:`JobsClient.release`."""
        answer: str = self._call(self._inner.release, job, token, **options)
        return answer

    def ack_cancel(self, job: str, token: int, **options: Any) -> str:
        """Blocking :meth:`JobsClient.ack_cancel`."""
        answer: str = self._call(self._inner.ack_cancel, job, token, **options)
        return answer


__all__ = [
    "Claim", "Completion", "Heartbeat", "JobInfo", "JobPage", "JobResult", "JobsClient", "Lease", "NewJob", "QueueStats",
    "ReadyInfo", "ScheduleInfo", "SyncJobsClient", "WorkerSession", "decode", "encode",
]  # fmt: skip
