"""Shrink a failing run's fault plan to a small one that still fails the same way.

Greedy delta debugging over :func:`~trimaran.simulations.plan.smaller_plans`: drop chunks of
faults (halves, quarters, ... single faults), calm the weather, halve durations; keep the first
candidate that still fails with the same checker category, and start again from it. Every run is
deterministic, so the shrunk plan replays exactly (``--plan``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from trimaran.simulations.plan import FaultPlan, smaller_plans
from trimaran.simulations.run import RunResult, plan_for, run_seed


@dataclass(frozen=True, slots=True)
class ShrinkResult:
    """The failing run, the smallest failing run found from it, and how many runs that took."""

    original: RunResult
    #: The smallest failing run found (the original if nothing smaller fails).
    shrunk: RunResult
    runs: int

    @property
    def plan(self) -> FaultPlan:
        return self.shrunk.plan


def shrink(
    seed: int,
    nodes: int = 5,
    sim_seconds: float = 300.0,
    mutants: tuple[str, ...] = (),
    plan: FaultPlan | None = None,
    runs_max: int = 300,
    on_step: Callable[[RunResult], None] | None = None,
    rules: bool = True,
) -> ShrinkResult:
    """Shrink the plan of a failing run; raises ValueError if the run passes."""
    current_plan = plan if plan is not None else plan_for(seed, nodes, sim_seconds)
    original = run_seed(seed, nodes, sim_seconds, mutants, current_plan, rules)
    if original.passed:
        raise ValueError(f"seed {seed} passes: nothing to shrink")
    best, runs, improved = original, 0, True
    while improved and runs < runs_max:
        improved = False
        for candidate in smaller_plans(best.plan):
            runs += 1
            result = run_seed(seed, nodes, sim_seconds, mutants, candidate, rules)
            if not result.passed and result.category == original.category:
                best, improved = result, True
                if on_step is not None:
                    on_step(result)
                break
            if runs >= runs_max:
                break
    return ShrinkResult(original, best, runs)
