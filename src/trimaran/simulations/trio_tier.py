"""Simulator tier 2: run real trio runtime code deterministically from a seed.

Tier 1 drives the pure core with its own event loop. Tier 2 runs the real runtime code (the node
driver, transport logic) under trio with two things pinned:

- time: ``trio.testing.MockClock`` with ``autojump_threshold=0`` — when every task is blocked the
  clock jumps to the next deadline, so simulated seconds cost no real time and no real clock is read;
- scheduling: trio's deterministic-scheduling hook, seeded. trio picks the order of runnable tasks
  from a private ``random.Random`` (``trio._core._run._r``); when ``_ALLOW_DETERMINISTIC_SCHEDULING``
  is true it first sorts each batch of runnable tasks by creation counter, then shuffles it with
  that generator. Seeding it makes every interleaving replay from the seed.

These are private trio names, so setup.cfg pins trio to a minor series and
``tests/simulations/test_trio_tier.py`` is the canary that fails if trio changes them.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import trio
import trio.testing

T = TypeVar("T")


def _run_module() -> Any:
    import trio._core._run as run_module  # private: see the module docstring

    return run_module


def hook_available() -> bool:
    """True if this trio still has the private scheduling hook tier 2 relies on."""
    module = _run_module()
    return hasattr(module, "_ALLOW_DETERMINISTIC_SCHEDULING") and isinstance(getattr(module, "_r", None), random.Random)


@contextlib.contextmanager
def deterministic_scheduling(seed: int) -> Iterator[None]:
    """Within the block, trio schedules runnable tasks in an order fixed by ``seed``."""
    module = _run_module()
    assert hook_available(), "trio changed its deterministic-scheduling hook; see trio_tier.py"
    saved_flag = module._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = module._r.getstate()
    module._ALLOW_DETERMINISTIC_SCHEDULING = True
    module._r.seed(seed)
    try:
        yield
    finally:
        module._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag
        module._r.setstate(saved_state)


def run(seed: int, main: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(main)`` on a MockClock with seeded scheduling: same seed, same execution."""
    clock = trio.testing.MockClock(autojump_threshold=0)
    with deterministic_scheduling(seed):
        return trio.run(main, clock=clock)
