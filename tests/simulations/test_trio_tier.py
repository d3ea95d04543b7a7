"""Canary for the private trio hook tier 2 relies on, and proof that it makes runs replayable."""

from __future__ import annotations

import pytest

import trio

from trimaran.simulations import trio_tier


def racing_program(trace: list[str]) -> "trio_tier.Callable[[], trio_tier.Awaitable[None]]":
    """Many tasks racing on checkpoints and timeouts: their interleaving is the trace."""

    async def worker(name: str, rounds: int) -> None:
        for i in range(rounds):
            trace.append(f"{name}{i}")
            await trio.sleep(0 if i % 2 else 0.001)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for name in "abcdefgh":
                nursery.start_soon(worker, name, 6)

    return main


def trace_for(seed: int) -> list[str]:
    trace: list[str] = []
    trio_tier.run(seed, racing_program(trace))
    return trace


def test_trio_still_has_the_private_scheduling_hook() -> None:
    """Canary: fails if a trio upgrade renames or removes the hook (see setup.cfg's trio pin)."""
    assert trio_tier.hook_available()


def test_same_seed_same_interleaving_and_seeds_differ() -> None:
    first = trace_for(7)
    assert trace_for(7) == first
    others = {tuple(trace_for(seed)) for seed in range(8, 14)}
    assert len(others | {tuple(first)}) > 1, "seeds should produce different interleavings"


def test_mock_clock_makes_simulated_time_free() -> None:
    async def main() -> float:
        await trio.sleep(3600)
        return trio.current_time()

    assert trio_tier.run(1, main) >= 3600


# --- the real node driver under tier 2 -------------------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from trimaran.simulations.trio_tier_cluster import run_tier2  # noqa: E402


@pytest.mark.slow
def test_tier2_sweep_passes_with_crashes_partitions_and_loss() -> None:
    results = [run_tier2(seed, crashes=4) for seed in range(1, 11)]
    assert all(r.ok for r in results), [r.line() for r in results if not r.ok]
    assert sum(r.crashes for r in results) > 5  # the faults really happened
    assert all(r.ops_ok > 0 for r in results)


def test_tier2_replays_from_its_seed_in_process() -> None:
    assert run_tier2(3).digest == run_tier2(3).digest
    assert run_tier2(3).digest != run_tier2(4).digest


def test_tier2_replays_across_processes_and_hash_seeds() -> None:
    code = "from trimaran.simulations.trio_tier_cluster import run_tier2; print(run_tier2(6).digest)"
    digests = set()
    for hash_seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


def test_tier2_checkers_catch_a_planted_bug_and_the_failure_replays() -> None:
    """A heartbeat that lets followers commit past their match breaks state machine safety."""
    first = run_tier2(5, crashes=4, mutants=frozenset({"heartbeat_commit_unbounded"}))
    assert not first.ok and "state machine safety" in first.problem
    again = run_tier2(5, crashes=4, mutants=frozenset({"heartbeat_commit_unbounded"}))
    assert again.problem == first.problem
