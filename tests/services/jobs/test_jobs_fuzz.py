"""Hostile commands and queries: the job service refuses anything malformed with a typed error and
changes nothing, whatever the shape; and the retry delay keeps its bounds for any backoff."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz import fuzz_settings
from tests.services.jobs.helpers import Log, digest
from trimaran import limits
from trimaran.errors import TrimaranError
from trimaran.services.jobs.args import ENQUEUE_OPTIONS, QUEUE_SETTINGS, SCHEDULE_OPTIONS, Backoff
from trimaran.services.jobs.backoff import retry_delay_ms

OPS = [
    "enqueue", "enqueue_batch", "claim", "session_open", "heartbeat", "session_close", "complete", "complete_batch", "fail",
    "release", "ack_cancel", "cancel", "dlq_requeue", "dlq_purge", "pause", "resume", "queue_config",
    "schedule", "unschedule", "job", "result", "stats", "ready", "dlq", "list", "schedules", "session",
]  # fmt: skip
OPTION_NAMES = sorted({*ENQUEUE_OPTIONS, *QUEUE_SETTINGS, *SCHEDULE_OPTIONS, "jobs", "result", "error", "retry", "start_after", "limit", "kind", "state"})

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.sampled_from([0, 1, -1, limits.job_priority_max + 1, 1 << 52])
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(["q", "1-0", "s1-0", "g", "* * * * *", "fixed"])
    | st.binary(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(OPTION_NAMES) | st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)
messages = st.one_of(
    values,
    st.builds(lambda op, rest: [op, *rest], st.sampled_from(OPS) | st.text(max_size=6), st.lists(values, max_size=5)),
)


def busy() -> Log:
    log = Log()
    log.enqueue()
    log.enqueue(delay_ms=5, unique_key="u")
    s = log.session()
    log.claim(s)
    return log


@fuzz_settings
@given(messages)
def test_fuzz_hostile_commands_are_refused_with_a_typed_error_and_change_nothing(message: Any) -> None:
    log = busy()
    before = digest(log.svc)
    try:
        log.svc.apply(message, log.ctx)
    except TrimaranError:
        assert digest(log.svc) == before
    after = digest(log.svc)
    try:
        log.svc.query(message, log.ctx)
    except TrimaranError:
        pass
    assert digest(log.svc) == after, "a query changes nothing"


@fuzz_settings
@given(
    st.sampled_from(["fixed", "exponential"]),
    st.integers(0, limits.job_backoff_ms_max),
    st.integers(0, limits.job_backoff_ms_max),
    st.integers(0, 100),
    st.text(max_size=12),
    st.integers(1, limits.job_attempts_max),
)
def test_retry_delays_stay_within_the_cap_and_the_jitter(kind: str, delay_ms: int, extra_ms: int, jitter_pct: int, job_id: str, attempt: int) -> None:
    max_ms = min(delay_ms + extra_ms, limits.job_backoff_ms_max)
    backoff = Backoff(kind, delay_ms, max_ms, jitter_pct)
    full = min(delay_ms if kind == "fixed" else delay_ms * 2 ** (attempt - 1), max_ms)
    got = retry_delay_ms(backoff, job_id, attempt)
    assert full - full * jitter_pct // 100 <= got <= full
    assert got == retry_delay_ms(backoff, job_id, attempt)
