"""Cheap counters the node keeps for ``/metrics``, the dashboard and ``status``: fixed-bucket
histograms and per-request outcome counts. Plain Python, no metrics library: the runtime only
counts; :mod:`trimaran.node.http.metrics` turns these into Prometheus families at scrape time.

What a request costs here: one dict insert when the driver takes it, one dict pop, one clock read
and a few integer increments when it is answered. Labels are bounded: a request's operation name
comes from the client, so at most :data:`LABEL_SETS_MAX` distinct (service, op) pairs are counted
by name and any further one as (``other``, ``other``).
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any, Callable, Sequence

from trimaran import limits

#: Upper bounds (seconds) of request latency buckets: 100 µs .. 10 s.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Upper bounds (seconds) of storage write (transaction + fsync) buckets: 50 µs .. 5 s.
FSYNC_BUCKETS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
)  # fmt: skip
#: Upper bounds of entries per appended batch (a Ready's new entries).
BATCH_ENTRIES_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
#: Distinct (service, op) pairs counted by name; further ones count as op "other".
LABEL_SETS_MAX = 256
#: Operation names longer than this are counted as "other" (names come from clients).
OP_NAME_CHARS_MAX = 32
#: Requests tracked between the driver taking them and answering them: a bound in case an answer
#: never comes (the oldest is forgotten, counted in ``untracked``).
TRACKED_REQUESTS_MAX = 16 * limits.session_responses_max
#: Recent failed requests kept for the dashboard.
RECENT_ERRORS_MAX = 20
#: Leader changes kept (with when they were seen) for the dashboard.
LEADER_HISTORY_MAX = 64
#: Outcomes that mean a proposal did not reach (or was dropped from) the log; others are results
#: of committed commands (a failed condition is an answer, not a failed proposal).
PROPOSAL_FAILURES = frozenset({"not_leader", "storage_full", "unavailable", "too_large", "timeout"})

#: Outcomes that send the client elsewhere: counted like any other, but not among the recent
#: errors the dashboard lists when they name where to go (a client that met a follower first is
#: not a failure to look into; a not_leader that names no leader, during an election, is listed).
REDIRECTS = frozenset({"not_leader"})


def _names_a_leader(value: Any) -> bool:
    details = getattr(value, "details", None)
    return isinstance(details, dict) and bool(details.get("leader_address"))

assert list(LATENCY_BUCKETS_S) == sorted(LATENCY_BUCKETS_S) and list(FSYNC_BUCKETS_S) == sorted(FSYNC_BUCKETS_S)


class Buckets:
    """A fixed-bucket histogram: ``counts[i]`` observations <= ``bounds[i]`` and above the bound
    before (the last slot is +Inf); Prometheus wants cumulative counts, :meth:`cumulative` gives them."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.count_in(bisect.bisect_left(self.bounds, value), value)

    def count_in(self, slot: int, value: float) -> None:
        """:meth:`observe` with its bucket found already (histograms of the same bounds share one search)."""
        self.counts[slot] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, count <= le), ..., ("+Inf", count)]`` as Prometheus exposes a histogram."""
        out, running = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.sum, "count": self.count}


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a (non-cumulative) bucket count list, as the upper bound of the bucket
    it falls in (None with no observations; the last finite bound for the +Inf bucket)."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0
    for i, n in enumerate(counts):
        running += n
        if running >= rank and n:
            return float(bounds[min(i, len(bounds) - 1)])
    return float(bounds[-1])


def _label(service: Any, op: Any) -> tuple[str, str]:
    svc = service if type(service) is str and len(service) <= OP_NAME_CHARS_MAX else "other"
    name = op if type(op) is str and len(op) <= OP_NAME_CHARS_MAX else "other"
    return svc, name


def request_labels(op: str, body: dict[str, Any]) -> tuple[str, str, str]:
    """(service, op name, kind) of a driver request: a command or read names its service and the
    first word of its command or query; anything else is the cluster's (register, membership...)."""
    if op == "command" or op == "read":
        words = body.get("command") if op == "command" else body.get("query")
        first = words[0] if isinstance(words, (list, tuple)) and words else None
        service, name = _label(body.get("service"), first)
        return service, name, op
    return "cluster", op if len(op) <= OP_NAME_CHARS_MAX else "other", "other"


class RequestStats:
    """Requests the driver served, by (service, op, outcome), with latency per (service, kind)
    from the driver taking a request to answering it. ``clock_s``: a monotonic clock (trio's)."""

    def __init__(self, clock_s: Callable[[], float]) -> None:
        self._clock_s = clock_s
        self._tracked: dict[Any, tuple[str, str, str, str, float]] = {}
        self._labels: set[tuple[str, str]] = set()
        #: (service, op, outcome) -> count; outcome is "ok" or the error's code.
        self.outcomes: dict[tuple[str, str, str], int] = {}
        #: (service, kind) -> latency histogram; kind is "command", "read" or "other".
        self.latency: dict[tuple[str, str], Buckets] = {}
        #: (edge, outcome) -> count, and edge -> latency: the same requests by the edge they came in
        #: on at this node (``native``, ``http``, ``resp``; a follower's forwarded request counts as
        #: ``native`` on the leader).
        self.edge_outcomes: dict[tuple[str, str], int] = {}
        self.edge_latency: dict[str, Buckets] = {}
        self.untracked = 0
        #: Commands handed to the Replica, and commands that did not reach (or left) the log.
        self.proposals = 0
        self.proposal_failures = 0
        #: The last failed requests: (wall time ms, service, op, code, message).
        self.recent_errors: deque[tuple[int, str, str, str, str]] = deque(maxlen=RECENT_ERRORS_MAX)

    def started(self, token: Any, op: str, body: dict[str, Any], edge: str = "other", now_s: float | None = None) -> None:
        """``now_s``: the clock's time already read by the caller (the driver's, once per round)."""
        service, name, kind = request_labels(op, body)
        if (service, name) not in self._labels:
            if len(self._labels) >= LABEL_SETS_MAX:
                service = name = "other"  # both come from clients: neither may grow the set
            self._labels.add((service, name))
        tracked = self._tracked
        if len(tracked) >= TRACKED_REQUESTS_MAX:
            del tracked[next(iter(tracked))]
            self.untracked += 1
        tracked[token] = (service, name, kind, edge, self._clock_s() if now_s is None else now_s)

    def finished(self, token: Any, ok: bool, value: Any, wall_ms: Callable[[], int]) -> None:
        entry = self._tracked.pop(token, None)
        if entry is None:
            return
        service, name, kind, edge, started_s = entry
        outcome = "ok" if ok else str(getattr(value, "code", "internal"))
        key = (service, name, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        edge_key = (edge, outcome)
        self.edge_outcomes[edge_key] = self.edge_outcomes.get(edge_key, 0) + 1
        elapsed_s = self._clock_s() - started_s
        hist = self.latency.get((service, kind))
        if hist is None:
            hist = self.latency[(service, kind)] = Buckets(LATENCY_BUCKETS_S)
        edge_hist = self.edge_latency.get(edge)
        if edge_hist is None:
            edge_hist = self.edge_latency[edge] = Buckets(LATENCY_BUCKETS_S)
        slot = bisect.bisect_left(LATENCY_BUCKETS_S, elapsed_s)  # (both have these bounds)
        hist.count_in(slot, elapsed_s)
        edge_hist.count_in(slot, elapsed_s)
        if not ok:
            if kind == "command" and outcome in PROPOSAL_FAILURES:
                self.proposal_failures += 1
            if outcome in REDIRECTS and _names_a_leader(value):
                return  # counted above; not listed as an error (the client goes to that leader)
            message = str(getattr(value, "message", value))[: limits.untrusted_text_chars_max]
            self.recent_errors.append((wall_ms(), service, name, outcome, message))

    def summary(self) -> dict[str, Any]:
        """Plain data for the ``status`` op (the dashboard sums it over members)."""
        return {
            "outcomes": [[s, o, r, n] for (s, o, r), n in sorted(self.outcomes.items())],
            "latency": [[s, k, h.to_json()] for (s, k), h in sorted(self.latency.items())],
            "proposals": self.proposals,
            "proposal_failures": self.proposal_failures,
            "recent_errors": [list(e) for e in self.recent_errors],
        }
