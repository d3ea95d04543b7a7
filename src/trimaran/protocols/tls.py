"""TLS as bytes in, bytes out: an ``ssl.SSLObject`` over two memory BIOs, no IO of its own.

Why not trio's ``SSLStream``: it owns the socket, so every byte must leave through an ``await
send_all`` from a task. The node and the client write plain TCP connections directly from the code
that produces the bytes (one non-blocking ``write`` per driver round, no task switch; see
:mod:`trimaran.node.transport` and :mod:`trimaran.client.connection`), and measured over TLS the
extra task switches and ``SSLStream``'s per-call machinery cost a third of the durable writes at 64
clients. With a session that only turns bytes into bytes, the same direct writes carry ciphertext:
:meth:`TlsSession.encrypt` before the ``write``, :meth:`TlsSession.decrypt` after the ``read``.

The handshake is driven by the caller: :meth:`TlsSession.handshake_step` says what to send and
whether more input is needed. One session is used by one trio task at a time on each direction,
never concurrently (an ``SSLObject`` is not thread-safe; trio's tasks never interleave inside a
synchronous call).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

#: Plaintext bytes asked of the session per ``read`` call: a TLS record's most (2**14), so that a
#: read that returns less took the whole record (see :meth:`TlsSession.decrypt`).
READ_CHUNK_BYTES = 16 * 1024


class TlsClosed(Exception):
    """The peer ended the TLS session (close_notify) or the session failed after its handshake."""


class TlsSession:
    """One TLS connection's state. ``server_hostname``: the name a client checks the server's
    certificate against (None: the context must not check host names)."""

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname)
        self.handshake_done = False
        #: The peer's close_notify was read: every later :meth:`decrypt` raises ``TlsClosed``.
        self.peer_closed = False

    def handshake_step(self, received: bytes = b"") -> tuple[bytes, bool]:
        """Feed bytes received during the handshake; return (bytes to send now, done). Raises
        ``ssl.SSLError`` (``SSLCertVerificationError`` for a certificate that does not verify)."""
        if received:
            self._incoming.write(received)
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return self._outgoing.read(), False
        self.handshake_done = True
        return self._outgoing.read(), True

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """The ciphertext of ``data`` (and of anything the session had left to send before it)."""
        # One write takes it all (OpenSSL's default mode, no partial writes): the loop is a guard,
        # kept off the hot path, which runs once per record the node or the client sends.
        written = self._obj.write(data) if data else 0
        if written < len(data):
            view = memoryview(data)[written:]
            while view:
                view = view[self._obj.write(view) :]
        return self._outgoing.read()

    def decrypt(self, received: bytes | bytearray) -> bytes:
        """The plaintext that ``received`` completes (b"" if it completes none). Raises
        ``TlsClosed`` when the peer ended the session, ``ssl.SSLError`` for corrupt input."""
        incoming = self._incoming
        if received:
            incoming.write(received)
        elif not (incoming.pending or incoming.eof or self.peer_closed):
            # Nothing to read (the usual call before a receive, for what a handshake or an earlier
            # read left): spare the read that would only raise SSLWantReadError, an exception per
            # receive on every TLS connection.
            return b""
        obj = self._obj
        read = obj.read
        out: list[bytes] = []
        while True:
            try:
                chunk = read(READ_CHUNK_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                if out:
                    break  # hand over what came before the close; the next call raises
                raise TlsClosed("the peer closed the TLS session") from None
            if not chunk:  # what ``read`` makes of the peer's close_notify, once it is read
                self.peer_closed = True
                if out:
                    break
                raise TlsClosed("the TLS session ended")
            out.append(chunk)
            # A read shorter than READ_CHUNK_BYTES (a record's most) left no plaintext in the
            # session: with no input left either, the read that would only raise
            # SSLWantReadError is spared, and so is SSL_pending (a call through ssl.py) but after
            # a full one. Nothing is held in the session when this returns.
            if not incoming.pending and (len(chunk) < READ_CHUNK_BYTES or not obj.pending()):
                break
        return b"".join(out) if len(out) != 1 else out[0]

    @property
    def pending_output(self) -> bool:
        """Bytes the session produced on its own (e.g. while reading) wait to be sent."""
        return self._outgoing.pending > 0

    def take_output(self) -> bytes:
        return self._outgoing.read()

    def close_notify(self) -> bytes:
        """The bytes that tell the peer this side ends the session (it then reads EOF, not an error)."""
        try:
            self._obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLError):
            pass  # the peer's own close_notify is not awaited
        return self._outgoing.read()

    def feed_eof(self) -> None:
        """The transport ended: later reads raise instead of waiting for more."""
        self._incoming.write_eof()

    def getpeercert(self) -> dict[str, object] | None:
        """The verified peer certificate (``SSLObject.getpeercert()``), or None."""
        cert = self._obj.getpeercert()
        return cert if cert else None  # type: ignore[return-value]


async def run_handshake(
    session: TlsSession, send_all: Callable[[bytes], Awaitable[None]], receive_some: Callable[[], Awaitable[bytes]]
) -> None:
    """Drive ``session``'s handshake over the caller's transport (``receive_some`` returns b"" at
    EOF). Raises ``ssl.SSLError`` from the session, or ``TlsClosed`` if the transport ends first.
    Bytes that follow the handshake in the last read stay in the session for the first
    :meth:`TlsSession.decrypt`."""
    received = b""
    while True:
        out, done = session.handshake_step(received)
        if out:
            await send_all(out)
        if done:
            return
        received = await receive_some()
        if not received:
            raise TlsClosed("the connection closed during the TLS handshake")
