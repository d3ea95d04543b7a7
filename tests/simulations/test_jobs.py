"""The jobs checker (simulations/jobs_check.py): the model agrees with the real service on what the
workload does, each of its checks fails on the answer it exists to refuse, and a simulated run
drives every path of the workload (claims, completions, retries, dead letters, lapses, stale
completions, cancellations, schedule slots)."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from trimaran.errors import TrimaranError
from trimaran.protocols.service import ApplyContext
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.jobs_check import JobsRecord, RecordingJobs
from trimaran.simulations.loop import SimConfig, Simulation
from trimaran.simulations.plan import draw_plan
from trimaran.simulations.workload import draw_workload

TIMEOUT_MS = 60_000
RESULT_TTL_MS = 3_000
T0 = 1_000_000


class Replica:
    """One replica's jobs service fed entries as the Replica feeds them: on_time, then commands."""

    def __init__(self, record: JobsRecord, node_id: int = 1, mutants: frozenset[str] = frozenset()) -> None:
        settings: dict[str, Any] = {"default_timeout_ms": TIMEOUT_MS, "default_result_ttl_ms": RESULT_TTL_MS}
        self.service = RecordingJobs(node_id, record, mutants=mutants, **settings)
        self.index = 0

    def entry(self, time_ms: int, *commands: list[Any]) -> list[Any]:
        self.index += 1
        ctx = ApplyContext(self.index, time_ms)
        self.service.on_time(ctx)
        out: list[Any] = []
        for command in commands:
            try:
                out.append(self.service.apply(command, ctx))
            except TrimaranError as exc:  # the service's refusal is an answer here
                out.append(exc)
        return out


def _clocked(record: JobsRecord, mutant: str, clock: Callable[[], int]) -> RecordingJobs:
    """A replica's service with a ``*_local_clock`` mutant reading ``clock``."""
    settings: dict[str, Any] = {"default_timeout_ms": TIMEOUT_MS, "default_result_ttl_ms": RESULT_TTL_MS}
    return RecordingJobs(1, record, mutants=frozenset({mutant}), local_clock_ms=clock, **settings)


def _session(r: Replica, t: int, ttl_ms: int = 1_000) -> str:
    (opened,) = r.entry(t, ["session_open", "w", ttl_ms])
    return str(opened["session"])


def test_the_model_agrees_with_the_service_on_a_busy_log() -> None:
    record = JobsRecord(TIMEOUT_MS, RESULT_TTL_MS)
    r = Replica(record)
    r.entry(T0, ["queue_config", "q1", {"concurrency": 1}], ["schedule", "tick", "sched", b"t", {"every_ms": 100, "catch_up": True}])
    a, b, c = r.entry(
        T0 + 1, ["enqueue", "q0", b"a"], ["enqueue", "q0", b"b", {"priority": 5}], ["enqueue", "q1", b"c", {"max_attempts": 1}]
    )
    batch = [["q0", b"d", {"delay_ms": 500}], ["q1", b"e", {"unique_key": "u"}], ["q1", b"f", {"unique_key": "u"}]]
    (ids,) = r.entry(T0 + 2, ["enqueue_batch", batch])
    assert ids[1] == ids[2]  # one live job per unique key
    s = _session(r, T0 + 3)
    (claim,) = r.entry(T0 + 4, ["claim", s, ["q0", "q1", "sched"], 3])
    assert [lease["id"] for lease in claim["jobs"]] == [b, a, c]  # priority, FIFO, q1's limit of one
    r.entry(T0 + 5, ["complete", b, claim["jobs"][0]["token"]], ["fail", c, claim["jobs"][2]["token"], {"error": "x"}])
    r.entry(T0 + 6, ["cancel", a])
    r.entry(T0 + 350, ["heartbeat", s])  # catch-up fires the schedule's slots 1..3 at once
    r.entry(T0 + 2_000, ["claim", s, ["q0", "q1", "sched"], 10])  # the session lapsed: refused
    s2 = _session(r, T0 + 2_001)
    r.entry(T0 + 2_002, ["claim", s2, ["q0", "q1", "sched"], 10])
    model = record.model
    assert model.counts["slots"] >= 3 and model.counts["dead"] == 1 and model.counts["completed"] == 1
    assert model.counts["lapsed"] == 1 and model.counts["cancelled"] == 1


def test_a_second_replica_that_answers_otherwise_is_a_divergence() -> None:
    record = JobsRecord(TIMEOUT_MS, RESULT_TTL_MS)
    first, second = Replica(record, 1), Replica(record, 2, mutants=frozenset({"claim_ignores_priority"}))
    log = [
        (T0, [["enqueue", "q0", b"a"], ["enqueue", "q0", b"b", {"priority": 5}]]),
        (T0 + 1, [["session_open", "w", 1_000]]),
        (T0 + 2, [["claim", "s2-0", ["q0"], 1]]),
    ]
    for time_ms, commands in log:
        first.entry(time_ms, *commands)
    with pytest.raises(CheckFailure, match="replicas_diverge"):
        for time_ms, commands in log:
            second.entry(time_ms, *commands)


def _lapse_and_late_completion(r: Replica) -> None:
    """A worker's session lapses and another claims its job; the first completes late. Then a job
    fails for good (dead) and is cancelled (its end stands)."""
    low, high = r.entry(T0, ["enqueue", "q0", b"low", {"max_attempts": 2}], ["enqueue", "q0", b"high", {"priority": 9}])
    s = _session(r, T0 + 1, ttl_ms=100)
    (claim,) = r.entry(T0 + 2, ["claim", s, ["q0"], 1])
    job, token = claim["jobs"][0]["id"], claim["jobs"][0]["token"]
    s2 = _session(r, T0 + 200, ttl_ms=10_000)
    (again,) = r.entry(T0 + 201, ["claim", s2, ["q0"], 1])
    r.entry(T0 + 202, ["complete", job, token])
    r.entry(T0 + 203, ["fail", job, again["jobs"][0]["token"], {"error": "x"}])
    s3 = _session(r, T0 + 60_000, ttl_ms=10_000)
    (both,) = r.entry(T0 + 60_001, ["claim", s3, ["q0"], 2])
    assert [lease["id"] for lease in both["jobs"]] == [high, low]
    r.entry(T0 + 60_002, ["fail", low, both["jobs"][1]["token"], {"retry": False, "error": "poison"}])
    assert r.entry(T0 + 60_003, ["cancel", low], ["cancel", high]) == ["dead", "cancelling"]


def test_the_late_completion_script_passes_without_a_mutant() -> None:
    record = JobsRecord(TIMEOUT_MS, RESULT_TTL_MS)
    _lapse_and_late_completion(Replica(record))
    assert record.model.counts["stale"] == 1 and record.model.counts["dead"] == 1


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        ("ack_without_fencing", "accepted from the stale token"),
        ("claim_ignores_priority", "by priority, then FIFO"),
        ("retry_forgets_attempts", "as attempt 1; it had run 1 counted"),
        ("dead_letter_dropped", r"'not_found'\); the model expects \('ok', 'dead'\)"),
    ],
)
def test_each_mutant_of_the_service_fails_the_model(mutant: str, message: str) -> None:
    r = Replica(JobsRecord(TIMEOUT_MS, RESULT_TTL_MS), mutants=frozenset({mutant}))
    with pytest.raises(CheckFailure, match=message):
        _lapse_and_late_completion(r)


def test_a_claim_while_a_lease_is_valid_is_two_leases() -> None:
    """A replica that lapses a lease early (by its own clock) leases the job twice."""
    record = JobsRecord(TIMEOUT_MS, RESULT_TTL_MS)
    clock_ms = [0]
    r = Replica(record)
    r.service = _clocked(record, "lease_local_clock", lambda: clock_ms[0])
    r.entry(T0, ["enqueue", "q0", b"a"])
    s = _session(r, T0 + 1, ttl_ms=1_000)
    r.entry(T0 + 2, ["claim", s, ["q0"], 1])
    s2 = _session(r, T0 + 3, ttl_ms=100_000)
    clock_ms[0] = T0 + 5_000  # this replica's clock runs ahead of log time
    with pytest.raises(CheckFailure, match="two valid leases"):
        r.entry(T0 + 4, ["claim", s2, ["q0"], 1])


def test_a_schedule_slot_fired_before_its_time_fails() -> None:
    record = JobsRecord(TIMEOUT_MS, RESULT_TTL_MS)
    clock_ms = [0]
    r = Replica(record)
    r.service = _clocked(record, "schedule_local_clock", lambda: clock_ms[0])
    r.entry(T0, ["schedule", "tick", "sched", b"t", {"every_ms": 1_000}])
    clock_ms[0] = T0 + 1_500
    with pytest.raises(CheckFailure, match="not due"):
        r.entry(T0 + 10, ["enqueue", "q0", b"a"])


def test_a_simulated_run_drives_every_path_of_the_workload() -> None:
    # A seed whose run takes every path (found by trying 1, 2, ...; it moves when the message
    # pattern does: 1 -> 7 when the chat workload joined every run, 7 -> 2 when read rounds went
    # to the last round's quorum only).
    seed = 2
    config = SimConfig(seed=seed, sim_seconds=40.0)
    sim = Simulation(config, draw_plan(seed, config.nodes, config.heal_us // 1000), draw_workload(seed))
    sim.run()
    assert sim.failure is None, sim.failure
    counts = sim.jobs_record.model.counts
    for what in ("enqueued", "claimed", "completed", "retried", "dead", "cancelled", "lapsed", "stale", "slots"):
        assert counts.get(what, 0) > 0, (what, counts)
