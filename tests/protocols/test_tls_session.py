"""The sans-IO TLS session (trimaran.protocols.tls): a client and a server session joined by
hand, byte for byte, with certificates from ``certs init``."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trimaran.node.tls import CA_CERT, init_certs, node_tls
from trimaran.protocols.tls import TlsClosed, TlsSession


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls")
    init_certs(root, [1])
    return root


def connected(tls_dir: Path) -> tuple[TlsSession, TlsSession]:
    server = TlsSession(node_tls(tls_dir, 1).client_server, server_side=True)
    client = TlsSession(ssl.create_default_context(cafile=str(tls_dir / CA_CERT)), server_side=False, server_hostname="localhost")
    to_server, _ = client.handshake_step()
    for _ in range(10):  # a TLS 1.3 handshake takes two flights each way at most
        to_client, _ = server.handshake_step(to_server)
        to_server, _ = client.handshake_step(to_client)
        if client.handshake_done and server.handshake_done and not to_server:
            break
    # The server's last flight (session tickets) is read by the client along with the first data.
    assert client.handshake_done and server.handshake_done
    return client, server


def test_a_handshake_then_bytes_both_ways_in_any_cut(tls_dir: Path) -> None:
    client, server = connected(tls_dir)
    assert client.getpeercert() is not None
    message = bytes(range(256)) * 400  # several TLS records
    wire = client.encrypt(message)
    assert message not in wire
    got = b""
    for start in range(0, len(wire), 1000):  # records cut anywhere arrive whole
        got += server.decrypt(wire[start : start + 1000])
    assert got == message
    assert client.decrypt(server.encrypt(b"answer")) == b"answer"


def test_a_tampered_record_is_an_ssl_error_and_close_notify_ends_the_session(tls_dir: Path) -> None:
    client, server = connected(tls_dir)
    wire = bytearray(client.encrypt(b"hello"))
    wire[-1] ^= 1
    with pytest.raises(ssl.SSLError):
        server.decrypt(bytes(wire))
    client2, server2 = connected(tls_dir)
    assert server2.decrypt(b"") == b""  # nothing buffered: no plaintext, no error
    # Data, then close_notify in the same read: the data first, the close at the next call.
    wire2 = client2.encrypt(b"last words") + client2.close_notify()
    assert server2.decrypt(wire2) == b"last words"
    with pytest.raises(TlsClosed):
        server2.decrypt(b"")


def test_a_client_that_does_not_trust_the_ca_fails_its_handshake(tls_dir: Path, tmp_path: Path) -> None:
    init_certs(tmp_path, [1])
    server = TlsSession(node_tls(tls_dir, 1).client_server, server_side=True)
    client = TlsSession(ssl.create_default_context(cafile=str(tmp_path / CA_CERT)), server_side=False, server_hostname="localhost")
    hello, _ = client.handshake_step()
    answer, _ = server.handshake_step(hello)
    with pytest.raises(ssl.SSLCertVerificationError):
        client.handshake_step(answer)


def test_a_cut_without_close_notify_is_an_ssl_eof_error(tls_dir: Path) -> None:
    client, server = connected(tls_dir)
    server.feed_eof()
    with pytest.raises(ssl.SSLEOFError):
        server.decrypt(b"")


def test_bytes_that_came_with_the_handshake_are_read_by_a_decrypt_of_nothing(tls_dir: Path) -> None:
    # run_handshake leaves what followed the last flight in the session; decrypt(b"") (which
    # otherwise returns at once, not reading) must hand it over, and then find nothing more.
    client, server = connected(tls_dir)
    assert client.handshake_step(server.encrypt(b"first answer"))[1]
    assert client.decrypt(b"") == b"first answer"
    assert client.decrypt(b"") == b""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.one_of(st.integers(1, 300), st.sampled_from([16_383, 16_384, 16_385, 32_768, 40_000])), min_size=1, max_size=6),
    cuts=st.lists(st.integers(1, 50_000), max_size=8),
)
def test_records_of_any_size_cut_anywhere_decrypt_whole_and_leave_nothing_behind(
    tls_dir: Path, sizes: list[int], cuts: list[int]
) -> None:
    # decrypt stops reading once its input is used up and the last read was shorter than a
    # record's most, instead of asking SSL_pending: every record still comes out, whatever its
    # size (a full 16 KiB one included) and however the bytes are cut.
    client, server = connected(tls_dir)
    messages = [bytes([i % 251]) * size for i, size in enumerate(sizes)]
    wire = b"".join(client.encrypt(m) for m in messages)
    got = b""
    start = 0
    for cut in sorted(set(cuts)) + [len(wire)]:
        got += server.decrypt(wire[start:cut])
        start = max(start, cut)
    assert got == b"".join(messages)
    # Nothing held back in the session: the next record comes out alone.
    assert server.decrypt(client.encrypt(b"next")) == b"next"
