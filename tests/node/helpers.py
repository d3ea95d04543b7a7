"""Test helpers for the node runtime: free loopback ports, a raw-frame client, in-process clusters.

The raw client speaks :mod:`trimaran.protocols.client_protocol` with nothing but framing and
msgpack, so these tests check the server against the protocol text, not against the client library.
"""

from __future__ import annotations

import contextlib
import errno
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import trio

from trimaran import limits
from trimaran.cluster.replica import Replica
from trimaran.errors import TrimaranError, error_from_wire
from trimaran.node.config import Address, NodeConfig, PeerSpec
from trimaran.node.driver import Driver
from trimaran.node.transport import PeerTransport
from trimaran.node.node import Node
from trimaran.protocols.client_protocol import hello
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.framing import FrameDecoder, encode_frame
from trimaran.protocols.messages import Message
from trimaran.services.register import RegisterService

from tests.client.real_cluster import free_ports

HOST = "127.0.0.1"


def cluster_configs(root: Path, size: int = 3, **overrides: Any) -> list[NodeConfig]:
    """Configs for ``size`` nodes on free loopback ports, data under ``root``."""
    ids = list(range(1, size + 1))
    # Picked together, so no two are the same (free_ports: distinct ports of this worker's share,
    # below the ephemeral range).
    ports = iter(free_ports(2 * size))
    client = {i: Address(HOST, next(ports)) for i in ids}
    peer = {i: Address(HOST, next(ports)) for i in ids}
    return [
        NodeConfig(
            i,
            client[i],
            peer[i],
            tuple(PeerSpec(j, peer[j], client[j]) for j in ids if j != i),
            str(root / f"node{i}"),
            **overrides,
        ).validate()
        for i in ids
    ]


class RawClient:
    """A client made of raw frames: hello, then pipelined ``[request_id, op, body]`` requests."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.welcome: dict[str, Any] = {}
        self._next_id = 0
        self.client_id = 0
        self.seq = 0

    @classmethod
    async def connect(cls, address: Address, cluster_id: str | None = None, token: str | None = None) -> RawClient:
        client = cls(await trio.open_tcp_stream(address.host, address.port))
        await client.send_obj(hello(cluster_id, token))
        welcome = await client.read_obj()
        if isinstance(welcome, dict) and welcome.get("type") == "error":
            raise error_from_wire(welcome["error"])
        assert isinstance(welcome, dict) and welcome.get("type") == "welcome", welcome
        client.welcome = welcome
        return client

    async def send_obj(self, obj: Any) -> None:
        await self.stream.send_all(encode_frame(pack(obj)))

    async def read_obj(self) -> Any:
        """The next frame decoded, or None if the node closed the connection."""
        while True:
            frame = self.decoder.next_frame()
            if frame is not None:
                return unpack(frame)
            if self.decoder.closed:
                return None
            self.decoder.feed(await self.stream.receive_some(65536))

    async def send_request(self, op: str, body: dict[str, Any]) -> int:
        self._next_id += 1
        await self.send_obj([self._next_id, op, body])
        return self._next_id

    async def call(self, op: str, body: dict[str, Any]) -> Any:
        """One request, its answer; raises the typed error on a failed answer."""
        request_id = await self.send_request(op, body)
        answer = await self.read_obj()
        if answer is None:
            raise trio.BrokenResourceError("the node closed the connection")
        assert isinstance(answer, list) and answer[0] == request_id, answer
        if not answer[1]:
            raise error_from_wire(answer[2])
        return answer[2]

    async def register(self) -> int:
        self.client_id = await self.call("register", {})
        self.seq = 0
        return self.client_id

    def command_body(self, command: Any) -> dict[str, Any]:
        self.seq += 1
        return {"client_id": self.client_id, "seq": self.seq, "ack_seq": self.seq - 1, "service": "register", "command": command}

    async def set(self, key: bytes, value: bytes) -> None:
        await self.call("command", self.command_body(["set", key, value]))

    async def get(self, key: bytes, consistency: str = "linearizable") -> Any:
        return await self.call("read", {"service": "register", "query": ["get", key], "consistency": consistency})

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class InProcessCluster:
    """Nodes running in this trio process, each in its own cancel scope so one can be 'crashed'."""

    configs: list[NodeConfig]
    nursery: trio.Nursery
    make_services: Callable[[], list[Any]] | None = None
    nodes: dict[int, Node] = field(default_factory=dict)
    scopes: dict[int, trio.CancelScope] = field(default_factory=dict)

    async def start(self, node_id: int) -> Node:
        config = self.configs[node_id - 1]
        scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[Node]) -> None:
            with scope:
                services = self.make_services() if self.make_services is not None else None
                await Node(config, services).run(task_status=task_status)

        self.scopes[node_id] = scope
        self.nodes[node_id] = await self.nursery.start(run)
        return self.nodes[node_id]

    def crash(self, node_id: int) -> None:
        """Cancel the node's tasks (no graceful shutdown; LMDB is still closed by its finally)."""
        self.scopes.pop(node_id).cancel()
        self.nodes.pop(node_id)

    def status(self, node_id: int) -> dict[str, Any]:
        return self.nodes[node_id].status()

    async def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 5.0, what: str = "condition") -> Any:
        with trio.move_on_after(timeout_s):
            while True:
                value = predicate()
                if value:
                    return value
                await trio.sleep(0.02)
        raise AssertionError(f"{what} not reached within {timeout_s} s")

    async def leader(self, timeout_s: float = 5.0) -> int:
        def find() -> int | None:
            leaders = [n for n, node in self.nodes.items() if node.status()["role"] == "leader"]
            return leaders[0] if len(leaders) == 1 else None

        return int(await self.wait_for(find, timeout_s, "a single leader"))

    def client_address(self, node_id: int) -> Address:
        address = self.nodes[node_id].client_address
        assert address is not None
        return address


#: Tries at starting an in-process cluster when a port picked for it was taken meanwhile.
START_ATTEMPTS = 3


def _address_in_use(exc: BaseException) -> bool:
    """Is ``exc`` (or every exception in its group) a listen that found its port taken?"""
    if isinstance(exc, BaseExceptionGroup):
        return all(_address_in_use(e) for e in exc.exceptions)
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


@contextlib.asynccontextmanager
async def in_process_cluster(
    root: Path, size: int = 3, make_services: Callable[[], list[Any]] | None = None, **overrides: Any
) -> AsyncIterator[InProcessCluster]:
    """Start ``size`` nodes in this trio process. Their ports are picked before the nodes listen
    (every node must know its peers' addresses), so another socket may take one in between (an
    outgoing connection's ephemeral port, in CI once): then the cluster is started again on new
    ports, up to START_ATTEMPTS times."""
    for attempt in range(1, START_ATTEMPTS + 1):
        async with trio.open_nursery() as nursery:
            cluster = InProcessCluster(cluster_configs(root, size, **overrides), nursery, make_services)
            try:
                for i in range(1, size + 1):
                    await cluster.start(i)
            except BaseException as exc:
                if attempt == START_ATTEMPTS or not _address_in_use(exc):
                    raise
                nursery.cancel_scope.cancel()
                continue
            yield cluster
            nursery.cancel_scope.cancel()
            return


def error_code(exc: BaseException) -> str:
    assert isinstance(exc, TrimaranError), exc
    return exc.code


def make_driver(tmp_path: Path, writer: Any, **overrides: Any) -> tuple[Driver, list[Message]]:
    """Node 1 of (1, 2, 3) as a bare Driver over ``writer``: the messages it sends land in the list,
    and it never ticks unless a test asks."""
    config = cluster_configs(tmp_path, **overrides)[0]
    replica = Replica(config.raft_config(), random.Random(1), [RegisterService()], config=config.replica_config())
    sent: list[Message] = []
    driver = Driver(config, replica, writer, sent.extend, lambda n: None)
    driver._next_tick_at = trio.current_time() + 3600
    return driver, sent


#: What in-process clusters build their state machine with (NodeConfig's defaults, auth off).
DEFAULT_STATE_MACHINE: dict[str, Any] = {"kv": {"maxmemory_bytes": None, "eviction_policy": "lru"}}


class _BareTransportConfig:
    """Just what a PeerTransport reads of a NodeConfig, for tests that drive one without sockets."""

    node_id = 1
    cluster_id = "trimaran"
    peers: tuple[Any, ...] = ()
    peer_queue_frames_max = 10
    peer_queue_bytes_max = limits.frame_bytes_max
    peer_handshakes_max = 30

    def state_machine_settings(self) -> dict[str, Any]:
        return DEFAULT_STATE_MACHINE


async def _ignore_message(msg: Message, more: bool) -> None:
    pass


def bare_transport() -> PeerTransport:
    """A PeerTransport for node 1 of cluster "trimaran" with no peers, no sockets, and a driver
    that ignores what it is handed (tests set its queues and monitor as they need)."""
    return PeerTransport(_BareTransportConfig(), _ignore_message)  # type: ignore[arg-type]


class TokenSigner:
    """A signing key the test's cluster trusts (``trusted``), and tokens signed with it."""

    def __init__(self) -> None:
        from trimaran.protocols import tokens

        self._tokens = tokens
        self._private = tokens.new_private_key()
        public = tokens.public_key_of(self._private)
        self._kid = tokens.key_id(public)
        self.trusted = tokens.TrustedKey(self._kid, public)

    def token(self, scopes: list[str], jti: str, ttl_ms: int = 600_000) -> str:
        import time

        now_ms = int(time.time() * 1000)
        return self._tokens.sign(self._private, kid=self._kid, sub="app", scopes=scopes, audience="trimaran", now_ms=now_ms, ttl_ms=ttl_ms, jti=jti)
