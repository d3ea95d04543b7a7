"""Property tests of the KV service against the naive model in ``kv_model``, driven by a fake log.

The fake log is what the Replica does: each entry has an index (gaps stand for no-op and membership
entries) and a non-decreasing leader timestamp; ``on_time`` runs before the entry's commands, and
queries are answered at the last entry's index and timestamp. TTLs are small and time moves in
small steps, so keys often expire exactly at an entry's timestamp (the boundary).
"""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.services.kv_model import ModelKv
from trimaran.errors import TrimaranError
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.service import ApplyContext
from trimaran.services.kv import ENTRY_OVERHEAD_BYTES, KvService

KEYS = [b"a", b"ab", b"abc", b"b", b"ba", b"c"]
PREFIXES = [b"", b"a", b"ab", b"b", b"c", b"z"]
VALUES = [b"", b"x", b"1", b"-5", b"0", b"01", b"+3", b"9223372036854775807", b"-9223372036854775808", b"hello"]

keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES) | st.binary(max_size=12)
ttls = st.none() | st.integers(1, 60)
deltas = st.sampled_from([1, -1, 5, 1 << 62, -(1 << 63), (1 << 63) - 1]) | st.integers(-100, 100)


def digest(svc: KvService) -> str:
    return hashlib.sha256(pack(svc.snapshot())).hexdigest()


def outcome(fn: Any, *a: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*a))
    except TrimaranError as exc:
        return ("err", type(exc))


@st.composite
def commands(draw: st.DrawFn, model: ModelKv) -> list[Any]:
    """One well-formed command; conditions often name a revision or value the key really has."""
    op = draw(st.sampled_from(["set", "set", "set", "delete", "incr", "decr", "mset", "touch", "expire"]))
    key = draw(keys)
    cur = model.data.get(key)
    if op in ("set", "delete"):
        opts: dict[str, Any] = {}
        if draw(st.booleans()):
            known = [0, cur[1]] if cur else [0, model.revision]
            opts["if_revision"] = draw(st.sampled_from(known) | st.integers(0, model.revision + 1))
        if draw(st.integers(0, 3)) == 0:
            opts["if_value"] = draw(st.sampled_from([cur[0]]) if cur and draw(st.booleans()) else values)
        if op == "set":
            opts["ttl_ms"] = draw(ttls)
            opts["if_absent"] = draw(st.sampled_from([None, False, True]))
            return ["set", key, draw(values), opts]
        return ["delete", key, opts] if opts else ["delete", key]
    if op in ("incr", "decr"):
        return [op, key, draw(deltas)]
    if op == "mset":
        chosen = draw(st.lists(keys, min_size=1, max_size=4, unique=True))
        return ["mset", [[k, draw(values)] + ([t] if (t := draw(ttls)) is not None else []) for k in chosen]]
    if op == "touch":
        return ["touch", key]
    return ["expire", key, draw(ttls)]


def compare_reads(svc: KvService, model: ModelKv, ctx: ApplyContext, data: st.DataObject) -> None:
    now = ctx.timestamp_ms
    for key in KEYS:
        assert svc.query(["get", key], ctx) == model.get(key, now), key
    assert svc.query(["mget", KEYS], ctx) == [model.get(k, now) for k in KEYS]
    prefix = data.draw(st.sampled_from(PREFIXES))
    limit = data.draw(st.integers(1, 4))
    items: list[list[Any]] = []
    page = svc.query(["scan", prefix, {"limit": limit}], ctx)
    while True:
        assert len(page["items"]) <= limit
        items += page["items"]
        if page["next"] is None:
            break
        page = svc.query(["scan", prefix, {"limit": limit, "start_after": page["next"]}], ctx)
    assert items == model.scan_all(prefix, now)
    stats = svc.query(["stats"], ctx)
    assert stats["keys"] == len(model.data) and stats["used_bytes"] == model.used_bytes()
    assert (stats["revision"], stats["expired_keys_total"], stats["evicted_keys_total"]) == (
        model.revision, model.expired, model.evicted,
    )  # fmt: skip
    deadlines = [e[2] for e in model.data.values() if e[2] is not None]
    assert svc.next_deadline_ms() == (min(deadlines) if deadlines else None)
    compare_watch(svc, model, ctx, data)


def compare_watch(svc: KvService, model: ModelKv, ctx: ApplyContext, data: st.DataObject) -> None:
    match = data.draw(st.sampled_from(PREFIXES[1:]))
    is_prefix = data.draw(st.booleans())
    start = data.draw(st.integers(0, model.revision + 1))
    limit = data.draw(st.integers(1, 3))
    expected = model.watch(match, is_prefix, start)
    got = outcome(svc.query, ["watch", match, start, {"prefix": is_prefix, "limit": limit}], ctx)
    if expected[0] == "err" or got[0] == "err":
        event("watch -> compacted")
        assert got == expected
        return
    events: list[list[Any]] = []
    page = got[1]
    while True:
        if events and page["events"]:
            assert page["events"][0][0] > events[-1][0], "a page never splits a revision"
        events += page["events"]
        if not page["events"]:
            assert page["next"] == max(start, model.revision), "a drained watch moves to the current revision"
            break
        page = svc.query(["watch", match, page["next"], {"prefix": is_prefix, "limit": limit}], ctx)
    assert events == expected[1]


configs = st.fixed_dictionaries(
    {
        # Mostly bounded and mostly lru, so evictions (the subtle part) happen in most examples.
        "maxmemory_bytes": st.one_of(
            st.none(),
            st.integers(3 * ENTRY_OVERHEAD_BYTES, 6 * ENTRY_OVERHEAD_BYTES + 40),
            st.integers(2 * ENTRY_OVERHEAD_BYTES, 4 * ENTRY_OVERHEAD_BYTES),
        ),
        "eviction_policy": st.sampled_from(["lru", "lru", "noeviction"]),
        "watch_history_max": st.integers(1, 25),
    }
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, data=st.data())
def test_service_matches_the_model(config: dict[str, Any], data: st.DataObject) -> None:
    svc = KvService(**config)
    model = ModelKv(**config)
    index, now = 0, data.draw(st.integers(0, 1_000))
    ctx = ApplyContext(1, now)
    for _ in range(data.draw(st.integers(1, 40))):
        index += data.draw(st.sampled_from([1, 1, 1, 2]))
        now += data.draw(st.sampled_from([0, 1, 5, 10, 20, 30]))
        ctx = ApplyContext(index, now)
        svc.on_time(ctx)
        for _ in range(data.draw(st.integers(0, 3))):  # 0: a timestamp-only (clock) entry
            cmd = data.draw(commands(model))
            before = digest(svc)
            got = outcome(svc.apply, cmd, ctx)
            assert got == model.apply(cmd, index, now), cmd
            event(f"{cmd[0]} -> {got[1].__name__ if got[0] == 'err' else 'ok'}")
            if got[0] == "err":
                assert digest(svc) == before, "a refused command changes nothing"
        model.advance(index, now)  # an entry without commands still expires keys
        compare_reads(svc, model, ctx, data)
    event(f"evicted > 0: {model.evicted > 0}")
    event(f"expired > 0: {model.expired > 0}")


class SnapshotMachine(RuleBasedStateMachine):
    """Two services fed the same log; one is now and then rebuilt from its own snapshot (through
    msgpack, as the Replica stores it). Their snapshots stay byte-identical and they answer alike."""

    @initialize(config=configs)
    def setup(self, config: dict[str, Any]) -> None:
        self.config = config
        self.a = KvService(**config)
        self.b = KvService(**config)
        self.model = ModelKv(**config)
        self.index, self.now = 0, 1_000
        self.restores = 0

    @rule(data=st.data(), step_ms=st.sampled_from([0, 1, 7, 25]), count=st.integers(0, 3))
    def entry(self, data: st.DataObject, step_ms: int, count: int) -> None:
        self.index += 1
        self.now += step_ms
        ctx = ApplyContext(self.index, self.now)
        self.a.on_time(ctx)
        self.b.on_time(ctx)
        for _ in range(count):
            cmd = data.draw(commands(self.model))
            self.model.apply(cmd, self.index, self.now)
            assert outcome(self.a.apply, cmd, ctx) == outcome(self.b.apply, cmd, ctx)
        self.model.advance(self.index, self.now)

    @precondition(lambda self: self.index > 0)
    @rule()
    def restore_b(self) -> None:
        fresh = KvService(**self.config)
        fresh.restore(unpack(pack(self.b.snapshot())))
        self.b = fresh
        self.restores += 1

    @invariant()
    def identical(self) -> None:
        if not hasattr(self, "a"):
            return
        assert digest(self.a) == digest(self.b)
        ctx = ApplyContext(max(self.index, 1), self.now)
        for q in (["scan", b""], ["stats"], ["watch", b"", 0, {"prefix": True}]):
            assert outcome(self.a.query, q, ctx) == outcome(self.b.query, q, ctx)
        assert self.a.next_deadline_ms() == self.b.next_deadline_ms()


SnapshotMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestSnapshotMachine = SnapshotMachine.TestCase


#: The steps the RESP port puts in a MULTI's txn beyond the model's commands: SET XX / KEEPTTL,
#: APPEND, MSETNX.
redis_steps = st.one_of(
    st.builds(lambda k, v, o: ["set", k, v, o], keys, values, st.sampled_from([{"if_exists": True}, {"keep_ttl": True}, {"if_exists": True, "keep_ttl": True}])),
    st.builds(lambda k, v: ["append", k, v], keys, values),
    st.builds(lambda pairs: ["mset", [[k, v] for k, v in pairs.items()], {"if_absent": True}], st.dictionaries(keys, values, min_size=1, max_size=3)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_a_txn_is_its_steps_applied_in_one_entry(data: st.DataObject) -> None:
    """``txn`` of steps = the same steps applied one after another in one entry: the same result
    or error per step and byte-identical state (snapshot) on two replicas."""
    a, b = KvService(maxmemory_bytes=6 * ENTRY_OVERHEAD_BYTES), KvService(maxmemory_bytes=6 * ENTRY_OVERHEAD_BYTES)
    model = ModelKv()
    now_ms = 1_000
    for index in range(1, data.draw(st.integers(2, 6))):
        now_ms += data.draw(st.integers(0, 20))
        ctx = ApplyContext(index, now_ms)
        steps = data.draw(st.lists(commands(model) | redis_steps | st.builds(lambda k: ["get", k], keys), max_size=6))
        a.on_time(ctx)
        b.on_time(ctx)
        alone = []
        for step in steps:
            if step[0] == "get":
                alone.append(("ok", a.query(step, ctx)))
            else:
                alone.append(outcome(a.apply, step, ctx))
        together = b.apply(["txn", steps], ctx)
        assert [("ok", r) if ok else ("err", r["code"]) for ok, r in together] == [
            (kind, r) if kind == "ok" else ("err", r.code) for kind, r in alone
        ]
        assert digest(a) == digest(b)
