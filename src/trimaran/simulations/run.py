"""Run one seed and summarise it: the entry point of the CLI, the sweep, the shrinker and tests.

:func:`run_seed` is a pure function of its arguments: the same (seed, nodes, sim_seconds,
mutants, plan) gives the same :class:`RunResult`, digest included, in any process.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from trimaran.simulations.loop import SimConfig, Simulation
from trimaran.simulations.plan import FaultPlan, draw_plan
from trimaran.simulations.workload import draw_workload


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one run did and whether every checker passed; equal runs give equal results."""

    seed: int
    nodes: int
    sim_seconds: float
    mutants: tuple[str, ...]
    passed: bool
    #: Failure category (invariant, linearizability, durability, exactly_once, auth, liveness, crash...).
    category: str
    message: str
    digest: str
    sim_us: int
    ops: int
    ops_ok: int
    faults: int
    faults_skipped: int
    crashes: int
    elections: int
    events: int
    messages: int
    plan: FaultPlan = field(repr=False, compare=False, default_factory=FaultPlan)
    #: True when the plan was given (a replay or a shrink), not drawn from the seed.
    custom_plan: bool = False
    #: False when the direct protocol-rule checks were off.
    rules: bool = True

    def summary(self) -> str:
        """The one summary line: ``seed=S result=pass|fail ... digest=<hex>``."""
        parts = [
            f"seed={self.seed}",
            f"result={'pass' if self.passed else 'fail'}",
            f"nodes={self.nodes}",
            f"sim_s={self.sim_us / 1e6:.1f}",
            f"ops={self.ops}",
            f"ok={self.ops_ok}",
            f"faults={self.faults}",
            f"crashes={self.crashes}",
            f"elections={self.elections}",
            f"events={self.events}",
        ]
        if self.mutants:
            parts.append(f"mutant={','.join(self.mutants)}")
        if not self.passed:
            parts.append(f"failure={self.category}")
        parts.append(f"digest={self.digest}")
        return " ".join(parts)

    def replay_command(self) -> str:
        """The one-line command that replays this run."""
        cmd = ["trimaran", "simulate", "--seed", str(self.seed), "--nodes", str(self.nodes)]
        cmd += ["--sim-seconds", f"{self.sim_seconds:g}"]
        for mutant in self.mutants:
            cmd += ["--mutant", mutant]
        if not self.rules:
            cmd.append("--no-rules")
        if self.custom_plan:
            cmd += ["--plan", self.plan.encode()]
        return shlex.join(cmd)


def sim_config(
    seed: int,
    nodes: int = 5,
    sim_seconds: float = 300.0,
    mutants: tuple[str, ...] = (),
    rules: bool = True,
    jobs_workload: bool = True,
) -> SimConfig:
    return SimConfig(
        seed=seed, nodes=nodes, sim_seconds=sim_seconds, mutants=frozenset(mutants), rules=rules, jobs_workload=jobs_workload
    )


def plan_for(seed: int, nodes: int = 5, sim_seconds: float = 300.0) -> FaultPlan:
    """The plan the seed draws (what a run uses unless it is given one)."""
    config = sim_config(seed, nodes, sim_seconds)
    return draw_plan(seed, nodes, config.heal_us // 1000)


def run_seed(
    seed: int,
    nodes: int = 5,
    sim_seconds: float = 300.0,
    mutants: tuple[str, ...] = (),
    plan: FaultPlan | None = None,
    rules: bool = True,
    jobs_workload: bool = True,
) -> RunResult:
    """Run one seed (with its own plan, or ``plan``) and every checker on it (``rules=False``
    leaves out the direct protocol-rule checks, to measure what the end-to-end checkers catch)."""
    config = sim_config(seed, nodes, sim_seconds, mutants, rules, jobs_workload)
    custom = plan is not None
    if plan is None:
        plan = draw_plan(seed, nodes, config.heal_us // 1000)
    sim = Simulation(config, plan, draw_workload(seed))
    sim.run()
    failure = sim.failure
    ops = sim.history.operations
    return RunResult(
        seed=seed,
        nodes=nodes,
        sim_seconds=sim_seconds,
        mutants=tuple(sorted(mutants)),
        passed=failure is None,
        category=failure.category if failure else "",
        message=failure.message if failure else "",
        digest=sim.digest,
        sim_us=sim.now_us,
        ops=len(ops),
        ops_ok=sum(1 for op in ops if op.is_definite()),
        faults=sim.fault_count,
        faults_skipped=sim.fault_skipped,
        crashes=sim.crash_count,
        elections=len(sim.invariants.leader_of_term),
        events=sim.event_count,
        messages=sim.net.sent_count,
        plan=plan,
        custom_plan=custom,
        rules=rules,
    )
