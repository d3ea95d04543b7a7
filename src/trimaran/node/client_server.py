"""The client port: the server side of :mod:`trimaran.protocols.client_protocol`.

Per connection, three tasks: a reader (frames in, requests to the driver), a writer (answers the
socket could not take at once), and a reaper (answers ``timeout`` for requests older
than ``request_timeout_ms``; all requests share that timeout, so arrival order is deadline order
and a deque suffices; and closes the connection once it is idle).

Bounds:

- Connections. At most ``client_connections_max`` connections past their hello (the next hello
  gets an ``unavailable`` error frame and a close). Connections still waiting for their hello are
  counted apart, at most ``client_handshakes_max`` of them: one more closes the oldest (the slowest
  to say hello), so sockets that never say hello cannot keep clients out. The hello must arrive
  within ``handshake_timeout_ms``.
- Idle. A connection with nothing in flight, nothing left to write and no request for
  ``client_idle_timeout_ms`` gets an ``idle_timeout`` error frame and is closed. The node reads
  nothing after deciding so: a request the client sent meanwhile was not processed, and the client
  library reconnects and sends it again. A connection whose unwritten answers did not move for
  that long (a client that stopped reading) is closed too.
- Requests. At most ``client_inflight_requests_max`` requests in flight per connection, counting
  answers not yet written to the socket — the reader simply stops reading at the cap, so TCP pushes
  back on a client that pipelines too far or does not read its answers. Frames over
  ``client_frame_bytes_max`` close the connection after an error frame.
- Answer bytes. A few requests can ask for large answers (a scan page is up to about 8 MiB), so
  the bytes of answers queued and not yet written are capped too: ``client_answer_bytes_max`` per
  connection and ``client_answer_bytes_node_max`` for the node. The reader stops reading requests
  while its connection is at the cap; an answer that would still go over (its request was read
  before) is replaced by a typed error under its request id: ``unavailable`` for a ``read`` or
  ``status`` (retry later), ``timeout`` for anything that may have changed state (the outcome is
  unknown: retry with the same ``seq``). Answers of at most ``ANSWER_BYTES_ALWAYS_QUEUED`` are never
  replaced (the error would be as large), so a connection's queue stays under its cap plus that
  much per request in flight.

Auth (on iff the node has a bootstrap key, ``--auth-public-key``; see :mod:`~trimaran.node.authoriser`,
the one authoriser every edge uses). The hello's token is verified once, against the local replica's
auth service (trusted keys, revocations) at the node's clock: a refusal is an ``unauthenticated``
error frame and a close (a token that is not text or is over ``token_bytes_max`` included, where
auth off would say ``protocol_error``). Then every request's scope is checked before it reaches the
driver: a refusal is ``permission_denied`` (naming the scope needed) or, once the token expired,
``unauthenticated`` under the request id; nothing reaches the log and the connection stays open.
After each driver round, if the auth service applied a revocation or a key retirement
(its ``generation`` moved), every live connection's token is checked again and those that no
longer hold are closed like idle ones: answers already due, then an ``unauthenticated`` error
frame (requests read meanwhile get the same error). With auth off none of this runs and the
hello's token is ignored.

Errors: a request with bad fields is answered with a typed error under its request id and the
connection stays open; anything that is not a request at all (malformed msgpack, a frame over the
limit, a truncated frame) gets one error frame ``{"type": "error", "error": ...}`` and a close.

A job ``claim`` with ``wait_ms`` that finds nothing to take is held here and proposed when it can
get a job or its wait ends (:mod:`~trimaran.node.claim_waits`); it counts as in flight meanwhile.

Requests are read without one: every request one read brought goes to the driver before its round
starts, and an idle driver runs that round in the reader's task (see :mod:`~trimaran.node.driver`).
Answers are written without a task switch: the driver queues a round's answers on each connection
and calls :meth:`ClientConnection.flush_replies` once at the end of the round, which writes them
with one non-blocking ``write``; only what a full socket buffer refuses waits for the writer task.

A request's answer is sent once: a late answer to a request already answered ``timeout`` is
dropped (each request gets a per-connection internal number, so a reused request id is never
confused with an old one).
"""

from __future__ import annotations

import hashlib
import logging
import os
import ssl
from collections import deque
from typing import Any, Callable

import trio

from trimaran import limits
from trimaran.errors import (
    AuthError,
    IdleTimeout,
    InvalidArgument,
    ProtocolError,
    RequestTimeout,
    TrimaranError,
    Unavailable,
)
from trimaran.node.authoriser import Authoriser, Grant
from trimaran.node.claim_waits import ClaimWaits
from trimaran.node import data_dir
from trimaran.node.clock import wall_clock_ms as system_wall_clock_ms
from trimaran.node.config import Address, NodeConfig
from trimaran.node.driver import Driver
from trimaran.node.streams import PendingHandshakes, TlsStream, linger_close, open_listeners, read_frame
from trimaran.protocols import backup_file
from trimaran.protocols.client_protocol import error_frame, parse_hello, parse_request, response, welcome
from trimaran.protocols.codec import brief, pack, unpack
from trimaran.protocols.framing import FrameDecoder, encode_frame
from trimaran.protocols.messages import Snapshot

log = logging.getLogger("trimaran.node.client_server")

#: The hello carries at most an 8 KiB token (parse_hello); anything bigger is not a hello.
HELLO_FRAME_BYTES_MAX = 16 * limits.KIB
#: How long a closing connection may take to flush its last answers / error frame.
FLUSH_TIMEOUT_S = 1.0
#: Bytes of queued answers joined into one write (a copy of all of them would double their memory).
WRITE_CHUNK_BYTES_MAX = 4 * limits.MIB
#: Answers up to this size are queued even over the answer-bytes caps: their refusal (a typed
#: error frame) would take about as much.
ANSWER_BYTES_ALWAYS_QUEUED = 1 * limits.KIB
#: Operations that change no state: an answer of theirs refused over the caps is ``unavailable``.
_READ_ONLY_OPS = frozenset({"read", "status", "backup", "backup_chunk"})


def _encode(obj: Any) -> bytes:
    return encode_frame(pack(obj))


class ClientConnection:
    """One client connection; the driver answers through :meth:`on_reply`."""

    #: The edge its requests are counted under (``RequestStats.edge_outcomes``).
    edge_name = "native"

    def __init__(self, server: ClientServer, stream: trio.abc.Stream) -> None:
        self._server = server
        self._stream = stream
        #: Over TLS: the session that encrypts each chunk before the same direct write as plain TCP.
        self._tls = stream.session if isinstance(stream, TlsStream) else None
        #: The plaintext bytes of the chunk in ``_head`` (over TLS ``_head`` is ciphertext, and the
        #: answer-byte accounting counts plaintext: it is settled when the chunk is fully written).
        self._head_plain_bytes = 0
        cfg = server.config
        self._timeout_s = cfg.request_timeout_ms / 1000
        self._slots = trio.Semaphore(cfg.client_inflight_requests_max)
        #: internal seq -> (the client's request id, whether the request changes no state), for
        #: requests not yet answered.
        self._inflight: dict[int, tuple[int, bool]] = {}
        self._deadlines: deque[tuple[float, int]] = deque()
        self._next_seq = 0
        #: Encoded frames to send, and whether each holds an in-flight slot. A slot is released only
        #: once its answer is written to the socket, so answers a client does not read count
        #: against its cap too: memory per connection stays bounded.
        self._out: deque[tuple[bytes, bool]] = deque()
        self._out_lot = trio.lowlevel.ParkingLot()
        #: The unwritten rest of a chunk the socket took only part of, and the slots it holds.
        self._head: bytes | memoryview = b""
        #: The snapshot bytes of this connection's last ``backup``, read with ``backup_chunk``.
        self._backup: bytes | None = None
        self._head_slots = 0
        #: The socket's descriptor while answers may be written to it directly (-1: not, or no more).
        self._fd = -1
        #: The socket refused more (EAGAIN): the writer task waits until it is writable.
        self._blocked = False
        self._cancel: trio.CancelScope | None = None
        self._reaper_lot = trio.lowlevel.ParkingLot()
        self.closed = False
        #: Bytes of queued frames not yet written (the unwritten part of ``_head`` included), and
        #: bytes written so far (the reaper tells a stuck reader from a slow one by it).
        self._out_bytes = 0
        self._written_bytes = 0
        self._answer_bytes_max = cfg.client_answer_bytes_max
        #: The reader, waiting for the queued answers to shrink below ``_answer_bytes_max``.
        self._room_lot = trio.lowlevel.ParkingLot()
        #: Past the hello and counted against ``client_connections_max``.
        self.admitted = False
        #: When the last request frame arrived (trio time); the idle timeout counts from it.
        self.last_frame_s = trio.current_time()
        #: Cancelled to stop reading (idle, or closed by the server); then ``closing_error`` is sent.
        self._read_scope = trio.CancelScope()
        self.closing_error: TrimaranError | None = None
        #: What this connection's token allows (auth on, past the hello); None with auth off.
        self.grant: Grant | None = None

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # ------------------------------------------------------------------ answers

    def on_reply(self, seq: int, ok: bool, value: Any) -> None:
        entry = self._inflight.pop(seq, None)
        if entry is None or self.closed:
            return  # answered already (timeout) or the client is gone
        request_id, read_only = entry
        if ok and isinstance(value, Snapshot):
            ok, value = self._hold_backup(value)
        try:
            frame = _encode(response(request_id, ok, value))
        except (TypeError, ValueError, OverflowError) as exc:  # a result msgpack cannot carry
            frame = _encode(response(request_id, False, TrimaranError(f"result not encodable: {exc}")))
        if len(frame) > ANSWER_BYTES_ALWAYS_QUEUED:
            refusal = self._over_answer_caps(len(frame))
            if refusal:
                frame = self._refused(request_id, read_only, len(frame), refusal)
        self._queue(frame, holds_slot=True)

    def _hold_backup(self, snapshot: Snapshot) -> tuple[bool, Any]:
        """Keep a backup's bytes for ``backup_chunk`` and answer its header (see backup_file)."""
        server = self._server
        if self._backup is None and server.backups_held >= limits.backups_held_max:
            return False, Unavailable(f"{limits.backups_held_max} backups are being read from this node already; retry later")
        if self._backup is None:
            server.backups_held += 1
        self._backup = snapshot.data
        # A node on guarded data keeps the guard in its backups even while it runs with auth off.
        config = server.config
        auth_required = config.auth_enabled or data_dir.auth_required(config.data_dir)
        header = backup_file.header_for(config.cluster_id, snapshot.meta, hashlib.sha256(snapshot.data).hexdigest(), auth_required)
        return True, header.to_dict() | {"chunk_bytes": limits.backup_chunk_bytes}

    def _backup_chunk(self, offset: int) -> tuple[bool, Any]:
        if self._backup is None:
            return False, InvalidArgument("no backup on this connection: ask for one (backup) first")
        if offset > len(self._backup):
            return False, InvalidArgument(f"offset {offset} is past the backup's {len(self._backup)} bytes")
        return True, self._backup[offset : offset + limits.backup_chunk_bytes]

    def _over_answer_caps(self, size_bytes: int) -> str:
        """Why an answer of ``size_bytes`` may not be queued now ("": it may)."""
        server = self._server
        if self._out_bytes + size_bytes > self._answer_bytes_max:
            return f"on this connection over client_answer_bytes_max={self._answer_bytes_max}"
        node_max = server.config.client_answer_bytes_node_max
        if server.answer_bytes_queued + size_bytes > node_max:
            return f"on this node over client_answer_bytes_node_max={node_max}"
        return ""

    def _refused(self, request_id: int, read_only: bool, size_bytes: int, where: str) -> bytes:
        """The typed error that replaces an answer over the caps (see the module docstring)."""
        self._server.answers_refused += 1
        text = f"an answer of {size_bytes} bytes would take the answers not yet written {where}"
        exc: TrimaranError
        if read_only:
            exc = Unavailable(f"{text}: read the answers, or ask for less at once, and retry", answer_bytes=size_bytes)
        else:
            exc = RequestTimeout(f"{text}; the outcome is unknown: retry with the same seq", answer_bytes=size_bytes)
        return _encode(response(request_id, False, exc))

    def _queue(self, frame: bytes, holds_slot: bool = False) -> None:
        """Queue a frame; it leaves at the next :meth:`flush_replies` (the driver calls it at the end
        of its round, so answers given together leave in one write)."""
        self._out.append((frame, holds_slot))
        self._out_bytes += len(frame)
        self._server.answer_bytes_queued += len(frame)

    def _sent(self, size_bytes: int) -> None:
        self._out_bytes -= size_bytes
        self._server.answer_bytes_queued -= size_bytes
        self._written_bytes += size_bytes
        if len(self._room_lot) and self._out_bytes < self._answer_bytes_max:
            self._room_lot.unpark_all()

    def _release_answers(self) -> None:
        """The connection is gone: what it had queued no longer counts against the node."""
        if self._backup is not None:
            self._backup = None
            self._server.backups_held -= 1
        self._server.answer_bytes_queued -= self._out_bytes
        self._out_bytes = 0
        self._out.clear()
        self._head = b""

    def _answer(self, seq: int, ok: bool, value: Any) -> None:
        """An answer given here rather than by the driver: queued and flushed at once."""
        self.on_reply(seq, ok, value)
        self.flush_replies()

    def flush_replies(self) -> None:
        """Write queued answers to the socket now, in one write, without waiting; whatever the
        socket does not take is left to the writer task, which waits until it is writable."""
        if not self._head and not self._out:
            return
        if self._fd < 0 or self._blocked:
            self._out_lot.unpark_all()
            return
        try:
            if self._write_now():
                return
        except OSError:
            self._broken()
            return
        self._out_lot.unpark_all()

    def _next_chunk(self) -> bytes:
        """Take queued frames (up to ``WRITE_CHUNK_BYTES_MAX`` together) for one write; the slots
        they hold go to ``_head_slots``, released once the chunk is written completely."""
        out = self._out
        data, holds_slot = out.popleft()
        self._head_slots = 1 if holds_slot else 0
        if out and len(data) < WRITE_CHUNK_BYTES_MAX:
            chunk, size_bytes = [data], len(data)
            while out and size_bytes + len(out[0][0]) <= WRITE_CHUNK_BYTES_MAX:
                frame, holds_slot = out.popleft()
                chunk.append(frame)
                size_bytes += len(frame)
                self._head_slots += holds_slot
            data = b"".join(chunk)
        return data

    def _chunk_written(self) -> None:
        self._head = b""
        for _ in range(self._head_slots):
            self._slots.release()
        self._head_slots = 0

    def _write_now(self) -> bool:
        """Write what is queued, up to the socket's room; True when all of it went. Raises OSError
        on a broken connection. A slot is released once its answer is written completely."""
        tls = self._tls
        while True:
            data = self._head
            if not data:
                if not self._out:
                    return True
                data = self._next_chunk()
                if tls is not None:
                    self._head_plain_bytes = len(data)
                    data = tls.encrypt(data)
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                written = 0
            if written and tls is None:
                self._sent(written)
            if written < len(data):
                self._head = memoryview(data)[written:]
                self._blocked = True
                return False
            if tls is not None:
                self._sent(self._head_plain_bytes)
            self._chunk_written()

    def _broken(self) -> None:
        self.closed = True
        self._fd = -1
        if self._cancel is not None:
            self._cancel.cancel()

    # ------------------------------------------------------------------ tasks

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._cancel = nursery.cancel_scope
                assert isinstance(self._stream, (trio.SocketStream, TlsStream))
                self._fd = self._stream.socket.fileno()
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._reap_loop)
                with self._read_scope:
                    await self._read_loop()
                if self._read_scope.cancelled_caught and self.closing_error is not None:
                    # Closed by the node (idle, or evicted before its hello): say why, after the answers.
                    self._queue(_encode(error_frame(self.closing_error)))
                    self.flush_replies()
                await self._drain()
                nursery.cancel_scope.cancel()
            # Never write to the descriptor once the stream closes: its number may be reused.
            self._fd = -1
            await linger_close(self._stream)  # the client may have sent more after a bad frame
        finally:
            self._fd = -1
            self.closed = True
            self._server.claim_waits.drop(self)
            self._release_answers()

    def close_reading(self, exc: TrimaranError) -> None:
        """Stop reading requests, then send ``exc`` after the answers still due, and close."""
        if self.closing_error is None:
            self.closing_error = exc
            self._read_scope.cancel()

    @property
    def idle(self) -> bool:
        """Past the hello, nothing in flight, nothing to write, still reading."""
        return (
            self.admitted and not self._inflight and not self._out and not self._head and self.closing_error is None
        )

    async def _read_loop(self) -> None:
        server = self._server
        decoder = FrameDecoder(HELLO_FRAME_BYTES_MAX)
        try:
            with trio.move_on_after(server.config.handshake_timeout_ms / 1000) as deadline:
                first = await read_frame(self._stream, decoder)
            if deadline.cancelled_caught:
                raise ProtocolError(f"no hello within {server.config.handshake_timeout_ms} ms")
            if first is None:
                return
            server.admit(self)
            self._handshake(first)
            decoder.frame_bytes_max = server.config.client_frame_bytes_max
            while True:
                frame = await read_frame(self._stream, decoder)
                if frame is None:
                    return
                self.last_frame_s = trio.current_time()
                # Every request that arrived with it goes to the driver before its round starts
                # (one round, one group proposal, one write of the answers for all of them).
                frames, error = [frame], None
                try:
                    while (frame := decoder.next_frame()) is not None:
                        frames.append(frame)
                except TrimaranError as exc:  # the requests before it are still served
                    error = exc
                submitted = 0
                # The node's time for the grant's expiry, read once for the requests that arrived
                # together (each is judged as of its arrival, even if it then waits for a slot).
                now_ms = server.authoriser.now_ms() if self.grant is not None else None
                try:
                    for frame in frames:
                        submitted += await self._on_frame(frame, now_ms)
                finally:
                    if submitted:
                        server.driver.start_round(client=True)
                if error is not None:
                    raise error
        except TrimaranError as exc:
            # Not the protocol at all (or no room for one more connection): one error frame, then close.
            if not isinstance(exc, (Unavailable, AuthError)):
                server.protocol_errors += 1
            log.info("node %d: closing a client connection: %s", server.config.node_id, exc)
            self._queue(_encode(error_frame(exc)))
            self.flush_replies()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    def _handshake(self, frame: bytes) -> None:
        server = self._server
        obj = unpack(frame, size_bytes_max=HELLO_FRAME_BYTES_MAX)
        authoriser = server.authoriser
        if authoriser.enabled and isinstance(obj, dict) and obj.get("type") == "hello":
            token = obj.get("token")
            if token is not None and (not isinstance(token, str) or len(token) > limits.token_bytes_max):
                # Not text (msgpack bin) or over token_bytes_max: with auth on, a refused token
                # (authenticate raises unauthenticated) rather than a malformed hello
                # (parse_hello's protocol_error, which would still refuse it below).
                authoriser.authenticate(token)
        hello = parse_hello(obj)
        if hello.cluster_id is not None and hello.cluster_id != server.config.cluster_id:
            raise InvalidArgument(
                f"this node belongs to cluster {server.config.cluster_id!r}, not {brief(hello.cluster_id)}",
                cluster_id=server.config.cluster_id,
            )
        if authoriser.enabled:
            # Verified once per connection; every request is then checked against the grant.
            self.grant = authoriser.authenticate(hello.token)
        # With auth off, hello.token is ignored (accepted unchecked, as before auth existed).
        leader = server.driver.replica.leader_id
        answer = welcome(server.config.node_id, leader, server.config.cluster_id)
        answer["leader_address"] = server.driver.client_address_of(leader) if leader else None
        self._queue(_encode(answer))
        self.flush_replies()

    async def _on_frame(self, frame: bytes, now_ms: int | None) -> bool:
        """Serve one request frame; True if it went to the driver, whose round the caller starts.
        ``now_ms``: the node's time when it arrived (:meth:`Authoriser.now_ms`; None: not read)."""
        obj = unpack(frame, size_bytes_max=self._server.config.client_frame_bytes_max)
        try:
            request = parse_request(obj)
        except InvalidArgument as exc:
            # parse_request raised this only after checking obj is [int request_id, op, body]. The
            # answer takes a slot like any other, so bad requests cannot pile up answers either.
            seq = await self._take_slot(obj[0], True)
            self._answer(seq, False, exc)
            return False
        seq = await self._take_slot(request.request_id, request.op in _READ_ONLY_OPS)
        server = self._server
        if self.grant is not None:
            # Authorise at the edge: a refusal is answered here and nothing reaches the driver.
            try:
                server.authoriser.check(self.grant, request.op, request.body, now_ms)
            except (AuthError, InvalidArgument, Unavailable) as exc:
                self._answer(seq, False, exc)
                return False
        if server.shutting_down:
            self._answer(seq, False, Unavailable("the node is shutting down; retry on another node"))
        elif request.op == "status":
            self._answer(seq, True, server.status())
        elif request.op == "backup_chunk":
            self._answer(seq, *self._backup_chunk(request.body["offset"]))
        elif server.claim_waits.park(self, seq, request.op, request.body, len(frame)):
            pass  # a long-polling job claim with nothing to take yet: proposed when there is
        else:
            await server.driver.submit_client(request.op, request.body, (self, seq), len(frame), more=True)
            return True
        return False

    async def _take_slot(self, request_id: int, read_only: bool) -> int:
        """Count a request in flight (waiting at the cap) and return its internal number."""
        if self._out_bytes >= self._answer_bytes_max:
            # Answers wait to be written: read no more requests until they shrink (TCP pushes back).
            self._server.driver.wake()
            while self._out_bytes >= self._answer_bytes_max:
                await self._room_lot.park()
        # Not `await acquire()` every time: it always yields, which would let the driver run a round
        # per request and defeat the group proposal (all requests read in one go, one log entry).
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            self._server.driver.wake()  # requests already delivered must not wait for this one
            await self._slots.acquire()  # at the cap, stop reading: backpressure through TCP
        self._next_seq += 1
        seq = self._next_seq
        self._inflight[seq] = (request_id, read_only)
        deadlines = self._deadlines
        deadlines.append((trio.current_time() + self._timeout_s, seq))
        if len(deadlines) == 1:
            self._reaper_lot.unpark_all()  # it parks only while there is no deadline at all
        return seq

    async def _write_loop(self) -> None:
        """Writes what :meth:`flush_replies` could not: waits for answers, then for room."""
        try:
            while True:
                if not self._head and not self._out:
                    await self._out_lot.park()
                    continue
                if self._blocked:
                    assert isinstance(self._stream, (trio.SocketStream, TlsStream))
                    await trio.lowlevel.wait_writable(self._stream.socket)
                    self._blocked = False
                self._write_now()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._broken()

    async def _reap_loop(self) -> None:
        while True:
            while not self._deadlines:
                await self._watch_idle()
            deadline, seq = self._deadlines[0]
            if seq in self._inflight:
                await trio.sleep_until(deadline)
                if seq in self._inflight:
                    self._answer(seq, False, RequestTimeout(f"no answer within {self._timeout_s:g} s; outcome unknown"))
            self._deadlines.popleft()

    async def _watch_idle(self) -> None:
        """Nothing in flight: return at the next request, or close the connection once it has been
        idle (or its client has not read a byte of its answers) for ``client_idle_timeout_ms``."""
        idle_s = self._server.config.client_idle_timeout_ms / 1000
        written_bytes = self._written_bytes
        check_at = self.last_frame_s + idle_s
        while True:
            with trio.move_on_at(check_at):
                await self._reaper_lot.park()  # a request arrived (_take_slot)
                return
            now = trio.current_time()
            if self.closing_error is not None:
                await trio.sleep_forever()  # the connection is closing; run() cancels this task
            if self._deadlines:
                return
            if not self.admitted or now < self.last_frame_s + idle_s or self._written_bytes != written_bytes:
                written_bytes = self._written_bytes  # still in its hello, or busy: look again later
                check_at = max(now, self.last_frame_s) + idle_s
                continue
            if self.idle:
                self._server.idle_closed += 1
                self.close_reading(IdleTimeout(f"no request for {idle_s * 1000:.0f} ms: closing; reconnect to go on"))
            else:  # answers wait, and not one byte of them was read
                self._server.idle_closed += 1
                self.close_reading(Unavailable(f"answers not read for {idle_s * 1000:.0f} ms: closing"))
            await trio.sleep_forever()  # the connection is closing; run() cancels this task

    async def _drain(self) -> None:
        """The reader is done (EOF or a protocol error): let in-flight answers and the last frames
        out (bounded by the request timeout), so a half-closing client still gets its answers."""
        with trio.move_on_after(self._timeout_s + FLUSH_TIMEOUT_S):
            while self._inflight or self._out or self._head:
                await trio.sleep(0.01)


class ClientServer:
    """Accepts client connections on ``config.listen``; see the module docstring."""

    def __init__(
        self,
        config: NodeConfig,
        driver: Driver,
        status: Callable[[], dict[str, Any]],
        wall_clock_ms: Callable[[], int] = system_wall_clock_ms,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``wall_clock_ms``: the clock tokens are checked against (the node's; tests inject one).
        ``tls``: serve TLS with this context (the node's certificate); None: plain TCP."""
        self.config = config
        self._tls = tls
        self.driver = driver
        self.status = status
        self.authoriser = Authoriser(config, driver.replica, wall_clock_ms)
        if self.authoriser.enabled:
            driver.after_round_hooks.append(self._after_round)
        self.claim_waits = ClaimWaits(driver, wall_clock_ms, config.request_timeout_ms)
        self.address: Address | None = None
        self.shutting_down = False
        self._connections: set[ClientConnection] = set()
        #: Connections waiting for their hello.
        self._handshaking: PendingHandshakes[ClientConnection] = PendingHandshakes(config.client_handshakes_max)
        #: Connections past their hello, counted against ``client_connections_max``.
        self._admitted: set[ClientConnection] = set()
        self._accept_scope = trio.CancelScope()
        self._connections_scope = trio.CancelScope()
        #: Bytes of answers queued on every connection and not yet written.
        self.answer_bytes_queued = 0
        #: Counters (reported by the status op).
        self.connections_refused = 0
        self.protocol_errors = 0
        self.idle_closed = 0
        self.answers_refused = 0
        #: Connections holding a backup's bytes (at most limits.backups_held_max).
        self.backups_held = 0

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def serve(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        listen = self.config.listen
        listeners = await open_listeners(listen, "clients")
        host, port = listeners[0].socket.getsockname()[:2]
        self.address = Address(host, port)
        with self._connections_scope:
            async with trio.open_nursery() as connections:
                connections.start_soon(self._accept, listeners, connections)
                task_status.started(self.address)
                # Runs until the node cancels it; stop_accepting() ends only the accept task, so
                # open connections can finish their in-flight requests.
                await trio.sleep_forever()

    async def _accept(self, listeners: list[trio.SocketListener], connections: trio.Nursery) -> None:
        with self._accept_scope:
            await trio.serve_listeners(self._handle, listeners, handler_nursery=connections)

    async def _handle(self, tcp: trio.SocketStream) -> None:
        # Over TLS the handshake runs inside the first read, under the hello's timeout.
        stream: trio.abc.Stream = tcp if self._tls is None else TlsStream(tcp, self._tls, server_side=True)
        if self.shutting_down:
            self.connections_refused += 1
            await linger_close(stream, _encode(error_frame(Unavailable("this node is shutting down"))))
            return
        conn = ClientConnection(self, stream)
        self._connections.add(conn)
        oldest = self._handshaking.add(conn)
        if oldest is not None:
            oldest.close_reading(
                Unavailable(f"more than {self.config.client_handshakes_max} connections wait for their hello: closing the oldest")
            )
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            self._handshaking.discard(conn)
            self._admitted.discard(conn)

    def admit(self, conn: ClientConnection) -> None:
        """``conn`` said hello: count it against ``client_connections_max``, or raise ``Unavailable``."""
        self._handshaking.discard(conn)
        if conn.closing_error is not None:  # evicted while its hello was on its way
            raise conn.closing_error
        if len(self._admitted) >= self.config.client_connections_max:
            self.connections_refused += 1
            raise Unavailable(f"this node is at its cap of {self.config.client_connections_max} connections")
        self._admitted.add(conn)
        conn.admitted = True

    @property
    def handshakes_pending(self) -> int:
        return len(self._handshaking)

    @property
    def handshakes_evicted(self) -> int:
        return self._handshaking.evicted

    def _after_round(self) -> None:
        """The driver finished a round: if it applied a revocation or a key retirement, close every
        connection whose token no longer holds (typed ``unauthenticated`` error frame, after the
        answers already due; requests read meanwhile are refused with the same error)."""
        if not self.authoriser.generation_moved():
            return
        for conn in list(self._admitted):
            if conn.grant is not None and conn.grant.refused is None:
                refusal = self.authoriser.recheck(conn.grant)
                if refusal is not None:
                    conn.close_reading(refusal)

    # ------------------------------------------------------------------ shutdown

    def stop_accepting(self) -> None:
        """Close the listeners and refuse new requests with ``unavailable``."""
        self.shutting_down = True
        self._accept_scope.cancel()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait (bounded) until no connection has a request in flight."""
        with trio.move_on_after(timeout_s):
            while any(c.inflight for c in self._connections):
                await trio.sleep(0.01)
            return True
        return False

    def close(self) -> None:
        """Cancel every connection (after :meth:`wait_idle`)."""
        self._connections_scope.cancel()
