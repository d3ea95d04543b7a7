"""Retry delays: fixed or exponential, capped, with a jitter derived from the job id.

The jitter spreads the retries of jobs that failed together (a dependency outage) without a random
source: it is a hash of the job id and the attempt number, so every replica, and every replay of the
log, computes the same delay.
"""

from __future__ import annotations

import hashlib

from trimaran.services.jobs.args import Backoff

#: An exponential delay doubles at most this many times before the cap applies (bounds the int).
DOUBLINGS_MAX = 62


def jitter_fraction_ppm(job_id: str, attempt: int) -> int:
    """A number in [0, 1_000_000) fixed by ``job_id`` and ``attempt`` (SHA-256, never ``hash()``)."""
    digest = hashlib.sha256(f"{job_id}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1_000_000


def retry_delay_ms(backoff: Backoff, job_id: str, attempt: int) -> int:
    """The wait before the retry that follows failed attempt ``attempt`` (1 = the first run):
    ``delay_ms`` (fixed) or ``delay_ms * 2**(attempt-1)`` (exponential), at most ``max_ms``, less a
    jitter of up to ``jitter_pct`` percent of it."""
    assert attempt >= 1
    if backoff.kind == "fixed":
        delay_ms = backoff.delay_ms
    else:
        delay_ms = backoff.delay_ms << min(attempt - 1, DOUBLINGS_MAX)
    delay_ms = min(delay_ms, backoff.max_ms)
    span_ms = delay_ms * backoff.jitter_pct // 100
    return delay_ms - span_ms * jitter_fraction_ppm(job_id, attempt) // 1_000_000
