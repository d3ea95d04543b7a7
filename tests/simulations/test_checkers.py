"""The simulator's own checkers: the register model agrees with the service, exactly-once and the
durable-term rule fire when they should."""

from __future__ import annotations

import random

import pytest

from trimaran.protocols.service import ApplyContext
from trimaran.errors import InvalidArgument
from trimaran.services.register import RegisterService
from trimaran.simulations.checkers import INVALID, CheckFailure, ExactlyOnce, RegisterServiceModel, SimInvariants
from trimaran.simulations.invariants import InvariantViolation


def test_model_matches_the_register_service() -> None:
    """Random commands on one key: the model's output and state track the service's exactly."""
    rng = random.Random(7)
    model = RegisterServiceModel()
    for _ in range(200):
        service, state = RegisterService(), model.init()
        for step in range(30):
            kind = rng.choice(["get", "set", "cas", "delete", "incr"])
            value = rng.choice([b"1", b"41", b"x", b"-3", b"9223372036854775806", None])
            args: tuple[object, ...] = {
                "get": (),
                "set": (value or b"0",),
                "cas": (value, rng.choice([b"5", b"y"])),
                "delete": (),
                "incr": (rng.randint(-3, 3),),
            }[kind]
            state, expected = model.step(state, kind, args)
            ctx = ApplyContext(step + 1, 0)
            if kind == "get":
                got = service.query(["get", b"k"], ctx)
            else:
                try:
                    got = service.apply([kind, b"k", *args], ctx)
                except InvalidArgument:
                    got = INVALID
            assert got == expected, (kind, args)
            assert service.data.get(b"k") == state


def test_exactly_once_flags_a_second_position() -> None:
    checker = ExactlyOnce()
    a, b = checker.observer(1), checker.observer(2)
    a(10, 0, 7, 1, "register", ["set", b"k", b"1"], ("ok", None))
    b(10, 0, 7, 1, "register", ["set", b"k", b"1"], ("ok", None))  # same position elsewhere: fine
    a(10, 0, 7, 1, "register", ["set", b"k", b"1"], ("ok", None))  # re-applied after a restart: fine
    with pytest.raises(CheckFailure, match="already applied at entry 10"):
        b(12, 1, 7, 1, "register", ["set", b"k", b"1"], ("ok", None))


def test_durable_term_never_goes_back() -> None:
    invariants = SimInvariants()
    invariants.on_synced(1, 5)
    invariants.node_crashed(1, 5)  # a crash may lose an unsynced term 6, not the synced 5
    with pytest.raises(InvariantViolation, match="durable term went back"):
        invariants.node_crashed(1, 4)
