"""One client connection to one node: handshake, then pipelined requests.

A :class:`Connection` owns a TCP stream and two background tasks. The writer drains an outbox and
sends every frame that is ready in one ``send_all`` (so many concurrent callers cost one syscall, not
one each); the reader decodes response frames and hands each to the task waiting on its request id.
Responses may come back in any order. Callers never await on the stream, so a caller cancelled by
its timeout can never leave half a frame on the wire.

Fast path: a request made while no other one is in flight on the connection (one caller at a time,
the common interactive case) is written straight to the socket by the caller, with one
non-blocking ``write`` that never waits: no hand-off to the writer task, which saves a pass of
trio's scheduler per request. What the socket does not take is left, in order, to the writer task.
Concurrent callers still go through the outbox, so their frames leave together in one write.

This module knows nothing about leaders, sessions or retries: a lost connection is reported as
:class:`ConnectionLost` and the :class:`~.client.Client` decides what to do. Two ways to lose one
say more: a node that closes an idle connection first sends an ``idle_timeout`` error frame, and
reads nothing after it, so the requests still waiting were certainly not processed
(``ConnectionLost.idle``); and a request given a ``silence_timeout_s`` closes the connection when
the node sends nothing at all for that long while it waits (a stopped or hung node).

A request given a ``deadline_s`` gets :class:`DeadlinePassed` at it if no answer came: one watchdog
task per connection sleeps until the earliest deadline queued, so a request pays a heap push, not
a cancel scope (whose deadline registration cost ~5 us of the client's ~24 us per request).
"""

from __future__ import annotations

import heapq
import math
import os
import random
import ssl
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from trimaran import limits
from trimaran.errors import (
    AuthError,
    IdleTimeout,
    InvalidArgument,
    ProtocolError,
    RequestTimeout,
    TlsError,
    TooLarge,
    TrimaranError,
    error_from_wire,
)
from trimaran.protocols.client_protocol import PROTOCOL_VERSION, hello
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.framing import FrameDecoder, encode_frame
from trimaran.protocols.tls import TlsClosed, TlsSession, run_handshake

#: Bytes asked of the socket per receive.
RECEIVE_BYTES = 256 * limits.KIB
#: Default bound on requests in flight on one connection; also bounds the outbox.
INFLIGHT_REQUESTS_MAX_DEFAULT = 512
#: A request id wraps far below int64 (the protocol's ceiling).
REQUEST_ID_MAX = (1 << 62) - 1
#: The request id of liveness probes (see Connection._watch_silence); callers' ids start at 1.
PROBE_REQUEST_ID = 0
#: Bytes joined from the outbox into one write.
SEND_CHUNK_BYTES_MAX = 4 * limits.MIB


@dataclass(frozen=True, slots=True, order=True)
class Address:
    """A node's client address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); raise ``InvalidArgument`` if malformed."""
        text = text.strip()
        host, sep, port_text = text.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidArgument(f"endpoint {text!r} is not HOST:PORT")
        return cls(host, int(port_text))


def parse_endpoints(endpoints: str | Address | Sequence[str | Address]) -> list[Address]:
    """Endpoints as a comma-separated string or a sequence of ``HOST:PORT`` / :class:`Address`."""
    items: list[str | Address]
    if isinstance(endpoints, (str, Address)):
        items = [endpoints] if isinstance(endpoints, Address) else [e for e in endpoints.split(",") if e.strip()]
    else:
        items = list(endpoints)
    out: list[Address] = []
    for item in items:
        address = item if isinstance(item, Address) else Address.parse(item)
        if address not in out:
            out.append(address)
    if not out:
        raise InvalidArgument("at least one endpoint is needed")
    return out


def address_from_wire(value: Any) -> Address | None:
    """An address a node sent (``"host:port"`` or ``[host, port]``), or None if it is not one."""
    try:
        if isinstance(value, str):
            return Address.parse(value)
        if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str) and type(value[1]) is int:
            return Address(value[0], value[1])
    except TrimaranError:
        return None
    return None


@dataclass(frozen=True, slots=True)
class Welcome:
    """What a node said about itself in the handshake."""

    node_id: int
    #: 0 when the node knows no leader.
    leader_id: int
    cluster_id: str
    #: Anything else the node put in its welcome (additive protocol fields).
    extra: dict[str, Any] = field(default_factory=dict)


class ConnectionLost(Exception):
    """The connection closed before the answer arrived (internal; the Client retries or converts it).

    ``maybe_sent`` says whether the request may have reached the node (so it may have been applied).
    ``idle``: the node closed the connection as idle (so nothing was sent, and it is no sign of
    trouble: reconnect at once).
    """

    def __init__(self, reason: str, maybe_sent: bool = True, idle: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.maybe_sent = maybe_sent and not idle
        self.idle = idle


class NodeSilent(ConnectionLost):
    """The node sent nothing at all for a request's ``silence_timeout_s``: it looks stopped or hung."""


class DeadlinePassed(Exception):
    """The caller's deadline passed before the answer came (internal; the Client raises
    ``RequestTimeout``). Not a ``TrimaranError``: no retry loop may take it for a node's refusal."""


#: What ends a connection without being a bug: the network, the peer, or a malformed frame.
_CONNECTION_FAILURES = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, TrimaranError)


class _Slot:
    """Where the reader leaves one response for the task waiting on it."""

    __slots__ = ("event", "ok", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ok = False
        self.value: Any = None


def _parse_welcome(obj: Any, expected_cluster_id: str | None) -> Welcome:
    if isinstance(obj, dict) and obj.get("type") == "error":
        raise error_from_wire(obj.get("error"))
    if not isinstance(obj, dict) or obj.get("type") != "welcome":
        raise ProtocolError("the node's first frame is not a welcome")
    if obj.get("version") != PROTOCOL_VERSION:
        version = obj.get("version")
        raise ProtocolError(f"node speaks protocol version {version!r}; this client speaks {PROTOCOL_VERSION}")
    node_id, leader_id, cluster_id = obj.get("node_id"), obj.get("leader_id"), obj.get("cluster_id")
    if type(node_id) is not int or node_id <= 0 or type(leader_id) is not int or leader_id < 0:
        raise ProtocolError("welcome: node_id and leader_id must be integers")
    if not isinstance(cluster_id, str):
        raise ProtocolError("welcome: cluster_id must be a string")
    if expected_cluster_id is not None and cluster_id != expected_cluster_id:
        # A wrong cluster is a configuration error, never something to retry around.
        raise AuthError(f"node belongs to cluster {cluster_id!r}, not {expected_cluster_id!r}", cluster_id=cluster_id)
    known = {"type", "version", "node_id", "leader_id", "cluster_id"}
    return Welcome(node_id, leader_id, cluster_id, {k: v for k, v in obj.items() if k not in known})


class Connection:
    """A handshaken connection to one node. Create with :func:`open_connection`."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        address: Address,
        decoder: FrameDecoder,
        welcome: Welcome,
        inflight_requests_max: int,
        tls: TlsSession | None = None,
    ) -> None:
        """``tls``: the connection's handshaken TLS session; bytes are encrypted before every write
        and decrypted after every read of ``stream`` (the same direct socket writes as plain TCP)."""
        assert 0 < inflight_requests_max <= limits.session_responses_max
        self.address = address
        self.welcome = welcome
        #: The token sent in this connection's hello (set by the Client; tells a stale one).
        self.token: str | None = None
        self._stream = stream
        self._decoder = decoder
        self._tls = tls
        self._pending: dict[int, _Slot] = {}
        self._next_request_id = 0
        self._inflight = trio.Semaphore(inflight_requests_max)
        #: Frames waiting for the writer task, oldest first; bounded by the in-flight semaphore plus
        #: frames of callers that gave up (see request).
        self._outbox: deque[bytes] = deque()
        self._outbox_max = inflight_requests_max
        self._outbox_lot = trio.lowlevel.ParkingLot()
        #: The unwritten rest of a frame the socket took only part of: it leaves before any other
        #: (over TLS: ciphertext, already encrypted).
        self._head: bytes | memoryview = b""
        #: The writer task is in a send: nothing may be written directly until it is done.
        self._writing = False
        #: The socket read and written directly (None: not a socket stream; queue, and receive_some).
        self._sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._cancel_scope = trio.CancelScope()
        self._closed_reason: str | None = None
        self._retired = False
        #: The node closed the connection as idle (see the module docstring).
        self._idle_closed = False
        #: When bytes last arrived from the node (trio time).
        self._last_receive_s = trio.current_time()
        #: Reads that brought bytes (liveness: see _watch_silence).
        self._receives = 0
        #: Requests waiting that asked to be cut off when the node goes silent, and the shortest
        #: silence any of them accepts (one watchdog task per connection, not a timer per request).
        self._watched = 0
        self._silence_timeout_s: float | None = None
        self._watch_lot = trio.lowlevel.ParkingLot()
        #: The connection was closed because the node went silent (waiters get NodeSilent).
        self._silent = False
        #: (deadline_s, request_id) of requests given a deadline; a min-heap the deadline watchdog
        #: task sleeps on (one task per connection, not a cancel scope per request: see
        #: _watch_deadlines). Entries of requests already answered are dropped lazily.
        self._deadlines: list[tuple[float, int]] = []
        #: When the deadline watchdog wakes next (inf: it is parked, no deadline queued).
        self._deadline_wake_s = math.inf
        self._deadline_scope: trio.CancelScope | None = None
        self._deadline_lot = trio.lowlevel.ParkingLot()
        self.closed_event = trio.Event()

    @property
    def node_id(self) -> int:
        return self.welcome.node_id

    @property
    def usable(self) -> bool:
        """Open and not retired: new requests may use it."""
        return self._closed_reason is None and not self._retired

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    async def request(
        self, op: str, body: dict[str, Any], silence_timeout_s: float | None = None, deadline_s: float | None = None
    ) -> Any:
        """Send one request and wait for its answer.

        Returns the result, raises the node's error as a typed ``TrimaranError``, or raises
        :class:`ConnectionLost` if the connection closes first, or if ``silence_timeout_s`` is given
        and the node sends nothing at all on this connection for that long while the request waits
        (then the connection is closed: the node looks stopped), or :class:`DeadlinePassed` at
        ``deadline_s`` (trio time) if no answer came by then (a late answer is dropped).
        """
        # Not `async with self._inflight`: trio's acquire always yields, even when a slot is free,
        # which would cost every request a pass of the scheduler before it is sent.
        try:
            self._inflight.acquire_nowait()
        except trio.WouldBlock:
            if deadline_s is None:
                await self._inflight.acquire()
            else:
                with trio.move_on_at(deadline_s) as scope:  # a full window: the slow path pays a scope
                    await self._inflight.acquire()
                if scope.cancelled_caught:  # (then nothing was acquired)
                    raise DeadlinePassed() from None
        try:
            if self._closed_reason is not None:
                raise ConnectionLost(self._closed_reason, maybe_sent=False)
            request_id = self._take_request_id()
            payload = pack([request_id, op, body])
            if len(payload) > limits.command_bytes_max:
                # The node answers too_large past this (or closes, far past it): say so unsent.
                raise TooLarge(f"request of {len(payload)} bytes is over command_bytes_max={limits.command_bytes_max}")
            frame = encode_frame(payload)
            slot = _Slot()
            alone = not self._pending
            self._pending[request_id] = slot
            try:
                if alone and not self._writing and not self._head and not self._outbox and self._sock is not None:
                    self._write_direct(frame)
                elif len(self._outbox) < self._outbox_max:
                    self._outbox.append(frame)
                    self._outbox_lot.unpark_all()
                else:
                    # Frames of callers that gave up are still queued: the node has not read a
                    # full window of requests. Treat the connection as dead rather than queue more.
                    self.close(f"{self.address} is not reading its requests")
                    raise ConnectionLost(self._closed_reason or "send queue full", maybe_sent=False)
                if deadline_s is not None:
                    self._add_deadline(deadline_s, request_id)
                if silence_timeout_s is None:
                    await slot.event.wait()
                else:
                    if self._watched == 0:
                        self._watch_lot.unpark_all()
                    self._watched += 1
                    if self._silence_timeout_s is None or silence_timeout_s < self._silence_timeout_s:
                        self._silence_timeout_s = silence_timeout_s
                    try:
                        await slot.event.wait()
                    finally:
                        self._watched -= 1
            finally:
                del self._pending[request_id]
                if self._retired and not self._pending:
                    self.close("retired")
        finally:
            self._inflight.release()
        if slot.ok:
            return slot.value
        raise slot.value

    async def _watch_silence(self) -> None:
        """The connection's watchdog, while requests that asked for it wait (see :meth:`request`).

        Silence is counted only once everything queued has left (a large request still uploading
        is not the node's silence). At the first silent period it asks the node for its ``status``
        (a liveness probe whose answer is dropped): a leader that is merely slow to commit answers
        it at once and the wait goes on; a stopped node answers nothing, and after a second silent
        period the connection is closed and the waiting requests get ``NodeSilent``. One task per
        connection rather than a timer per request: a cancel scope with a deadline costs each
        request a deadline registration, a quarter of the client's CPU per request.
        """
        while True:
            if not self._watched:
                self._silence_timeout_s = None
                await self._watch_lot.park()
                continue
            timeout_s = self._silence_timeout_s
            assert timeout_s is not None
            since_s = trio.current_time()
            receives_at_probe = -1  # no probe yet
            while self._watched:
                await trio.sleep_until(max(since_s, self._last_receive_s) + timeout_s)
                now_s = trio.current_time()
                if not self._watched:
                    break
                if self._writing or self._head or self._outbox:
                    since_s = now_s  # still sending: not a silence of the node's
                    continue
                if now_s < max(since_s, self._last_receive_s) + timeout_s:
                    continue  # something arrived meanwhile
                if receives_at_probe < 0 or self._receives > receives_at_probe:
                    receives_at_probe = self._receives  # (a count, not a time: clocks may not move)
                    since_s = now_s
                    self._send_probe()
                    continue
                self._silent = True
                self.close(f"{self.address} sent nothing for {2 * timeout_s * 1000:.0f} ms, nor answered a status probe")
                return

    def _add_deadline(self, deadline_s: float, request_id: int) -> None:
        """Have the deadline watchdog answer ``request_id`` with :class:`DeadlinePassed` at
        ``deadline_s`` unless an answer comes first. Costs a heap push; the watchdog is woken only
        when this deadline is earlier than every one queued (rare: a client's deadlines mostly grow)."""
        heap, pending = self._deadlines, self._pending
        while heap and heap[0][1] not in pending:  # answered already: keep the heap ~ in-flight size
            heapq.heappop(heap)
        heapq.heappush(heap, (deadline_s, request_id))
        if deadline_s < self._deadline_wake_s:
            if self._deadline_scope is None:
                self._deadline_lot.unpark_all()
            else:
                self._deadline_scope.deadline = deadline_s
            self._deadline_wake_s = deadline_s

    async def _watch_deadlines(self) -> None:
        """The connection's deadline watchdog: at each request's ``deadline_s`` it wakes the caller
        still waiting with :class:`DeadlinePassed` (the request's slot is then freed by the caller,
        and a late answer finds no slot: dropped). One task sleeping until the earliest deadline,
        rather than a cancel scope with a deadline entered by every request, which costs a client
        request a fifth of its CPU."""
        heap, pending = self._deadlines, self._pending
        while True:
            now_s = trio.current_time()
            while heap and (heap[0][0] <= now_s or heap[0][1] not in pending):
                _, request_id = heapq.heappop(heap)
                slot = pending.get(request_id)
                if slot is not None and not slot.event.is_set():
                    slot.ok, slot.value = False, DeadlinePassed()
                    slot.event.set()
            if not heap:
                self._deadline_wake_s = math.inf
                await self._deadline_lot.park()
                continue
            self._deadline_wake_s = heap[0][0]
            with trio.CancelScope(deadline=heap[0][0]) as self._deadline_scope:
                await trio.sleep_forever()
            self._deadline_scope = None

    def _send_probe(self) -> None:
        """Queue a ``status`` request under request id 0, which no caller uses: its answer only
        shows the node is alive (:meth:`_dispatch` drops it)."""
        if self._closed_reason is not None:
            return
        frame = encode_frame(pack([PROBE_REQUEST_ID, "status", {}]))
        if not self._writing and not self._head and not self._outbox and self._sock is not None:
            self._write_direct(frame)
        else:
            self._outbox.append(frame)
            self._outbox_lot.unpark_all()

    def _take_request_id(self) -> int:
        self._next_request_id = self._next_request_id + 1 if self._next_request_id < REQUEST_ID_MAX else 1
        return self._next_request_id

    def retire(self) -> None:
        """Take no new requests; close once the ones in flight are answered."""
        self._retired = True
        if not self._pending:
            self.close("retired")

    def close(self, reason: str = "closed by the client") -> None:
        """Close now: every waiting request gets :class:`ConnectionLost`."""
        if self._closed_reason is None:
            self._closed_reason = reason
        self._cancel_scope.cancel()

    async def run(self) -> None:
        """Run the reader and writer until the connection closes (start it in a nursery)."""
        try:
            with self._cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    nursery.start_soon(self._watch_silence)
                    nursery.start_soon(self._watch_deadlines)
                    await self._reader()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:  # the nursery wraps whatever the reader or writer raised
            failures, rest = group.split(_CONNECTION_FAILURES)
            if failures is not None and self._closed_reason is None:
                first = failures.exceptions[0]
                while isinstance(first, BaseExceptionGroup):
                    first = first.exceptions[0]
                self._closed_reason = f"connection to {self.address} failed: {first}"
            if rest is not None:
                raise rest
        finally:
            self._closed_reason = self._closed_reason or f"connection to {self.address} closed"
            lost = NodeSilent if self._silent else ConnectionLost
            for slot in self._pending.values():
                slot.ok, slot.value = False, lost(self._closed_reason, idle=self._idle_closed)
                slot.event.set()
            self.closed_event.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)

    def _write_direct(self, frame: bytes) -> None:
        """Write ``frame`` now without waiting (nothing else is queued); the writer task gets
        whatever the socket does not take. A broken socket closes the connection: the caller then
        gets ``ConnectionLost`` (maybe sent: part of the frame may have left)."""
        assert self._sock is not None and self._closed_reason is None  # so the descriptor is still ours
        if self._tls is not None:
            frame = self._tls.encrypt(frame)
        try:
            written = os.write(self._sock.fileno(), frame)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self.close(f"connection to {self.address} failed: {exc}")
            return
        if written < len(frame):
            self._head = memoryview(frame)[written:]
            self._outbox_lot.unpark_all()

    async def _writer(self) -> None:
        while True:
            if not self._head and not self._outbox:
                await self._outbox_lot.park()
                continue
            if self._head:
                data, self._head = self._head, b""
            else:
                frames = [self._outbox.popleft()]  # everything queued: one send for the batch
                size_bytes = len(frames[0])
                while self._outbox and size_bytes + len(self._outbox[0]) <= SEND_CHUNK_BYTES_MAX:
                    frames.append(self._outbox.popleft())
                    size_bytes += len(frames[-1])
                data = frames[0] if len(frames) == 1 else b"".join(frames)
                if self._tls is not None:
                    data = self._tls.encrypt(data)
            self._writing = True
            try:
                await self._stream.send_all(data)
            finally:
                self._writing = False

    async def _reader(self) -> None:
        decoder = self._decoder
        sock = self._sock
        while True:
            while (frame := decoder.next_frame()) is not None:
                self._dispatch(unpack(frame))
            if decoder.closed:
                self._closed_reason = self._closed_reason or f"{self.address} closed the connection"
                return
            if sock is None:
                _feed(decoder, self._tls, await self._stream.receive_some(RECEIVE_BYTES))
                self._last_receive_s = trio.current_time()
                self._receives += 1
                continue
            # Wait until readable, then read what is there: one pass of the scheduler per receive
            # (trio's receive_some reads first and yields again after, even when data was waiting).
            await trio.lowlevel.wait_readable(sock)
            try:
                received = os.read(sock.fileno(), RECEIVE_BYTES)
            except BlockingIOError:
                continue  # a spurious wake-up: wait again
            _feed(decoder, self._tls, received)
            self._last_receive_s = trio.current_time()
            self._receives += 1

    def _dispatch(self, obj: Any) -> None:
        if isinstance(obj, dict) and obj.get("type") == "error":
            # A connection-level error (e.g. the node is shutting down): the node closes next.
            err = error_from_wire(obj.get("error"))
            if isinstance(err, IdleTimeout):
                # Nothing sent after it was processed: waiting requests may go again, anywhere.
                self._idle_closed = True
                self._closed_reason = self._closed_reason or f"{self.address} closed the idle connection"
            raise ProtocolError(f"node closed the connection: {err.code}: {err.message}")
        if type(obj) is not list or len(obj) != 3 or type(obj[0]) is not int or type(obj[1]) is not bool:
            raise ProtocolError("a response is [request_id, ok, result]")
        request_id, ok, value = obj
        slot = self._pending.get(request_id)
        if slot is None:
            return  # its caller gave up (timeout or cancellation)
        slot.ok = ok
        slot.value = value if ok else error_from_wire(value)
        slot.event.set()


async def open_connection(
    nursery: trio.Nursery,
    address: Address,
    *,
    cluster_id: str | None,
    token: str | None,
    ssl_context: ssl.SSLContext | None = None,
    handshake_timeout_ms: int = limits.handshake_timeout_ms,
    inflight_requests_max: int = INFLIGHT_REQUESTS_MAX_DEFAULT,
    frame_bytes_max: int = limits.frame_bytes_max,
) -> Connection:
    """Connect to ``address``, do the hello/welcome handshake, and start the connection's tasks in
    ``nursery``. Raises ``OSError`` if the node cannot be reached, ``ConnectionLost`` if it breaks
    the connection during the handshake, ``RequestTimeout`` if it does not answer the hello in time,
    ``TlsError`` if ``ssl_context`` is given and the TLS handshake fails, or the node's typed
    refusal (e.g. ``AuthError``)."""
    with trio.move_on_after(handshake_timeout_ms / 1000) as scope:
        stream = await trio.open_tcp_stream(address.host, address.port)
        tls: TlsSession | None = None
        try:
            decoder = FrameDecoder(frame_bytes_max)
            first = encode_frame(pack(hello(cluster_id, token)))
            if ssl_context is not None:
                tls = await _tls_handshake(stream, ssl_context, address)
                first = tls.encrypt(first)
                leftover = tls.decrypt(b"")  # what came along with the handshake's last flight
                if leftover:
                    decoder.feed(leftover)
            await stream.send_all(first)
            while (frame := decoder.next_frame()) is None:
                if decoder.closed:
                    raise ConnectionLost(
                        f"{address} closed the connection during the handshake"
                        + ("" if ssl_context else " (a TLS node closes plain connections: give the CA file, --ca-file / ca_file=)"),
                        maybe_sent=False,
                    )
                _feed(decoder, tls, await stream.receive_some(RECEIVE_BYTES))
            welcome = _parse_welcome(unpack(frame), cluster_id)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The node went away mid-handshake (killed, restarting: a reset): a failed attempt at
            # this address like any other, never a bare trio error to the caller.
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            raise ConnectionLost(f"{address} broke the connection during the handshake: {exc}", maybe_sent=False) from None
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            raise
    if scope.cancelled_caught:
        raise RequestTimeout(f"{address} did not complete the handshake within {handshake_timeout_ms} ms")
    conn = Connection(stream, address, decoder, welcome, inflight_requests_max, tls)
    nursery.start_soon(conn.run)
    return conn


async def _tls_handshake(tcp: trio.SocketStream, ctx: ssl.SSLContext, address: Address) -> TlsSession:
    session = TlsSession(ctx, server_side=False, server_hostname=address.host)
    try:
        await run_handshake(session, tcp.send_all, lambda: tcp.receive_some(RECEIVE_BYTES))
    except (ssl.SSLError, TlsClosed) as exc:
        if isinstance(exc, ssl.SSLCertVerificationError):
            why = f"certificate verify failed ({exc.verify_message})"
        else:
            why = getattr(exc, "reason", None) or str(exc)
        raise TlsError(
            f"TLS handshake with {address} failed: {why} (is it a TLS node, and is --ca-file its cluster's CA?)"
        ) from None
    return session


def _feed(decoder: FrameDecoder, tls: TlsSession | None, received: bytes | bytearray) -> None:
    """Give the decoder what ``received`` (b"": the connection ended) brings: over TLS the
    plaintext it completes, perhaps none yet; the peer's close_notify ends the stream too."""
    if tls is None or not received:
        decoder.feed(received)
        return
    try:
        plain = tls.decrypt(received)
    except TlsClosed:
        decoder.feed(b"")
        return
    except ssl.SSLError as exc:
        raise ProtocolError(f"TLS error: {exc}") from None
    if plain:
        decoder.feed(plain)


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    """A client TLS context trusting the cluster CA certificate in ``ca_file`` (None: no TLS)."""
    if not ca_file:
        return None
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"cannot load the CA certificate {ca_file!r}: {getattr(exc, 'strerror', None) or exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def describe_failure(exc: BaseException) -> str:
    """A one-line reason, looking through trio's "all attempts to connect failed" to the OS error."""
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        causes = {describe_failure(e) for e in cause.exceptions}
        return "; ".join(sorted(causes))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def backoff_delays_s(base_ms: int, cap_ms: int, rng: random.Random) -> Iterator[float]:
    """Exponential backoff with full jitter: an endless iterator of sleep durations in seconds."""
    attempt = 0
    while True:
        ceiling_ms = min(cap_ms, base_ms * math.pow(2, attempt))
        attempt = min(attempt + 1, 30)
        yield rng.uniform(ceiling_ms / 2, ceiling_ms) / 1000
