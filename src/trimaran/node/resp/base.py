"""What every part of the RESP listener shares: the errors a handler raises, Redis's argument
parsing and error wording, and the handler signature."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from trimaran.errors import NotLeader, OutOfMemory, PermissionDenied, TrimaranError, Unauthenticated, Unavailable
from trimaran.protocols.resp import NOT_AN_INTEGER, OOM, ErrorReply, Reply, SimpleString
from trimaran.services.kv_args import INT64_MAX, INT64_MIN

if TYPE_CHECKING:
    from trimaran.node.resp.server import RespServer, _Connection

#: A handler's reply when it queued its answers itself (SUBSCRIBE's one per channel, through the
#: connection's pub/sub outbox): nothing more to write. Compared by identity.
ANSWERED = SimpleString("(answered)")


class Quit(Exception):
    """Close the connection after this answer."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply


class RespError(Exception):
    """An error answer (``reply``) raised from deep inside a handler."""

    def __init__(self, reply: ErrorReply) -> None:
        self.reply = reply


def parse_int(arg: bytes) -> int:
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


def arity_error(name: bytes) -> RespError:
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


Handler = Callable[["RespServer", "_Connection", list[bytes]], Awaitable[Reply]]


@dataclass(slots=True)
class Write:
    """A command that comes down to one KV write: the write, its size for the driver's limits, and
    the command's reply from the write's outcome (``ok``, then the result or the typed error)."""

    command: list[Any]
    size_bytes: int
    answer: Callable[[bool, Any], Reply]


@dataclass(slots=True)
class Read:
    """A command that comes down to one linearizable KV query, and its reply from the result."""

    query: list[Any]
    answer: Callable[[Any], Reply]


#: A command's planner: its one write or read, or None when it needs more (its handler runs).
Planner = Callable[["RespServer", "_Connection", list[bytes]], "Write | Read | None"]


class Planned:
    """The handler of a command with a planner: its write (or read) goes through a group
    (alone, when the command runs by itself); the ``fallback`` handler runs when it plans none."""

    def __init__(self, plan: Planner, fallback: Handler | None = None) -> None:
        self.plan = plan
        self.fallback = fallback

    async def __call__(self, s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
        plan = self.plan(s, c, a)
        if plan is None:
            assert self.fallback is not None, "a planner without a fallback always plans a write"
            return await self.fallback(s, c, a)
        return (await s.run_group(c, [plan]))[0]


