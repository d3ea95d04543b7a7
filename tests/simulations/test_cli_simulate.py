"""``trimaran simulate``: the exact output and exit-status contract scripts depend on."""

from __future__ import annotations

import re

from click.testing import CliRunner

from trimaran.cli import main
from trimaran.simulations.mutants import all_mutants

SUMMARY = re.compile(
    r"^seed=(\d+) result=(pass|fail) nodes=\d+ sim_s=[\d.]+ ops=\d+ ok=\d+ faults=\d+ crashes=\d+ "
    r"elections=\d+ events=\d+ (?:mutant=\S+ )?(?:failure=\S+ )?digest=[0-9a-f]{32}$"
)


def test_one_seed_prints_one_summary_line_and_exits_0() -> None:
    result = CliRunner().invoke(main, ["simulate", "--seed", "4", "--sim-seconds", "30"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    match = SUMMARY.match(lines[0])
    assert match and match.group(1) == "4" and match.group(2) == "pass", lines[0]


def test_a_failing_seed_exits_1_and_prints_its_replay_command() -> None:
    from trimaran.simulations.mutants import MATRIX

    case = MATRIX[0]
    args = ["simulate", "--seed", str(case.seed), "--nodes", str(case.nodes), "--sim-seconds", f"{case.sim_seconds:g}"]
    result = CliRunner().invoke(main, [*args, "--mutant", case.mutant, "--no-shrink"])
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 1 and "result=fail" in result.stdout
    assert f"replay: trimaran simulate --seed {case.seed} " in result.stderr


def test_sweep_prints_a_table_and_exits_0_when_all_pass() -> None:
    result = CliRunner().invoke(main, ["simulate", "--seeds", "1..3", "--sim-seconds", "30"])
    assert result.exit_code == 0, result.output
    assert "3 seeds: 3 passed, 0 failed" in result.stdout


def test_list_mutants_names_every_planted_bug() -> None:
    result = CliRunner().invoke(main, ["simulate", "--list-mutants"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(all_mutants())


def test_usage_errors() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["simulate"]).exit_code == 2
    assert runner.invoke(main, ["simulate", "--seed", "1", "--seeds", "1..2"]).exit_code == 2
    assert runner.invoke(main, ["simulate", "--seeds", "5..1"]).exit_code == 2
    assert runner.invoke(main, ["simulate", "--seed", "1", "--mutant", "no_such_bug"]).exit_code == 2
    assert runner.invoke(main, ["simulate", "--seed", "1", "--plan", "wind=3;"]).exit_code == 2
