"""Unit tests of the chat service: validation, offsets and epochs, retention, history resume,
ephemeral messages, presence sessions, the events window, bounds, snapshots, and the mutants."""

from __future__ import annotations

from typing import Any

import pytest

from trimaran import limits
from trimaran.errors import ConfigError, InvalidArgument, LimitExceeded, PresenceExpired, TooLarge
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.service import ApplyContext
from trimaran.services.chat import CHAT_MUTANTS, ChatService
from trimaran.services.chat.channel import MESSAGE_OVERHEAD_BYTES


def at(index: int, now_ms: int = 1_000) -> ApplyContext:
    return ApplyContext(index, now_ms)


class Log:
    """A fake log: each ``step`` is one entry (on_time first, as the Replica does)."""

    def __init__(self, svc: ChatService, now_ms: int = 1_000) -> None:
        self.svc, self.index, self.now_ms = svc, 0, now_ms

    def step(self, *commands: list[Any], advance_ms: int = 0) -> list[Any]:
        self.index += 1
        self.now_ms += advance_ms
        ctx = self.ctx
        self.svc.on_time(ctx)
        return [self.svc.apply(c, ctx) for c in commands]

    def one(self, command: list[Any], advance_ms: int = 0) -> Any:
        return self.step(command, advance_ms=advance_ms)[0]

    @property
    def ctx(self) -> ApplyContext:
        return ApplyContext(max(self.index, 1), self.now_ms)

    def q(self, query: list[Any]) -> Any:
        return self.svc.query(query, self.ctx)

    def history(self, channel: str, **opts: Any) -> dict[str, Any]:
        return self.q(["history", channel, opts or None])

    def offsets(self, channel: str) -> list[int]:
        return [m[0] for m in self.history(channel)["messages"]]

    def events(self, after: int = 0, **opts: Any) -> list[list[Any]]:
        return self.q(["events", after, opts or None])["events"]


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "command",
    [
        ["publish", "", b"x"],
        ["publish", "room 1", b"x"],
        ["publish", "caf\u00e9", b"x"],
        ["publish", "a/b", b"x"],
        ["publish", "a\n", b"x"],
        ["publish", b"room", b"x"],
        ["publish", "room", "text"],
        ["publish", "room", b"x", {"ephemeral": 1}],
        ["publish", "room", b"x", {"persist": True}],
        ["publish", "room"],
        ["reset"],
        ["open", {"ttl_ms": 10}],
        ["open", {"ttl_ms": limits.chat_presence_ttl_ms_max + 1}],
        ["open", {"ttl_ms": 1_500.0}],
        ["heartbeat", 0],
        ["heartbeat", True],
        ["join", "room", 1, "info"],
        ["join", "room", -1, b""],
        ["leave", "room"],
        ["close", "1"],
        ["nope"],
        [],
        "publish",
        None,
    ],
)
def test_malformed_commands_are_invalid_arguments_and_change_nothing(command: Any) -> None:
    svc = ChatService()
    with pytest.raises(InvalidArgument):
        svc.apply(command, at(1))
    assert svc.snapshot() == ChatService().snapshot()


def test_sizes_over_their_bounds_are_too_large() -> None:
    svc = ChatService(message_bytes_max=10)
    with pytest.raises(TooLarge):
        svc.apply(["publish", "c" * (limits.chat_channel_chars_max + 1), b""], at(1))
    with pytest.raises(TooLarge):
        svc.apply(["publish", "room", b"x" * 11], at(1))
    with pytest.raises(TooLarge):
        ChatService().apply(["publish", "room", b"x" * (limits.chat_message_bytes_max + 1)], at(1))
    sid = svc.apply(["open"], at(1))[0]
    with pytest.raises(TooLarge):
        svc.apply(["join", "room", sid, b"i" * (limits.chat_presence_info_bytes_max + 1)], at(2))
    assert svc.apply(["publish", "c" * limits.chat_channel_chars_max, b"x" * 10], at(3)) == [1, "3e8-1"]


@pytest.mark.parametrize(
    "query",
    [["history", "room", {"since": -1}], ["history", "room", {"limit": -1}], ["history", "room", {"epoch": 5}],
     ["presence"], ["events", "0"], ["channels", {"start_after": ""}], ["stats", 1], ["nope"]],
)  # fmt: skip
def test_malformed_queries_are_invalid_arguments(query: Any) -> None:
    with pytest.raises(InvalidArgument):
        ChatService().query(query, at(1))


@pytest.mark.parametrize(
    "config",
    [
        {"channels_max": 0},
        {"history_messages_max": limits.chat_history_messages_max + 1},
        {"message_bytes_max": 100, "history_bytes_max": 100},  # one message would not fit
        {"history_bytes_max": 2 * limits.MIB, "history_bytes_total_max": limits.MIB},
        {"presence_ttl_ms": 10},
        {"presence_members_max": 5_000, "query_result_bytes_max": limits.MIB},
        {"events_bytes_max": 100},
        {"mutants": frozenset({"nope"})},
        {"mutants": frozenset({"presence_local_clock"})},  # without its clock
        {"history_age_ms": True},
    ],
)
def test_bounds_that_do_not_fit_together_are_config_errors(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ChatService(**config)


# ---------------------------------------------------------------------------- offsets and epochs


def test_offsets_are_dense_per_channel_and_only_grow() -> None:
    log = Log(ChatService(history_messages_max=3))
    results = log.step(*[["publish", "a" if i % 3 else "b", b"%d" % i] for i in range(10)])
    a = [r[0] for i, r in enumerate(results) if i % 3]
    b = [r[0] for i, r in enumerate(results) if not i % 3]
    assert a == [1, 2, 3, 4, 5, 6] and b == [1, 2, 3, 4]
    assert log.offsets("a") == [4, 5, 6], "trimming keeps offsets; the next one is still top + 1"
    assert log.one(["publish", "a", b"x"])[0] == 7


def test_epochs_differ_per_channel_and_after_a_reset_even_within_one_entry() -> None:
    log = Log(ChatService())
    sid = log.one(["open"])[0]
    log.one(["join", "a", sid, b""])  # a member keeps the channel alive through its resets
    first = log.one(["publish", "a", b"1"])
    results = log.step(["reset", "a"], ["publish", "a", b"2"], ["reset", "a"], ["publish", "a", b"3"])
    assert results[0] is True and results[2] is True
    assert [r[0] for r in results[1::2]] == [1, 1], "offsets restart at 1 in each new epoch"
    epochs = {first[1], results[1][1], results[3][1]}
    assert len(epochs) == 3, "(offset, epoch) names one message for good"
    assert log.one(["publish", "b", b"x"])[1] not in epochs
    assert log.one(["reset", "nowhere"]) is False


def test_an_emptied_channel_is_forgotten_and_comes_back_in_a_new_epoch() -> None:
    log = Log(ChatService(history_age_ms=1_000))
    old = log.one(["publish", "a", b"1"])
    log.step(advance_ms=1_000)  # the only message ages out: no history, no members
    assert log.q(["stats"])["channels"] == 0
    assert log.events(0)[-1][1:5] == ["dropped", "a", None, old[1]]
    new = log.one(["publish", "a", b"2"])
    assert new[0] == 1 and new[1] != old[1]
    answer = log.history("a", since=1, epoch=old[1])
    assert answer["recovered"] is False and answer["messages"] == [[1, b"2", 2_000]]


# ---------------------------------------------------------------------------- retention


def test_history_keeps_at_most_history_messages_max() -> None:
    log = Log(ChatService(history_messages_max=2))
    log.step(*[["publish", "a", b"m"] for _ in range(5)])
    answer = log.history("a")
    assert [m[0] for m in answer["messages"]] == [4, 5] and (answer["oldest"], answer["top"]) == (4, 5)


def test_history_keeps_at_most_history_bytes_max() -> None:
    size = 10 + MESSAGE_OVERHEAD_BYTES
    log = Log(ChatService(message_bytes_max=10, history_bytes_max=2 * size + 5))
    log.step(*[["publish", "a", b"x" * 10] for _ in range(4)])
    assert log.offsets("a") == [3, 4]
    assert log.q(["stats"])["history_bytes"] == 2 * size


def test_history_ages_out_at_exactly_published_at_plus_age_in_log_time() -> None:
    log = Log(ChatService(history_age_ms=100), now_ms=1_000)
    log.one(["publish", "a", b"1"])
    log.one(["publish", "a", b"2"], advance_ms=50)
    assert log.svc.next_deadline_ms() == 1_100
    log.step(advance_ms=49)  # 1_099
    assert log.offsets("a") == [1, 2]
    log.step(advance_ms=1)  # 1_100: the first is due
    assert log.offsets("a") == [2]
    assert log.svc.next_deadline_ms() == 1_150


def test_the_total_bound_drops_the_oldest_message_anywhere_first() -> None:
    size = 10 + MESSAGE_OVERHEAD_BYTES
    log = Log(ChatService(message_bytes_max=10, history_bytes_max=3 * size, history_bytes_total_max=3 * size))
    log.one(["publish", "b", b"x" * 10])
    log.one(["publish", "a", b"x" * 10], advance_ms=1)
    log.one(["publish", "b", b"x" * 10], advance_ms=1)
    log.one(["publish", "a", b"x" * 10], advance_ms=1)  # over: b's first (the oldest) goes
    assert (log.offsets("a"), log.offsets("b")) == ([1, 2], [2])
    assert log.q(["stats"])["history_bytes"] == 3 * size


def test_the_total_bound_never_drops_the_message_being_published() -> None:
    size = 10 + MESSAGE_OVERHEAD_BYTES
    log = Log(ChatService(message_bytes_max=10, history_bytes_max=2 * size, history_bytes_total_max=2 * size))
    log.step(["publish", "b", b"x" * 10], ["publish", "b", b"x" * 10])
    # Same log time: "a" sorts before "b", but a's only message is the one being published.
    assert log.one(["publish", "a", b"x" * 10]) == [1, "3e8-2"]
    assert (log.offsets("a"), log.offsets("b")) == ([1], [2])


def test_a_reset_channel_without_members_is_forgotten_in_its_old_epoch() -> None:
    log = Log(ChatService())
    old = log.one(["publish", "a", b"1"])
    assert log.one(["reset", "a"]) is True
    assert log.events(0)[-1][1:5] == ["dropped", "a", None, old[1]]
    assert log.q(["stats"])["channels"] == 0
    new = log.one(["publish", "a", b"2"])
    assert new[0] == 1 and new[1] not in (old[1], None)


# ---------------------------------------------------------------------------- history resume


def test_history_then_the_events_after_its_seq_resume_with_no_gap_and_no_duplicate() -> None:
    """What the edge does for subscribe(since): replay history, then follow the events window."""
    log = Log(ChatService(history_messages_max=50))
    epoch = log.step(*[["publish", "a", b"%d" % i] for i in range(1, 6)])[0][1]
    answer = log.history("a", since=2, epoch=epoch)
    log.step(*[["publish", "a" if i % 2 else "b", b"%d" % i] for i in range(6, 12)])
    received = [m[0] for m in answer["messages"]]
    received += [e[3] for e in log.events(answer["seq"], channel="a") if e[1] == "message" and e[3] > received[-1]]
    assert answer["recovered"] and received == list(range(3, 9))




def test_history_since_resumes_just_after_the_readers_last_offset() -> None:
    log = Log(ChatService(history_messages_max=5))
    epoch = log.step(*[["publish", "a", b"%d" % i] for i in range(1, 9)])[0][1]
    # kept: 4..8
    for since, recovered, first in [(3, True, 4), (5, True, 6), (8, True, None), (2, False, 4), (9, False, 4)]:
        answer = log.history("a", since=since, epoch=epoch)
        assert answer["recovered"] is recovered, since
        assert (answer["messages"][0][0] if answer["messages"] else None) == first, since
        assert (answer["oldest"], answer["top"], answer["epoch"]) == (4, 8, epoch)
    assert log.history("a", since=5, epoch="other")["recovered"] is False
    assert log.history("a", since=5)["recovered"] is True, "without an epoch, offsets alone decide"
    missing = log.history("nowhere", since=0)
    assert missing == {"messages": [], "epoch": None, "top": 0, "oldest": 1, "recovered": True, "next": None, "seq": 8}
    assert log.history("nowhere", since=3, epoch=epoch)["recovered"] is False


def test_history_pages_by_limit_and_limit_zero_is_the_metadata() -> None:
    log = Log(ChatService(history_limit_max=3))
    log.step(*[["publish", "a", b"%d" % i] for i in range(1, 8)])
    page = log.history("a", since=0, limit=2)
    assert [m[0] for m in page["messages"]] == [1, 2] and page["next"] == 2
    page = log.history("a", since=page["next"], limit=50)  # clamped to history_limit_max
    assert [m[0] for m in page["messages"]] == [3, 4, 5] and page["next"] == 5
    page = log.history("a", since=5)
    assert [m[0] for m in page["messages"]] == [6, 7] and page["next"] is None
    meta = log.history("a", limit=0)
    assert meta["messages"] == [] and (meta["top"], meta["oldest"]) == (7, 1)


def test_a_history_page_stops_after_query_result_bytes_max() -> None:
    svc = ChatService(query_result_bytes_max=limits.chat_message_bytes_max + 64, presence_members_max=10)
    log = Log(svc)
    log.step(*[["publish", "a", b"x" * 1_000] for _ in range(100)])
    page = log.history("a", since=0)
    assert 60 < len(page["messages"]) < 100 and page["next"] == page["messages"][-1][0]


# ---------------------------------------------------------------------------- ephemeral


def test_ephemeral_messages_are_events_without_offsets_or_history() -> None:
    log = Log(ChatService())
    assert log.one(["publish", "a", b"typing", {"ephemeral": True}]) == [None, None]
    assert log.q(["stats"])["channels"] == 0, "an ephemeral message does not make a channel"
    offset, epoch = log.one(["publish", "a", b"hello"])
    assert log.one(["publish", "a", b"typing", {"ephemeral": True}]) == [None, epoch]
    assert log.one(["publish", "a", b"again"]) == [2, epoch], "no offset was taken"
    assert [m[1] for m in log.history("a")["messages"]] == [b"hello", b"again"]
    assert [(e[1], e[3], e[6]) for e in log.events(0)] == [
        ("ephemeral", None, b"typing"), ("message", 1, b"hello"), ("ephemeral", None, b"typing"), ("message", 2, b"again"),
    ]  # fmt: skip


# ---------------------------------------------------------------------------- presence


def test_join_leave_and_presence() -> None:
    log = Log(ChatService())
    s1 = log.one(["open"])[0]
    s2 = log.one(["open", {"ttl_ms": 5_000}])
    assert s2 == [2, 6_000]
    assert log.one(["join", "a", s1, b"alice"]) is True
    assert log.one(["join", "a", 2, b"bob"], advance_ms=10) is True
    assert log.one(["join", "a", s1, b"alice!"]) is False, "a second join only updates info"
    assert log.q(["presence", "a"])["members"] == [[1, b"alice!", 1_000], [2, b"bob", 1_010]]
    assert log.one(["leave", "a", s1]) is True
    assert log.one(["leave", "a", s1]) is False
    assert log.q(["presence", "a"])["members"] == [[2, b"bob", 1_010]]
    kinds = [(e[1], e[6]) for e in log.events(0)]
    assert kinds == [("join", [1, b"alice"]), ("join", [2, b"bob"]), ("join", [1, b"alice!"]), ("leave", [1, "left"])]
    assert log.q(["presence", "nowhere"]) == {"members": [], "epoch": None}


def test_a_lapsed_session_leaves_every_channel_at_one_log_position_in_name_order() -> None:
    log = Log(ChatService(presence_ttl_ms=1_000))
    sid = log.one(["open"])[0]
    log.step(["join", "c", sid, b""], ["join", "a", sid, b""], ["join", "b", sid, b""])
    keeper = log.one(["open", {"ttl_ms": 10_000}])[0]
    log.one(["join", "b", keeper, b""])
    assert log.svc.next_deadline_ms() == 2_000
    log.step(advance_ms=999)
    assert log.q(["stats"])["members"] == 4
    seq = log.q(["stats"])["seq"]
    log.step(advance_ms=1)  # log time reaches the deadline: this entry lapses the session
    leaves = [e for e in log.events(seq) if e[1] == "leave"]
    assert [(e[2], e[6]) for e in leaves] == [("a", [sid, "expired"]), ("b", [sid, "expired"]), ("c", [sid, "expired"])]
    assert {e[5] for e in leaves} == {2_000}
    assert log.q(["presence", "b"])["members"] == [[keeper, b"", 1_000]]
    assert [c[0] for c in log.q(["channels"])["channels"]] == ["b"], "a and c had nothing else: forgotten"
    with pytest.raises(PresenceExpired):
        log.one(["heartbeat", sid])
    with pytest.raises(PresenceExpired):
        log.one(["join", "a", sid, b""])
    assert log.one(["leave", "b", sid]) is False and log.one(["close", sid]) == 0


def test_heartbeats_and_joins_keep_a_session_alive() -> None:
    log = Log(ChatService(presence_ttl_ms=1_000))
    sid = log.one(["open"])[0]
    log.one(["join", "a", sid, b""])
    for _ in range(5):
        assert log.one(["heartbeat", sid], advance_ms=900) == log.now_ms + 1_000
    log.one(["join", "b", sid, b""], advance_ms=900)
    log.step(advance_ms=999)
    assert log.q(["stats"])["sessions"] == 1
    log.step(advance_ms=1)
    assert log.q(["stats"])["sessions"] == 0 and log.q(["stats"])["members"] == 0


def test_close_leaves_every_channel_now() -> None:
    log = Log(ChatService())
    sid = log.one(["open"])[0]
    log.step(["join", "b", sid, b""], ["join", "a", sid, b""])
    assert log.one(["close", sid]) == 2
    assert [(e[1], e[2], e[6]) for e in log.events(2) if e[1] == "leave"] == [
        ("leave", "a", [sid, "closed"]), ("leave", "b", [sid, "closed"]),
    ]  # fmt: skip
    assert log.q(["stats"])["sessions"] == 0 and log.svc.next_deadline_ms() is None


def test_presence_bounds_are_limit_exceeded_and_change_nothing() -> None:
    log = Log(ChatService(presence_sessions_max=2, presence_members_max=1, presence_channels_per_session_max=2, channels_max=3))
    s1, s2 = log.one(["open"])[0], log.one(["open"])[0]
    with pytest.raises(LimitExceeded) as info:
        log.one(["open"])
    assert info.value.details == {"limit": "presence_sessions_max", "value": 2}
    log.one(["join", "a", s1, b""])
    before = pack(log.svc.snapshot())
    with pytest.raises(LimitExceeded, match="presence_members_max"):
        log.one(["join", "a", s2, b""])
    log.one(["join", "b", s1, b""])
    with pytest.raises(LimitExceeded, match="presence_channels_per_session_max"):
        log.one(["join", "c", s1, b""])
    log.one(["publish", "c", b""])
    with pytest.raises(LimitExceeded, match="channels_max"):
        log.one(["publish", "d", b""])
    with pytest.raises(LimitExceeded, match="channels_max"):
        log.one(["join", "d", s2, b""])
    assert log.one(["publish", "d", b"", {"ephemeral": True}]) == [None, None], "ephemeral needs no channel"
    assert pack(log.svc.snapshot()) != before  # sanity: the successful commands did change it


# ---------------------------------------------------------------------------- events window


def test_events_window_is_bounded_and_reports_a_gap() -> None:
    log = Log(ChatService(events_max=3))
    log.step(*[["publish", "a" if i % 2 else "b", b"%d" % i] for i in range(6)])
    page = log.q(["events", 0])
    assert page["gap"] is True and [e[0] for e in page["events"]] == [4, 5, 6] and page["next"] == 6
    page = log.q(["events", 3])
    assert page["gap"] is False and [e[0] for e in page["events"]] == [4, 5, 6]
    page = log.q(["events", 3, {"channel": "a", "limit": 1}])
    assert [e[0] for e in page["events"]] == [4] and page["next"] == 5
    page = log.q(["events", page["next"], {"channel": "a"}])
    assert [e[0] for e in page["events"]] == [6] and page["next"] == 6
    assert log.svc.events_after(6) == {"events": [], "next": 6, "gap": False, "seq": 6}


def test_events_window_bytes_bound_keeps_the_newest_event() -> None:
    log = Log(ChatService(events_bytes_max=limits.chat_message_bytes_max + 2 * limits.KIB))
    log.step(*[["publish", "a", b"x" * limits.chat_message_bytes_max] for _ in range(3)])
    page = log.q(["events", 0])
    assert page["gap"] is True and [e[0] for e in page["events"]] == [3]


def test_message_events_of_a_channel_come_in_offset_order_with_no_gap() -> None:
    log = Log(ChatService(history_messages_max=2))
    sid = log.one(["open"])[0]
    for i in range(20):
        log.step(["publish", "a", b"m"], ["publish", "b", b"m"], ["join", "a", sid, b"%d" % i])
    for channel in ("a", "b"):
        offsets = [e[3] for e in log.events(0, channel=channel) if e[1] == "message"]
        assert offsets == list(range(1, 21))


# ---------------------------------------------------------------------------- channels list, snapshots


def test_channels_list_pages_by_name() -> None:
    log = Log(ChatService(channels_limit_max=2))
    log.step(*[["publish", name, b""] for name in ("c", "a", "d", "b")])
    page = log.q(["channels"])
    assert [c[0] for c in page["channels"]] == ["a", "b"] and page["next"] == "b"
    page = log.q(["channels", {"start_after": page["next"]}])
    assert [c[:1] + c[2:] for c in page["channels"]] == [["c", 1, 1, 0], ["d", 1, 1, 0]] and page["next"] is None


def test_snapshot_round_trip_is_identical() -> None:
    log = Log(ChatService(history_messages_max=3, history_age_ms=10_000))
    sid = log.one(["open"])[0]
    log.step(*[["publish", "a", b"%d" % i] for i in range(5)], ["join", "a", sid, b"me"], ["join", "z", sid, b""])
    log.step(["publish", "b", b"t", {"ephemeral": True}], ["reset", "z"], advance_ms=7)
    data = log.svc.snapshot()
    restored = ChatService(history_messages_max=3, history_age_ms=10_000)
    restored.restore(unpack(pack(data)))
    assert pack(restored.snapshot()) == pack(data)
    for q in (["history", "a"], ["presence", "a"], ["events", 0], ["stats"], ["channels"]):
        assert restored.query(q, log.ctx) == log.q(q)
    # And they go on alike: the same next offset, the same lapse.
    ctx = ApplyContext(log.index + 1, log.now_ms + 5_000)
    for svc in (restored, log.svc):
        svc.on_time(ctx)
        assert svc.apply(["publish", "a", b"next"], ctx) == [6, data["channels"][0][1]]
    assert pack(restored.snapshot()) == pack(log.svc.snapshot())


def test_restore_refuses_what_is_not_a_chat_snapshot() -> None:
    with pytest.raises(ValueError):
        ChatService().restore({"format": 99})


# ---------------------------------------------------------------------------- mutants


def test_every_mutant_is_tested_here() -> None:
    tested = {name.removeprefix("test_mutant_") for name in globals() if name.startswith("test_mutant_")}
    assert tested == set(CHAT_MUTANTS)


def test_mutant_offset_from_length() -> None:
    log = Log(ChatService(history_messages_max=2, mutants=frozenset({"offset_from_length"})))
    offsets = [r[0] for r in log.step(*[["publish", "a", b"%d" % i] for i in range(4)])]
    assert offsets == [1, 2, 3, 3], "an offset handed out twice: the property 'offsets only grow' fails"


def test_mutant_ephemeral_takes_offset() -> None:
    log = Log(ChatService(mutants=frozenset({"ephemeral_takes_offset"})))
    log.step(["publish", "a", b"1"], ["publish", "a", b"t", {"ephemeral": True}], ["publish", "a", b"2"])
    assert log.offsets("a") == [1, 3], "kept history is no longer dense"


def test_mutant_resume_off_by_one() -> None:
    log = Log(ChatService(mutants=frozenset({"resume_off_by_one"})))
    log.step(*[["publish", "a", b"%d" % i] for i in range(3)])
    assert [m[0] for m in log.history("a", since=2)["messages"]] == [2, 3], "the reader gets offset 2 twice"


def test_mutant_recovered_off_by_one() -> None:
    log = Log(ChatService(history_messages_max=2, mutants=frozenset({"recovered_off_by_one"})))
    log.step(*[["publish", "a", b"%d" % i] for i in range(4)])  # kept: 3, 4
    answer = log.history("a", since=1)
    assert answer["recovered"] is True and answer["messages"][0][0] == 3, "offset 2 was lost, unreported"


def test_mutant_epoch_kept_on_reset() -> None:
    log = Log(ChatService(mutants=frozenset({"epoch_kept_on_reset"})))
    sid = log.one(["open"])[0]
    log.one(["join", "a", sid, b""])
    old = log.one(["publish", "a", b"old"])
    log.one(["reset", "a"])
    new = log.one(["publish", "a", b"new"])
    assert new == old, "(1, epoch) now names two different messages"


def test_mutant_presence_local_clock() -> None:
    clocks = {"a": 1_000, "b": 1_000}

    def replica(name: str) -> Log:
        return Log(ChatService(mutants=frozenset({"presence_local_clock"}), local_clock_ms=lambda: clocks[name]))

    logs = {name: replica(name) for name in clocks}
    for log in logs.values():
        sid = log.one(["open"])[0]
        log.one(["join", "a", sid, b""])
    clocks["b"] = 99_000  # replica b's own clock jumps ahead; the log's time does not move
    for log in logs.values():
        log.step(advance_ms=1)
    assert logs["a"].q(["presence", "a"])["members"] == [[1, b"", 1_000]]
    assert logs["b"].q(["presence", "a"])["members"] == [], "replicas disagree at the same log position"
