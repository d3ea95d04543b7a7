"""A failing run's plan shrinks to a smaller one that still fails the same way, and replays."""

from __future__ import annotations

import pytest

from trimaran.simulations.mutants import MATRIX
from trimaran.simulations.plan import decode_plan
from trimaran.simulations.run import plan_for, run_seed
from trimaran.simulations.shrink import shrink


@pytest.mark.slow
def test_shrunk_plan_still_fails_and_replays_from_its_text() -> None:
    case = next(c for c in MATRIX if c.mutant == "dedup_not_in_snapshot" and not c.rules)
    original = plan_for(case.seed, case.nodes, case.sim_seconds)
    # 30 runs: this case keeps finding smaller plans for longer than that; the test needs a few steps.
    result = shrink(case.seed, case.nodes, case.sim_seconds, (case.mutant,), runs_max=30, rules=False)
    shrunk = result.shrunk
    assert not shrunk.passed and shrunk.category == case.category
    assert len(shrunk.plan.faults) <= len(original.faults)
    assert shrunk.plan != original, "something was dropped or calmed"
    replayed = run_seed(case.seed, case.nodes, case.sim_seconds, (case.mutant,), decode_plan(shrunk.plan.encode()), rules=False)
    assert replayed == shrunk, "the printed plan replays the same run, digest included"
    assert "--plan" in shrunk.replay_command()


def test_a_passing_seed_does_not_shrink() -> None:
    with pytest.raises(ValueError, match="passes"):
        shrink(4, 5, 30.0)
