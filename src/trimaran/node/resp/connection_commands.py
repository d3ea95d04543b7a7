"""Connection commands: PING, ECHO, QUIT, RESET, SELECT, AUTH, HELLO, CLIENT, COMMAND, CONFIG,
INFO, DBSIZE (see each handler)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trimaran.errors import NotLeader, PermissionDenied, Unavailable
from trimaran.node.resp import pubsub, transactions
from trimaran.node.resp.base import Handler, Quit, RespError, arity_error, parse_int
from trimaran.protocols.resp import OK, PONG, ErrorReply, Reply, SimpleString, Verbatim

if TYPE_CHECKING:
    from trimaran.node.resp.server import RespServer, _Connection

async def _ping(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) > 2:
        raise arity_error(a[0])
    if pubsub.in_subscribed_mode(c):  # Redis's answer while subscribed (RESP2)
        return [b"pong", a[1] if len(a) == 2 else b""]
    return a[1] if len(a) == 2 else PONG


async def _echo(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise arity_error(a[0])
    return a[1]


async def _quit(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    raise Quit(OK)


async def _reset(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    c.protocol, c.name = 2, b""
    transactions.end(c)
    pubsub.reset(c)
    c.consistency = "linearizable"
    if s.edge.authoriser.enabled:
        c.token, c.authenticated = None, False
    return SimpleString("RESET")


async def _select(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise arity_error(a[0])
    if parse_int(a[1]) != 0:
        return ErrorReply("DB index is out of range")
    return OK


async def _auth(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) not in (2, 3):
        raise arity_error(a[0])
    s.login(c, a[-1])
    return OK


async def _hello(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    protocol = c.protocol
    i = 1
    if len(a) > 1:
        try:
            protocol = parse_int(a[1])
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
        raise arity_error(a[0])
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


async def _readonly(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    """READONLY: this connection's reads become lease reads (cheaper; correct while clocks drift
    less than the lease's margin); READWRITE: linearizable again. RESET does the latter too."""
    if len(a) != 1:
        raise arity_error(a[0])
    c.consistency = "lease" if a[0].upper() == b"READONLY" else "linearizable"
    return OK


async def _time(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    """The node's wall clock (not the log's: TIME is the serving node's, as in Redis)."""
    if len(a) != 1:
        raise arity_error(a[0])
    now_us = s.wall_clock_ms() * 1000
    return [str(now_us // 1_000_000).encode(), str(now_us % 1_000_000).encode()]


async def _dbsize(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    stats = await s.read(c, ["stats"])
    return int(stats["keys"])


#: The connection commands, by upper-case name.
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
    b"TIME": _time,
    b"READONLY": _readonly,
    b"READWRITE": _readonly,
}
