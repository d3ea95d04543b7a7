"""What ``trimaran simulate`` prints, kept out of ``cli.py`` (which only parses and calls).

Output contract (scripts depend on it): a single seed prints exactly one line on stdout, with
``seed=S``, ``result=pass|fail``, counts and ``digest=<hex>``; details of a failure (the checker's
report, the replay command, the shrunk plan) go to stderr. Exit status 0 on pass, 1 on fail.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from trimaran.simulations.mutants import all_mutants
from trimaran.simulations.plan import FaultPlan, decode_plan
from trimaran.simulations.run import RunResult, plan_for, run_seed
from trimaran.simulations.shrink import shrink as shrink_plan
from trimaran.simulations.sweep import SweepSpec, parse_seed_range, sweep, table

Echo = Callable[..., None]


def mutant_lines() -> list[str]:
    mutants = all_mutants()
    width = max(map(len, mutants))
    return [f"{name:<{width}}  {what}" for name, what in mutants.items()]


def _check_mutants(mutants: tuple[str, ...]) -> None:
    unknown = [m for m in mutants if m not in all_mutants()]
    if unknown:
        raise ValueError(f"unknown mutant {', '.join(unknown)} (see --list-mutants)")


def load_plan(text: str) -> FaultPlan:
    """A plan from its compact text, or from a file holding it."""
    path = Path(text)
    if len(text) < 4096 and path.is_file():
        text = path.read_text()
    return decode_plan(text)


def simulate_one(
    seed: int,
    nodes: int,
    sim_seconds: float,
    mutants: tuple[str, ...],
    plan_text: str | None,
    shrink: bool,
    verbose: bool,
    echo: Echo,
    rules: bool = True,
) -> int:
    _check_mutants(mutants)
    plan = load_plan(plan_text) if plan_text else None
    if verbose:
        for line in (plan or plan_for(seed, nodes, sim_seconds)).describe():
            echo(line, err=True)
    result = run_seed(seed, nodes, sim_seconds, mutants, plan, rules)
    echo(result.summary())
    if result.passed:
        return 0
    echo(f"{result.category}: {result.message}", err=True)
    echo(f"replay: {result.replay_command()}", err=True)
    if shrink:
        _report_shrink(result, echo)
    return 1


def _report_shrink(result: RunResult, echo: Echo) -> None:
    echo(f"shrinking the fault plan ({len(result.plan.faults)} faults)...", err=True)
    shrunk = shrink_plan(
        result.seed, result.nodes, result.sim_seconds, result.mutants, result.plan, rules=result.rules
    )
    final = shrunk.shrunk
    echo(f"shrunk in {shrunk.runs} runs to {len(final.plan.faults)} faults; still fails: {final.category}", err=True)
    for line in final.plan.describe():
        echo("  " + line, err=True)
    echo(f"replay shrunk: {final.replay_command()}", err=True)


def simulate_many(
    seed_range: str,
    nodes: int,
    sim_seconds: float,
    mutants: tuple[str, ...],
    jobs: int,
    echo: Echo,
    progressbar: Any,
    wall_clock: Callable[[], float],
    rules: bool = True,
) -> int:
    """``progressbar`` is click's (pointed at stderr); ``wall_clock`` times the sweep for its
    table only: no run ever sees it (the simulator package itself never reads a clock)."""
    _check_mutants(mutants)
    seeds = parse_seed_range(seed_range)
    spec = SweepSpec(nodes, sim_seconds, tuple(mutants), rules)
    start = wall_clock()
    with progressbar(length=len(seeds), label=f"simulating {len(seeds)} seeds") as bar:
        results = sweep(seeds, spec, jobs, on_result=lambda _: bar.update(1))
    for line in table(results, wall_clock() - start):
        echo(line)
    failures = [r for r in results if not r.passed]
    for r in failures:
        echo(f"FAIL seed={r.seed} {r.category}: {r.message.splitlines()[0] if r.message else ''}")
        echo(f"  replay: {r.replay_command()}")
    return 1 if failures else 0
