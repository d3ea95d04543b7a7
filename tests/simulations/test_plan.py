"""Fault plans: drawn from the seed, encoded compactly, parsed back, shrunk."""

from __future__ import annotations

import pytest

from trimaran.simulations.plan import FAULT_ARGS, FaultPlan, PlanError, decode_plan, draw_plan, smaller_plans


@pytest.mark.parametrize("seed", range(1, 40))
def test_encode_decode_roundtrip(seed: int) -> None:
    plan = draw_plan(seed, 5, 270_000)
    assert decode_plan(plan.encode()) == plan


def test_plans_are_swarm_drawn() -> None:
    plans = [draw_plan(seed, 5, 270_000) for seed in range(1, 200)]
    kinds_seen = {f.kind for p in plans for f in p.faults}
    assert kinds_seen == set(FAULT_ARGS), "every fault kind appears in some seed"
    assert any(not p.faults for p in plans) or min(len(p.faults) for p in plans) <= 2, "some seeds are nearly quiet"
    assert max(len(p.faults) for p in plans) >= 30, "some seeds are storms"
    assert len({p.weather.loss_pm for p in plans}) > 50, "strengths vary"
    for p in plans:
        assert 0 <= p.weather.loss_pm <= 300 and 0 <= p.weather.dup_pm <= 100
        assert all(1_000 <= f.at_ms < 270_000 for f in p.faults), "faults strike before the heal"


def test_same_seed_same_plan() -> None:
    assert draw_plan(9, 5, 50_000) == draw_plan(9, 5, 50_000)
    assert draw_plan(9, 5, 50_000) != draw_plan(10, 5, 50_000)


def test_bad_plans_are_refused_clearly() -> None:
    with pytest.raises(PlanError, match="unknown weather"):
        decode_plan("wind=3;")
    with pytest.raises(PlanError, match="bad fault"):
        decode_plan("loss_pm=1;100:crash:1")
    with pytest.raises(PlanError, match="malformed"):
        decode_plan("loss_pm=x;")


def test_smaller_plans_are_smaller() -> None:
    plan = draw_plan(22, 5, 270_000)
    assert plan.faults
    for candidate in smaller_plans(plan):
        assert isinstance(candidate, FaultPlan)
        assert candidate != plan
        assert len(candidate.faults) <= len(plan.faults)
