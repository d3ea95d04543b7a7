"""Run many seeds, in worker processes when asked, and summarise them.

Each seed is independent and deterministic, so a parallel sweep gives the same results as a
sequential one; only the order in which they finish differs (results are reported by seed).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterable

from trimaran.simulations.run import RunResult, run_seed


def parse_seed_range(text: str) -> range:
    """``A..B`` (both included) as a range; raises ValueError on anything else."""
    lo, sep, hi = text.partition("..")
    if not sep:
        raise ValueError(f"expected A..B, got {text!r}")
    first, last = int(lo), int(hi)
    if last < first:
        raise ValueError(f"empty seed range {text!r}")
    return range(first, last + 1)


#: Moving bands start at or above this seed, clear of the fixed bands (1..10_000) and of the
#: hand-run sweep bands (100_001.. and up); the span keeps every seed inside 2**31.
MOVING_SEED_MIN = 1_000_000_000
MOVING_SEED_SPAN = 1_000_000_000


def moving_band(label: str, purpose: str, size: int) -> range:
    """``size`` consecutive seeds picked by ``label`` (CI passes the commit hash) and ``purpose``.

    Every commit explores new seeds, yet a red run replays exactly: the same label gives the same
    band on any machine (sha256, never ``hash()``)."""
    digest = hashlib.sha256(f"{label}:{purpose}".encode()).digest()
    start = MOVING_SEED_MIN + int.from_bytes(digest[:8], "big") % MOVING_SEED_SPAN
    return range(start, start + size)


@dataclass(frozen=True, slots=True)
class SweepSpec:
    """What every run of a sweep shares (the seeds vary)."""

    nodes: int = 5
    sim_seconds: float = 300.0
    mutants: tuple[str, ...] = ()
    rules: bool = True


def _run(seed: int, spec: SweepSpec) -> RunResult:
    return run_seed(seed, spec.nodes, spec.sim_seconds, spec.mutants, rules=spec.rules)


def sweep(
    seeds: Iterable[int],
    spec: SweepSpec,
    jobs: int = 1,
    on_result: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Run every seed; ``on_result`` sees each result as it finishes. Returns them by seed."""
    results: list[RunResult] = []
    if jobs <= 1:
        for seed in seeds:
            result = _run(seed, spec)
            results.append(result)
            if on_result is not None:
                on_result(result)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_run, seed, spec) for seed in seeds]
            for future in as_completed(futures):
                result = future.result()
                results.append(result)
                if on_result is not None:
                    on_result(result)
    results.sort(key=lambda r: r.seed)
    return results


def table(results: list[RunResult], wall_seconds: float, rows_max: int = 50) -> list[str]:
    """The final table: one row per seed (failures only when there are many), then totals."""
    lines = [f"{'seed':>8} {'result':6} {'sim_s':>6} {'ops':>6} {'faults':>6} {'crashes':>7} {'elections':>9}  failure"]
    shown = results if len(results) <= rows_max else [r for r in results if not r.passed]
    for r in shown:
        lines.append(
            f"{r.seed:>8} {'pass' if r.passed else 'FAIL':6} {r.sim_us / 1e6:>6.1f} {r.ops:>6} {r.faults:>6}"
            f" {r.crashes:>7} {r.elections:>9}  {r.category}"
        )
    failed = sum(1 for r in results if not r.passed)
    sim_seconds = sum(r.sim_us for r in results) / 1e6
    lines.append(
        f"{len(results)} seeds: {len(results) - failed} passed, {failed} failed; "
        f"{sum(r.ops for r in results)} ops, {sum(r.faults for r in results)} faults, "
        f"{sum(r.elections for r in results)} elections; {sim_seconds:.0f} simulated s in {wall_seconds:.1f} s "
        f"({len(results) / max(wall_seconds, 1e-9):.2f} seeds/s)"
    )
    return lines
