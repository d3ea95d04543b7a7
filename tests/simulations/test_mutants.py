"""The checkers are proven able to fail: every planted bug is caught (mutation testing of the
simulator). Each case replays the seed known to catch its mutant (a few seeds of slack absorb a
small shift in behaviour), checks which checker fails, and runs the catching seed without the
mutant, which must pass: the mutant, not the seed, is what fails."""

from __future__ import annotations

import pytest

from trimaran.protocols.messages import Membership
from trimaran.simulations.faults import FaultInjector
from trimaran.simulations.mutants import END_TO_END_MISSES, MATRIX, MatrixCase, all_mutants
from trimaran.simulations.plan import decode_plan
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
    if case.plan:
        _check_planned_case(case)
        return
    for seed in range(case.seed, case.seed + SLACK_SEEDS):
        caught = run_seed(seed, case.nodes, case.sim_seconds, (case.mutant,), rules=case.rules)
        if not caught.passed:
            break
    else:
        pytest.fail(f"{case.mutant} not caught in seeds {case.seed}..{case.seed + SLACK_SEEDS - 1}")
    assert caught.category == case.category, caught.message
    clean = run_seed(seed, case.nodes, case.sim_seconds, rules=case.rules)
    assert clean.passed, f"seed {seed} fails without the mutant: {clean.category}: {clean.message}"


def _check_planned_case(case: MatrixCase) -> None:
    """A case with its own fault plan replays exactly that plan (no slack: the plan is the point)."""
    plan = decode_plan(case.plan)
    jobs = case.jobs_workload
    caught = run_seed(case.seed, case.nodes, case.sim_seconds, (case.mutant,), plan=plan, rules=case.rules, jobs_workload=jobs)
    assert not caught.passed and caught.category == case.category, caught.message
    clean = run_seed(case.seed, case.nodes, case.sim_seconds, plan=plan, rules=case.rules, jobs_workload=jobs)
    assert clean.passed, f"the plan fails without the mutant: {clean.category}: {clean.message}"


def test_liveness_report_names_each_nodes_membership_and_whether_a_majority_is_up() -> None:
    """Issue 15: a stuck run says at once whether an electable majority exists."""
    (case,) = [c for c in MATRIX if c.mutant == "removed_never_campaigns"]
    result = run_seed(
        case.seed, case.nodes, case.sim_seconds, (case.mutant,), plan=decode_plan(case.plan), rules=False, jobs_workload=case.jobs_workload
    )
    lines = result.message.splitlines()
    assert lines[0].startswith("no leader within 10 election timeouts of the heal")
    by_node = {line.split()[1]: line for line in lines[1:]}
    assert sorted(by_node) == ["1", "2", "3", "4", "5"]
    # The removed leader holds the uncommitted membership without itself, and its committed one.
    assert "latest voters 2,3,4 learners -: 2 of 3 voters up, a majority is up" in by_node["5"]
    assert "committed voters 2,3,4,5 learners -: 3 of 4 voters up, a majority is up" in by_node["5"]


def test_liveness_report_says_when_no_majority_of_a_membership_is_up() -> None:
    text = FaultInjector._describe_membership(Membership((1, 2, 3), (4,)), up={1, 4})
    assert text == "voters 1,2,3 learners 4: 1 of 3 voters up, NO majority up"
