"""The job queue: replicated queues, worker sessions, leases with fencing tokens, retries with backoff,
dead letters, deduplication, dependencies, concurrency and rate limits, cancellation and schedules.

Everything here is decided by the log: "now" is the leader timestamp carried by the entry
(``ApplyContext.timestamp_ms``), job and session ids are ``"<index>-<n>"`` (the entry's index and the
count of ids made earlier in that entry; sessions are prefixed ``s``), and a claim's **fencing
token** is the index of the entry that carried it, so a job's tokens only increase. Every replica
therefore holds the same jobs in the same states and answers alike. Payloads, results and progress
are ``bytes`` (a client encodes its values); names and ids are ``str``. Every command and query is
a list ``[op, required arguments..., {options}?]`` (see :mod:`trimaran.services.jobs.args`).

Commands (through the log, exactly-once; validated before anything changes, so a refused command
changes nothing):

==================  ============================================================  ==========================
op                  arguments / {options}                                         result / errors
==================  ============================================================  ==========================
``enqueue``         queue, payload / {priority, delay_ms | run_at_ms, unique_key,  job id; ``QueueFull``,
                    unique_window_ms, max_attempts, backoff, timeout_ms,           ``NotFound`` (a
                    expires_at_ms, depends_on, group, result_ttl_ms}               dependency), ``TooLarge``
``enqueue_batch``   [[queue, payload, {options}?], ...] (all or nothing)           [job id, ...]; as enqueue
``session_open``    worker, ttl_ms                                                 {"session",
                                                                                   "expires_at_ms"}
``heartbeat``       session / {jobs: [[job, token, {extend_ms, progress}?], ...]}  {"expires_at_ms",
                                                                                   "cancel": [job], "lost":
                                                                                   [job]};
                                                                                   ``WorkerSessionLost``
``session_close``   session                                                        [released job ids];
                                                                                   ``WorkerSessionLost``
``claim``           session, [queue, ...], n / {wait_ms (the node may hold it      {"jobs": [{"id", "queue",
                    until a job is claimable; ignored here)}                       "payload", "attempt",
                                                                                   "token", "lease_until_ms",
                                                                                   "priority", "group",
                                                                                   "progress"}], "cancel":
                                                                                   [job]};
                                                                                   ``WorkerSessionLost``
``complete``        job, token / {result}                                          "completed"; ``StaleLease``
``complete_batch``  [[job, token, {result}?], ...]: each a ``complete`` of its     ["completed" or
                    own, in order (a worker's completions in one command; a        "stale_lease", ...]
                    stale token refuses that job alone, the others complete)       one per job, in order
``fail``            job, token / {error, retry (default true)}                     the job's state after
                                                                                   ("delayed", "ready",
                                                                                   "dead", "cancelled");
                                                                                   ``StaleLease``
``release``         job, token (given back unrun: the attempt is not counted)      the state after;
                                                                                   ``StaleLease``
``ack_cancel``      job, token (the worker stopped the job)                        "cancelled"; ``StaleLease``
``cancel``          job                                                            "cancelled", "cancelling"
                                                                                   (running: its worker is
                                                                                   told), or the terminal
                                                                                   state it had; ``NotFound``
``dlq_requeue``     queue / {jobs: [job, ...]} (none: the oldest                   [job id, ...]; ``NotFound``
                    ``job_dlq_batch_max``)                                         (a job not dead there)
``dlq_purge``       queue / {jobs: [job, ...]}                                     count purged; ``NotFound``
``pause``           queue (claims hand out nothing from it)                        True if it changed
``resume``          queue                                                          True if it changed
``queue_config``    queue / {concurrency, rate_max, rate_window_ms,                the queue's settings
                    group_concurrency, group_rate_max, group_rate_window_ms}
                    (0 = no limit; a 0 window is 1 s)
``schedule``        name, queue, payload / {cron | every_ms, start_ms, catch_up,   next slot (ms);
                    job: {enqueue options but delay, run_at, depends_on,           ``TooLarge`` (too many
                    expires_at}} (replaces a schedule of that name)                schedules)
``unschedule``      name                                                           True if it existed
==================  ============================================================  ==========================

Queries (read-only, at the last applied entry's log time):

=============  ===================================  ===========================================================
op             arguments / {options}                result
=============  ===================================  ===========================================================
``job``        job                                  the job's fields (see :meth:`JobsService.job_view`) or None
``result``     job                                  {"state", "result", "error", "attempt", "finished_at_ms"}
                                                    or None (unknown, or purged after ``result_ttl_ms``)
``stats``      queue                                {state: count for each state, "held", "paused", settings}
``queues``     {start_after, limit}                 {"items": [{"queue", "paused", state counts, "held",
                                                    "lease_expiries_total", "dead_lettered_total"}, ...] in
                                                    name order, "next"}; the two totals count since this
                                                    replica built the queue (metrics, not replicated state)
``ready``      [queue, ...]                         {"ready": jobs claimable in unpaused queues (before
                                                    limits), "next_ms": the earliest delayed run time or end
                                                    of a full rate window holding ready jobs back, or None}:
                                                    what a long-polling claim waits on
``dlq``        queue / {start_after, limit}         {"items": [job view, ...] (oldest death first), "next"}
``list``       queue / {state, start_after, limit}  {"items": [job view, ...] (creation order), "next": the
                                                    ``start_after`` of the next page, or None at the end}
``schedules``  (none)                               [{"name", "queue", "cron", "every_ms", "catch_up",
                                                    "next_ms", "last_slot_ms", "fired", "skipped"}, ...]
``session``    session                              {"session", "worker", "ttl_ms", "expires_at_ms",
                                                    "jobs", "cancel"} or None
=============  ===================================  ===========================================================

Semantics:

- **States.** ``waiting`` (on dependencies), ``delayed`` (until ``run_at``, or a retry's backoff),
  ``ready``, ``running`` (leased to a worker session), and the ends: ``completed``, ``failed`` (a
  dependency ended without completing), ``dead`` (attempts exhausted or failed with
  ``retry=False``: kept in the queue's dead-letter list until requeued or purged, never dropped),
  ``cancelled``, ``expired`` (still waiting at ``expires_at_ms``). Ended jobs other than dead are
  kept ``result_ttl_ms`` (default the service's), then purged.
- **Claim order.** Ready jobs by priority (higher first), then by the log time they became ready,
  then by creation: FIFO within a priority. A delayed job becomes ready at the first entry whose
  time reaches its ``run_at`` (never before). A claim takes from several queues in that one order.
  Each claimed job gets ``attempt`` (+1) and ``token`` = the claim's log index. A job returned in
  the entry that claimed it waits for the next entry, so one token never names two leases.
- **Leases.** A claim belongs to a worker session (TTL ``ttl_ms``, renewed by each ``heartbeat`` of
  the session, one per worker, not per job). A job's own lease ends ``timeout_ms`` after its claim
  (a heartbeat's ``extend_ms`` pushes it to at least now + extend_ms). When the session lapses in
  log time, all its jobs are released at once; a lapsed lease or session counts as a failed attempt
  (a job that kills its workers does not loop forever) and the job is ready again at once, or dead
  if it had no attempts left. ``session_close`` and ``release`` give jobs back without counting.
  ``complete``/``fail``/``release``/``ack_cancel`` with a token other than the job's current lease
  raise ``StaleLease`` and change nothing.
- **Retries.** ``fail`` with ``retry`` true and attempts left delays the job by its backoff
  (:mod:`trimaran.services.jobs.backoff`: fixed or exponential, capped, jitter from the job id);
  otherwise the job is dead. ``max_attempts`` defaults to ``limits.job_attempts_default`` (20).
  ``dlq_requeue`` makes a dead job ready with its attempts reset.
- **Uniqueness.** At most one job per (queue, ``unique_key``) is live (waiting, delayed, ready or
  running); enqueuing another returns the live one's id and enqueues nothing. With
  ``unique_window_ms`` the key stays taken that long after the job completed.
- **Dependencies.** ``depends_on`` names existing jobs (else ``NotFound``); the job waits until all
  completed; if one ends any other way (failed, dead, cancelled, expired) the job ends ``failed``.
- **Limits.** Per queue: ``concurrency`` (jobs running at once) and ``rate_max`` starts per fixed
  window of ``rate_window_ms`` log time (windows aligned to multiples of it); per ``group`` of a
  queue, the same with ``group_*`` settings, each group counted apart (fairness between tenants).
  A paused queue hands out nothing.
- **Cancellation** is durable: a waiting job ends ``cancelled`` at once; a running one is marked,
  listed in its session's heartbeat and claim answers, and ends ``cancelled`` when its worker
  confirms (``ack_cancel``), fails, releases it, or loses its lease (a ``complete`` still wins).
- **Schedules** fire from log time in :meth:`JobsService.on_time`, so each slot fires once on every
  replica whatever the leader changes: ``every_ms`` slots are ``start_ms + k*every_ms`` (default
  start: creation time + every_ms); ``cron`` slots are croniter's, in UTC. A schedule that missed
  slots (log time jumped) fires the latest one only, or with ``catch_up`` every missed slot (at most
  ``limits.job_schedule_catch_up_slots_max`` per entry; the rest in the following entries). A slot
  whose queue is full is skipped and counted.
- **Capacity.** A queue holds at most ``queue_jobs_max`` jobs, counting every job it holds (waiting,
  running, dead, and ended ones keeping their result); an enqueue over it is ``QueueFull`` and
  enqueues nothing.
- **Snapshots** carry every job, queue, session, schedule and unique key as plain lists in their
  insertion order; the indexes are rebuilt from them, so snapshot -> restore -> snapshot is
  byte-identical. Configuration (constructor arguments) is not in the snapshot: every replica must
  be built alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from itertools import chain
from typing import Any, Callable

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from trimaran import limits
from trimaran.errors import ConfigError, NotFound, QueueFull, StaleLease, TooLarge, WorkerSessionLost
from trimaran.protocols.service import ApplyContext
from trimaran.services.jobs import args, cron
from trimaran.services.jobs.backoff import retry_delay_ms

SNAPSHOT_FORMAT = 1
#: Items per list in a snapshot (the Replica's msgpack decoder refuses longer arrays): every list
#: that grows with the number of jobs or groups is cut into chunks of this many.
SNAPSHOT_CHUNK_ITEMS = 65_536

WAITING, DELAYED, READY, RUNNING = "waiting", "delayed", "ready", "running"
COMPLETED, FAILED, DEAD, CANCELLED, EXPIRED = "completed", "failed", "dead", "cancelled", "expired"
STATES = (WAITING, DELAYED, READY, RUNNING, COMPLETED, FAILED, DEAD, CANCELLED, EXPIRED)
assert STATES == args.JOB_STATES
#: Not started and not ended: ``expires_at_ms`` applies, ``cancel`` ends them at once.
PENDING = frozenset((WAITING, DELAYED, READY))
LIVE = PENDING | {RUNNING}
#: Ended and purged after their result TTL (dead jobs stay until requeued or purged).
ENDED = frozenset((COMPLETED, FAILED, CANCELLED, EXPIRED))

# Timer kinds, in the order timers due at one log time fire.
T_RUN, T_LEASE, T_SESSION, T_EXPIRE, T_UNIQUE, T_PURGE, T_SCHEDULE = range(7)
#: ``Queue.blocked`` value of a group at its concurrency limit (otherwise: the end of its rate window).
BLOCKED_CONCURRENCY = -1
#: Larger than any allowance (no limit).
UNLIMITED = 1 << 62

#: Planted bugs for the simulator's mutation tests; each breaks a promise of the module docstring.
#: Never on in a node.
JOBS_MUTANTS = {
    "lease_local_clock": "leases and sessions lapse by each replica's own clock instead of the log's timestamps",
    "schedule_local_clock": "schedules fire by each replica's own clock instead of the log's timestamps",
    "ack_without_fencing": "complete/fail/release accept any token of a running job, not only its current lease",
    "claim_ignores_priority": "claims take ready jobs in FIFO order whatever their priority",
    "retry_forgets_attempts": "a retried job's attempt count starts again, so it never dead-letters",
    "dead_letter_dropped": "a job out of attempts is dropped instead of kept in the dead-letter list",
}


@dataclass(slots=True)
class Job:
    """One job; the field order is the snapshot's row order."""

    id: str
    index: int
    seq: int
    queue: str
    payload: bytes
    priority: int
    group: str
    unique_key: str | None
    unique_window_ms: int
    max_attempts: int
    backoff: args.Backoff
    timeout_ms: int
    expires_at_ms: int
    result_ttl_ms: int
    depends_on: tuple[str, ...]
    created_at_ms: int
    #: "" until attached to its first state.
    state: str = ""
    #: When it became (or becomes) ready: the FIFO key among equal priorities.
    run_at_ms: int = 0
    attempt: int = 0
    token: int = 0
    session: str | None = None
    lease_until_ms: int = 0
    started_at_ms: int = 0
    finished_at_ms: int = 0
    purge_at_ms: int = 0
    deps_pending: int = 0
    cancel_requested: bool = False
    progress: bytes | None = None
    result: bytes | None = None
    error: str | None = None


JOB_FIELDS = tuple(f.name for f in fields(Job))


@dataclass(slots=True)
class Session:
    id: str
    worker: str
    ttl_ms: int
    expires_at_ms: int
    #: Running job ids in claim order (a dict: ordered, O(1) removal).
    jobs: dict[str, None] = field(default_factory=dict)
    #: Those of its jobs whose cancellation was asked.
    cancel: dict[str, None] = field(default_factory=dict)


@dataclass(slots=True)
class Schedule:
    name: str
    cron: str | None
    every_ms: int | None
    anchor_ms: int
    catch_up: bool
    spec: args.JobSpec
    next_ms: int
    last_slot_ms: int = -1
    fired: int = 0
    skipped: int = 0


SETTINGS = args.QUEUE_SETTINGS


class Queue:
    """One queue's settings, counters and indexes (rebuilt from the jobs on restore)."""

    __slots__ = (
        "name", "paused", *SETTINGS, "window_start_ms", "window_count", "group_windows", "ready", "heads",
        "head_of", "blocked", "rate_blocked", "running", "running_by_group", "delayed", "dead", "counts", "jobs",
        "lease_expiries", "dead_lettered",
    )  # fmt: skip

    def __init__(self, name: str) -> None:
        self.name = name
        self.paused = False
        # The settings (args.QUEUE_SETTINGS; 0 = no limit).
        self.concurrency = 0
        self.rate_max = 0
        self.rate_window_ms = 0
        self.group_concurrency = 0
        self.group_rate_max = 0
        self.group_rate_window_ms = 0
        self.window_start_ms = 0
        self.window_count = 0
        #: group -> [window_start_ms, starts in it], for group rate limits.
        self.group_windows: dict[str, list[int]] = {}
        #: group ("" = none) -> its ready jobs' keys (see ``JobsService._ready_key``).
        self.ready: dict[str, SortedList] = {}
        #: (head key, group) of every group with ready jobs that is not blocked: a claim's next pick.
        self.heads = SortedList()
        self.head_of: dict[str, tuple[Any, ...]] = {}
        self.blocked: dict[str, int] = {}
        self.rate_blocked = SortedList()  # (window end, group)
        self.running = 0
        self.running_by_group: dict[str, int] = {}
        self.delayed = SortedList()  # (run_at_ms, index, seq)
        self.dead = SortedList()  # (finished_at_ms, index, seq, id): the dead-letter list
        self.counts = dict.fromkeys(STATES, 0)
        #: (index, seq, id) of every job the queue holds, in creation order: its length is what
        #: queue_jobs_max bounds, and the ``list`` query pages through it.
        self.jobs = SortedList()
        # Counted since this replica built the queue (a start, a restore): for metrics only, not
        # replicated state (kept out of snapshots and of every answer but the ``queues`` query's).
        #: Leases that ended without an outcome: a job's ``timeout_ms`` or its session's lapse.
        self.lease_expiries = 0
        #: Jobs that went to the dead-letter list.
        self.dead_lettered = 0

    def settings(self) -> dict[str, int]:
        return {key: getattr(self, key) for key in SETTINGS}


class JobsService:
    """The ``jobs`` service; see the module docstring for commands, queries and semantics."""

    name = "jobs"

    def __init__(
        self,
        default_timeout_ms: int = 300_000,
        default_result_ttl_ms: int = 24 * 3_600_000,
        queue_jobs_max: int = limits.job_queue_jobs_max,
        mutants: frozenset[str] = frozenset(),
        local_clock_ms: Callable[[], int] | None = None,
    ) -> None:
        """``mutants`` (names from :data:`JOBS_MUTANTS`) and ``local_clock_ms`` (the replica's own
        clock, which only the ``*_local_clock`` mutants read) exist for the simulator alone."""
        unknown = sorted(mutants - JOBS_MUTANTS.keys())
        clocked = frozenset(k for k in mutants if k.endswith("_local_clock"))
        if unknown or (bool(clocked) != (local_clock_ms is not None)):
            raise ConfigError(f"jobs mutants {unknown or sorted(mutants)}: unknown, or a clock without a *_local_clock mutant")
        if not 1 <= default_timeout_ms <= limits.job_timeout_ms_max:
            raise ConfigError(f"default_timeout_ms must be in [1, {limits.job_timeout_ms_max}]")
        if not 0 <= default_result_ttl_ms <= limits.job_result_ttl_ms_max:
            raise ConfigError(f"default_result_ttl_ms must be in [0, {limits.job_result_ttl_ms_max}]")
        if not limits.job_enqueue_batch_max <= queue_jobs_max <= limits.job_queue_jobs_max:
            raise ConfigError(f"queue_jobs_max must be in [{limits.job_enqueue_batch_max}, {limits.job_queue_jobs_max}]")
        self.default_timeout_ms = default_timeout_ms
        self.default_result_ttl_ms = default_result_ttl_ms
        self.queue_jobs_max = queue_jobs_max
        self._local_clock_ms = local_clock_ms
        #: Timer kinds the ``*_local_clock`` mutants fire by the replica's own clock.
        self._local_kinds = frozenset(
            ([T_LEASE, T_SESSION] if "lease_local_clock" in clocked else []) + ([T_SCHEDULE] if "schedule_local_clock" in clocked else [])
        )
        self._no_fencing = "ack_without_fencing" in mutants
        self._ignore_priority = "claim_ignores_priority" in mutants
        self._forget_attempts = "retry_forgets_attempts" in mutants
        self._drop_dead = "dead_letter_dropped" in mutants
        self._reset()
        self._commands: dict[type, Callable[[Any, ApplyContext], Any]] = {
            args.EnqueueCmd: self._enqueue,
            args.ClaimCmd: self._claim,
            args.SessionOpenCmd: self._session_open,
            args.HeartbeatCmd: self._heartbeat,
            args.SessionCloseCmd: self._session_close,
            args.CompleteCmd: self._complete,
            args.CompleteBatchCmd: self._complete_batch,
            args.FailCmd: self._fail,
            args.ReleaseCmd: self._release,
            args.AckCancelCmd: self._ack_cancel,
            args.CancelCmd: self._cancel,
            args.DlqCmd: self._dlq,
            args.PauseCmd: self._pause,
            args.QueueConfigCmd: self._queue_config,
            args.ScheduleCmd: self._schedule,
            args.UnscheduleCmd: self._unschedule,
        }
        self._queries: dict[type, Callable[[Any, int], Any]] = {
            args.JobQuery: self._job_query,
            args.ResultQuery: self._result_query,
            args.StatsQuery: self._stats,
            args.QueuesQuery: self._queues_query,
            args.ReadyQuery: self._ready_query,
            args.DlqQuery: self._dlq_query,
            args.ListQuery: self._list_query,
            args.SchedulesQuery: self._schedules_query,
            args.SessionQuery: self._session_query,
        }

    def _reset(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._queues: dict[str, Queue] = {}
        self._sessions: dict[str, Session] = {}
        self._schedules: dict[str, Schedule] = {}
        #: (queue, unique_key) -> the job holding it.
        self._unique: dict[tuple[str, str], str] = {}
        #: job id -> the ids of jobs waiting on it (possibly ended since; skipped then).
        self._dependents: dict[str, list[str]] = {}
        #: (due log time ms, kind, id): every decision on_time makes, in the order it makes them.
        self._timers = SortedList()
        # Ids made in the entry of index _id_index so far.
        self._id_index = 0
        self._id_seq = 0
        # The last entry on_time ran for (not state: on_time is idempotent for one entry).
        self._time_index = 0

    # ------------------------------------------------------------------ the Service protocol

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        """Apply one command at log time ``ctx.timestamp_ms``; raise a ``TrimaranError`` to refuse."""
        cmd = args.parse_command(command)
        if ctx.index > self._time_index:
            self.on_time(ctx)  # a caller that skipped on_time for this entry still sees due timers fired
        return self._commands[type(cmd)](cmd, ctx)

    def on_time(self, ctx: ApplyContext) -> None:
        """Fire every timer due at ``ctx.timestamp_ms``, in (time, kind, id) order."""
        timers = self._timers
        self._time_index = max(self._time_index, ctx.index)
        if self._local_clock_ms is not None:
            self._lapse_by_local_clock(ctx)
        if not timers or timers[0][0] > ctx.timestamp_ms:
            return
        deferred: list[tuple[int, int, str]] = []
        while timers and timers[0][0] <= ctx.timestamp_ms:
            entry = timers[0]
            self._fire(entry, ctx)
            assert not timers or timers[0] != entry, "a timer's handler removes it"
            if entry[1] == T_SCHEDULE:
                schedule = self._schedules[entry[2]]
                if schedule.next_ms <= ctx.timestamp_ms:  # more catch-up slots: in the next entry
                    deferred.append((schedule.next_ms, T_SCHEDULE, schedule.name))
                    timers.remove(deferred[-1])
        for entry in deferred:
            timers.add(entry)

    def next_deadline_ms(self) -> int | None:
        return self._timers[0][0] if self._timers else None

    def query(self, query: Any, ctx: ApplyContext) -> Any:
        """Answer a read-only query at log time ``ctx.timestamp_ms``; never changes state."""
        q = args.parse_query(query)
        return self._queries[type(q)](q, ctx.timestamp_ms)

    # ------------------------------------------------------------------ timers

    def _fire(self, entry: tuple[int, int, str], ctx: ApplyContext) -> None:
        _, kind, name = entry
        if kind == T_SESSION:
            self._end_session(self._sessions[name], ctx, lapsed=True)
            return
        if kind == T_SCHEDULE:
            self._fire_schedule(self._schedules[name], ctx)
            return
        job = self._jobs[name]
        if kind == T_RUN:
            self._detach(job)
            self._attach(job, READY)
        elif kind == T_LEASE:
            self._detach(job)
            self._queues[job.queue].lease_expiries += 1
            self._attempt_ended(job, ctx, "lease timed out", retry=True, backoff=False)
        elif kind == T_EXPIRE:
            self._detach(job)
            job.error = "expired before it ran"
            self._end(job, EXPIRED, ctx)
        elif kind == T_UNIQUE:
            self._timers.remove(entry)
            key = (job.queue, job.unique_key or "")
            if self._unique.get(key) == job.id:
                del self._unique[key]
        else:
            assert kind == T_PURGE
            self._purge(job)

    def _lapse_by_local_clock(self, ctx: ApplyContext) -> None:
        """The ``*_local_clock`` mutants: leases and sessions lapse, or schedules fire, by this
        replica's own clock (a schedule then also reads that clock as "now")."""
        assert self._local_clock_ms is not None
        local_ms = self._local_clock_ms()
        due = [e for e in self._timers.irange(None, (local_ms + 1,), (True, False)) if e[1] in self._local_kinds]
        for entry in due:
            if entry in self._timers:  # a session's lapse already removed its jobs' leases
                self._fire(entry, ctx if entry[1] != T_SCHEDULE else ApplyContext(ctx.index, max(local_ms, ctx.timestamp_ms)))

    # ------------------------------------------------------------------ state changes

    def _new_id(self, ctx: ApplyContext) -> str:
        if ctx.index != self._id_index:
            assert ctx.index > self._id_index, "log indexes only increase"
            self._id_index, self._id_seq = ctx.index, 0
        self._id_seq += 1
        return f"{ctx.index}-{self._id_seq - 1}"

    def _ready_key(self, job: Job) -> tuple[int, int, int, int, str]:
        priority = 0 if self._ignore_priority else -job.priority
        return (priority, job.run_at_ms, job.index, job.seq, job.id)

    @staticmethod
    def _dead_key(job: Job) -> tuple[int, int, int, str]:
        return (job.finished_at_ms, job.index, job.seq, job.id)

    def _detach(self, job: Job) -> None:
        """Take ``job`` out of the indexes of its state (its fields still say where it was)."""
        q = self._queues[job.queue]
        state = job.state
        q.counts[state] -= 1
        if state == READY:
            key = self._ready_key(job)
            head = q.head_of.get(job.group)
            if head == key:  # the group's first job, as every claimed one is: no search
                taken = q.ready[job.group].pop(0)
                assert taken == key
            else:
                q.ready[job.group].remove(key)
            if head is None or head == key:  # (another job left: the group's head stays)
                self._refresh_head(q, job.group)
        elif state == DELAYED:
            self._timers.remove((job.run_at_ms, T_RUN, job.id))
            q.delayed.remove((job.run_at_ms, job.index, job.seq))
        elif state == RUNNING:
            self._timers.remove((job.lease_until_ms, T_LEASE, job.id))
            assert job.session is not None
            session = self._sessions[job.session]
            del session.jobs[job.id]
            session.cancel.pop(job.id, None)
            job.session = None
            self._running_dec(q, job.group)
        elif state == DEAD:
            q.dead.remove(self._dead_key(job))
        elif state in ENDED:
            self._timers.remove((job.purge_at_ms, T_PURGE, job.id))
        if job.expires_at_ms and state in PENDING:  # (most jobs never expire: checked first)
            self._timers.remove((job.expires_at_ms, T_EXPIRE, job.id))
        job.state = ""

    def _attach(self, job: Job, state: str) -> None:
        """Put a detached ``job`` in ``state`` and its indexes (from its fields)."""
        assert job.state == ""
        q = self._queues[job.queue]
        job.state = state
        q.counts[state] += 1
        if state == READY:
            group = q.ready.get(job.group)
            if group is None:
                group = q.ready[job.group] = SortedList()
            key = self._ready_key(job)
            group.add(key)
            head = q.head_of.get(job.group)
            if head is None or key < head:  # (a job behind the head, as most are: the head stays)
                self._refresh_head(q, job.group)
        elif state == DELAYED:
            self._timers.add((job.run_at_ms, T_RUN, job.id))
            q.delayed.add((job.run_at_ms, job.index, job.seq))
        elif state == RUNNING:
            self._timers.add((job.lease_until_ms, T_LEASE, job.id))
            assert job.session is not None
            self._sessions[job.session].jobs[job.id] = None
            self._running_inc(q, job.group)
        elif state == DEAD:
            q.dead.add(self._dead_key(job))
        elif state in ENDED:
            self._timers.add((job.purge_at_ms, T_PURGE, job.id))
        if job.expires_at_ms and state in PENDING:  # (most jobs never expire: checked first)
            self._timers.add((job.expires_at_ms, T_EXPIRE, job.id))

    def _refresh_head(self, q: Queue, group: str) -> None:
        """Make ``q.heads`` hold ``group``'s first ready job, unless it has none or is blocked."""
        old = q.head_of.pop(group, None)
        if old is not None:
            q.heads.remove((old, group))
        jobs = q.ready.get(group)
        if jobs is not None and not jobs:
            del q.ready[group]
        elif jobs is not None and group not in q.blocked:
            head = jobs[0]
            q.heads.add((head, group))
            q.head_of[group] = head

    def _running_inc(self, q: Queue, group: str) -> None:
        q.running += 1
        if group:
            n = q.running_by_group[group] = q.running_by_group.get(group, 0) + 1
            if q.group_concurrency and n >= q.group_concurrency and group not in q.blocked:
                q.blocked[group] = BLOCKED_CONCURRENCY
                self._refresh_head(q, group)

    def _running_dec(self, q: Queue, group: str) -> None:
        q.running -= 1
        if group:
            n = q.running_by_group[group] - 1
            if n:
                q.running_by_group[group] = n
            else:
                del q.running_by_group[group]
            if q.blocked.get(group) == BLOCKED_CONCURRENCY and (not q.group_concurrency or n < q.group_concurrency):
                del q.blocked[group]
                self._refresh_head(q, group)

    def _make_available(self, job: Job, run_at_ms: int, ctx: ApplyContext) -> None:
        """Attach a detached, unended job as waiting, delayed or ready. A job returned in the entry
        that claimed it waits for the next entry, so its next lease gets a greater token."""
        job.run_at_ms = run_at_ms
        if job.deps_pending:
            self._attach(job, WAITING)
        elif run_at_ms > ctx.timestamp_ms or job.token == ctx.index:
            self._attach(job, DELAYED)
        else:
            self._attach(job, READY)

    def _attempt_ended(self, job: Job, ctx: ApplyContext, error: str, retry: bool, backoff: bool) -> None:
        """A detached job's attempt failed (or its lease lapsed): cancelled, dead, or retried."""
        job.error = error
        if job.cancel_requested:
            self._end(job, CANCELLED, ctx)
        elif not retry or job.attempt >= job.max_attempts:
            self._end(job, DEAD, ctx)
        else:
            delay_ms = retry_delay_ms(job.backoff, job.id, job.attempt) if backoff else 0
            if self._forget_attempts:
                job.attempt = 0
            self._make_available(job, ctx.timestamp_ms + delay_ms, ctx)

    def _end(self, job: Job, state: str, ctx: ApplyContext) -> None:
        """End a detached job in ``state``; settle the jobs waiting on it (and theirs, and so on)."""
        stack = [job]
        self._end_one(job, state, ctx)
        while stack:
            dep = stack.pop()
            for waiter_id in self._dependents.pop(dep.id, ()):
                waiter = self._jobs.get(waiter_id)
                if waiter is None or waiter.state != WAITING:
                    continue  # ended (cancelled, expired) before its dependency did
                if dep.state == COMPLETED:
                    waiter.deps_pending -= 1
                    if not waiter.deps_pending:
                        self._detach(waiter)
                        self._make_available(waiter, max(waiter.run_at_ms, ctx.timestamp_ms), ctx)
                else:
                    self._detach(waiter)
                    waiter.deps_pending = 0
                    waiter.error = f"dependency {dep.id} ended {dep.state or DEAD}"
                    self._end_one(waiter, FAILED, ctx)
                    stack.append(waiter)

    def _end_one(self, job: Job, state: str, ctx: ApplyContext) -> None:
        now = ctx.timestamp_ms
        job.finished_at_ms = now
        job.cancel_requested = False
        if state == DEAD:
            self._queues[job.queue].dead_lettered += 1
        keep_unique_ms = self._unique_end(job, state, now)
        if state == DEAD and self._drop_dead:
            self._forget(job)  # the dead_letter_dropped mutant
            return
        job.purge_at_ms = now + max(job.result_ttl_ms, keep_unique_ms) if state != DEAD else 0
        self._attach(job, state)

    def _unique_end(self, job: Job, state: str, now: int) -> int:
        """Free the job's unique key, or (completed, with a window) keep it that long: the ms kept."""
        if job.unique_key is None:
            return 0
        key = (job.queue, job.unique_key)
        if self._unique.get(key) != job.id:
            return 0
        if state == COMPLETED and job.unique_window_ms:
            self._timers.add((now + job.unique_window_ms, T_UNIQUE, job.id))
            return job.unique_window_ms
        del self._unique[key]
        return 0

    def _purge(self, job: Job) -> None:
        self._detach(job)
        self._forget(job)

    def _forget(self, job: Job) -> None:
        """Drop a detached job for good."""
        self._queues[job.queue].jobs.remove((job.index, job.seq, job.id))
        del self._jobs[job.id]
        self._dependents.pop(job.id, None)

    def _queue(self, name: str) -> Queue:
        q = self._queues.get(name)
        if q is None:
            if len(self._queues) >= limits.job_queues_max:
                raise TooLarge(f"the service holds job_queues_max={limits.job_queues_max} queues")
            q = self._queues[name] = Queue(name)
        return q

    def _job(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}", kind="job", id=job_id)
        return job

    def _lease(self, job_id: str, token: int) -> Job:
        """The running job ``job_id`` if ``token`` is its current lease, else ``StaleLease``."""
        job = self._jobs.get(job_id)
        if job is None or job.state != RUNNING or (job.token != token and not self._no_fencing):
            raise StaleLease(
                f"token {token} is not the current lease of job {job_id}; the job was re-leased or ended",
                job=job_id,
                token=token,
                state=None if job is None else job.state,
            )
        return job

    def _live_session(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise WorkerSessionLost(
                f"worker session {session_id} lapsed or was closed and its jobs were released; open a new one",
                session=session_id,
            )
        return session

    # ------------------------------------------------------------------ enqueue

    def _enqueue(self, c: args.EnqueueCmd, ctx: ApplyContext) -> str | list[str]:
        # Decide everything before changing anything: duplicates, dependencies, room.
        plan: list[str | int | None] = []  # an existing id, an earlier batch position, or new
        first_of_key: dict[tuple[str, str], int] = {}
        new_jobs: dict[str, int] = {}  # queue -> jobs to add (batch order: deterministic)
        for i, spec in enumerate(c.specs):
            if spec.unique_key is not None:
                key = (spec.queue, spec.unique_key)
                if key in self._unique:
                    plan.append(self._unique[key])
                    continue
                if key in first_of_key:
                    plan.append(first_of_key[key])
                    continue
                first_of_key[key] = i
            for dep in spec.depends_on:
                self._job(dep)
            new_jobs[spec.queue] = new_jobs.get(spec.queue, 0) + 1
            plan.append(None)
        self._check_room(new_jobs)
        ids: list[str] = []
        for spec, step in zip(c.specs, plan):
            if step is None:
                ids.append(self._create(spec, ctx))
            else:
                ids.append(ids[step] if isinstance(step, int) else step)
        return ids if c.batch else ids[0]

    def _check_room(self, new_jobs: dict[str, int]) -> None:
        new_queues = sum(1 for name in new_jobs if name not in self._queues)
        if new_queues and len(self._queues) + new_queues > limits.job_queues_max:
            raise TooLarge(f"the service holds job_queues_max={limits.job_queues_max} queues")
        for name, n in new_jobs.items():
            q = self._queues.get(name)
            held = len(q.jobs) if q is not None else 0
            if held + n > self.queue_jobs_max:
                raise QueueFull(
                    f"queue {name} holds {held} jobs; {n} more would pass queue_jobs_max={self.queue_jobs_max}",
                    queue=name,
                    held=held,
                    queue_jobs_max=self.queue_jobs_max,
                )

    def _create(self, spec: args.JobSpec, ctx: ApplyContext) -> str:
        """Create one job whose room, uniqueness and dependencies were checked."""
        now = ctx.timestamp_ms
        q = self._queue(spec.queue)
        job_id = self._new_id(ctx)
        index, seq = ctx.index, self._id_seq - 1
        job = Job(
            id=job_id, index=index, seq=seq, queue=spec.queue, payload=spec.payload, priority=spec.priority,
            group=spec.group, unique_key=spec.unique_key, unique_window_ms=spec.unique_window_ms,
            max_attempts=spec.max_attempts, backoff=spec.backoff,
            timeout_ms=spec.timeout_ms if spec.timeout_ms is not None else self.default_timeout_ms,
            expires_at_ms=spec.expires_at_ms,
            result_ttl_ms=spec.result_ttl_ms if spec.result_ttl_ms is not None else self.default_result_ttl_ms,
            depends_on=spec.depends_on, created_at_ms=now,
        )  # fmt: skip
        self._jobs[job_id] = job
        q.jobs.add((index, seq, job_id))
        if spec.unique_key is not None:
            self._unique[(spec.queue, spec.unique_key)] = job_id
        run_at_ms = spec.run_at_ms if spec.run_at_ms is not None else now + (spec.delay_ms or 0)
        job.run_at_ms = max(run_at_ms, now)
        pending: list[str] = []
        for dep_id in spec.depends_on:
            dep = self._jobs[dep_id]
            if dep.state == COMPLETED:
                continue
            if dep.state not in LIVE:
                job.error = f"dependency {dep_id} ended {dep.state}"
                self._end(job, FAILED, ctx)
                return job_id
            pending.append(dep_id)
        if job.expires_at_ms and job.expires_at_ms <= now:
            job.error = "expired before it ran"
            self._end(job, EXPIRED, ctx)
            return job_id
        for dep_id in pending:
            self._dependents.setdefault(dep_id, []).append(job_id)
        job.deps_pending = len(pending)
        self._make_available(job, job.run_at_ms, ctx)
        return job_id

    # ------------------------------------------------------------------ sessions and claims

    def _session_open(self, c: args.SessionOpenCmd, ctx: ApplyContext) -> dict[str, Any]:
        if len(self._sessions) >= limits.job_sessions_max:
            raise TooLarge(f"the service holds job_sessions_max={limits.job_sessions_max} worker sessions")
        session_id = "s" + self._new_id(ctx)
        session = Session(session_id, c.worker, c.ttl_ms, ctx.timestamp_ms + c.ttl_ms)
        self._sessions[session_id] = session
        self._timers.add((session.expires_at_ms, T_SESSION, session_id))
        return {"session": session_id, "expires_at_ms": session.expires_at_ms}

    def _heartbeat(self, c: args.HeartbeatCmd, ctx: ApplyContext) -> dict[str, Any]:
        session = self._live_session(c.session)
        now = ctx.timestamp_ms
        self._timers.remove((session.expires_at_ms, T_SESSION, session.id))
        session.expires_at_ms = now + session.ttl_ms
        self._timers.add((session.expires_at_ms, T_SESSION, session.id))
        lost: list[str] = []
        for beat in c.jobs:
            job = self._jobs.get(beat.job)
            if job is None or job.state != RUNNING or job.token != beat.token or job.session != session.id:
                lost.append(beat.job)
                continue
            if beat.extend_ms is not None and now + beat.extend_ms > job.lease_until_ms:
                self._timers.remove((job.lease_until_ms, T_LEASE, job.id))
                job.lease_until_ms = now + beat.extend_ms
                self._timers.add((job.lease_until_ms, T_LEASE, job.id))
            if beat.progress is not None:
                job.progress = beat.progress
        return {"expires_at_ms": session.expires_at_ms, "cancel": list(session.cancel), "lost": lost}

    def _session_close(self, c: args.SessionCloseCmd, ctx: ApplyContext) -> list[str]:
        return self._end_session(self._live_session(c.session), ctx, lapsed=False)

    def _end_session(self, session: Session, ctx: ApplyContext, lapsed: bool) -> list[str]:
        """Release all the session's jobs at once (a lapse counts each as a failed attempt)."""
        released = list(session.jobs)
        for job_id in released:
            job = self._jobs[job_id]
            self._detach(job)
            if lapsed:
                self._queues[job.queue].lease_expiries += 1
                self._attempt_ended(job, ctx, "worker session lapsed", retry=True, backoff=False)
            else:
                self._give_back(job, ctx)
        self._timers.remove((session.expires_at_ms, T_SESSION, session.id))
        del self._sessions[session.id]
        return released

    def _give_back(self, job: Job, ctx: ApplyContext) -> None:
        """A detached running job returned unrun: its attempt is not counted."""
        if job.cancel_requested:
            self._end(job, CANCELLED, ctx)
            return
        job.attempt -= 1
        self._make_available(job, ctx.timestamp_ms, ctx)

    def _claim(self, c: args.ClaimCmd, ctx: ApplyContext) -> dict[str, Any]:
        session = self._live_session(c.session)
        now = ctx.timestamp_ms
        candidates: list[list[Any]] = []  # [queue, starts it still allows]
        for name in c.queues:
            q = self._queues.get(name)
            if q is None or q.paused:
                continue
            self._unblock_rated(q, now)
            self._prune_group_windows(q, now)
            allowance = self._allowance(q, now)
            if allowance > 0:
                candidates.append([q, allowance])
        room = min(c.n, limits.job_session_jobs_max - len(session.jobs))
        out: list[dict[str, Any]] = []
        payload_bytes = 0
        while len(out) < room and payload_bytes < limits.job_claim_payload_bytes_max:
            best: list[Any] | None = None
            for candidate in candidates:
                heads = candidate[0].heads
                if candidate[1] > 0 and heads and (best is None or heads[0] < best[0].heads[0]):
                    best = candidate
            if best is None:
                break
            q = best[0]
            key, group = q.heads[0]
            if group and q.group_rate_max and not self._group_rate_allows(q, group, now):
                continue  # the group is blocked now; the next head comes up
            job = self._jobs[key[-1]]
            assert job.token < ctx.index, "a job is leased at most once per entry"
            self._start(job, session, ctx)
            best[1] -= 1
            if q.rate_max:
                q.window_count += 1
            if group and q.group_rate_max:
                q.group_windows[group][1] += 1
            out.append(self._lease_view(job))
            payload_bytes += len(job.payload)
        return {"jobs": out, "cancel": list(session.cancel)}

    def _start(self, job: Job, session: Session, ctx: ApplyContext) -> None:
        self._detach(job)
        job.attempt += 1
        job.token = ctx.index
        job.session = session.id
        job.started_at_ms = ctx.timestamp_ms
        job.lease_until_ms = ctx.timestamp_ms + job.timeout_ms
        self._attach(job, RUNNING)

    @staticmethod
    def _lease_view(job: Job) -> dict[str, Any]:
        return {
            "id": job.id, "queue": job.queue, "payload": job.payload, "attempt": job.attempt, "token": job.token,
            "lease_until_ms": job.lease_until_ms, "priority": job.priority, "group": job.group, "progress": job.progress,
        }  # fmt: skip

    @staticmethod
    def _window_start(start_ms: int, window_ms: int, now: int) -> int | None:
        """The start of the fixed window holding ``now`` if it is not the one starting at ``start_ms``."""
        return None if now < start_ms + window_ms else now - now % window_ms

    def _allowance(self, q: Queue, now: int) -> int:
        allowance = UNLIMITED
        if q.concurrency:
            allowance = q.concurrency - q.running
        if q.rate_max:
            window_ms = q.rate_window_ms or 1_000
            start = self._window_start(q.window_start_ms, window_ms, now)
            if start is not None:
                q.window_start_ms, q.window_count = start, 0
            allowance = min(allowance, q.rate_max - q.window_count)
        return allowance

    def _group_rate_allows(self, q: Queue, group: str, now: int) -> bool:
        """Whether ``group`` may start a job now; if not, block it until its window ends."""
        window_ms = q.group_rate_window_ms or 1_000
        window = q.group_windows.get(group)
        start = 0 if window is None else self._window_start(window[0], window_ms, now)
        if window is None or start is not None:
            # Re-inserted, so the dict runs from the oldest window: _prune_group_windows stops early.
            q.group_windows.pop(group, None)
            window = q.group_windows[group] = [now - now % window_ms, 0]
        if window[1] < q.group_rate_max:
            return True
        end = window[0] + window_ms
        q.blocked[group] = end
        q.rate_blocked.add((end, group))
        self._refresh_head(q, group)
        return False

    @staticmethod
    def _prune_group_windows(q: Queue, now: int) -> None:
        """Forget ended group rate windows (an absent window is an ended one), oldest first, so
        groups that stopped starting jobs do not stay in memory."""
        windows = q.group_windows
        window_ms = q.group_rate_window_ms or 1_000
        while windows:
            group, window = next(iter(windows.items()))
            if window[0] + window_ms > now:  # (a rate-blocked group's window has not ended)
                return
            del windows[group]

    def _unblock_rated(self, q: Queue, now: int) -> None:
        """Groups whose rate window ended may start jobs again (unless at their concurrency limit)."""
        while q.rate_blocked and q.rate_blocked[0][0] <= now:
            end, group = q.rate_blocked.pop(0)
            if q.blocked.get(group) != end:
                continue
            if q.group_concurrency and q.running_by_group.get(group, 0) >= q.group_concurrency:
                q.blocked[group] = BLOCKED_CONCURRENCY
            else:
                del q.blocked[group]
                self._refresh_head(q, group)

    def _reblock(self, q: Queue) -> None:
        """Recompute every group's block after a change of group settings."""
        q.blocked.clear()
        q.rate_blocked.clear()
        if q.group_concurrency:
            for group, n in q.running_by_group.items():
                if n >= q.group_concurrency:
                    q.blocked[group] = BLOCKED_CONCURRENCY
        for group in list(q.ready):
            self._refresh_head(q, group)

    # ------------------------------------------------------------------ outcomes

    def _complete(self, c: args.CompleteCmd, ctx: ApplyContext) -> str:
        job = self._lease(c.job, c.token)
        self._detach(job)
        job.result = c.result
        job.error = None
        self._end(job, COMPLETED, ctx)
        return COMPLETED

    def _complete_batch(self, c: args.CompleteBatchCmd, ctx: ApplyContext) -> list[str]:
        out = []
        for item in c.items:
            try:
                out.append(self._complete(item, ctx))
            except StaleLease:  # raised before the job changed: this one refused, the rest go on
                out.append(StaleLease.code)
        return out

    def _fail(self, c: args.FailCmd, ctx: ApplyContext) -> str:
        job = self._lease(c.job, c.token)
        self._detach(job)
        self._attempt_ended(job, ctx, c.error, c.retry, backoff=True)
        return job.state or DEAD

    def _release(self, c: args.ReleaseCmd, ctx: ApplyContext) -> str:
        job = self._lease(c.job, c.token)
        self._detach(job)
        self._give_back(job, ctx)
        return job.state

    def _ack_cancel(self, c: args.AckCancelCmd, ctx: ApplyContext) -> str:
        job = self._lease(c.job, c.token)
        self._detach(job)
        self._end(job, CANCELLED, ctx)
        return CANCELLED

    def _cancel(self, c: args.CancelCmd, ctx: ApplyContext) -> str:
        job = self._job(c.job)
        if job.state in PENDING:
            self._detach(job)
            job.deps_pending = 0
            self._end(job, CANCELLED, ctx)
            return CANCELLED
        if job.state == RUNNING:
            if not job.cancel_requested:
                job.cancel_requested = True
                assert job.session is not None
                self._sessions[job.session].cancel[job.id] = None
            return "cancelling"
        return job.state

    # ------------------------------------------------------------------ dead letters, queues

    def _dlq(self, c: args.DlqCmd, ctx: ApplyContext) -> list[str] | int:
        q = self._queues.get(c.queue)
        if c.jobs is None:
            ids = [] if q is None else [key[-1] for key in q.dead.islice(0, limits.job_dlq_batch_max)]
        else:
            ids = list(c.jobs)
            for job_id in ids:
                job = self._jobs.get(job_id)
                if job is None or job.queue != c.queue or job.state != DEAD:
                    raise NotFound(f"job {job_id} is not in the dead-letter list of {c.queue}", kind="dead_job", id=job_id)
        for job_id in ids:
            job = self._jobs[job_id]
            self._detach(job)
            if c.purge:
                self._forget(job)
                continue
            job.attempt = 0
            job.finished_at_ms = 0
            if job.unique_key is not None and (job.queue, job.unique_key) not in self._unique:
                self._unique[(job.queue, job.unique_key)] = job.id
            self._make_available(job, ctx.timestamp_ms, ctx)
        return len(ids) if c.purge else ids

    def _pause(self, c: args.PauseCmd, ctx: ApplyContext) -> bool:
        q = self._queue(c.queue)
        changed = q.paused != c.paused
        q.paused = c.paused
        return changed

    def _queue_config(self, c: args.QueueConfigCmd, ctx: ApplyContext) -> dict[str, int]:
        q = self._queue(c.queue)
        for key, value in c.settings:
            setattr(q, key, value)
        if any(key.startswith("group_") for key, _ in c.settings):
            self._reblock(q)
        return q.settings()

    # ------------------------------------------------------------------ schedules

    def _schedule(self, c: args.ScheduleCmd, ctx: ApplyContext) -> int:
        now = ctx.timestamp_ms
        old = self._schedules.get(c.name)
        if old is None and len(self._schedules) >= limits.job_schedules_max:
            raise TooLarge(f"the service holds job_schedules_max={limits.job_schedules_max} schedules")
        # A replaced schedule never fires a slot its predecessor fired.
        after_ms = max(now - 1, old.last_slot_ms if old is not None else -1)
        if c.every_ms is not None:
            anchor_ms = c.start_ms if c.start_ms is not None else now + c.every_ms
            next_ms = _every_next(anchor_ms, c.every_ms, after_ms)
        else:
            assert c.cron is not None
            anchor_ms = 0
            next_ms = cron.next_slot_ms(c.cron, max(after_ms, (c.start_ms or 0) - 1))
        if old is not None:
            self._timers.remove((old.next_ms, T_SCHEDULE, old.name))
        schedule = Schedule(c.name, c.cron, c.every_ms, anchor_ms, c.catch_up, c.spec, next_ms)
        if old is not None:
            schedule.last_slot_ms = old.last_slot_ms
        self._schedules[c.name] = schedule
        self._timers.add((next_ms, T_SCHEDULE, c.name))
        return next_ms

    def _unschedule(self, c: args.UnscheduleCmd, ctx: ApplyContext) -> bool:
        schedule = self._schedules.pop(c.name, None)
        if schedule is None:
            return False
        self._timers.remove((schedule.next_ms, T_SCHEDULE, schedule.name))
        return True

    def _slot_after(self, s: Schedule, after_ms: int) -> int:
        if s.every_ms is not None:
            return _every_next(s.anchor_ms, s.every_ms, after_ms)
        assert s.cron is not None
        return cron.next_slot_ms(s.cron, after_ms)

    def _fire_schedule(self, s: Schedule, ctx: ApplyContext) -> None:
        """Enqueue the due slot(s) of ``s`` (each slot once), then arm its next slot."""
        now = ctx.timestamp_ms
        self._timers.remove((s.next_ms, T_SCHEDULE, s.name))
        if s.catch_up:
            slots = [s.next_ms]
            while len(slots) < limits.job_schedule_catch_up_slots_max:
                slot = self._slot_after(s, slots[-1])
                if slot > now:
                    break
                slots.append(slot)
        elif s.every_ms is not None:
            slots = [s.anchor_ms + (now - s.anchor_ms) // s.every_ms * s.every_ms]
        else:
            assert s.cron is not None
            slots = [max(s.next_ms, cron.last_slot_ms(s.cron, now))]
        for slot in slots:
            self._enqueue_slot(s, ctx)
            s.last_slot_ms = slot
        s.next_ms = self._slot_after(s, s.last_slot_ms)
        self._timers.add((s.next_ms, T_SCHEDULE, s.name))

    def _enqueue_slot(self, s: Schedule, ctx: ApplyContext) -> None:
        spec = s.spec
        if spec.unique_key is not None and (spec.queue, spec.unique_key) in self._unique:
            s.fired += 1  # deduplicated: the live job stands for this slot
            return
        try:
            self._check_room({spec.queue: 1})
        except (QueueFull, TooLarge):
            s.skipped += 1
            return
        self._create(spec, ctx)
        s.fired += 1

    # ------------------------------------------------------------------ queries

    @staticmethod
    def job_view(job: Job) -> dict[str, Any]:
        """What the ``job`` query shows of a job (never its token: that is the lease holder's)."""
        return {
            "id": job.id, "queue": job.queue, "state": job.state, "payload": job.payload, "priority": job.priority,
            "group": job.group, "attempt": job.attempt, "max_attempts": job.max_attempts,
            "created_at_ms": job.created_at_ms, "run_at_ms": job.run_at_ms, "started_at_ms": job.started_at_ms,
            "finished_at_ms": job.finished_at_ms, "lease_until_ms": job.lease_until_ms, "session": job.session,
            "progress": job.progress, "result": job.result, "error": job.error, "unique_key": job.unique_key,
            "depends_on": list(job.depends_on), "cancel_requested": job.cancel_requested,
            "expires_at_ms": job.expires_at_ms,
        }  # fmt: skip

    def _job_query(self, q: args.JobQuery, now: int) -> dict[str, Any] | None:
        job = self._jobs.get(q.job)
        return None if job is None else self.job_view(job)

    def _result_query(self, q: args.ResultQuery, now: int) -> dict[str, Any] | None:
        job = self._jobs.get(q.job)
        if job is None:
            return None
        return {"state": job.state, "result": job.result, "error": job.error, "attempt": job.attempt, "finished_at_ms": job.finished_at_ms}

    def _stats(self, q: args.StatsQuery, now: int) -> dict[str, Any]:
        queue = self._queues.get(q.queue) or Queue(q.queue)
        return {**queue.counts, "held": len(queue.jobs), "paused": queue.paused, **queue.settings()}

    def _queues_query(self, q: args.QueuesQuery, now: int) -> dict[str, Any]:
        items: list[dict[str, Any]] = []
        for name in sorted(self._queues):  # at most job_queues_max names
            if q.start_after is not None and name <= q.start_after:
                continue
            if len(items) == q.limit:
                return {"items": items, "next": items[-1]["queue"]}
            queue = self._queues[name]
            items.append(
                {"queue": name, "paused": queue.paused, **queue.counts, "held": len(queue.jobs),
                 "lease_expiries_total": queue.lease_expiries, "dead_lettered_total": queue.dead_lettered}
            )  # fmt: skip
        return {"items": items, "next": None}

    def _ready_query(self, q: args.ReadyQuery, now: int) -> dict[str, Any]:
        ready = 0
        next_ms: int | None = None
        for name in q.queues:
            queue = self._queues.get(name)
            if queue is None or queue.paused:
                continue
            ready += queue.counts[READY]
            due = [queue.delayed[0][0]] if queue.delayed else []
            window_end_ms = queue.window_start_ms + (queue.rate_window_ms or 1_000)
            if queue.counts[READY] and queue.rate_max and queue.window_count >= queue.rate_max and window_end_ms > now:
                due.append(window_end_ms)  # ready jobs held back by the rate limit until then
            for ms in due:
                if next_ms is None or ms < next_ms:
                    next_ms = ms
        return {"ready": ready, "next_ms": next_ms}

    def _dlq_query(self, q: args.DlqQuery, now: int) -> dict[str, Any]:
        queue = self._queues.get(q.queue)
        if queue is None:
            return {"items": [], "next": None}
        keys = queue.dead.irange()
        if q.start_after is not None:
            after = self._jobs.get(q.start_after)
            if after is None or after.state != DEAD or after.queue != q.queue:
                raise NotFound(f"job {q.start_after} is not in the dead-letter list of {q.queue}", kind="dead_job", id=q.start_after)
            keys = queue.dead.irange(minimum=self._dead_key(after), inclusive=(False, True))
        items: list[dict[str, Any]] = []
        size_bytes = 0
        for key in keys:
            if len(items) == q.limit or size_bytes >= limits.job_claim_payload_bytes_max:
                return {"items": items, "next": items[-1]["id"]}
            job = self._jobs[key[-1]]
            items.append(self.job_view(job))
            size_bytes += len(job.payload)
        return {"items": items, "next": None}

    def _list_query(self, q: args.ListQuery, now: int) -> dict[str, Any]:
        """A page of the queue's jobs in creation order, of one state or all. A page examines at
        most ``limits.job_list_scan_max`` jobs, so a rare state costs bounded work per call: the
        page may then hold fewer than ``limit`` items, and ``next`` says where to go on."""
        queue = self._queues.get(q.queue)
        if queue is None:
            return {"items": [], "next": None}
        keys = queue.jobs.irange() if q.start_after is None else queue.jobs.irange(minimum=(q.start_after[0], q.start_after[1] + 1))
        items: list[dict[str, Any]] = []
        size_bytes = examined = 0
        last_id = None
        for key in keys:
            if len(items) == q.limit or size_bytes >= limits.job_claim_payload_bytes_max or examined == limits.job_list_scan_max:
                return {"items": items, "next": last_id}
            examined += 1
            last_id = key[2]
            job = self._jobs[last_id]
            if q.state is None or job.state == q.state:
                items.append(self.job_view(job))
                size_bytes += len(job.payload)
        return {"items": items, "next": None}

    def _schedules_query(self, q: args.SchedulesQuery, now: int) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name, "queue": s.spec.queue, "cron": s.cron, "every_ms": s.every_ms, "catch_up": s.catch_up,
                "next_ms": s.next_ms, "last_slot_ms": s.last_slot_ms if s.last_slot_ms >= 0 else None,
                "fired": s.fired, "skipped": s.skipped,
            }  # fmt: skip
            for s in sorted(self._schedules.values(), key=lambda s: s.name)
        ]

    def _session_query(self, q: args.SessionQuery, now: int) -> dict[str, Any] | None:
        s = self._sessions.get(q.session)
        if s is None:
            return None
        return {"session": s.id, "worker": s.worker, "ttl_ms": s.ttl_ms, "expires_at_ms": s.expires_at_ms, "jobs": list(s.jobs), "cancel": list(s.cancel)}

    # ------------------------------------------------------------------ for the node's edge

    # Plain lookups of the applied state for the node's authoriser (which queue a job, a session's
    # jobs or a schedule belong to: what a request touches) and its long-polling claims. Read-only.

    def queue_of_job(self, job_id: str) -> str | None:
        job = self._jobs.get(job_id)
        return None if job is None else job.queue

    def session_queues(self, session_id: str) -> list[str] | None:
        """The queues of the jobs a live session holds (each once), or None: no such session."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        jobs = self._jobs
        return list(dict.fromkeys(jobs[job_id].queue for job_id in session.jobs))

    def queue_of_schedule(self, name: str) -> str | None:
        schedule = self._schedules.get(name)
        return None if schedule is None else schedule.spec.queue

    def ready_in(self, queues: tuple[str, ...], now_ms: int) -> tuple[int, int | None]:
        """What a long-polling claim of ``queues`` waits on: (jobs it could take now, the earliest
        log time more may become claimable: a delayed job's run time or a rate window's end, or
        None). Unlike the ``ready`` query it counts limits: a queue at its concurrency limit, past
        its rate, or whose ready jobs' groups are all blocked counts none (an applied completion
        or the window's end changes that). Read-only: no window is reset here."""
        ready = 0
        next_ms: int | None = None
        for name in queues:
            q = self._queues.get(name)
            if q is None or q.paused:
                continue
            due = [q.delayed[0][0]] if q.delayed else []
            if q.rate_blocked:
                due.append(q.rate_blocked[0][0])
            claimable = q.counts[READY] if q.heads or (q.rate_blocked and q.rate_blocked[0][0] <= now_ms) else 0
            if q.concurrency and q.running >= q.concurrency:
                claimable = 0
            window_end_ms = q.window_start_ms + (q.rate_window_ms or 1_000)
            if claimable and q.rate_max and q.window_count >= q.rate_max and window_end_ms > now_ms:
                claimable = 0
                due.append(window_end_ms)
            ready += claimable
            for ms in due:
                if next_ms is None or ms < next_ms:
                    next_ms = ms
        return ready, next_ms

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> dict[str, Any]:
        """Plain data, every collection in insertion order (see "Snapshots" in the module docstring)."""
        rows = [[_plain(getattr(job, name)) for name in JOB_FIELDS] for job in self._jobs.values()]
        return {
            "format": SNAPSHOT_FORMAT,
            "id": [self._id_index, self._id_seq],
            "queues": [
                [q.name, q.paused, [getattr(q, k) for k in SETTINGS], q.window_start_ms, q.window_count,
                 _chunked([[g, w[0], w[1]] for g, w in q.group_windows.items()])]
                for q in self._queues.values()
            ],  # fmt: skip
            "sessions": [[s.id, s.worker, s.ttl_ms, s.expires_at_ms, list(s.jobs), list(s.cancel)] for s in self._sessions.values()],
            "jobs": _chunked(rows),
            "unique": _chunked([[queue, key, job_id] for (queue, key), job_id in self._unique.items()]),
            "dependents": _chunked([[dep, _chunked(waiters)] for dep, waiters in self._dependents.items()]),
            "schedules": [
                [s.name, s.cron, s.every_ms, s.anchor_ms, s.catch_up, [_plain(v) for v in s.spec], s.next_ms,
                 s.last_slot_ms, s.fired, s.skipped]
                for s in self._schedules.values()
            ],  # fmt: skip
        }

    def restore(self, data: Any) -> None:
        """Replace the whole state by a snapshot's (taken by a service with the same configuration)."""
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a jobs snapshot of format {SNAPSHOT_FORMAT}")
        self._reset()
        self._id_index, self._id_seq = data["id"]
        for name, paused, settings, window_start_ms, window_count, group_windows in data["queues"]:
            q = self._queues[name] = Queue(name)
            q.paused = paused
            for key, value in zip(SETTINGS, settings):
                setattr(q, key, value)
            q.window_start_ms, q.window_count = window_start_ms, window_count
            q.group_windows = {g: [start, count] for g, start, count in chain.from_iterable(group_windows)}
        session_jobs: list[tuple[Session, list[str], list[str]]] = []
        for session_id, worker, ttl_ms, expires_at_ms, jobs, cancel in data["sessions"]:
            s = self._sessions[session_id] = Session(session_id, worker, ttl_ms, expires_at_ms)
            self._timers.add((expires_at_ms, T_SESSION, session_id))
            session_jobs.append((s, jobs, cancel))
        for row in chain.from_iterable(data["jobs"]):
            values = dict(zip(JOB_FIELDS, row))
            values["backoff"] = args.Backoff(*values["backoff"])
            values["depends_on"] = tuple(values["depends_on"])
            state = values.pop("state")
            job = self._jobs[values["id"]] = Job(**values)
            self._queues[job.queue].jobs.add((job.index, job.seq, job.id))
            self._attach(job, state)
        for s, jobs, cancel in session_jobs:  # claim order, as before
            assert s.jobs.keys() == set(jobs), "a session's jobs are its running jobs"
            s.jobs = dict.fromkeys(jobs)
            s.cancel = dict.fromkeys(cancel)
        for queue, key, job_id in chain.from_iterable(data["unique"]):
            self._unique[(queue, key)] = job_id
            job = self._jobs[job_id]
            if job.state == COMPLETED:
                self._timers.add((job.finished_at_ms + job.unique_window_ms, T_UNIQUE, job_id))
        self._dependents = {dep: list(chain.from_iterable(waiters)) for dep, waiters in chain.from_iterable(data["dependents"])}
        for name, expr, every_ms, anchor_ms, catch_up, spec, next_ms, last_slot_ms, fired, skipped in data["schedules"]:
            spec[args.JobSpec._fields.index("backoff")] = args.Backoff(*spec[args.JobSpec._fields.index("backoff")])
            spec[args.JobSpec._fields.index("depends_on")] = tuple(spec[args.JobSpec._fields.index("depends_on")])
            schedule = Schedule(name, expr, every_ms, anchor_ms, catch_up, args.JobSpec(*spec), next_ms, last_slot_ms, fired, skipped)
            self._schedules[name] = schedule
            self._timers.add((next_ms, T_SCHEDULE, name))


def _every_next(anchor_ms: int, every_ms: int, after_ms: int) -> int:
    """The first slot ``anchor_ms + k*every_ms`` (k >= 0) strictly after ``after_ms``."""
    if after_ms < anchor_ms:
        return anchor_ms
    return anchor_ms + ((after_ms - anchor_ms) // every_ms + 1) * every_ms


def _chunked(items: list[Any]) -> list[list[Any]]:
    """``items`` cut into lists of at most ``SNAPSHOT_CHUNK_ITEMS`` (the decoder's array bound)."""
    return [items[i : i + SNAPSHOT_CHUNK_ITEMS] for i in range(0, len(items), SNAPSHOT_CHUNK_ITEMS)]


def _plain(value: Any) -> Any:
    """A snapshot field as msgpack data: tuples (the backoff, dependencies) become lists."""
    return list(value) if isinstance(value, tuple) else value
