"""``trimaran simulate``: the deterministic fault-injection simulator (trimaran.simulations).

Imports of trimaran.simulations stay inside the command: `trimaran --help` stays fast.
"""

from __future__ import annotations

import click

from trimaran.cli import main


@main.command("simulate")
@click.option("--seed", type=int, help="Run one seed: one summary line; exit 1 if it fails.")
@click.option("--seeds", "seed_range", metavar="A..B", help="Run seeds A to B (both included) and print a table.")
@click.option("--nodes", type=click.IntRange(1, 15), default=5, show_default=True, help="Nodes in the simulated cluster.")
@click.option(
    "--sim-seconds",
    type=click.FloatRange(min=20.0),
    default=300.0,
    show_default=True,
    help="Simulated time the run may take: faults strike in its first part, then everything heals, "
    "the clients stop, the final reads run, and the run ends early once every member caught up "
    "(so a summary's sim_s is at most this).",
)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes for --seeds.")
@click.option("--mutant", "mutants", multiple=True, metavar="NAME", help="Plant a bug (see --list-mutants); repeatable.")
@click.option("--list-mutants", is_flag=True, help="List the planted bugs and exit.")
@click.option("--plan", "plan_text", metavar="PLAN|FILE", help="Replay this fault plan (as printed by a shrink).")
@click.option("--shrink/--no-shrink", default=True, show_default=True, help="Shrink the plan of a failing --seed.")
@click.option(
    "--rules/--no-rules",
    default=True,
    show_default=True,
    help="Check protocol rules directly (off: only end-to-end checkers: invariants, linearizability...).",
)
@click.option("-v", "--verbose", is_flag=True, help="Also print the fault plan (to stderr).")
def simulate_command(
    seed: int | None,
    seed_range: str | None,
    nodes: int,
    sim_seconds: float,
    jobs: int,
    mutants: tuple[str, ...],
    list_mutants: bool,
    plan_text: str | None,
    shrink: bool,
    rules: bool,
    verbose: bool,
) -> None:
    """Run the deterministic fault-injection simulator on one seed or a range of seeds."""
    import functools
    import sys
    import time

    from trimaran.simulations import cli_support

    if list_mutants:
        for line in cli_support.mutant_lines():
            click.echo(line)
        return
    if (seed is None) == (seed_range is None):
        raise click.UsageError("give exactly one of --seed S or --seeds A..B")
    try:
        if seed is not None:
            status = cli_support.simulate_one(
                seed, nodes, sim_seconds, mutants, plan_text, shrink, verbose, click.echo, rules
            )
        else:
            assert seed_range is not None
            if plan_text:
                raise click.UsageError("--plan replays one seed: use it with --seed")
            progressbar = functools.partial(click.progressbar, file=sys.stderr)
            status = cli_support.simulate_many(
                seed_range, nodes, sim_seconds, mutants, jobs, click.echo, progressbar, time.perf_counter, rules
            )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(status)

