"""The RESP listener's connections.

On plain sockets the listener's poller (:mod:`.poller`) serves every connection's planned commands
(below) in passes: one read per ready socket, every connection's writes in one group and its reads
in another, answers written from the driver's round; a connection leaves it for its own task for
anything else (and comes back). That task, and over TLS the one task per connection, reads
(straight from a plain socket, waiting for it only when it has nothing), parses with the sans-IO
:class:`~trimaran.protocols.resp.RespParser` (``resp_inflight_commands_max`` commands at a time:
pipelining reads ahead that far, then stops reading), runs the commands in order and writes their
answers, so a pipeline's answers come back in the order sent and a write is applied before a later
read of the same connection runs (Redis's order). Reads or writes waiting back to back go to the
driver together (:mod:`.groups`), their answers written together in order, straight to the socket
(``send_all`` for what it does not take) before more commands are taken; an answer over
``resp_answer_bytes_max`` is replaced by an error. Every connection's groups are timed out by the
listener's one :class:`~.groups.Lapses` task, not a timeout per command.

A protocol error is answered ``-ERR Protocol error: ...`` (after the answers to the commands before
it) and the connection closed, as Redis does; the node is unaffected. At most
``resp_connections_max`` connections are open; one more is answered ``-ERR max number of clients
reached`` and closed.

Requests reach the node through an :class:`~trimaran.node.http.edge.HttpEdge` of the listener's
own (same driver path, leader forwarding with the caller's token, cached token grants). Each
connection writes through a client session of its own (:class:`~trimaran.node.http.edge.EdgeSession`,
registered on its first write), so a write is applied once inside the cluster. There is no way to
end a session yet: a closed connection's session expires (``session_timeout_ms``), and the session
table's LRU bound (``limits.sessions_max``) holds meanwhile. Reads are linearizable.

Auth (on when the node has auth keys): ``AUTH [user] <token>`` or ``HELLO 3 AUTH <user> <token>``
with a trimaran token (the user name is ignored). Before it, every command but ``AUTH``, ``HELLO``,
``QUIT`` and ``RESET`` is ``-NOAUTH Authentication required.``, and Redis's tighter bounds hold
(10 arguments, 16 KiB each, and a bounded read-ahead: ``-ERR Protocol error: unauthenticated ...``
and the connection closed); a bad token is ``-WRONGPASS``; a request outside the token's scopes is
``-NOPERM`` (checked by the authoriser with the same op and body as the REST routes).

Commands with a planner (:class:`~trimaran.node.resp.base.Planned`: one KV write, such as SET,
INCR, MSET, GETSET, or one read, such as GET, MGET, TTL) waiting back to back are handed to the
driver together (:mod:`.groups`): one commit round for a pipeline's run of writes, each with its own
session seq and its own answer, in order; one read point for a run of reads. MULTI/EXEC/WATCH:
:mod:`.transactions`; SCAN/KEYS/FLUSHDB: :mod:`.keyspace`.

Reads are linearizable; ``READONLY`` switches a connection to lease reads (a leader answers from
its lease without a heartbeat round when the cluster allows lease reads; otherwise they are
linearizable reads as before), ``READWRITE`` back. Pub/sub on chat channels: :mod:`.pubsub`.

TLS: when the node runs with ``--tls-dir``, this port serves TLS only, with the client port's
context (the node's certificate, no client certificate asked: the token says who the client is):
``redis-cli --tls --cacert DIR/ca.pem``, ``redis.Redis(ssl=True, ssl_ca_certs=...)``. Answers then
go through the TLS stream rather than straight to the socket.

Command handlers live in :mod:`.connection_commands`, :mod:`.strings`, :mod:`.keyspace` and
:mod:`.transactions`, :mod:`.pubsub` (see :data:`COMMANDS`).
"""

from __future__ import annotations

import logging
import os
import platform
import select
import ssl
import time
from collections import deque
from typing import Any, Awaitable, Callable

import trio

from trimaran import limits
from trimaran.errors import ProtocolError, TrimaranError, Unauthenticated
from trimaran.node.config import Address, NodeConfig
from trimaran.node.http.chat_gateway import ChatHub
from trimaran.node.http.edge import HttpEdge
from trimaran.node.resp import connection_commands, keyspace, pubsub, strings, transactions
from trimaran.node.resp.base import ANSWERED, Handler, Planned, Quit, Read, RespError, Write, error_reply, unknown_command
from trimaran.node.resp.groups import Lapses, Outcome, RespSession, submit_or_forward
from trimaran.node.resp.poller import PolledState, Poller
from trimaran.protocols import resp
from trimaran.protocols.resp import NOAUTH, ErrorReply, Reply, RespParser

log = logging.getLogger("trimaran.node.resp")

#: Every command served, by its upper-case name.
COMMANDS: dict[bytes, Handler] = {
    **connection_commands.COMMANDS,
    **strings.COMMANDS,
    **keyspace.COMMANDS,
    **transactions.COMMANDS,
    **pubsub.COMMANDS,
}

#: Redis's reply to a client with no slot left.
MAX_CLIENTS = ErrorReply("max number of clients reached")
WRONGPASS = ErrorReply("invalid username-password pair or user is disabled.", "WRONGPASS")
#: Commands a connection may send before it authenticates.
_BEFORE_AUTH = frozenset((b"AUTH", b"HELLO", b"QUIT", b"RESET"))
#: Redis's bounds on a connection that has not authenticated (auth on): a command's arguments, one
#: argument's bytes, and (trimaran's) the bytes buffered towards the next command. A stranger
#: cannot make the node hold more than this per connection.
UNAUTHENTICATED_ARGS_MAX = 10
UNAUTHENTICATED_ARG_BYTES_MAX = 16 * limits.KIB
UNAUTHENTICATED_BUFFER_BYTES_MAX = limits.resp_receive_bytes_max + UNAUTHENTICATED_ARGS_MAX * UNAUTHENTICATED_ARG_BYTES_MAX



class _Connection:
    """One client's state: protocol version, name, grant."""

    def __init__(self, server: RespServer, stream: trio.abc.Stream, connection_id: int) -> None:
        self.server = server
        self.stream = stream
        #: The socket, written straight to (None over TLS: every write goes through the stream),
        #: and whether its last read had to wait for it to be readable.
        self.fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        self.waited = False
        self.id = connection_id
        self.protocol = 2
        self.name = b""
        self.token: str | None = None
        self.authenticated = not server.edge.authoriser.enabled
        #: Registered on the connection's first write (a read-only client costs the log nothing).
        self.session = RespSession(server.edge, server.config.resp_inflight_commands_max, server.lapses)
        #: How its reads are served: "linearizable", or "lease" after READONLY (see that command).
        self.consistency = "linearizable"
        #: The plans queued since MULTI (None: not in a transaction), whether one was refused,
        #: and the watched keys' (revision, expires_at_ms) (see :mod:`.transactions`).
        self.transaction: list[Write | Read] | None = None
        self.transaction_failed = False
        self.watched: dict[bytes, tuple[int, int]] = {}
        #: Its pub/sub state, from its first SUBSCRIBE or PSUBSCRIBE (see :mod:`.pubsub`); its tasks
        #: run in the connection's nursery.
        self.pubsub: pubsub.Subscriptions | None = None
        self.nursery: trio.Nursery | None = None
        #: Its parser, and the commands parsed and not yet run (a ProtocolError last).
        self.parser = RespParser()
        self.pending: deque[Any] = deque()
        #: Its state with the listener's poller (:mod:`.poller`; plain sockets only).
        self.polled = PolledState()


class RespServer:
    """See the module docstring. ``status``: the node's status (for INFO)."""

    def __init__(
        self,
        config: NodeConfig,
        edge: HttpEdge,
        wall_clock_ms: Callable[[], int] | None = None,
        hub: ChatHub | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        assert config.resp_listen is not None
        self.config = config
        self.edge = edge
        #: The node's client-port TLS context (``--tls-dir``): the listener then serves TLS only.
        self.tls = tls
        #: The node's chat hub (pub/sub); None: the node runs no chat service.
        self.hub = hub
        self.wall_clock_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.address: Address | None = None
        self._slots = trio.Semaphore(config.resp_connections_max)
        self._next_id = 0
        self.started_at_s = time.monotonic()
        self.scan_cursors = keyspace.Cursors()
        #: Times out the groups of every connection (one task, not a timeout per command).
        self.lapses = Lapses(config.request_timeout_ms / 1000)
        #: Serves the plain-socket connections' planned commands, all of them in one pass (None
        #: over TLS, or without ``select.epoll`` (not Linux): a task per connection runs everything).
        self.poller: Poller | None = Poller(self) if tls is None and hasattr(select, "epoll") else None
        #: Counters (reported in the node's status metrics).
        self.connections = 0
        self.connections_refused = 0
        self.commands = 0
        self.protocol_errors = 0

    # ------------------------------------------------------------------ serving

    async def serve(self, *, task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on ``resp_listen`` until cancelled; ``task_status`` gets the bound address."""
        cfg = self.config
        assert cfg.resp_listen is not None
        tcp = await trio.open_tcp_listeners(cfg.resp_listen.port, host=cfg.resp_listen.host)
        host, port = tcp[0].socket.getsockname()[:2]
        self.address = Address(host, port)
        listeners: list[trio.abc.Listener[Any]] = list(tcp)
        if self.tls is not None:  # the handshake happens on the connection's first read or write
            listeners = [trio.SSLListener(listener, self.tls) for listener in tcp]
        if self.poller is not None:
            self.poller.open()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.lapses.run)
                if self.poller is not None:
                    nursery.start_soon(self.poller.run)
                nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                task_status.started(self.address)
        finally:
            if self.poller is not None:
                self.poller.close()

    async def _handle(self, stream: trio.abc.Stream) -> None:
        async with stream:
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                self.connections_refused += 1
                try:
                    await stream.send_all(resp.encode(MAX_CLIENTS))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                return
            try:
                self.connections += 1
                self._next_id += 1
                await self._serve_connection(_Connection(self, stream, self._next_id))
            finally:
                self.connections -= 1
                self._slots.release()

    async def _serve_connection(self, conn: _Connection) -> None:
        try:
            async with trio.open_nursery() as nursery:  # (pub/sub's tasks run in it)
                conn.nursery = nursery
                if self.poller is not None and conn.fd is not None:
                    await _until_gone(self.poller.serve, conn)
                else:
                    await _until_gone(self._loop, conn)
                nursery.cancel_scope.cancel()
        finally:
            if conn.pubsub is not None:
                conn.pubsub.detach()

    async def _loop(self, conn: _Connection, hand_back: Callable[[_Connection], bool] | None = None) -> bool:
        """Read, parse and run the connection's commands, one task per connection: a command
        waiting for its answer holds the next ones in the parser (and the socket) rather than in a
        channel to a second task, which cost a task switch per command. What a read brings is run
        in order; writes (or reads) back to back go to the driver together. With ``hand_back``
        (the poller's): stop (True) when every command read is answered and it says the
        connection may go back to the poller. False: the connection is to be closed."""
        parser, pending = conn.parser, conn.pending
        while True:
            if not pending:
                if hand_back is not None and hand_back(conn):
                    return True
                data = await _receive(conn)
                if not data:
                    return False
                self._parse(conn, parser, pending, data)
                if not pending:
                    continue
            item = pending.popleft()
            if isinstance(item, ProtocolError):
                self.protocol_errors += 1
                await conn.stream.send_all(resp.encode(resp.protocol_error_reply(item), conn.protocol))
                return False
            first = self._plan(conn, item)
            if first is not None:
                group = self._gather(conn, pending, [first], type(first))
                await self._run_planned(conn, group)
            elif not await self._run_one(conn, item):
                return False
            if not pending:
                self._parse(conn, parser, pending, b"")  # what the last read brought beyond that

    def _parse(self, conn: _Connection, parser: RespParser, pending: deque[Any], data: bytes | bytearray) -> None:
        """Feed ``data`` and parse commands onto ``pending``: up to ``resp_inflight_commands_max``
        at a time, one at a time before the connection authenticates (an AUTH must take effect
        before the next command is held to a stranger's bounds or not). A ProtocolError goes on
        last (answered after the commands before it); nothing after it is parsed."""
        limit = self.config.resp_inflight_commands_max if conn.authenticated else 1
        try:
            if data:
                parser.feed(data)
            while len(pending) < limit and (command := parser.next_command()) is not None:
                if not conn.authenticated:
                    _check_unauthenticated(command)
                pending.append(command)
            if not conn.authenticated and parser.buffered_bytes > UNAUTHENTICATED_BUFFER_BYTES_MAX:
                raise ProtocolError("Protocol error: unauthenticated bulk length")
        except ProtocolError as exc:
            pending.append(exc)

    def _gather(self, conn: _Connection, pending: deque[Any], batch: list[Any], kind: type) -> list[Any]:
        """Add to ``batch`` the plans of the parsed commands that follow while they are of ``kind``
        (or refusals: answered in place), up to ``resp_inflight_commands_max``."""
        while pending and len(batch) < self.config.resp_inflight_commands_max:
            following = pending[0]
            planned = self._plan(conn, following) if isinstance(following, list) else None
            if planned is None or not isinstance(planned, (kind, ErrorReply)):
                break
            pending.popleft()
            batch.append(planned)
        return batch

    def _plan(self, conn: _Connection, command: list[bytes]) -> Write | Read | ErrorReply | None:
        """The one write or read of ``command`` if it may join a group (or its refusal before any:
        a syntax error); None: it runs alone."""
        handler = COMMANDS.get(command[0]) or COMMANDS.get(command[0].upper())  # (clients mostly send upper case)
        if not isinstance(handler, Planned) or not conn.authenticated or conn.transaction is not None or conn.pubsub is not None:
            return None  # (with pub/sub, every answer goes through its outbox: one at a time)
        try:
            return handler.plan(self, conn, command)
        except RespError as exc:
            return exc.reply
        except Exception:  # noqa: BLE001 - a planner's bug: the command runs alone, which logs it
            return None

    async def _run_planned(self, conn: _Connection, group: list[Write | Read | ErrorReply]) -> None:
        self.commands += len(group)
        replies = await self.run_group(conn, group)
        await self._write(conn, [self.wire(reply, conn.protocol) for reply in replies])

    async def _run_one(self, conn: _Connection, command: list[bytes]) -> bool:
        """Run one command and write its answer; False: close the connection now."""
        self.commands += 1
        protocol = conn.protocol
        close = False
        try:
            reply = await self.execute(conn, command)
        except Quit as quit:
            reply, close = quit.reply, True
        if reply is ANSWERED:  # queued by the handler (SUBSCRIBE and family): wait until written
            assert conn.pubsub is not None
            await conn.pubsub.flush()
            return not close
        # HELLO answers in the protocol it switches to; everything else in the one in force.
        await self._write(conn, [self.wire(reply, conn.protocol if command[0].upper() == b"HELLO" else protocol)])
        return not close

    def wire(self, reply: Reply, protocol: int) -> bytes:
        wire = resp.encode(reply, protocol)
        if len(wire) > self.config.resp_answer_bytes_max:
            wire = resp.encode(ErrorReply(f"the answer of {len(wire)} bytes is over resp_answer_bytes_max={self.config.resp_answer_bytes_max}"))
        return wire

    async def _write(self, conn: _Connection, wires: list[bytes]) -> None:
        if conn.pubsub is not None:  # one writer for answers and pushes, in order
            conn.pubsub.append_wires(wires)
            await conn.pubsub.flush()
            return
        data = b"".join(wires) if len(wires) > 1 else wires[0]
        # Straight to the socket when it takes it all (the common case): no pass through trio's
        # scheduler per answer; what it does not take goes through send_all, which waits.
        written = 0
        if conn.fd is not None:
            try:
                written = os.write(conn.fd, data)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc
        if written < len(data):
            await conn.stream.send_all(memoryview(data)[written:])

    async def execute(self, conn: _Connection, args: list[bytes]) -> Reply:
        """One command's answer (errors as ErrorReply); raises Quit to close after it."""
        name = args[0].upper()
        handler = COMMANDS.get(name)
        if handler is None:
            if conn.transaction is not None:
                conn.transaction_failed = True
            return unknown_command(args)
        if not conn.authenticated and name not in _BEFORE_AUTH:
            return NOAUTH
        if pubsub.in_subscribed_mode(conn) and name not in pubsub.SUBSCRIBED_MODE_COMMANDS:
            return pubsub.subscribed_mode_refusal(name)
        if conn.transaction is not None and name not in transactions.IMMEDIATE:
            return transactions.queue(self, conn, args, handler)
        try:
            return await handler(self, conn, args)
        except RespError as exc:
            return exc.reply
        except TrimaranError as exc:
            return error_reply(exc)
        except (Quit, trio.Cancelled):
            raise
        except Exception:
            # A bug in one handler must not take the node down with it: logged, answered, and the
            # connection goes on (the state machine is untouched: handlers only call the edge).
            log.exception("RESP command %r failed", name[:64])
            return ErrorReply("internal error; see the node's log")

    # ------------------------------------------------------------------ requests

    def authorise(self, conn: _Connection, op: str, body: dict[str, Any]) -> None:
        """Refuse (``PermissionDenied``, ``Unauthenticated``) a request outside the connection's token."""
        grant = self.edge.grant(conn.token) if self.edge.authoriser.enabled else None
        if grant is not None:
            self.edge.authoriser.check(grant, op, body)

    async def read(self, conn: _Connection, query: list[Any]) -> Any:
        body = {"service": "kv", "query": query, "consistency": conn.consistency}
        self.authorise(conn, "read", body)
        return await self.edge.request("read", body, 0, conn.token)

    async def write(self, conn: _Connection, command: list[Any], size_bytes: int) -> Any:
        self.authorise(conn, "command", {"service": "kv", "command": command})
        return await conn.session.command("kv", command, size_bytes, conn.token)

    async def run_group(self, conn: _Connection, group: list[Write | Read | ErrorReply]) -> list[Reply]:
        """Apply the writes of ``group`` in order in one commit round, or serve its reads at one
        read point (see :mod:`.groups`); an ErrorReply stands for itself. Their replies, in order."""
        replies, sent, bodies = self.authorised(conn, group)
        if not sent:
            return replies
        writes = [plan for i in sent if isinstance(plan := group[i], Write)]
        assert not writes or len(writes) == len(sent), "a group is of one kind"
        try:
            if writes:
                outcomes = await conn.session.command_group("kv", [(w.command, w.size_bytes) for w in writes], conn.token)
            else:
                outcomes = await submit_or_forward(self.edge, "read", bodies, [0] * len(bodies), conn.token, self.lapses)
        except TrimaranError as exc:  # the session could not be registered: nothing was sent
            outcomes = [(False, exc)] * len(sent)
        return self.answer(group, replies, sent, outcomes)

    def authorised(self, conn: _Connection, group: list[Write | Read | ErrorReply]) -> tuple[list[Reply], list[int], list[dict[str, Any]]]:
        """A group's replies so far (its refusals: an ErrorReply of its own, or outside the
        connection's token), the indexes of the plans to send, and their bodies (a read's is
        what is submitted; a write's only what is authorised, empty with auth off)."""
        edge = self.edge
        if len(group) == 1 and not edge.authoriser.enabled:  # one command, nothing to check
            plan = group[0]
            if isinstance(plan, Write):
                return [None], [0], [{}]
            if isinstance(plan, Read):
                return [None], [0], [_read_body(conn, plan)]
        replies: list[Reply] = [g if isinstance(g, ErrorReply) else None for g in group]
        sent = []
        bodies = []
        # The token's grant is looked up once per group, not per command (with auth off there is
        # none, and nothing to check: a write's body is then not even built).
        refusal: TrimaranError | None = None
        grant = None
        now_ms: int | None = None  # the node's time for the grant's expiry, read once for the group
        if edge.authoriser.enabled and any(not isinstance(plan, ErrorReply) for plan in group):
            try:
                grant = edge.grant(conn.token)
            except TrimaranError as exc:  # no valid token: every command of the group is refused
                refusal = exc
            now_ms = edge.authoriser.now_ms()
        for index, plan in enumerate(group):
            if isinstance(plan, ErrorReply):
                continue
            if refusal is not None:
                replies[index] = error_reply(refusal)
                continue
            if isinstance(plan, Write):
                op, body = "command", ({"service": "kv", "command": plan.command} if grant is not None else {})
            else:
                op, body = "read", _read_body(conn, plan)
            if grant is not None:
                try:
                    edge.authoriser.check(grant, op, body, now_ms)
                except TrimaranError as exc:
                    replies[index] = error_reply(exc)  # refused here: nothing of it reaches the log
                    continue
            sent.append(index)
            bodies.append(body)
        return replies, sent, bodies

    @staticmethod
    def answer(group: list[Write | Read | ErrorReply], replies: list[Reply], sent: list[int], outcomes: list[Outcome]) -> list[Reply]:
        """``replies`` completed with the answers of the plans sent (``sent``), from their outcomes."""
        for index, (ok, value) in zip(sent, outcomes):
            plan = group[index]
            if isinstance(plan, Write):
                replies[index] = plan.answer(ok, value)
            elif isinstance(plan, Read):
                replies[index] = plan.answer(value) if ok else error_reply(value)
        return replies

    def login(self, conn: _Connection, token: bytes) -> None:
        """Verify a token for ``conn`` (``-WRONGPASS`` if refused)."""
        if not self.edge.authoriser.enabled:
            raise RespError(ErrorReply("AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"))
        text = token.decode("utf-8", "replace")
        try:
            self.edge.grant(text)
        except Unauthenticated:
            raise RespError(WRONGPASS) from None
        conn.token, conn.authenticated = text, True

    def info_text(self) -> str:
        status = self.edge.status()
        role = "master" if status.get("role") == "leader" else "slave"
        lines = [
            "# Server",
            "redis_version:7.2.0",
            "trimaran:1",
            "redis_mode:standalone",
            f"os:{platform.system()}",
            f"process_id:{os.getpid()}",
            f"tcp_port:{self.address.port if self.address else 0}",
            f"uptime_in_seconds:{int(time.monotonic() - self.started_at_s)}",
            f"trimaran_node_id:{status.get('node_id')}",
            f"trimaran_cluster_id:{status.get('cluster_id')}",
            "",
            "# Clients",
            f"connected_clients:{self.connections}",
            f"rejected_connections:{self.connections_refused}",
            "",
            "# Replication",
            f"role:{role}",
            f"trimaran_raft_role:{status.get('role')}",
            f"trimaran_term:{status.get('term')}",
            f"trimaran_leader_id:{status.get('leader_id')}",
            f"trimaran_leader_address:{status.get('leader_address')}",
            f"trimaran_commit_index:{status.get('commit_index')}",
            f"trimaran_applied_index:{status.get('applied_index')}",
            "",
        ]
        return "\r\n".join(lines)


async def _receive(conn: _Connection) -> bytes | bytearray:
    """What the client sent next (empty: it closed). On a plain socket, read straight from it and
    wait for it to be readable only if it has nothing: one pass through trio's scheduler per read,
    where ``receive_some`` takes two when it has to wait (the common case: a client waiting for its
    last answer); a read that finds data still yields once, so a flooding client cannot hold the
    loop. When the last read had to wait (``conn.waited``: a client that sends a command, then
    waits for its answer), wait for readability before reading, not after a read that finds
    nothing."""
    wait_first, conn.waited = conn.waited, False
    if conn.fd is None:
        return await conn.stream.receive_some(limits.resp_receive_bytes_max)
    try:
        try:
            if wait_first:
                raise BlockingIOError
            data = os.read(conn.fd, limits.resp_receive_bytes_max)
        except BlockingIOError:
            conn.waited = True
            await trio.lowlevel.wait_readable(conn.fd)
            try:
                return os.read(conn.fd, limits.resp_receive_bytes_max)
            except BlockingIOError:  # (woken with nothing to read after all)
                return await conn.stream.receive_some(limits.resp_receive_bytes_max)
    except OSError as exc:
        raise trio.BrokenResourceError(str(exc)) from exc
    await trio.lowlevel.checkpoint()
    return data


def _read_body(conn: _Connection, plan: Read) -> dict[str, Any]:
    """The driver's request body of a planned read, at the connection's consistency."""
    return {"service": "kv", "query": plan.query, "consistency": conn.consistency}


def _check_unauthenticated(command: list[bytes]) -> None:
    """Redis's tighter bounds before AUTH (its wording)."""
    if len(command) > UNAUTHENTICATED_ARGS_MAX:
        raise ProtocolError("Protocol error: unauthenticated multibulk length")
    if any(len(arg) > UNAUTHENTICATED_ARG_BYTES_MAX for arg in command):
        raise ProtocolError("Protocol error: unauthenticated bulk length")


async def _until_gone(task: Callable[..., Awaitable[object]], *args: Any) -> None:
    """Run one of a connection's tasks; the client going away (reset, closed) just ends it."""
    try:
        await task(*args)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass

