"""Property tests of the job service against the naive model in ``jobs_model``, driven by a fake log.

Each step is one log entry: log time moves by a small drawn amount (so delays, leases, sessions,
result TTLs and rate windows often end exactly at an entry's timestamp), ``on_time`` runs, then a
few commands are drawn one at a time from the model's current state (real and stale tokens, live
and lapsed sessions, known and unknown jobs) and applied to both. Every result must agree, and after
each entry every job, queue, session and schedule must look the same through the queries. A
snapshot -> restore in the middle of a run must be byte-identical and change nothing after.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.services.jobs.jobs_model import ModelJobs
from trimaran.errors import TrimaranError
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.service import ApplyContext
from trimaran.services.jobs import JobsService

QUEUES = ["a", "b"]
GROUPS = ["", "", "g1", "g2"]
SMALL_QUEUE_JOBS_MAX = 1_000  # the least the service accepts; the model is told the same


@st.composite
def enqueue_options(draw: st.DrawFn, model: ModelJobs) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if draw(st.booleans()):
        opts["priority"] = draw(st.integers(-1, 2))
    if draw(st.booleans()):
        opts["delay_ms"] = draw(st.sampled_from([0, 3, 10, 40]))
    if draw(st.integers(0, 3)) == 0:
        opts["unique_key"] = draw(st.sampled_from(["u1", "u2"]))
        opts["unique_window_ms"] = draw(st.sampled_from([0, 0, 15]))
    opts["max_attempts"] = draw(st.integers(1, 3))
    if draw(st.booleans()):
        kind = draw(st.sampled_from(["fixed", "exponential"]))
        opts["backoff"] = {"kind": kind, "delay_ms": draw(st.sampled_from([0, 2, 7])), "max_ms": 20, "jitter_pct": draw(st.sampled_from([0, 50]))}
    opts["timeout_ms"] = draw(st.sampled_from([5, 30, 100]))
    opts["result_ttl_ms"] = draw(st.sampled_from([0, 10, 50]))
    if draw(st.integers(0, 4)) == 0:
        opts["expires_at_ms"] = model.now + draw(st.integers(0, 30))
    if model.jobs and draw(st.integers(0, 3)) == 0:
        known = sorted(model.jobs)
        opts["depends_on"] = draw(st.lists(st.sampled_from(known), min_size=1, max_size=2, unique=True))
    elif draw(st.integers(0, 30)) == 0:
        opts["depends_on"] = ["999-0"]  # unknown: NotFound
    group = draw(st.sampled_from(GROUPS))
    if group:
        opts["group"] = group
    return opts


@st.composite
def commands(draw: st.DrawFn, model: ModelJobs, sessions: list[str], tokens: list[tuple[str, int]]) -> list[Any]:
    """One well-formed command, drawn from what the model holds now."""
    running = [j for j in model.jobs.values() if j["state"] == "running"]
    ops = ["enqueue"] * 4 + ["enqueue_batch", "session_open", "claim", "claim", "claim", "heartbeat", "cancel", "pause", "queue_config", "dlq"]
    if running:
        ops += ["complete", "complete", "complete_batch", "fail", "fail", "release", "ack_cancel", "stale"]
    if model.sessions:
        ops += ["claim", "claim", "session_close"]
    else:
        ops += ["session_open", "session_open"]
    ops += ["schedule"]
    op = draw(st.sampled_from(ops))
    queue = draw(st.sampled_from(QUEUES))
    live = sorted(model.sessions)
    pick_live = draw(st.integers(0, 4)) > 0
    if live and pick_live:
        session = draw(st.sampled_from(live))  # mostly a live session; sometimes a lapsed or closed one
    else:
        session = draw(st.sampled_from(sessions)) if sessions else "s0-0"
    if op == "enqueue":
        return ["enqueue", queue, draw(st.binary(max_size=3)), draw(enqueue_options(model))]
    if op == "enqueue_batch":
        n = draw(st.integers(1, 3))
        return ["enqueue_batch", [[draw(st.sampled_from(QUEUES)), b"", draw(enqueue_options(model))] for _ in range(n)]]
    if op == "session_open":
        return ["session_open", "w", draw(st.sampled_from([20, 60, 200]))]
    if op == "session_close":
        return ["session_close", session]
    if op == "claim":
        names = draw(st.lists(st.sampled_from(QUEUES), min_size=1, max_size=2, unique=True))
        return ["claim", session, names, draw(st.integers(1, 3))]
    if op == "heartbeat":
        mine = [j for j in running if j["session"] == session]
        beats: list[list[Any]] = []
        for j in mine[: draw(st.integers(0, 2))]:
            extra = {"extend_ms": draw(st.sampled_from([None, 10, 100])), "progress": draw(st.sampled_from([None, b"50%"]))}
            beats.append([j["id"], j["token"], extra])
        stale_beat = draw(st.booleans())
        if tokens and stale_beat:
            beats.append(list(draw(st.sampled_from(tokens))))
        return ["heartbeat", session, {"jobs": beats}]
    if op in ("complete", "fail", "release", "ack_cancel"):
        job = draw(st.sampled_from(running))
        args = [op, job["id"], job["token"]]
        if op == "complete":
            args.append({"result": b"r"})
        elif op == "fail":
            args.append({"error": "e", "retry": draw(st.sampled_from([None, True, False]))})
        return args
    if op == "complete_batch":  # current leases, stale tokens and repeats, in any order
        picks = draw(st.lists(st.sampled_from([(j["id"], j["token"]) for j in running] + tokens), min_size=1, max_size=4))
        return ["complete_batch", [[job_id, token, {"result": b"b"}] if draw(st.booleans()) else [job_id, token] for job_id, token in picks]]
    if op == "stale":
        job_id, token = draw(st.sampled_from(tokens)) if tokens else ("1-0", 1)
        return [draw(st.sampled_from(["complete", "fail", "release", "ack_cancel"])), job_id, token]
    if op == "cancel":
        known = sorted(model.jobs) or ["1-0"]
        return ["cancel", draw(st.sampled_from(known))]
    if op == "pause":
        return [draw(st.sampled_from(["pause", "resume", "resume"])), queue]
    if op == "queue_config":
        key = draw(st.sampled_from(["concurrency", "rate_max", "rate_window_ms", "group_concurrency", "group_rate_max", "group_rate_window_ms"]))
        value = draw(st.sampled_from([0, 1, 2, 25] if key.endswith("window_ms") else [0, 1, 2]))
        return ["queue_config", queue, {key: value}]
    if op == "dlq":
        dead = model.dlq(queue)
        name_some = draw(st.booleans())
        chosen = draw(st.lists(st.sampled_from(dead), max_size=2, unique=True)) if dead and name_some else None
        return [draw(st.sampled_from(["dlq_requeue", "dlq_purge"])), queue, {"jobs": chosen or None}]
    assert op == "schedule"
    name = draw(st.sampled_from(["s1", "s2"]))
    if draw(st.integers(0, 3)) == 0:
        return ["unschedule", name]
    opts: dict[str, Any] = {"every_ms": draw(st.sampled_from([7, 25]))}
    if draw(st.booleans()):
        opts["start_ms"] = model.now + draw(st.integers(-30, 30))
    if draw(st.booleans()):
        opts["job"] = {"priority": 1, "unique_key": "sched", "result_ttl_ms": 5}
    return ["schedule", name, queue, b"s", opts]


def outcome(fn: Any, *a: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*a))
    except TrimaranError as exc:
        return ("err", type(exc))


class JobsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.svc = JobsService(queue_jobs_max=SMALL_QUEUE_JOBS_MAX)
        self.model = ModelJobs(queue_jobs_max=SMALL_QUEUE_JOBS_MAX)
        self.index = 0
        self.now = 1_000_000
        self.ever_ids: list[str] = []
        self.sessions: list[str] = []
        self.tokens: list[tuple[str, int]] = []  # every lease handed out (most are stale later)

    @rule(data=st.data(), step_ms=st.sampled_from([0, 1, 2, 5, 10, 30]), count=st.integers(0, 4), gap=st.integers(1, 2))
    def entry(self, data: st.DataObject, step_ms: int, count: int, gap: int) -> None:
        self.index += gap  # a gap stands for a no-op or membership entry
        self.now += step_ms
        ctx = ApplyContext(self.index, self.now)
        self.svc.on_time(ctx)
        self.model.advance(self.index, self.now)
        for _ in range(count):
            cmd = data.draw(commands(self.model, self.sessions, self.tokens))
            got = outcome(self.svc.apply, cmd, ctx)
            want = self.model.apply(cmd)
            assert got == want, (cmd, got, want)
            self.learn(cmd, got)

    def learn(self, cmd: list[Any], got: tuple[str, Any]) -> None:
        if got[0] != "ok":
            return
        if cmd[0] == "enqueue":
            self.ever_ids.append(got[1])
        elif cmd[0] == "enqueue_batch":
            self.ever_ids.extend(got[1])
        elif cmd[0] == "session_open":
            self.sessions.append(got[1]["session"])
        elif cmd[0] == "claim":
            self.tokens.extend((j["id"], j["token"]) for j in got[1]["jobs"])

    @rule()
    def snapshot_and_restore(self) -> None:
        data = unpack(pack(self.svc.snapshot()))
        fresh = JobsService(queue_jobs_max=SMALL_QUEUE_JOBS_MAX)
        fresh.restore(data)
        assert pack(fresh.snapshot()) == pack(self.svc.snapshot())
        self.svc = fresh

    @invariant()
    def same_observable_state(self) -> None:
        ctx = ApplyContext(max(self.index, 1), self.now)
        ask = self.svc.query
        for job_id in self.ever_ids + list(self.model.jobs):
            assert ask(["job", job_id], ctx) == self.model.view(job_id), job_id
        for queue in QUEUES:
            assert ask(["stats", queue], ctx) == self.model.stats(queue)
            assert [j["id"] for j in ask(["dlq", queue], ctx)["items"]] == self.model.dlq(queue)
            listed = [j["id"] for j in ask(["list", queue, {"limit": 1_000}], ctx)["items"]]
            assert listed == [j for j, job in self.model.jobs.items() if job["queue"] == queue]
        assert ask(["ready", QUEUES], ctx) == self.model.ready_query(QUEUES)
        for session in self.sessions:
            assert ask(["session", session], ctx) == self.model.session_view(session)
        assert ask(["schedules"], ctx) == self.model.schedules_view()
        deadline = self.svc.next_deadline_ms()
        events = self.model.events()
        assert deadline == (min(e[0] for e in events) if events else None)


JobsMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
TestJobsAgainstModel = JobsMachine.TestCase
