"""TLS on both ports (issue 9): ``certs init``/``certs issue``, a TLS cluster that serves TLS
clients, mutual TLS between peers (no certificate of the cluster CA, or another node's certificate:
no Raft), clients that do not trust the CA, and the secure-by-default refusal to listen beyond
loopback without TLS and auth."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
import trio

from trimaran.client.client import Client
from trimaran.errors import ConfigError, TlsError, Unavailable
from trimaran.protocols.tls import TlsSession
from trimaran.node.config import Address, NodeConfig
from trimaran.node.tls import CA_CERT, CA_KEY, init_certs, issue_cert, node_cert_name, node_key_name, peer_node_id
from trimaran.node.transport import PEER_PROTOCOL_VERSION, peer_hello
from trimaran.protocols.codec import pack
from trimaran.protocols.framing import encode_frame

from tests.node.helpers import in_process_cluster

TIMEOUT_S = 15


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tls")
    init_certs(root, range(1, 5))
    return root


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("other-ca")
    init_certs(root, [1, 2, 3])
    return root


# ---------------------------------------------------------------------------- certs


def test_certs_init_writes_a_ca_and_node_files_with_private_keys_0600(tmp_path: Path) -> None:
    written = init_certs(tmp_path / "tls", [1, 2, 3])
    names = sorted(p.name for p in written)
    assert names == sorted([CA_CERT, CA_KEY] + [f(i) for i in (1, 2, 3) for f in (node_cert_name, node_key_name)])
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.name.endswith("key.pem") else 0o644), (path, oct(mode))


def test_certs_never_overwrite_and_issue_adds_a_node(tmp_path: Path) -> None:
    init_certs(tmp_path, [1])
    before = (tmp_path / CA_KEY).read_bytes()
    with pytest.raises(ConfigError, match="already holds a cluster CA"):
        init_certs(tmp_path, [1])
    with pytest.raises(ConfigError, match="exists already"):
        issue_cert(tmp_path, 1)
    written = issue_cert(tmp_path, 7, hosts=["node7.example", "10.0.0.7"])
    assert [p.name for p in written] == [node_cert_name(7), node_key_name(7)]
    assert (tmp_path / CA_KEY).read_bytes() == before
    # It names the --host names (what clients check the host they dial against).
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((tmp_path / node_cert_name(7)).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "node7.example" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]


@pytest.mark.parametrize("host", ["", "bad host", "a..b", "x" * 300])
def test_certs_refuse_a_host_that_is_no_name(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError):
        init_certs(tmp_path, [1], hosts=[host])
    assert not (tmp_path / CA_KEY).exists()


def test_peer_node_id_reads_only_a_node_common_name() -> None:
    assert peer_node_id({"subject": ((("commonName", "node-12"),),)}) == 12
    assert peer_node_id({"subject": ((("commonName", "node-x"),),)}) is None
    assert peer_node_id({"subject": ((("organizationName", "node-1"),),)}) is None
    assert peer_node_id(None) is None and peer_node_id({}) is None


# ---------------------------------------------------------------------------- secure by default


def _config(host: str, **changes: object) -> NodeConfig:
    return NodeConfig(1, Address(host, 7001), Address(host, 7101), (), "/tmp/unused", **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "db.example", "::"])
def test_a_node_beyond_loopback_refuses_to_start_without_tls_and_auth(host: str, tls_dir: Path) -> None:
    from trimaran.protocols import tokens
    from trimaran.protocols.tokens import TrustedKey

    with pytest.raises(ConfigError, match=r"refusing to listen on .* without TLS \(--tls-dir\) and auth .*--insecure"):
        _config(host).validate()
    with pytest.raises(ConfigError, match=r"without auth \(--auth-public-key\)"):
        _config(host, tls_dir=str(tls_dir)).validate()
    key = TrustedKey("k", tokens.public_key_of(tokens.new_private_key()))
    with pytest.raises(ConfigError, match=r"without TLS \(--tls-dir\):"):
        _config(host, auth_keys=(key,)).validate()
    _config(host, tls_dir=str(tls_dir), auth_keys=(key,)).validate()
    _config(host, insecure=True).validate()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.9.9.9", "::1", "localhost"])
def test_a_loopback_node_needs_neither(host: str) -> None:
    _config(host).validate()


# ---------------------------------------------------------------------------- a TLS cluster


async def test_a_tls_cluster_serves_tls_clients_and_refuses_the_rest(tmp_path: Path, tls_dir: Path, other_ca: Path) -> None:
    async with in_process_cluster(tmp_path, 3, tls_dir=str(tls_dir)) as cluster:
        with trio.fail_after(TIMEOUT_S):
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            endpoints = [str(cluster.client_address(i)) for i in (1, 2, 3)]
            async with Client(endpoints, ca_file=str(tls_dir / CA_CERT), timeout_ms=5_000) as c:
                await c.kv.set("k", "over tls")
                assert (await c.kv.get("k")).value == b"over tls"
                status = await c.status()
                assert status["commit_index"] >= 2
            # Every follower applied it: replication ran over the mutual-TLS peer connections.
            await cluster.wait_for(
                lambda: all(cluster.status(i)["applied_index"] >= status["commit_index"] for i in (1, 2, 3)),
                what="followers caught up over TLS",
            )
            assert all(cluster.nodes[i].transport.tls_refused == 0 for i in (1, 2, 3))  # type: ignore[union-attr]

            # A client trusting another CA: a typed TlsError at once, not a retry until the deadline.
            async with Client(endpoints, ca_file=str(other_ca / CA_CERT), timeout_ms=5_000) as c:
                with pytest.raises(TlsError, match="certificate verify failed"):
                    await c.kv.get("k")
            # A plain-TCP client: the node cannot read its hello as TLS and closes; nothing served.
            async with Client(endpoints, timeout_ms=5_000, connect_rounds_max=1) as c:
                with pytest.raises(Unavailable):
                    await c.kv.get("k")
            assert cluster.status(leader)["role"] == "leader"


async def test_a_connection_whose_session_fails_to_encrypt_closes_and_the_node_serves_the_others(
    tmp_path: Path, tls_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encrypting can fail on a session the client's input broke (ssl.SSLError): that connection
    closes (as a failed write closes it), the other gets its answers, and the node stays up (the
    client of the closed one reads again on a new connection)."""
    poisoned: set[int] = set()
    real_encrypt = TlsSession.encrypt

    def encrypt(self: TlsSession, data: bytes | bytearray | memoryview) -> bytes:
        if id(self) in poisoned:
            raise ssl.SSLError("a session in its error state")
        return real_encrypt(self, data)

    monkeypatch.setattr(TlsSession, "encrypt", encrypt)
    async with in_process_cluster(tmp_path, 3, tls_dir=str(tls_dir)) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            ca_file = str(tls_dir / CA_CERT)
            endpoint = [str(cluster.client_address(leader))]
            async with Client(endpoint, ca_file=ca_file, timeout_ms=5_000) as one, Client(endpoint, ca_file=ca_file, timeout_ms=5_000) as two:
                await one.kv.set("a", "1")
                await two.kv.set("b", "2")
                server = cluster.nodes[leader].client_server
                assert server is not None and len(server._connections) == 2
                victim = next(iter(server._connections))
                assert victim._tls is not None
                poisoned.add(id(victim._tls))
                got: list[bytes | None] = []

                async def get(c: Client, key: str) -> None:
                    got.append((await c.kv.get(key)).value)

                async with trio.open_nursery() as nursery:
                    for _ in range(5):
                        nursery.start_soon(get, one, "a")
                        nursery.start_soon(get, two, "b")
                await cluster.wait_for(lambda: victim not in server._connections, what="the broken session's connection closed")
            assert victim.closed and sorted(got) == [b"1"] * 5 + [b"2"] * 5
            assert cluster.status(leader)["role"] == "leader"


async def _peer_refused(address: Address, ctx: ssl.SSLContext | None, sender: int, recipient: int) -> bytes:
    """Dial ``address`` (with TLS if ``ctx``), send a well-formed peer_hello as ``sender``, and return
    what came back before the connection closed."""
    tcp = await trio.open_tcp_stream(address.host, address.port)
    stream: trio.abc.Stream = tcp if ctx is None else trio.SSLStream(tcp, ctx, server_side=False)
    received = b""
    try:
        hello = peer_hello("trimaran", sender, recipient, {"kv": {"maxmemory_bytes": None, "eviction_policy": "lru"}})
        assert hello["version"] == PEER_PROTOCOL_VERSION
        await stream.send_all(encode_frame(pack(hello)))
        with trio.move_on_after(5):
            while chunk := await stream.receive_some(65536):
                received += chunk
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(stream)
    return received


def _dialer_context(tls: Path, node_id: int | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls / CA_CERT))
    ctx.check_hostname = False
    if node_id is not None:
        ctx.load_cert_chain(tls / node_cert_name(node_id), tls / node_key_name(node_id))
    return ctx


async def test_the_peer_port_admits_only_the_named_node_with_the_cluster_ca(tmp_path: Path, tls_dir: Path, other_ca: Path) -> None:
    async with in_process_cluster(tmp_path, 3, tls_dir=str(tls_dir)) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            await cluster.leader(timeout_s=TIMEOUT_S)
            node = cluster.nodes[1]
            transport = node.transport
            assert transport is not None and node.peer_address is not None
            refused_before = transport.tls_refused
            address = node.peer_address
            # Plain TCP, no certificate, another CA's certificate of "node 2": the TLS handshake fails.
            await _peer_refused(address, None, 2, 1)
            await _peer_refused(address, _dialer_context(tls_dir, None), 2, 1)
            await _peer_refused(address, _dialer_context(other_ca, 2), 2, 1)
            await cluster.wait_for(lambda: transport.tls_refused >= refused_before + 3, what="three TLS refusals")
            # The cluster CA's certificate of node 4, claiming to be node 2: refused after the hello.
            answer = await _peer_refused(address, _dialer_context(tls_dir, 4), 2, 1)
            assert b"peer handshake refused" in answer
            # None of them was taken for node 2 (its connection would have been replaced), and
            # the real peers still talk to node 1.
            assert transport.connections_replaced == 0
            before = transport.frames_received
            await cluster.wait_for(lambda: transport.frames_received > before, what="real peers still heard")
