"""Unit tests of the job service: every command, query and error, one behaviour per test."""

from __future__ import annotations

from typing import Any

import pytest

from tests.services.jobs.helpers import Log, digest
from trimaran import limits
from trimaran.errors import (
    ConfigError,
    InvalidArgument,
    NotFound,
    QueueFull,
    StaleLease,
    TooLarge,
    TrimaranError,
    WorkerSessionLost,
    error_from_wire,
)
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.service import Service
from trimaran.services.jobs import JobsService
from trimaran.services.jobs.args import Backoff
from trimaran.services.jobs.backoff import retry_delay_ms


@pytest.fixture
def log() -> Log:
    return Log()


def ids(jobs: list[dict[str, Any]]) -> list[str]:
    return [j["id"] for j in jobs]


def test_jobs_service_satisfies_the_service_protocol() -> None:
    svc: Service = JobsService()
    assert svc.name == "jobs"


def test_new_errors_cross_the_wire_as_themselves() -> None:
    for cls in (NotFound, QueueFull, StaleLease, WorkerSessionLost):
        again = error_from_wire(unpack(pack(cls("x", job="1-0").to_wire())))
        assert type(again) is cls and again.details == {"job": "1-0"}


# ---------------------------------------------------------------------------- ids, claim order


def test_job_ids_come_from_the_entry_index_and_position(log: Log) -> None:
    assert log.do(["enqueue_batch", [["q", b"a"], ["q", b"b"], ["r", b"c", {"priority": 3}]]]) == ["1-0", "1-1", "1-2"]
    assert log.enqueue() == "2-0"
    assert log.entry(["enqueue", "q", b"x"], ["enqueue", "q", b"y"]) == ["3-0", "3-1"]


def test_claim_takes_higher_priority_first_then_fifo(log: Log) -> None:
    low = log.enqueue(priority=-1)
    a = log.enqueue()
    high = log.enqueue(priority=7)
    b = log.enqueue()
    s = log.session()
    assert ids(log.claim(s, n=10)) == [high, a, b, low]


def test_claim_merges_several_queues_in_one_order(log: Log) -> None:
    a = log.enqueue("q1")
    b = log.enqueue("q2", priority=1)
    c = log.enqueue("q1")
    s = log.session()
    assert ids(log.claim(s, ["q1", "q2"], n=2)) == [b, a]
    assert ids(log.claim(s, ["q2"], n=5)) == []
    assert ids(log.claim(s, ["q1", "q2", "nope"], n=5)) == [c]


def test_claim_gives_attempt_token_and_lease(log: Log) -> None:
    job = log.enqueue(timeout_ms=500)
    s = log.session()
    (got,) = log.claim(s)
    assert (got["id"], got["attempt"], got["token"], got["lease_until_ms"]) == (job, 1, log.index, log.now_ms + 500)
    assert got["payload"] == b"p"


def test_a_delayed_job_is_never_claimed_before_its_run_time(log: Log) -> None:
    job = log.enqueue(delay_ms=100)
    s = log.session()
    assert log.state(job) == "delayed"
    log.tick(99)
    assert log.claim(s) == []
    assert log.ask(["ready", ["q"]]) == {"ready": 0, "next_ms": log.now_ms + 1}
    log.tick(1)
    assert log.state(job) == "ready"
    assert ids(log.claim(s)) == [job]


def test_run_at_ms_is_absolute_log_time(log: Log) -> None:
    job = log.enqueue(run_at_ms=log.now_ms + 50)
    log.tick(49)
    assert log.state(job) == "delayed"
    log.tick(1)
    assert log.state(job) == "ready"


def test_fifo_is_by_the_time_a_job_became_ready(log: Log) -> None:
    late = log.enqueue(delay_ms=10)
    early = log.enqueue()
    log.tick(20)
    s = log.session()
    assert ids(log.claim(s, n=2)) == [early, late]


def test_paused_queue_hands_out_nothing_until_resumed(log: Log) -> None:
    job = log.enqueue()
    assert log.do(["pause", "q"]) is True
    assert log.do(["pause", "q"]) is False
    s = log.session()
    assert log.claim(s) == []
    assert log.ask(["ready", ["q"]])["ready"] == 0
    assert log.do(["resume", "q"]) is True
    assert ids(log.claim(s)) == [job]


# ---------------------------------------------------------------------------- leases and fencing


def test_complete_with_the_current_token_keeps_the_result(log: Log) -> None:
    job = log.enqueue()
    s = log.session()
    (got,) = log.claim(s)
    assert log.do(["complete", job, got["token"], {"result": b"42"}]) == "completed"
    assert log.ask(["result", job]) == {"state": "completed", "result": b"42", "error": None, "attempt": 1, "finished_at_ms": log.now_ms}


def test_a_stale_token_is_refused_and_changes_nothing(log: Log) -> None:
    job = log.enqueue(timeout_ms=100)
    s1 = log.session(ttl_ms=60_000)
    (first,) = log.claim(s1)
    log.tick(100)  # the lease lapses in log time
    s2 = log.session(ttl_ms=60_000)
    (second,) = log.claim(s2)
    assert second["token"] > first["token"] and second["attempt"] == 2
    before = digest(log.svc)
    for cmd in (["complete", job, first["token"]], ["fail", job, first["token"]], ["release", job, first["token"]], ["ack_cancel", job, first["token"]]):
        with pytest.raises(StaleLease):
            log.do(cmd)
    assert digest(log.svc) == before
    assert log.do(["complete", job, second["token"]]) == "completed"
    with pytest.raises(StaleLease):
        log.do(["complete", job, second["token"]])  # ended: no lease is current


def test_complete_batch_fences_each_job_alone_like_completes_in_order(log: Log) -> None:
    jobs = [log.enqueue(timeout_ms=100) for _ in range(3)]
    s1 = log.session(ttl_ms=60_000)
    a, b, c = log.claim(s1, n=3)
    log.tick(100)  # every lease lapses in log time; b and c are claimed again
    s2 = log.session(ttl_ms=60_000)
    b2, c2 = log.claim(s2, n=2)
    assert (b2["id"], c2["id"]) == (jobs[0], jobs[1]) and b2["token"] > b["token"]
    (a2,) = log.claim(s2)
    batch = [
        [b2["id"], b2["token"], {"result": b"one"}],
        [c2["id"], c["token"]],  # the lapsed lease's token: refused alone
        [a2["id"], a2["token"], {"result": b"three"}],
        [b2["id"], b2["token"]],  # the same job again, ended by the first item: no lease is current
        ["9-9", 3],  # a job nobody holds
    ]
    twin = Log()
    twin.svc.restore(log.svc.snapshot())
    twin.index, twin.now_ms = log.index, log.now_ms
    assert log.do(["complete_batch", batch]) == ["completed", "stale_lease", "completed", "stale_lease", "stale_lease"]
    singles = twin.entry(*(["complete", *item] for item in batch))  # the same jobs one by one, in one entry
    assert [x if isinstance(x, str) else x.code for x in singles] == ["completed", "stale_lease", "completed", "stale_lease", "stale_lease"]
    assert digest(log.svc) == digest(twin.svc)
    assert log.ask(["result", b2["id"]])["result"] == b"one" and log.state(c2["id"]) == "running"


def test_unknown_job_token_is_stale(log: Log) -> None:
    with pytest.raises(StaleLease):
        log.do(["complete", "9-9", 3])


def test_a_job_lease_ends_at_its_timeout_and_counts_an_attempt(log: Log) -> None:
    job = log.enqueue(timeout_ms=1_000)
    s = log.session(ttl_ms=60_000)
    log.claim(s)
    log.tick(999)
    assert log.state(job) == "running"
    log.tick(1)
    view = log.ask(["job", job])
    assert (view["state"], view["attempt"], view["error"]) == ("ready", 1, "lease timed out")
    assert log.ask(["session", s])["jobs"] == []


def test_heartbeat_keeps_the_session_and_extends_a_job(log: Log) -> None:
    job = log.enqueue(timeout_ms=1_000)
    s = log.session(ttl_ms=500)
    (got,) = log.claim(s)
    for _ in range(4):
        log.tick(400)
        out = log.do(["heartbeat", s, {"jobs": [[job, got["token"], {"extend_ms": 1_000, "progress": b"50%"}]]}])
        assert out == {"expires_at_ms": log.now_ms + 500, "cancel": [], "lost": []}
    assert log.state(job) == "running"
    assert log.ask(["job", job])["progress"] == b"50%"
    log.tick(500)  # no heartbeat: the session lapses, its job is released
    assert log.state(job) == "ready"
    with pytest.raises(WorkerSessionLost):
        log.do(["heartbeat", s])


def test_heartbeat_reports_jobs_it_no_longer_holds(log: Log) -> None:
    job = log.enqueue()
    s = log.session()
    (got,) = log.claim(s)
    out = log.do(["heartbeat", s, {"jobs": [[job, got["token"] + 1], ["7-7", 3]]}])
    assert out["lost"] == [job, "7-7"]


def test_session_lapse_releases_all_its_jobs_at_once(log: Log) -> None:
    jobs = [log.enqueue() for _ in range(3)]
    s = log.session(ttl_ms=1_000)
    log.claim(s, n=3)
    log.tick(999)
    assert [log.state(j) for j in jobs] == ["running"] * 3
    log.tick(1)
    assert [log.state(j) for j in jobs] == ["ready"] * 3
    assert log.ask(["session", s]) is None
    with pytest.raises(WorkerSessionLost):
        log.claim(s)


def test_session_close_gives_jobs_back_without_counting_the_attempt(log: Log) -> None:
    job = log.enqueue()
    s = log.session()
    log.claim(s)
    assert log.do(["session_close", s]) == [job]
    view = log.ask(["job", job])
    assert (view["state"], view["attempt"]) == ("ready", 0)


def test_release_returns_the_job_uncounted(log: Log) -> None:
    job = log.enqueue()
    s = log.session()
    (got,) = log.claim(s)
    log.tick(1)
    assert log.do(["release", job, got["token"]]) == "ready"
    assert log.ask(["job", job])["attempt"] == 0


def test_a_job_returned_in_the_entry_that_claimed_it_waits_for_the_next_entry(log: Log) -> None:
    job = log.enqueue()
    s = log.session()
    token = log.index + 1  # the claim's entry
    out = log.entry(["claim", s, ["q"], 1], ["release", job, token], ["claim", s, ["q"], 1])
    assert ids(out[0]["jobs"]) == [job] and out[1] == "delayed" and out[2]["jobs"] == []
    (again,) = log.claim(s)
    assert again["token"] > token


def test_a_lease_lost_on_the_last_attempt_dead_letters(log: Log) -> None:
    job = log.enqueue(max_attempts=1, timeout_ms=10)
    s = log.session(ttl_ms=60_000)
    log.claim(s)
    log.tick(10)
    assert log.state(job) == "dead"


def test_claim_respects_the_session_job_bound(log: Log) -> None:
    log.do(["enqueue_batch", [["q", b""] for _ in range(5)]])
    s = log.session()
    assert len(log.claim(s, n=5)) == 5


# ---------------------------------------------------------------------------- retries, dead letters


def test_fail_retries_after_the_backoff(log: Log) -> None:
    backoff = {"kind": "fixed", "delay_ms": 100, "jitter_pct": 0}
    job = log.enqueue(backoff=backoff)
    s = log.session(ttl_ms=60_000)
    (got,) = log.claim(s)
    assert log.do(["fail", job, got["token"], {"error": "boom"}]) == "delayed"
    log.tick(99)
    assert log.claim(s) == []
    log.tick(1)
    (again,) = log.claim(s)
    assert again["attempt"] == 2 and log.ask(["job", job])["error"] == "boom"


def test_exponential_backoff_doubles_to_its_cap_with_a_deterministic_jitter() -> None:
    plain = Backoff("exponential", 100, 1_000, 0)
    assert [retry_delay_ms(plain, "1-0", n) for n in range(1, 7)] == [100, 200, 400, 800, 1_000, 1_000]
    assert retry_delay_ms(Backoff("fixed", 100, 100, 0), "1-0", 9) == 100
    jittered = Backoff("exponential", 1_000, 10_000, 50)
    delays = [retry_delay_ms(jittered, f"{i}-0", 1) for i in range(50)]
    assert all(500 <= d <= 1_000 for d in delays) and len(set(delays)) > 10, "spread, within half"
    assert delays == [retry_delay_ms(jittered, f"{i}-0", 1) for i in range(50)], "a function of the id"
    assert retry_delay_ms(Backoff("exponential", 1, 10**9, 0), "x", 1_000) == 10**9


def test_after_max_attempts_a_job_is_dead_and_kept(log: Log) -> None:
    job = log.enqueue(max_attempts=2, backoff={"kind": "fixed", "delay_ms": 0})
    s = log.session(ttl_ms=60_000)
    for expected in ("ready", "dead"):
        (got,) = log.claim(s)
        assert log.do(["fail", job, got["token"], {"error": "x"}]) == expected
    assert log.ask(["stats", "q"])["dead"] == 1
    log.tick(limits.job_result_ttl_ms_max + 1)
    assert log.state(job) == "dead", "never dropped"
    assert ids(log.ask(["dlq", "q"])["items"]) == [job]


def test_fail_without_retry_goes_straight_to_dead(log: Log) -> None:
    job = log.enqueue()
    s = log.session()
    (got,) = log.claim(s)
    assert log.do(["fail", job, got["token"], {"error": "bad input", "retry": False}]) == "dead"


def test_dlq_requeue_resets_attempts_and_purge_deletes(log: Log) -> None:
    a, b, c = (log.enqueue(max_attempts=1) for _ in range(3))
    s = log.session()
    for got in log.claim(s, n=3):
        log.do(["fail", got["id"], got["token"], {"retry": False}])
    page = log.ask(["dlq", "q", {"limit": 2}])
    assert ids(page["items"]) == [a, b] and page["next"] == b
    assert ids(log.ask(["dlq", "q", {"start_after": b}])["items"]) == [c]
    assert log.do(["dlq_requeue", "q", {"jobs": [b]}]) == [b]
    view = log.ask(["job", b])
    assert (view["state"], view["attempt"]) == ("ready", 0)
    with pytest.raises(NotFound):
        log.do(["dlq_purge", "q", {"jobs": [b]}])  # not dead any more: nothing purged
    assert log.do(["dlq_purge", "q"]) == 2
    assert log.state(a) is None and log.ask(["stats", "q"])["held"] == 1


# ---------------------------------------------------------------------------- dedup, dependencies


def test_unique_key_returns_the_live_job(log: Log) -> None:
    first = log.enqueue(unique_key="k")
    assert log.enqueue(unique_key="k") == first
    assert log.enqueue("other", unique_key="k") != first, "keys are per queue"
    assert log.do(["enqueue_batch", [["q", b"", {"unique_key": "k2"}], ["q", b"", {"unique_key": "k2"}]]]) == ["4-0", "4-0"]
    s = log.session()
    got = log.claim(s)[0]
    assert log.enqueue(unique_key="k") == first, "running is live"
    log.do(["complete", first, got["token"]])
    assert log.enqueue(unique_key="k") != first


def test_unique_window_keeps_the_key_after_completion(log: Log) -> None:
    first = log.enqueue(unique_key="k", unique_window_ms=1_000, result_ttl_ms=0)
    s = log.session(ttl_ms=60_000)
    got = log.claim(s)[0]
    log.do(["complete", first, got["token"]])
    log.tick(999)
    assert log.enqueue(unique_key="k") == first
    log.tick(1)
    assert log.enqueue(unique_key="k") != first
    assert log.state(first) is None, "purged once both its result TTL and window passed"


def test_dependencies_make_a_job_wait_until_all_completed(log: Log) -> None:
    a, b = log.enqueue(), log.enqueue()
    child = log.enqueue(depends_on=[a, b])
    assert log.state(child) == "waiting"
    s = log.session()
    tokens = {g["id"]: g["token"] for g in log.claim(s, n=2)}
    log.do(["complete", a, tokens[a]])
    assert log.state(child) == "waiting"
    log.do(["complete", b, tokens[b]])
    assert log.state(child) == "ready"
    assert log.state(log.enqueue(depends_on=[a])) == "ready", "a completed dependency is met"


def test_a_dependency_that_ends_otherwise_fails_the_chain(log: Log) -> None:
    a = log.enqueue()
    b = log.enqueue(depends_on=[a])
    c = log.enqueue(depends_on=[b])
    assert log.do(["cancel", a]) == "cancelled"
    assert [log.state(j) for j in (b, c)] == ["failed", "failed"]
    assert log.ask(["job", c])["error"] == f"dependency {b} ended failed"
    assert log.state(log.enqueue(depends_on=[a])) == "failed"
    with pytest.raises(NotFound):
        log.enqueue(depends_on=["99-0"])


# ---------------------------------------------------------------------------- limits


def test_queue_full_enqueues_nothing() -> None:
    log = Log(JobsService(queue_jobs_max=limits.job_enqueue_batch_max))
    log.do(["enqueue_batch", [["q", b""] for _ in range(limits.job_enqueue_batch_max - 1)]])
    with pytest.raises(QueueFull):
        log.do(["enqueue_batch", [["q", b""], ["q", b""]]])
    assert log.ask(["stats", "q"])["held"] == limits.job_enqueue_batch_max - 1
    log.enqueue()
    with pytest.raises(QueueFull):
        log.enqueue()
    log.enqueue("other")


def test_queue_concurrency_limit(log: Log) -> None:
    log.do(["queue_config", "q", {"concurrency": 2}])
    jobs = [log.enqueue() for _ in range(4)]
    s = log.session()
    got = log.claim(s, n=4)
    assert ids(got) == jobs[:2]
    log.do(["complete", got[0]["id"], got[0]["token"]])
    assert ids(log.claim(s, n=4)) == jobs[2:3]


def test_queue_rate_limit_counts_starts_per_window(log: Log) -> None:
    log.do(["queue_config", "q", {"rate_max": 2, "rate_window_ms": 1_000}], at_ms=2_000_000)
    jobs = [log.enqueue() for _ in range(5)]
    s = log.session()
    assert ids(log.claim(s, n=5)) == jobs[:2]
    log.tick(999)
    assert log.claim(s, n=5) == []
    assert log.ask(["ready", ["q"]]) == {"ready": 3, "next_ms": log.now_ms + 1}, "a long poll knows when to look again"
    log.tick(1)
    assert ids(log.claim(s, n=5)) == jobs[2:4]


def test_group_concurrency_is_per_group(log: Log) -> None:
    log.do(["queue_config", "q", {"group_concurrency": 1}])
    a1, a2 = log.enqueue(group="a"), log.enqueue(group="a")
    b1 = log.enqueue(group="b")
    free = log.enqueue()
    s = log.session()
    got = log.claim(s, n=10)
    assert ids(got) == [a1, b1, free]
    log.do(["complete", a1, got[0]["token"]])
    assert ids(log.claim(s, n=10)) == [a2]


def test_group_rate_limit_is_per_group(log: Log) -> None:
    log.do(["queue_config", "q", {"group_rate_max": 1, "group_rate_window_ms": 100}], at_ms=2_000_000)
    a1, a2, b1 = log.enqueue(group="a"), log.enqueue(group="a"), log.enqueue(group="b")
    s = log.session(ttl_ms=60_000)
    assert ids(log.claim(s, n=10)) == [a1, b1]
    log.tick(50)
    assert log.claim(s, n=10) == []
    log.tick(50)
    assert ids(log.claim(s, n=10)) == [a2]


def test_ended_group_rate_windows_are_forgotten(log: Log) -> None:
    log.do(["queue_config", "q", {"group_rate_max": 1, "group_rate_window_ms": 100}])
    log.do(["enqueue_batch", [["q", b"", {"group": f"tenant-{i}"}] for i in range(50)]])
    s = log.session(ttl_ms=60_000)
    assert len(log.claim(s, n=50)) == 50
    assert len(log.svc._queues["q"].group_windows) == 50
    log.tick(100)
    log.enqueue(group="tenant-0")
    assert len(log.claim(s)) == 1
    assert list(log.svc._queues["q"].group_windows) == ["tenant-0"], "memory does not grow with every group ever seen"


def test_lowering_group_concurrency_blocks_at_once(log: Log) -> None:
    a1, a2 = log.enqueue(group="a"), log.enqueue(group="a")
    s = log.session()
    assert ids(log.claim(s)) == [a1]
    log.do(["queue_config", "q", {"group_concurrency": 1}])
    assert log.claim(s) == []
    log.do(["queue_config", "q", {"group_concurrency": 0}])
    assert ids(log.claim(s)) == [a2]


# ---------------------------------------------------------------------------- cancellation, expiry


def test_cancel_a_waiting_job_at_once(log: Log) -> None:
    job = log.enqueue(delay_ms=100)
    assert log.do(["cancel", job]) == "cancelled"
    assert log.do(["cancel", job]) == "cancelled"
    with pytest.raises(NotFound):
        log.do(["cancel", "5-5"])


def test_cancel_a_running_job_reaches_its_worker_and_ends_on_ack(log: Log) -> None:
    job = log.enqueue()
    s = log.session()
    (got,) = log.claim(s)
    assert log.do(["cancel", job]) == "cancelling"
    assert log.do(["heartbeat", s])["cancel"] == [job]
    assert log.do(["claim", s, ["q"], 1])["cancel"] == [job]
    assert log.state(job) == "running"
    assert log.do(["ack_cancel", job, got["token"]]) == "cancelled"
    assert log.do(["heartbeat", s])["cancel"] == []


def test_a_cancelled_running_job_is_not_retried_when_it_fails_or_lapses(log: Log) -> None:
    a, b = log.enqueue(), log.enqueue(timeout_ms=100)
    s = log.session(ttl_ms=60_000)
    got = {g["id"]: g["token"] for g in log.claim(s, n=2)}
    log.do(["cancel", a])
    log.do(["cancel", b])
    assert log.do(["fail", a, got[a], {"error": "stopped"}]) == "cancelled"
    log.tick(100)
    assert log.state(b) == "cancelled"


def test_a_job_not_started_by_expires_at_expires(log: Log) -> None:
    job = log.enqueue(expires_at_ms=log.now_ms + 100, delay_ms=200)
    log.tick(100)
    assert log.state(job) == "expired"
    assert log.state(log.enqueue(expires_at_ms=log.now_ms)) == "expired"


def test_results_are_purged_after_their_ttl(log: Log) -> None:
    job = log.enqueue(result_ttl_ms=500)
    s = log.session(ttl_ms=60_000)
    log.do(["complete", job, log.claim(s)[0]["token"]])
    log.tick(499)
    assert log.ask(["result", job])["result"] is None
    log.tick(1)
    assert log.ask(["result", job]) is None
    assert log.ask(["stats", "q"])["held"] == 0


def test_list_pages_through_a_queue_by_state(log: Log) -> None:
    jobs = log.do(["enqueue_batch", [["q", b"", {"delay_ms": 10 if i % 3 else None, "result_ttl_ms": 0}] for i in range(7)]])
    page = log.ask(["list", "q", {"limit": 3}])
    assert ids(page["items"]) == jobs[:3] and page["next"] == jobs[2]
    assert ids(log.ask(["list", "q", {"start_after": page["next"]}])["items"]) == jobs[3:]
    assert ids(log.ask(["list", "q", {"state": "ready"}])["items"]) == [jobs[0], jobs[3], jobs[6]]
    log.do(["cancel", jobs[2]])
    log.entry()
    assert log.state(jobs[2]) is None
    assert ids(log.ask(["list", "q", {"start_after": jobs[2]}])["items"]) == jobs[3:], "a cursor outlives its job"
    assert log.ask(["list", "nope"]) == {"items": [], "next": None}
    for bad in ({"state": "sleeping"}, {"start_after": "s1-0"}, {"limit": 0}):
        with pytest.raises(InvalidArgument):
            log.ask(["list", "q", bad])


def test_a_list_page_examines_a_bounded_number_of_jobs() -> None:
    log = Log()
    for _ in range(limits.job_list_scan_max // limits.job_enqueue_batch_max + 1):
        log.do(["enqueue_batch", [["q", b""] for _ in range(limits.job_enqueue_batch_max)]])
    last = log.enqueue(delay_ms=5)
    page = log.ask(["list", "q", {"state": "delayed"}])
    assert page["items"] == [] and page["next"] is not None
    page = log.ask(["list", "q", {"state": "delayed", "start_after": page["next"]}])
    assert ids(page["items"]) == [last] and page["next"] is None


def test_stats_count_every_state(log: Log) -> None:
    log.enqueue()
    log.enqueue(delay_ms=10)
    c = log.enqueue()
    log.enqueue(depends_on=[c])
    s = log.session()
    log.claim(s)
    stats = log.ask(["stats", "q"])
    assert {k: stats[k] for k in ("waiting", "delayed", "ready", "running")} == {"waiting": 1, "delayed": 1, "ready": 1, "running": 1}
    assert stats["held"] == 4


def test_queues_lists_every_queue_in_pages_with_its_counts(log: Log) -> None:
    for name in ("c", "a", "b"):
        log.enqueue(queue=name)
    log.do(["pause", "b"])
    page = log.ask(["queues", {"limit": 2}])
    assert [i["queue"] for i in page["items"]] == ["a", "b"] and page["next"] == "b"
    assert page["items"][1]["paused"] and (page["items"][0]["ready"], page["items"][0]["held"]) == (1, 1)
    rest = log.ask(["queues", {"start_after": page["next"]}])
    assert [i["queue"] for i in rest["items"]] == ["c"] and rest["next"] is None
    with pytest.raises(InvalidArgument):
        log.ask(["queues", {"limit": limits.job_dlq_batch_max + 1}])


def test_queues_counts_lease_expiries_and_dead_letters(log: Log) -> None:
    timed = log.enqueue(timeout_ms=100, max_attempts=1)  # its lease times out: dead
    lapsed = log.enqueue()  # its session lapses: back to ready
    s = log.session(ttl_ms=1_000)
    log.claim(s, n=1)
    log.tick(100)
    assert log.state(timed) == "dead"
    log.claim(s, n=1)
    log.tick(1_000)
    assert log.state(lapsed) == "ready"
    closed = log.session()
    (got,) = log.claim(closed)
    log.do(["release", got["id"], got["token"]])  # given back: neither counts
    (item,) = log.ask(["queues"])["items"]
    assert (item["lease_expiries_total"], item["dead_lettered_total"], item["dead"]) == (2, 1, 1)


# ---------------------------------------------------------------------------- schedules


def test_every_ms_schedule_fires_once_per_slot(log: Log) -> None:
    assert log.do(["schedule", "tick", "q", b"t", {"every_ms": 1_000}]) == log.now_ms + 1_000
    for _ in range(3):
        log.tick(500)
    assert log.ask(["stats", "q"])["ready"] == 1
    log.tick(500)
    assert log.ask(["stats", "q"])["ready"] == 2
    (sched,) = log.ask(["schedules"])
    assert (sched["fired"], sched["next_ms"]) == (2, log.now_ms + 1_000)


def test_a_schedule_without_catch_up_fires_only_the_latest_missed_slot(log: Log) -> None:
    log.do(["schedule", "s", "q", b"", {"every_ms": 100}])
    log.tick(1_050)
    assert log.ask(["stats", "q"])["ready"] == 1
    assert log.ask(["schedules"])[0]["last_slot_ms"] == log.now_ms - 50


def test_catch_up_fires_every_missed_slot_bounded_per_entry(log: Log) -> None:
    log.do(["schedule", "s", "q", b"", {"every_ms": 10, "catch_up": True}])
    slots = limits.job_schedule_catch_up_slots_max + 20
    log.tick(10 * slots)
    assert log.ask(["stats", "q"])["ready"] == limits.job_schedule_catch_up_slots_max
    deadline = log.svc.next_deadline_ms()
    assert deadline is not None and deadline <= log.now_ms, "the rest is due at once"
    log.entry()
    assert log.ask(["stats", "q"])["ready"] == slots


def test_cron_schedule_fires_at_utc_minutes(log: Log) -> None:
    start = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000  # an hour boundary
    log.entry(at_ms=start + 1)
    nxt = log.do(["schedule", "c", "q", b"", {"cron": "*/15 * * * *"}])
    assert nxt == start + 15 * 60_000
    log.entry(at_ms=nxt - 1)
    assert log.ask(["stats", "q"])["ready"] == 0
    log.entry(at_ms=nxt)
    assert log.ask(["stats", "q"])["ready"] == 1
    assert log.ask(["schedules"])[0]["next_ms"] == start + 30 * 60_000
    for bad in ("61 * * * *", "* * * * R", "H * * * *", "0 0 30 2 *", "@hourly", "* * * * * *"):
        with pytest.raises(InvalidArgument):  # random (R) or hashed (H) slots would differ between replicas
            log.do(["schedule", "bad", "q", b"", {"cron": bad}])


def test_replacing_a_schedule_never_refires_a_slot(log: Log) -> None:
    log.do(["schedule", "s", "q", b"", {"every_ms": 100, "start_ms": log.now_ms + 100}])
    log.tick(100)
    assert log.ask(["stats", "q"])["ready"] == 1
    nxt = log.do(["schedule", "s", "q", b"", {"every_ms": 100, "start_ms": log.now_ms}])
    assert nxt == log.now_ms + 100
    assert log.do(["unschedule", "s"]) is True and log.do(["unschedule", "s"]) is False
    log.tick(1_000)
    assert log.ask(["stats", "q"])["ready"] == 1


def test_a_slot_of_a_full_queue_is_skipped_and_counted() -> None:
    log = Log(JobsService(queue_jobs_max=limits.job_enqueue_batch_max))
    log.do(["enqueue_batch", [["q", b""] for _ in range(limits.job_enqueue_batch_max)]])
    log.do(["schedule", "s", "q", b"", {"every_ms": 10}])
    log.tick(10)
    assert log.ask(["schedules"])[0]["skipped"] == 1


# ---------------------------------------------------------------------------- validation, snapshots


@pytest.mark.parametrize(
    "cmd",
    [
        "enqueue",
        ["nope"],
        ["enqueue", "q"],
        ["enqueue", "", b""],
        ["enqueue", "q", "text"],
        ["enqueue", "q", b"", {"priority": 1.5}],
        ["enqueue", "q", b"", {"priority": True}],
        ["enqueue", "q", b"", {"priority": limits.job_priority_max + 1}],
        ["enqueue", "q", b"", {"delay_ms": 1, "run_at_ms": 1}],
        ["enqueue", "q", b"", {"max_attempts": 0}],
        ["enqueue", "q", b"", {"backoff": {"kind": "linear"}}],
        ["enqueue", "q", b"", {"backoff": {"delay_ms": 10, "max_ms": 5}}],
        ["enqueue", "q", b"", {"depends_on": ["1-0", "1-0"]}],
        ["enqueue", "q", b"", {"colour": "red"}],
        ["enqueue_batch", []],
        ["enqueue_batch", [["q", "text"]]],  # (a job without options takes a shorter path: same checks)
        ["enqueue_batch", [["", b""]]],
        ["claim", "s1-0", [], 1],
        ["claim", "s1-0", ["q"], 0],
        ["session_open", "w", 0],
        ["complete", "1-0", 0],
        ["complete_batch", []],
        ["complete_batch", [["1-0"]]],
        ["complete_batch", [["1-0", 1, {"result": "text"}]]],
        ["complete_batch", [["1-0", "1", {"result": b""}]]],  # (a worker's item shape: a shorter path)
        ["complete_batch", [[7, 1, {"result": b""}]]],
        ["complete_batch", [["1-0", 1, {"result": b"", "extra": 1}]]],
        ["complete_batch", [["1-0", 1], ["1-1", 0]]],
        ["complete_batch", "1-0"],
        ["schedule", "s", "q", b"", {}],
        ["schedule", "s", "q", b"", {"every_ms": 5, "cron": "* * * * *"}],
        ["schedule", "s", "q", b"", {"every_ms": 5, "job": {"delay_ms": 5}}],
        ["queue_config", "q", {"concurrency": -1}],
    ],
)
def test_malformed_commands_are_invalid_and_change_nothing(log: Log, cmd: Any) -> None:
    before = digest(log.svc)
    with pytest.raises(InvalidArgument):
        log.do(cmd)
    assert digest(log.svc) == before


def test_size_limits_are_too_large(log: Log) -> None:
    with pytest.raises(TooLarge):
        log.do(["enqueue", "q", b"x" * (limits.job_payload_bytes_max + 1)])
    with pytest.raises(TooLarge):
        log.do(["enqueue", "q" * (limits.job_name_chars_max + 1), b""])
    with pytest.raises(TooLarge):
        log.do(["enqueue_batch", [["q", b""]] * (limits.job_enqueue_batch_max + 1)])
    with pytest.raises(TooLarge):
        log.do(["complete_batch", [["1-0", 1]] * (limits.job_complete_batch_max + 1)])
    with pytest.raises(TooLarge):
        log.do(["complete_batch", [["1-0", 1, {"result": b"x" * (limits.job_result_bytes_max + 1)}]]])


def test_config_is_checked() -> None:
    for bad in ({"default_timeout_ms": 0}, {"queue_jobs_max": 1}, {"mutants": frozenset({"nope"})}, {"mutants": frozenset({"lease_local_clock"})}):
        with pytest.raises(ConfigError):
            JobsService(**bad)


def busy_log() -> Log:
    """A log that leaves jobs in every state, sessions, groups, unique keys and schedules."""
    log = Log()
    log.do(["queue_config", "q", {"group_concurrency": 1, "rate_max": 100, "group_rate_max": 5}])
    log.do(["schedule", "cron", "q", b"c", {"cron": "* * * * *", "job": {"priority": 2}}])
    log.do(["schedule", "every", "r", b"e", {"every_ms": 700, "catch_up": True}])
    a = log.enqueue(group="g", unique_key="u", unique_window_ms=5_000)
    log.enqueue(group="g")
    log.enqueue(delay_ms=10_000)
    dead = log.enqueue(max_attempts=1)
    log.enqueue(depends_on=[a])
    log.enqueue(expires_at_ms=log.now_ms + 50)
    s = log.session(ttl_ms=100_000)
    got = {g["id"]: g["token"] for g in log.claim(s, n=3)}
    log.do(["fail", dead, got[dead], {"retry": False}])
    log.do(["complete", a, got[a], {"result": b"r"}])
    other = log.enqueue()
    log.do(["cancel", other])
    log.tick(3_000)
    s2 = log.session()
    for g in log.claim(s2, ["q", "r"], n=2):
        log.do(["cancel", g["id"]])
    log.do(["pause", "r"])
    return log


def test_snapshot_restore_round_trip_is_byte_identical_and_behaves_alike() -> None:
    log = busy_log()
    snap = unpack(pack(log.svc.snapshot()))
    copy = JobsService()
    copy.restore(snap)
    assert pack(copy.snapshot()) == pack(log.svc.snapshot())
    twin = Log(copy)
    twin.index, twin.now_ms = log.index, log.now_ms
    for lg in (log, twin):
        s = lg.session(ttl_ms=limits.job_session_ttl_ms_max)
        lg.tick(200_000)
        lg.claim(s, ["q", "r"], n=10)
        lg.enqueue(unique_key="u")
    assert digest(log.svc) == digest(twin.svc)
    with pytest.raises(ValueError):
        copy.restore({"format": 0})


def test_long_snapshot_lists_are_cut_into_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import trimaran.services.jobs.service as service

    monkeypatch.setattr(service, "SNAPSHOT_CHUNK_ITEMS", 2)
    log = busy_log()
    parents = [log.enqueue(delay_ms=60_000) for _ in range(3)]
    for i in range(5):
        log.enqueue(unique_key=f"k{i}", depends_on=parents)
    snap = log.svc.snapshot()
    for key in ("jobs", "unique", "dependents"):
        assert len(snap[key]) > 1 and all(len(chunk) <= 2 for chunk in snap[key]), key
    copy = JobsService()
    copy.restore(unpack(pack(snap)))
    assert pack(copy.snapshot()) == pack(snap)


def test_every_error_is_a_trimaran_error(log: Log) -> None:
    out = log.entry(["claim", "s0-0", ["q"], 1], ["complete", "1-0", 1], ["cancel", "1-0"])
    assert all(isinstance(o, TrimaranError) for o in out)
