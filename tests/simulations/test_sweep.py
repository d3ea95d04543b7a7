"""Sweeps of seeds with every checker on: a small one always, the CI-sized one marked slow (it
still runs in ``make test``: nothing deselects the marker)."""

from __future__ import annotations

import os

import pytest

from trimaran.simulations.sweep import SweepSpec, parse_seed_range, sweep

#: The CI sweep: ARCHITECTURE.md's budget is 30 minutes on 2 cores for all of `make test`.
CI_SEEDS = range(1, 301)
CI_SIM_SECONDS = 60.0


def _failures(results: list) -> list[str]:
    return [f"seed {r.seed}: {r.category}: {r.message.splitlines()[0]}\n  {r.replay_command()}" for r in results if not r.passed]


def test_parse_seed_range() -> None:
    assert parse_seed_range("3..5") == range(3, 6)
    with pytest.raises(ValueError):
        parse_seed_range("5")


def test_small_sweep_passes() -> None:
    results = sweep(range(100, 112), SweepSpec(nodes=5, sim_seconds=40.0))
    assert _failures(results) == []
    assert sum(r.ops_ok for r in results) > 1_000
    assert sum(r.faults for r in results) > 20


def test_three_node_sweep_passes() -> None:
    assert _failures(sweep(range(200, 208), SweepSpec(nodes=3, sim_seconds=40.0))) == []


def test_parallel_sweep_gives_the_same_results() -> None:
    spec = SweepSpec(nodes=5, sim_seconds=30.0)
    assert sweep(range(1, 5), spec, jobs=2) == sweep(range(1, 5), spec, jobs=1)


@pytest.mark.slow
def test_ci_sweep_300_seeds_5_nodes_60_seconds() -> None:
    jobs = min(2, os.cpu_count() or 1)
    results = sweep(CI_SEEDS, SweepSpec(nodes=5, sim_seconds=CI_SIM_SECONDS), jobs=jobs)
    assert _failures(results) == []


@pytest.mark.slow
def test_ci_long_runs_30_seeds_300_seconds() -> None:
    """Long histories: sessions, snapshots and faults pile up over 300 simulated seconds."""
    jobs = min(2, os.cpu_count() or 1)
    results = sweep(range(1001, 1031), SweepSpec(nodes=5, sim_seconds=300.0), jobs=jobs)
    assert _failures(results) == []
