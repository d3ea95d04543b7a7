"""A node's TLS stream (trimaran.node.streams.TlsStream) read through read_frame over a loopback
socket, with the far side a bare TlsSession driven by hand: frames cut anywhere, several records in
one read, what came along with the handshake, a clean close and a corrupt record."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trio

from trimaran.node.streams import TlsStream, read_frame
from trimaran.node.tls import CA_CERT, init_certs, node_tls
from trimaran.protocols.framing import FrameDecoder, encode_frame
from trimaran.protocols.tls import TlsSession


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls")
    init_certs(root, [1])
    return root


async def _sockets() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    return server, client


async def _handshake(tcp: trio.SocketStream, session: TlsSession, then: bytes = b"") -> None:
    """The client side of the handshake, by hand; ``then`` (plaintext) goes out encrypted in the
    same write as its last flight."""
    received = b""
    while True:
        out, done = session.handshake_step(received)
        if done:
            await tcp.send_all(out + (session.encrypt(then) if then else b""))
            return
        if out:
            await tcp.send_all(out)
        received = await tcp.receive_some(65536)


async def _pair(tls_dir: Path) -> tuple[TlsStream, trio.SocketStream, TlsSession]:
    server_tcp, client_tcp = await _sockets()
    stream = TlsStream(server_tcp, node_tls(tls_dir, 1).client_server, server_side=True)
    session = TlsSession(ssl.create_default_context(cafile=str(tls_dir / CA_CERT)), server_side=False, server_hostname="localhost")
    return stream, client_tcp, session


async def test_frames_cut_anywhere_and_many_records_per_read_arrive_whole(tls_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    receive_some = TlsStream.receive_some

    async def counted(self: TlsStream, max_bytes: int | None = None) -> bytes:
        nonlocal calls
        calls += 1
        return await receive_some(self, max_bytes)

    monkeypatch.setattr(TlsStream, "receive_some", counted)
    stream, tcp, session = await _pair(tls_dir)
    frames = [bytes([i]) * size for i, size in enumerate([1, 300, 20_000, 16_384, 5])]
    decoder = FrameDecoder()
    got: list[bytes | None] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_handshake, tcp, session)
            await stream.do_handshake()
        # Each frame its own record(s), all in one go, then cut into uneven writes.
        wire = b"".join(session.encrypt(encode_frame(f)) for f in frames)
        for start in range(0, len(wire), 7_000):
            await tcp.send_all(wire[start : start + 7_000])
        while len(got) < len(frames):
            got.append(await read_frame(stream, decoder))
        # The first read went through receive_some (the handshake's leftovers); the rest read
        # and decrypted in read_frame itself.
        assert stream.drained and calls == 1
        await tcp.send_all(session.encrypt(encode_frame(b"after")) + session.close_notify())
        assert await read_frame(stream, decoder) == b"after"
        # The close_notify came in the same read: the next read_frame must not wait on the
        # socket (the peer keeps it open) but go through receive_some, which says EOF.
        assert stream.session.peer_closed
        assert await read_frame(stream, decoder) is None
        assert calls == 2
    assert got == frames
    await stream.aclose()
    await tcp.aclose()


@pytest.mark.parametrize("explicit", [False, True], ids=["handshake-in-first-read", "handshake-first"])
async def test_a_frame_sent_with_the_last_handshake_flight_is_read(tls_dir: Path, explicit: bool) -> None:
    # The client's Finished and its first frame in one write: the server's handshake reads both,
    # and the frame waits in the session, not in the socket. With the handshake run first
    # (do_handshake, as a dialing peer does) the next read must still hand it over rather than
    # wait on the socket, where nothing more will come.
    stream, tcp, session = await _pair(tls_dir)
    decoder = FrameDecoder()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_handshake, tcp, session, encode_frame(b"hello"))
            if explicit:
                await stream.do_handshake()
            else:
                assert await read_frame(stream, decoder) == b"hello"
        if explicit:
            assert not stream.drained
            assert await read_frame(stream, decoder) == b"hello"
    await stream.aclose()
    await tcp.aclose()


async def test_a_corrupt_record_breaks_the_stream(tls_dir: Path) -> None:
    stream, tcp, session = await _pair(tls_dir)
    decoder = FrameDecoder()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_handshake, tcp, session, encode_frame(b"hello"))
            assert await read_frame(stream, decoder) == b"hello"
        wire = bytearray(session.encrypt(encode_frame(b"tampered")))
        wire[-1] ^= 1
        await tcp.send_all(bytes(wire))
        with pytest.raises(trio.BrokenResourceError, match="TLS error"):
            await read_frame(stream, decoder)
    await stream.aclose()
    await tcp.aclose()
