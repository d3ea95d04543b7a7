"""Peer transport: Raft messages between nodes over TCP.

Wire: length-prefixed frames (:mod:`trimaran.protocols.framing`), each holding one msgpack value.

- Connections are one-way. Each node dials one outbound connection per peer and only *sends* on
  it; it only *receives* on connections it accepted. So "one connection per peer" per direction,
  and a slow reader never makes a writer wait for anything but its own socket.
- The dialer's first frame is a handshake::

      {"type": "peer_hello", "version": 2, "cluster_id": str, "node_id": sender, "recipient": int,
       "state_machine": {"kv": {"maxmemory_bytes": int | None, "eviction_policy": str},
                         "auth": {"bootstrap_keys_sha256": str, "leeway_ms": int}},
       "clock_probes": 1}

  The acceptor checks the cluster id, that it is the recipient, that the sender is a known peer,
  and that both build the state machine with the same settings (a node started with another
  ``--kv-maxmemory-bytes`` would evict other keys than its peers and silently diverge; one with
  other ``--auth-public-key`` bootstrap keys would accept other tokens; ``auth`` is left out with
  auth off and the default leeway, as before auth existed);
  otherwise it sends ``{"type": "error", "error": <error>}`` and closes. The caller is not known
  yet, so that error says only "peer handshake refused"; the reason, which may name this node's
  cluster id and settings, goes to the acceptor's log. After the handshake the acceptor sends
  nothing; the dialer reads only to notice the close (and log the error).
- Every later frame is :func:`~trimaran.protocols.codec.message_to_wire` of one message with the
  ``recipient`` field set to 0: the connection already names the recipient, and leaving it out
  lets an AppendEntries carrying the same entries to several followers be encoded once.
  The receiver checks ``sender`` against the handshake and fills ``recipient`` back in.
- Inbound slots. Connections still waiting for their handshake are counted apart from the
  handshaken ones: at most ``peer_handshakes_max`` of them, and one more closes the oldest (the
  slowest to finish), so sockets that never send a ``peer_hello`` cannot keep a real peer out. A
  peer dials one connection at a time, so its new handshaken connection replaces its old one (the
  old one is dead on its side: a restart, or a break this node has not noticed yet); at most
  ``peer_connections_max`` handshaken connections are kept.
- Clock probes and their replies (:mod:`~trimaran.node.clock`) share the connections: a frame
  whose first item is a string is one, handed to :attr:`PeerTransport.clock`. Only peers whose
  hello carried ``"clock_probes": 1`` are sent any (an older node ignores the key), so the
  protocol version stays 2 and nodes of both versions keep talking.
- Limits are checked before allocating: the frame length against ``frame_bytes_max`` as soon as
  the header arrives, then msgpack's length ceilings, ``strict_map_key`` and no ext types
  (:func:`~trimaran.protocols.codec.unpack`), then every field's type. Any violation closes the
  connection; the node and its other connections carry on.
- Each peer has a bounded send queue (frames and bytes). A frame that does not fit is DROPPED and
  counted: Raft retransmits what is lost, and a slow or dead peer must never block the driver or
  the other peers. Frames queued for a connection that breaks are dropped too (they would be stale).
- Sending does not wait for a task: :meth:`PeerTransport.send` queues a round's frames, then writes
  each peer's queue to its socket with one non-blocking ``write`` (:meth:`PeerQueue.flush`). Only
  what a full socket buffer refuses is left to the connection's task, which waits until the socket
  is writable. One ``write`` per peer per driver round, and no task switch on the way out.
- Receiving: a connection's reader decodes every frame one read brought and hands them all to the
  driver before its round starts (``deliver(msg, more)``); an idle driver runs that round in the
  reader's task at once (see :mod:`~trimaran.node.driver`), so no task switch on the way in either.
- TLS (``--tls-dir``, :mod:`trimaran.node.tls`): both directions are mutual TLS with the cluster
  CA. The dialer checks that the certificate at a peer's address is that peer's; the acceptor, that
  the dialer's certificate is the one of the node its ``peer_hello`` names. A process without a
  certificate of the CA fails the TLS handshake and never gets a frame read. Over TLS the direct
  writes below carry ciphertext (:class:`~trimaran.node.streams.TlsStream`: each chunk is
  encrypted, then written), so TLS keeps one write per peer per round and no task switch.
- Reconnects back off exponentially with full jitter, so restarted clusters do not reconnect in
  lockstep.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections import deque
from typing import Any, Awaitable, Callable, Sequence

import trio

from trimaran import limits
from trimaran.errors import ProtocolError, TrimaranError
from trimaran.node.clock import HELLO_FEATURE, ClockMonitor, is_clock_frame
from trimaran.node.config import Address, NodeConfig
from trimaran.node.logs import event
from trimaran.node.streams import PendingHandshakes, TlsStream, linger_close, open_listeners, read_frame
from trimaran.node.tls import NodeTls, peer_node_id
from trimaran.protocols.codec import brief, message_from_wire, message_to_wire, pack, unpack
from trimaran.protocols.framing import FrameDecoder, encode_frame
from trimaran.protocols.messages import MESSAGE_TYPES, AppendEntries, Message

log = logging.getLogger("trimaran.node.transport")

PEER_PROTOCOL_VERSION = 2
#: Bytes of queued frames joined into one send (fewer syscalls, bounded copies).
SEND_CHUNK_BYTES_MAX = 4 * limits.MIB
#: Largest handshake frame (either port's hello is a few dozen bytes).
HELLO_FRAME_BYTES_MAX = 4 * limits.KIB
#: All an unauthenticated caller of the peer port learns when its handshake fails.
HANDSHAKE_REFUSED = "peer handshake refused"
#: A connection that lived at least this long resets the reconnect backoff.
STABLE_CONNECTION_S = 1.0
#: Position of ``recipient`` in message_to_wire output: [tag, term, sender, recipient, ...].
_RECIPIENT_POS = 3

for _cls in MESSAGE_TYPES:
    assert [f.name for f in dataclasses.fields(_cls)][:3] == ["term", "sender", "recipient"], _cls


def peer_hello(cluster_id: str, node_id: int, recipient: int, state_machine: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "peer_hello",
        "version": PEER_PROTOCOL_VERSION,
        "cluster_id": cluster_id,
        "node_id": node_id,
        "recipient": recipient,
        "state_machine": state_machine,
        HELLO_FEATURE: 1,
    }


def error_frame(exc: TrimaranError) -> bytes:
    return encode_frame(pack({"type": "error", "error": exc.to_wire()}))


class _Inbound:
    """One accepted peer connection: its cancel scope, and the peer it belongs to (0: no handshake yet)."""

    __slots__ = ("scope", "sender")

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.sender = 0


def _dedupe_key(msg: Message) -> tuple[Any, ...] | None:
    """Messages equal but for the recipient share a key. Only appends with entries are worth it:
    by the Log Matching property, entries with the same index and term in one leader's log are
    the same entries."""
    if type(msg) is AppendEntries and msg.entries:
        last = msg.entries[-1]
        return (msg.term, msg.sender, msg.prev_index, msg.prev_term, msg.commit_index, last.index, last.term)
    return None


def encode_for_peer(msg: Message) -> bytes:
    """One frame carrying ``msg`` without its recipient (see the module docstring)."""
    wire = message_to_wire(msg)
    wire[_RECIPIENT_POS] = 0
    return encode_frame(pack(wire))


def decode_from_peer(frame: bytes, sender: int, recipient: int) -> Message:
    """Decode one peer frame under the codec's limits; ``ProtocolError`` if it is not a message
    from ``sender`` (the handshake's node id)."""
    return message_from_peer(unpack(frame), sender, recipient)


def message_from_peer(obj: Any, sender: int, recipient: int) -> Message:
    """:func:`decode_from_peer` of a frame already unpacked."""
    msg = message_from_wire(obj)
    if msg.sender != sender:
        raise ProtocolError(f"message claims sender {msg.sender} on a connection from node {sender}")
    if msg.recipient not in (0, recipient):
        raise ProtocolError(f"message for node {msg.recipient} arrived at node {recipient}")
    msg.recipient = recipient
    return msg


class PeerQueue:
    """A bounded FIFO of encoded frames for one peer that drops (never waits) when full.

    While a connection is attached (:meth:`attach`), :meth:`flush` writes the queued frames to its
    socket at once, from whoever calls it (the driver's round, through :meth:`PeerTransport.send`):
    all frames queued for the peer in one ``write``, and no task switch to a sender task. Only what
    the socket does not take (its buffer is full) is left for the connection's task, which waits
    until the socket is writable and flushes again. Bytes leave in queue order: a partly written
    chunk (``_head``) always goes before any later frame.
    """

    def __init__(self, frames_max: int, bytes_max: int) -> None:
        self._frames: deque[bytes] = deque()
        self._bytes = 0
        self._frames_max = frames_max
        self._bytes_max = bytes_max
        self._lot = trio.lowlevel.ParkingLot()
        #: The unwritten rest of a chunk the socket took only part of (goes out first).
        self._head: bytes | memoryview = b""
        #: The attached connection's socket file descriptor (-1: none).
        self._fd = -1
        #: Over TLS: the session's ``encrypt``, applied to each chunk before it is written.
        self._encrypt: Callable[[bytes], bytes] | None = None
        #: The socket refused more (EAGAIN): leave the next write to the task that waits for it.
        self.blocked = False
        self.dropped_frames = 0
        #: Frames handed to the socket, and write calls that did it.
        self.sent_frames = 0
        self.writes = 0

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: bytes) -> bool:
        if len(self._frames) >= self._frames_max or self._bytes + len(frame) > self._bytes_max:
            self.dropped_frames += 1
            return False
        self._frames.append(frame)
        self._bytes += len(frame)
        if self._fd < 0:
            self._lot.unpark_all()
        return True

    async def take(self, bytes_max: int = SEND_CHUNK_BYTES_MAX) -> list[bytes]:
        """Wait for at least one frame; return queued frames up to ``bytes_max`` (at least one)."""
        while not self._frames:
            await self._lot.park()
        return self._take_now(bytes_max)

    def _take_now(self, bytes_max: int) -> list[bytes]:
        out = [self._frames.popleft()]
        size = len(out[0])
        while self._frames and size + len(self._frames[0]) <= bytes_max:
            frame = self._frames.popleft()
            size += len(frame)
            out.append(frame)
        self._bytes -= size
        return out

    @property
    def pending(self) -> bool:
        """Bytes wait to be written (queued frames or the rest of a chunk)."""
        return bool(self._head) or bool(self._frames)

    def attach(self, fd: int, encrypt: Callable[[bytes], bytes] | None = None) -> None:
        """Write to this (non-blocking, connected, handshaken) socket from now on; over TLS, what
        ``encrypt`` makes of each chunk (the partly written rest, ``_head``, is then ciphertext)."""
        self._fd = fd
        self._encrypt = encrypt
        self.blocked = False

    def detach(self) -> None:
        """The connection is going away: write nothing more to its descriptor (it may be reused)."""
        self._fd = -1
        self._encrypt = None
        self.blocked = False

    @property
    def attached(self) -> bool:
        return self._fd >= 0

    def flush(self) -> bool:
        """Write what is queued to the attached socket without waiting; True when all of it went.

        Raises ``OSError`` when the connection is broken (the caller drops the connection).
        """
        fd = self._fd
        if fd < 0:
            return False
        while True:
            data = self._head
            if not data:
                if not self._frames:
                    return True
                frames = self._take_now(SEND_CHUNK_BYTES_MAX)
                data = b"".join(frames) if len(frames) > 1 else frames[0]
                if self._encrypt is not None:
                    data = self._encrypt(data)
                self.sent_frames += len(frames)
            try:
                written = os.write(fd, data)
            except BlockingIOError:
                written = 0
            self.writes += 1
            if written < len(data):
                self._head = memoryview(data)[written:]
                self.blocked = True
                return False
            self._head = b""

    async def wait_pending(self) -> None:
        """Park until frames are pushed (or :meth:`wake` is called)."""
        await self._lot.park()

    def wake(self) -> None:
        self._lot.unpark_all()

    def clear(self) -> None:
        self.dropped_frames += len(self._frames)
        self._frames.clear()
        self._bytes = 0
        self._head = b""


class PeerTransport:
    """Sends Raft messages to peers and hands received ones to ``deliver``; see the module docstring."""

    def __init__(
        self, config: NodeConfig, deliver: Callable[[Message, bool], Awaitable[None]], tls: NodeTls | None = None
    ) -> None:
        """``deliver(msg, more)``: ``more`` says that more messages read at once follow at once.
        ``tls``: serve and dial with mutual TLS (see :mod:`trimaran.node.tls`); None: plain TCP."""
        self._config = config
        self._tls = tls
        self._node_id = config.node_id
        self._deliver = deliver
        self._queues = {
            p.node_id: PeerQueue(config.peer_queue_frames_max, config.peer_queue_bytes_max) for p in config.peers
        }
        #: Where each peer is dialed: from the --peer flags, then from the members directory.
        self._addresses: dict[int, Address] = {p.node_id: p.peer_address for p in config.peers}
        self._nursery: trio.Nursery | None = None
        self._pump_scopes: dict[int, trio.CancelScope] = {}
        #: Inbound connections waiting for their handshake.
        self._handshaking: PendingHandshakes[_Inbound] = PendingHandshakes(config.peer_handshakes_max)
        #: Handshaken inbound connections, by peer.
        self._inbound: dict[int, _Inbound] = {}
        self.address: Address | None = None
        #: Counters (reported by the status op).
        self.frames_received = 0
        self.connections_refused = 0
        self.unknown_recipient_messages = 0
        self.connections_replaced = 0
        #: TLS handshakes that failed (no certificate of the cluster CA, or of another node).
        self.tls_refused = 0
        #: Answers clock probes and takes their replies; None: clock frames are ignored.
        self.clock: ClockMonitor | None = None

    @property
    def handshakes_evicted(self) -> int:
        return self._handshaking.evicted

    @property
    def dropped_frames(self) -> dict[int, int]:
        return {n: q.dropped_frames for n, q in self._queues.items()}

    @property
    def frames_sent(self) -> int:
        return sum(q.sent_frames for q in self._queues.values())

    @property
    def socket_writes(self) -> int:
        """Write calls on peer connections (frames are joined per peer and round)."""
        return sum(q.writes for q in self._queues.values())

    # ------------------------------------------------------------------ sending

    def send(self, msgs: Sequence[Message]) -> None:
        """Queue messages for their recipients and write each peer's frames to its connection in one
        go. Never blocks; full queues drop."""
        cache: dict[tuple[Any, ...], bytes] = {}
        queues = self._queues
        touched: list[int] = []
        for msg in msgs:
            recipient = msg.recipient
            q = queues.get(recipient)
            if q is None:
                self.unknown_recipient_messages += 1
                continue
            key = _dedupe_key(msg)
            frame = cache.get(key) if key is not None else None
            if frame is None:
                frame = encode_for_peer(msg)
                if key is not None:
                    cache[key] = frame
            if q.push(frame) and recipient not in touched:
                touched.append(recipient)
        for peer_id in touched:
            self._flush(peer_id, queues[peer_id])

    def send_frame(self, peer_id: int, frame: bytes) -> bool:
        """Queue one encoded frame (a clock probe or reply) and write it at once, only while the
        connection to ``peer_id`` is up (a stale probe would be a wrong sample); True if queued."""
        q = self._queues.get(peer_id)
        if q is None or not q.attached or not q.push(frame):
            return False
        self._flush(peer_id, q)
        return True

    def _flush(self, peer_id: int, q: PeerQueue) -> None:
        """Write ``q`` now if its connection is up and writable; else leave it to the connection's task."""
        if not q.attached or q.blocked:
            return
        try:
            if q.flush():
                return
        except OSError as exc:
            log.debug("node %d: connection to peer %d broke: %s", self._node_id, peer_id, exc)
            q.detach()
            scope = self._pump_scopes.get(peer_id)
            if scope is not None:
                scope.cancel()
            return
        q.wake()  # the socket is full: the connection's task waits until it is writable

    # ------------------------------------------------------------------ serving

    async def serve(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on the peer port and keep one outbound connection per peer, until cancelled."""
        listen = self._config.peer_listen
        listeners = await open_listeners(listen, "peers")
        host, port = listeners[0].socket.getsockname()[:2]
        self.address = Address(host, port)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for peer_id in list(self._addresses):
                nursery.start_soon(self._dial_loop, peer_id)
            await nursery.start(trio.serve_listeners, self._handle_inbound, listeners)
            task_status.started(self.address)

    def peer_address(self, peer_id: int) -> Address | None:
        """Where this node dials ``peer_id`` (its flags, or the members directory)."""
        return self._addresses.get(peer_id)

    def add_peer(self, peer_id: int, address: Address) -> None:
        """A member learned from the members directory (``trimaran member add``): dial it at
        ``address`` from now on (a known peer's next reconnect uses the new address), and accept
        its connections."""
        if peer_id == self._node_id or self._addresses.get(peer_id) == address:
            return
        known = peer_id in self._addresses
        self._addresses[peer_id] = address
        if peer_id not in self._queues:
            self._queues[peer_id] = PeerQueue(self._config.peer_queue_frames_max, self._config.peer_queue_bytes_max)
        if not known and self._nursery is not None:
            self._nursery.start_soon(self._dial_loop, peer_id)
        log.info("node %d: peer %d is at %s (members directory)", self._node_id, peer_id, address)

    async def _dial_loop(self, peer_id: int) -> None:
        cfg = self._config
        backoff_ms = cfg.peer_reconnect_ms_min
        q = self._queues[peer_id]
        while True:
            address = self._addresses[peer_id]
            stream: trio.abc.Stream | None = None
            try:
                with trio.fail_after(cfg.peer_connect_timeout_ms / 1000):
                    stream = await trio.open_tcp_stream(address.host, address.port)
                    if self._tls is not None:
                        stream = await self._tls_dial(stream, peer_id)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                log.debug("node %d: cannot reach peer %d at %s: %s", self._node_id, peer_id, address, exc)
                if stream is not None:
                    await trio.aclose_forcefully(stream)
                    stream = None
            if stream is not None:
                started = trio.current_time()
                await self._pump(peer_id, stream, q)
                if trio.current_time() - started >= STABLE_CONNECTION_S:
                    backoff_ms = cfg.peer_reconnect_ms_min
            q.clear()  # stale by the time a new connection is up; Raft retransmits
            # Full jitter (AWS architecture blog, "Exponential Backoff And Jitter").
            await trio.sleep(random.uniform(0, backoff_ms) / 1000)
            backoff_ms = min(backoff_ms * 2, cfg.peer_reconnect_ms_max)

    async def _tls_dial(self, tcp: trio.SocketStream, peer_id: int) -> TlsStream:
        """The TLS handshake with ``peer_id``: its certificate must be the cluster CA's for that node."""
        assert self._tls is not None
        stream = TlsStream(tcp, self._tls.peer_client, server_side=False)
        try:
            await stream.do_handshake()
        except trio.BrokenResourceError as exc:
            self.tls_refused += 1
            event(log, logging.WARNING, "peer_refused", "node %d: TLS handshake with peer %d failed: %s", self._node_id, peer_id, exc,
                  peer=peer_id, reason="tls_handshake")  # fmt: skip
            raise
        claimed = peer_node_id(stream.getpeercert())
        if claimed != peer_id:
            self.tls_refused += 1
            event(log, logging.WARNING, "peer_refused", "node %d: the node at peer %d's address holds node %s's certificate",
                  self._node_id, peer_id, claimed, peer=peer_id, reason="wrong_certificate")  # fmt: skip
            await trio.aclose_forcefully(stream)
            raise trio.BrokenResourceError(f"peer {peer_id} presented the certificate of node {claimed}")
        return stream

    async def _pump(self, peer_id: int, stream: trio.abc.Stream, q: PeerQueue) -> None:
        """Handshake, then send queued frames until the connection breaks.

        After the handshake the queue writes to the socket itself (:meth:`PeerQueue.flush`, called
        from :meth:`send`); this task only writes what was queued before, and what the socket
        refused, once it is writable.
        """

        async def send_loop(cancel: trio.CancelScope) -> None:
            try:
                hello = peer_hello(
                    self._config.cluster_id, self._node_id, peer_id, self._config.state_machine_settings()
                )
                await stream.send_all(encode_frame(pack(hello)))
                assert isinstance(stream, (trio.SocketStream, TlsStream))
                sock = stream.socket
                q.attach(sock.fileno(), stream.session.encrypt if isinstance(stream, TlsStream) else None)
                while True:
                    if not q.pending:
                        await q.wait_pending()
                        continue
                    if q.blocked:
                        await trio.lowlevel.wait_writable(sock)
                        q.blocked = False
                    q.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.debug("node %d: connection to peer %d broke: %s", self._node_id, peer_id, exc)
            q.detach()
            cancel.cancel()

        async def watch_close(cancel: trio.CancelScope) -> None:
            # The acceptor sends nothing but an error before it closes; either way we are done.
            decoder = FrameDecoder()
            try:
                frame = await read_frame(stream, decoder)
                if frame is not None:
                    refusal = brief(unpack(frame))
                    event(log, logging.WARNING, "peer_refused", "node %d: peer %d refused the connection (its log says why): %s",
                          self._node_id, peer_id, refusal, peer=peer_id, reason="refused_by_peer")  # fmt: skip
            except (TrimaranError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            cancel.cancel()

        try:
            async with trio.open_nursery() as nursery:
                self._pump_scopes[peer_id] = nursery.cancel_scope
                nursery.start_soon(send_loop, nursery.cancel_scope)
                nursery.start_soon(watch_close, nursery.cancel_scope)
        finally:
            # Never write to this descriptor again: once closed, its number may name another socket.
            q.detach()
            self._pump_scopes.pop(peer_id, None)
            await trio.aclose_forcefully(stream)

    # ------------------------------------------------------------------ receiving

    def _check_hello(self, obj: Any) -> int:
        if not isinstance(obj, dict) or obj.get("type") != "peer_hello":
            raise ProtocolError("the first frame on a peer connection must be a peer_hello")
        if obj.get("version") != PEER_PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported peer protocol version {brief(obj.get('version'))}")
        if obj.get("cluster_id") != self._config.cluster_id:
            raise ProtocolError(f"cluster id {brief(obj.get('cluster_id'))} is not {self._config.cluster_id!r}")
        if obj.get("recipient") != self._node_id:
            raise ProtocolError(f"this is node {self._node_id}, not node {brief(obj.get('recipient'))}")
        sender = obj.get("node_id")
        if type(sender) is not int or sender not in self._queues:
            raise ProtocolError(f"node {brief(sender)} is not a known peer")
        ours = self._config.state_machine_settings()
        if obj.get("state_machine") != ours:
            raise ProtocolError(
                f"node {sender} builds the state machine with {brief(obj.get('state_machine'), 300)}, node "
                f"{self._node_id} with {ours!r}: every node of a cluster needs the same kv settings "
                "(--kv-maxmemory-bytes, --kv-eviction) and auth settings (--auth-public-key, --auth-leeway-ms)"
            )
        return sender

    async def _handle_inbound(self, tcp: trio.SocketStream) -> None:
        stream: trio.abc.Stream = tcp
        if self._tls is not None:
            # The handshake runs inside the first read, under the handshake timeout: a dialer
            # without a certificate of the cluster CA fails it before any frame is read.
            stream = TlsStream(tcp, self._tls.peer_server, server_side=True)
        conn = _Inbound()
        oldest = self._handshaking.add(conn)
        if oldest is not None:
            oldest.scope.cancel()
        try:
            with conn.scope:
                await self._receive(stream, conn)
            if conn.scope.cancelled_caught and not conn.sender:
                self.connections_refused += 1
                await self._refuse(
                    stream, ProtocolError(f"more than {self._handshaking.limit} peer connections wait for their handshake: closing the oldest")
                )
        except TrimaranError as exc:
            # Malformed, oversized or truncated input: say why (best effort) and close.
            self.connections_refused += 1
            log.warning("node %d: closing a peer connection: %s", self._node_id, exc)
            await self._refuse(stream, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if isinstance(stream, TlsStream) and not stream.session.handshake_done:
                self.tls_refused += 1
                log.warning("node %d: refused a peer connection's TLS handshake: %s", self._node_id, exc)
        finally:
            self._handshaking.discard(conn)
            if self._inbound.get(conn.sender) is conn:
                del self._inbound[conn.sender]

    def _handshaken(self, conn: _Inbound, sender: int) -> None:
        """``conn`` is ``sender``'s now: it replaces that peer's older connection, if any."""
        self._handshaking.discard(conn)
        old = self._inbound.pop(sender, None)
        if old is not None:
            self.connections_replaced += 1
            log.info("node %d: peer %d connected again; closing its older connection", self._node_id, sender)
            old.scope.cancel()
        if len(self._inbound) >= self._config.peer_connections_max:
            raise ProtocolError("too many peer connections")
        conn.sender = sender
        self._inbound[sender] = conn

    async def _receive(self, stream: trio.abc.Stream, conn: _Inbound) -> None:
        # The handshake is tiny: until it is in, a frame header over 4 KiB is refused at once.
        decoder = FrameDecoder(HELLO_FRAME_BYTES_MAX)
        try:
            with trio.move_on_after(self._config.handshake_timeout_ms / 1000) as deadline:
                first = await read_frame(stream, decoder)
            if deadline.cancelled_caught:
                raise ProtocolError(f"no peer_hello within {self._config.handshake_timeout_ms} ms")
            if first is None:
                return
            hello = unpack(first, size_bytes_max=HELLO_FRAME_BYTES_MAX)
            sender = self._check_hello(hello)
            if isinstance(stream, TlsStream):
                holder = peer_node_id(stream.getpeercert())
                if holder != sender:
                    raise ProtocolError(f"node {sender}'s hello came with the certificate of node {holder}")
        except TrimaranError as exc:
            # The caller is not known yet: the why (our cluster id, our settings) stays in our log.
            event(log, logging.WARNING, "peer_refused", "node %d: refusing a peer handshake: %s", self._node_id, exc, reason="bad_hello")
            raise ProtocolError(HANDSHAKE_REFUSED) from None
        self._handshaken(conn, sender)
        if self.clock is not None:
            self.clock.on_peer_hello(sender, hello)
        decoder.frame_bytes_max = limits.frame_bytes_max
        while True:
            frame = await read_frame(stream, decoder)
            if frame is None:
                return
            # Every frame that arrived with it is delivered before the driver's round starts (the
            # last one starts it): one round, one write and one acknowledgement for all of them.
            msgs: list[Message] = []
            error: TrimaranError | None = None
            try:
                while frame is not None:
                    msg = self._decode(frame, sender)
                    if msg is not None:
                        msgs.append(msg)
                    frame = decoder.next_frame()
            except TrimaranError as exc:  # what came before it is still delivered
                error = exc
            self.frames_received += len(msgs)
            last = len(msgs) - 1
            for i, msg in enumerate(msgs):
                await self._deliver(msg, i < last)
            if error is not None:
                raise error

    def _decode(self, frame: bytes, sender: int) -> Message | None:
        """The Raft message in ``frame``, or None for a clock frame (handed to the clock monitor)."""
        obj = unpack(frame)
        if is_clock_frame(obj):
            if self.clock is not None:
                self.clock.on_frame(sender, obj)
            return None
        return message_from_peer(obj, sender, self._node_id)

    async def _refuse(self, stream: trio.abc.Stream, exc: TrimaranError) -> None:
        await linger_close(stream, error_frame(exc))
