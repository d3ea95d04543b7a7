"""The HTTP port's own listener (plain TCP): chat WebSocket upgrades (``GET /v1/ws``) are served
by trio-websocket with the gateway's frames written straight to the socket; every other connection
is handed, untouched, to hypercorn's per-connection server (REST, the pages, HTTP/2 by prior
knowledge, any other WebSocket path).

Why: in a chat fan-out, each frame sent through ASGI -> hypercorn -> wsproto -> trio's stream
cost a follower about 35% of its CPU (a send lock, a shielded cancel scope, an event object and a
stream ``send_all`` per frame). Here a frame is its header and payload written with one
non-blocking ``os.write``; only a socket that is full makes the writer wait.

How a connection is routed: the request head is *peeked* (``MSG_PEEK``, nothing consumed), so
whichever server takes the connection reads it from its first byte. A head that is not whole in
the first read, or is not a WebSocket upgrade of ``/v1/ws``, goes to hypercorn, which serves it
exactly as before (a WebSocket there still works, by the slower path). The same ASGI app serves
both: it sees an ASGI ``websocket`` scope either way (the client protocol, URL and port are
unchanged). With TLS (``--tls-dir``) the node serves the port with hypercorn alone.

trio-websocket does the handshake, reads and answers control frames (ping, close) and closes with
1009 a message over ``edge.WS_FRAME_BYTES_MAX``; its own writes reach the socket through the
:class:`DirectWebSocket`, so they never land inside one of the gateway's frames. The gateway finds
the DirectWebSocket in the scope's extensions (``DIRECT_EXTENSION``) and, after each driver
round, writes each connection's frame at once from the hub's pass (no task switch per connection);
only what a full socket does not take waits for the connection's own writer task.
"""

from __future__ import annotations

import logging
import os
import re
import socket as stdlib_socket
import struct
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, wrap_server_stream

log = logging.getLogger("trimaran.node.http")

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

#: How long a new connection may take to send its request head before hypercorn is given it (it
#: applies its own timeouts from there).
HEAD_WAIT_S = 10.0
#: How long the socket may take to accept the rest of a frame begun (see DirectWebSocket._write).
FRAME_STALL_S = 5.0
#: How long trio-websocket may take to parse a head already received.
HANDSHAKE_S = 10.0
#: The ASGI scope extension that hands the gateway the connection's DirectWebSocket.
DIRECT_EXTENSION = "trimaran.direct_websocket"
_WS_HEAD = re.compile(rb"GET /v1/ws(?:\?[^ \r\n]*)? HTTP/1\.1\r\n(?:[^\r\n]*\r\n)*?upgrade:[ \t]*websocket[ \t]*\r\n", re.IGNORECASE)


def is_chat_upgrade(head: bytes) -> bool:
    """A whole HTTP/1.1 request head asking to upgrade ``/v1/ws`` to a WebSocket, and nothing after
    it: trio-websocket reads the frames a client sends before the 101 answer only once more bytes
    arrive, so such a client is left to hypercorn, which reads them at once."""
    end = head.find(b"\r\n\r\n")
    return end >= 0 and end + 4 == len(head) and _WS_HEAD.match(head[: end + 2]) is not None


def frame_header(size: int, opcode: int = 0x1) -> bytes:
    """The header of a whole (FIN), unmasked server frame of ``size`` payload bytes."""
    if size < 126:
        return bytes((0x80 | opcode, size))
    if size < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, size)
    return struct.pack("!BBQ", 0x80 | opcode, 127, size)


class DirectWebSocket:
    """One accepted chat WebSocket as the ASGI ``receive``/``send`` pair the gateway expects, with
    data frames written to the socket directly (see the module docstring).

    Every byte written to the socket goes through it, in order: the gateway's frames (at once
    with :meth:`write_now` from the hub's pass, or awaited with ``send``) and trio-websocket's own
    (handshake answer, pongs, close), which reach it through :class:`_FrameStream`. One lock
    serialises the awaited writes; a frame the socket took only part of is finished (its
    ``_rest``) before anything else is written.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._request: WebSocketRequest | None = None
        self.conn: WebSocketConnection | None = None
        self._connected = False
        self._lock = trio.Lock()
        #: The unsent tail of a frame :meth:`write_now` began (finished by :meth:`drain`).
        self._rest: memoryview | None = None
        self._rest_lot = trio.lowlevel.ParkingLot()
        #: The socket failed or stalled: what is sent from now on is dropped (the reader sees the end).
        self.broken = False
        self.closed = False

    # ------------------------------------------------------------------ ASGI

    async def receive(self) -> dict[str, Any]:
        if not self._connected:
            self._connected = True
            return {"type": "websocket.connect"}
        if self.conn is None:
            return {"type": "websocket.disconnect", "code": 1006}
        try:
            message = await self.conn.get_message()
        except ConnectionClosed as exc:
            return {"type": "websocket.disconnect", "code": exc.reason.code if exc.reason is not None else 1006}
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            if self.conn is None or self.closed or self.conn.closed is not None:
                return  # as hypercorn does, sends after the end are dropped
            text = message.get("text")
            if text is not None:
                await self.send_bytes(text_frame(text.encode()))
            else:
                data = bytes(message["bytes"])
                await self.send_bytes(frame_header(len(data), 0x2) + data)
        elif kind == "websocket.accept":
            if self.conn is None:
                assert self._request is not None
                self.conn = await self._request.accept(subprotocol=message.get("subprotocol"))
        elif kind == "websocket.close":
            await self.close(int(message.get("code", 1000)), message.get("reason"))

    async def close(self, code: int, reason: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.conn is None:
            assert self._request is not None
            await self._request.reject(403)  # closed before accept: refused, as ASGI says
        elif self.broken:
            await self._stream.aclose()  # mid-frame or dead: no close frame can follow
        else:
            await self.conn.aclose(code, reason)

    # ------------------------------------------------------------------ writing

    def ready(self) -> bool:
        """:meth:`write_now` may write (no write under way, nothing begun unfinished)."""
        return self._rest is None and not self._lock.locked()

    def write_now(self, frame: bytes) -> None:
        """Write a whole frame without waiting (only when :meth:`ready`); what the socket does not
        take now is finished by :meth:`drain` before anything else."""
        assert self.ready()
        if self.broken or self.closed:
            return
        written = self._write_some(frame)
        if written < len(frame) and not self.broken:
            self._rest = memoryview(frame)[written:]
            self._rest_lot.unpark_all()

    async def send_bytes(self, data: bytes) -> None:
        """Write bytes (whole frames), after whatever was begun; at once when the socket takes them."""
        async with self._lock:
            if self._rest is not None:
                await self._finish_rest()
            if self.broken:
                return
            written = self._write_some(data)
            if written < len(data) and not self.broken:
                await self._write(memoryview(data)[written:])

    async def drain(self) -> None:
        """The connection's task that finishes frames :meth:`write_now` began."""
        while not self.broken:
            while self._rest is None:
                await self._rest_lot.park()
            async with self._lock:
                if self._rest is not None:
                    await self._finish_rest()

    def _write_some(self, data: bytes | memoryview) -> int:
        """The bytes the socket takes of ``data`` now (0 when it is full; a failure marks the
        connection broken)."""
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            self.broken = True
            return 0

    async def _finish_rest(self) -> None:
        rest, self._rest = self._rest, None
        assert rest is not None
        await self._write(rest)

    async def _write(self, view: memoryview) -> None:
        """The rest of a frame begun: shielded, as hypercorn's sends are, so a connection cut
        meanwhile still ends on a frame boundary and its close frame is readable; a socket that does
        not take it all within ``FRAME_STALL_S`` is given up (the client resumes)."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(FRAME_STALL_S):
                while view and not self.broken:
                    await trio.lowlevel.wait_writable(self._fd)
                    view = view[self._write_some(view) :]
                return
        self.broken = True
        log.info("a chat WebSocket took no bytes for %g s: dropped", FRAME_STALL_S)


class _FrameStream(trio.abc.Stream):
    """The socket as trio-websocket sees it: reads go to the socket, writes through the
    :class:`DirectWebSocket` (so they never land inside one of its frames)."""

    def __init__(self, stream: trio.SocketStream, ws: DirectWebSocket) -> None:
        self.stream, self.ws = stream, ws

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.ws.broken:
            raise trio.BrokenResourceError("the WebSocket's socket failed")
        await self.ws.send_bytes(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.stream.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


def text_frame(payload: bytes) -> bytes:
    """A whole text frame of ``payload`` (UTF-8), as a server sends it."""
    return frame_header(len(payload)) + payload


class HttpFront:
    """See the module docstring: ``app`` is the edge's ASGI app, ``hc`` hypercorn's config."""

    def __init__(self, app: App, hc: HypercornConfig, frame_bytes_max: int) -> None:
        self.app = app
        self.hc = hc
        self.frame_bytes_max = frame_bytes_max
        self._hypercorn_app = ASGIWrapper(app)  # type: ignore[arg-type]
        self._context = WorkerContext(None)
        #: Connections each server took (reported in tests and the benchmark's notes).
        self.direct_connections = 0
        self.hypercorn_connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._route(stream)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ConnectionClosed):
            pass  # the client went away

    async def _route(self, stream: trio.SocketStream) -> None:
        head = b""
        with trio.move_on_after(HEAD_WAIT_S):
            try:
                head = await stream.socket.recv(self.hc.h11_max_incomplete_size, stdlib_socket.MSG_PEEK)
            except OSError:
                await stream.aclose()
                return
        if is_chat_upgrade(head):
            self.direct_connections += 1
            await self._websocket(stream)
        else:
            self.hypercorn_connections += 1
            await TCPServer(self._hypercorn_app, self.hc, self._context, ConnectionState({}), stream)  # type: ignore[arg-type]

    async def _websocket(self, stream: trio.SocketStream) -> None:
        sock = stream.socket
        client, server = sock.getpeername()[:2], sock.getsockname()[:2]
        ws = DirectWebSocket(stream)
        async with trio.open_nursery() as nursery:
            with trio.move_on_after(HANDSHAKE_S) as handshake:
                ws._request = request = await wrap_server_stream(nursery, _FrameStream(stream, ws), max_message_size=self.frame_bytes_max)  # noqa: SLF001
            if handshake.cancelled_caught:
                await stream.aclose()
                nursery.cancel_scope.cancel()
                return
            nursery.start_soon(ws.drain)
            path, _, query = request.path.partition("?")
            scope = {
                "type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "ws",
                "path": unquote(path), "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
                "headers": [(name.lower(), value) for name, value in request.headers],
                "client": client, "server": server, "subprotocols": [],
                "extensions": {DIRECT_EXTENSION: ws},
            }  # fmt: skip
            try:
                await self.app(scope, ws.receive, ws.send)
            except Exception:  # noqa: BLE001 (one connection's failure is logged, the port serves on)
                log.exception("the chat WebSocket handler failed")
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    if not ws.closed:  # the app ended without closing (ASGI: 500 before accept, 1011 after)
                        ws.closed = True
                        if ws.conn is None:
                            await request.reject(500)
                        else:
                            await ws.conn.aclose(1011, "internal error")
                    await stream.aclose()
                nursery.cancel_scope.cancel()


async def serve_front(front: HttpFront, host: str, port: int, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
    """Listen on ``host:port`` until cancelled; ``task_status`` gets the bound (host, port)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    async with trio.open_nursery() as nursery:
        task_status.started((bound[0], bound[1]))
        await trio.serve_listeners(front.handle, listeners, handler_nursery=nursery)
