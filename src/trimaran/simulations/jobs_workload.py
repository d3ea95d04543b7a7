"""The job-queue side of the simulated workload: producers and workers of the ``jobs`` service.

Every client here is a :class:`~trimaran.simulations.workload.Client`: a client session, one
command in flight, retries with the same seq (so a retried command applies once), deadlines, token
refreshes. Their commands go to the ``jobs`` service; none is in the KV history (the jobs checker,
:mod:`trimaran.simulations.jobs_check`, judges the log itself), but every acknowledged command is in
the durability check like any write.

:class:`JobsProducer` first configures the limited queue (``q1``: a concurrency limit and a rate
limit) and, for producer 0, one ``every_ms`` schedule (catch-up or not, drawn), then enqueues: a
priority (higher first), sometimes a delay, a unique key, a small ``max_attempts``, a short lease
``timeout_ms``; now and then a batch, and now and then it cancels a job it enqueued (pending: at
once; running: its worker learns it), and now and then it purges a queue's dead-letter list. Job ids
it was acknowledged are what the no-loss check covers.

:class:`JobsWorker` opens a worker session, claims a few jobs at a time from every queue, keeps its
session alive with one heartbeat per worker (extending a job's lease now and then), and ends each
job: complete (mostly), fail with retry (it comes back after its backoff, or goes dead when out of
attempts), fail without retry, release, or confirm a cancellation it was told of. Now and then it
crashes (forgets its session and jobs: they come back when the session lapses), closes its session
(every job is released at once), or pauses for longer than its session's TTL and then completes a
job it held with its old token: the service must refuse that if the job was leased again.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass
from typing import Any

from trimaran.cluster.replica import Reply
from trimaran.errors import ServiceError, WorkerSessionLost
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.harness import sub_seed
from trimaran.simulations.workload import Client, ClientContext, PendingOp, WorkloadConfig

#: The queues of the workload: ``q1`` has limits, ``sched`` gets the schedule's jobs.
QUEUES = ("q0", "q1", "sched")
#: ``q1``'s limits (at most this many running, and starts per window of log time).
Q1_CONCURRENCY = 2
Q1_RATE_MAX = 3
Q1_RATE_WINDOW_MS = 1_000
SCHEDULE_NAME = "tick"
#: The jobs service's default lease timeout on the simulated nodes (the model needs it too).
JOB_TIMEOUT_DEFAULT_MS = 60_000
#: Ended jobs are purged this long after they end: replicas snapshot every few dozen entries here,
#: and a snapshot holding every job ever run would make the run's cost grow with its length.
JOB_RESULT_TTL_MS = 3_000
#: Retry backoff of the workload's jobs: short, so retries happen within a run.
BACKOFF = {"kind": "exponential", "delay_ms": 200, "max_ms": 2_000, "jitter_pct": 50}


#: The scope action each command needs (the table in :mod:`trimaran.protocols.scopes`).
_ACTIONS = {"enqueue": "enqueue", "enqueue_batch": "enqueue", "schedule": "enqueue", "cancel": "manage", "queue_config": "manage"}


def jobs_need(command: list[Any]) -> tuple[str, str]:
    """What a jobs command needs of the token presented with it, at a node's edge."""
    return ("jobs", _ACTIONS.get(command[0], "work"))


@dataclass(frozen=True, slots=True)
class JobsShape:
    """A seed's jobs workload (drawn by :func:`draw_jobs_shape` from its own stream)."""

    producers: int = 1
    workers: int = 2
    #: Think times between commands (uniform up to this): light, so the jobs load adds little to
    #: a run's cost (the CI sweep runs hundreds of seeds).
    producer_think_us_max: int = 2_000_000
    worker_think_us_max: int = 1_000_000
    session_ttl_ms: int = 2_000
    every_ms: int = 2_500
    catch_up: bool = False


def draw_jobs_shape(seed: int) -> JobsShape:
    rng = random.Random(sub_seed(seed, "jobs-workload"))
    return JobsShape(
        producers=1,
        workers=2,
        producer_think_us_max=rng.choice([2_000_000, 3_000_000, 4_000_000]),
        worker_think_us_max=rng.choice([1_500_000, 2_500_000]),
        session_ttl_ms=rng.choice([3_000, 5_000]),
        every_ms=rng.choice([2_500, 4_000, 6_000]),
        catch_up=rng.random() < 0.5,
    )


def make_jobs_clients(first_index: int, config: WorkloadConfig, shape: JobsShape, seed: int, ctx: ClientContext) -> list[Client]:
    """The run's producers, then its workers, numbered from ``first_index``."""
    clients: list[Client] = []
    for i in range(shape.producers):
        rng = random.Random(sub_seed(seed, "jobs-producer", i))
        clients.append(JobsProducer(first_index + len(clients), config, shape, rng, ctx, i))
    for i in range(shape.workers):
        rng = random.Random(sub_seed(seed, "jobs-worker", i))
        clients.append(JobsWorker(first_index + len(clients), config, shape, rng, ctx, i))
    return clients


class JobsClient(Client, abc.ABC):
    """What producers and workers share: jobs commands out of the KV history, the service's
    deterministic refusals taken as answers (not retried)."""

    def __init__(
        self, index: int, config: WorkloadConfig, shape: JobsShape, rng: random.Random, ctx: ClientContext, think_us_max: int
    ) -> None:
        super().__init__(index, config, rng, ctx)
        self.shape = shape
        self.think_us_max = think_us_max
        #: Commands acknowledged, by op (refusals included), for the run's counters.
        self.done: dict[str, int] = {}
        #: No command before this time (a paused worker).
        self.wake_us = 0

    def _begin_next(self) -> None:
        now = self.ctx.now_us
        if self.client_id == 0 or now >= self.stop_at_us:
            super()._begin_next()  # the session first; at the stop time, stop
            return
        if now < self.wake_us:
            self._set_timer(self.wake_us)
            return
        command = self._draw_command()
        if command is None:
            self._set_timer(max(self.wake_us, now + self.rng.randint(1, self.think_us_max)))
            return
        self.seq += 1
        self.op = PendingOp(-1, str(command[0]), b"", (), self.seq, now + self.config.op_deadline_us, command, service="jobs")
        self._attempt()

    @abc.abstractmethod
    def _draw_command(self) -> list[Any] | None:
        """The next command to send, or None to think a while first."""

    def on_reply(self, reply: Reply) -> None:
        op = self.op
        if (
            op is not None and op.kind != "register" and not reply.ok and isinstance(reply.value, ServiceError)
            and reply.token[1] in op.attempts and not self.stopped
        ):  # fmt: skip
            self._complete(op, reply.value)  # the service's refusal (stale lease, lost session...)
            return
        super().on_reply(reply)

    def _complete(self, op: PendingOp, value: object) -> None:
        if op.kind == "register":
            super()._complete(op, value)
            return
        self.done[op.kind] = self.done.get(op.kind, 0) + 1
        self.ack_seq = op.seq
        self.acked_writes.append((self.client_id, op.seq))
        self.op = None
        self._answered(op.request, value)
        self._set_timer(self.ctx.now_us + self.rng.randint(0, self.think_us_max))

    @abc.abstractmethod
    def _answered(self, command: list[Any], value: object) -> None:
        """``command`` got ``value`` (a result, or the service's typed refusal)."""

    def _give_up(self, op: PendingOp) -> None:
        if op.kind == "register":
            super()._give_up(op)
            return
        # Not in the KV history; the command may or may not have applied (the checker reads the log).
        self.given_up += 1
        self.op = None
        self._gave_up(op.request)
        self._set_timer(self.ctx.now_us + self.rng.randint(0, self.think_us_max))

    def _gave_up(self, command: list[Any]) -> None:
        pass

    def _unexpected(self, command: list[Any], value: object) -> CheckFailure:
        return CheckFailure("workload", f"jobs client {self.index}: unexpected answer {value!r:.200} to {command!r:.200}")


class JobsProducer(JobsClient):
    """Enqueues jobs (see the module docstring)."""

    def __init__(
        self, index: int, config: WorkloadConfig, shape: JobsShape, rng: random.Random, ctx: ClientContext, number: int
    ) -> None:
        super().__init__(index, config, shape, rng, ctx, shape.producer_think_us_max)
        self.number = number
        #: Setup commands still to send (each once acknowledged).
        self.setup: list[list[Any]] = [
            ["queue_config", "q1", {"concurrency": Q1_CONCURRENCY, "rate_max": Q1_RATE_MAX, "rate_window_ms": Q1_RATE_WINDOW_MS}]
        ]
        if number == 0:
            job = {"priority": 3, "max_attempts": 3, "backoff": BACKOFF}
            self.setup.append(
                ["schedule", SCHEDULE_NAME, "sched", b"tick", {"every_ms": shape.every_ms, "catch_up": shape.catch_up, "job": job}]
            )
        #: Job ids acknowledged to this producer (an enqueue's or a batch's), in order.
        self.acked_ids: list[str] = []
        self.made = 0

    def _draw_command(self) -> list[Any] | None:
        if self.setup:
            return self.setup[0]
        rng = self.rng
        roll = rng.randrange(100)
        if roll < 4:
            return ["dlq_purge", rng.choice(QUEUES)]  # (replicas' snapshots stay small)
        if roll < 12 and self.acked_ids:
            return ["cancel", rng.choice(self.acked_ids[-20:])]
        if roll < 20:
            return ["enqueue_batch", [self._spec() for _ in range(rng.randint(2, 3))]]
        return ["enqueue", *self._spec()]

    def _spec(self) -> list[Any]:
        rng = self.rng
        self.made += 1
        options: dict[str, Any] = {"priority": rng.choice([0, 0, 1, 5]), "max_attempts": rng.choice([1, 2, 3, 20])}
        if rng.random() < 0.3:
            options["delay_ms"] = rng.choice([100, 700, 2_500])
        if rng.random() < 0.15:
            options["unique_key"] = rng.choice(["u0", "u1"])
        if rng.random() < 0.3:
            options["timeout_ms"] = rng.choice([800, 3_000])
        if rng.random() < 0.5:
            options["backoff"] = BACKOFF
        return [rng.choice(QUEUES[:2]), b"p%d.%d" % (self.number, self.made), options]

    def _answered(self, command: list[Any], value: object) -> None:
        op = command[0]
        if op in ("queue_config", "schedule"):
            if isinstance(value, ServiceError):
                raise self._unexpected(command, value)
            self.setup.pop(0)
        elif op == "enqueue" and type(value) is str:
            self.acked_ids.append(value)
        elif op == "enqueue_batch" and isinstance(value, list):
            self.acked_ids.extend(value)
        elif op not in ("cancel", "dlq_purge") and not isinstance(value, ServiceError):
            raise self._unexpected(command, value)
        # A cancel's answer, or a refusal: the jobs checker judges every outcome against the log.


class JobsWorker(JobsClient):
    """Claims and ends jobs (see the module docstring)."""

    def __init__(
        self, index: int, config: WorkloadConfig, shape: JobsShape, rng: random.Random, ctx: ClientContext, number: int
    ) -> None:
        # Between two commands, at most a third of the session's TTL: a worker that is not paused or
        # crashed keeps its session (its heartbeat is due after half of it).
        super().__init__(index, config, shape, rng, ctx, min(shape.worker_think_us_max, shape.session_ttl_ms * 1000 // 3))
        self.name = f"w{number}"
        self.session: str | None = None
        #: Jobs held: id -> the token of its lease.
        self.held: dict[str, int] = {}
        #: Held jobs whose cancellation the service told of.
        self.cancel: set[str] = set()
        self.last_beat_us = 0
        #: After a pause: the next command completes a held job with its (maybe stale) token.
        self.late = False
        self.crashes = self.pauses = self.claims_empty = 0

    def _draw_command(self) -> list[Any] | None:
        rng, now = self.rng, self.ctx.now_us
        if self.late and self.held:
            self.late = False
            job = rng.choice(sorted(self.held))
            return ["complete", job, self.held[job], {"result": b"late"}]
        self.late = False
        if self.session is None:
            return ["session_open", self.name, self.shape.session_ttl_ms]
        roll = rng.randrange(1000)
        ttl_us = self.shape.session_ttl_ms * 1000
        if roll < 15:
            self._forget()  # a crash: the session lapses on its own, its jobs come back then
            self.crashes += 1
            return None
        wake_us = now + ttl_us * 3 // 2 + rng.randint(0, ttl_us)
        if roll < 35 and self.held and wake_us < self.stop_at_us:
            # A pause (GC, SIGSTOP) past the session's TTL, then a late completion; never past the
            # stop time (the run waits for every client to stop).
            self.pauses += 1
            self.late = True
            self.wake_us = wake_us  # nothing is sent meanwhile
            return None
        if roll < 45:
            return ["session_close", self.session]
        if now - self.last_beat_us > ttl_us // 2:
            self.last_beat_us = now
            beats: list[Any] = [[job, token, {"extend_ms": 3_000}] for job, token in sorted(self.held.items()) if rng.random() < 0.3]
            return ["heartbeat", self.session, {"jobs": beats}] if beats else ["heartbeat", self.session]
        cancelled = sorted(self.cancel & self.held.keys())
        if cancelled:
            return ["ack_cancel", cancelled[0], self.held[cancelled[0]]]
        if not self.held or (len(self.held) < 3 and rng.random() < 0.3):
            return ["claim", self.session, list(QUEUES), rng.randint(1, 3)]
        job = rng.choice(sorted(self.held))
        token = self.held[job]
        roll = rng.randrange(100)
        if roll < 65:
            return ["complete", job, token, {"result": b"done"}]
        if roll < 85:
            return ["fail", job, token, {"error": "boom"}]
        if roll < 92:
            return ["fail", job, token, {"error": "poison", "retry": False}]
        return ["release", job, token]

    def _forget(self) -> None:
        self.session = None
        self.held.clear()
        self.cancel.clear()

    def _answered(self, command: list[Any], value: object) -> None:
        op = command[0]
        if isinstance(value, WorkerSessionLost):
            self._forget()
            return
        if op == "session_open" and isinstance(value, dict):
            self.session = value["session"]
            self.last_beat_us = self.ctx.now_us
        elif op == "claim" and isinstance(value, dict):
            for lease in value["jobs"]:
                self.held[lease["id"]] = lease["token"]
            self.cancel.update(value["cancel"])
            if not value["jobs"]:
                self.wake_us = self.ctx.now_us + self.think_us_max  # nothing to do: wait longer
            self.claims_empty += not value["jobs"]
        elif op == "heartbeat" and isinstance(value, dict):
            for job in value["lost"]:
                self.held.pop(job, None)
            self.cancel.update(value["cancel"])
        elif op == "session_close" and isinstance(value, list):
            self._forget()
        elif op in ("complete", "fail", "release", "ack_cancel") and (isinstance(value, (str, ServiceError))):
            # Done, or refused as stale: either way the job is no longer this worker's.
            self.held.pop(command[1], None)
            self.cancel.discard(command[1])
        else:
            raise self._unexpected(command, value)

    def _gave_up(self, command: list[Any]) -> None:
        # The command may or may not have applied: start again from a clean slate.
        if command[0] in ("session_open", "claim", "session_close"):
            self._forget()
        elif command[0] in ("complete", "fail", "release", "ack_cancel"):
            self.held.pop(command[1], None)
