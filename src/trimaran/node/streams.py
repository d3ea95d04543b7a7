"""Small stream helpers shared by the client server and the peer transport."""

from __future__ import annotations

import os
import ssl
from typing import Generic, Hashable, TypeVar

import trio

from trimaran import limits
from trimaran.node.config import Address
from trimaran.protocols.framing import FrameDecoder
from trimaran.protocols.tls import TlsClosed, TlsSession, run_handshake

#: Bytes asked of the kernel per receive.
RECEIVE_BYTES = 64 * limits.KIB
#: A refused connection: how long, and how many bytes of its input, to discard before closing.
LINGER_S = 0.5
LINGER_BYTES_MAX = 16 * limits.MIB

_CLOSED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)

C = TypeVar("C", bound=Hashable)


class PendingHandshakes(Generic[C]):
    """Connections that have not finished their handshake, oldest first, at most ``limit`` of them.

    The policy both ports share: unauthenticated sockets are counted apart from the real ones, and
    one too many makes the oldest (the slowest to finish) go, so sockets that never finish cannot
    keep a client or a peer out. The caller closes the connection :meth:`add` returns, its own way.
    """

    def __init__(self, limit: int) -> None:
        assert limit > 0
        self.limit = limit
        self._pending: dict[C, None] = {}  # a dict keeps insertion order
        #: Connections closed for being the oldest over the limit (reported by the status op).
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, conn: C) -> C | None:
        """Count ``conn`` in; the oldest to close when that makes one too many, else None."""
        self._pending[conn] = None
        if len(self._pending) <= self.limit:
            return None
        oldest = next(iter(self._pending))
        del self._pending[oldest]
        self.evicted += 1
        return oldest

    def discard(self, conn: C) -> None:
        """``conn`` finished its handshake or closed."""
        self._pending.pop(conn, None)


async def open_listeners(address: Address, what: str) -> list[trio.SocketListener]:
    """Listen on ``address``; an ``OSError`` names the address and its use (one clear line)."""
    try:
        return await trio.open_tcp_listeners(address.port, host=address.host)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen for {what} on {address}: {exc.strerror or exc}") from None


class TlsStream(trio.abc.Stream):
    """TLS over a socket stream through a sans-IO :class:`~trimaran.protocols.tls.TlsSession`.

    Unlike ``trio.SSLStream`` it leaves the socket reachable (``socket``) so that the owner can
    keep writing directly from the code that produces the bytes: ``session.encrypt`` and then one
    non-blocking ``write``, exactly as over plain TCP. The handshake runs at the first
    ``send_all`` / ``receive_some`` (or :meth:`do_handshake`), so the caller's hello timeout bounds
    it. A failed handshake or corrupt input is ``trio.BrokenResourceError`` (the ``ssl.SSLError``
    as its cause). The peer's close, with or without close_notify, reads as EOF.
    """

    def __init__(
        self, tcp: trio.SocketStream, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        self.transport_stream = tcp
        self.socket = tcp.socket
        self.session = TlsSession(context, server_side=server_side, server_hostname=server_hostname)
        #: Handshaken, and what its last read brought along was handed over (by a receive_some):
        #: from then on :func:`read_frame` reads the socket and decrypts without this stream's
        #: coroutine, until the peer's close_notify was read (then receive_some says EOF).
        self.drained = False

    async def do_handshake(self) -> None:
        if self.session.handshake_done:
            return
        try:
            await run_handshake(self.session, self.transport_stream.send_all, lambda: receive_some(self.transport_stream))
        except (ssl.SSLError, TlsClosed) as exc:
            raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc

    def getpeercert(self) -> dict[str, object] | None:
        return self.session.getpeercert()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.session.handshake_done:  # (tested here: a coroutine per call costs, done or not)
            await self.do_handshake()
        await self.transport_stream.send_all(self.session.encrypt(data))

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Plaintext (any amount: ``max_bytes`` is not honoured), or b"" at EOF."""
        if not self.session.handshake_done:
            await self.do_handshake()
        plain = self.plaintext(b"")  # first what the handshake's last read brought along
        self.drained = True
        while plain is None:
            received = await receive_some(self.transport_stream)
            plain = self.plaintext(received) if received else b""
        return plain

    def plaintext(self, received: bytes) -> bytes | None:
        """What ``received`` (read from the socket) completes, with what the session held: None
        if it completes no record yet, b"" if the peer ended the session. Corrupt input is
        ``trio.BrokenResourceError``."""
        try:
            return self.session.decrypt(received) or None
        except TlsClosed:
            return b""
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS error: {exc}") from exc

    async def aclose(self) -> None:
        if self.session.handshake_done:
            try:  # best effort, never waiting: the peer then reads a clean end rather than a cut
                os.write(self.socket.fileno(), self.session.close_notify())
            except (OSError, ssl.SSLError):
                pass
        await self.transport_stream.aclose()


async def read_frame(stream: trio.abc.ReceiveStream, decoder: FrameDecoder) -> bytes | None:
    """The next frame from ``stream``, or None on a clean close between frames.

    Raises ``FrameTooLarge`` / ``ProtocolError`` (from the decoder) on an oversized or truncated frame.
    """
    while True:
        frame = decoder.next_frame()
        if frame is not None:
            return frame
        if decoder.closed:
            return None
        if type(stream) is trio.SocketStream:
            decoder.feed(await receive_some(stream))
        elif type(stream) is TlsStream and stream.drained and not stream.session.peer_closed:
            received = await receive_some(stream.transport_stream)
            plain = stream.plaintext(received) if received else b""
            if plain is not None:
                decoder.feed(plain)
        else:
            decoder.feed(await stream.receive_some(RECEIVE_BYTES))


async def receive_some(stream: trio.SocketStream) -> bytes:
    """What ``stream.receive_some`` returns (b"" at EOF), for a single reader, with one trip through
    the scheduler per receive instead of two or three.

    trio reads first and then yields even when data was there, and reads again (and fails with
    EAGAIN) before it parks; on a connection that carries one small message per round trip that is
    an extra pass of the run loop and an extra system call per message. Waiting until the socket is
    readable and then reading once keeps the same properties: every call is a checkpoint (it always
    parks in ``wait_readable``, so a peer that floods cannot starve other tasks) and is cancellable.
    A broken connection raises ``OSError`` (callers treat it like trio's BrokenResourceError).
    """
    sock = stream.socket
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return os.read(sock.fileno(), RECEIVE_BYTES)
        except BlockingIOError:
            continue  # a spurious wake-up: wait again


async def linger_close(stream: trio.abc.Stream, last: bytes = b"") -> None:
    """Send ``last`` (an error frame), then close so that the peer really reads it.

    Closing a TCP socket with unread input makes the kernel send RST, and an RST can make the other
    side drop data it has not read yet — our error frame. So: send, shut our side (FIN), discard
    what the peer still sends for a bounded time, then close. Over TLS, ``last`` goes through the
    session and the rest happens on the TCP stream under it (TLS has no half-close; the peer reads
    the frame, then sees the connection end).
    """
    with trio.move_on_after(LINGER_S):
        try:
            if last:
                await stream.send_all(last)
            tcp = stream.transport_stream if isinstance(stream, TlsStream) else stream
            assert isinstance(tcp, trio.abc.HalfCloseableStream), type(tcp)
            await tcp.send_eof()
            discarded = 0
            while discarded < LINGER_BYTES_MAX:
                data = await tcp.receive_some(RECEIVE_BYTES)
                if not data:
                    break
                discarded += len(data)
        except _CLOSED:
            pass
    await trio.aclose_forcefully(stream)
