"""One node: the writer thread, the driver, the peer transport and the client server, wired together.

:meth:`Node.run` is a structured-concurrency server: ``await nursery.start(node.run)`` returns once
both ports listen and the node is driving its Replica; :meth:`Node.request_stop` begins the
graceful shutdown (stop accepting, let in-flight requests finish, hand leadership to a peer, wait
for the last writes, close LMDB), all bounded by ``shutdown_grace_ms``. :func:`run_node_process`
runs one node as a process that stops gracefully on SIGINT/SIGTERM and exits 0.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import signal
from typing import Any, Callable

import trio

from trimaran.cluster.replica import Replica
from trimaran.node.client_server import ClientServer
from trimaran.node.clock import ClockMonitor, wall_clock_ms as system_wall_clock_ms
from trimaran.errors import ConfigError
from trimaran.node.config import Address, NodeConfig
from trimaran.node.data_dir import check_auth, claim_data_dir
from trimaran.node.driver import Driver
from trimaran.node.forwarding import LeaderLinks
from trimaran.node.http.chat_gateway import ChatHub
from trimaran.node.http.dashboard import operator_routes
from trimaran.node.http.edge import HttpEdge
from trimaran.node.http.rest import RestApp
from trimaran.node.logs import event, set_term_source
from trimaran.node.resp import RespServer
from trimaran.node.tls import node_tls
from trimaran.node.transport import PeerTransport
from trimaran.node.writer import StorageWriter, WriteResult
from trimaran.protocols.service import Service
from trimaran.services.auth import AuthService
from trimaran.services.chat import ChatService
from trimaran.services.jobs import JobsService
from trimaran.services.kv import KvService
from trimaran.services.members import MembersService
from trimaran.services.register import RegisterService

log = logging.getLogger("trimaran.node")

#: How often a child of ``trimaran up`` checks that its parent is still alive.
PARENT_CHECK_INTERVAL_S = 0.5


def default_services(config: NodeConfig | None = None) -> list[Service]:
    """The replicated services every node runs: the register map (the simulator's and the tests'
    service), the KV cache, built with ``config``'s kv settings, and the auth service (trusted keys
    and revocations), built with its bootstrap keys and leeway (defaults without a config). The
    auth service is there with auth off too, so the replicated state has the same shape on every
    node. The chat and jobs services are built with their defaults on every node (none of their
    settings is configurable yet, so none needs comparing in the peer handshake), and so is the
    members directory (where nodes added with ``trimaran member add`` listen)."""
    if config is None:
        return [RegisterService(), KvService(), AuthService(), ChatService(), JobsService(), MembersService()]
    return [
        RegisterService(),
        KvService(maxmemory_bytes=config.kv_maxmemory_bytes, eviction_policy=config.kv_eviction),
        AuthService(bootstrap=config.auth_keys, leeway_ms=config.auth_leeway_ms),
        ChatService(),
        JobsService(),
        MembersService(),
    ]


class Node:
    """A running node; see the module docstring."""

    def __init__(
        self, config: NodeConfig, services: list[Service] | None = None, *, wall_clock_ms: Callable[[], int] = system_wall_clock_ms
    ) -> None:
        """``wall_clock_ms``: the clock this node stamps the log with and compares with its peers'
        (injected by tests to skew one node's clock)."""
        self.config = config.validate()
        self._services = services if services is not None else default_services(self.config)
        self._wall_clock_ms = wall_clock_ms
        #: Loaded here so a missing or unreadable certificate stops the node before it binds a port.
        self._tls = node_tls(self.config.tls_dir, self.config.node_id) if self.config.tls_dir else None
        self.clock: ClockMonitor | None = None
        self._stop = trio.Event()
        self.client_address: Address | None = None
        self.peer_address: Address | None = None
        self.driver: Driver | None = None
        self.transport: PeerTransport | None = None
        self.client_server: ClientServer | None = None
        self.http_edge: HttpEdge | None = None
        self.chat_hub: ChatHub | None = None
        self.http_address: Address | None = None
        self.resp_server: RespServer | None = None
        #: Client addresses of members recorded in the members directory (for not_leader hints).
        self._member_clients: dict[int, str] = {}
        self.resp_address: Address | None = None
        self._writer: StorageWriter | None = None

    def request_stop(self) -> None:
        """Begin the graceful shutdown; :meth:`run` returns when it is done."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def _client_address_of(self, node_id: int) -> str | None:
        if node_id == self.config.node_id:
            return str(self.client_address) if self.client_address else None
        if node_id in self._member_clients:
            return self._member_clients[node_id]
        peer = self.config.peer(node_id)
        return str(peer.client_address) if peer is not None and peer.client_address else None

    def status(self) -> dict[str, Any]:
        assert self.driver is not None and self.transport is not None and self.client_server is not None
        out = self.driver.status()
        out["address"] = str(self.client_address)
        out["peer_address"] = str(self.peer_address) if self.peer_address else None
        for member in out["members"]:  # where each member listens for peers (--join ENDPOINTS reads it)
            n = member["node_id"]
            address = self.peer_address if n == self.config.node_id else self.transport.peer_address(n)
            member["peer_address"] = str(address) if address else None
        out["http_address"] = str(self.http_address) if self.http_address else None
        out["resp_address"] = str(self.resp_address) if self.resp_address else None
        out["metrics"] = {
            "driver_rounds": self.driver.rounds,
            "driver_readies": self.driver.readies,
            "ticks": self.driver.ticks,
            "reads_asked": self.driver.replica.reads_asked,
            "read_rounds_started": self.driver.replica.raft.read_rounds_started,
            "driver_inline_writes": self.driver.inline_writes,
            "commit_notices_dropped": self.driver.held_notices_dropped,
            "log_entries_malformed": self.driver.replica.bad_entries,
            "log_commands_malformed": self.driver.replica.bad_commands,
            "peer_frames_sent": self.transport.frames_sent,
            "peer_socket_writes": self.transport.socket_writes,
            "peer_frames_received": self.transport.frames_received,
            "peer_frames_dropped": sum(self.transport.dropped_frames.values()),
            "peer_connections_refused": self.transport.connections_refused,
            "client_connections": self.client_server.connection_count,
            "client_connections_refused": self.client_server.connections_refused,
            "client_protocol_errors": self.client_server.protocol_errors,
            "client_handshakes_pending": self.client_server.handshakes_pending,
            "client_handshakes_evicted": self.client_server.handshakes_evicted,
            "client_idle_closed": self.client_server.idle_closed,
            "client_answer_bytes_queued": self.client_server.answer_bytes_queued,
            "client_answers_refused": self.client_server.answers_refused,
            "client_auth_unauthenticated": self.client_server.authoriser.unauthenticated,
            "client_auth_permission_denied": self.client_server.authoriser.permission_denied,
            "client_auth_connections_closed": self.client_server.authoriser.connections_closed,
            "peer_handshakes_evicted": self.transport.handshakes_evicted,
            "peer_connections_replaced": self.transport.connections_replaced,
            "peer_tls_refused": self.transport.tls_refused,
            "http_requests": self.http_edge.requests if self.http_edge else 0,
            "http_errors": self.http_edge.errors if self.http_edge else 0,
            "resp_connections": self.resp_server.connections if self.resp_server else 0,
            "resp_connections_refused": self.resp_server.connections_refused if self.resp_server else 0,
            "resp_commands": self.resp_server.commands if self.resp_server else 0,
            "resp_protocol_errors": self.resp_server.protocol_errors if self.resp_server else 0,
        }
        if self.clock is not None:
            out["clock"] = self.clock.status()
        return out

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        claim_data_dir(cfg.data_dir, cfg.cluster_id)
        if check_auth(cfg.data_dir, auth_enabled=cfg.auth_enabled, allow_auth_off=cfg.allow_auth_off):
            log.warning(
                "node %d: serving %s without auth (--allow-auth-off), though its data was served with tokens required",
                cfg.node_id, cfg.data_dir,
            )
        writer = StorageWriter(
            cfg.data_dir,
            self._on_write_result,
            map_bytes_initial=cfg.storage_map_bytes_initial,
            map_bytes_max=cfg.storage_map_bytes_max,
            group_batches_max=cfg.write_group_batches_max,
            retry_ms=cfg.storage_full_retry_ms,
        )
        self._writer = writer
        boot = await writer.start()
        try:
            # Election timeouts must differ between nodes: seed from OS entropy (node/ is not the
            # deterministic core; the simulator seeds its own).
            replica = Replica(
                cfg.raft_config(),
                random.Random(os.urandom(16)),
                self._services,
                boot.hard_state,
                boot.snapshot,
                boot.entries,
                cfg.replica_config(),
            )
            log.info(
                "node %d: booted term=%d commit=%d entries=%d snapshot=%d",
                cfg.node_id,
                boot.hard_state.term,
                boot.hard_state.commit_index,
                len(boot.entries),
                boot.snapshot.meta.last_index if boot.snapshot else 0,
            )
            members = replica.raft.membership.members
            if members and cfg.node_id not in members:
                event(
                    log, logging.WARNING, "removed",
                    "node %d: not a member of this cluster's configuration (voters %s): it was removed, so it "
                    "neither votes nor campaigns; `trimaran member add %d` takes it back",
                    cfg.node_id, list(replica.raft.membership.voters), cfg.node_id,
                    voters=list(replica.raft.membership.voters),
                )  # fmt: skip
            await self._serve(replica, writer, task_status)
        finally:
            with trio.CancelScope(shield=True):
                await writer.stop()
            log.info("node %d: stopped", cfg.node_id)

    def _on_write_result(self, result: WriteResult) -> None:
        if self.driver is not None:
            self.driver.on_write_result(result)

    async def _serve(self, replica: Replica, writer: StorageWriter, task_status: trio.TaskStatus[Node]) -> None:
        cfg = self.config
        transport = PeerTransport(cfg, self._deliver_peer, self._tls)
        driver = Driver(cfg, replica, writer, transport.send, self._client_address_of, wall_clock_ms=self._wall_clock_ms)
        clock = ClockMonitor(
            cfg.node_id,
            cfg.peer_ids,
            cfg.clock_offset_ms_max,
            cfg.clock_probe_interval_ms,
            transport.send_frame,
            lambda: replica.raft.membership.voters,
            driver.set_clock_suspect,
            self._wall_clock_ms,
        )
        transport.clock = clock
        members = replica.services.get("members")
        if isinstance(members, MembersService):
            driver.after_round_hooks.append(self._members_follower(members, transport))
        client_server = ClientServer(
            cfg, driver, self.status, self._wall_clock_ms, self._tls.client_server if self._tls else None
        )
        self.driver, self.transport, self.client_server, self.clock = driver, transport, client_server, clock
        term_source = lambda: replica.raft.term  # noqa: E731
        set_term_source(term_source)  # every log line of this process names the term from now on
        try:
            await self._run(cfg, replica, driver, transport, clock, client_server, task_status)
        finally:
            set_term_source(None, only_if=term_source)

    async def _run(
        self, cfg: NodeConfig, replica: Replica, driver: Driver, transport: PeerTransport, clock: ClockMonitor,
        client_server: ClientServer, task_status: trio.TaskStatus[Node],
    ) -> None:  # fmt: skip
        async with trio.open_nursery() as nursery:
            await nursery.start(driver.run)
            self.peer_address = await nursery.start(transport.serve)
            nursery.start_soon(clock.run)
            self.client_address = await nursery.start(client_server.serve)
            # The RESP listener has an edge of its own: its session, slots and counters are its own.
            edge = HttpEdge(cfg, driver, client_server.authoriser, self.status, self._tls is not None) if cfg.http_listen else None
            resp_edge = (
                HttpEdge(cfg, driver, client_server.authoriser, self.status, self._tls is not None, edge_name="resp") if cfg.resp_listen else None
            )
            if edge is not None or resp_edge is not None:
                # What the edges forward to the leader goes over kept-open connections, shared.
                links = LeaderLinks(cfg.cluster_id, (edge or resp_edge).forward_tls)  # type: ignore[union-attr]
                await nursery.start(links.run)
                driver.relaying = links.busy
                for each in (edge, resp_edge):
                    if each is not None:
                        each.links = links
            chat = replica.services.get("chat")
            hub_edge = edge or resp_edge
            if isinstance(chat, ChatService) and hub_edge is not None:
                # One hub per node: WebSocket and RESP subscribers are pushed from the same pass.
                self.chat_hub = ChatHub(chat, hub_edge)
                driver.after_round_hooks.append(self.chat_hub.after_round)
            if edge is not None:
                self.http_edge = edge
                self.http_address = await nursery.start(edge.serve, RestApp(edge, self.chat_hub, operator_routes(self)))
                log.info("node %d: HTTP on %s", cfg.node_id, self.http_address)
            if resp_edge is not None:
                self.resp_server = RespServer(cfg, resp_edge, self._wall_clock_ms, self.chat_hub, self._tls.client_server if self._tls else None)
                self.resp_address = await nursery.start(self.resp_server.serve)
                log.info("node %d: RESP (Redis protocol) on %s", cfg.node_id, self.resp_address)
            log.info("node %d: clients on %s, peers on %s", cfg.node_id, self.client_address, self.peer_address)
            task_status.started(self)
            await self._stop.wait()
            await self._shutdown(driver, client_server)
            nursery.cancel_scope.cancel()

    def _members_follower(self, members: MembersService, transport: PeerTransport) -> Callable[[], None]:
        """The after-round hook that hands the transport every member the members directory
        records (``trimaran member add``): one int compare per round while nothing changed."""
        seen = [-1]

        def follow() -> None:
            if members.generation == seen[0]:
                return
            seen[0] = members.generation
            for node_id, (peer, client) in members.entries.items():
                try:
                    transport.add_peer(node_id, Address.parse(peer, "peer address"))
                except ConfigError as exc:  # checked for shape when applied; a bad host stays unreachable
                    log.warning("node %d: member %d's peer address: %s", self.config.node_id, node_id, exc)
                    continue
                if client is not None:
                    self._member_clients[node_id] = client

        return follow

    async def _deliver_peer(self, msg: Any, more: bool) -> None:
        assert self.driver is not None
        await self.driver.deliver_peer(msg, more=more)

    async def _shutdown(self, driver: Driver, client_server: ClientServer) -> None:
        grace_s = self.config.shutdown_grace_ms / 1000
        log.info("node %d: shutting down", self.config.node_id)
        client_server.stop_accepting()
        with trio.move_on_after(grace_s):
            await client_server.wait_idle(grace_s)
            # A leader that leaves hands over first, so the cluster does not wait an election out.
            await driver.step_down(grace_s / 2)
        if not await driver.wait_durable(grace_s):
            log.warning("node %d: last writes not durable within %.1f s", self.config.node_id, grace_s)
        client_server.close()


async def _watch_parent(parent_pid: int, node: Node) -> None:
    """Stop when the parent (``trimaran up``) is gone, so a killed supervisor leaves no orphans."""
    while True:
        await trio.sleep(PARENT_CHECK_INTERVAL_S)
        if os.getppid() != parent_pid:
            log.warning("node %d: parent %d is gone; stopping", node.config.node_id, parent_pid)
            node.request_stop()
            return


async def _on_signals(signals: Any, node: Node, cancel: trio.CancelScope) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if node.stop_requested:
            log.warning("node %d: second %s; stopping now", node.config.node_id, name)
            cancel.cancel()
            return
        log.info("node %d: %s received; stopping gracefully", node.config.node_id, name)
        node.request_stop()


async def serve_until_signalled(config: NodeConfig, parent_pid: int | None = None) -> None:
    """Run one node until SIGINT/SIGTERM (or the parent's death), then stop gracefully.

    A second signal during the graceful stop cancels it (LMDB is still closed cleanly).
    """
    node = Node(config)
    # Opened before the node starts, so a signal during startup is not lost.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, signals, node, nursery.cancel_scope)
            if parent_pid is not None:
                nursery.start_soon(_watch_parent, parent_pid, node)
            await node.run()
            nursery.cancel_scope.cancel()


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of a (possibly nested) exception group, for a one-line error message."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


#: The cyclic garbage collector's first threshold in a node process (CPython's default: 700).
#: A gen-0 pass runs once that many more container objects were made than freed, and a driver
#: round over hundreds of connections makes thousands of short-lived ones before it frees them.
#: At 700, a leader serving 100,000 RESP SETs and 100,000 GETs at 256 connections ran ~3,600
#: gen-0, ~330 gen-1 and ~30 full passes (50 ms each, the event loop stopped), which found almost
#: nothing (10 objects in all the full ones): 15% of its time, the objects of requests in flight
#: promoted generation after generation. At 10,000 the same load ran ~20 gen-0 passes and no full
#: one; the leader's CPU per SET fell 13% and per GET 20%, and the process held as many objects
#: at the end as at 700. At 10,000, RESP with 16 commands in flight on each of 256 connections
#: (4,096 in flight, a pass making tens of thousands of objects) still ran ~200 gen-0, ~18 gen-1
#: and 1-2 full passes per 300,000 commands, which found under 60 objects; at 50,000 it ran one
#: gen-0 pass, and SET went 31.7k -> 36.0k/s with its p99 233 -> 146 ms (GET 77k -> 81k/s).
#: Young cycles still go within 50,000 allocations; a cycle that survived into an older
#: generation waits for that generation's pass, as before, only less often.
GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """For a node's own process (``run_node_process``; not a library's business in a user's
    process): collect, then freeze what exists at start (modules, classes, functions: never
    garbage, so a full pass no longer walks them), then raise the gen-0 threshold (see
    GC_GEN0_THRESHOLD). Memory is freed by refcount as ever: only the cycle collector's work changes."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def run_node_process(config: NodeConfig, parent_pid: int | None = None) -> None:
    """Entry point of ``trimaran node run``: blocks until the node stopped gracefully. It owns the
    process: it tunes the interpreter's cycle collector first (:func:`tune_gc`).

    Raises the first underlying error (not an exception group) if the node could not run.
    """
    tune_gc()
    try:
        trio.run(serve_until_signalled, config, parent_pid)
    except BaseExceptionGroup as group:
        raise first_error(group) from None
