"""The KV model of the linearizability checker against the real KV service.

The property: a sequential history produced by the real :class:`KvService` (fed a fake log with
timestamps, like a replica) is linearizable under :class:`KvKeyModel`, with TTLs, conditions,
counters, mset and LRU eviction; and the same history with one answer falsified is not. Hand-made
histories pin the time rules (a read cannot go back in log time, an expired key cannot come back).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimaran.errors import TrimaranError
from trimaran.protocols.service import ApplyContext
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.history import History, OpStatus
from trimaran.simulations.kv_model import NO_COND, KvKeyModel, LogClock, RecordingKv, error_output, normalize
from trimaran.simulations.linearizability import Outcome, check
from trimaran.simulations.workload import command_options

KEYS = (b"a", b"b", b"c")
KEY_COST_BYTES = 256 + 1 + 20


class SequentialRun:
    """Drives one RecordingKv through a fake log and records each operation as the workload does."""

    def __init__(self, maxmemory_bytes: int | None) -> None:
        self.clock = LogClock()
        self.kv = RecordingKv(1, self.clock, maxmemory_bytes=maxmemory_bytes)
        self.history = History()
        self.index = 0
        self.now_ms = 1_000
        self.time = 0

    def _record(self, key: bytes, kind: str, args: tuple[Any, ...], output: Any) -> None:
        op_id = self.history.invoke(7, key, kind, args, self.time)
        self.history.complete(op_id, OpStatus.OK, output, self.time + 1)
        self.time += 2

    def advance(self, ms: int) -> None:
        """A timestamp-only entry (an idle leader moving log time on)."""
        self.now_ms += ms
        self.index += 1
        self.kv.on_time(ApplyContext(self.index, self.now_ms))

    def write(self, command: list[Any], ops: list[tuple[bytes, str, tuple[Any, ...]]]) -> None:
        self.index += 1
        ctx = ApplyContext(self.index, self.now_ms)
        self.kv.on_time(ctx)
        try:
            output = normalize(self.kv.apply(command, ctx))
        except TrimaranError as exc:
            output = error_output(exc.code, exc.details)
            assert output is not None, f"the workload shape must not be refused for {exc!r}"
        for key, kind, args in ops:
            self._record(key, kind, args, output)

    def get(self, key: bytes) -> None:
        value = self.kv.query(["get", key], ApplyContext(self.index, self.now_ms))
        self._record(key, "get", (), normalize(value))


def _run(seed: int, steps: int, evicting: bool) -> SequentialRun:
    rng = random.Random(seed)
    run = SequentialRun(2 * KEY_COST_BYTES + 40 if evicting else None)
    values = iter(range(10**6))
    for _ in range(steps):
        key = rng.choice(KEYS)
        roll = rng.randrange(10)
        if roll == 0:
            run.advance(rng.choice([1, 30, 120, 400]))
        elif roll <= 3:
            run.get(key)
        elif roll <= 5:
            value = (b"x%d" if rng.random() < 0.2 else b"%d") % next(values)
            ttl_ms = rng.choice([None, None, 50, 100, 300])
            seen = run.kv.query(["get", key], ApplyContext(run.index, run.now_ms))
            cond = rng.choice(
                [NO_COND, (True, None, None), (False, 0, None), (False, seen[1] if seen else 3, None), (False, None, b"1")]
            )
            run.write(["set", key, value, command_options(ttl_ms, cond)], [(key, "set", (value, ttl_ms, cond))])
        elif roll == 6:
            delta = rng.choice([1, -2, 7, 1 << 62])
            run.write(["incr", key, delta], [(key, "incr", (delta,))])
        elif roll == 7:
            cond = rng.choice([NO_COND, (False, 0, None), (False, 4, None)])
            run.write(["delete", key, command_options(None, cond)], [(key, "delete", (cond,))])
        else:
            k1, k2 = rng.sample(KEYS, 2)
            v1, v2 = b"%d" % next(values), b"%d" % next(values)
            ttl_ms = rng.choice([None, 80])
            items = [[k1, v1] if ttl_ms is None else [k1, v1, ttl_ms], [k2, v2]]
            run.write(["mset", items], [(k1, "mset", (v1, ttl_ms, NO_COND)), (k2, "mset", (v2, None, NO_COND))])
        if rng.random() < 0.5:
            run.now_ms += rng.choice([0, 10, 60])
    for key in KEYS:
        run.get(key)
    return run


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.integers(1, 60), evicting=st.booleans())
def test_the_real_service_is_linearizable_under_the_model(seed: int, steps: int, evicting: bool) -> None:
    run = _run(seed, steps, evicting)
    result = check(run.history, KvKeyModel(run.clock))
    assert result.outcome is Outcome.OK, result.explain()


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.integers(5, 60), evicting=st.booleans(), pick=st.integers(0, 10**6))
def test_a_falsified_read_is_a_violation(seed: int, steps: int, evicting: bool, pick: int) -> None:
    run = _run(seed, steps, evicting)
    reads = [op for op in run.history if op.kind == "get"]
    op = reads[pick % len(reads)]
    # A value nobody wrote, or a live key claimed with a revision no write of it had.
    op.result = (b"never written", 1, None) if op.result is None else (op.result[0], op.result[1] + 10_000, op.result[2])
    assert check(run.history, KvKeyModel(run.clock)).outcome is Outcome.VIOLATION


def _history(clock: LogClock, ops: list[tuple[str, tuple[Any, ...], Any]]) -> History:
    history = History()
    for t, (kind, args, output) in enumerate(ops):
        op_id = history.invoke(1, b"k", kind, args, 2 * t)
        history.complete(op_id, OpStatus.OK, output, 2 * t + 1)
    return history


def _clock(times: dict[int, int]) -> LogClock:
    clock = LogClock()
    for index, time_ms in times.items():
        clock.record_time(1, index, time_ms)
    return clock


def test_a_read_cannot_go_back_in_log_time() -> None:
    clock = _clock({5: 1_000})
    ok = [("set", (b"v", 100, NO_COND), 5), ("get", (), (b"v", 5, 80)), ("get", (), (b"v", 5, 50))]
    assert check(_history(clock, ok), KvKeyModel(clock)).ok
    back = [("set", (b"v", 100, NO_COND), 5), ("get", (), (b"v", 5, 50)), ("get", (), (b"v", 5, 80))]
    assert check(_history(clock, back), KvKeyModel(clock)).violated


def test_an_expired_key_does_not_come_back() -> None:
    clock = _clock({5: 1_000})
    ops = [("set", (b"v", 100, NO_COND), 5), ("get", (), None), ("get", (), (b"v", 5, 30))]
    assert check(_history(clock, ops), KvKeyModel(clock)).violated
    # Without a TTL, a key cannot read as absent at all.
    ops = [("set", (b"v", None, NO_COND), 5), ("get", (), None)]
    assert check(_history(clock, ops), KvKeyModel(clock)).violated


def test_writes_follow_log_time_and_expiry() -> None:
    clock = _clock({5: 1_000, 9: 1_050, 12: 1_200})
    # At entry 9 the key (expiring at 1100) is live: if_absent must fail, and its answer names rev 5.
    live = [("set", (b"v", 100, NO_COND), 5), ("set", (b"w", None, (True, None, None)), ("condition_failed", 5))]
    assert check(_history(clock, live), KvKeyModel(clock)).ok
    wrongly_absent = [("set", (b"v", 100, NO_COND), 5), ("set", (b"w", None, (True, None, None)), 9)]
    assert check(_history(clock, wrongly_absent), KvKeyModel(clock)).violated
    # At entry 12 (log time 1200) it has expired: an incr starts from 0 and drops the TTL.
    expired = [("set", (b"4", 100, NO_COND), 5), ("incr", (3,), (3, 12)), ("get", (), (b"3", 12, None))]
    assert check(_history(clock, expired), KvKeyModel(clock)).ok
    kept = [("set", (b"4", 100, NO_COND), 5), ("incr", (3,), (7, 12))]
    assert check(_history(clock, kept), KvKeyModel(clock)).violated
    # A write's revision must be an entry some replica applied.
    assert check(_history(clock, [("set", (b"v", None, NO_COND), 6)]), KvKeyModel(clock)).violated


def test_replicas_that_disagree_on_log_time_or_evictions_are_reported() -> None:
    clock = _clock({3: 500})
    with pytest.raises(CheckFailure, match="replicas_diverge"):
        clock.record_time(2, 3, 501)
    clock.record_evictions(1, 4, (b"a",))
    with pytest.raises(CheckFailure, match="replicas_diverge"):
        clock.record_evictions(2, 4, (b"b",))
    assert clock.eviction_from(b"a", 2) == 4 and clock.eviction_from(b"a", 5) is None
