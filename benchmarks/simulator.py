"""Simulated seconds per real second: the deterministic simulator on 5 nodes under faults.

Runs a fixed set of seeds (each with its swarm-drawn faults, workload and every checker on,
linearizability included) and reports, per repetition, simulated seconds divided by wall seconds
on one core; prints the median of the repetitions. Target: >= 500x.

    python benchmarks/simulator.py [--seeds 1..8] [--sim-seconds 60] [--nodes 5] [--runs 3] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # the package, uninstalled too

from trimaran.simulations.run import run_seed  # noqa: E402
from trimaran.simulations.sweep import parse_seed_range  # noqa: E402

TARGET_RATIO = 500


def one_pass(seeds: range, nodes: int, sim_seconds: float) -> tuple[float, float, int, int]:
    """(simulated seconds, wall seconds, events, operations) for one pass over the seeds."""
    sim_s = wall_s = 0.0
    events = ops = 0
    for seed in seeds:
        start = time.perf_counter()
        result = run_seed(seed, nodes, sim_seconds)
        wall_s += time.perf_counter() - start
        assert result.passed, f"seed {seed} failed: {result.category}: {result.message}"
        sim_s += result.sim_us / 1e6
        events += result.events
        ops += result.ops
    return sim_s, wall_s, events, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1..8")
    parser.add_argument("--sim-seconds", type=float, default=60.0)
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile one pass instead")
    args = parser.parse_args()
    seeds = parse_seed_range(args.seeds)
    if args.profile:
        cProfile.runctx("one_pass(seeds, args.nodes, args.sim_seconds)", globals(), locals(), "/tmp/simulator.prof")
        pstats.Stats("/tmp/simulator.prof").sort_stats("tottime").print_stats(25)
        return
    print(f"{'run':>4} {'sim s':>8} {'wall s':>8} {'sim/real':>9} {'events/s':>10} {'ops':>7}")
    ratios = []
    for run in range(1, args.runs + 1):
        sim_s, wall_s, events, ops = one_pass(seeds, args.nodes, args.sim_seconds)
        ratios.append(sim_s / wall_s)
        print(f"{run:>4} {sim_s:>8.0f} {wall_s:>8.2f} {sim_s / wall_s:>8.0f}x {events / wall_s:>10.0f} {ops:>7}")
    median = statistics.median(ratios)
    verdict = "meets" if median >= TARGET_RATIO else "below"
    print(
        f"median: {median:.0f} simulated seconds per real second ({args.nodes} nodes, seeds {args.seeds}, "
        f"{args.sim_seconds:g} s each) - {verdict} the {TARGET_RATIO}x target"
    )


if __name__ == "__main__":
    main()
