"""The runtime's cheap counters (node/stats.py): histogram buckets as Prometheus wants them, the
quantile the dashboard draws, and the bounds on request labels and tracking."""

from __future__ import annotations

from hypothesis import given, strategies as st

from trimaran.errors import ConditionFailed, NotLeader
from trimaran.node import stats
from trimaran.node.stats import Buckets, RequestStats, quantile


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=200))
def test_buckets_are_cumulative_and_count_everything(values: list[float]) -> None:
    hist = Buckets(stats.LATENCY_BUCKETS_S)
    for v in values:
        hist.observe(v)
    cumulative = hist.cumulative()
    assert cumulative[-1] == ("+Inf", len(values))
    for (le, count), bound in zip(cumulative, stats.LATENCY_BUCKETS_S):
        assert count == sum(1 for v in values if v <= bound), le
    assert [c for _, c in cumulative] == sorted(c for _, c in cumulative)


def test_quantile_is_the_bucket_bound_holding_the_rank() -> None:
    bounds = (1.0, 2.0, 5.0)
    assert quantile(bounds, [0, 0, 0, 0], 0.99) is None
    assert quantile(bounds, [99, 0, 1, 0], 0.99) == 1.0
    assert quantile(bounds, [98, 0, 2, 0], 0.99) == 5.0
    assert quantile(bounds, [0, 0, 0, 3], 0.5) == 5.0  # +Inf: the last finite bound


def test_request_stats_count_outcomes_latency_and_proposal_failures() -> None:
    now = [10.0]
    rs = RequestStats(lambda: now[0])
    body = {"service": "kv", "command": ["set", b"k", b"v"]}
    rs.started(1, "command", body)
    rs.started(2, "command", body)
    rs.started(3, "read", {"service": "kv", "query": ["get", b"k"]})
    now[0] = 10.003
    rs.finished(1, True, 7, lambda: 0)
    rs.finished(2, False, NotLeader(leader_hint=2, leader_address="127.0.0.1:7002"), lambda: 123)
    rs.finished(3, False, ConditionFailed("no"), lambda: 124)
    rs.finished(3, True, None, lambda: 0)  # answered twice: counted once
    assert rs.outcomes == {("kv", "set", "ok"): 1, ("kv", "set", "not_leader"): 1, ("kv", "get", "condition_failed"): 1}
    assert rs.proposal_failures == 1  # a failed condition is an answer, not a failed proposal
    assert rs.latency[("kv", "command")].count == 2 and rs.latency[("kv", "read")].count == 1
    assert abs(rs.latency[("kv", "command")].sum - 0.006) < 1e-9
    assert [e[3] for e in rs.recent_errors] == ["condition_failed"]  # a redirect is no error to list
    rs.started(4, "command", body)
    rs.finished(4, False, NotLeader(), lambda: 125)  # no leader to go to (an election): listed
    assert [e[3] for e in rs.recent_errors] == ["condition_failed", "not_leader"]


def test_request_labels_and_tracking_are_bounded() -> None:
    rs = RequestStats(lambda: 0.0)
    for i in range(stats.LABEL_SETS_MAX + 50):
        rs.started(i, "command", {"service": "kv", "command": [f"op{i}"]})
        rs.finished(i, True, None, lambda: 0)
    for i in range(50):  # services come from clients too
        rs.started(("svc", i), "read", {"service": f"svc{i}", "query": ["get"]})
        rs.finished(("svc", i), True, None, lambda: 0)
    assert len(rs.outcomes) == stats.LABEL_SETS_MAX + 1 and ("other", "other", "ok") in rs.outcomes
    fresh = RequestStats(lambda: 0.0)
    fresh.started("x", "command", {"service": "kv", "command": ["y" * 100]})
    fresh.finished("x", True, None, lambda: 0)
    assert ("kv", "other", "ok") in fresh.outcomes
    for i in range(stats.TRACKED_REQUESTS_MAX + 5):
        rs.started(("never", i), "read", {"service": "kv", "query": ["get"]})
    assert rs.untracked == 5
