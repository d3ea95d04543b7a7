"""The HTTP edge's link to the node: requests to the driver, one client session, cached tokens, and
the server of its port (:mod:`~trimaran.node.http.front`'s listener over hypercorn; hypercorn alone
with TLS).

- **Requests** go to the driver exactly as the client port's do (``submit_client`` with this edge as
  the reply target), so they are batched into the same group proposals, bounded by the same driver
  inbox, and answered with the same typed errors. At most ``http_inflight_requests_max`` are in
  flight at once; a request not answered within ``request_timeout_ms`` is ``RequestTimeout``.
- **Forwarding.** A request only the leader can serve (a write, a session's registration, a
  linearizable read where the follower cannot serve it) goes to the leader: a write or a
  registration at once when this node knows another node leads (:data:`LEADER_ONLY_OPS`), anything
  this node answers ``not_leader`` after asking its driver. It is forwarded to the leader's
  client port (``--peer-client``) with the caller's own token, over TLS when the node has
  ``--tls-dir``: one connection per forwarded request (:func:`~trimaran.node.probe.request_once`;
  the node's kept-open :class:`~trimaran.node.forwarding.LeaderLinks` when it has them), so a
  load balancer may send anything to any node, and clients that want speed send writes to the
  leader (``status`` names it). The leader's answer, error or not, is the answer.
- **Writes** carry a client session the edge registers (lazily, on the leader) and numbers itself,
  like a client library connection: the session is replicated, so it survives leader changes; one
  that expired (an idle edge) is registered again and the write sent once more (an expired session
  applied nothing). An HTTP client that retries a write after a timeout may apply it twice, as with
  any HTTP API: use the conditional forms (``if_revision``) where that matters.
- **Tokens** (auth on): a bearer token is verified once and its grant cached (at most
  ``GRANT_CACHE_MAX`` tokens, least recently used dropped); each request is then checked against its
  scopes with no crypto, as on the client port. The cache is emptied whenever a revocation or a key
  retirement is applied (the auth service's generation moves), so the next request re-verifies.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections import OrderedDict
from typing import Any, Callable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from trimaran import limits
from trimaran.errors import NotLeader, RequestTimeout, SessionExpired, TrimaranError, Unavailable
from trimaran.node.authoriser import Authoriser, Grant
from trimaran.node.config import Address, NodeConfig
from trimaran.node.driver import Driver
from trimaran.node.forwarding import LeaderLinks
from trimaran.node.http.front import HttpFront, serve_front
from trimaran.node.probe import request_once
from trimaran.node.tls import CA_CERT, client_context, node_cert_name, node_key_name

log = logging.getLogger("trimaran.node.http")

#: Verified tokens whose grants are kept (a grant is a few hundred bytes).
GRANT_CACHE_MAX = 1024
#: Writes in flight on the edge's session; below session_responses_max, which the session keeps.
SESSION_INFLIGHT_MAX = limits.session_responses_max // 2
#: Bytes of request headers hypercorn buffers before it refuses the request.
HEADER_BYTES_MAX = 16 * limits.KIB
#: An idle keep-alive connection is closed after this.
KEEP_ALIVE_S = 60
#: Largest WebSocket frame a client may send (trio-websocket or hypercorn closes with 1009 beyond it): a chat message
#: with room for its JSON, base64 and the frame's other fields.
WS_FRAME_BYTES_MAX = 2 * limits.chat_message_bytes_max

assert SESSION_INFLIGHT_MAX < limits.session_responses_max


class _Waiter:
    __slots__ = ("event", "ok", "value")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.ok = False
        self.value: Any = None


class _Unreachable(Unavailable):
    """The leader's client port could not be reached (not an answer of the leader's own): the one
    failure after which a forwarded write or registration is asked of this node instead."""


#: Requests only a leader serves: a follower that knows the leader forwards them without asking its
#: own driver (a read stays: a follower serves it at a read point it asks the leader for).
LEADER_ONLY_OPS = frozenset({"command", "register"})


class EdgeSession:
    """A client session an edge registers (lazily, on the leader) and numbers itself, like a client
    library connection; writes through it are applied exactly once. One per HttpEdge (shared by
    its requests); the RESP listener makes one per connection. ``inflight_max``: its writes in
    flight at once (more wait), below ``session_responses_max``, which the session keeps."""

    def __init__(self, edge: HttpEdge, inflight_max: int = SESSION_INFLIGHT_MAX) -> None:
        assert 0 < inflight_max < limits.session_responses_max
        self.edge = edge
        #: Its id (None: not registered yet), its last seq, and the seqs of its writes not
        #: answered yet (the lowest bounds the ack).
        self.client_id: int | None = None
        self._seq = 0
        self._unanswered: set[int] = set()
        self._lock = trio.Lock()
        self._slots = trio.Semaphore(inflight_max)

    async def command(self, service: str, command: Any, size_bytes: int, token: str | None = None) -> Any:
        async with self._slots:
            for attempt in range(2):
                client_id = await self._register(token)
                self._seq += 1
                seq = self._seq
                self._unanswered.add(seq)
                body = {"client_id": client_id, "seq": seq, "ack_seq": min(self._unanswered) - 1, "service": service, "command": command}
                try:
                    return await self.edge.request("command", body, size_bytes, token)
                except SessionExpired:
                    if attempt:
                        raise
                    if self.client_id == client_id:
                        self.client_id = None  # register again (nothing was applied)
                finally:
                    self._unanswered.discard(seq)
        raise AssertionError("unreachable")

    async def _register(self, token: str | None) -> int:
        async with self._lock:
            if self.client_id is None:
                client_id = await self.edge.request("register", {}, 0, token)
                assert type(client_id) is int, client_id
                self.client_id, self._seq = client_id, 0
            return self.client_id


class HttpEdge:
    """See the module docstring. ``tls``: forward to the leader over TLS (the node runs with
    ``--tls-dir``, so its peers' client ports serve TLS)."""

    def __init__(
        self,
        config: NodeConfig,
        driver: Driver,
        authoriser: Authoriser,
        status: Callable[[], dict[str, Any]],
        tls: bool = False,
        edge_name: str = "http",
    ) -> None:
        # No assert on http_listen: the RESP listener drives the node through an edge of its own.
        #: The edge its requests are counted under (``RequestStats.edge_outcomes``): http or resp.
        self.edge_name = edge_name
        self.config = config
        self.driver = driver
        self.authoriser = authoriser
        self.status = status
        self._forward_tls = client_context(f"{config.tls_dir}/{CA_CERT}") if tls and config.tls_dir else None
        self.address: Address | None = None
        self._timeout_s = config.request_timeout_ms / 1000
        self._slots = trio.Semaphore(config.http_inflight_requests_max)
        self._pending: dict[int, _Waiter] = {}
        self._next_request = 0
        #: The edge's client session, shared by its requests.
        self.session = EdgeSession(self)
        self._grants: OrderedDict[str, Grant] = OrderedDict()
        self._grants_generation = authoriser.generation
        #: Counters (reported by the status op).
        self.requests = 0
        self.errors = 0
        self.forwarded = 0
        #: Kept-open connections to the leader for what this edge forwards (the node sets them;
        #: None: a connection per forwarded request).
        self.links: LeaderLinks | None = None
        #: The port's own listener (plain TCP; None before serve or with TLS).
        self.front: HttpFront | None = None

    @property
    def forward_tls(self) -> ssl.SSLContext | None:
        """The TLS context for this node's requests to its peers' client ports (None: plain TCP)."""
        return self._forward_tls

    # ------------------------------------------------------------------ the driver's reply target

    def on_reply(self, seq: int, ok: bool, value: Any) -> None:
        waiter = self._pending.pop(seq, None)
        if waiter is None:
            return  # timed out already
        waiter.ok, waiter.value = ok, value
        waiter.event.set()

    # ------------------------------------------------------------------ requests

    def other_leader(self) -> Address | None:
        """The client address of the leader when this node knows it is another node (None: this node
        leads, or thinks it does, or knows no leader or no address for it)."""
        leader_id = self.driver.replica.leader_id
        if not leader_id or leader_id == self.config.node_id:
            return None
        address = self.driver.client_address_of(leader_id)
        return Address.parse(address, "leader address") if address else None

    async def request(self, op: str, body: dict[str, Any], size_bytes: int = 0, token: str | None = None) -> Any:
        """One request, served here or forwarded to the leader; its result, or its typed error raised.
        ``token``: the caller's, presented to the leader when forwarding."""
        leader = self.other_leader() if op in LEADER_ONLY_OPS else None
        if leader is not None:
            # A follower that knows who leads sends a write or a registration there at once: asking
            # its own driver first only cost a round to learn not_leader. If that leader cannot be
            # reached (it may be gone), this node is asked as below; a write keeps its session seq,
            # so one that did arrive is not applied twice.
            try:
                return await self._forward(leader, op, body, token)
            except _Unreachable:
                pass
        try:
            return await self._local(op, body, size_bytes)
        except NotLeader as exc:
            leader_address = exc.details.get("leader_address")
            if not isinstance(leader_address, str) or not leader_address:
                raise  # no leader known yet: not_leader, and the caller may retry
            return await self._forward(Address.parse(leader_address, "leader address"), op, body, token)

    async def _forward(self, leader: Address, op: str, body: dict[str, Any], token: str | None) -> Any:
        self.forwarded += 1
        with trio.move_on_after(self._timeout_s) as scope:
            try:
                if self.links is None:
                    return await request_once(leader, op, body, self.config.cluster_id, token, self._forward_tls)
                ((ok, value),) = await self.links.request_many(leader, [(op, body)], token)
                if ok:
                    return value
                raise value
            except (OSError, trio.BrokenResourceError) as exc:
                raise _Unreachable(f"cannot reach the leader at {leader}: {exc}") from None
        assert scope.cancelled_caught
        raise RequestTimeout(f"the leader at {leader} did not answer within {self._timeout_s:g} s; the outcome is unknown")

    async def _local(self, op: str, body: dict[str, Any], size_bytes: int) -> Any:
        async with self._slots:
            self._next_request += 1
            seq = self._next_request
            waiter = _Waiter()
            self._pending[seq] = waiter
            try:
                with trio.move_on_after(self._timeout_s) as scope:
                    await self.driver.submit_client(op, body, (self, seq), size_bytes)
                    await waiter.event.wait()
            finally:
                self._pending.pop(seq, None)
        if scope.cancelled_caught:
            raise RequestTimeout(f"no answer within {self._timeout_s:g} s; the outcome is unknown")
        if waiter.ok:
            return waiter.value
        assert isinstance(waiter.value, TrimaranError), waiter.value
        raise waiter.value

    async def command(self, service: str, command: Any, size_bytes: int, token: str | None = None) -> Any:
        """A write through the edge's session (see the module docstring)."""
        return await self.session.command(service, command, size_bytes, token)

    # ------------------------------------------------------------------ tokens

    def grant(self, token: str | None) -> Grant | None:
        """The grant of a bearer token (verified once, then cached); None with auth off. Raises
        ``Unauthenticated``."""
        authoriser = self.authoriser
        if not authoriser.enabled:
            return None
        if authoriser.generation != self._grants_generation:
            self._grants.clear()  # a revocation or retirement: verify every token again
            self._grants_generation = authoriser.generation
        if token is not None:
            cached = self._grants.get(token)
            if cached is not None:
                self._grants.move_to_end(token)
                return cached
        grant = authoriser.authenticate(token)
        assert token is not None  # authenticate refuses None
        self._grants[token] = grant
        if len(self._grants) > GRANT_CACHE_MAX:
            self._grants.popitem(last=False)
        return grant

    # ------------------------------------------------------------------ serving

    def hypercorn_config(self) -> HypercornConfig:
        cfg = self.config
        assert cfg.http_listen is not None
        hc = HypercornConfig()
        hc.bind = [str(cfg.http_listen)]
        hc.accesslog = None
        hc.errorlog = log
        hc.h11_max_incomplete_size = HEADER_BYTES_MAX
        hc.keep_alive_timeout = KEEP_ALIVE_S
        hc.graceful_timeout = 5
        hc.websocket_max_message_size = WS_FRAME_BYTES_MAX
        if cfg.tls_dir is not None:
            hc.certfile = f"{cfg.tls_dir}/{node_cert_name(cfg.node_id)}"
            hc.keyfile = f"{cfg.tls_dir}/{node_key_name(cfg.node_id)}"
        return hc

    async def serve(self, app: Any, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve ``app`` on ``http_listen`` until cancelled; ``task_status`` gets the bound address.
        Plain TCP: through the port's own listener (:mod:`~trimaran.node.http.front`: chat
        WebSockets written to directly, the rest handed to hypercorn); TLS: hypercorn alone."""
        cfg = self.config
        assert cfg.http_listen is not None
        if cfg.tls_dir is None:
            self.front = HttpFront(app, self.hypercorn_config(), WS_FRAME_BYTES_MAX)
            async with trio.open_nursery() as nursery:
                host, port = await nursery.start(serve_front, self.front, cfg.http_listen.host, cfg.http_listen.port)
                self.address = Address(host, port)
                task_status.started(self.address)
            return
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(functools.partial(hypercorn_serve, app, self.hypercorn_config(), mode="asgi"))
            self.address = Address.parse(binds[0].split("://", 1)[-1], "http address")
            task_status.started(self.address)
