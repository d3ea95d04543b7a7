"""Suite-wide markers: ``make test-quick`` runs ``-m "not slow"``, the unit and property tests.

Tests that start real nodes, sockets or processes (``tests/node``, ``tests/client``, ``tests/chaos``), the type
check, and the mutant matrix (a simulated run per planted bug: CI's proof that the checkers can
fail, not the edit-test loop's) are slow by where they live; elsewhere a test is marked
``@pytest.mark.slow`` by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_SLOW_PLACES = ("node", "client", "chaos", "test_typecheck.py", "simulations/test_mutants.py")
_TESTS = Path(__file__).parent


#: Tests that run longest (the simulator bands, 15-50 s each): collected first, so that under
#: pytest-xdist they start early and the short tests fill the end, rather than one band running
#: alone on one core at the end of the run.
_LONG_FIRST = "simulations/test_sweep.py::test_ci_"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(item.fspath).relative_to(_TESTS).parts
        if parts and (parts[0] in _SLOW_PLACES or "/".join(parts[:2]) in _SLOW_PLACES):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: _LONG_FIRST not in item.nodeid)  # stable: the rest keep their order


@pytest.fixture(autouse=True)
def gc_tuned(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """`node run` invoked in-process (click's CliRunner) reaches ``run_node_process``, which tunes
    the interpreter for a node's process (``node.tune_gc``: freezes every object, raises the gen-0
    threshold). In a test worker that would freeze the tests' own garbage and change the collector
    for every later test, so here it only records the call (tests assert on the list)."""
    from trimaran.node import node

    calls: list[None] = []
    monkeypatch.setattr(node, "tune_gc", lambda: calls.append(None))
    return calls
