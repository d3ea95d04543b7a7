"""Tests of the linearizability checker: hand-made histories, a brute-force cross-check, budgets."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trimaran.simulations.history import History, Key, Operation, OpStatus
from trimaran.simulations.linearizability import (
    INVALID_ARGUMENT,
    CheckResult,
    Outcome,
    RegisterModel,
    check,
    check_brute_force,
)

OK = OpStatus.OK
FAILED = OpStatus.FAILED
UNKNOWN_FATE = OpStatus.INDETERMINATE
MODEL = RegisterModel()


def op(
    op_id: int,
    kind: str,
    args: tuple[Any, ...],
    start: int,
    end: int | None,
    result: Any = None,
    status: OpStatus = OK,
    key: Key = b"k",
    client: int | None = None,
) -> Operation:
    """A terse constructor for hand-made histories (client defaults to one per operation)."""
    return Operation(
        op_id, op_id if client is None else client, key, kind, args, start, end, status, result
    )


def verdict(ops: Sequence[Operation]) -> Outcome:
    """The checker's verdict, asserted equal to the brute force's (all hand-made ones are small)."""
    fast = check(ops, MODEL)
    slow = check_brute_force(ops, MODEL)
    assert fast.outcome is slow.outcome, fast.explain() + "\n" + slow.explain()
    return fast.outcome


# --- Hand-made histories: accepted ----------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check([], MODEL)
    assert result.ok and result.partitions_checked == 0


def test_sequential_write_then_read() -> None:
    assert verdict([op(0, "set", (b"1",), 0, 1), op(1, "get", (), 2, 3, b"1")]) is Outcome.OK


def test_concurrent_read_may_see_old_or_new() -> None:
    for seen in (None, b"1"):
        ops = [op(0, "set", (b"1",), 0, 10), op(1, "get", (), 2, 3, seen)]
        assert verdict(ops) is Outcome.OK


def test_shared_endpoint_means_concurrent() -> None:
    # A precedes B only if A.complete_time < B.invoke_time: at equality the read may go first.
    assert verdict([op(0, "set", (b"1",), 0, 5), op(1, "get", (), 5, 6, None)]) is Outcome.OK
    assert verdict([op(0, "set", (b"1",), 0, 5), op(1, "get", (), 6, 7, None)]) is Outcome.VIOLATION


def test_indeterminate_write_never_observed() -> None:
    ops = [
        op(0, "set", (b"1",), 0, 1),
        op(1, "set", (b"2",), 2, None, status=UNKNOWN_FATE),
        op(2, "get", (), 5, 6, b"1"),
        op(3, "get", (), 7, 8, b"1"),
    ]
    assert verdict(ops) is Outcome.OK


def test_indeterminate_write_observed_late() -> None:
    # The client gave up at 3, yet the write lands between 6 and 10: still allowed.
    ops = [
        op(0, "set", (b"1",), 0, 1),
        op(1, "set", (b"2",), 2, 3, status=UNKNOWN_FATE),
        op(2, "get", (), 5, 6, b"1"),
        op(3, "get", (), 10, 11, b"2"),
    ]
    assert verdict(ops) is Outcome.OK


def test_pending_operation_counts_as_indeterminate() -> None:
    history = History()
    write = history.invoke(0, b"k", "set", (b"7",), 0)
    read = history.invoke(1, b"k", "get", (), 4)
    history.complete(read, OK, b"7", 5)
    assert check(history, MODEL).ok  # not finalized: the pending write may have landed
    history.finalize()
    assert history.operations[write].status is UNKNOWN_FATE
    assert check(history, MODEL).ok and check_brute_force(history, MODEL).ok


def test_history_records_ids_in_invocation_order() -> None:
    history = History()
    first = history.invoke(0, b"k", "set", (b"1",), 0)
    second = history.invoke(1, b"k", "set", (b"2",), 1)
    history.complete(second, FAILED, "ignored", 2)
    history.complete(first, OK, None, 3)
    history.finalize()
    assert (first, second) == (0, 1) and len(history) == 2
    assert [o.status for o in history] == [OK, FAILED]
    assert history.operations[second].result is None  # only OK results mean anything
    assert check(history, MODEL).ok


def test_cas_incr_delete_sequence() -> None:
    # Mirrors trimaran.services.register: incr stores decimal ASCII and refuses non-integers.
    ops = [
        op(0, "cas", (None, b"5"), 0, 1, True),
        op(1, "cas", (b"4", b"6"), 2, 3, False),
        op(2, "incr", (2,), 4, 5, 7),
        op(3, "get", (), 6, 7, b"7"),
        op(4, "delete", (), 8, 9, True),
        op(5, "delete", (), 10, 11, False),
        op(6, "incr", (3,), 12, 13, 3),
        op(7, "set", (b"text",), 14, 15),
        op(8, "incr", (1,), 16, 17, INVALID_ARGUMENT),
        op(9, "get", (), 18, 19, b"text"),
    ]
    assert check(ops, MODEL).ok
    assert check_brute_force(ops[:8], MODEL).ok and check_brute_force(ops[6:], MODEL).ok


def test_incr_refusals_change_nothing() -> None:
    top = str((1 << 63) - 1).encode()
    ops = [
        op(0, "set", (top,), 0, 1),
        op(1, "incr", (1,), 2, 3, INVALID_ARGUMENT),  # int64 overflow
        op(2, "incr", (True,), 4, 5, INVALID_ARGUMENT),  # bool is not an int delta
        op(3, "incr", (-1,), 6, 7, (1 << 63) - 2),
    ]
    assert verdict(ops) is Outcome.OK


def test_outputs_compare_with_their_types() -> None:
    # True == 1 in Python; a cas outcome must not pass for an incr result.
    assert verdict([op(0, "incr", (1,), 0, 1, True)]) is Outcome.VIOLATION


# --- Hand-made histories: rejected ----------------------------------------------------------------


def test_stale_read_after_completed_write() -> None:
    ops = [op(0, "set", (b"1",), 0, 1), op(1, "set", (b"2",), 2, 3), op(2, "get", (), 4, 5, b"1")]
    assert verdict(ops) is Outcome.VIOLATION


def test_write_disappears_then_reappears() -> None:
    # set(2) is still running, so either read alone is fine; in sequence they are not.
    ops = [
        op(0, "set", (b"1",), 0, 1),
        op(1, "set", (b"2",), 2, 20),
        op(2, "get", (), 3, 4, b"2"),
        op(3, "get", (), 5, 6, b"1"),
        op(4, "get", (), 7, 8, b"2"),
    ]
    assert verdict(ops) is Outcome.VIOLATION


def test_lost_cas() -> None:
    # Two concurrent compare-and-swaps from the same expected value cannot both win.
    ops = [
        op(0, "set", (b"0",), 0, 1),
        op(1, "cas", (b"0", b"1"), 2, 5, True),
        op(2, "cas", (b"0", b"2"), 3, 6, True),
    ]
    assert verdict(ops) is Outcome.VIOLATION


def test_read_of_a_value_never_written() -> None:
    assert verdict([op(0, "set", (b"1",), 0, 1), op(1, "get", (), 0, 3, b"7")]) is Outcome.VIOLATION


def test_indeterminate_write_observed_then_unobserved() -> None:
    ops = [
        op(0, "set", (b"1",), 0, 1),
        op(1, "set", (b"2",), 2, None, status=UNKNOWN_FATE),
        op(2, "get", (), 3, 4, b"2"),
        op(3, "get", (), 5, 6, b"1"),
    ]
    assert verdict(ops) is Outcome.VIOLATION


def test_failed_write_must_not_be_observed() -> None:
    ops = [op(0, "set", (b"1",), 0, 1, status=FAILED), op(1, "get", (), 2, 3, b"1")]
    assert verdict(ops) is Outcome.VIOLATION


def test_violation_names_key_and_trims_later_operations() -> None:
    ops = [op(0, "set", (b"1",), 0, 1, key=b"a"), op(1, "get", (), 2, 3, b"1", key=b"a")]
    ops += [op(2, "set", (b"1",), 0, 1, key=b"b"), op(3, "get", (), 2, 3, None, key=b"b")]
    # Operations on b"b" long after the stale read are irrelevant to the explanation.
    ops += [op(4 + i, "set", (b"%d" % i,), 10 + 2 * i, 11 + 2 * i, key=b"b") for i in range(5)]
    result = check(ops, MODEL)
    assert result.violated and not result.ok
    assert result.key == b"b"
    assert [o.op_id for o in result.operations] == [2, 3]
    assert [o.op_id for o in result.longest_prefix] == [2]
    assert check(result.operations, MODEL).violated
    assert "#3" in result.explain()


def test_unknown_operation_kind_is_an_error() -> None:
    with pytest.raises(ValueError):
        check([op(0, "frobnicate", (), 0, 1)], MODEL)


# --- Determinism ----------------------------------------------------------------------------------


def test_same_history_same_result_and_counters() -> None:
    ops = simulated_history(seed=3, ops_count=80, clients=6)
    ops[-1].result = "corrupted"
    first = check(ops, MODEL)
    shuffled = list(ops)
    random.Random(1).shuffle(shuffled)
    for again in (check(ops, MODEL), check(shuffled, MODEL)):
        assert again == first


# --- Budget ---------------------------------------------------------------------------------------


def exhausting_history() -> list[Operation]:
    """Twelve concurrent writes, then a read of a value none wrote: 12 * 2^11 states to refute."""
    ops = [op(i, "set", (b"%d" % i,), 0, 100) for i in range(12)]
    return ops + [op(12, "get", (), 200, 201, b"99")]


def test_budget_exceeded_is_neither_pass_nor_fail() -> None:
    result = check(exhausting_history(), MODEL, max_states=100)
    assert result.outcome is Outcome.UNKNOWN
    assert not result.ok and not result.violated
    assert result.states_explored == 100
    assert "unknown" in result.explain()
    assert check(exhausting_history(), MODEL).violated  # with room, it decides


def test_violation_elsewhere_beats_unknown() -> None:
    bad = [op(20, "set", (b"1",), 0, 1, key=b"z"), op(21, "get", (), 2, 3, b"2", key=b"z")]
    assert check(exhausting_history() + bad, MODEL, max_states=100).violated
    good = [op(20, "set", (b"1",), 0, 1, key=b"z"), op(21, "get", (), 2, 3, b"1", key=b"z")]
    unknown = check(good + exhausting_history(), MODEL, max_states=100)
    assert unknown.outcome is Outcome.UNKNOWN and unknown.key == b"k"


# --- Nondeterministic models (the hook for TTLs) --------------------------------------------------


class CoinModel:
    """``flip`` leaves heads (1) or tails (0), chosen by the world; ``get`` reads it."""

    def init(self) -> Hashable:
        return 0

    def step_choices(self, state: Any, operation: Operation) -> Sequence[tuple[Hashable, Any]]:
        if operation.kind == "flip":
            return ((0, None), (1, None))
        return ((state, state),)


def test_nondeterministic_model_branches() -> None:
    coin = CoinModel()
    good = [op(0, "flip", (), 0, 1), op(1, "get", (), 2, 3, 1), op(2, "get", (), 4, 5, 1)]
    assert check(good, coin).ok and check_brute_force(good, coin).ok
    bad = [op(0, "flip", (), 0, 1), op(1, "get", (), 2, 3, 1), op(2, "get", (), 4, 5, 0)]
    assert check(bad, coin).violated and check_brute_force(bad, coin).violated


# --- Realistic size -------------------------------------------------------------------------------


def simulated_history(
    seed: int, ops_count: int = 200, clients: int = 10, indeterminate_count: int = 4
) -> list[Operation]:
    """A linearizable one-key history: clients issue ops back to back, each taking effect at a
    random point of its interval; a few writes time out, half of which never take effect."""
    rng = random.Random(seed)
    free_at = [0] * clients
    ops: list[Operation] = []
    points: dict[int, int] = {}
    for op_id in range(ops_count):
        client = min(range(clients), key=lambda c: (free_at[c], c))
        start = free_at[client] + rng.randint(0, 3)
        end = start + rng.randint(1, 20)
        free_at[client] = end + 1
        kind = rng.choice(["get"] * 8 + ["set"] * 6 + ["cas"] * 3 + ["incr"] * 2 + ["delete"])
        value, other = b"%d" % rng.randint(0, 4), b"%d" % rng.randint(0, 4)
        args = {"get": (), "delete": (), "set": (value,), "incr": (1,)}.get(kind, (value, other))
        ops.append(Operation(op_id, client, b"k", kind, args, start, end, OK))
        points[op_id] = rng.randint(start, end)
    writes = [o for o in ops if o.kind != "get"]
    for victim in rng.sample(writes, indeterminate_count):
        victim.status = UNKNOWN_FATE
        if victim.op_id % 2:
            del points[victim.op_id]  # lost: never took effect
        else:
            points[victim.op_id] += rng.randint(0, 50)  # lands long after the timeout
    state: Hashable = MODEL.init()
    for op_id in sorted(points, key=lambda i: (points[i], i)):
        state, output = MODEL.step(state, ops[op_id].kind, ops[op_id].args)
        if ops[op_id].status is OK:
            ops[op_id].result = output
    return ops


@pytest.mark.parametrize("seed", range(5))
def test_realistic_history_checks_cheaply(seed: int) -> None:
    # 200 ops, 10 clients, 4 timed-out writes. Budgets are in states, not seconds, so the test
    # is deterministic; at a few microseconds a state, both are far under a second.
    ops = simulated_history(seed)
    result = check(ops, MODEL, max_states=5_000)
    assert result.ok, result.explain()
    # A late violation is the worst case: everything before it must be refuted.
    reads = [o for o in ops if o.kind == "get" and o.status is OK]
    reads[-1].result = "never written"
    assert check(ops, MODEL, max_states=100_000).violated


# --- Cross-check against brute force --------------------------------------------------------------

KINDS = ("get", "set", "cas", "delete", "incr")
# Few distinct values, so that different linearizations often produce the same outputs.
VALUES = st.sampled_from([b"0", b"1", b"2", b"x"])
RESULTS = {
    "get": st.sampled_from([None, b"0", b"1", b"2", b"3", b"x"]),
    "set": st.none(),
    "cas": st.booleans(),
    "delete": st.booleans(),
    "incr": st.sampled_from([0, 1, 2, 3, INVALID_ARGUMENT]),
}


@st.composite
def random_operations(draw: st.DrawFn) -> list[Operation]:
    """Up to 8 operations on 1-2 keys with random intervals and statuses, results unset."""
    keys = draw(st.sampled_from([(b"a",), (b"a", b"b")]))
    ops = []
    for op_id in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(KINDS))
        args: tuple[Any, ...] = {
            "get": (),
            "delete": (),
            "set": (draw(VALUES),),
            "cas": (draw(st.sampled_from([None, b"0", b"1", b"x"])), draw(VALUES)),
            "incr": (draw(st.sampled_from([-1, 1])),),
        }[kind]
        start = draw(st.integers(0, 12))
        end: int | None = start + draw(st.integers(0, 6))
        status = draw(st.sampled_from([OK, OK, OK, OK, FAILED, UNKNOWN_FATE, None]))
        if status in (UNKNOWN_FATE, None) and draw(st.booleans()):
            end = None  # never heard back
        client, key = draw(st.integers(0, 3)), draw(st.sampled_from(keys))
        ops.append(Operation(op_id, client, key, kind, args, start, end, status))
    return ops


@st.composite
def executed_histories(draw: st.DrawFn) -> list[Operation]:
    """Random operations whose results come from running one valid linearization."""
    ops = draw(random_operations())
    points = {}
    for o in ops:
        if o.status is OK:
            assert o.complete_time is not None
            points[o.op_id] = draw(st.integers(o.invoke_time, o.complete_time))
        elif o.status is not FAILED and draw(st.booleans()):
            points[o.op_id] = o.invoke_time + draw(st.integers(0, 20))
    tiebreak = draw(st.permutations(range(len(ops))))
    states: dict[Key, Hashable] = {}
    for op_id in sorted(points, key=lambda i: (points[i], tiebreak[i])):
        o = ops[op_id]
        states[o.key], output = MODEL.step(states.get(o.key, MODEL.init()), o.kind, o.args)
        if o.status is OK:
            o.result = output
    return ops


@st.composite
def arbitrary_histories(draw: st.DrawFn) -> list[Operation]:
    """Either random results, or an executed history with one result changed (near misses)."""
    if draw(st.booleans()):
        ops = draw(random_operations())
        for o in ops:
            o.result = draw(RESULTS[o.kind])
        return ops
    ops = draw(executed_histories())
    definite = [o for o in ops if o.status is OK]
    if definite:
        victim = draw(st.sampled_from(definite))
        victim.result = draw(RESULTS[victim.kind])
    return ops


def assert_agrees_with_brute_force(ops: list[Operation]) -> CheckResult:
    """check == brute force; on a violation the explanation is itself sound."""
    fast = check(ops, MODEL)
    slow = check_brute_force(ops, MODEL)
    assert fast.outcome is slow.outcome, fast.explain() + "\n" + slow.explain()
    if fast.violated:
        assert check_brute_force(fast.operations, MODEL).violated, fast.explain()
        assert is_valid_prefix(fast.longest_prefix)
    return fast


def is_valid_prefix(sequence: Sequence[Operation]) -> bool:
    """A legal sequential run that respects real-time order among its own operations."""
    state: Hashable = MODEL.init()
    for position, o in enumerate(sequence):
        state, output = MODEL.step(state, o.kind, o.args)
        if o.status is OK and (type(output) is not type(o.result) or output != o.result):
            return False
        for later in sequence[position + 1 :]:
            if later.complete_time is not None and later.status is OK:
                if later.complete_time < o.invoke_time:
                    return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(executed_histories())
def test_executed_histories_pass_and_agree(ops: list[Operation]) -> None:
    assert assert_agrees_with_brute_force(ops).ok


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_histories())
def test_arbitrary_histories_agree(ops: list[Operation]) -> None:
    assert_agrees_with_brute_force(ops)
