"""The job queue on the simulated nodes: the record of what every replica's ``jobs`` service applied,
and the jobs checker, a model of the queue fed by the log.

Every replica runs a :class:`RecordingJobs` (the real service, reporting). For each log entry it
applies it reports, in order: the entry's log time, a fingerprint of its queue state before the entry
(jobs, worker sessions and pending timers held), the schedule slots the entry fired, and the outcome
of each jobs command. The first replica to apply an index sets
the record (:class:`JobsRecord`); every other replica, and every later lifetime, must report the same
(else ``replicas_diverge``: replicas' queue states must be equal at equal indexes).

Each index enters the record once, in log order, and is fed then to :class:`JobsModel`, an
independent plain model of the queue as the workload uses it (no groups, dependencies, expiry,
pauses or dead-letter requeues). The model decides, from the log alone, what every command must
answer and fails the run (category ``jobs``) at the first answer that differs, naming the promise:

- a ``complete``/``fail``/``release``/``ack_cancel`` accepted from a token that is not the job's
  current, live lease (the lease lapses when its session's TTL or its own timeout passes in log
  time), or a live lease refused;
- a claim of a job that still has a valid lease (two leases at once), of a job before its
  ``run_at``, with the wrong attempt number (retries must count), or out of order: a claim must
  take exactly the first ready jobs by priority, then the log time they became ready, then
  creation, within each queue's concurrency and rate limits;
- a schedule slot fired twice, before its time, or (catch-up) skipped;
- a job ending twice, and any other answer the model does not expect (an id, a lost session...).

At the end of the run (:func:`check_jobs`): every job id a producer was acknowledged was enqueued by
the log, and every job the model knows is still held by the most advanced replica in the state the
model says: ended in exactly one terminal state (or purged after its result TTL, having ended in the
log), or pending with a live reason (ready or delayed, or running on a lease that has not lapsed).
Dead jobs stay in the dead-letter list: a job that vanished is lost.
"""

from __future__ import annotations

from collections import deque
from itertools import chain
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from trimaran import limits
from trimaran.errors import TrimaranError
from trimaran.protocols.service import ApplyContext
from trimaran.services.jobs import JobsService, args
from trimaran.services.jobs.backoff import retry_delay_ms
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.jobs_workload import JobsProducer

if TYPE_CHECKING:
    from trimaran.simulations.loop import Simulation

#: A command's outcome as recorded: ("ok", value) or ("err", error code).
Outcome = tuple[str, Any]

PENDING, RUNNING = "pending", "running"
#: An ended job the service dropped after its result TTL (dead jobs are never purged).
PURGED = "purged"
#: The service's states the model's "pending" covers (no dependencies in the workload: no waiting).
PENDING_STATES = ("ready", "delayed")


class RecordingJobs(JobsService):
    """The jobs service of one simulated replica (one lifetime), reporting to the :class:`JobsRecord`."""

    def __init__(self, node_id: int, record: JobsRecord, **settings: Any) -> None:
        super().__init__(**settings)
        self._node_id = node_id
        self._record = record
        self._entry = (-1, 0)  # (index, commands applied in it so far)

    def on_time(self, ctx: ApplyContext) -> None:
        # Read on every entry of every replica, so cheap: how many jobs, sessions and pending timers
        # (leases, sessions, delays, purges, schedules) the state holds. A lapse, a purge, a slot or
        # a delayed job made ready on one replica and not another changes it; the whole states are
        # compared at the end (verdict.check_replicas_agree).
        before = (len(self._jobs), len(self._sessions), len(self._timers))
        fires: tuple[tuple[str, int, int], ...] = ()
        if self._schedules:
            fired_before = self._slots()
            super().on_time(ctx)
            after = self._slots()
            if after != fired_before:
                fires = tuple(
                    (name, n - fired_before.get(name, (0, -1))[0], last)
                    for name, (n, last) in after.items()
                    if (n, last) != fired_before.get(name)
                )
        else:
            super().on_time(ctx)
        self._entry = (ctx.index, 0)
        self._record.entry(self._node_id, ctx.index, ctx.timestamp_ms, before, fires)

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        index, k = self._entry
        assert index == ctx.index, "the replica calls on_time before an entry's commands"
        self._entry = (index, k + 1)
        try:
            result = super().apply(command, ctx)
        except TrimaranError as exc:
            self._record.command(self._node_id, index, k, command, ("err", exc.code))
            raise
        self._record.command(self._node_id, index, k, command, ("ok", result))
        return result

    def _slots(self) -> dict[str, tuple[int, int]]:
        """Schedule name -> (slots fired or skipped so far, the last slot)."""
        return {s.name: (s.fired + s.skipped, s.last_slot_ms) for s in self._schedules.values()}


@dataclass(slots=True)
class _Entry:
    time_ms: int
    fingerprint: tuple[Any, ...]
    fires: tuple[tuple[str, int, int], ...]
    outcomes: list[tuple[Any, Outcome]] = field(default_factory=list)
    #: False for an index first applied after a later one (only a log that diverged, a Raft bug
    #: the log checkers report, does that): kept for comparisons, not fed to the model.
    fed: bool = True
    #: The node that applied it first (the model takes its commands).
    node_id: int = 0


class JobsRecord:
    """Every replica's report, checked for agreement, each index fed once to the model."""

    def __init__(self, default_timeout_ms: int, result_ttl_ms: int) -> None:
        self.entries: dict[int, _Entry] = {}
        self.model = JobsModel(default_timeout_ms, result_ttl_ms)

    def entry(self, node_id: int, index: int, time_ms: int, fingerprint: tuple[Any, ...], fires: tuple[tuple[str, int, int], ...]) -> None:
        seen = self.entries.get(index)
        if seen is None:
            fed = index > self.model.index
            self.entries[index] = _Entry(time_ms, fingerprint, fires, fed=fed, node_id=node_id)
            if fed:
                self.model.begin_entry(index, time_ms, fires)
            return
        if (time_ms, fingerprint, fires) != (seen.time_ms, seen.fingerprint, seen.fires):
            raise CheckFailure(
                "replicas_diverge",
                f"node {node_id} reached entry {index} with jobs state {fingerprint!r:.300} and fired {fires!r}; where it was"
                f" applied first: {seen.fingerprint!r:.300}, fired {seen.fires!r} (log time {time_ms} vs {seen.time_ms})",
            )

    def command(self, node_id: int, index: int, k: int, command: Any, outcome: Outcome) -> None:
        seen = self.entries[index]
        if k == len(seen.outcomes):
            seen.outcomes.append((command, outcome))
            if seen.fed and seen.node_id == node_id and self.model.index == index:
                self.model.command(command, outcome)
        elif seen.outcomes[k][0] != command:
            return  # another command at this place: the logs diverged (the log checkers' finding)
        elif seen.outcomes[k][1] != outcome:
            raise CheckFailure(
                "replicas_diverge",
                f"node {node_id} applied jobs command {command!r:.200} at entry {index} with {outcome!r:.200}; where it was"
                f" applied first: {seen.outcomes[k]!r:.300}",
            )


@dataclass(slots=True)
class MJob:
    """A job as the model knows it."""

    id: str
    queue: str
    payload: bytes
    priority: int
    max_attempts: int
    backoff: args.Backoff
    timeout_ms: int
    index: int
    seq: int
    unique_key: str | None
    state: str = PENDING
    #: Not claimable before (and, once ready, the FIFO key among equal priorities).
    run_at_ms: int = 0
    attempts: int = 0
    token: int = 0
    session: str | None = None
    lease_until_ms: int = 0
    cancel_requested: bool = False
    ends: int = 0

    def key(self) -> tuple[int, int, int, int]:
        return (-self.priority, self.run_at_ms, self.index, self.seq)


@dataclass(slots=True)
class MSession:
    id: str
    ttl_ms: int
    expires_at_ms: int
    jobs: dict[str, None] = field(default_factory=dict)
    cancel: dict[str, None] = field(default_factory=dict)


@dataclass(slots=True)
class MQueue:
    concurrency: int = 0
    rate_max: int = 0
    rate_window_ms: int = 0
    window_start_ms: int = 0
    window_count: int = 0
    running: int = 0


@dataclass(slots=True)
class MSchedule:
    every_ms: int
    catch_up: bool
    spec: args.JobSpec
    anchor_ms: int
    next_ms: int
    last_slot_ms: int = -1
    #: Slots fired in the last entry that fired any (catch-up continues in the next entries past the cap).
    last_batch: int = 0


class JobsModel:
    """The queue's promises as a plain model (see the module docstring); raises CheckFailure("jobs")."""

    def __init__(self, default_timeout_ms: int, result_ttl_ms: int) -> None:
        self.default_timeout_ms = default_timeout_ms
        self.result_ttl_ms = result_ttl_ms
        #: (purge time, job id) of ended jobs, in end order (log time only rises; one TTL for all).
        self._purges: deque[tuple[int, str]] = deque()
        self.index = 0
        self.now_ms = 0
        self._seq = 0  # ids made in the current entry
        self.jobs: dict[str, MJob] = {}
        #: Jobs not ended (pending or running), for claims and lapses.
        self.live: dict[str, MJob] = {}
        self.sessions: dict[str, MSession] = {}
        self.queues: dict[str, MQueue] = {}
        self.unique: dict[tuple[str, str], str] = {}
        self.schedules: dict[str, MSchedule] = {}
        #: What the run exercised (tests check the workload reaches every path).
        self.counts: dict[str, int] = {}
        self._outcome: Outcome = ("ok", None)
        #: No session or lease ends before this log time (a bound, kept by _due and _lapse_due).
        self._due_ms = 1 << 62

    def _count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def _fail(self, message: str) -> CheckFailure:
        return CheckFailure("jobs", f"entry {self.index} (log time {self.now_ms}): {message}")

    def _new_id(self) -> str:
        self._seq += 1
        return f"{self.index}-{self._seq - 1}"

    # ------------------------------------------------------------------ time

    def begin_entry(self, index: int, time_ms: int, fires: tuple[tuple[str, int, int], ...]) -> None:
        self.index, self.now_ms, self._seq = index, time_ms, 0
        purges = self._purges
        while purges and purges[0][0] <= time_ms:
            self.jobs[purges.popleft()[1]].state = PURGED
        if time_ms >= self._due_ms:
            self._lapse_due()

        fired = {name: (n, last) for name, n, last in fires}
        for name, schedule in sorted(self.schedules.items()):
            self._check_slots(name, schedule, fired.pop(name, None))
        if fired:
            raise self._fail(f"unknown schedules fired: {fired}")

    def _lapse_due(self) -> None:
        """Leases and sessions whose time came lapse at this entry (the service fires every timer
        due at or before the entry's log time)."""
        now = self.now_ms
        for session in [s for s in self.sessions.values() if s.expires_at_ms <= now]:
            for job_id in list(session.jobs):
                self._lapse(self.jobs[job_id], "session lapsed")
            del self.sessions[session.id]
        for job in [j for j in self.live.values() if j.state == RUNNING and j.lease_until_ms <= now]:
            self._lapse(job, "lease timed out")
        leases = (j.lease_until_ms for j in self.live.values() if j.state == RUNNING)
        self._due_ms = min(chain((s.expires_at_ms for s in self.sessions.values()), leases), default=1 << 62)

    def _due(self, at_ms: int) -> None:
        """A session or lease now ends at ``at_ms`` (the next lapse is no later)."""
        self._due_ms = min(self._due_ms, at_ms)

    def _lapse(self, job: MJob, why: str) -> None:
        self._count("lapsed")
        self._unlease(job)
        if job.cancel_requested:
            self._end(job, "cancelled")
        elif job.attempts >= job.max_attempts:
            self._end(job, "dead")
        else:
            self._make_pending(job, self.now_ms)

    def _check_slots(self, name: str, s: MSchedule, fired: tuple[int, int] | None) -> None:
        """Each slot fires once, never before its time; catch-up fires every slot; without
        catch-up, a late firing fires the latest slot due."""
        now, every = self.now_ms, s.every_ms
        next_slot = s.next_ms
        if fired is None:
            capped = s.catch_up and s.last_batch == limits.job_schedule_catch_up_slots_max
            if next_slot <= now and not capped:
                raise self._fail(f"schedule {name}: slot {next_slot} was due but did not fire")
            return
        n, last = fired
        if n < 1 or last > now or last < next_slot or (last - s.anchor_ms) % every:
            raise self._fail(
                f"schedule {name}: fired {n} slot(s) up to {last}, but the next slot is {next_slot}"
                f" (every {every} ms from {s.anchor_ms}){' and it is not due' if last > now else ''}"
            )
        if s.catch_up:
            expected = min((now - next_slot) // every + 1, limits.job_schedule_catch_up_slots_max)
            slots = [next_slot + i * every for i in range(expected)]
        else:
            slots = [s.anchor_ms + (now - s.anchor_ms) // every * every]
        if n != len(slots) or last != slots[-1]:
            raise self._fail(f"schedule {name}: fired {n} slot(s) up to {last}; slots {slots[0]}..{slots[-1]} ({len(slots)}) were due")
        s.last_slot_ms, s.last_batch, s.next_ms = last, n, last + every
        self._count("slots", n)
        for _ in slots:
            self._create(s.spec)

    # ------------------------------------------------------------------ commands

    def command(self, command: Any, outcome: Outcome) -> None:
        cmd = args.parse_command(command)  # the workload sends valid commands only
        self._outcome = outcome
        handlers: dict[type, Callable[[Any], Outcome]] = {
            args.EnqueueCmd: self._enqueue, args.SessionOpenCmd: self._session_open, args.HeartbeatCmd: self._heartbeat,
            args.SessionCloseCmd: self._session_close, args.ClaimCmd: self._claim, args.CompleteCmd: self._complete,
            args.FailCmd: self._fail_cmd, args.ReleaseCmd: self._release, args.AckCancelCmd: self._ack_cancel,
            args.CancelCmd: self._cancel, args.QueueConfigCmd: self._queue_config, args.ScheduleCmd: self._schedule,
            args.DlqCmd: self._dlq_purge,
        }  # fmt: skip
        expected = handlers[type(cmd)](cmd)
        if expected != outcome:
            raise self._fail(f"{command!r:.200} answered {outcome!r:.300}; the model expects {expected!r:.300}")

    def _enqueue(self, c: args.EnqueueCmd) -> Outcome:
        ids: list[str] = []
        for spec in c.specs:
            held = self.unique.get((spec.queue, spec.unique_key)) if spec.unique_key is not None else None
            ids.append(held if held is not None else self._create(spec))
        self._count("enqueued", len(ids))
        return ("ok", ids if c.batch else ids[0])

    def _create(self, spec: args.JobSpec) -> str:
        job_id = self._new_id()
        timeout_ms = spec.timeout_ms if spec.timeout_ms is not None else self.default_timeout_ms
        job = MJob(
            job_id, spec.queue, spec.payload, spec.priority, spec.max_attempts, spec.backoff, timeout_ms, self.index,
            self._seq - 1, spec.unique_key,
        )  # fmt: skip
        self.jobs[job_id] = self.live[job_id] = job
        self.queues.setdefault(spec.queue, MQueue())
        if spec.unique_key is not None:
            self.unique[(spec.queue, spec.unique_key)] = job_id
        run_at_ms = spec.run_at_ms if spec.run_at_ms is not None else self.now_ms + (spec.delay_ms or 0)
        job.run_at_ms = max(run_at_ms, self.now_ms)
        return job_id

    def _session_open(self, c: args.SessionOpenCmd) -> Outcome:
        session = MSession("s" + self._new_id(), c.ttl_ms, self.now_ms + c.ttl_ms)
        self.sessions[session.id] = session
        self._due(session.expires_at_ms)
        return ("ok", {"session": session.id, "expires_at_ms": session.expires_at_ms})

    def _heartbeat(self, c: args.HeartbeatCmd) -> Outcome:
        session = self.sessions.get(c.session)
        if session is None:
            return ("err", "worker_session_lost")
        session.expires_at_ms = self.now_ms + session.ttl_ms  # later than before: the bound holds
        lost = []
        for beat in c.jobs:
            job = self.live.get(beat.job)
            if job is None or job.state != RUNNING or job.token != beat.token or job.session != session.id:
                lost.append(beat.job)
            elif beat.extend_ms is not None:
                job.lease_until_ms = max(job.lease_until_ms, self.now_ms + beat.extend_ms)
        return ("ok", {"expires_at_ms": session.expires_at_ms, "cancel": list(session.cancel), "lost": lost})

    def _session_close(self, c: args.SessionCloseCmd) -> Outcome:
        session = self.sessions.pop(c.session, None)
        if session is None:
            return ("err", "worker_session_lost")
        released = list(session.jobs)
        for job_id in released:
            job = self.jobs[job_id]
            self._unlease(job)
            self._give_back(job)
        return ("ok", released)

    def _claim(self, c: args.ClaimCmd) -> Outcome:
        session = self.sessions.get(c.session)
        if session is None:
            return ("err", "worker_session_lost")
        now = self.now_ms
        allowance: dict[str, int] = {}
        for name in c.queues:
            q = self.queues.get(name)
            if q is None:
                continue
            room = q.concurrency - q.running if q.concurrency else 1 << 62
            if q.rate_max:
                window_ms = q.rate_window_ms or 1_000
                if now >= q.window_start_ms + window_ms:
                    q.window_start_ms, q.window_count = now - now % window_ms, 0
                room = min(room, q.rate_max - q.window_count)
            if room > 0:
                allowance[name] = room
        ready = sorted((j for j in self.live.values() if j.state == PENDING and j.run_at_ms <= now and j.queue in allowance), key=MJob.key)
        picked: list[MJob] = []
        left = dict(allowance)
        for job in ready:
            if len(picked) == c.n:
                break
            if left[job.queue]:
                left[job.queue] -= 1
                picked.append(job)
        if self._outcome[0] == "ok":
            self._judge_claim(self._outcome[1]["jobs"], picked, allowance)
        leases = []
        for job in picked:
            self._lease(job, session)
            leases.append(
                {"id": job.id, "queue": job.queue, "payload": job.payload, "attempt": job.attempts, "token": job.token,
                 "lease_until_ms": job.lease_until_ms, "priority": job.priority, "group": "", "progress": None}
            )  # fmt: skip
        self._count("claimed", len(leases))
        return ("ok", {"jobs": leases, "cancel": list(session.cancel)})

    def _judge_claim(self, got: list[dict[str, Any]], picked: list[MJob], allowance: dict[str, int]) -> None:
        """Name the promise a claim's answer broke, if it broke one (before the model applies it)."""
        taken: dict[str, int] = {}
        for lease in got:
            job = self.jobs.get(lease["id"])
            if job is None:
                raise self._fail(f"claim returned job {lease['id']}, which was never enqueued")
            if job.state == RUNNING:
                raise self._fail(
                    f"claim leased job {job.id} on token {self.index} while its lease on token {job.token} (session"
                    f" {job.session}, until {job.lease_until_ms}) is still valid: two valid leases"
                )
            if job.state != PENDING:
                raise self._fail(f"claim leased job {job.id}, which ended {job.state}")
            if job.run_at_ms > self.now_ms:
                raise self._fail(f"claim leased job {job.id} before its run_at {job.run_at_ms}")
            if lease["attempt"] != job.attempts + 1:
                raise self._fail(
                    f"claim leased job {job.id} as attempt {lease['attempt']}; it had run {job.attempts} counted"
                    f" attempt(s) of {job.max_attempts}"
                )
            taken[job.queue] = taken.get(job.queue, 0) + 1
        for queue, n in taken.items():
            if n > allowance.get(queue, 0):
                raise self._fail(f"claim took {n} job(s) from queue {queue}, whose limits allowed {allowance.get(queue, 0)}")
        want = [j.id for j in picked]
        if [lease["id"] for lease in got] != want:
            keys = {j.id: j.key() for j in picked}
            for lease in got:
                keys[lease["id"]] = self.jobs[lease["id"]].key()
            raise self._fail(
                f"claim took {[lease['id'] for lease in got]}, but the first ready jobs by priority, then FIFO, within the"
                f" limits are {want} (keys (-priority, ready at, index, seq): {keys})"
            )

    def _lease(self, job: MJob, session: MSession) -> None:
        job.state, job.attempts, job.token, job.session = RUNNING, job.attempts + 1, self.index, session.id
        job.lease_until_ms = self.now_ms + job.timeout_ms
        self._due(job.lease_until_ms)
        session.jobs[job.id] = None
        q = self.queues[job.queue]
        q.running += 1
        if q.rate_max:
            q.window_count += 1

    def _unlease(self, job: MJob) -> None:
        assert job.state == RUNNING and job.session is not None
        session = self.sessions.get(job.session)
        if session is not None:
            del session.jobs[job.id]
            session.cancel.pop(job.id, None)
        job.session = None
        self.queues[job.queue].running -= 1

    def _held(self, op: str, job_id: str, token: int) -> MJob | None:
        """The job if ``token`` is its current, live lease (lapses were applied at the entry's
        start); fails the run at once if the service decided otherwise."""
        job = self.live.get(job_id)
        held = job if job is not None and job.state == RUNNING and job.token == token else None
        accepted = self._outcome[0] == "ok"
        if held is None and accepted:
            known = self.jobs.get(job_id)
            now = "unknown" if known is None else f"{known.state}" + (f" on token {known.token}" if known.state == RUNNING else "")
            raise self._fail(f"{op} of job {job_id} accepted from the stale token {token}: the job is {now}")
        if held is not None and not accepted and self._outcome[1] == "stale_lease":
            raise self._fail(f"{op} of job {job_id} refused as stale, but token {token} is its live lease (until {held.lease_until_ms})")
        if held is None:
            self._count("stale")
        return held

    def _complete(self, c: args.CompleteCmd) -> Outcome:
        return self._end_held("complete", c.job, c.token, "completed")

    def _end_held(self, op: str, job_id: str, token: int, state: str) -> Outcome:
        job = self._held(op, job_id, token)
        if job is None:
            return ("err", "stale_lease")
        self._unlease(job)
        self._end(job, state)
        return ("ok", state)

    def _fail_cmd(self, c: args.FailCmd) -> Outcome:
        job = self._held("fail", c.job, c.token)
        if job is None:
            return ("err", "stale_lease")
        self._unlease(job)
        if job.cancel_requested:
            self._end(job, "cancelled")
            return ("ok", "cancelled")
        if not c.retry or job.attempts >= job.max_attempts:
            self._end(job, "dead")
            return ("ok", "dead")
        self._count("retried")
        run_at_ms = self.now_ms + retry_delay_ms(job.backoff, job.id, job.attempts)
        self._make_pending(job, run_at_ms)
        return ("ok", "delayed" if run_at_ms > self.now_ms else "ready")

    def _release(self, c: args.ReleaseCmd) -> Outcome:
        job = self._held("release", c.job, c.token)
        if job is None:
            return ("err", "stale_lease")
        self._unlease(job)
        return ("ok", self._give_back(job))

    def _ack_cancel(self, c: args.AckCancelCmd) -> Outcome:
        return self._end_held("ack_cancel", c.job, c.token, "cancelled")

    def _cancel(self, c: args.CancelCmd) -> Outcome:
        job = self.jobs.get(c.job)
        if job is None or job.state == PURGED:
            return ("err", "not_found")
        if job.state == PENDING:
            self._end(job, "cancelled")
            return ("ok", "cancelled")
        if job.state == RUNNING:
            if not job.cancel_requested:
                job.cancel_requested = True
                assert job.session is not None
                self.sessions[job.session].cancel[job.id] = None
            return ("ok", "cancelling")
        return ("ok", job.state)

    def _dlq_purge(self, c: args.DlqCmd) -> Outcome:
        assert c.purge and c.jobs is None, "the workload purges a whole dead-letter list"
        dead = [j for j in self.jobs.values() if j.state == "dead" and j.queue == c.queue][: limits.job_dlq_batch_max]
        for job in dead:
            job.state = PURGED
        self._count("purged", len(dead))
        return ("ok", len(dead))

    def _queue_config(self, c: args.QueueConfigCmd) -> Outcome:
        q = self.queues.setdefault(c.queue, MQueue())
        for key, value in c.settings:
            setattr(q, key, value)
        settings = dict.fromkeys(args.QUEUE_SETTINGS, 0)
        settings.update(concurrency=q.concurrency, rate_max=q.rate_max, rate_window_ms=q.rate_window_ms)
        return ("ok", settings)

    def _schedule(self, c: args.ScheduleCmd) -> Outcome:
        assert c.every_ms is not None and c.start_ms is None, "the workload's schedules are every_ms, from their creation"
        anchor_ms = self.now_ms + c.every_ms
        schedule = MSchedule(c.every_ms, c.catch_up, c.spec, anchor_ms, anchor_ms)
        old = self.schedules.get(c.name)
        if old is not None:  # a retry given up and sent again replaces it; no slot fires twice
            schedule.last_slot_ms = old.last_slot_ms
        self.schedules[c.name] = schedule
        return ("ok", anchor_ms)

    # ------------------------------------------------------------------ state changes

    def _give_back(self, job: MJob) -> str:
        """A running job returned unrun (release, session close): its attempt is not counted."""
        if job.cancel_requested:
            self._end(job, "cancelled")
            return "cancelled"
        job.attempts -= 1
        self._make_pending(job, self.now_ms)
        return "ready"

    def _make_pending(self, job: MJob, run_at_ms: int) -> None:
        job.state, job.run_at_ms = PENDING, run_at_ms

    def _end(self, job: MJob, state: str) -> None:
        job.ends += 1
        if job.ends > 1:
            raise self._fail(f"job {job.id} ended a second time ({state}, after ending once)")
        self._count(state)
        job.state = state
        job.cancel_requested = False
        del self.live[job.id]
        if state != "dead":
            self._purges.append((self.now_ms + self.result_ttl_ms, job.id))
        if job.unique_key is not None and self.unique.get((job.queue, job.unique_key)) == job.id:
            del self.unique[(job.queue, job.unique_key)]


def check_jobs(sim: Simulation) -> None:
    """The end of a run: every acknowledged job is in the log, and held, in the model's state, by
    the most advanced replica (see the module docstring)."""
    model = sim.jobs_record.model
    for client in sim.clients:
        if isinstance(client, JobsProducer):
            for job_id in client.acked_ids:
                if job_id not in model.jobs:
                    raise CheckFailure("jobs", f"producer {client.index} was acknowledged job {job_id}, which the log never enqueued")
    up = [slot.sim.replica for slot in sim.slots.values() if slot.sim.up]
    if not up:
        return
    replica = max(up, key=lambda r: r.applied_index)
    service = replica.services["jobs"]
    ctx = ApplyContext(replica.applied_index, replica.last_timestamp_ms)
    exact = replica.applied_index >= model.index
    for job in model.jobs.values():
        if job.state == PURGED:
            continue  # ended, seen ending in the log, and dropped after its result TTL
        view = service.query(["job", job.id], ctx)
        if view is None:
            raise CheckFailure(
                "jobs", f"job {job.id} ({job.state} in the model) is lost: replica at {replica.applied_index} does not hold it"
            )
        if not exact:
            continue
        state = view["state"]
        if job.state == PENDING and state not in PENDING_STATES or job.state != PENDING and state != job.state:
            raise CheckFailure("jobs", f"job {job.id} is {state} on the replica at {replica.applied_index}; the model says {job.state}")
        if state == RUNNING and service.query(["session", view["session"]], ctx) is None:
            raise CheckFailure("jobs", f"job {job.id} is running on session {view['session']}, which no longer exists")
