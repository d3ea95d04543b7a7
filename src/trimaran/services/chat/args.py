"""Parsing and validation of the chat service's commands and queries (see
:mod:`trimaran.services.chat.service`).

Every check here depends on the input alone, never on the service's state, so the same bytes are
refused identically on every replica and before anything could change. The shape of every command
and query is ``[op, required arguments..., {options}?]``: the options map may be left out or be
None, and an option given as None means "not given". Unknown ops, a wrong number of arguments,
unknown options and wrongly typed values are ``InvalidArgument``; data over its bound is
``TooLarge`` (a subclass).

The small helpers repeat :mod:`trimaran.services.kv_args`'s rather than import them: services do
not import each other (ARCHITECTURE.md).
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

from trimaran import limits
from trimaran.errors import InvalidArgument, TooLarge
from trimaran.protocols import command_shape
from trimaran.protocols.codec import brief

#: Channel names: ASCII letters, digits and ``_.:@=-`` (so a name is safe in a URL path segment, a
#: scope string and a log line as it is), 1..``limits.chat_channel_chars_max`` characters.
CHANNEL_NAME = re.compile(r"[A-Za-z0-9_.:@=-]+")
#: Largest session id, event sequence or offset a caller may name (ids are counters from 1).
COUNTER_MAX = limits.raft_counter_max


# --- parsed commands ------------------------------------------------------------------------------


class PublishCmd(NamedTuple):
    channel: str
    data: bytes
    ephemeral: bool


class ResetCmd(NamedTuple):
    channel: str


class OpenCmd(NamedTuple):
    #: None: the service's ``presence_ttl_ms``.
    ttl_ms: int | None


class HeartbeatCmd(NamedTuple):
    session_id: int


class JoinCmd(NamedTuple):
    channel: str
    session_id: int
    info: bytes


class LeaveCmd(NamedTuple):
    channel: str
    session_id: int


class CloseCmd(NamedTuple):
    session_id: int


# --- parsed queries -------------------------------------------------------------------------------


class HistoryQuery(NamedTuple):
    channel: str
    #: The last offset the reader has; None: read from the oldest kept.
    since: int | None
    #: The epoch the reader's ``since`` belongs to; None: judge by offsets alone.
    epoch: str | None
    #: None: the service's ``history_limit_max``; 0: the metadata alone.
    limit: int | None


class PresenceQuery(NamedTuple):
    channel: str


class ChannelsQuery(NamedTuple):
    start_after: str | None
    limit: int | None


class EventsQuery(NamedTuple):
    #: The last event sequence the reader has seen (0: from the oldest kept).
    after: int
    channel: str | None
    limit: int | None


class StatsQuery(NamedTuple):
    pass


# --- field checks ---------------------------------------------------------------------------------


def channel_arg(v: Any, what: str = "channel") -> str:
    if type(v) is not str:
        raise InvalidArgument(f"{what} must be a string, not {type(v).__name__}")
    if len(v) > limits.chat_channel_chars_max:
        raise TooLarge(f"{what} of {len(v)} characters is over chat_channel_chars_max={limits.chat_channel_chars_max}")
    if not CHANNEL_NAME.fullmatch(v):
        raise InvalidArgument(f"{what} {brief(v)} must be 1 or more of the characters A-Z a-z 0-9 _ . : @ = -")
    return v


def bytes_arg(v: Any, what: str, size_max: int, bound_name: str) -> bytes:
    if type(v) is not bytes:
        raise InvalidArgument(f"{what} must be bytes, not {type(v).__name__}")
    if len(v) > size_max:
        raise TooLarge(f"{what} of {len(v)} bytes is over {bound_name}={size_max}")
    return v


def int_arg(v: Any, what: str, minimum: int = 0, maximum: int = COUNTER_MAX) -> int:
    if type(v) is not int:  # also refuses bool, a subclass of int
        raise InvalidArgument(f"{what} must be an integer, not {type(v).__name__}")
    if not minimum <= v <= maximum:
        raise InvalidArgument(f"{what} must be between {minimum} and {maximum}, not {v}")
    return v


def bool_arg(v: Any, what: str) -> bool:
    if v is None:
        return False
    if type(v) is not bool:
        raise InvalidArgument(f"{what} must be a boolean, not {type(v).__name__}")
    return v


def session_arg(v: Any) -> int:
    return int_arg(v, "session_id", 1)


def epoch_arg(v: Any) -> str | None:
    if v is None:
        return None
    if type(v) is not str or not 1 <= len(v) <= EPOCH_CHARS_MAX:
        raise InvalidArgument(f"epoch must be a string of 1 to {EPOCH_CHARS_MAX} characters")
    return v


#: An epoch is ``"<timestamp_ms hex>-<counter hex>"``: at most 16 + 1 + 16 characters.
EPOCH_CHARS_MAX = 33


def split(message: list[Any], kind: str, required: int, options: tuple[str, ...]) -> tuple[list[Any], dict[str, Any]]:
    return command_shape.split(message, f"chat {kind}", required, options)


def _limit(opts: dict[str, Any], minimum: int = 1) -> int | None:
    limit = opts.get("limit")
    return None if limit is None else int_arg(limit, "limit", minimum, limits.msgpack_array_len_max)


# --- commands -------------------------------------------------------------------------------------


def _publish(c: list[Any]) -> PublishCmd:
    (channel, data), opts = split(c, "command", 2, ("ephemeral",))
    return PublishCmd(
        channel_arg(channel),
        bytes_arg(data, "data", limits.chat_message_bytes_max, "chat_message_bytes_max"),
        bool_arg(opts.get("ephemeral"), "ephemeral"),
    )


def _reset(c: list[Any]) -> ResetCmd:
    (channel,), _ = split(c, "command", 1, ())
    return ResetCmd(channel_arg(channel))


def _open(c: list[Any]) -> OpenCmd:
    _, opts = split(c, "command", 0, ("ttl_ms",))
    ttl_ms = opts.get("ttl_ms")
    if ttl_ms is None:
        return OpenCmd(None)
    return OpenCmd(int_arg(ttl_ms, "ttl_ms", limits.chat_presence_ttl_ms_min, limits.chat_presence_ttl_ms_max))


def _heartbeat(c: list[Any]) -> HeartbeatCmd:
    (session_id,), _ = split(c, "command", 1, ())
    return HeartbeatCmd(session_arg(session_id))


def _join(c: list[Any]) -> JoinCmd:
    (channel, session_id, info), _ = split(c, "command", 3, ())
    return JoinCmd(
        channel_arg(channel),
        session_arg(session_id),
        bytes_arg(info, "info", limits.chat_presence_info_bytes_max, "chat_presence_info_bytes_max"),
    )


def _leave(c: list[Any]) -> LeaveCmd:
    (channel, session_id), _ = split(c, "command", 2, ())
    return LeaveCmd(channel_arg(channel), session_arg(session_id))


def _close(c: list[Any]) -> CloseCmd:
    (session_id,), _ = split(c, "command", 1, ())
    return CloseCmd(session_arg(session_id))


Command = PublishCmd | ResetCmd | OpenCmd | HeartbeatCmd | JoinCmd | LeaveCmd | CloseCmd

_COMMAND_PARSERS: dict[str, Callable[[list[Any]], Command]] = {
    "publish": _publish,
    "reset": _reset,
    "open": _open,
    "heartbeat": _heartbeat,
    "join": _join,
    "leave": _leave,
    "close": _close,
}


def parse_command(message: Any) -> Command:
    """A validated command, or ``InvalidArgument`` / ``TooLarge``."""
    return command_shape.parse(message, "chat", "command", _COMMAND_PARSERS)


# --- queries --------------------------------------------------------------------------------------


def _history(q: list[Any]) -> HistoryQuery:
    (channel,), opts = split(q, "query", 1, ("since", "epoch", "limit"))
    since = opts.get("since")
    return HistoryQuery(
        channel_arg(channel),
        None if since is None else int_arg(since, "since"),
        epoch_arg(opts.get("epoch")),
        _limit(opts, minimum=0),
    )


def _presence(q: list[Any]) -> PresenceQuery:
    (channel,), _ = split(q, "query", 1, ())
    return PresenceQuery(channel_arg(channel))


def _channels(q: list[Any]) -> ChannelsQuery:
    _, opts = split(q, "query", 0, ("start_after", "limit"))
    start_after = opts.get("start_after")
    return ChannelsQuery(None if start_after is None else channel_arg(start_after, "start_after"), _limit(opts))


def _events(q: list[Any]) -> EventsQuery:
    (after,), opts = split(q, "query", 1, ("channel", "limit"))
    channel = opts.get("channel")
    return EventsQuery(int_arg(after, "after"), None if channel is None else channel_arg(channel), _limit(opts))


def _stats(q: list[Any]) -> StatsQuery:
    split(q, "query", 0, ())
    return StatsQuery()


Query = HistoryQuery | PresenceQuery | ChannelsQuery | EventsQuery | StatsQuery

_QUERY_PARSERS: dict[str, Callable[[list[Any]], Query]] = {
    "history": _history,
    "presence": _presence,
    "channels": _channels,
    "events": _events,
    "stats": _stats,
}


def parse_query(message: Any) -> Query:
    """A validated query, or ``InvalidArgument`` / ``TooLarge``."""
    return command_shape.parse(message, "chat", "query", _QUERY_PARSERS)
