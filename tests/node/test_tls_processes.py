"""Issue 9 on real processes: a 3-node cluster with TLS and auth made from the CLI (``certs init``,
``auth keygen``, ``auth token``); a process without a certificate of the cluster CA cannot take part
in the consensus; a revocation closes a live connection on every node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.client.real_cluster import free_ports
from tests.node.helpers import HOST
from tests.node.procs import ProcessCluster
from trimaran.client.client import Client
from trimaran.errors import TlsError, Unauthenticated, Unavailable, error_from_wire
from trimaran.node.tls import CA_CERT, client_context
from trimaran.protocols.client_protocol import hello
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.framing import FrameDecoder, encode_frame

pytestmark = pytest.mark.slow

WAIT_S = 30


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "trimaran", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


async def _read_obj(stream: trio.abc.Stream, decoder: FrameDecoder) -> Any:
    while (frame := decoder.next_frame()) is None:
        data = await stream.receive_some(65536)
        if not data:
            return None
        decoder.feed(data)
    return unpack(frame)


async def open_session(cluster: ProcessCluster, node_id: int, token: str) -> tuple[trio.abc.Stream, FrameDecoder]:
    """A raw TLS connection to one node, past its hello (a client library would follow the leader)."""
    address = cluster.client[node_id]
    assert cluster.ssl_context is not None
    tcp = await trio.open_tcp_stream(address.host, address.port)
    stream = trio.SSLStream(tcp, cluster.ssl_context, server_hostname=address.host)
    decoder = FrameDecoder()
    await stream.send_all(encode_frame(pack(hello("trimaran", token))))
    welcome = await _read_obj(stream, decoder)
    assert isinstance(welcome, dict) and welcome["type"] == "welcome", welcome
    return stream, decoder


async def test_a_tls_and_auth_cluster_from_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TRIMARAN_TOKEN", "TRIMARAN_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    tls = tmp_path / "tls"
    cli("certs", "init", str(tls), "--nodes", "3")
    key = tmp_path / "signing.key"
    cli("auth", "keygen", str(key))
    admin = cli("auth", "token", "--key", str(key), "--sub", "ops", "--scope", "admin:*", "--ttl", "1h").strip()
    reader = cli(
        "auth", "token", "--key", str(key), "--sub", "app", "--scope", "kv:read:*", "--ttl", "1h", "--jti", "app-1"
    ).strip()

    cluster = ProcessCluster(tmp_path, 3, ("--tls-dir", str(tls), "--auth-public-key", f"{key}.pub"))
    cluster.token = admin
    cluster.ssl_context = client_context(tls / CA_CERT)
    impostor: subprocess.Popen[bytes] | None = None
    try:
        cluster.start_all()
        leader, term = await cluster.leader(timeout_s=WAIT_S)
        endpoints = [str(cluster.client[i]) for i in cluster.ids]
        async with Client(endpoints, token=admin, ca_file=str(tls / CA_CERT), timeout_ms=10_000) as c:
            await c.kv.set("k", "v")
            assert (await c.kv.get("k")).value == b"v"
        # A plain-TCP client is told what is missing, within one round over the endpoints.
        async with Client(endpoints, token=admin, timeout_ms=5_000, connect_rounds_max=1) as plain:
            with pytest.raises(Unavailable, match="a TLS node closes plain connections"):
                await plain.kv.get("k")
        # One that trusts another CA gets a typed TlsError at once.
        other = tmp_path / "other"
        cli("certs", "init", str(other), "--nodes", "1")
        async with Client(endpoints, token=admin, ca_file=str(other / CA_CERT), timeout_ms=5_000) as wrong:
            with pytest.raises(TlsError, match="certificate verify failed"):
                await wrong.kv.get("k")

        # A process claiming to be node 2, without a certificate of the cluster CA, campaigns
        # against nodes 1 and 3: its handshakes fail, no vote request reaches Raft, the term stays.
        impostor_ports = free_ports(2)
        with open(tmp_path / "impostor.log", "wb") as impostor_log:
            impostor = subprocess.Popen(
                [
                    sys.executable, "-m", "trimaran", "node", "run", "--id", "2",
                    "--listen", f"{HOST}:{impostor_ports[0]}", "--peer-listen", f"{HOST}:{impostor_ports[1]}",
                    "--data-dir", str(tmp_path / "impostor"),
                    "--peer", f"1={cluster.peer[1]}", "--peer", f"3={cluster.peer[3]}",
                ],  # fmt: skip
                stdout=impostor_log,
                stderr=subprocess.STDOUT,
            )
        refused: dict[int, int] = {}
        with trio.fail_after(WAIT_S):
            while not all(refused.get(i, 0) >= 3 for i in (1, 3)):
                await trio.sleep(0.2)
                for i in (1, 3):
                    status = await cluster.status(i)
                    if status:
                        refused[i] = status["metrics"]["peer_tls_refused"]
        for i in cluster.ids:
            status = await cluster.status(i)
            assert status is not None and status["term"] == term, (i, status and status["term"], term)
        impostor.terminate()
        impostor.wait(timeout=10)

        # A reader holds a live connection on every node; revoking its token closes all three.
        sessions = [await open_session(cluster, i, reader) for i in cluster.ids]
        async with Client(endpoints, token=admin, ca_file=str(tls / CA_CERT), timeout_ms=10_000) as c:
            assert await c.auth.revoke("app-1") is True
        with trio.fail_after(WAIT_S):
            for stream, decoder in sessions:
                closing = await _read_obj(stream, decoder)
                assert isinstance(closing, dict) and closing["type"] == "error", closing
                error = error_from_wire(closing["error"])
                assert error.code == "unauthenticated" and error.details.get("reason") == "revoked", error.to_wire()
                await trio.aclose_forcefully(stream)
        for i in cluster.ids:
            status = await cluster.status(i)
            assert status is not None and status["metrics"]["client_auth_connections_closed"] == 1
        # And a new connection with it is refused.
        async with Client(endpoints, token=reader, ca_file=str(tls / CA_CERT), timeout_ms=5_000) as c:
            with pytest.raises(Unauthenticated, match="revoked"):
                await c.kv.get("k")
    finally:
        if impostor is not None and impostor.poll() is None:
            impostor.kill()
            impostor.wait(timeout=10)
        cluster.close()
