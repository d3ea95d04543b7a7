"""The RESP poller on a follower (:mod:`trimaran.node.resp.poller`): the writes of every connection
of a pass go to the leader together, one group per token, each applied once and answered in order
on its own connection; reads stay on the follower."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from tests.client.real_cluster import free_ports
from tests.node.helpers import HOST, TokenSigner, in_process_cluster
from tests.node.test_resp_poller import ask, bulk, command, connect, read_exactly, send_pipelines_and_check_answers, until
from tests.node.test_resp_server import resp_address
from trimaran.node.config import Address
from trimaran.node.resp.poller import Poller


def follower_poller(cluster: object, follower: int) -> Poller:
    server = cluster.nodes[follower].resp_server  # type: ignore[attr-defined]
    assert server is not None and server.poller is not None
    return server.poller


async def test_a_followers_writes_go_to_the_leader_together_and_are_applied_once(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)
        poller = follower_poller(cluster, follower)
        streams = [await connect(resp_address(cluster, follower)) for _ in range(30)]
        for i, stream in enumerate(streams):  # (a first write registers the session through the leader)
            await ask(stream, command("SET", f"k{i}", "start"), b"+OK\r\n")
        await until(lambda: poller.connections == len(streams), "every follower connection in its poller")
        groups, passes = poller.forwarded_groups, poller.forwarded_passes
        await send_pipelines_and_check_answers(streams, 4)
        # Served by the follower's poller, several connections' writes in one forwarded group.
        assert poller.forwarded_passes > passes and poller.forwarded_groups > groups
        assert poller.widest > 1
        leader_stream = await connect(resp_address(cluster, leader))
        for i in range(len(streams)):  # each INCR applied once
            await ask(leader_stream, command("GET", f"c{i}"), bulk(b"4"))
        for stream in [*streams, leader_stream]:
            await stream.aclose()


async def test_a_followers_forwarded_groups_keep_each_connections_token(tmp_path: Path) -> None:
    """Connections of two tokens write in the same passes: each token's writes go to the leader
    under that token (the leader checks the scopes again), so both succeed; one token's write to
    the other's keys is refused."""
    signer = TokenSigner()
    tokens = {"a": signer.token(["kv:*:a*"], "ta"), "b": signer.token(["kv:*:b*"], "tb")}
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0), auth_keys=(signer.trusted,)) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)
        poller = follower_poller(cluster, follower)
        conns: list[tuple[str, trio.SocketStream]] = []
        for i in range(24):
            name = "ab"[i % 2]
            stream = await connect(resp_address(cluster, follower))
            await ask(stream, command("AUTH", tokens[name]), b"+OK\r\n")
            await ask(stream, command("SET", f"{name}{i}", "start"), b"+OK\r\n")
            conns.append((name, stream))
        await until(lambda: poller.connections == len(conns), "every follower connection in its poller")
        groups, passes = poller.forwarded_groups, poller.forwarded_passes
        for round_ in range(5):
            for i, (name, stream) in enumerate(conns):
                await stream.send_all(command("INCR", f"{name}{i}n") + command("SET", f"{name}{i}", round_))
            for i, (name, stream) in enumerate(conns):
                expected = b":%d\r\n+OK\r\n" % (round_ + 1)
                assert await read_exactly(stream, len(expected)) == expected, (name, i, round_)
        # Some pass carried both tokens' writes: more groups than passes.
        assert poller.forwarded_groups - groups > poller.forwarded_passes - passes
        name, stream = conns[0]
        refused = await read_after(stream, command("SET", "b-of-a", "x"))
        assert refused.startswith(b"-NOPERM"), refused
        for _, stream in conns:
            await stream.aclose()


async def read_after(stream: trio.SocketStream, request: bytes) -> bytes:
    """The one-line reply to ``request``."""
    await stream.send_all(request)
    data = b""
    with trio.fail_after(10):
        while not data.endswith(b"\r\n"):
            data += await stream.receive_some(4096)
    return data


async def test_a_followers_first_writes_are_handed_to_their_tasks_without_a_local_round(tmp_path: Path) -> None:
    """A connection's first write on a follower needs its client session, which only the leader
    registers: the poller hands the connection to its task (which registers it through the leader)
    rather than asking its own driver first, which would only refuse it as not the leader."""
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)
        poller = follower_poller(cluster, follower)
        requests = cluster.nodes[follower].driver.requests  # type: ignore[attr-defined]
        streams = [await connect(resp_address(cluster, follower)) for _ in range(10)]
        for stream in streams:  # a read first: the connection then waits in the poller, no session yet
            await ask(stream, command("GET", "nothing"), b"$-1\r\n")
        await until(lambda: poller.connections == len(streams), "every follower connection in its poller")
        handed = poller.handed
        for i, stream in enumerate(streams):
            await stream.send_all(command("SET", f"k{i}", "v"))
        for stream in streams:
            assert await read_exactly(stream, 5) == b"+OK\r\n"
        assert poller.handed - handed == len(streams)
        registers_here = {key: n for key, n in requests.outcomes.items() if key[:2] == ("cluster", "register")}
        assert registers_here == {}, registers_here
        for stream in streams:
            await stream.aclose()


async def test_a_follower_that_cannot_reach_the_leader_it_knows_asks_its_own_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower sends a write or a registration straight to the leader it knows (HttpEdge.request).
    When that address cannot be reached (the leader may be gone), it asks its own driver instead,
    which refuses as not the leader and names the current one, and the request goes there: served
    once, never lost to the dead address."""
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)
        server = cluster.nodes[follower].resp_server  # type: ignore[attr-defined]
        assert server is not None
        edge = server.edge
        (dead_port,) = free_ports(1)  # free, and nobody listens there
        monkeypatch.setattr(edge, "other_leader", lambda: Address(HOST, dead_port))
        requests = cluster.nodes[follower].driver.requests  # type: ignore[attr-defined]
        forwarded = edge.forwarded
        client_id = await edge.request("register", {})
        assert isinstance(client_id, int) and client_id > 0
        assert edge.forwarded - forwarded == 2  # the dead address, then the leader the driver named
        assert requests.outcomes.get(("cluster", "register", "not_leader")) == 1  # asked here once
        body = {"client_id": client_id, "seq": 1, "ack_seq": 0, "service": "kv", "command": ["set", b"k", b"v"]}
        await edge.request("command", body, 10)
        assert edge.forwarded - forwarded == 4
        leader_edge = cluster.nodes[leader].resp_server.edge  # type: ignore[attr-defined]
        assert (await leader_edge.request("read", {"service": "kv", "query": ["get", b"k"]}))[0] == b"v"
