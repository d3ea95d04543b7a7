"""The checkers are proven able to fail: every planted bug is caught (mutation testing of the
simulator). Each case replays the seed known to catch its mutant (a few seeds of slack absorb a
small shift in behaviour), checks which checker fails, and runs the catching seed without the
mutant, which must pass: the mutant, not the seed, is what fails."""

from __future__ import annotations

import pytest

from trimaran.simulations.mutants import END_TO_END_MISSES, MATRIX, MatrixCase, all_mutants
from trimaran.simulations.run import run_seed

#: Seeds tried after the recorded one before the case fails (regenerate MATRIX then).
SLACK_SEEDS = 10


def test_every_mutant_has_a_catching_case() -> None:
    assert {case.mutant for case in MATRIX} == set(all_mutants())
    end_to_end = {case.mutant for case in MATRIX if not case.rules}
    # Each mutant is caught by the end-to-end checkers alone, or is a documented miss of theirs.
    assert end_to_end | set(END_TO_END_MISSES) == set(all_mutants())
    assert not end_to_end & set(END_TO_END_MISSES)


@pytest.mark.parametrize("case", MATRIX, ids=lambda c: f"{c.mutant}-{'rules' if c.rules else 'end_to_end'}")
def test_mutant_is_caught(case: MatrixCase) -> None:
    for seed in range(case.seed, case.seed + SLACK_SEEDS):
        caught = run_seed(seed, case.nodes, case.sim_seconds, (case.mutant,), rules=case.rules)
        if not caught.passed:
            break
    else:
        pytest.fail(f"{case.mutant} not caught in seeds {case.seed}..{case.seed + SLACK_SEEDS - 1}")
    assert caught.category == case.category, caught.message
    clean = run_seed(seed, case.nodes, case.sim_seconds, rules=case.rules)
    assert clean.passed, f"seed {seed} fails without the mutant: {clean.category}: {clean.message}"
