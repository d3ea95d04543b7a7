"""Property tests of the chat service against the naive model in ``chat_model``, driven by a fake log.

The fake log is what the Replica does: each entry has an index and a non-decreasing leader
timestamp; ``on_time`` runs before the entry's commands, and queries are answered at the last
entry. Bounds are tiny (a few messages, a few hundred bytes, ages and TTLs of a few steps) so that
every retention rule, lapse and window drop happens in most examples, often at the exact boundary.
"""

from __future__ import annotations

import hashlib
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.services.chat_model import ModelChat
from trimaran.errors import TrimaranError
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.service import ApplyContext
from trimaran.services.chat import ChatService

CHANNELS = ["a", "b", "room.1"]
MESSAGE_BYTES_MAX = 24
STEPS_MS = [0, 0, 1, 100, 250, 500, 1_000]

configs = st.fixed_dictionaries(
    {
        "message_bytes_max": st.just(MESSAGE_BYTES_MAX),
        "channels_max": st.integers(1, 3),
        "history_messages_max": st.integers(1, 6),
        "history_bytes_max": st.integers(88, 300),
        "history_bytes_total_max": st.integers(300, 700),
        "history_age_ms": st.sampled_from([500, 1_000, 2_500, 10_000]),
        "events_max": st.integers(1, 30),
        "events_bytes_max": st.integers(1_300, 3_000),
        "presence_ttl_ms": st.sampled_from([1_000, 1_500]),
        "presence_sessions_max": st.integers(1, 3),
        "presence_members_max": st.integers(1, 3),
        "presence_channels_per_session_max": st.integers(1, 3),
        "history_limit_max": st.integers(1, 4),
    }
)


def digest(svc: ChatService) -> str:
    return hashlib.sha256(pack(svc.snapshot())).hexdigest()


def outcome(fn: Any, *a: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*a))
    except TrimaranError as exc:
        return ("err", type(exc))


@st.composite
def commands(draw: st.DrawFn, model: ModelChat) -> list[Any]:
    """One well-formed command; session ids are mostly ones that exist, sometimes lapsed or unknown."""
    op = draw(st.sampled_from(["publish"] * 5 + ["ephemeral", "reset", "open", "open", "heartbeat", "join", "join", "leave", "close"]))
    channel = draw(st.sampled_from(CHANNELS))
    live = sorted(model.sessions)
    pick_live = draw(st.integers(0, 3)) > 0
    if live and pick_live:
        sid = draw(st.sampled_from(live))
    else:
        sid = draw(st.integers(1, model.last_session + 1))
    if op == "publish":
        return ["publish", channel, draw(st.binary(max_size=MESSAGE_BYTES_MAX))]
    if op == "ephemeral":
        return ["publish", channel, draw(st.binary(max_size=MESSAGE_BYTES_MAX)), {"ephemeral": True}]
    if op == "reset":
        return ["reset", channel]
    if op == "open":
        ttl = draw(st.sampled_from([None, 1_000, 2_000]))
        return ["open", {"ttl_ms": ttl}] if ttl is not None or draw(st.booleans()) else ["open"]
    if op == "join":
        return ["join", channel, sid, draw(st.sampled_from([b"", b"alice", b"bob"]))]
    if op == "leave":
        return ["leave", channel, sid]
    return [op, sid]


def page_history(svc: ChatService, ctx: ApplyContext, channel: str, since: int | None, epoch: str | None, limit: int) -> dict[str, Any]:
    """Every page of a history read, joined; each page checked against the first one's metadata."""
    first = svc.query(["history", channel, {"since": since, "epoch": epoch, "limit": limit}], ctx)
    messages = list(first["messages"])
    page = first
    while page["next"] is not None:
        assert len(page["messages"]) <= limit
        page = svc.query(["history", channel, {"since": page["next"], "epoch": first["epoch"], "limit": limit}], ctx)
        assert page["recovered"], "a page's own next is always still covered within one state"
        messages += page["messages"]
    return {**first, "messages": messages}


def compare_reads(svc: ChatService, model: ModelChat, ctx: ApplyContext, data: st.DataObject) -> None:
    for channel in CHANNELS:
        ch = model.channels.get(channel)
        top = ch["top"] if ch else 0
        since = data.draw(st.none() | st.integers(0, top + 1))
        epoch = data.draw(st.sampled_from([None, ch["epoch"] if ch else None, "0-0"]))
        limit = data.draw(st.integers(1, 4))
        expected = model.history(channel, since, epoch)
        got = page_history(svc, ctx, channel, since, epoch, limit)
        del got["next"]
        assert got == expected, (channel, since, epoch)
        event(f"history recovered={expected['recovered']}")
        meta = svc.query(["history", channel, {"limit": 0}], ctx)
        assert meta["messages"] == [] and (meta["top"], meta["oldest"]) == (expected["top"], expected["oldest"])
        assert svc.query(["presence", channel], ctx)["members"] == model.presence(channel)
    listed = svc.query(["channels"], ctx)["channels"]
    assert [c[0] for c in listed] == sorted(model.channels)
    assert svc.next_deadline_ms() == model.next_deadline()
    stats = svc.query(["stats"], ctx)
    assert (stats["channels"], stats["sessions"], stats["seq"]) == (len(model.channels), len(model.sessions), len(model.events))
    assert stats["history_bytes"] == model.total_bytes()
    compare_events(svc, model, ctx, data)


def compare_events(svc: ChatService, model: ModelChat, ctx: ApplyContext, data: st.DataObject) -> None:
    kept, oldest_seq = model.window()
    after = data.draw(st.integers(0, len(model.events)))
    channel = data.draw(st.sampled_from([None, *CHANNELS]))
    limit = data.draw(st.integers(1, 5))
    got: list[list[Any]] = []
    page = svc.query(["events", after, {"channel": channel, "limit": limit}], ctx)
    assert page["gap"] == (after + 1 < oldest_seq)
    while True:
        assert len(page["events"]) <= limit
        got += page["events"]
        if not page["events"]:
            assert page["next"] == len(model.events)
            break
        page = svc.query(["events", page["next"], {"channel": channel, "limit": limit}], ctx)
        assert not page["gap"]
    assert got == [e for e in kept if e[0] > after and (channel is None or e[2] == channel)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, data=st.data())
def test_service_matches_the_model(config: dict[str, Any], data: st.DataObject) -> None:
    svc = ChatService(**config)
    model = ModelChat(**config)
    index, now = 0, data.draw(st.integers(0, 1_000))
    ctx = ApplyContext(1, now)
    for _ in range(data.draw(st.integers(1, 30))):
        index += 1
        now += data.draw(st.sampled_from(STEPS_MS))
        ctx = ApplyContext(index, now)
        svc.on_time(ctx)
        for _ in range(data.draw(st.integers(0, 3))):  # 0: a timestamp-only (clock) entry
            cmd = data.draw(commands(model))
            before = digest(svc)
            got = outcome(svc.apply, cmd, ctx)
            assert got == model.apply(cmd, now), cmd
            event(f"{cmd[0]} -> {got[1].__name__ if got[0] == 'err' else 'ok'}")
            if got[0] == "err":
                assert digest(svc) == before, "a refused command changes nothing"
        model.advance(now)  # an entry without commands still ages history and lapses sessions
        compare_reads(svc, model, ctx, data)
    event(f"dropped events: {sum(e[1] == 'dropped' for e in model.events) > 0}")
    event(f"expired leaves: {sum(e[1] == 'leave' and e[6][1] == 'expired' for e in model.events) > 0}")


class SnapshotMachine(RuleBasedStateMachine):
    """Two services fed the same log; one is now and then rebuilt from its own snapshot (through
    msgpack, as the Replica stores it). Their snapshots stay byte-identical and they answer alike."""

    @initialize(config=configs)
    def setup(self, config: dict[str, Any]) -> None:
        self.config = config
        self.a = ChatService(**config)
        self.b = ChatService(**config)
        self.model = ModelChat(**config)
        self.index, self.now = 0, 1_000

    @rule(data=st.data(), step_ms=st.sampled_from(STEPS_MS), count=st.integers(0, 3))
    def entry(self, data: st.DataObject, step_ms: int, count: int) -> None:
        self.index += 1
        self.now += step_ms
        ctx = ApplyContext(self.index, self.now)
        self.a.on_time(ctx)
        self.b.on_time(ctx)
        for _ in range(count):
            cmd = data.draw(commands(self.model))
            self.model.apply(cmd, self.now)
            assert outcome(self.a.apply, cmd, ctx) == outcome(self.b.apply, cmd, ctx)
        self.model.advance(self.now)

    @rule()
    def restore_b(self) -> None:
        data = unpack(pack(self.b.snapshot()))
        self.b = ChatService(**self.config)
        self.b.restore(data)

    @invariant()
    def same_bytes_and_answers(self) -> None:
        assert digest(self.a) == digest(self.b)
        ctx = ApplyContext(max(self.index, 1), self.now)
        for channel in CHANNELS:
            assert self.a.query(["history", channel], ctx) == self.b.query(["history", channel], ctx)
        assert self.a.query(["events", 0], ctx) == self.b.query(["events", 0], ctx)
        assert self.a.next_deadline_ms() == self.b.next_deadline_ms()


SnapshotMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
test_snapshot_restore_is_invisible = SnapshotMachine.TestCase
