"""The RESP listener: Redis clients (redis-py, redis-cli) talk to the replicated KV cache.

Each connection is parsed by the sans-IO :class:`~trimaran.protocols.resp.RespParser` and served
by two tasks:

- the **reader** feeds received bytes to the parser and queues each whole command on a bounded
  channel (``resp_inflight_commands_max``: pipelining reads ahead that far, then stops reading);
- the **runner** takes the commands in order, runs each to its end, and writes its answer, so a
  pipeline's answers come back in the order sent and a write is applied before a later read of the
  same connection runs (Redis's order). Reads waiting back to back (:data:`READS`) run at once,
  their answers written together in order. The runner takes more commands only once the answers
  before are written (``send_all``), so at most ``resp_inflight_commands_max`` answers wait for the
  socket; an answer over ``resp_answer_bytes_max`` is replaced by an error.

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

Not yet: a pipeline's writes run one after another (a commit round each: about 50 SETs a second
on one connection of an in-process cluster on this disk, against 7,000 pipelined GETs); submitting
them to the driver in order, in one group, is the next step. No TLS on this port, no MULTI/EXEC,
pub/sub, SCAN/KEYS, and no READONLY-style lease reads.

KV commands map onto the KV service (:mod:`trimaran.services.kv`): see :data:`COMMANDS` and each
handler. ``SET ... GET``/``XX``/``GETDEL`` are compare-and-set loops on the key's revision (atomic:
the write applies only if the key is unchanged since the read). ``KEEPTTL`` and ``EXPIRE``'s
``NX``/``XX``/``GT``/``LT`` are refused with ``-ERR syntax error``.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from typing import Any, Awaitable, Callable

import trio

from trimaran import limits
from trimaran.errors import (
    ConditionFailed,
    InvalidArgument,
    NotLeader,
    OutOfMemory,
    PermissionDenied,
    ProtocolError,
    TrimaranError,
    Unauthenticated,
    Unavailable,
)
from trimaran.node.config import Address, NodeConfig
from trimaran.node.http.edge import EdgeSession, HttpEdge
from trimaran.protocols import resp
from trimaran.protocols.resp import (
    NOAUTH,
    NOT_AN_INTEGER,
    OK,
    OOM,
    PONG,
    SYNTAX_ERROR,
    ErrorReply,
    Reply,
    RespParser,
    SimpleString,
    Verbatim,
)
from trimaran.services.kv_args import INT64_MAX, INT64_MIN, ttl_ms_max

log = logging.getLogger("trimaran.node.resp")

#: Compare-and-set tries of SET XX/GET and GETDEL before giving up (each failure is another
#: client's write to the same key in between).
CAS_ATTEMPTS_MAX = 16
#: Redis's reply to a client with no slot left.
MAX_CLIENTS = ErrorReply("max number of clients reached")
WRONGPASS = ErrorReply("invalid username-password pair or user is disabled.", "WRONGPASS")
#: Commands that only read: a run of them waiting back to back is served at once.
READS = frozenset((b"GET", b"MGET", b"EXISTS", b"TTL", b"PTTL", b"TYPE", b"PING", b"ECHO", b"DBSIZE"))
#: Commands a connection may send before it authenticates.
_BEFORE_AUTH = frozenset((b"AUTH", b"HELLO", b"QUIT", b"RESET"))
#: Redis's bounds on a connection that has not authenticated (auth on): a command's arguments, one
#: argument's bytes, and (trimaran's) the bytes buffered towards the next command. A stranger
#: cannot make the node hold more than this per connection.
UNAUTHENTICATED_ARGS_MAX = 10
UNAUTHENTICATED_ARG_BYTES_MAX = 16 * limits.KIB
UNAUTHENTICATED_BUFFER_BYTES_MAX = limits.resp_receive_bytes_max + UNAUTHENTICATED_ARGS_MAX * UNAUTHENTICATED_ARG_BYTES_MAX


class _Quit(Exception):
    """Close the connection after this answer."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply


class RespError(Exception):
    """An error answer (``reply``) raised from deep inside a handler."""

    def __init__(self, reply: ErrorReply) -> None:
        self.reply = reply


def _int(arg: bytes) -> int:
    """Redis's strict integer argument (``string2ll``), else the not-an-integer error."""
    try:
        text = arg.decode("ascii")
    except UnicodeDecodeError:
        raise RespError(NOT_AN_INTEGER) from None
    if not text or text.strip() != text or text.startswith("+") or (len(text) > 1 and text.lstrip("-").startswith("0")):
        raise RespError(NOT_AN_INTEGER)
    try:
        value = int(text)
    except ValueError:
        raise RespError(NOT_AN_INTEGER) from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise RespError(NOT_AN_INTEGER)
    return value


def _arity_error(name: bytes) -> RespError:
    return RespError(ErrorReply(f"wrong number of arguments for '{name.decode('utf-8', 'replace').lower()}' command"))


def unknown_command(args: list[bytes]) -> ErrorReply:
    """Redis's wording: ``unknown command 'FOO', with args beginning with: 'a' 'b' ``."""
    shown = "".join(f"'{a.decode('utf-8', 'replace')[:128]}' " for a in args[1:])
    return ErrorReply(f"unknown command '{args[0].decode('utf-8', 'replace')[:128]}', with args beginning with: {shown}")


def error_reply(exc: TrimaranError) -> ErrorReply:
    """A typed error as Redis's clients expect it (codes they dispatch on first)."""
    if isinstance(exc, OutOfMemory):
        return OOM
    if isinstance(exc, PermissionDenied):
        return ErrorReply(f"No permissions: {exc.message}", "NOPERM")
    if isinstance(exc, Unauthenticated):
        return ErrorReply(exc.message, "NOAUTH")
    if isinstance(exc, (NotLeader, Unavailable)):
        return ErrorReply(exc.message, "TRYAGAIN")
    return ErrorReply(exc.message)


class _Connection:
    """One client's state: protocol version, name, grant."""

    def __init__(self, server: RespServer, stream: trio.SocketStream, connection_id: int) -> None:
        self.server = server
        self.stream = stream
        self.id = connection_id
        self.protocol = 2
        self.name = b""
        self.token: str | None = None
        self.authenticated = not server.edge.authoriser.enabled
        self.answer_bytes_queued = 0
        #: Commands the runner has answered, and an event set at each (the reader waits on it for
        #: an AUTH to take effect before it reads on as a stranger or as a known client).
        self.answered = 0
        self.progress = trio.Event()
        #: Registered on the connection's first write (a read-only client costs the log nothing).
        self.session = EdgeSession(server.edge, server.config.resp_inflight_commands_max)


Handler = Callable[["RespServer", _Connection, list[bytes]], Awaitable[Reply]]


class RespServer:
    """See the module docstring. ``status``: the node's status (for INFO)."""

    def __init__(self, config: NodeConfig, edge: HttpEdge, wall_clock_ms: Callable[[], int] | None = None) -> None:
        assert config.resp_listen is not None
        self.config = config
        self.edge = edge
        self.wall_clock_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.address: Address | None = None
        self._slots = trio.Semaphore(config.resp_connections_max)
        self._next_id = 0
        self.started_at_s = time.monotonic()
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
        listeners = await trio.open_tcp_listeners(cfg.resp_listen.port, host=cfg.resp_listen.host)
        host, port = listeners[0].socket.getsockname()[:2]
        self.address = Address(host, port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started(self.address)

    async def _handle(self, stream: trio.SocketStream) -> None:
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
        send, receive = trio.open_memory_channel[Any](self.config.resp_inflight_commands_max)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_until_gone, self._read, conn, send)
            await _until_gone(self._run, conn, receive)
            nursery.cancel_scope.cancel()

    async def _read(self, conn: _Connection, send: trio.MemorySendChannel[Any]) -> None:
        """Parse commands onto ``send``; a ProtocolError is queued too (answered after the commands
        before it); the end of the stream closes ``send``."""
        parser = RespParser()
        queued = 0
        async with send:
            while True:
                data = await conn.stream.receive_some(limits.resp_receive_bytes_max)
                if not data:
                    return
                try:
                    parser.feed(data)
                    while (command := parser.next_command()) is not None:
                        if not conn.authenticated:
                            _check_unauthenticated(command)
                        await send.send(command)
                        queued += 1
                        if not conn.authenticated and command[0].upper() in _BEFORE_AUTH:
                            while conn.answered < queued:  # did it authenticate?
                                await conn.progress.wait()
                    if not conn.authenticated and parser.buffered_bytes > UNAUTHENTICATED_BUFFER_BYTES_MAX:
                        raise ProtocolError("Protocol error: unauthenticated bulk length")
                except ProtocolError as exc:
                    await send.send(exc)
                    return

    async def _run(self, conn: _Connection, receive: trio.MemoryReceiveChannel[Any]) -> None:
        held: Any = None  # taken from the channel while gathering reads, run next
        async with receive:
            while True:
                if held is not None:
                    item, held = held, None
                else:
                    try:
                        item = await receive.receive()
                    except trio.EndOfChannel:
                        return
                if isinstance(item, ProtocolError):
                    self.protocol_errors += 1
                    await conn.stream.send_all(resp.encode(resp.protocol_error_reply(item), conn.protocol))
                    return
                if item[0].upper() in READS:
                    # Reads waiting back to back run at once (none changes what another sees, and
                    # each is linearizable on its own); their answers go out in order, in one write.
                    batch = [item]
                    while len(batch) < self.config.resp_inflight_commands_max:
                        try:
                            following = receive.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        if isinstance(following, list) and following[0].upper() in READS:
                            batch.append(following)
                        else:
                            held = following
                            break
                    if len(batch) > 1:
                        await self._run_reads(conn, batch)
                        continue
                if not await self._run_one(conn, item):
                    return

    async def _run_one(self, conn: _Connection, command: list[bytes]) -> bool:
        """Run one command and write its answer; False: close the connection now."""
        self.commands += 1
        protocol = conn.protocol
        close = False
        try:
            reply = await self.execute(conn, command)
        except _Quit as quit:
            reply, close = quit.reply, True
        # HELLO answers in the protocol it switches to; everything else in the one in force.
        await self._write(conn, [self._wire(reply, conn.protocol if command[0].upper() == b"HELLO" else protocol)])
        return not close

    async def _run_reads(self, conn: _Connection, batch: list[list[bytes]]) -> None:
        self.commands += len(batch)
        replies: list[Reply] = [None] * len(batch)

        async def run(index: int) -> None:
            replies[index] = await self.execute(conn, batch[index])

        async with trio.open_nursery() as nursery:
            for index in range(len(batch)):
                nursery.start_soon(run, index)
        await self._write(conn, [self._wire(reply, conn.protocol) for reply in replies])

    def _wire(self, reply: Reply, protocol: int) -> bytes:
        wire = resp.encode(reply, protocol)
        if len(wire) > self.config.resp_answer_bytes_max:
            wire = resp.encode(ErrorReply(f"the answer of {len(wire)} bytes is over resp_answer_bytes_max={self.config.resp_answer_bytes_max}"))
        return wire

    async def _write(self, conn: _Connection, wires: list[bytes]) -> None:
        size = sum(len(w) for w in wires)
        conn.answer_bytes_queued += size
        try:
            await conn.stream.send_all(b"".join(wires) if len(wires) > 1 else wires[0])
        finally:
            conn.answer_bytes_queued -= size
        conn.answered += len(wires)
        conn.progress.set()
        conn.progress = trio.Event()

    async def execute(self, conn: _Connection, args: list[bytes]) -> Reply:
        """One command's answer (errors as ErrorReply); raises _Quit to close after it."""
        name = args[0].upper()
        handler = COMMANDS.get(name)
        if handler is None:
            return unknown_command(args)
        if not conn.authenticated and name not in _BEFORE_AUTH:
            return NOAUTH
        try:
            return await handler(self, conn, args)
        except RespError as exc:
            return exc.reply
        except TrimaranError as exc:
            return error_reply(exc)
        except (_Quit, trio.Cancelled):
            raise
        except Exception:
            # A bug in one handler must not take the node down with it: logged, answered, and the
            # connection goes on (the state machine is untouched: handlers only call the edge).
            log.exception("RESP command %r failed", name[:64])
            return ErrorReply("internal error; see the node's log")

    # ------------------------------------------------------------------ requests

    def _authorise(self, conn: _Connection, op: str, body: dict[str, Any]) -> None:
        grant = self.edge.grant(conn.token) if self.edge.authoriser.enabled else None
        if grant is not None:
            self.edge.authoriser.check(grant, op, body)

    async def read(self, conn: _Connection, query: list[Any]) -> Any:
        body = {"service": "kv", "query": query, "consistency": "linearizable"}
        self._authorise(conn, "read", body)
        return await self.edge.request("read", body, 0, conn.token)

    async def write(self, conn: _Connection, command: list[Any], size_bytes: int) -> Any:
        self._authorise(conn, "command", {"service": "kv", "command": command})
        return await conn.session.command("kv", command, size_bytes, conn.token)

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


def _check_unauthenticated(command: list[bytes]) -> None:
    """Redis's tighter bounds before AUTH (its wording)."""
    if len(command) > UNAUTHENTICATED_ARGS_MAX:
        raise ProtocolError("Protocol error: unauthenticated multibulk length")
    if any(len(arg) > UNAUTHENTICATED_ARG_BYTES_MAX for arg in command):
        raise ProtocolError("Protocol error: unauthenticated bulk length")


async def _until_gone(task: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run one of a connection's tasks; the client going away (reset, closed) just ends it."""
    try:
        await task(*args)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


# --- connection commands ---------------------------------------------------------------------------


async def _ping(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) > 2:
        raise _arity_error(a[0])
    return a[1] if len(a) == 2 else PONG


async def _echo(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise _arity_error(a[0])
    return a[1]


async def _quit(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    raise _Quit(OK)


async def _reset(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    c.protocol, c.name = 2, b""
    if s.edge.authoriser.enabled:
        c.token, c.authenticated = None, False
    return SimpleString("RESET")


async def _select(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise _arity_error(a[0])
    if _int(a[1]) != 0:
        return ErrorReply("DB index is out of range")
    return OK


async def _auth(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) not in (2, 3):
        raise _arity_error(a[0])
    s.login(c, a[-1])
    return OK


async def _hello(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    protocol = c.protocol
    i = 1
    if len(a) > 1:
        try:
            protocol = _int(a[1])
        except RespError:
            return ErrorReply("Protocol version is not an integer or out of range")
        if protocol not in (2, 3):
            return ErrorReply("unsupported protocol version", "NOPROTO")
        i = 2
    name: bytes | None = None
    while i < len(a):
        option = a[i].upper()
        if option == b"AUTH" and i + 2 < len(a):
            s.login(c, a[i + 2])
            i += 3
        elif option == b"SETNAME" and i + 1 < len(a):
            name = a[i + 1]
            i += 2
        else:
            return ErrorReply(f"Syntax error in HELLO option '{a[i].decode('utf-8', 'replace')}'")
    if not c.authenticated:
        return ErrorReply(
            "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> "
            "option can be used to authenticate the client and select the RESP protocol version at the same time",
            "NOAUTH",
        )
    if name is not None:
        c.name = name
    c.protocol = protocol
    status = s.edge.status()
    return {
        "server": "redis",
        "version": "7.2.0",
        "proto": protocol,
        "id": c.id,
        "mode": "standalone",
        "role": "master" if status.get("role") == "leader" else "replica",
        "modules": [],
    }


async def _client(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) < 2:
        raise _arity_error(a[0])
    sub = a[1].upper()
    if sub == b"SETNAME" and len(a) == 3:
        if any(b <= 32 or b > 126 for b in a[2]):
            return ErrorReply("Client names cannot contain spaces, newlines or special characters.")
        c.name = a[2]
        return OK
    if sub == b"GETNAME" and len(a) == 2:
        return c.name or None
    if sub == b"ID" and len(a) == 2:
        return c.id
    if sub == b"SETINFO" and len(a) == 4:
        return OK
    if sub == b"INFO" and len(a) == 2:
        return f"id={c.id} name={c.name.decode('utf-8', 'replace')} db=0 resp={c.protocol}\n".encode()
    return ErrorReply(f"unknown subcommand or wrong number of arguments for '{a[1].decode('utf-8', 'replace')}'. Try CLIENT HELP.")


async def _command(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) >= 2 and a[1].upper() == b"COUNT":
        return 0
    if len(a) >= 2 and a[1].upper() == b"DOCS":
        return {}
    return []


async def _config(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) >= 3 and a[1].upper() == b"GET":
        known = {b"save": b"", b"appendonly": b"no", b"databases": b"1"}
        return {k: known[k] for k in (p.lower() for p in a[2:]) if k in known}
    return ErrorReply("CONFIG: only CONFIG GET is served")


async def _info(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    text = s.info_text()
    try:  # the keyspace section needs kv:read on every key; without it, the section is left out
        stats = await s.read(c, ["stats"])
    except (PermissionDenied, NotLeader, Unavailable):
        return Verbatim(text)
    return Verbatim(f"{text}\r\n# Keyspace\r\ndb0:keys={stats['keys']},expires=0,avg_ttl=0\r\n")


async def _dbsize(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    stats = await s.read(c, ["stats"])
    return int(stats["keys"])


# --- keys and strings ------------------------------------------------------------------------------


def _expiry_ms(s: RespServer, unit: bytes, arg: bytes, command: str) -> int:
    """A SET/EXPIRE expiry as milliseconds from now (may be 0 or negative: already expired)."""
    value = _int(arg)
    ms = {b"EX": value * 1000, b"PX": value, b"EXAT": value * 1000 - s.wall_clock_ms(), b"PXAT": value - s.wall_clock_ms()}[unit]
    if unit in (b"EX", b"PX") and value <= 0 or ms > ttl_ms_max:
        raise RespError(ErrorReply(f"invalid expire time in '{command}' command"))
    return ms


async def _get(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise _arity_error(a[0])
    found = await s.read(c, ["get", a[1]])
    return None if found is None else found[0]


async def _set_with(
    s: RespServer, c: _Connection, key: bytes, value: bytes, ttl_ms: int | None, nx: bool = False, xx: bool = False, get: bool = False
) -> tuple[bool, bytes | None]:
    """Set ``key``; (applied, the old value when ``get``). NX alone is the service's ``if_absent``;
    XX or GET read the key and write if its revision did not move (retried while it did)."""
    options: dict[str, Any] = {}
    if ttl_ms is not None and ttl_ms <= 0:
        ttl_ms = None  # already expired: written, then deleted below (Redis deletes it at once)
        expired = True
    else:
        expired = False
    if ttl_ms is not None:
        options["ttl_ms"] = ttl_ms
    if not (xx or get):
        if nx:
            options["if_absent"] = True
        try:
            await s.write(c, ["set", key, value, options], len(key) + len(value))
        except ConditionFailed:
            return False, None
        if expired:
            await s.write(c, ["delete", key], len(key))
        return True, None
    for _ in range(CAS_ATTEMPTS_MAX):
        found = await s.read(c, ["get", key])
        old, revision = (None, 0) if found is None else (found[0], found[1])
        if (nx and found is not None) or (xx and found is None):
            return False, old
        try:
            if expired:
                await s.write(c, ["delete", key, {"if_revision": revision}], len(key))
            else:
                await s.write(c, ["set", key, value, {**options, "if_revision": revision}], len(key) + len(value))
        except ConditionFailed:
            continue
        return True, old
    raise RespError(ErrorReply("the key changed under every try; try again", "TRYAGAIN"))


async def _set(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) < 3:
        raise _arity_error(a[0])
    key, value = a[1], a[2]
    ttl_ms: int | None = None
    nx = xx = get = False
    i = 3
    while i < len(a):
        option = a[i].upper()
        if option in (b"EX", b"PX", b"EXAT", b"PXAT") and ttl_ms is None and i + 1 < len(a):
            ttl_ms = _expiry_ms(s, option, a[i + 1], "set")
            i += 2
            continue
        if option == b"NX" and not xx:
            nx = True
        elif option == b"XX" and not nx:
            xx = True
        elif option == b"GET":
            get = True
        else:  # KEEPTTL too: the service has no "keep the TTL" write
            raise RespError(SYNTAX_ERROR)
        i += 1
    applied, old = await _set_with(s, c, key, value, ttl_ms, nx, xx, get)
    if get:
        return old
    return OK if applied else None


async def _setnx(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 3:
        raise _arity_error(a[0])
    applied, _ = await _set_with(s, c, a[1], a[2], None, nx=True)
    return int(applied)


async def _setex(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 4:
        raise _arity_error(a[0])
    name = a[0].upper()
    ttl_ms = _expiry_ms(s, b"EX" if name == b"SETEX" else b"PX", a[2], name.decode().lower())
    await _set_with(s, c, a[1], a[3], ttl_ms)
    return OK


async def _getdel(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise _arity_error(a[0])
    for _ in range(CAS_ATTEMPTS_MAX):
        found = await s.read(c, ["get", a[1]])
        if found is None:
            return None
        try:
            await s.write(c, ["delete", a[1], {"if_revision": found[1]}], len(a[1]))
        except ConditionFailed:
            continue
        return found[0]
    raise RespError(ErrorReply("the key changed under every try; try again", "TRYAGAIN"))


async def _mget(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) < 2:
        raise _arity_error(a[0])
    found = await s.read(c, ["mget", a[1:]])
    return [None if f is None else f[0] for f in found]


async def _mset(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) < 3 or len(a) % 2 == 0:
        raise _arity_error(a[0])
    pairs: dict[bytes, bytes] = {}
    for i in range(1, len(a), 2):
        pairs.pop(a[i], None)  # Redis: the last value wins; the service wants each key once
        pairs[a[i]] = a[i + 1]
    size = sum(len(k) + len(v) for k, v in pairs.items())
    await s.write(c, ["mset", [[k, v] for k, v in pairs.items()]], size)
    return OK


async def _del(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) < 2:
        raise _arity_error(a[0])
    deleted = 0
    for key in a[1:]:
        deleted += bool(await s.write(c, ["delete", key], len(key)))
    return deleted


async def _exists(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) < 2:
        raise _arity_error(a[0])
    found = await s.read(c, ["mget", a[1:]])
    return sum(f is not None for f in found)


async def _incr(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    name = a[0].upper()
    by = name in (b"INCRBY", b"DECRBY")
    if len(a) != (3 if by else 2):
        raise _arity_error(a[0])
    delta = _int(a[2]) if by else 1
    if name.startswith(b"DECR"):
        if delta == INT64_MIN:
            return ErrorReply("decrement would overflow")
        delta = -delta
    try:
        value, _revision = await s.write(c, ["incr", a[1], delta], len(a[1]))
    except InvalidArgument:
        return NOT_AN_INTEGER  # not a decimal int64, or the result would leave int64
    return int(value)


async def _expire(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 3:  # NX/XX/GT/LT: not served
        raise _arity_error(a[0]) if len(a) < 3 else RespError(SYNTAX_ERROR)
    name = a[0].upper()
    value = _int(a[2])
    ms = value * 1000 if name == b"EXPIRE" else value
    if ms > ttl_ms_max:
        return ErrorReply(f"invalid expire time in '{name.decode().lower()}' command")
    if ms <= 0:
        return int(bool(await s.write(c, ["delete", a[1]], len(a[1]))))
    return int(bool(await s.write(c, ["expire", a[1], ms], len(a[1]))))


async def _persist(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise _arity_error(a[0])
    found = await s.read(c, ["get", a[1]])
    if found is None or found[2] is None:
        return 0
    return int(bool(await s.write(c, ["expire", a[1], None], len(a[1]))))


async def _ttl(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise _arity_error(a[0])
    found = await s.read(c, ["get", a[1]])
    if found is None:
        return -2
    ttl_ms = found[2]
    if ttl_ms is None:
        return -1
    return int(ttl_ms) if a[0].upper() == b"PTTL" else (int(ttl_ms) + 500) // 1000


async def _type(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise _arity_error(a[0])
    found = await s.read(c, ["get", a[1]])
    return SimpleString("none" if found is None else "string")


#: Every command served, by its upper-case name.
COMMANDS: dict[bytes, Handler] = {
    b"PING": _ping,
    b"ECHO": _echo,
    b"QUIT": _quit,
    b"RESET": _reset,
    b"SELECT": _select,
    b"AUTH": _auth,
    b"HELLO": _hello,
    b"CLIENT": _client,
    b"COMMAND": _command,
    b"CONFIG": _config,
    b"INFO": _info,
    b"DBSIZE": _dbsize,
    b"GET": _get,
    b"SET": _set,
    b"SETNX": _setnx,
    b"SETEX": _setex,
    b"PSETEX": _setex,
    b"GETDEL": _getdel,
    b"MGET": _mget,
    b"MSET": _mset,
    b"DEL": _del,
    b"UNLINK": _del,
    b"EXISTS": _exists,
    b"INCR": _incr,
    b"DECR": _incr,
    b"INCRBY": _incr,
    b"DECRBY": _incr,
    b"EXPIRE": _expire,
    b"PEXPIRE": _expire,
    b"PERSIST": _persist,
    b"TTL": _ttl,
    b"PTTL": _ttl,
    b"TYPE": _type,
}
