"""A small fake trimaran cluster speaking the client protocol over loopback TCP, for client tests.

Its nodes share one set of services (the register map and the KV cache) and one session table (so
"the cluster" is consistent whichever node applies); log time is ``now_ms``, moved by the test
(:meth:`FakeCluster.advance_time`, which also applies a timestamp-only entry, as an idle leader does); answer every request in its own task (so delays reorder answers), and let a test
script misbehaviour with hooks: delay an answer, drop the connection before or after applying,
answer with any error, or refuse as a follower.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from trimaran.errors import IdleTimeout, InvalidArgument, NotLeader, SessionExpired, TrimaranError
from trimaran.protocols.client_protocol import error_frame, parse_hello, parse_request, response, welcome
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.framing import FrameDecoder, encode_frame
from trimaran.protocols.service import ApplyContext, Service
from trimaran.services.auth import AuthService
from trimaran.services.kv import KvService
from trimaran.services.register import RegisterService

DROP = "drop"  # hook result: close the connection without applying or answering
DROP_AFTER_APPLY = "drop_after_apply"  # hook result: apply, then close without answering
HANG = "hang"  # hook result: never answer
IDLE_CLOSE = "idle_close"  # hook result: as a node closing an idle connection (frame, close, unread)


@dataclass
class Call:
    node_id: int
    op: str
    body: dict[str, Any]


#: A hook sees (node, op, body) and returns None (carry on), DROP, DROP_AFTER_APPLY, HANG,
#: a TrimaranError to answer with, or ("result", value) to answer with.
Hook = Callable[["FakeNode", str, dict[str, Any]], Awaitable[Any]]


@dataclass
class FakeCluster:
    cluster_id: str = "fake-cluster"
    leader_id: int = 1
    services: dict[str, Service] = field(
        default_factory=lambda: {"register": RegisterService(), "kv": KvService(), "auth": AuthService()}
    )
    #: Log time: the timestamp of the entries applied from now on, and of reads.
    now_ms: int = 1_000_000
    sessions: dict[int, dict[int, tuple[bool, Any]]] = field(default_factory=dict)
    acks: dict[int, int] = field(default_factory=dict)
    next_client_id: int = 100
    #: (client_id, seq, command) of every command applied (duplicates show here).
    applied: list[tuple[int, int, Any]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    nodes: dict[int, FakeNode] = field(default_factory=dict)
    index: int = 0
    #: Set when the cluster runs in its own thread (cluster_in_thread), to reach its trio run.
    trio_token: Any = None

    def register(self) -> int:
        self.next_client_id += 1
        self.sessions[self.next_client_id] = {}
        self.acks[self.next_client_id] = 0
        return self.next_client_id

    def expire_sessions(self) -> None:
        self.sessions.clear()
        self.acks.clear()

    def command(self, body: dict[str, Any]) -> tuple[bool, Any]:
        client_id, seq, ack_seq = body["client_id"], body["seq"], body["ack_seq"]
        saved = self.sessions.get(client_id)
        if saved is None:
            return False, SessionExpired(f"session {client_id} is unknown or expired")
        if ack_seq > self.acks[client_id]:
            self.acks[client_id] = ack_seq
            for s in [s for s in saved if s <= ack_seq]:
                del saved[s]
        if seq in saved:
            return saved[seq]
        if seq <= self.acks[client_id]:
            return False, SessionExpired(f"sequence {seq} was already acknowledged")
        service = self.services.get(body["service"])
        if service is None:
            return False, InvalidArgument(f"unknown service {body['service']!r}")
        ctx = self._next_entry()
        try:
            outcome: tuple[bool, Any] = (True, service.apply(body["command"], ctx))
        except TrimaranError as exc:
            outcome = (False, exc)
        saved[seq] = outcome
        self.applied.append((client_id, seq, body["command"]))
        return outcome

    def read(self, body: dict[str, Any]) -> tuple[bool, Any]:
        service = self.services.get(body["service"])
        if service is None:
            return False, InvalidArgument(f"unknown service {body['service']!r}")
        try:
            return True, service.query(body["query"], ApplyContext(self.index, self.now_ms))
        except TrimaranError as exc:
            return False, exc

    def _next_entry(self) -> ApplyContext:
        """A new log entry at ``now_ms``: every service sees the time first (as the Replica does)."""
        self.index += 1
        ctx = ApplyContext(self.index, self.now_ms)
        for _, service in sorted(self.services.items()):
            service.on_time(ctx)
        return ctx

    def advance_time(self, ms: int) -> None:
        """Log time moves on by ``ms`` and a timestamp-only entry applies (expiring what is due)."""
        self.now_ms += ms
        self._next_entry()

    def addresses(self) -> list[str]:
        return [n.address for _, n in sorted(self.nodes.items())]


class FakeNode:
    def __init__(self, cluster: FakeCluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.port = 0
        self.hooks: list[Hook] = []
        self.hellos: list[dict[str, Any]] = []
        self.connections_accepted = 0
        self.inflight = 0
        self.inflight_max_seen = 0
        #: Sent as not_leader details.leader_address when set (the leader's client address).
        self.send_leader_address = False
        #: Extra welcome fields, and an error to refuse the handshake with.
        self.refuse_hello: TrimaranError | None = None
        self.status_extra: dict[str, Any] = {}
        self.scope = trio.CancelScope()
        cluster.nodes[node_id] = self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        with self.scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, self._handle, listeners)
                task_status.started()

    def stop(self) -> None:
        """Like a crash: stop listening and drop every connection."""
        self.scope.cancel()

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections_accepted += 1
        decoder = FrameDecoder()
        first = await _read_frame(stream, decoder)
        if first is None:
            return
        self.hellos.append(first)
        parse_hello(first)
        if self.refuse_hello is not None:
            await stream.send_all(encode_frame(pack(error_frame(self.refuse_hello))))
            await stream.aclose()
            return
        greeting = welcome(self.node_id, self.cluster.leader_id, self.cluster.cluster_id)
        await stream.send_all(encode_frame(pack(greeting)))
        send_lock = trio.Lock()
        with trio.CancelScope() as conn_scope:
            async with trio.open_nursery() as nursery:
                while (frame := await _read_frame(stream, decoder)) is not None:
                    nursery.start_soon(self._answer, stream, send_lock, conn_scope, frame)
                nursery.cancel_scope.cancel()
        await trio.aclose_forcefully(stream)

    async def _answer(
        self, stream: trio.SocketStream, send_lock: trio.Lock, conn_scope: trio.CancelScope, frame: Any
    ) -> None:
        req = parse_request(frame)
        self.cluster.calls.append(Call(self.node_id, req.op, req.body))
        self.inflight += 1
        self.inflight_max_seen = max(self.inflight_max_seen, self.inflight)
        try:
            action = None
            for hook in list(self.hooks):
                action = await hook(self, req.op, req.body)
                if action is not None:
                    break
            if action == DROP:
                conn_scope.cancel()
                return
            if action == IDLE_CLOSE:  # the node decided "idle" before it read this request
                async with send_lock:
                    await stream.send_all(encode_frame(pack(error_frame(IdleTimeout("no request for 60000 ms")))))
                conn_scope.cancel()
                return
            if action == HANG:
                await trio.sleep_forever()
            if isinstance(action, TrimaranError):
                ok, value = False, action
            elif isinstance(action, tuple) and action[0] == "result":
                ok, value = True, action[1]
            else:
                ok, value = self._default(req.op, req.body)
            if action == DROP_AFTER_APPLY:
                conn_scope.cancel()
                return
            async with send_lock:
                await stream.send_all(encode_frame(pack(response(req.request_id, ok, value))))
        finally:
            self.inflight -= 1

    def _default(self, op: str, body: dict[str, Any]) -> tuple[bool, Any]:
        cluster = self.cluster
        if op == "status":
            return True, {
                "node_id": self.node_id,
                "role": "leader" if cluster.leader_id == self.node_id else "follower",
                "term": 3,
                "leader_id": cluster.leader_id,
                "commit_index": cluster.index,
                "applied_index": cluster.index,
                "members": [{"node_id": n.node_id, "address": n.address} for _, n in sorted(cluster.nodes.items())],
                "progress": [
                    {"node_id": n, "lag": 7 if cluster.nodes[n].scope.cancel_called else 0}
                    for n in sorted(cluster.nodes)
                    if cluster.leader_id == self.node_id and n != self.node_id
                ],
                **self.status_extra,
            }
        if op == "read" and body.get("consistency") == "stale":
            return cluster.read(body)  # any node answers a stale read from its own state
        if cluster.leader_id != self.node_id:
            details: dict[str, Any] = {}
            leader = cluster.nodes.get(cluster.leader_id)
            if self.send_leader_address and leader is not None:
                details["leader_address"] = leader.address
            return False, NotLeader(leader_hint=cluster.leader_id or None, **details)
        if op == "register":
            return True, cluster.register()
        if op == "command":
            return cluster.command(body)
        if op == "read":
            return cluster.read(body)
        return True, None


async def _read_frame(stream: trio.SocketStream, decoder: FrameDecoder) -> Any:
    while (frame := decoder.next_frame()) is None:
        if decoder.closed:
            return None
        try:
            decoder.feed(await stream.receive_some(65536))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
    return unpack(frame)


async def start_cluster(
    nursery: trio.Nursery, size: int = 3, leader_id: int = 1, kv: KvService | None = None
) -> FakeCluster:
    """``size`` fake nodes; ``kv``: the KV service to serve (e.g. with a small watch window)."""
    cluster = FakeCluster(leader_id=leader_id)
    if kv is not None:
        cluster.services["kv"] = kv
    for node_id in range(1, size + 1):
        await nursery.start(FakeNode(cluster, node_id).serve)
    return cluster


@contextmanager
def cluster_in_thread(size: int = 3, leader_id: int = 1) -> Iterator[FakeCluster]:
    """A fake cluster served by its own trio run in a background thread (for blocking clients)."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            box["cluster"] = await start_cluster(nursery, size, leader_id)
            box["token"] = box["cluster"].trio_token = trio.lowlevel.current_trio_token()
            box["stop"] = trio.Event()
            ready.set()
            await box["stop"].wait()
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield box["cluster"]
    finally:
        trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(10)
