"""Each planted bug of ``JOBS_MUTANTS`` breaks a promise of the job service, and the same scenario
without it keeps the promise: the simulator's mutation tests will rely on these switches."""

from __future__ import annotations

from typing import Callable

import pytest

from tests.services.jobs.helpers import Log, digest
from trimaran.errors import StaleLease
from trimaran.services.jobs import JOBS_MUTANTS, JobsService


def make(mutant: str | None, clock: Callable[[], int] | None = None) -> Log:
    if mutant is None:
        return Log(JobsService())
    return Log(JobsService(mutants=frozenset({mutant}), local_clock_ms=clock))


def at_most_one_valid_lease(log: Log, job_id: str) -> bool:
    """Promise: while a lease is valid in log time, no other worker holds the job."""
    first = log.claim(log.session(ttl_ms=60_000))
    assert [j["id"] for j in first] == [job_id]
    log.tick(1)  # well inside the 1 s lease, in log time
    second = log.claim(log.session(ttl_ms=60_000))
    return second == []


@pytest.mark.parametrize("mutant", [None, "lease_local_clock"])
def test_lease_local_clock_hands_a_leased_job_to_a_second_worker(mutant: str | None) -> None:
    # Under the mutant, this replica's clock runs 10 s ahead of the log's.
    log = make(mutant, clock=None if mutant is None else lambda: log.now_ms + 10_000)
    job = log.enqueue(timeout_ms=1_000)
    assert at_most_one_valid_lease(log, job) is (mutant is None)


def test_lease_local_clock_makes_replicas_disagree() -> None:
    honest = make(None)
    fast = make("lease_local_clock", clock=lambda: fast.now_ms + 10_000)
    for log in (honest, fast):
        log.enqueue(timeout_ms=1_000)
        log.claim(log.session(ttl_ms=60_000))
        log.tick(1)
    assert honest.state("1-0") == "running" and fast.state("1-0") == "ready"
    assert digest(honest.svc) != digest(fast.svc)


@pytest.mark.parametrize("mutant", [None, "ack_without_fencing"])
def test_ack_without_fencing_accepts_a_stale_completion(mutant: str | None) -> None:
    log = make(mutant)
    job = log.enqueue(timeout_ms=100)
    (old,) = log.claim(log.session(ttl_ms=60_000))
    log.tick(100)
    (new,) = log.claim(log.session(ttl_ms=60_000))
    assert new["token"] > old["token"]
    if mutant is None:
        with pytest.raises(StaleLease):
            log.do(["complete", job, old["token"], {"result": b"stale"}])
        assert log.state(job) == "running"
    else:
        log.do(["complete", job, old["token"], {"result": b"stale"}])
        assert log.ask(["result", job])["result"] == b"stale", "the stale worker overwrote the newer attempt"


@pytest.mark.parametrize("mutant", [None, "claim_ignores_priority"])
def test_claim_ignores_priority_takes_fifo(mutant: str | None) -> None:
    log = make(mutant)
    log.enqueue(priority=0)
    urgent = log.enqueue(priority=9)
    (got,) = log.claim(log.session())
    assert (got["id"] == urgent) is (mutant is None)


@pytest.mark.parametrize("mutant", [None, "retry_forgets_attempts"])
def test_retry_forgets_attempts_never_dead_letters(mutant: str | None) -> None:
    log = make(mutant)
    job = log.enqueue(max_attempts=2, backoff={"kind": "fixed", "delay_ms": 0})
    s = log.session(ttl_ms=60_000)
    for _ in range(5):
        got = log.claim(s)
        if not got:
            break
        log.do(["fail", job, got[0]["token"], {"error": "poison"}])
    assert (log.state(job) == "dead") is (mutant is None)


@pytest.mark.parametrize("mutant", [None, "dead_letter_dropped"])
def test_dead_letter_dropped_loses_the_job(mutant: str | None) -> None:
    log = make(mutant)
    job = log.enqueue(max_attempts=1)
    (got,) = log.claim(log.session())
    log.do(["fail", job, got["token"], {"error": "poison"}])
    kept = [j["id"] for j in log.ask(["dlq", "q"])["items"]] == [job] and log.state(job) == "dead"
    assert kept is (mutant is None)


@pytest.mark.parametrize("mutant", [None, "schedule_local_clock"])
def test_schedule_local_clock_fires_before_the_slot_in_log_time(mutant: str | None) -> None:
    log = make(mutant, clock=None if mutant is None else lambda: log.now_ms + 10_000)
    slot = log.do(["schedule", "s", "q", b"", {"every_ms": 60_000}])
    log.entry(at_ms=slot - 5_000)
    assert (log.ask(["stats", "q"])["ready"] == 0) is (mutant is None), "a slot fires once log time reaches it"


def test_schedule_local_clock_makes_replicas_fire_different_slots() -> None:
    honest = make(None)
    fast = make("schedule_local_clock", clock=lambda: fast.now_ms + 30_000)
    for log in (honest, fast):
        log.do(["schedule", "s", "q", b"", {"every_ms": 60_000}])
        for _ in range(10):
            log.tick(20_000)
    assert digest(honest.svc) != digest(fast.svc)


def test_every_mutant_has_a_test() -> None:
    tested = {
        "lease_local_clock", "ack_without_fencing", "claim_ignores_priority", "retry_forgets_attempts",
        "dead_letter_dropped", "schedule_local_clock",
    }  # fmt: skip
    assert tested == set(JOBS_MUTANTS)
