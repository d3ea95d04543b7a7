"""The simulator's own checkers: exactly-once, outcome agreement and the durable-term rule fire
when they should (the KV model has its own tests in test_kv_model.py)."""

from __future__ import annotations

import pytest

from trimaran.simulations.checkers import CheckFailure, ExactlyOnce, SimInvariants
from trimaran.simulations.invariants import InvariantViolation


def test_exactly_once_flags_a_second_position() -> None:
    checker = ExactlyOnce()
    a, b = checker.observer(1), checker.observer(2)
    a(10, 0, 7, 1, "register", ["set", b"k", b"1"], ("ok", None))
    b(10, 0, 7, 1, "register", ["set", b"k", b"1"], ("ok", None))  # same position elsewhere: fine
    a(10, 0, 7, 1, "register", ["set", b"k", b"1"], ("ok", None))  # re-applied after a restart: fine
    with pytest.raises(CheckFailure, match="already applied at entry 10"):
        b(12, 1, 7, 1, "register", ["set", b"k", b"1"], ("ok", None))


def test_exactly_once_flags_replicas_that_disagree_on_an_outcome() -> None:
    checker = ExactlyOnce()
    a, b = checker.observer(1), checker.observer(2)
    a(10, 0, 7, 1, "kv", ["incr", b"k", 1], ("ok", [1, 10]))
    with pytest.raises(CheckFailure, match="replicas_diverge"):
        b(10, 0, 7, 1, "kv", ["incr", b"k", 1], ("ok", [5, 10]))


def test_durable_term_never_goes_back() -> None:
    invariants = SimInvariants()
    invariants.on_synced(1, 5)
    invariants.node_crashed(1, 5)  # a crash may lose an unsynced term 6, not the synced 5
    with pytest.raises(InvariantViolation, match="durable term went back"):
        invariants.node_crashed(1, 4)
