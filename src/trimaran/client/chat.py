"""The ``chat`` service on a client (``c.chat``): publish, history and presence through the client
port (a publish is exactly-once, like every command of the client's session), and live
subscriptions over the WebSocket gateway of any node, resumed by ``(offset, epoch)`` across
reconnects.

::

    offset, epoch = await c.chat.publish("room.1", "hi")
    async with c.chat.subscribe("room.1", since=0) as events:   # replay, then live
        async for event in events:
            print(event.offset, event.data)

:meth:`ChatClient.subscribe` asks the node it is connected to for its HTTP address (``status``),
opens ``/v1/ws`` there (with TLS and the token when the client has them), and on a broken
connection tries every node it knows, resuming after the last offset it yielded: no gap, no
duplicate, or an ``epoch`` event with ``recovered=False`` when history no longer reaches back. See
:mod:`trimaran.node.http.chat_gateway` for the wire protocol.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket_url

from trimaran.errors import ClusterError, InvalidArgument, TrimaranError, Unavailable, error_from_wire

from .connection import Address

SERVICE = "chat"
#: Pause between reconnects of a subscription, doubling up to the max.
RESUBSCRIBE_S_MIN = 0.1
RESUBSCRIBE_S_MAX = 2.0
#: Events received and not yet taken by the caller; then the gateway's queue fills (backpressure).
SUBSCRIPTION_BUFFER_EVENTS = 1_000
#: Largest frame the client accepts from the gateway (a page of history).
WS_MESSAGE_BYTES_MAX = 16 * 1024 * 1024


class _Client(Protocol):
    async def command(self, service: str, command: Any, *, timeout_ms: int | None = None) -> Any: ...

    async def read(
        self, service: str, query: Any, consistency: str = "linearizable", *, timeout_ms: int | None = None
    ) -> Any: ...

    async def status(self, *, timeout_ms: int | None = None) -> dict[str, Any]: ...

    @property
    def token(self) -> str | None: ...

    @property
    def ssl_context(self) -> ssl.SSLContext | None: ...


@dataclass(frozen=True, slots=True)
class ChatEvent:
    """One push of a subscription. ``kind``: ``message`` (``offset`` set, kept in history),
    ``ephemeral``, ``join`` / ``leave`` (``session``, ``info`` or ``reason``), or ``epoch`` (the
    channel's history was reset or is gone; ``recovered`` False when messages were missed)."""

    kind: str
    channel: str
    offset: int | None = None
    epoch: str | None = None
    data: bytes | None = None
    at_ms: int | None = None
    session: int | None = None
    info: bytes | None = None
    reason: str | None = None
    recovered: bool = True


@dataclass(frozen=True, slots=True)
class ChatMessage:
    offset: int
    data: bytes
    at_ms: int


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[ChatMessage]
    epoch: str | None
    top: int
    oldest: int
    recovered: bool
    #: The ``since`` of the next page; None: this page reaches the newest message.
    next: int | None


def _bytes(data: str | bytes) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise InvalidArgument(f"chat data is str or bytes, not {type(data).__name__}")


def _data(frame: dict[str, Any], name: str = "data") -> bytes | None:
    if f"{name}_base64" in frame:
        return base64.b64decode(frame[f"{name}_base64"])
    value = frame.get(name)
    return value.encode("utf-8") if isinstance(value, str) else None


class ChatClient:
    """``c.chat`` on an async client."""

    def __init__(self, client: _Client) -> None:
        self._client = client

    async def publish(self, channel: str, data: str | bytes, *, ephemeral: bool = False, timeout_ms: int | None = None) -> tuple[int | None, str | None]:
        """Publish; ``(offset, epoch)`` once committed (offset None for an ephemeral message)."""
        command: list[Any] = ["publish", channel, _bytes(data)] + ([{"ephemeral": True}] if ephemeral else [])
        offset, epoch = await self._client.command(SERVICE, command, timeout_ms=timeout_ms)
        return offset, epoch

    async def history(
        self, channel: str, *, since: int | None = None, epoch: str | None = None, limit: int | None = None, timeout_ms: int | None = None
    ) -> HistoryPage:
        """The messages after ``since`` (from the oldest kept when None), a page at a time."""
        options = {k: v for k, v in (("since", since), ("epoch", epoch), ("limit", limit)) if v is not None}
        query: list[Any] = ["history", channel] + ([options] if options else [])
        page = await self._client.read(SERVICE, query, timeout_ms=timeout_ms)
        messages = [ChatMessage(o, d, t) for o, d, t in page["messages"]]
        return HistoryPage(messages, page["epoch"], page["top"], page["oldest"], page["recovered"], page["next"])

    async def presence(self, channel: str, *, timeout_ms: int | None = None) -> list[tuple[int, bytes, int]]:
        """Who is present: ``(session id, info, joined_at_ms)`` by session id."""
        answer = await self._client.read(SERVICE, ["presence", channel], timeout_ms=timeout_ms)
        return [(s, i, t) for s, i, t in answer["members"]]

    async def _gateway_url(self) -> str:
        """``/v1/ws`` of the node the client is connected to (after a failure, the client's next
        call finds another node, whose gateway is then used)."""
        status = await self._client.status()
        http = status.get("http_address")
        if not isinstance(http, str) or not http:
            raise Unavailable("this node serves no HTTP edge (start it with --http-listen) to subscribe through")
        scheme = "wss" if self._client.ssl_context is not None else "ws"
        return f"{scheme}://{Address.parse(http)}/v1/ws"

    @contextlib.asynccontextmanager
    async def subscribe(
        self, channel: str, *, since: int | None = None, epoch: str | None = None, presence: bool = True
    ) -> AsyncIterator[Subscription]:
        """Follow ``channel``: the history after ``since`` (None: only what comes next), then live,
        across reconnects. ``presence=False`` leaves out joins and leaves::

            async with c.chat.subscribe("room.1", since=0) as events:
                async for event in events:
                    ...

        A refusal that retrying cannot cure (a missing scope, a bad channel name) is raised from
        the iteration; everything else (a node or the gateway gone, no leader for a moment) is
        retried, resuming after the last offset received."""
        send, receive = trio.open_memory_channel[ChatEvent | TrimaranError](SUBSCRIPTION_BUFFER_EVENTS)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow, send, channel, since, epoch, presence)
                try:
                    yield Subscription(receive)
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # What the caller's own block raised comes back wrapped by the nursery: give it back
            # as it was raised (the follower task itself never raises; it hands errors over).
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    async def _follow(
        self,
        send: trio.MemorySendChannel[ChatEvent | TrimaranError],
        channel: str,
        last: int | None,
        epoch: str | None,
        presence: bool,
    ) -> None:
        delay_s = RESUBSCRIBE_S_MIN
        async with send:
            while True:
                try:
                    url = await self._gateway_url()
                    async with open_websocket_url(url, self._client.ssl_context, max_message_size=WS_MESSAGE_BYTES_MAX) as ws:
                        await self._start(ws, channel, last, epoch)
                        while True:
                            for event in await self._next_events(ws, channel):
                                delay_s = RESUBSCRIBE_S_MIN
                                if event.kind == "message":
                                    last, epoch = event.offset, event.epoch
                                elif event.kind == "epoch":
                                    epoch, last = event.epoch, 0
                                if event.kind in ("join", "leave") and not presence:
                                    continue
                                await send.send(event)
                except (ConnectionClosed, HandshakeError, OSError, trio.BrokenResourceError, ClusterError):
                    # The gateway went away, or the cluster cannot serve the subscription right now
                    # (no leader yet for its linearizable read): reconnect, maybe elsewhere, resume.
                    pass
                except TrimaranError as exc:
                    await send.send(exc)  # not curable by retrying: the iteration raises it
                    return
                await trio.sleep(delay_s)
                delay_s = min(delay_s * 2, RESUBSCRIBE_S_MAX)

    async def _start(self, ws: WebSocketConnection, channel: str, since: int | None, epoch: str | None) -> None:
        token = self._client.token
        if token is not None:
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
        request: dict[str, Any] = {"id": 1, "type": "subscribe", "channel": channel}
        if since is not None:
            request["since"] = since
        if epoch is not None:
            request["epoch"] = epoch
        await ws.send_message(json.dumps(request))

    async def _next_events(self, ws: WebSocketConnection, channel: str) -> list[ChatEvent]:
        """The events of ``channel`` in the next frame (none when it holds only answers); raises
        the gateway's error."""
        events: list[ChatEvent] = []
        for frame in frame_objects(await ws.get_message()):
            kind = frame.get("type")
            if kind == "error":
                raise error_from_wire(frame.get("error"))
            if kind == "subscribed":
                if not frame.get("recovered", True):
                    events.append(ChatEvent("epoch", channel, epoch=frame.get("epoch"), recovered=False))
            elif kind not in ("ready", "pong") and frame.get("channel") == channel:
                events.append(_event(frame))
        return events


class Subscription:
    """The events of :meth:`ChatClient.subscribe` (``async for``); raises a terminal refusal."""

    def __init__(self, receive: trio.MemoryReceiveChannel[ChatEvent | TrimaranError]) -> None:
        self._receive = receive

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ChatEvent:
        try:
            item = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, TrimaranError):
            raise item
        return item


def frame_objects(text: str | bytes) -> list[dict[str, Any]]:
    """The JSON objects one gateway frame carries: one or more, newline-delimited (a JSON text
    never holds a raw newline, so the lines are the objects: one parse for the whole frame)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    objects = json.loads("[" + text.replace("\n", ",") + "]")
    if not all(isinstance(o, dict) for o in objects):
        raise InvalidArgument("a gateway frame holds something that is not a JSON object")
    return objects


def _event(frame: dict[str, Any]) -> ChatEvent:
    return ChatEvent(
        frame["type"],
        frame["channel"],
        offset=frame.get("offset"),
        epoch=frame.get("epoch"),
        data=_data(frame),
        at_ms=frame.get("at_ms"),
        session=frame.get("session"),
        info=_data(frame, "info"),
        reason=frame.get("reason"),
        recovered=frame.get("recovered", True),
    )


class SyncChatClient:
    """``c.chat`` on a blocking client: publish, history and presence (subscribe is async only)."""

    def __init__(self, inner: ChatClient, call: Callable[..., Any]) -> None:
        self._inner = inner
        self._call = call

    def publish(self, channel: str, data: str | bytes, *, ephemeral: bool = False, timeout_ms: int | None = None) -> tuple[int | None, str | None]:
        result: tuple[int | None, str | None] = self._call(self._inner.publish, channel, data, ephemeral=ephemeral, timeout_ms=timeout_ms)
        return result

    def history(
        self, channel: str, *, since: int | None = None, epoch: str | None = None, limit: int | None = None, timeout_ms: int | None = None
    ) -> HistoryPage:
        page: HistoryPage = self._call(self._inner.history, channel, since=since, epoch=epoch, limit=limit, timeout_ms=timeout_ms)
        return page

    def presence(self, channel: str, *, timeout_ms: int | None = None) -> list[tuple[int, bytes, int]]:
        members: list[tuple[int, bytes, int]] = self._call(self._inner.presence, channel, timeout_ms=timeout_ms)
        return members


__all__ = ["ChatClient", "ChatEvent", "ChatMessage", "HistoryPage", "Subscription", "SyncChatClient"]
