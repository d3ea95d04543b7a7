"""The chat WebSocket gateway (``/v1/ws`` on the HTTP port): JSON frames, subscriptions served from
what this node has applied, resumable by ``(offset, epoch)``.

Protocol: text frames of JSON objects; ``id`` is the client's, echoed in the answer. A client sends
one object per frame. **A server frame carries one or more objects, separated by a newline**
(newline-delimited JSON, as Centrifugo's JSON protocol does): split the frame's text on ``"\n"``
and parse each line (a JSON text never contains a raw newline). Answers and pushes queued for a
connection at the same moment travel in one frame (up to ``WS_FRAME_PUSH_BYTES_MAX`` bytes; a
larger one alone), in the order they were queued; a lone one is sent at once.

==========================================================  ==========================================
client sends                                                server answers
==========================================================  ==========================================
``{"type": "auth", "token"}`` (first frame, when the        ``{"type": "ready", "node_id"}``; without
upgrade carried no ``Authorization: Bearer``)               auth the server sends ``ready`` at once
``{"id", "type": "subscribe", "channel", "since"?,          ``message`` pushes of the history after
"epoch"?}``                                                 ``since`` (none without ``since``), then
                                                            ``{"id", "type": "subscribed", "channel",
                                                            "epoch", "top", "oldest", "recovered"}``,
                                                            then live pushes, gap- and duplicate-free
``{"id", "type": "unsubscribe", "channel"}``                ``{"id", "type": "unsubscribed"}``
``{"id", "type": "publish", "channel", "data" |             ``{"id", "type": "published", "offset",
"data_base64", "ephemeral"?}``                              "epoch"}`` (offset null if ephemeral)
``{"id", "type": "history", "channel", "since"?, "epoch"?,  ``{"id", "type": "history", ...}`` as the
"limit"?}``                                                 service's history query answers
``{"id", "type": "join", "channel", "info"?}`` /            ``{"id", "type": "joined" | "left"}``
``{"id", "type": "leave", "channel"}``
``{"id", "type": "presence", "channel"}``                   ``{"id", "type": "presence", "members":
                                                            [{"session", "info", "joined_at_ms"}]}``
``{"id", "type": "ping"}``                                  ``{"id", "type": "pong"}``
==========================================================  ==========================================

Pushes: ``{"type": "message", "channel", "offset", "epoch", "data" | "data_base64", "at_ms"}``;
``{"type": "ephemeral", "channel", "epoch", "data", "at_ms"}``; ``{"type": "join" | "leave",
"channel", "session", "info" | "reason", "at_ms"}``; ``{"type": "epoch", "channel", "epoch"}`` when
the channel's history was reset or the channel was forgotten and made again (offsets restart at 1).
A request that fails gets ``{"id", "type": "error", "error": {"code", "name", "message",
"details"}}`` and the connection stays. Data is text when it is UTF-8, else ``data_base64``.

Close codes: 1001 the node is shutting down; 4001 no, bad, expired or revoked token (also when a
revocation is applied while connected); 4002 a frame that is not the protocol; 4008 a slow consumer
(more than ``WS_QUEUE_FRAMES_MAX`` queued entries or ``WS_QUEUE_BYTES_MAX`` bytes unsent: resume from the
last offset received, nothing stored is lost); 4029 over ``WS_FRAMES_PER_S_MAX`` frames a second;
1009 a frame over ``edge.WS_FRAME_BYTES_MAX``.

How delivery stays exact: every node pushes from its own applied state (:class:`ChatHub` reads the
chat service's events window after each driver round), so a subscriber never sees an uncommitted
message and followers share the fan-out. What each subscription is sent is decided by its
:class:`~trimaran.services.chat.feed.Feed` (sans-IO, the same one the simulator checks under
faults): it first reads the history with a linearizable read (so it sees every publish
acknowledged before it subscribed, on any node), then goes live; it keeps the last offset
delivered, so a live message it already has is skipped and one that skips ahead makes it read the
missing range from history first.

What a fan-out costs: the hub hands each subscriber a page's consecutive events of a channel as
one run; a subscriber in step (live, the run's messages the next ones) takes it whole
(:meth:`Feed.take_run`) and queues one entry whose text is joined once for all of them. On the
port's own listener (:mod:`~trimaran.node.http.front`) each connection's frame is written at the
end of the hub's pass, framed once for every connection sending the same text, without waking
its writer task; the writer only takes over what a full socket did not.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import deque
from typing import Any, Awaitable, Callable, Protocol

import trio

from trimaran import limits
from trimaran.errors import AuthError, InvalidArgument, TrimaranError, Unauthenticated
from trimaran.node.authoriser import Grant
from trimaran.node.http.edge import HttpEdge
from trimaran.node.http.front import DIRECT_EXTENSION, DirectWebSocket, text_frame
from trimaran.node.http.json_body import data_fields, encode, error_json
from trimaran.services.chat import ChatService
from trimaran.services.chat.feed import Feed, Push

log = logging.getLogger("trimaran.node.http.chat")

#: Queue entries (a push or an answer, or a run of live messages of one channel pushed in one
#: pass) and bytes queued for one connection and not yet sent; beyond either it is cut off (4008).
WS_QUEUE_FRAMES_MAX = 10_000
WS_QUEUE_BYTES_MAX = 16 * limits.MIB
#: Bytes of pushes one frame carries (newline-delimited); a single larger push goes alone.
WS_FRAME_PUSH_BYTES_MAX = 64 * limits.KIB
#: Frames a client may send per second (a bucket of this size refilled at this rate).
WS_FRAMES_PER_S_MAX = 1_000
#: Channels one connection may subscribe to at once.
WS_SUBSCRIPTIONS_MAX = 1_000
#: WebSocket connections one node serves at once.
WS_CONNECTIONS_MAX = 10_000
#: How long the first frame may take when it must carry the token.
AUTH_TIMEOUT_S = 10.0

CLOSE_GOING_AWAY = 1001
CLOSE_UNAUTHENTICATED = 4001
CLOSE_PROTOCOL = 4002
CLOSE_SLOW = 4008
CLOSE_RATE = 4029

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


class Closing(Exception):
    """End the connection with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def error_frame(request_id: Any, exc: TrimaranError) -> dict[str, Any]:
    return {"id": request_id, "type": "error", "error": error_json(exc)}


class Subscriber(Protocol):
    """What the hub pushes to: a WebSocket connection, or a RESP connection's subscriptions
    (:mod:`trimaran.node.resp.pubsub`)."""

    def on_event(self, event: list[Any], encoded: dict[Any, Any] | None = None) -> None: ...

    def resync_all(self) -> None: ...

    def recheck_token(self) -> None: ...


class PatternSubscriber(Subscriber, Protocol):
    """A subscriber that is handed every event (RESP ``PSUBSCRIBE``: it matches channel names itself)."""

    def on_any_event(self, event: list[Any], encoded: dict[Any, Any]) -> None: ...

    def patterns_matching(self, channel: str) -> int: ...


class ChatHub:
    """The node's one hub: every subscriber of this node (WebSocket connections, and RESP
    connections in pub/sub mode), by the channels they follow; pushes what the node applied after
    each driver round (a hook the driver calls; quick, never raises)."""

    def __init__(self, service: ChatService, edge: HttpEdge) -> None:
        self.service = service
        self.edge = edge
        #: WebSocket connections (counted against ``WS_CONNECTIONS_MAX``) and the other subscribers.
        self.connections: set[WsConnection] = set()
        self.others: set[Subscriber] = set()
        self.by_channel: dict[str, set[Subscriber]] = {}
        #: Subscribers handed every event (pattern subscriptions).
        self.every_channel: set[PatternSubscriber] = set()
        #: The last event of the window pushed.
        self.seq = service.events_seq
        self._generation = edge.authoriser.generation
        #: Counters (reported by the status op).
        self.slow_closed = 0
        self.pushed = 0
        #: While the hub pushes a round: the connections with frames to write at its end (None:
        #: not pushing; pushes then wake each connection's writer).
        self.to_flush: list[WsConnection] | None = None
        #: This pass's frames by the id of their text (kept with it, so the id stays its own).
        self._frames: dict[int, tuple[str, bytes]] = {}

    def after_round(self) -> None:
        if self.edge.authoriser.enabled and self.edge.authoriser.generation != self._generation:
            self._generation = self.edge.authoriser.generation
            for sub in [*self.connections, *self.others]:
                sub.recheck_token()
        if (not self.by_channel and not self.every_channel) or self.seq == self.service.events_seq:
            self.seq = self.service.events_seq  # nothing to push (an int compare every round)
            return
        self.to_flush = []
        try:
            self._push_new_events()
        finally:
            to_flush, self.to_flush = self.to_flush, None
            for conn in to_flush:
                conn.flush_now()
            self._frames.clear()

    def _push_new_events(self) -> None:
        while True:
            page = self.service.events_after(self.seq)
            if page["gap"]:
                for sub in [*self.connections, *self.others]:
                    sub.resync_all()
            events = page["events"]
            if self.every_channel:
                # Pattern subscribers get each event right after the channel's own (Redis sends
                # message, then pmessage), so events go one at a time.
                for event in events:
                    self._push_run(_Run([event]))
            else:
                start, count = 0, len(events)
                while start < count:  # runs of consecutive events of one channel
                    channel, end = events[start][2], start + 1
                    while end < count and events[end][2] == channel:
                        end += 1
                    self._push_run(_Run(events[start:end]))
                    start = end
            self.seq = page["next"]
            if self.seq >= page["seq"]:
                return

    def _push_run(self, run: _Run) -> None:
        conns = self.by_channel.get(run.channel)
        if conns:
            for conn in list(conns):
                if type(conn) is WsConnection:
                    conn.on_run(run)
                else:
                    for event, encoded in zip(run.events, run.encoded):
                        conn.on_event(event, encoded)
        for watcher in list(self.every_channel):
            for event, encoded in zip(run.events, run.encoded):
                watcher.on_any_event(event, encoded)

    def frame_of(self, text: str) -> bytes:
        """The WebSocket frame of a frame's text; a text shared by several connections (a run's,
        in this pass) is framed once for all of them."""
        frames = self._frames
        hit = frames.get(id(text))
        if hit is not None and hit[0] is text:
            return hit[1]
        frame = text_frame(text.encode())
        frames[id(text)] = (text, frame)
        return frame

    def follow(self, conn: Subscriber, channel: str) -> None:
        self.by_channel.setdefault(channel, set()).add(conn)

    def unfollow(self, conn: Subscriber, channel: str) -> None:
        conns = self.by_channel.get(channel)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self.by_channel[channel]

    def receivers(self, channel: str) -> int:
        """This node's subscriptions a message of ``channel`` goes to (a connection subscribed by
        name and by two matching patterns counts three times, as Redis counts)."""
        return len(self.by_channel.get(channel, ())) + sum(w.patterns_matching(channel) for w in self.every_channel)


class WsConnection:
    """One WebSocket client; see the module docstring."""

    def __init__(self, hub: ChatHub, scope: dict[str, Any], receive: Receive, send: Send, token: str | None) -> None:
        self.hub = hub
        self.edge = hub.edge
        self._scope = scope
        #: The port's own listener serves this connection: frames are written at the end of the
        #: hub's pass, without waking the writer task (see :meth:`flush_now`).
        self._direct: DirectWebSocket | None = scope.get("extensions", {}).get(DIRECT_EXTENSION)
        self._receive = receive
        self._send = send
        self.token = token
        self.grant: Grant | None = None
        self.subscriptions: dict[str, Feed] = {}
        self._queue: deque[str] = deque()
        self._queue_bytes = 0
        self._queue_lot = trio.lowlevel.ParkingLot()
        #: Readers of history waiting for the queue to drain (see _room).
        self._room_lot = trio.lowlevel.ParkingLot()
        self._resyncs = Resyncs()
        self.closing: Closing | None = None
        self._cancel: trio.CancelScope | None = None
        self._session_id: int | None = None
        self._session_lock = trio.Lock()
        self._bucket = float(WS_FRAMES_PER_S_MAX)
        self._bucket_at = trio.current_time()

    # ------------------------------------------------------------------ outgoing

    def push(self, frame: dict[str, Any]) -> None:
        """Queue a frame; a connection over its queue bounds is cut off as a slow consumer."""
        if self.closing is not None:
            return
        self.push_text(encode(frame))

    def push_text(self, text: str, pushes: int = 1) -> None:
        """Queue a frame already encoded (a live event is encoded once for all its subscribers;
        a run of ``pushes`` live messages is one entry, their lines joined)."""
        if self.closing is not None:
            return
        if len(self._queue) >= WS_QUEUE_FRAMES_MAX or self._queue_bytes + len(text) > WS_QUEUE_BYTES_MAX:
            self.hub.slow_closed += 1
            self.close(Closing(CLOSE_SLOW, "slow consumer: reconnect and resume from the last offset received"))
            return
        queue = self._queue
        queue.append(text)
        self._queue_bytes += len(text)
        self.hub.pushed += pushes
        if len(queue) == 1:
            to_flush = self.hub.to_flush
            if to_flush is not None and self._direct is not None:
                to_flush.append(self)  # written at the end of the hub's pass
            else:
                # The writer parks only on an empty queue: wake it when this push made it
                # non-empty, not on every push (a wake-up per push was a task switch per delivery).
                self._queue_lot.unpark_all()

    def flush_now(self) -> None:
        """Write what is queued at once, frame by frame, while the socket is free; what is left
        wakes the writer task (it waits for the socket)."""
        direct = self._direct
        assert direct is not None
        while self._queue and self.closing is None and direct.ready():
            direct.write_now(self.hub.frame_of(self._next_frame_text()))
        if self._queue:
            self._queue_lot.unpark_all()
        elif len(self._room_lot) and self._has_room():
            self._room_lot.unpark_all()

    def close(self, closing: Closing) -> None:
        if self.closing is None:
            self.closing = closing
            self._queue_lot.unpark_all()
            self._resyncs.wake()
            self._room_lot.unpark_all()

    def _next_frame_text(self) -> str:
        text, size = take_frame(self._queue, WS_FRAME_PUSH_BYTES_MAX)
        self._queue_bytes -= size
        return text

    async def _writer(self) -> None:
        while True:
            while not self._queue and self.closing is None:
                await self._queue_lot.park()
            if self.closing is not None:
                return
            await self._send({"type": "websocket.send", "text": self._next_frame_text()})
            if len(self._room_lot) and self._has_room():
                self._room_lot.unpark_all()

    def _has_room(self) -> bool:
        return len(self._queue) <= WS_QUEUE_FRAMES_MAX // 2 and self._queue_bytes <= WS_QUEUE_BYTES_MAX // 2

    async def _room(self) -> None:
        """Wait until half the queue is free: a replay of history is paced by what the client reads,
        so only live events (which cannot wait) can make it a slow consumer."""
        while not self._has_room() and self.closing is None:
            await self._room_lot.park()

    # ------------------------------------------------------------------ live events

    def on_event(self, event: list[Any], encoded: dict[Any, Any] | None = None) -> None:
        feed = self.subscriptions.get(event[2])
        if feed is not None:
            pushes = feed.on_event(event)
            if pushes:
                self._send_pushes(feed, pushes, encoded)

    def on_run(self, run: _Run) -> None:
        """A run of live events of one channel: in the common case (live, the run's messages are
        the next ones) one queue entry shared with every subscriber in step, else event by event."""
        feed = self.subscriptions.get(run.channel)
        if feed is None:
            return
        if run.first is not None and feed.take_run(run.first, run.last, run.epoch):
            text = run.text()
            if len(text) <= WS_FRAME_PUSH_BYTES_MAX:
                self.push_text(text, len(run.events))
            else:  # more than a frame: push by push, so take_frame can cut it into frames
                for event, encoded in zip(run.events, run.encoded):
                    self.push_text(_encoded_event(encoded, event))
            return
        for event, encoded in zip(run.events, run.encoded):
            pushes = feed.on_event(event)
            if pushes:
                self._send_pushes(feed, pushes, encoded)

    def _send_pushes(self, feed: Feed, pushes: list[Push], encoded: dict[Any, Any] | None = None) -> None:
        """Queue what the feed decided (a live event's frame is encoded once for all subscribers)."""
        for push in pushes:
            what = push[0]
            if what == "event":
                self.push_text(_encoded_event(encoded, push[1]))
            elif what == "message":
                self.push(_message_frame(feed.channel, push[1], push[2], push[3], push[4]))
            elif what == "epoch":
                frame: dict[str, Any] = {"type": "epoch", "channel": feed.channel, "epoch": push[1]}
                if push[2] is False:
                    frame["recovered"] = False
                self.push(frame)
            else:  # resync: read the missing range from history
                self._resyncs.add(feed.channel)

    def resync_all(self) -> None:
        self._resyncs.add_all(self.subscriptions)

    def recheck_token(self) -> None:
        if self.grant is None:
            return
        refusal = self.edge.authoriser.recheck(self.grant)
        if refusal is not None:
            self.close(Closing(CLOSE_UNAUTHENTICATED, refusal.message))

    async def _resyncer(self) -> None:
        await self._resyncs.run(self.subscriptions, lambda feed: self._catch_up(feed, "stale"), lambda: self.closing is not None)

    async def _catch_up(self, feed: Feed, consistency: str) -> dict[str, Any]:
        """Read ``feed``'s channel from history after its last offset (pages), push it, then the
        live events held meanwhile; the first page's answer."""

        async def read_page(query: list[Any], consistency: str) -> Any:
            return await self._request("read", {"service": "chat", "query": query, "consistency": consistency})

        async def replay(push: Push) -> None:
            if push[0] == "message" and not self._has_room():
                await self._room()  # a replay goes at the pace the client reads
            self._send_pushes(feed, [push])

        return await catch_up(feed, consistency, read_page, replay, lambda pushes: self._send_pushes(feed, pushes))

    # ------------------------------------------------------------------ requests

    async def _request(self, op: str, body: dict[str, Any]) -> Any:
        if self.grant is not None:
            self.edge.authoriser.check(self.grant, op, body)
        if op == "command":
            return await self.edge.command(body["service"], body["command"], 0, self.token)
        return await self.edge.request(op, body, 0, self.token)

    async def _presence_session(self) -> int:
        async with self._session_lock:
            if self._session_id is None:
                session_id, _ = await self._request("command", {"service": "chat", "command": ["open"]})
                self._session_id = session_id
            return self._session_id

    async def _heartbeat(self) -> None:
        """One heartbeat for the connection's presence session, whatever its channels."""
        period_s = 30.0 / 3  # the service's default presence TTL is 30 s
        while True:
            await trio.sleep(period_s)
            if self._session_id is not None:
                try:
                    await self._request("command", {"service": "chat", "command": ["heartbeat", self._session_id]})
                except TrimaranError as exc:
                    log.info("chat presence heartbeat failed: %s", exc.message)

    async def handle(self, frame: dict[str, Any]) -> dict[str, Any]:
        kind, channel = frame.get("type"), frame.get("channel")
        if kind == "ping":
            return {"type": "pong"}
        if not isinstance(channel, str):
            raise InvalidArgument(f"{kind} needs a channel (a string)")
        if kind == "subscribe":
            return await self._subscribe(channel, frame)
        if kind == "unsubscribe":
            if self.subscriptions.pop(channel, None) is not None:
                self.hub.unfollow(self, channel)
            return {"type": "unsubscribed", "channel": channel}
        if kind == "publish":
            data = _data_of(frame)
            options = {"ephemeral": True} if frame.get("ephemeral") else None
            command: list[Any] = ["publish", channel, data] + ([options] if options else [])
            offset, epoch = await self._request("command", {"service": "chat", "command": command})
            return {"type": "published", "channel": channel, "offset": offset, "epoch": epoch}
        if kind == "history":
            options = {k: frame[k] for k in ("since", "epoch", "limit") if frame.get(k) is not None}
            query: list[Any] = ["history", channel] + ([options] if options else [])
            page = await self._request("read", {"service": "chat", "query": query, "consistency": "linearizable"})
            messages = [{"offset": o, **data_fields(d), "at_ms": t} for o, d, t in page.pop("messages")]
            return {"type": "history", "channel": channel, "messages": messages, **page}
        if kind == "join":
            info = frame.get("info", "")
            if not isinstance(info, str):
                raise InvalidArgument("info must be a string")
            session_id = await self._presence_session()
            await self._request("command", {"service": "chat", "command": ["join", channel, session_id, info.encode()]})
            return {"type": "joined", "channel": channel, "session": session_id}
        if kind == "leave":
            if self._session_id is not None:
                await self._request("command", {"service": "chat", "command": ["leave", channel, self._session_id]})
            return {"type": "left", "channel": channel}
        if kind == "presence":
            answer = await self._request("read", {"service": "chat", "query": ["presence", channel], "consistency": "linearizable"})
            members = [{"session": s, **data_fields(i, "info"), "joined_at_ms": t} for s, i, t in answer["members"]]
            return {"type": "presence", "channel": channel, "members": members, "epoch": answer["epoch"]}
        raise InvalidArgument(f"unknown frame type {str(kind)[:40]!r}")

    async def _subscribe(self, channel: str, frame: dict[str, Any]) -> dict[str, Any]:
        if channel in self.subscriptions:
            raise InvalidArgument(f"already subscribed to {channel!r}")
        if len(self.subscriptions) >= WS_SUBSCRIPTIONS_MAX:
            raise InvalidArgument(f"at most {WS_SUBSCRIPTIONS_MAX} subscriptions per connection")
        since, epoch = frame.get("since"), frame.get("epoch")
        if since is not None and (type(since) is not int or since < 0):
            raise InvalidArgument("since must be an offset (an integer >= 0)")
        if epoch is not None and not isinstance(epoch, str):
            raise InvalidArgument("epoch must be a string")
        # Check the scope before anything is read or followed.
        self._check("read", {"service": "chat", "query": ["history", channel], "consistency": "linearizable"})
        feed = Feed(channel, since, epoch)
        self.subscriptions[channel] = feed
        self.hub.follow(self, channel)
        try:
            if since is None:
                # Live only: learn where the channel stands (linearizable), deliver after it.
                query: list[Any] = ["history", channel, {"limit": 0}]
                first = await self._request("read", {"service": "chat", "query": query, "consistency": "linearizable"})
                self._send_pushes(feed, feed.on_head(first))
                recovered = True
            else:
                first = await self._catch_up(feed, "linearizable")
                recovered = bool(first["recovered"])
        except BaseException:
            self.subscriptions.pop(channel, None)
            self.hub.unfollow(self, channel)
            raise
        return {
            "type": "subscribed", "channel": channel, "epoch": feed.epoch, "top": first["top"], "oldest": first["oldest"],
            "recovered": recovered,
        }  # fmt: skip

    def _check(self, op: str, body: dict[str, Any]) -> None:
        if self.grant is not None:
            self.edge.authoriser.check(self.grant, op, body)

    # ------------------------------------------------------------------ the connection

    def _take_frame_budget(self) -> None:
        now = trio.current_time()
        self._bucket = min(float(WS_FRAMES_PER_S_MAX), self._bucket + (now - self._bucket_at) * WS_FRAMES_PER_S_MAX)
        self._bucket_at = now
        if self._bucket < 1:
            raise Closing(CLOSE_RATE, f"more than {WS_FRAMES_PER_S_MAX} frames a second")
        self._bucket -= 1

    async def _next_frame(self) -> dict[str, Any] | None:
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            raise Closing(CLOSE_PROTOCOL, "frames are JSON text, not binary")
        self._take_frame_budget()
        try:
            frame = json.loads(text)
        except ValueError:
            raise Closing(CLOSE_PROTOCOL, "a frame is not JSON") from None
        if not isinstance(frame, dict):
            raise Closing(CLOSE_PROTOCOL, "a frame is a JSON object")
        return frame

    async def _authenticate(self) -> None:
        authoriser = self.edge.authoriser
        if not authoriser.enabled:
            return
        if self.token is None:
            with trio.move_on_after(AUTH_TIMEOUT_S):
                frame = await self._next_frame()
                if frame is None:
                    raise Closing(CLOSE_UNAUTHENTICATED, "closed before the auth frame")
                if frame.get("type") != "auth" or not isinstance(frame.get("token"), str):
                    raise Closing(CLOSE_UNAUTHENTICATED, 'the first frame must be {"type": "auth", "token": ...}')
                self.token = frame["token"]
        if self.token is None:
            raise Closing(CLOSE_UNAUTHENTICATED, f"no auth frame within {AUTH_TIMEOUT_S:g} s")
        try:
            self.grant = self.edge.grant(self.token)
        except Unauthenticated as exc:
            raise Closing(CLOSE_UNAUTHENTICATED, exc.message) from None

    async def _serve_requests(self, nursery: trio.Nursery) -> None:
        while True:
            frame = await self._next_frame()
            if frame is None:
                return
            nursery.start_soon(self._answer, frame)

    async def _answer(self, frame: dict[str, Any]) -> None:
        request_id = frame.get("id")
        try:
            answer = await self.handle(frame)
            self.push({"id": request_id, **answer})
        except AuthError as exc:
            if isinstance(exc, Unauthenticated):  # expired or revoked: the connection is done
                self.push(error_frame(request_id, exc))
                self.close(Closing(CLOSE_UNAUTHENTICATED, exc.message))
            else:
                self.push(error_frame(request_id, exc))
        except TrimaranError as exc:
            self.push(error_frame(request_id, exc))

    async def run(self) -> None:
        await self._send({"type": "websocket.accept"})
        code, reason = 1000, ""
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                try:
                    await self._authenticate()
                    self.hub.connections.add(self)
                    self.push({"type": "ready", "node_id": self.edge.config.node_id})
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._resyncer)
                    nursery.start_soon(self._heartbeat)
                    nursery.start_soon(self._watch_closing, nursery.cancel_scope)
                    await self._serve_requests(nursery)
                except Closing as closing:
                    self.close(closing)
                    await self._flush_then_close()
                nursery.cancel_scope.cancel()
        finally:
            self.hub.connections.discard(self)
            for channel in list(self.subscriptions):
                self.hub.unfollow(self, channel)
            if self.closing is not None:
                code, reason = self.closing.code, self.closing.reason
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                if self._session_id is not None:
                    try:
                        await self._request("command", {"service": "chat", "command": ["close", self._session_id]})
                    except TrimaranError:
                        pass  # it lapses by itself
                try:
                    await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})
                except Exception:  # noqa: BLE001 (the client is gone already)
                    pass

    async def _flush_then_close(self) -> None:
        with trio.move_on_after(1):
            while self._queue:
                await self._send({"type": "websocket.send", "text": self._next_frame_text()})

    async def _watch_closing(self, cancel: trio.CancelScope) -> None:
        while self.closing is None:
            await self._queue_lot.park()
        await self._flush_then_close()
        cancel.cancel()


class Resyncs:
    """The channels of one connection whose feeds must read their history again (a ``resync``
    push, or a gap in the events window), and the task that reads them one at a time: the
    gateway's, and the RESP port's (:mod:`trimaran.node.resp.pubsub`)."""

    def __init__(self) -> None:
        self.channels: set[str] = set()
        self._lot = trio.lowlevel.ParkingLot()

    def add(self, channel: str) -> None:
        self.channels.add(channel)
        self._lot.unpark_all()

    def add_all(self, feeds: dict[str, Feed]) -> None:
        """The events window lost events: every feed not reading already reads again."""
        for feed in feeds.values():
            if feed.resync():
                self.channels.add(feed.channel)
        self._lot.unpark_all()

    def wake(self) -> None:
        """The connection is closing: :meth:`run` returns."""
        self._lot.unpark_all()

    async def run(
        self,
        feeds: dict[str, Feed],
        catch_up: Callable[[Feed], Awaitable[Any]],
        closing: Callable[[], bool],
        retry_s: float | None = None,
    ) -> None:
        """Until ``closing()``: ``catch_up`` each channel added that is still in ``feeds``. A
        failure ends the task (and so the connection), or with ``retry_s`` is logged and the
        channel read again after that long."""
        while True:
            while not self.channels and not closing():
                await self._lot.park()
            if closing():
                return
            channel = self.channels.pop()
            feed = feeds.get(channel)
            if feed is None:
                continue
            if retry_s is None:
                await catch_up(feed)
                continue
            try:
                await catch_up(feed)
            except TrimaranError as exc:  # an election, a token that lapsed: try again shortly
                log.info("reading %s's history for a subscriber failed: %s", channel, exc.message)
                if channel in feeds:
                    self.channels.add(channel)
                await trio.sleep(retry_s)


async def catch_up(
    feed: Feed,
    consistency: str,
    read_page: Callable[[list[Any], str], Awaitable[Any]],
    replay: Callable[[Push], Awaitable[None]],
    deliver: Callable[[list[Push]], None],
) -> dict[str, Any]:
    """The edge's history loop of a :class:`Feed` (its step 1), for every edge that pushes
    (WebSocket here, RESP in :mod:`trimaran.node.resp.pubsub`): read the channel's history after
    the feed's last offset, page by page (the first read at ``consistency``, later ones stale:
    offsets keep them exact), ``replay`` each push (it may wait for room), then ``deliver`` the
    live events held meanwhile (at once: nothing may come between going live and them). The first
    page's answer."""
    first: dict[str, Any] | None = None
    while True:
        page = await read_page(["history", feed.channel, feed.history_options()], consistency)
        consistency = "stale"
        first = first or page
        pushes, done = feed.on_page(page)
        for push in pushes:
            await replay(push)
        if done:
            deliver(feed.go_live())
            return first


class _Run:
    """Consecutive events of one channel from one page of the events window, handed to each of
    its subscribers at once. When they are messages of one epoch with consecutive offsets
    (``first``..``last``; else ``first`` is None), a subscriber in step takes them whole
    (:meth:`Feed.take_run`) and queues :meth:`text`, joined once for all."""

    __slots__ = ("channel", "events", "encoded", "first", "last", "epoch", "_text")

    def __init__(self, events: list[list[Any]]) -> None:
        self.channel: str = events[0][2]
        self.events = events
        #: Each event's encodings, made at the first subscriber that needs one.
        self.encoded: list[dict[Any, Any]] = [{} for _ in events]
        self.first: int | None = None
        self.last = 0
        self.epoch = ""
        self._text: str | None = None
        head = events[0]
        if head[1] == "message":
            offset, epoch = head[3], head[4]
            for event in events:
                if event[1] != "message" or event[3] != offset or event[4] != epoch:
                    return
                offset += 1
            self.first, self.last, self.epoch = head[3], offset - 1, epoch

    def text(self) -> str:
        """The run's pushes, newline-delimited (one frame's text, or part of one)."""
        if self._text is None:
            self._text = "\n".join(_encoded_event(encoded, event) for event, encoded in zip(self.events, self.encoded))
        return self._text


def take_frame(queue: deque[str], bytes_max: int) -> tuple[str, int]:
    """Take what is queued, up to ``bytes_max``, as one frame's text (newline-delimited JSON) and
    the queued bytes it took. One frame per push cost the node a send through hypercorn, wsproto
    and the socket each, most of its CPU in a fan-out. A lone push (the common case at low rates)
    goes at once, alone; so does one larger than the bound."""
    text = queue.popleft()
    size = len(text)
    if not queue or size + 1 + len(queue[0]) > bytes_max:
        return text, size
    parts = [text]
    while queue and size + 1 + len(queue[0]) <= bytes_max:
        text = queue.popleft()
        parts.append(text)
        size += 1 + len(text)
    return "\n".join(parts), size - (len(parts) - 1)


def _encoded_event(encoded: dict[str, str] | None, event: list[Any]) -> str:
    """The event's push, encoded at the first subscriber and reused by the others."""
    if encoded is None:
        return encode(_event_frame(event))
    text = encoded.get("frame")
    if text is None:
        text = encoded["frame"] = encode(_event_frame(event))
    return text


def _message_frame(channel: str, offset: int, epoch: str | None, data: bytes, at_ms: int) -> dict[str, Any]:
    return {"type": "message", "channel": channel, "offset": offset, "epoch": epoch, **data_fields(data), "at_ms": at_ms}


def _event_frame(event: list[Any]) -> dict[str, Any]:
    """The push frame of a live event (message, ephemeral, join or leave)."""
    _, kind, channel, offset, epoch, at_ms, payload = event
    if kind == "message":
        return _message_frame(channel, offset, epoch, payload, at_ms)
    if kind == "ephemeral":
        return {"type": "ephemeral", "channel": channel, "epoch": epoch, **data_fields(payload), "at_ms": at_ms}
    session, extra = payload
    detail = data_fields(extra, "info") if kind == "join" else {"reason": extra}
    return {"type": kind, "channel": channel, "session": session, **detail, "at_ms": at_ms}


def _data_of(frame: dict[str, Any]) -> bytes:
    if isinstance(frame.get("data"), str):
        data = frame["data"].encode("utf-8")
    elif isinstance(frame.get("data_base64"), str):
        try:
            data = base64.b64decode(frame["data_base64"], validate=True)
        except ValueError:
            raise InvalidArgument("data_base64 is not base64") from None
    else:
        raise InvalidArgument("publish needs data (text) or data_base64")
    return data


async def serve_websocket(hub: ChatHub, scope: dict[str, Any], receive: Receive, send: Send, token: str | None) -> None:
    """One ``/v1/ws`` connection, from its ``websocket.connect`` to its close."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if len(hub.connections) >= WS_CONNECTIONS_MAX:
        await send({"type": "websocket.close", "code": 1013, "reason": "this node is at its WebSocket connection cap"})
        return
    await WsConnection(hub, scope, receive, send, token).run()
