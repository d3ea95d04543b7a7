"""Canary for the private trio hook tier 2 relies on, and proof that it makes runs replayable."""

from __future__ import annotations

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
