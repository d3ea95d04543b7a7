"""``trimaran up`` as a user runs it: starts, serves, stops on Ctrl-C (exit 0, no process left
listening), and comes back from its data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from tests.node.helpers import HOST, RawClient
from tests.ports import free_base, port_free, worker_bases
from trimaran.errors import NotLeader, Unauthenticated
from trimaran.node.config import Address
from trimaran.node.data_dir import mark_auth_required

pytestmark = pytest.mark.slow

START_WAIT_S = 30.0
STOP_WAIT_S = 30.0


#: The ports `trimaran up` takes above its base: clients, peers, HTTP, and RESP (the tests pass
#: --resp-base-port BASE+RESP_OFFSET, so parallel runs and a developer's `make run` do not collide).
RESP_OFFSET = 2000
UP_PORT_OFFSETS = (1, 2, 3, 101, 102, 103, 1001, 1002, 1003, RESP_OFFSET + 1, RESP_OFFSET + 2, RESP_OFFSET + 3)


#: Where the bases are drawn from: below Linux's ephemeral range (32768-60999 by default), where
#: the kernel never hands a port to an outgoing connection, so a port found free stays free until
#: `up` binds it (test_cli_up draws from just above, 30000-30699).
BASE_PORTS = range(20_000, 27_000)
_BASES = worker_bases(BASE_PORTS)


def free_base_port(nodes: int = 3) -> int:
    """A base port whose ports (clients, peers, HTTP, RESP of ``nodes`` nodes) are all free."""
    return free_base(_BASES, [step + i for step in (0, 100, 1000, RESP_OFFSET) for i in range(1, nodes + 1)])


class Up:
    def __init__(self, tmp_path: Path, base: int, *options: str) -> None:
        self.out = tmp_path / f"up-{base}-{len(list(tmp_path.glob('up-*')))}.out"
        self.data = tmp_path / "data"
        self.base = base
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "trimaran", "up",
                    "--base-port", str(base),
                    "--resp-base-port", str(base + RESP_OFFSET),
                    "--data-dir", str(self.data),
                    *options,
                ],  # fmt: skip
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def token(self) -> str:
        """The admin token `up` wrote at its start (auth is on by default)."""
        return (self.data / "auth" / "admin.token").read_text().strip()

    async def wait_up(self) -> None:
        with trio.fail_after(START_WAIT_S):
            while "is up" not in self.output():
                assert self.proc.poll() is None, self.output()
                await trio.sleep(0.05)

    async def interrupt(self) -> int:
        os.kill(self.proc.pid, signal.SIGINT)  # what Ctrl-C sends
        with trio.fail_after(STOP_WAIT_S):
            while self.proc.poll() is None:
                await trio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=STOP_WAIT_S)


async def leader_client(base: int, token: str | None) -> RawClient:
    """Connect to node 1 and follow its not_leader hint (leader_address). `up` prints its banner
    once a leader serves, but node 1 may not have heard of it yet (no address in the hint): then
    ask node 1 again, for up to START_WAIT_S."""
    with trio.fail_after(START_WAIT_S):
        while True:
            client = await RawClient.connect(Address(HOST, base + 1), token=token)
            try:
                await client.register()
                return client
            except NotLeader as exc:
                await client.aclose()
                leader_address = exc.details.get("leader_address")
                if leader_address:
                    client = await RawClient.connect(Address.parse(leader_address), token=token)
                    await client.register()
                    return client
            await trio.sleep(0.05)


async def test_up_serves_stops_cleanly_and_comes_back_from_its_data(tmp_path: Path) -> None:
    base = free_base_port()
    up = Up(tmp_path, base)
    try:
        await up.wait_up()
        assert f"{HOST}:{base + 1}" in up.output() and "trimaran status" in up.output()
        # Secure by default: auth is on, and the banner says how to use the admin token.
        token_path = up.data / "auth" / "admin.token"
        assert f"export TRIMARAN_TOKEN=$(cat {token_path})" in up.output()
        assert oct(token_path.stat().st_mode & 0o777) == oct(0o600)
        with pytest.raises(Unauthenticated):
            await RawClient.connect(Address(HOST, base + 1))
        first_token = up.token
        client = await leader_client(base, first_token)
        await client.set(b"greeting", b"hello")
        await client.aclose()
        # The Redis protocol on every node, with the token as the password (the banner says how).
        resp_port = base + RESP_OFFSET + 2
        assert f'redis-cli -p {base + RESP_OFFSET + 1} -a "$TRIMARAN_TOKEN"' in up.output()

        def through_redis() -> Any:
            r = redis.Redis(host=HOST, port=resp_port, password=first_token, socket_timeout=10)
            try:
                assert r.set("greeting", "hello from redis", ex=60)
                return r.get("greeting")
            finally:
                r.close()

        assert await trio.to_thread.run_sync(through_redis) == b"hello from redis"
        assert await up.interrupt() == 0, up.output()
    finally:
        up.kill()
    assert "stopped" in up.output()
    # Every node process is gone: all nine ports can be bound again.
    assert all(port_free(base + offset) for offset in UP_PORT_OFFSETS)

    again = Up(tmp_path, base)
    try:
        await again.wait_up()
        # The same signing key (so the same bootstrap key), and a fresh token at each start.
        assert again.token != first_token
        client = await leader_client(base, again.token)
        assert await client.get(b"greeting") == b"hello"
        await client.aclose()
        assert await again.interrupt() == 0, again.output()
    finally:
        again.kill()


async def test_up_on_a_taken_port_fails_with_one_clear_line(tmp_path: Path) -> None:
    base = free_base_port()
    with socket.socket() as blocker:
        blocker.bind((HOST, base + 2))
        blocker.listen()
        result = subprocess.run(
            [
                sys.executable, "-m", "trimaran", "up",
                "--base-port", str(base),
                "--resp-base-port", str(base + RESP_OFFSET),
                "--data-dir", str(tmp_path / "d"),
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{base + 2}" in lines[0] and "not free" in lines[0], result.stderr


async def test_nodes_stop_by_themselves_when_up_is_killed(tmp_path: Path) -> None:
    base = free_base_port()
    up = Up(tmp_path, base)
    try:
        await up.wait_up()
        os.kill(up.proc.pid, signal.SIGKILL)  # no chance to stop its children
        up.proc.wait(timeout=STOP_WAIT_S)
        with trio.fail_after(STOP_WAIT_S):  # each child notices its parent is gone and stops
            while not all(port_free(base + offset) for offset in UP_PORT_OFFSETS):
                await trio.sleep(0.1)
    finally:
        up.kill()


async def test_up_with_tls_serves_tls_and_no_auth_serves_anyone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trimaran.client.client import Client

    for name in ("TRIMARAN_TOKEN", "TRIMARAN_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    base = free_base_port()
    up = Up(tmp_path, base, "--tls")
    try:
        await up.wait_up()
        ca_file = up.data / "tls" / "ca.pem"
        assert f"export TRIMARAN_CA_FILE={ca_file}" in up.output()
        endpoints = [f"{HOST}:{base + i}" for i in (1, 2, 3)]
        async with Client(endpoints, token=up.token, ca_file=str(ca_file), timeout_ms=10_000) as c:
            await c.kv.set("over", "tls")
        # The Redis port serves TLS too, and the banner's redis-cli line says how.
        assert f"redis-cli -p {base + RESP_OFFSET + 1} --tls --cacert {ca_file}" in up.output()
        r = redis.Redis(host=HOST, port=base + RESP_OFFSET + 1, password=up.token, ssl=True, ssl_ca_certs=str(ca_file), socket_timeout=10)
        try:
            assert await trio.to_thread.run_sync(r.get, "over") == b"tls"
        finally:
            r.close()
        assert await up.interrupt() == 0, up.output()
    finally:
        up.kill()

    # The same data without auth, as the operator insists (--no-auth alone refuses: see
    # test_up_no_auth_on_data_that_required_tokens_refuses_in_one_line): the nodes trust no key,
    # so a client needs no token.
    again = Up(tmp_path, base, "--no-auth", "--allow-auth-off")
    try:
        await again.wait_up()
        assert "Auth is off" in again.output() and "TRIMARAN_TOKEN" not in again.output()
        async with Client(endpoints, timeout_ms=10_000) as c:
            assert (await c.kv.get("over")).value == b"tls"
        assert await again.interrupt() == 0, again.output()
    finally:
        again.kill()


def test_up_beyond_loopback_refuses_without_tls_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trimaran", "up", "--host", "0.0.0.0", "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing to listen on 0.0.0.0 without TLS and auth" in lines[0], result.stderr
    assert "--insecure" in lines[0] and not (tmp_path / "d").exists()


def test_up_no_auth_on_data_that_required_tokens_refuses_in_one_line(tmp_path: Path) -> None:
    """A cluster made by `up` (auth on) restarted with --no-auth would serve its data to anyone."""
    data = tmp_path / "d"
    for i in (1, 2, 3):
        mark_auth_required(str(data / f"node{i}"))
    base = free_base_port()  # should the refusal ever regress, its nodes take ports of their own
    argv = ["up", "--no-auth", "--insecure", "--data-dir", str(data), "--base-port", str(base), "--resp-base-port", str(base + RESP_OFFSET)]
    result = subprocess.run([sys.executable, "-m", "trimaran", *argv], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1  # (--insecure, about listening beyond loopback, does not silence it)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refusing --no-auth" in lines[0] and "--allow-auth-off" in lines[0], result.stderr
    assert not (data / "node1.log").exists() and not (data / "auth").exists()  # nothing was started or made


#: How long every node of a fresh cluster may take to log the leader the status names.
LOG_WAIT_S = 15.0


def _json_log(data: Path, node_id: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (data / f"node{node_id}.log").read_text().splitlines() if line.strip()]


def _logged_leader(data: Path, node_id: int, status: dict[str, Any]) -> bool:
    try:
        lines = _json_log(data, node_id)
    except ValueError:  # read while a line was being written: not yet
        return False
    return any(
        line.get("event") == "leader_elected" and line["leader"] == status["leader_id"] and line["term"] == status["term"]
        for line in lines
    )


async def test_up_with_five_nodes_and_its_data_dir_keeps_its_size(tmp_path: Path) -> None:
    from trimaran.client.client import Client

    base = free_base_port(nodes=5)
    up = Up(tmp_path, base, "--nodes", "5", "--log-format", "json")
    try:
        await up.wait_up()
        assert "5 nodes" in up.output() and f"node 5  clients {HOST}:{base + 5}" in up.output()
        async with Client([f"{HOST}:{base + i}" for i in (1, 2, 3, 4, 5)], token=up.token, timeout_ms=10_000) as c:
            await c.kv.set("five", "nodes")
            status = await c.status()
            assert status["voters"] == [1, 2, 3, 4, 5]
            # A write needs 3 of the 5: a node may learn of the leader a heartbeat later (bounded wait).
            with trio.move_on_after(LOG_WAIT_S):
                while not all(_logged_leader(up.data, i, status) for i in (1, 2, 3, 4, 5)):
                    await trio.sleep(0.1)
        assert await up.interrupt() == 0, up.output()
    finally:
        up.kill()
    # --log-format reached every node: each log line is one JSON object naming its node, and every
    # node logged the leader it learned of, with the term (issue 13's logs).
    for i in (1, 2, 3, 4, 5):
        lines = _json_log(up.data, i)
        assert lines and all(line["node"] == i for line in lines)
        assert _logged_leader(up.data, i, status), [line for line in lines if line.get("event") == "leader_elected"]
    again = Up(tmp_path, base, "--nodes", "3")
    try:
        again.proc.wait(timeout=STOP_WAIT_S)
        assert again.proc.returncode == 1 and "holds the data of a 5-node cluster" in again.output(), again.output()
    finally:
        again.kill()
