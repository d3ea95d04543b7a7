"""Long-polling job claims: a ``claim`` with ``wait_ms`` waits on the leader until it can get a job.

A claim is a command (it leases jobs: it goes through the log). Proposing one that finds nothing
would cost a log entry per poll, so the client edge parks a claim with ``{"wait_ms": ...}`` here
when the leader's applied state has nothing claimable for it, and proposes it (exactly as it
arrived: same client session and sequence number) when

- an applied entry made a job of one of its queues ready: checked after every driver round (the
  driver's ``after_round_hooks``, as the chat gateway does), only when the applied index moved;
- a delayed job's ``run_at`` or a full rate window's end (the ``ready`` query's ``next_ms``) is
  reached by the leader's clock, which stamps the claim's entry: the service then makes the job
  ready when it applies the claim (log time, never before ``run_at``). The driver runs a round at
  least every tick, so this waits at most a tick longer;
- its wait ends: the claim is proposed and answers what it finds, usually nothing;
- this node stops being the leader: proposed at once, it is answered ``not_leader``.

No task and no timer per waiter: one pass over the waiters per round that applied something (or
reached the earliest due time), one ``ready`` lookup per distinct queue list. Several waiters on the
same queues are woken only as many as the ready jobs can serve (each takes up to its ``n``), so one
new job does not wake every idle worker; and a woken claim keeps the jobs it was woken for
promised until its answer (or, at most, the node's request timeout), so an entry applied before
it (a completion, a heartbeat) does not wake another waiter for the same job, whose claim would
then find nothing and cost an entry for it. Bounds: ``limits.job_claim_waiters_connection_max`` per
connection and ``limits.job_claim_waiters_node_max`` per node; past either, and for a claim that
is malformed (the service refuses it when applied), the claim is proposed at once. A wait is cut
to ``job_claim_wait_ms_max`` and to half the node's request timeout, so it is answered before the
request's own deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import trio

from trimaran import limits
from trimaran.errors import TrimaranError
from trimaran.node.driver import Driver, ReplyTarget
from trimaran.services.jobs import args as jobs_args
from trimaran.services.jobs.service import JobsService


@dataclass(slots=True, eq=False)
class _Woken:
    """A woken claim on its way through the log: the driver answers it here (its reply target),
    which ends its promise and hands the answer to its connection."""

    waits: ClaimWaits
    target: ReplyTarget
    queues: tuple[str, ...]
    n: int
    until_s: float

    def on_reply(self, seq: int, ok: bool, value: Any) -> None:
        self.waits._promises.pop(self, None)
        self.target.on_reply(seq, ok, value)

    def flush_replies(self) -> None:
        flush = getattr(self.target, "flush_replies", None)
        if flush is not None:
            flush()


@dataclass(slots=True, eq=False)
class _Waiter:
    target: ReplyTarget
    seq: int
    body: dict[str, Any]
    size_bytes: int
    queues: tuple[str, ...]
    n: int
    deadline_s: float


class ClaimWaits:
    """The parked claims of one node's client edge; see the module docstring."""

    def __init__(self, driver: Driver, wall_clock_ms: Callable[[], int], request_timeout_ms: int) -> None:
        self._driver = driver
        self._replica = driver.replica
        service = driver.replica.services.get("jobs")
        self._jobs = service if isinstance(service, JobsService) else None
        self._wall_clock_ms = wall_clock_ms
        self._wait_ms_max = min(limits.job_claim_wait_ms_max, request_timeout_ms // 2)
        self._request_timeout_s = request_timeout_ms / 1000
        #: Woken claims not answered yet (a dict: ordered, O(1) removal), each promised its ``n`` jobs.
        self._promises: dict[_Woken, None] = {}
        #: Parked claims in arrival order (a dict: ordered, O(1) removal).
        self._waiters: dict[_Waiter, None] = {}
        self._per_target: dict[int, int] = {}
        #: The applied index the last pass saw, and the earliest time a waiter is due (trio time).
        self._seen_index = 0
        self._due_s = float("inf")
        if self._jobs is not None:
            driver.after_round_hooks.append(self.after_round)
        #: Counters (reported by the status op).
        self.parked = 0
        self.woken = 0
        self.expired = 0
        self.refused_full = 0

    def __len__(self) -> int:
        return len(self._waiters)

    def park(self, target: ReplyTarget, seq: int, op: str, body: dict[str, Any], size_bytes: int) -> bool:
        """Park a long-polling claim that has nothing to take yet; False: propose it now."""
        if op != "command" or self._jobs is None or body["service"] != "jobs":
            return False
        command = body["command"]
        if type(command) is not list or len(command) != 5 or command[0] != "claim" or type(command[4]) is not dict:
            return False
        try:
            cmd = jobs_args.parse_command(command)
        except TrimaranError:
            return False  # refused when applied, with the service's own error
        assert isinstance(cmd, jobs_args.ClaimCmd)
        if cmd.wait_ms <= 0 or not self._replica.is_leader:
            return False
        if len(self._waiters) >= limits.job_claim_waiters_node_max or self._per_target.get(id(target), 0) >= limits.job_claim_waiters_connection_max:
            self.refused_full += 1
            return False
        now_ms = self._wall_clock_ms()
        now_s = trio.current_time()
        ready, next_ms = self._jobs.ready_in(cmd.queues, now_ms)
        ready -= sum(w.n for w in self._promises if w.queues == cmd.queues and now_s < w.until_s)
        if ready > 0 or (next_ms is not None and next_ms <= now_ms):
            return False
        waiter = _Waiter(target, seq, body, size_bytes, cmd.queues, cmd.n, now_s + min(cmd.wait_ms, self._wait_ms_max) / 1000)
        self._waiters[waiter] = None
        self._per_target[id(target)] = self._per_target.get(id(target), 0) + 1
        self._due_s = min(self._due_s, waiter.deadline_s, _due_s(next_ms, now_ms, now_s))
        self.parked += 1
        return True

    def drop(self, target: ReplyTarget) -> None:
        """The connection closed: forget its waiters (nobody reads their answers)."""
        if self._per_target.pop(id(target), None) is None:
            return
        for waiter in [w for w in self._waiters if w.target is target]:
            del self._waiters[waiter]

    def after_round(self) -> None:
        """Propose every parked claim that can now get a job, or whose wait ended (a driver hook)."""
        if not self._waiters:
            return
        applied = self._replica.applied_index
        now_s = trio.current_time()
        if applied == self._seen_index and now_s < self._due_s and self._replica.is_leader:
            return
        self._seen_index = applied
        assert self._jobs is not None
        leader = self._replica.is_leader
        now_ms = self._wall_clock_ms()
        #: queue list -> [ready jobs not yet promised to a woken waiter, next_ms]
        looked: dict[tuple[str, ...], list[Any]] = {}
        promised: dict[tuple[str, ...], int] = {}
        for woken_claim in list(self._promises):
            if now_s >= woken_claim.until_s or not leader:
                del self._promises[woken_claim]  # (never answered in time: promise no longer)
            else:
                promised[woken_claim.queues] = promised.get(woken_claim.queues, 0) + woken_claim.n
        due_s = float("inf")
        woken: list[_Waiter] = []
        for waiter in self._waiters:
            if not leader or now_s >= waiter.deadline_s:
                woken.append(waiter)
                self.expired += leader
                continue
            seen = looked.get(waiter.queues)
            if seen is None:
                ready, next_ms = self._jobs.ready_in(waiter.queues, now_ms)
                seen = looked[waiter.queues] = [ready - promised.get(waiter.queues, 0), next_ms]
            ready, next_ms = seen
            if ready > 0 or (next_ms is not None and next_ms <= now_ms):
                seen[0] = ready - waiter.n
                woken.append(waiter)
                self.woken += 1
                continue
            due_s = min(due_s, waiter.deadline_s, _due_s(next_ms, now_ms, now_s))
        self._due_s = due_s
        for waiter in woken:
            del self._waiters[waiter]
            key = id(waiter.target)
            left = self._per_target[key] - 1
            if left:
                self._per_target[key] = left
            else:
                del self._per_target[key]
            target: ReplyTarget = waiter.target
            if leader and now_s < waiter.deadline_s:  # woken for jobs: they are promised to it
                target = woken_claim = _Woken(self, waiter.target, waiter.queues, waiter.n, now_s + self._request_timeout_s)
                self._promises[woken_claim] = None
            self._driver.submit_client_nowait("command", waiter.body, (target, waiter.seq), waiter.size_bytes)


def _due_s(next_ms: int | None, now_ms: int, now_s: float) -> float:
    return float("inf") if next_ms is None else now_s + (next_ms - now_ms) / 1000
