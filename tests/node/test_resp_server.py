"""The RESP listener against an in-process cluster, through redis-py unchanged (sync client in a
worker thread, RESP2 and RESP3): strings with TTLs, counters, pipelines, auth and scopes, Redis's
error wording, forwarding from a follower, and hostile bytes that close the connection while the
node stays up."""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
import trio
import trio.testing

from tests.node.helpers import HOST, TokenSigner, in_process_cluster
from trimaran.node.config import Address
from trimaran.protocols.service import ApplyContext


def resp_address(cluster: Any, node_id: int) -> Address:
    address = cluster.nodes[node_id].resp_address
    assert address is not None
    return address


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


def client(address: Address, **kwargs: Any) -> redis.Redis:
    return redis.Redis(host=address.host, port=address.port, socket_timeout=10, **kwargs)


@pytest.mark.parametrize("protocol", [2, 3])
async def test_strings_ttls_counters_and_pipelines(tmp_path: Path, protocol: int) -> None:
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()

        def scenario() -> None:
            r = client(resp_address(cluster, leader), protocol=protocol)
            assert r.ping()
            assert r.echo("hi") == b"hi"
            assert r.set("a", "1") is True
            assert r.get("a") == b"1"
            assert r.get("missing") is None
            assert r.set("t", "v", ex=100) is True
            assert 99 <= r.ttl("t") <= 100
            assert 99_000 <= r.pttl("t") <= 100_000
            assert r.ttl("a") == -1 and r.ttl("missing") == -2
            assert r.set("short", "v", px=200) is True
            assert r.get("short") == b"v"
            time.sleep(0.5)
            assert r.get("short") is None
            assert r.set("a", "2", nx=True) is None and r.get("a") == b"1"
            assert r.set("new", "x", xx=True) is None and r.get("new") is None
            assert r.set("a", "3", xx=True) is True and r.get("a") == b"3"
            assert r.set("a", "4", get=True) == b"3"
            assert r.setnx("a", "5") is False and r.setnx("n", "5") is True
            assert r.execute_command("SETEX", "se", 50, "v") is True and 49 <= r.ttl("se") <= 50
            assert r.execute_command("PSETEX", "pse", 50_000, "v") is True and 49 <= r.ttl("pse") <= 50
            assert r.expire("a", 30) is True and 29 <= r.ttl("a") <= 30
            assert r.persist("a") is True and r.ttl("a") == -1
            assert r.persist("a") is False
            assert r.pexpire("missing", 100) is False
            assert r.incr("c") == 1 and r.incrby("c", 10) == 11
            assert r.decr("c") == 10 and r.decrby("c", 20) == -10
            with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
                r.set("s", "abc")
                r.incr("s")
            assert r.mset({"m1": "x", "m2": "y"}) is True
            assert r.mget("m1", "missing", "m2") == [b"x", None, b"y"]
            assert r.exists("m1", "m2", "missing", "m1") == 3
            assert r.type("m1") in (b"string", "string") and r.type("missing") in (b"none", "none")
            assert r.getdel("m1") == b"x" and r.get("m1") is None
            assert r.delete("m2", "missing", "c") == 2
            assert r.dbsize() >= 3
            assert r.select(0) is True if hasattr(r, "select") else True
            assert r.client_setname("me") is True and r.client_getname() in (b"me", "me")
            assert isinstance(r.client_id(), int)
            info = r.info()
            assert info["role"] in ("master", "slave") and info["redis_mode"] == "standalone"
            assert info["db0"]["keys"] == r.dbsize()
            with pytest.raises(redis.ResponseError, match=r"^unknown command 'LPUSH', with args beginning with: 'l' 'x' $"):
                r.execute_command("LPUSH", "l", "x")
            with pytest.raises(redis.ResponseError, match="syntax error"):
                r.execute_command("SET", "a", "1", "KEEPTTL", "EX", "10")
            # A pipeline: answers in order, a write seen by the reads after it.
            p = r.pipeline(transaction=False)
            for i in range(50):
                p.set(f"p{i}", i)
                p.incr("pc")
                p.get(f"p{i}")
            answers = p.execute()
            assert answers[0::3] == [True] * 50
            assert answers[1::3] == list(range(1, 51))
            assert answers[2::3] == [str(i).encode() for i in range(50)]
            # Reads back to back run at once, and a write between them still splits them in order.
            p = r.pipeline(transaction=False)
            for i in range(100):
                p.get(f"p{i % 50}")
            p.exists("p1", "nope")
            p.set("p0", "changed")
            p.get("p0")
            p.pttl("p0")
            answers = p.execute()
            assert answers[:100] == [str(i % 50).encode() for i in range(100)]
            assert answers[100:] == [1, True, b"changed", -1]
            r.close()

        await in_thread(scenario)


async def test_a_follower_forwards_writes_and_reads(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)

        outcomes = cluster.nodes[follower].driver.requests.edge_outcomes
        refused: list[int] = []

        def scenario() -> None:
            r = client(resp_address(cluster, follower))
            assert r.info()["role"] == "slave"
            assert r.set("k", "from a follower") is True
            # (the connection's session registers through the leader: the follower's driver is not asked)
            refused.append(outcomes.get(("resp", "not_leader"), 0))
            assert r.incr("n") == 1
            pipe = r.pipeline(transaction=False)
            for i in range(5):
                pipe.set(f"p{i}", i)
            assert pipe.execute() == [True] * 5
            refused.append(outcomes.get(("resp", "not_leader"), 0))
            assert r.get("k") == b"from a follower"
            r.close()
            on_leader = client(resp_address(cluster, leader))
            assert on_leader.get("k") == b"from a follower" and on_leader.get("p4") == b"4"
            on_leader.close()

        await in_thread(scenario)
        # A follower that knows the leader sends writes there at once: its own driver never
        # answered them not_leader (each such round cost it a pass through its loop).
        assert refused[1] == refused[0], f"writes asked the follower's driver first: {refused}"


async def test_auth_with_tokens_and_scopes(tmp_path: Path) -> None:
    signer = TokenSigner()
    writer, reader = signer.token(["kv:write:user:*", "kv:read:user:*"], "w"), signer.token(["kv:read:user:*"], "r")
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0), auth_keys=(signer.trusted,)) as cluster:
        leader = await cluster.leader()
        follower = next(n for n in (1, 2, 3) if n != leader)

        def scenario() -> None:
            anonymous = client(resp_address(cluster, leader))
            with pytest.raises(redis.AuthenticationError):  # NOAUTH
                anonymous.get("user:1")
            with pytest.raises(redis.AuthenticationError):  # WRONGPASS
                anonymous.execute_command("AUTH", "v4.public.garbage")
            anonymous.close()
            assert _raw(resp_address(cluster, leader), b"GET user:1\r\nQUIT\r\n") == b"-NOAUTH Authentication required.\r\n+OK\r\n"
            # Before AUTH, Redis's tighter bounds (then the connection is closed) ...
            big = b"x" * 20_000
            assert _raw(resp_address(cluster, leader), b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$20000\r\n" + big + b"\r\n") == (
                b"-ERR Protocol error: unauthenticated bulk length\r\n"
            )
            assert _raw(resp_address(cluster, leader), b"DEL" + b" k" * 11 + b"\r\n") == (
                b"-ERR Protocol error: unauthenticated multibulk length\r\n"
            )
            # ... and after an AUTH pipelined with them, the usual ones.
            auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(writer), writer.encode())
            set_big = b"*3\r\n$3\r\nSET\r\n$6\r\nuser:b\r\n$20000\r\n" + big + b"\r\n"
            assert _raw(resp_address(cluster, follower), auth + set_big + b"QUIT\r\n") == b"+OK\r\n+OK\r\n+OK\r\n"
            assert _raw(resp_address(cluster, leader), b"AUTH nope\r\nQUIT\r\n") == (
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n+OK\r\n"
            )
            # AUTH <token> (RESP2), and HELLO 3 AUTH default <token> (RESP3), on a follower too.
            w = client(resp_address(cluster, follower), password=writer)
            assert w.set("user:1", "a") is True
            with pytest.raises(redis.exceptions.NoPermissionError):
                w.set("admin", "x")
            w.close()
            r3 = client(resp_address(cluster, leader), password=reader, username="default", protocol=3)
            assert r3.get("user:1") == b"a"
            with pytest.raises(redis.exceptions.NoPermissionError):
                r3.set("user:1", "b")
            with pytest.raises(redis.exceptions.NoPermissionError):
                r3.get("other")
            r3.close()

        await in_thread(scenario)


def _raw(address: Address, payload: bytes) -> bytes:
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


async def test_hostile_input_closes_the_connection_and_the_node_stays_up(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 1, resp_listen=Address(HOST, 0)) as cluster:
        await cluster.leader()
        address = resp_address(cluster, 1)

        def scenario() -> None:
            # Commands before the error are answered, then the error, then the close.
            assert _raw(address, b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\nxyz\r\n") == (
                b"+PONG\r\n+PONG\r\n-ERR Protocol error: expected '$', got 'x'\r\n"
            )
            assert _raw(address, b"*1\r\n$99999999999\r\n") == b"-ERR Protocol error: invalid bulk length\r\n"
            assert _raw(address, b"*99999999\r\n") == b"-ERR Protocol error: invalid multibulk length\r\n"
            assert _raw(address, b"QUIT\r\n") == b"+OK\r\n"
            garbage = bytes(range(256)) * 64
            assert _raw(address, b"*1\r\n$1\r\n" + garbage).startswith(b"-ERR Protocol error")
            # Random bytes (seeded): whatever they parse as is answered or refused; the stream ends.
            rng = random.Random(12)
            for size in [1, 2, 7, 64, 500, 4096, 70_000] * 3:
                blob = rng.randbytes(size)
                with socket.create_connection((address.host, address.port), timeout=10) as sock:
                    try:
                        sock.sendall(blob)
                        sock.shutdown(socket.SHUT_WR)
                        while sock.recv(65536):
                            pass
                    except OSError as exc:  # closed on a protocol error before reading everything sent
                        # (ENOTCONN: the reset came before our half-close)
                        if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                            raise
            r = client(address)
            assert r.ping() and r.set("still", "up") is True
            r.close()

        await in_thread(scenario)
        assert cluster.status(1)["metrics"]["resp_protocol_errors"] >= 4


async def test_connections_over_the_limit_are_refused(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 1, resp_listen=Address(HOST, 0), resp_connections_max=1) as cluster:
        await cluster.leader()
        address = resp_address(cluster, 1)

        def scenario() -> None:
            first = client(address)
            assert first.ping()
            # (Sending nothing: the refusal closes at once, and data the node never read would
            # make the close a reset that may overtake the answer, with Redis too.)
            assert _raw(address, b"") == b"-ERR max number of clients reached\r\n"
            first.close()

        await in_thread(scenario)


def redis_tool(name: str) -> str:
    """The path of a Debian redis-tools program; CI must have it, elsewhere the test is skipped."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (Debian: redis-tools); CI must have it")
        pytest.skip(f"{name} is not installed (Debian: redis-tools)")
    return path


async def test_redis_cli(tmp_path: Path) -> None:
    cli = redis_tool("redis-cli")
    async with in_process_cluster(tmp_path, 1, resp_listen=Address(HOST, 0)) as cluster:
        await cluster.leader()
        address = resp_address(cluster, 1)

        def run(*args: str) -> str:
            done = subprocess.run([cli, "-h", address.host, "-p", str(address.port), *args], capture_output=True, text=True, timeout=30)
            return done.stdout.strip()

        assert await in_thread(lambda: run("PING")) == "PONG"
        assert await in_thread(lambda: run("SET", "greeting", "hello")) == "OK"
        assert await in_thread(lambda: run("GET", "greeting")) == "hello"
        assert await in_thread(lambda: run("INCR", "n")) == "1"


async def test_clients_that_vanish_mid_pipeline_leave_the_node_up(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 1, resp_listen=Address(HOST, 0)) as cluster:
        await cluster.leader()
        address = resp_address(cluster, 1)

        def scenario() -> None:
            pipeline = b"".join(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" for _ in range(500))
            for _ in range(5):
                sock = socket.create_connection((address.host, address.port), timeout=10)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset on close
                sock.sendall(pipeline)
                sock.close()
            time.sleep(0.5)
            r = client(address)
            assert r.get("k") == b"v" and r.ping()
            r.close()

        await in_thread(scenario)


def test_a_resp_port_beyond_loopback_needs_tls_and_auth_or_insecure(tmp_path: Path) -> None:
    from tests.node.helpers import cluster_configs
    from trimaran.errors import ConfigError

    config = cluster_configs(tmp_path, 1)[0]
    with pytest.raises(ConfigError, match=r"refusing to listen on 0.0.0.0:6381 without TLS \(--tls-dir\) and auth"):
        config.replace(resp_listen=Address("0.0.0.0", 6381)).validate()
    config.replace(resp_listen=Address("0.0.0.0", 6381), insecure=True).validate()
    config.replace(resp_listen=Address("0.0.0.0", 6381), tls_dir=str(tmp_path), auth_keys=(TokenSigner().trusted,)).validate()


async def test_tls_on_the_resp_port_with_the_nodes_certificates(tmp_path: Path) -> None:
    from trimaran.node.tls import CA_CERT, init_certs

    tls = tmp_path / "tls"
    init_certs(tls, [1])
    ca = str(tls / CA_CERT)
    async with in_process_cluster(tmp_path / "data", 1, resp_listen=Address(HOST, 0), tls_dir=str(tls)) as cluster:
        await cluster.leader()
        address = resp_address(cluster, 1)

        def scenario() -> None:
            for protocol in (2, 3):
                r = client(address, ssl=True, ssl_ca_certs=ca, protocol=protocol)
                assert r.set("over", "tls") is True and r.get("over") == b"tls"
                p = r.pubsub()
                p.subscribe("room.1")
                assert p.get_message(timeout=5)["type"] == "subscribe"
                assert client(address, ssl=True, ssl_ca_certs=ca).publish("room.1", "hi") == 1
                deadline = time.monotonic() + 10
                while (message := p.get_message(timeout=0.5)) is None and time.monotonic() < deadline:
                    pass
                assert message is not None and message["data"] == b"hi"
                p.close()
                r.close()
            with pytest.raises(redis.ConnectionError):  # no plain text on a TLS port
                client(address).ping()
            cli = shutil.which("redis-cli")
            if cli is not None:
                done = subprocess.run(
                    [cli, "--tls", "--cacert", ca, "-h", address.host, "-p", str(address.port), "GET", "over"],
                    capture_output=True, text=True, timeout=30,
                )  # fmt: skip
                assert done.stdout.strip() == "tls", done.stderr

        await in_thread(scenario)


async def test_each_connection_writes_through_a_session_of_its_own(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 1, resp_listen=Address(HOST, 0)) as cluster:
        await cluster.leader()
        address = resp_address(cluster, 1)
        sessions = cluster.nodes[1].driver.replica.sessions
        before = len(sessions)

        def scenario() -> None:
            readers_only = client(address)
            assert readers_only.get("x") is None  # a read registers nothing
            readers_only.close()
            for i in range(3):
                r = client(address)
                assert r.set("x", i) and r.incr("n") == i + 1
                r.close()

        await in_thread(scenario)
        assert len(sessions) == before + 3


async def test_a_pipelines_writes_share_commit_rounds_and_keep_their_own_answers(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        follower = next(i for i in cluster.nodes if i != leader)

        def setup() -> None:
            r = client(resp_address(cluster, leader))
            r.set("text", "abc")
            r.set("taken", "x")
            r.close()

        def pipeline(address: Address) -> list[Any]:
            r = client(address)
            p = r.pipeline(transaction=False)
            for i in range(60):
                p.incr("n")
                p.set(f"k{i}", i, ex=100)
            p.set("taken", "y", nx=True)  # nil: the key exists
            p.incr("text")  # an error of its own, the writes around it applied
            p.execute_command("SET", "k0")  # wrong arity, answered in place
            p.setnx("fresh", "1")
            p.delete("k1")
            p.expire("k2", 50)
            p.mset({"m1": "a", "m2": "b"})
            p.get("n")
            answers = p.execute(raise_on_error=False)
            r.close()
            return answers

        await in_thread(setup)
        entries_before = cluster.status(leader)["commit_index"]
        answers = await in_thread(lambda: pipeline(resp_address(cluster, leader)))
        entries = cluster.status(leader)["commit_index"] - entries_before
        assert answers[0:120:2] == list(range(1, 61)), "each INCR answered in pipeline order"
        assert answers[1:120:2] == [True] * 60
        tail = answers[120:]
        assert tail[0] is None
        assert isinstance(tail[1], redis.ResponseError) and "not an integer" in str(tail[1])
        assert isinstance(tail[2], redis.ResponseError) and "wrong number of arguments" in str(tail[2])
        assert tail[3:] == [True, 1, True, True, b"60"]
        # 127 writes of one pipeline: a handful of log entries, not one each (the read point and
        # the leader's own entries may add a few).
        assert entries < 20, entries

        # Through a follower: forwarded together on one connection, in order, each once.
        entries_before = cluster.status(leader)["commit_index"]
        answers = await in_thread(lambda: pipeline(resp_address(cluster, follower)))
        assert answers[0:120:2] == list(range(61, 121))
        assert cluster.status(leader)["commit_index"] - entries_before < 20

        def check() -> None:
            r = client(resp_address(cluster, leader))
            assert r.get("n") == b"120" and r.get("m2") == b"b" and r.get("k1") is None
            assert 30 <= r.ttl("k2") <= 50 and 80 <= r.ttl("k3") <= 100  # a busy machine: seconds may pass
            r.close()

        await in_thread(check)


def test_a_txn_needs_what_each_step_needs_and_read_on_its_watched_keys() -> None:
    from trimaran.node.authoriser import requirements

    txn = ["txn", [["set", b"a", b"1"], ["get", b"b"], ["mset", [[b"c", b"1"]]], ["mget", [b"d"]]], {"if_revisions": [[b"w", 3]]}]
    assert requirements("command", {"service": "kv", "command": txn}) == (
        ("kv", "read", b"w", False),
        ("kv", "write", b"a", False),
        ("kv", "read", b"b", False),
        ("kv", "write", b"c", False),
        ("kv", "read", b"d", False),
    )


async def test_multi_exec_is_one_entry_applied_on_every_replica_and_watch_fails_a_changed_key(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        follower = next(i for i in cluster.nodes if i != leader)

        def transaction() -> None:
            r = client(resp_address(cluster, follower))  # through a follower: forwarded as one write
            r.set("text", "abc")
            p = r.pipeline(transaction=True)
            p.set("a", "1").incr("a").incr("text").get("a").mset({"b": "2", "c": "3"}).expire("b", 100).ttl("b").exists("a", "b", "z")
            answers = p.execute(raise_on_error=False)
            assert answers[:3] == [True, 2, answers[2]] and isinstance(answers[2], redis.ResponseError)
            assert answers[3:] == [b"2", True, True, 100, 2]
            assert r.get("text") == b"abc"
            # SET XX/KEEPTTL, APPEND and MSETNX are steps of the one entry too.
            r.set("kt", "v", ex=100)
            p = r.pipeline(transaction=True)
            p.set("kt", "w", xx=True, keepttl=True).set("nokey", "x", xx=True).append("kt", "!").append("fresh", "ab").ttl("kt")
            p.msetnx({"m1": "1", "m2": "2"}).msetnx({"m2": "x", "m3": "3"}).set("kt", "new", get=True, xx=True).ttl("kt")
            p.set("fresh", "old?", get=True, nx=True)
            # KEEPTTL and APPEND kept the TTL; a SET without KEEPTTL drops it; SET NX GET answers the old value.
            assert p.execute() == [True, None, 2, 2, 100, True, False, b"w!", -1, b"ab"]
            assert r.mget("kt", "nokey", "fresh", "m1", "m2", "m3") == [b"new", None, b"ab", b"1", b"2", None]
            # Errors found while queueing discard the whole transaction (one raw connection:
            # redis-py's reply callbacks would turn +QUEUED into False).
            raw = redis.Connection(host=resp_address(cluster, follower).host, port=resp_address(cluster, follower).port)

            def call(*args: Any) -> Any:
                raw.send_command(*args)
                try:
                    return raw.read_response()
                except redis.ResponseError as exc:
                    return exc

            assert call("MULTI") == b"OK"
            assert call("SET", "d", "1") == b"QUEUED"
            assert "wrong number of arguments" in str(call("SET", "d"))
            assert "not served inside MULTI" in str(call("PERSIST", "d"))
            assert str(call("EXEC")).startswith("Transaction discarded")
            assert call("GET", "d") is None
            assert "EXEC without MULTI" in str(call("EXEC"))
            assert call("MULTI") == b"OK"
            assert "nested" in str(call("MULTI"))
            assert call("SET", "d", "1") == b"QUEUED"
            assert call("DISCARD") == b"OK"
            assert call("GET", "d") is None
            assert call("MULTI") == b"OK" and call("EXEC") == []
            raw.disconnect()
            # WATCH: a key changed by another client makes EXEC apply nothing.
            other = client(resp_address(cluster, leader))
            with r.pipeline() as pipe:
                pipe.watch("a", "never")
                assert pipe.get("a") == b"2"
                other.set("a", "changed")
                pipe.multi()
                pipe.set("a", "mine").set("e", "1")
                with pytest.raises(redis.WatchError):
                    pipe.execute()
            assert r.get("a") == b"changed" and r.get("e") is None
            # EXPIRE, PEXPIRE or PERSIST of a watched key fails the EXEC, as in Redis.
            for change in (lambda: other.expire("a", 50), lambda: other.pexpire("a", 60_000), lambda: other.persist("a")):
                with r.pipeline() as pipe:
                    pipe.watch("a")
                    change()
                    pipe.multi()
                    pipe.set("e", "1")
                    with pytest.raises(redis.WatchError):
                        pipe.execute()
            assert r.get("e") is None and r.ttl("a") == -1
            with r.pipeline() as pipe:  # unchanged: applied
                pipe.watch("a")
                pipe.multi()
                pipe.set("a", "mine")
                assert pipe.execute() == [True]
            r.close()
            other.close()

        await in_thread(transaction)
        await cluster.wait_for(
            lambda: len({cluster.nodes[i].driver.replica.raft.log.applied_index for i in cluster.nodes}) == 1, what="replicas caught up"
        )
        snapshots = {i: cluster.nodes[i].driver.replica.services["kv"].snapshot() for i in cluster.nodes}
        assert snapshots[1] == snapshots[2] == snapshots[3]
        found = cluster.nodes[follower].driver.replica.services["kv"].query(["mget", [b"a", b"b", b"c"]], ApplyContext(1, 0))
        assert [f[0] for f in found] == [b"mine", b"2", b"3"]
        assert found[1][1] == found[2][1], "the transaction's writes share one revision (one entry)"


async def test_more_string_and_keyspace_commands(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()

        def scenario() -> None:
            r = client(resp_address(cluster, leader))
            assert r.getset("g", "1") is None and r.getset("g", "2") == b"1" and r.get("g") == b"2"
            assert r.set("g", "3", get=True) == b"2" and r.set("new", "x", nx=True, get=True) is None
            assert r.getdel("g") == b"3" and r.getdel("g") is None
            assert r.set("t", "v", ex=100) and r.getex("t", px=50_000) == b"v" and 49 <= r.ttl("t") <= 50
            assert r.getex("t", persist=True) == b"v" and r.ttl("t") == -1 and r.getex("t") == b"v"
            assert r.getex("t", exat=int(time.time()) - 10) == b"v" and r.exists("t") == 0
            assert r.msetnx({"n1": "a", "n2": "b"}) is True and r.msetnx({"n2": "c", "n3": "d"}) is False
            assert r.mget("n1", "n2", "n3") == [b"a", b"b", None]
            assert r.append("ap", "ab") == 2 and r.append("ap", "cd") == 4 and r.get("ap") == b"abcd"
            assert r.strlen("ap") == 4 and r.strlen("missing") == 0
            assert r.set("ttl", "v", ex=100) and r.append("ttl", "w") == 2 and 98 <= r.ttl("ttl") <= 100  # TTL kept
            assert r.set("ttl", "x", keepttl=True) and r.get("ttl") == b"x" and 98 <= r.ttl("ttl") <= 100
            assert r.expireat("ttl", int(time.time()) + 30) and 28 <= r.ttl("ttl") <= 30
            assert r.pexpireat("ttl", int(time.time() * 1000) + 60_000) and 58 <= r.ttl("ttl") <= 60
            assert r.pexpireat("ttl", int(time.time() * 1000) - 1) and r.exists("ttl") == 0
            seconds, micros = r.time()
            assert abs(seconds + micros / 1e6 - time.time()) < 5
            assert r.delete("n1", "n2", "n3", "n1") == 2
            r.mset({f"user:{i:03}": i for i in range(120)} | {"other": 1, "us[er": 2})
            assert sorted(r.scan_iter(match="user:*", count=7)) == [f"user:{i:03}".encode() for i in range(120)]
            assert sorted(r.scan_iter(match="user:1?[0-1]")) == [b"user:100", b"user:101", b"user:110", b"user:111"]
            assert list(r.scan_iter(match="us\\[er")) == [b"us[er"]
            assert list(r.scan_iter(match="user:*", _type="hash")) == []
            cursor, page = r.scan(0, count=5)
            assert cursor != 0 and len(page) == 5
            assert sorted(r.keys("user:0[0-4]?")) == [f"user:{i:03}".encode() for i in range(50)]
            assert sorted(r.keys("*")) == sorted(r.scan_iter())
            p = r.pipeline(transaction=True)  # several-step commands inside MULTI
            p.getset("user:000", "zero").delete("user:001", "user:002").getdel("user:003").get("user:000")
            assert p.execute() == [b"0", 2, b"3", b"zero"]
            assert r.execute_command("READONLY") in (True, b"OK") and r.get("user:000") == b"zero"
            assert r.execute_command("READWRITE") in (True, b"OK") and r.get("user:000") == b"zero"
            info = r.info("replication")
            assert info["role"] == "master" and info["trimaran_leader_id"] == leader
            assert r.flushdb() is True and r.dbsize() == 0 and r.keys("*") == []
            r.close()

        await in_thread(scenario)


@pytest.mark.parametrize(
    "pattern, matches, misses",
    [
        (b"*", [b"", b"a", b"\n"], []),
        (b"a?c", [b"abc", b"a\nc"], [b"ac", b"abbc"]),
        (b"h[ae]llo", [b"hello", b"hallo"], [b"hillo"]),
        (b"h[^e]llo", [b"hallo"], [b"hello"]),
        (b"h[a-b]llo", [b"hbllo"], [b"hcllo"]),
        (b"a\\*b", [b"a*b"], [b"axb"]),
        (b"a.b+", [b"a.b+"], [b"axbb"]),
    ],
)
def test_scan_match_is_redis_glob(pattern: bytes, matches: list[bytes], misses: list[bytes]) -> None:
    from trimaran.node.resp.keyspace import Cursors, glob_regex

    regex = glob_regex(pattern)
    assert all(regex.match(k) for k in matches) and not any(regex.match(k) for k in misses)
    cursors = Cursors()
    for key in (b"k", b"\x00\x00", b"\xff" * 1024, b"\xff" * 4096):
        cursor = cursors.cursor_of(key)
        assert int(cursor) > 0 and cursors.key_of(cursor) == key


async def test_redis_benchmark_runs_unchanged_and_each_pipelined_incr_counts_once(tmp_path: Path) -> None:
    bench = redis_tool("redis-benchmark")
    requests = 320
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        address = resp_address(cluster, await cluster.leader())

        def run() -> str:
            argv = [bench, "-h", address.host, "-p", str(address.port), "-t", "ping,set,get,incr,mset", "-n", str(requests), "-P", "16", "-c", "4", "--csv"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            return done.stdout

        out = await in_thread(run)
        tests = {line.split(",")[0].strip('"') for line in out.splitlines()[1:]}
        assert tests == {"PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET (10 keys)"}, out

        def counter() -> Any:
            r = client(address)
            try:
                return r.get("counter:__rand_int__"), len(r.get("key:__rand_int__") or b"")
            finally:
                r.close()

        # redis-benchmark INCRs one key (no -r): every pipelined INCR applied exactly once.
        assert await in_thread(counter) == (str(requests).encode(), 3)  # -d 3, redis-benchmark's default


async def test_writes_sent_to_a_follower_during_an_election_wait_for_the_new_leader(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, resp_listen=Address(HOST, 0)) as cluster:
        leader = await cluster.leader()
        follower = next(i for i in cluster.nodes if i != leader)
        address = resp_address(cluster, follower)

        registered, fresh = client(address), client(address)

        def before() -> None:
            assert registered.incr("n") == 1  # this connection's session exists before the crash

        await in_thread(before)
        cluster.crash(leader)

        def during(r: redis.Redis) -> list[Any]:
            try:
                p = r.pipeline(transaction=False)
                for _ in range(20):
                    p.incr("n")
                p.set("after", "yes")
                return p.execute()
            finally:
                r.close()

        # No TRYAGAIN: the follower waits (within the request timeout) for a leader, then applies
        # each write once.
        assert await in_thread(lambda: during(registered)) == list(range(2, 22)) + [True]
        assert await in_thread(lambda: during(fresh)) == list(range(22, 42)) + [True]  # registers in the election


class _SilentDriver:
    """A driver that takes requests and never answers them."""

    def __init__(self) -> None:
        self.taken: list[str] = []

    async def submit_client(self, op: str, body: Any, token: Any, size_bytes: int, *, more: bool = False) -> None:
        self.taken.append(op)

    async def submit_client_group(self, op: str, bodies: list[Any], target: Any, sizes_bytes: list[int]) -> None:
        for index, (body, size_bytes) in enumerate(zip(bodies, sizes_bytes)):
            await self.submit_client(op, body, (target, index), size_bytes, more=True)

    def wake(self) -> None:
        self.taken.append("wake")

    def start_round(self, *, client: bool = False) -> None:
        self.taken.append("start_round")


async def test_a_group_the_driver_never_answers_times_out_through_the_listeners_lapses(mock_clock: trio.testing.MockClock) -> None:
    """One task times out every connection's groups (no timeout per command): an unanswered group
    ends with RequestTimeout after request_timeout_ms, within one check interval."""
    from types import SimpleNamespace

    from trimaran.errors import RequestTimeout
    from trimaran.node.resp.groups import LAPSE_CHECK_S, Lapses, submit_group

    mock_clock.autojump_threshold = 0
    timeout_s = 2.0
    driver = _SilentDriver()
    edge: Any = SimpleNamespace(edge_name="resp", driver=driver, config=SimpleNamespace(request_timeout_ms=int(timeout_s * 1000)))
    lapses = Lapses(timeout_s)
    targets: list[Any] = []
    driver.submit_client = lambda op, body, token, size_bytes, more=False: _record(driver, targets, op, token)  # type: ignore[method-assign]
    with trio.fail_after(timeout_s * 5):  # (without lapses: no end)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lapses.run)
            started = trio.current_time()
            got = await submit_group(edge, "read", [{"q": 1}, {"q": 2}], [0, 0], lapses)
            waited_s = trio.current_time() - started
            nursery.cancel_scope.cancel()
    assert [ok for ok, _ in got] == [False, False] and all(isinstance(v, RequestTimeout) for _, v in got)
    assert timeout_s <= waited_s <= timeout_s + LAPSE_CHECK_S + 1e-6, waited_s
    assert driver.taken == ["read", "read", "start_round"] and lapses.lapsed == 1 and lapses.open == 0
    # The driver answering after all (a round that came late) is ignored, not an error in its round.
    answers, index = targets[0]
    answers.on_reply(index, True, b"late")


async def _record(driver: _SilentDriver, targets: list[Any], op: str, token: Any) -> None:
    driver.taken.append(op)
    targets.append(token)


async def test_a_read_alone_starts_its_round_and_reads_of_several_connections_share_the_next(mock_clock: trio.testing.MockClock) -> None:
    """A connection's read group with no other group waiting starts the driver's round at once
    (no pass through the loop first); while another connection's group waits, it wakes the loop,
    whose next round takes the reads of every connection (one read point)."""
    from types import SimpleNamespace

    from trimaran.node.resp.groups import Lapses, submit_group

    mock_clock.autojump_threshold = 0
    driver = _SilentDriver()
    edge: Any = SimpleNamespace(edge_name="resp", driver=driver, config=SimpleNamespace(request_timeout_ms=1000))
    lapses = Lapses(1.0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lapses.run)
            nursery.start_soon(submit_group, edge, "read", [{"q": 1}], [0], lapses)
            await trio.testing.wait_all_tasks_blocked()
            assert driver.taken == ["read", "start_round"] and lapses.open == 1
            nursery.start_soon(submit_group, edge, "read", [{"q": 2}], [0], lapses)
            await trio.testing.wait_all_tasks_blocked()
            assert driver.taken == ["read", "start_round", "read", "wake"] and lapses.open == 2
            await trio.sleep(1.5)  # (the driver never answers: both lapse)
            assert lapses.open == 0
            nursery.cancel_scope.cancel()
