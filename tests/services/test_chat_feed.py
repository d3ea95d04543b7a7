"""The sans-IO subscriber feed (services/chat/feed.py) over a real chat service: replay then live
with no gap and no duplicate, resync on a skip, ``recovered: false`` when history no longer reaches,
epochs met live, the pending bound, and its mutant. The gateway and the simulator both run it."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.services.test_chat import Log
from trimaran.services.chat import ChatService
from trimaran.services.chat.feed import Feed, Push


class Edge:
    """What an edge does around a feed: reads history pages, hands it live events, keeps pushes."""

    def __init__(self, log: Log, feed: Feed) -> None:
        self.log, self.feed = log, feed
        self.seq = log.svc.events_seq
        self.pushes: list[Push] = []
        self.resyncs = 0

    def sync(self) -> dict[str, Any]:
        """Read the history through (every page) and go live; the first page."""
        first = None
        while True:
            page = self.log.history(self.feed.channel, **self.feed.history_options())
            first = first or page
            pushes, done = self.feed.on_page(page)
            self.take(pushes)
            if done:
                self.take(self.feed.go_live())
                return first

    def live(self) -> None:
        """After an apply round: every new event of the window to the feed."""
        page = self.log.svc.events_after(self.seq)
        if page["gap"] and self.feed.resync():
            self.take([("resync",)])
        for event in page["events"]:
            if event[2] == self.feed.channel:
                self.take(self.feed.on_event(event))
        self.seq = page["next"]

    def take(self, pushes: list[Push]) -> None:
        for push in pushes:
            if push[0] == "resync":
                self.resyncs += 1
                self.feed.syncing = True
                self.sync()
            else:
                self.pushes.append(push)

    def offsets(self) -> list[int]:
        out = []
        for push in self.pushes:
            if push[0] == "message":
                out.append(push[1])
            elif push[0] == "event" and push[1][1] == "message":
                out.append(push[1][3])
        return out


def publish(log: Log, n: int, channel: str = "c") -> None:
    for i in range(n):
        log.one(["publish", channel, b"m%d" % i])


def test_replay_from_since_then_live_without_gap_or_duplicate() -> None:
    log = Log(ChatService(history_limit_max=2))
    publish(log, 5)
    edge = Edge(log, Feed("c", since=2, epoch=log.history("c")["epoch"]))
    assert edge.sync()["recovered"] is True
    publish(log, 3)
    edge.live()
    assert edge.offsets() == [3, 4, 5, 6, 7, 8]


def test_live_events_held_while_reading_are_delivered_after_the_replay_once() -> None:
    log = Log(ChatService())
    publish(log, 3)
    feed = Feed("c", since=0)
    edge = Edge(log, feed)
    page = log.history("c", **feed.history_options())  # read at offset 3 ...
    publish(log, 2)  # ... while 4 and 5 are applied
    edge.live()
    assert feed.pending and edge.pushes == []
    edge.take(feed.on_page(page)[0])
    edge.take(feed.go_live())
    assert edge.offsets() == [1, 2, 3, 4, 5]


def test_a_live_message_that_skips_ahead_makes_the_feed_read_the_gap_from_history() -> None:
    log = Log(ChatService())
    publish(log, 1)
    edge = Edge(log, Feed("c", since=0))
    edge.sync()
    edge.seq = log.svc.events_seq
    publish(log, 3)
    edge.seq += 1  # the edge missed offset 2's event
    edge.live()
    assert edge.resyncs == 1
    assert edge.offsets() == [1, 2, 3, 4]


def test_when_history_no_longer_reaches_the_feed_says_recovered_false_and_goes_on_from_the_oldest() -> None:
    log = Log(ChatService(history_messages_max=3))
    publish(log, 8)
    epoch = log.history("c")["epoch"]
    edge = Edge(log, Feed("c", since=2, epoch=epoch))
    assert edge.sync()["recovered"] is False
    assert edge.pushes[0] == ("epoch", epoch, False, 5)
    assert edge.offsets() == [6, 7, 8]


def test_a_reset_met_live_starts_the_new_epoch_at_offset_one() -> None:
    log = Log(ChatService())
    publish(log, 2)
    log.one(["open"])
    log.one(["join", "c", 1, b""])  # members keep the channel through its reset
    edge = Edge(log, Feed("c", since=0))
    edge.sync()
    log.one(["reset", "c"])
    publish(log, 2)
    edge.live()
    new_epoch = log.history("c")["epoch"]
    assert ("epoch", new_epoch, None, 0) in edge.pushes
    assert edge.offsets() == [1, 2, 1, 2]
    assert (edge.feed.epoch, edge.feed.last) == (new_epoch, 2)


def test_too_many_events_held_while_reading_make_the_feed_read_again() -> None:
    log = Log(ChatService())
    feed = Feed("c", since=0, pending_max=2)
    edge = Edge(log, feed)
    page = log.history("c", **feed.history_options())
    publish(log, 5)
    edge.live()
    assert feed.overflowed and feed.pending == []
    pushes, done = feed.on_page(page)
    assert not done  # read again
    edge.take(pushes)
    edge.sync()
    assert edge.offsets() == [1, 2, 3, 4, 5]


def test_the_resume_from_since_mutant_sends_the_last_message_again() -> None:
    log = Log(ChatService())
    publish(log, 4)
    epoch = log.history("c")["epoch"]
    edge = Edge(log, Feed("c", since=2, epoch=epoch, mutants=frozenset({"resume_from_since"})))
    edge.sync()
    assert edge.offsets() == [2, 3, 4]  # 2 again: the subscriber had it


class Receiver:
    """A subscriber's view: offsets must follow one another, a jump only where it is told."""

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.last = 0

    def consume(self, pushes: list[Push]) -> None:
        for push in pushes:
            if push[0] == "epoch":
                # Told recovered: false (going on after the oldest kept), or a new epoch met live.
                assert push[3] >= self.last if push[2] is False else push[3] == 0 and push[1] != self.epoch
                self.epoch, self.last = push[1], push[3]
                continue
            offset = push[1] if push[0] == "message" else push[1][3]
            assert offset == self.last + 1, (self.last, push)
            self.last = offset
        pushes.clear()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 4),
    st.lists(st.tuples(st.sampled_from(["pub", "pub", "live", "resume", "trim"]), st.integers(0, 3)), max_size=40),
)
def test_every_interleaving_delivers_a_gap_free_duplicate_free_sequence(
    history_max: int, page_max: int, steps: list[tuple[str, int]]
) -> None:
    """Publishes, apply rounds and resumes (a new feed from the last offset had) in any order: the
    offsets received are consecutive, each jump told by recovered: false to the oldest kept, and
    the subscriber ends at the channel's last offset."""
    log = Log(ChatService(history_messages_max=history_max, history_limit_max=page_max))
    receiver = Receiver()
    edge = Edge(log, Feed("c", since=0))
    edge.sync()
    for what, n in steps:
        if what == "pub":
            publish(log, n + 1)
        elif what == "trim":
            publish(log, history_max + n)  # more than history holds
        elif what == "live":
            edge.live()
        else:  # resume on a new connection from the last offset had
            receiver.consume(edge.pushes)
            edge = Edge(log, Feed("c", since=receiver.last, epoch=receiver.epoch or edge.feed.epoch))
            edge.sync()
        receiver.consume(edge.pushes)
    edge.live()
    receiver.consume(edge.pushes)
    assert receiver.last == log.history("c", limit=0)["top"]
