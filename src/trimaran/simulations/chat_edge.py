"""Chat on the simulated nodes: each node's twin of the WebSocket gateway, the record of every
publish any replica applied, and the chat checkers.

Each node has a :class:`NodeChat`, the simulator's twin of the runtime's ``ChatHub``
(:mod:`trimaran.node.http.chat_gateway`): after every apply round it reads its OWN chat service's
applied-events window and hands each event to the :class:`~trimaran.services.chat.feed.Feed` of
every subscriber attached to it, and it reads history for them through its own replica (the first
read of a subscription linearizable, later pages and resyncs stale, as the gateway does). The feed
is the gateway's own code; only the IO around it is simulated. A connection lives until the
subscriber drops it or the node crashes (a crash closes every connection of the node).

The record (:class:`ChatRecord`) is what the checkers read, kept apart from the nodes' decisions:
every publish applied by any replica (in any lifetime), keyed by ``(channel, epoch, offset)``.
Checked as the run goes:

- ``chat_history``: an offset never names two messages (offsets come from the log, in apply
  order, the same on every replica), and one publish (its data is unique) is applied at one offset
  only (a retried publish is deduplicated by the client session);
- ``chat_delivery``: each subscriber's messages per channel come in offset order with no gap and no
  duplicate, across every resume on another node, unless it was told ``recovered: false`` (then it
  goes on after the oldest offset kept);
- ``chat_uncommitted``: every message a subscriber is sent was applied by some replica before it was
  sent (a node pushes from applied state, never from entries it only appended).

And at the end (:func:`check_chat`): every acknowledged publish is in the record at the offset and
epoch it was answered with, the final leader's history agrees with the record, and every subscriber
attached live to a caught-up node has received its channels through their last offset (delivery
did not stall silently). Replica agreement (chat state, presence included, equal at equal indexes)
is :func:`trimaran.simulations.verdict.check_replicas_agree`'s.

``push_before_commit`` (:data:`CHAT_EDGE_MUTANTS`) plants the bug the first checker above exists
for: the node's hub feeds its subscribers from a state that applied its log through the last entry
appended, not the last one committed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from trimaran.cluster.replica import Replica, Reply
from trimaran.errors import TrimaranError
from trimaran.protocols.codec import unpack
from trimaran.protocols.messages import EntryKind
from trimaran.protocols.service import ApplyContext
from trimaran.services.chat import ChatService
from trimaran.services.chat.feed import Feed, Push
from trimaran.simulations.checkers import CheckFailure

if TYPE_CHECKING:
    from trimaran.simulations.chat_workload import Subscriber

#: Planted bugs of the simulated edge (the nodes' hubs and the clients' sessions); never in a node.
CHAT_EDGE_MUTANTS = {
    "push_before_commit": "a node pushes chat events from its log as appended, before they are committed and applied",
    "publish_retry_new_seq": "a publish retried after a timeout is sent with a new seq, outside its session's deduplication",
}

#: (channel, epoch, offset): one message of one epoch of one channel.
Place = tuple[str, str, int]


class ChatRecord:
    """Every publish applied by any replica, in any lifetime (see the module docstring)."""

    def __init__(self) -> None:
        #: (channel, epoch, offset) -> data, as first applied.
        self.applied: dict[Place, bytes] = {}
        #: data (unique per publish) -> where it was first applied.
        self.placed: dict[bytes, Place] = {}

    def note(self, node_id: int, place: Place, data: bytes) -> None:
        held = self.applied.setdefault(place, data)
        if held != data:
            raise CheckFailure(
                "chat_history",
                f"node {node_id} applied {data!r} at offset {place[2]} of {place[0]} epoch {place[1]}, which"
                f" already holds {held!r}: an offset named two messages",
            )
        where = self.placed.setdefault(data, place)
        if where != place:
            raise CheckFailure(
                "chat_history",
                f"node {node_id} applied the publish of {data!r} at {place}, but it was applied at {where} already:"
                " a publish taken twice",
            )


class RecordingChat(ChatService):
    """The chat service of one simulated replica, reporting every publish it applies."""

    def __init__(self, node_id: int, record: ChatRecord, **settings: Any) -> None:
        super().__init__(**settings)
        #: What it was built with (the push_before_commit mutant builds a twin from it).
        self.settings = settings
        self._node_id = node_id
        self._record = record

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        result = super().apply(command, ctx)
        if command[0] == "publish" and result[0] is not None:  # not ephemeral (shapes were checked)
            self._record.note(self._node_id, (command[1], result[1], result[0]), command[2])
        return result


class Connection:
    """One subscriber's WebSocket on one node: a feed per channel."""

    __slots__ = ("subscriber", "feeds", "reading")

    def __init__(self, subscriber: Subscriber, feeds: dict[str, Feed]) -> None:
        self.subscriber = subscriber
        self.feeds = feeds
        #: Channels whose history read is under way.
        self.reading: set[str] = set()

    @property
    def live(self) -> bool:
        return not any(feed.syncing for feed in self.feeds.values())


class NodeChat:
    """One node's hub: its connections, fed from its own applied state (see the module docstring)."""

    def __init__(self, node_id: int, read: Callable[[Connection, str, list[Any], str], bool], mutants: frozenset[str]) -> None:
        self.node_id = node_id
        self._read = read
        self.mutants = mutants
        #: Subscriber index -> its connection here.
        self.connections: dict[int, Connection] = {}
        self.service: ChatService | None = None
        #: The last event of the window handed to the feeds.
        self.seq = 0
        self.pushed = 0

    def close_all(self) -> None:
        """The node crashed: every connection is gone (their subscribers notice and move on)."""
        for conn in list(self.connections.values()):
            conn.subscriber.dropped(self.node_id)
        self.connections.clear()

    def attach(self, subscriber: Subscriber, since: dict[str, tuple[int | None, str | None]], replica: Replica) -> None:
        """A subscriber connects and subscribes to its channels from ``since`` (channel -> (offset or
        None for live only, epoch))."""
        feed_mutants = frozenset(m for m in self.mutants if m != "push_before_commit")
        feeds = {ch: Feed(ch, offset, epoch, mutants=feed_mutants) for ch, (offset, epoch) in sorted(since.items())}
        conn = Connection(subscriber, feeds)
        self.connections[subscriber.index] = conn
        self._bind(replica)
        for channel, feed in feeds.items():
            if since[channel][0] is None:
                self._history(conn, channel, ["history", channel, {"limit": 0}], "linearizable")
            else:
                self._history(conn, channel, ["history", channel, feed.history_options()], "linearizable")

    def detach(self, subscriber_index: int) -> None:
        self.connections.pop(subscriber_index, None)

    def _bind(self, replica: Replica) -> None:
        service = replica.services["chat"]
        assert isinstance(service, ChatService)
        if service is not self.service:  # a (re)booted node: its window starts here
            self.service = service
            self.seq = service.events_seq

    def _history(self, conn: Connection, channel: str, query: list[Any], consistency: str) -> None:
        conn.reading.add(channel)
        if not self._read(conn, channel, query, consistency):
            self._lost(conn)

    def _lost(self, conn: Connection) -> None:
        """A request of the connection failed (the gateway answers an error frame): the subscriber
        drops the connection and resumes elsewhere."""
        if self.connections.get(conn.subscriber.index) is conn:
            del self.connections[conn.subscriber.index]
            conn.subscriber.dropped(self.node_id)

    # ------------------------------------------------------------------ after an apply round

    def after_round(self, replica: Replica) -> None:
        self._bind(replica)
        service = self.service
        assert service is not None
        if "push_before_commit" in self.mutants:
            service = self._speculative(replica, service)
        if not self.connections or self.seq >= service.events_seq:
            self.seq = max(self.seq, service.events_seq)
            return
        while True:
            page = service.events_after(self.seq)
            if page["gap"]:
                for conn in list(self.connections.values()):
                    for channel, feed in conn.feeds.items():
                        if feed.resync():
                            self._resync(conn, channel, feed)
            for event in page["events"]:
                for conn in list(self.connections.values()):
                    follower = conn.feeds.get(event[2])
                    if follower is not None:
                        self._send(conn, follower, follower.on_event(event))
            self.seq = page["next"]
            if self.seq >= page["seq"]:
                return

    def _speculative(self, replica: Replica, service: ChatService) -> ChatService:
        """The ``push_before_commit`` mutant's state: the applied one plus the chat commands of every
        entry appended after it (whether it commits or not)."""
        log = replica.raft.log
        if log.last_index() <= log.applied_index:
            return service
        assert isinstance(service, RecordingChat)
        spec = ChatService(**service.settings)
        spec.restore(service.snapshot())
        for index in range(log.applied_index + 1, log.last_index() + 1):
            entry = log.entry(index)
            if not entry.data or entry.kind != EntryKind.NORMAL:
                continue
            try:
                timestamp_ms, batch = unpack(entry.data)
            except (TrimaranError, TypeError, ValueError):
                continue
            ctx = ApplyContext(index, timestamp_ms)
            for item in batch:
                if len(item) == 5 and item[3] == "chat":
                    try:
                        spec.apply(item[4], ctx)
                    except TrimaranError:
                        pass
        return spec

    # ------------------------------------------------------------------ history reads

    def on_reply(self, conn: Connection, channel: str, query: list[Any], reply: Reply) -> None:
        if self.connections.get(conn.subscriber.index) is not conn or channel not in conn.reading:
            return  # the connection was dropped meanwhile
        conn.reading.discard(channel)
        if not reply.ok:
            self._lost(conn)
            return
        feed = conn.feeds[channel]
        if query[2].get("limit") == 0:
            conn.subscriber.subscribed(channel, reply.value)
            self._send(conn, feed, feed.on_head(reply.value))
            return
        pushes, done = feed.on_page(reply.value)
        self._send(conn, feed, pushes)
        if self.connections.get(conn.subscriber.index) is not conn:
            return
        if done:
            self._send(conn, feed, feed.go_live())
        else:
            self._history(conn, channel, ["history", channel, feed.history_options()], "stale")

    def _resync(self, conn: Connection, channel: str, feed: Feed) -> None:
        if channel not in conn.reading:
            self._history(conn, channel, ["history", channel, feed.history_options()], "stale")

    def _send(self, conn: Connection, feed: Feed, pushes: list[Push]) -> None:
        for push in pushes:
            if push[0] == "resync":
                self._resync(conn, feed.channel, feed)
            else:
                self.pushed += 1
                conn.subscriber.receive(self.node_id, feed.channel, push)


def check_chat(
    record: ChatRecord, acked: list[tuple[str, bytes, int, str]], leader_chat: ChatService, subscribers: list[Subscriber]
) -> None:
    """The end-of-run chat checks (see the module docstring)."""
    for channel, data, offset, epoch in acked:
        held = record.applied.get((channel, epoch, offset))
        if held != data:
            raise CheckFailure(
                "chat_history",
                f"the publish of {data!r} was acknowledged at offset {offset} of {channel} epoch {epoch}, which holds {held!r}",
            )
    at = ApplyContext(0, 0)
    for name, epoch, _top, oldest, _members in leader_chat.query(["channels"], at)["channels"]:
        since: int | None = oldest - 1
        while since is not None:
            page = leader_chat.query(["history", name, {"since": since, "epoch": epoch}], at)
            for offset, data, _at_ms in page["messages"]:
                if record.applied.get((name, epoch, offset)) != data:
                    raise CheckFailure(
                        "chat_history", f"the final leader holds {data!r} at offset {offset} of {name} epoch {epoch}, never applied so"
                    )
            since = page["next"] if page["messages"] else None
    for sub in subscribers:
        sub.check_caught_up()
