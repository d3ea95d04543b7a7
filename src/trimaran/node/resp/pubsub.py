"""Pub/sub on chat channels: Redis's PUBLISH and SUBSCRIBE family, served by the chat service and
the node's one :class:`~trimaran.node.http.chat_gateway.ChatHub` (the WebSocket gateway's).

===================================  ==============================================================
command                              what it does here
===================================  ==============================================================
``PUBLISH channel message``          a chat ``publish`` through the log, exactly once (the
                                     connection's client session); scope ``chat:publish:<channel>``.
                                     Reply: the subscriptions on *this node* it goes to (as Redis
                                     Cluster counts a PUBLISH: the node's own receivers), not the
                                     cluster's; 0 does not mean nobody else receives it
``SUBSCRIBE channel...``             ``["subscribe", channel, count]`` each, then ``["message",
                                     channel, data]`` for every message published after it (by any
                                     node), in offset order, none twice, none skipped; scope
                                     ``chat:subscribe:<channel>``
``PSUBSCRIBE pattern...``            ``["psubscribe", pattern, count]``, then ``["pmessage",
                                     pattern, channel, data]`` for the messages this node applies
                                     on matching channels (Redis's glob); scope: a
                                     ``chat:subscribe`` prefix grant covering the pattern's literal
                                     head (``news.*`` needs ``chat:subscribe:news.*`` or wider)
``UNSUBSCRIBE``/``PUNSUBSCRIBE``     ``["unsubscribe", channel, count]`` each (none named: all)
===================================  ==============================================================

Channel names are chat's (1..``limits.chat_channel_chars_max`` of ``A-Z a-z 0-9 _ . : @ = -``):
another name is ``-ERR`` naming the rule. Ephemeral chat messages are delivered like the others;
presence joins and leaves are not (Redis has no such push). In RESP3 every push is a ``>`` push and
any command may be sent while subscribed; in RESP2 a connection with subscriptions may only send
the SUBSCRIBE family, PING (answered ``["pong", arg]``), QUIT and RESET, as in Redis.

How delivery works: a SUBSCRIBE is a :class:`~trimaran.services.chat.feed.Feed` with no
``since`` (live only: it learns the channel's top with a linearizable read, so a publish
acknowledged after the subscribe answer is delivered, from whichever node), fed by the hub after
each apply round, and read from history when the events window skipped (the gateway's
:func:`~trimaran.node.http.chat_gateway.catch_up`). A pattern subscription is live only: the
messages this node applies while it holds, no history repair.

Once a connection subscribes, everything it is sent (answers and pushes, in order) goes through
one bounded outbox written by one task. A subscriber that does not read is cut off as the
gateway cuts one (the same bounds, ``WS_QUEUE_FRAMES_MAX`` messages or ``WS_QUEUE_BYTES_MAX``
bytes unsent): the queue is dropped, the write under way gets ``CLOSE_REASON_S`` to finish, then
``-ERR slow subscriber: ...`` is sent (within as long again) and the connection closed. A revoked token closes it with ``-NOAUTH``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import trio

from trimaran import limits
from trimaran.errors import InvalidArgument, PermissionDenied, Unauthenticated
from trimaran.node.http.chat_gateway import WS_QUEUE_BYTES_MAX, WS_QUEUE_FRAMES_MAX, ChatHub, Resyncs, catch_up
from trimaran.node.resp.base import ANSWERED, Handler, RespError, arity_error, error_reply
from trimaran.node.resp.keyspace import glob_regex, literal_prefix
from trimaran.protocols import resp, scopes
from trimaran.protocols.resp import ErrorReply, Push, Reply
from trimaran.services.chat import args as chat_args
from trimaran.services.chat.feed import Feed
from trimaran.services.chat.feed import Push as FeedPush

if TYPE_CHECKING:
    from trimaran.node.resp.server import RespServer, _Connection

log = logging.getLogger("trimaran.node.resp.pubsub")

#: What a RESP2 connection with subscriptions may send (Redis's list, of the commands served here).
SUBSCRIBED_MODE_COMMANDS = frozenset((b"SUBSCRIBE", b"UNSUBSCRIBE", b"PSUBSCRIBE", b"PUNSUBSCRIBE", b"PING", b"QUIT", b"RESET"))
#: The bytes a pattern may hold: a channel name's, and Redis's glob characters.
_PATTERN = re.compile(rb"[A-Za-z0-9_.:@=\-*?\[\]^\\!]+")
#: How long a failed history read of a resync waits before it is tried again.
RESYNC_RETRY_S = 1.0
#: How long the reason of a cut may take to reach the client.
CLOSE_REASON_S = 1.0
NO_CHAT = ErrorReply("this node runs no chat service, so no pub/sub")
SLOW = ErrorReply(
    f"slow subscriber: more than {WS_QUEUE_FRAMES_MAX} messages or {WS_QUEUE_BYTES_MAX} bytes unsent; "
    "the connection is closed (subscribe again; messages published meanwhile are not replayed)"
)


def subscribed_mode_refusal(name: bytes) -> ErrorReply:
    """Redis's answer to a command a RESP2 connection may not send while subscribed."""
    shown = name.decode("utf-8", "replace").lower()[:128]
    return ErrorReply(f"Can't execute '{shown}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")


class Subscriptions:
    """A connection's channels and patterns, and its outbox (made at its first subscribe; see the
    module docstring). A subscriber of the hub: its hooks are quick and never raise."""

    def __init__(self, server: RespServer, conn: _Connection, hub: ChatHub, nursery: trio.Nursery) -> None:
        self.server, self.conn, self.hub = server, conn, hub
        self.channels: dict[str, Feed] = {}
        self.patterns: dict[bytes, re.Pattern[bytes]] = {}
        self._outbox: deque[bytes] = deque()
        self._outbox_bytes = 0
        self._queued = 0  # wires appended to the outbox, ever
        self._written = 0  # of them, written to the socket
        self._wake = trio.lowlevel.ParkingLot()  # the writer waits for wires
        self._drained = trio.lowlevel.ParkingLot()  # answers wait to be written
        self._resyncs = Resyncs()
        self._sending: trio.CancelScope | None = None
        self.closing: ErrorReply | None = None
        self._nursery = nursery
        hub.others.add(self)
        nursery.start_soon(_quietly, self._writer)
        nursery.start_soon(_quietly, self._resyncer)

    @property
    def count(self) -> int:
        return len(self.channels) + len(self.patterns)

    def detach(self) -> None:
        """The connection ended: the hub forgets it."""
        for channel in self.channels:
            self.hub.unfollow(self, channel)
        self.channels.clear()
        self.patterns.clear()
        self.hub.every_channel.discard(self)
        self.hub.others.discard(self)

    # ------------------------------------------------------------------ outgoing

    def answer(self, reply: Reply) -> None:
        """Queue a command's answer (bounded by the runner, which waits for it to be written)."""
        self._append(self.server.wire(reply, self.conn.protocol))

    def append_wires(self, wires: list[bytes]) -> None:
        for wire in wires:
            self._append(wire)

    def _append(self, wire: bytes) -> None:
        self._outbox.append(wire)
        self._outbox_bytes += len(wire)
        self._queued += 1
        self._wake.unpark_all()

    def _push(self, wire: bytes) -> None:
        """Queue a message; over the gateway's bounds the subscriber is cut off."""
        if self.closing is not None:
            return
        if len(self._outbox) >= WS_QUEUE_FRAMES_MAX or self._outbox_bytes + len(wire) > WS_QUEUE_BYTES_MAX:
            self.hub.slow_closed += 1
            log.info("RESP connection %d: a slow subscriber, cut off", self.conn.id)
            self.close(SLOW)
            return
        self.hub.pushed += 1
        self._append(wire)

    def close(self, reason: ErrorReply) -> None:
        """Cut the connection: drop what is queued, give the write under way ``CLOSE_REASON_S`` to
        finish, then send ``reason`` (unless that write was cut mid-message) and close."""
        if self.closing is not None:
            return
        self.closing = reason
        self._outbox.clear()
        self._outbox_bytes = 0
        if self._sending is not None:  # the write under way may finish (then the reason goes), briefly
            self._sending.deadline = min(self._sending.deadline, trio.current_time() + CLOSE_REASON_S)
        self._wake.unpark_all()
        self._drained.unpark_all()
        self._resyncs.wake()

    async def flush(self) -> None:
        """Wait until everything queued so far is written (the runner's pace: at most its batch of
        answers waits); after a cut, until the connection is closed."""
        mine = self._queued
        while self._written < mine and self.closing is None:
            await self._drained.park()
        if self.closing is not None:
            await trio.sleep_forever()  # the writer closes the connection (cancels this)

    def _has_room(self) -> bool:
        return len(self._outbox) <= WS_QUEUE_FRAMES_MAX // 2 and self._outbox_bytes <= WS_QUEUE_BYTES_MAX // 2

    async def _writer(self) -> None:
        cut_mid_message = False
        while self.closing is None:
            if not self._outbox:
                await self._wake.park()
                continue
            count = len(self._outbox)
            unsent = _Unsent(b"".join(self._outbox))
            self._outbox.clear()
            self._outbox_bytes = 0
            with trio.CancelScope() as self._sending:
                await self._send(unsent)
            self._sending = None
            if unsent.view:
                cut_mid_message = True
                break
            self._written += count
            self._drained.unpark_all()
        if not cut_mid_message and self.closing is not None:
            with trio.move_on_after(CLOSE_REASON_S):
                await self._send(_Unsent(self.server.wire(self.closing, self.conn.protocol)))
        self._nursery.cancel_scope.cancel()

    async def _send(self, unsent: _Unsent) -> None:
        """Write to the socket (non-blocking writes, waiting while it is full); ``unsent`` keeps
        what is left if cancelled, so a cut knows whether it stopped mid-message (over TLS, a
        cancelled write counts as stopped mid-message: the stream cannot say)."""
        if self.conn.fd is None:
            await self.conn.stream.send_all(unsent.view)
            unsent.view = unsent.view[len(unsent.view) :]
            return
        while unsent.view:
            try:
                written = os.write(self.conn.fd, unsent.view)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
            unsent.view = unsent.view[written:]
            if unsent.view:
                await trio.lowlevel.wait_writable(self.conn.fd)

    # ------------------------------------------------------------------ from the hub

    def on_event(self, event: list[Any], encoded: dict[Any, Any] | None = None) -> None:
        feed = self.channels.get(event[2])
        if feed is not None:
            self.deliver(feed, feed.on_event(event), encoded)

    def on_any_event(self, event: list[Any], encoded: dict[Any, Any]) -> None:
        if event[1] not in ("message", "ephemeral"):
            return
        name = event[2].encode()
        for pattern, regex in self.patterns.items():
            if regex.match(name):
                self._push(resp.encode(Push([b"pmessage", pattern, name, event[6]]), self.conn.protocol))

    def patterns_matching(self, channel: str) -> int:
        name = channel.encode()
        return sum(1 for regex in self.patterns.values() if regex.match(name))

    def resync_all(self) -> None:
        self._resyncs.add_all(self.channels)

    def recheck_token(self) -> None:
        if self.conn.token is None or not self.server.edge.authoriser.enabled:
            return
        try:
            self.server.edge.grant(self.conn.token)
        except Unauthenticated as exc:
            self.close(error_reply(exc))

    def deliver(self, feed: Feed, pushes: list[FeedPush], encoded: dict[Any, Any] | None = None) -> None:
        """Send on what the feed decided: messages (live or replayed); a resync reads history."""
        protocol = self.conn.protocol
        for push in pushes:
            what = push[0]
            if what == "event" and push[1][1] in ("message", "ephemeral"):
                event = push[1]
                self._push(_cached(encoded, protocol, lambda: Push([b"message", event[2].encode(), event[6]])))
            elif what == "message":
                self._push(resp.encode(Push([b"message", feed.channel.encode(), push[3]]), protocol))
            elif what == "resync":
                self._resyncs.add(feed.channel)
            # An epoch change has no word in Redis's protocol: the messages just go on.

    async def _resyncer(self) -> None:
        await self._resyncs.run(self.channels, lambda feed: self.catch_up(feed, "stale"), lambda: self.closing is not None, RESYNC_RETRY_S)

    async def catch_up(self, feed: Feed, consistency: str) -> dict[str, Any]:
        async def read_page(query: list[Any], consistency: str) -> Any:
            return await _read_chat(self.server, self.conn, query, consistency)

        async def replay(push: FeedPush) -> None:
            while not self._has_room() and self.closing is None:
                await self._drained.park()  # a replay goes at the pace the client reads
            self.deliver(feed, [push])

        return await catch_up(feed, consistency, read_page, replay, lambda pushes: self.deliver(feed, pushes))


# ---------------------------------------------------------------------- commands


def _channel(raw: bytes) -> str:
    try:
        return chat_args.channel_arg(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise InvalidArgument("channel names are 1 or more of the characters A-Z a-z 0-9 _ . : @ = -") from None


def _pattern(raw: bytes) -> bytes:
    if len(raw) > limits.chat_channel_chars_max or not _PATTERN.fullmatch(raw):
        raise InvalidArgument(
            f"a pattern is 1..{limits.chat_channel_chars_max} of the channel characters A-Z a-z 0-9 _ . : @ = - and the glob characters * ? [ ] ^ \\ !"
        )
    return raw


def _hub(s: RespServer) -> ChatHub:
    if s.hub is None:
        raise RespError(NO_CHAT)
    return s.hub


def _subscriptions(s: RespServer, c: _Connection) -> Subscriptions:
    if c.pubsub is None:
        assert c.nursery is not None
        c.pubsub = Subscriptions(s, c, _hub(s), c.nursery)
    return c.pubsub


async def _read_chat(s: RespServer, c: _Connection, query: list[Any], consistency: str) -> Any:
    body = {"service": "chat", "query": query, "consistency": consistency}
    s.authorise(c, "read", body)
    return await s.edge.request("read", body, 0, c.token)


async def _publish(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 3:
        raise arity_error(a[0])
    hub = _hub(s)
    channel = _channel(a[1])
    command: list[Any] = ["publish", channel, a[2]]
    s.authorise(c, "command", {"service": "chat", "command": command})
    await c.session.command("chat", command, len(a[1]) + len(a[2]), c.token)
    return hub.receivers(channel)


async def _subscribe(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) < 2:
        raise arity_error(a[0])
    _hub(s)
    channels = [_channel(raw) for raw in a[1:]]
    for channel in channels:  # every scope before anything is followed
        s.authorise(c, "read", {"service": "chat", "query": ["history", channel, {"limit": 0}], "consistency": "linearizable"})
    known = c.pubsub.channels if c.pubsub is not None else {}
    if len(known) + len(set(channels) - set(known)) > limits.resp_channels_per_connection_max:
        raise RespError(ErrorReply(f"at most {limits.resp_channels_per_connection_max} channels per connection (resp_channels_per_connection_max)"))
    subs = _subscriptions(s, c)
    for raw, channel in zip(a[1:], channels):
        if channel not in subs.channels:
            feed = subs.channels[channel] = Feed(channel)
            subs.hub.follow(subs, channel)
            try:  # live only: learn where the channel stands (linearizable), deliver after it
                head = await _read_chat(s, c, ["history", channel, {"limit": 0}], "linearizable")
            except BaseException:
                del subs.channels[channel]
                subs.hub.unfollow(subs, channel)
                raise
            subs.answer(Push([b"subscribe", raw, subs.count]))
            subs.deliver(feed, feed.on_head(head))
        else:
            subs.answer(Push([b"subscribe", raw, subs.count]))
    return ANSWERED


async def _psubscribe(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) < 2:
        raise arity_error(a[0])
    _hub(s)
    patterns = [_pattern(raw) for raw in a[1:]]
    grant = s.edge.grant(c.token) if s.edge.authoriser.enabled else None
    if grant is not None:
        if grant.refused is not None:
            raise grant.refused
        lapsed = grant.lapsed(s.edge.authoriser.now_ms())
        if lapsed is not None:
            raise lapsed
        for pattern in patterns:
            head = literal_prefix(pattern)
            if not scopes.allowed(grant.claims.scopes, "chat", "subscribe", head, True):
                scope = scopes.needed("chat", "subscribe", head, True)
                raise PermissionDenied(f"this token does not grant {scope!r}", scope=scope)
    known = c.pubsub.patterns if c.pubsub is not None else {}
    if len(known) + len(set(patterns) - set(known)) > limits.resp_patterns_per_connection_max:
        raise RespError(ErrorReply(f"at most {limits.resp_patterns_per_connection_max} patterns per connection (resp_patterns_per_connection_max)"))
    subs = _subscriptions(s, c)
    for pattern in patterns:
        if pattern not in subs.patterns:
            subs.patterns[pattern] = glob_regex(pattern)
            subs.hub.every_channel.add(subs)
        subs.answer(Push([b"psubscribe", pattern, subs.count]))
    return ANSWERED


def _unsubscribe_all(c: _Connection, which: bytes, names: list[bytes]) -> Reply:
    subs = c.pubsub
    if subs is None:
        return Push([which, None, 0])
    if which == b"unsubscribe":
        targets = names or [name.encode() for name in subs.channels]
    else:
        targets = names or list(subs.patterns)
    if not targets:
        subs.answer(Push([which, None, subs.count]))
        return ANSWERED
    for raw in targets:
        if which == b"unsubscribe":
            channel = raw.decode("utf-8", "replace")
            if subs.channels.pop(channel, None) is not None:
                subs.hub.unfollow(subs, channel)
        else:
            subs.patterns.pop(raw, None)
            if not subs.patterns:
                subs.hub.every_channel.discard(subs)
        subs.answer(Push([which, raw, subs.count]))
    return ANSWERED


async def _unsubscribe(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    return _unsubscribe_all(c, b"unsubscribe", a[1:])


async def _punsubscribe(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    return _unsubscribe_all(c, b"punsubscribe", a[1:])


def reset(c: _Connection) -> None:
    """RESET: every subscription ends, without answers (the connection keeps its outbox)."""
    if c.pubsub is not None:
        subs = c.pubsub
        for channel in subs.channels:
            subs.hub.unfollow(subs, channel)
        subs.channels.clear()
        subs.patterns.clear()
        subs.hub.every_channel.discard(subs)


def in_subscribed_mode(c: _Connection) -> bool:
    """RESP2 with a subscription: only :data:`SUBSCRIBED_MODE_COMMANDS` may be sent."""
    return c.pubsub is not None and c.protocol == 2 and c.pubsub.count > 0


def _cached(encoded: dict[Any, Any] | None, protocol: int, push: Callable[[], Push]) -> bytes:
    """A live message's wire, encoded at the first subscriber and reused by the others."""
    key = ("resp.message", protocol)
    if encoded is None:
        return resp.encode(push(), protocol)
    wire = encoded.get(key)
    if wire is None:
        wire = encoded[key] = resp.encode(push(), protocol)
    return wire


class _Unsent:
    """The bytes of one write not yet taken by the socket."""

    __slots__ = ("view",)

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)


async def _quietly(task: Callable[[], Any]) -> None:
    """A connection's helper task: the client going away just ends it."""
    try:
        await task()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


COMMANDS: dict[bytes, Handler] = {
    b"PUBLISH": _publish,
    b"SUBSCRIBE": _subscribe,
    b"UNSUBSCRIBE": _unsubscribe,
    b"PSUBSCRIBE": _psubscribe,
    b"PUNSUBSCRIBE": _punsubscribe,
}
