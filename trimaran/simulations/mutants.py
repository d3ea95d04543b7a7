"""The planted bugs the simulator must catch, and the seeds known to catch each (the CI matrix).

The switches live in the core (``RaftConfig.mutants``, ``ReplicaConfig.mutants``); this module
only names them for the command line and records, per mutant, a small run that its checkers are
known to fail (``tests/simulations/test_mutants.py`` replays each, and the same run without the
mutant, which must pass).
"""

from __future__ import annotations

from dataclasses import dataclass

from trimaran.cluster.raft import MUTANTS
from trimaran.cluster.replica import REPLICA_MUTANTS


def all_mutants() -> dict[str, str]:
    """Every mutant name with what it breaks, Raft's first."""
    return {**MUTANTS, **REPLICA_MUTANTS}


@dataclass(frozen=True, slots=True)
class MatrixCase:
    """A run a mutant is known to fail (and the core without it passes)."""

    mutant: str
    seed: int
    nodes: int
    sim_seconds: float
    #: The checker that fails it.
    category: str
    #: False: found with the direct rule checks off (the end-to-end checkers alone catch it).
    rules: bool = True


#: Filled in from sweeps (``trimaran simulate --seeds 1..500 --mutant NAME``): the first seed
#: that catches each mutant, on the cheapest configuration that does.
MATRIX: tuple[MatrixCase, ...] = ()


def first_catch(
    mutant: str, seeds: range, nodes: int = 5, sim_seconds: float = 40.0, rules: bool = True
) -> MatrixCase | None:
    """The first seed in ``seeds`` whose run fails with ``mutant`` planted (how MATRIX is made)."""
    from trimaran.simulations.run import run_seed  # run imports the loop; keep this module light

    for seed in seeds:
        result = run_seed(seed, nodes, sim_seconds, (mutant,), rules=rules)
        if not result.passed:
            return MatrixCase(mutant, seed, nodes, sim_seconds, result.category, rules)
    return None
