"""Parsing and validation of the KV service's commands and queries (see :mod:`trimaran.services.kv`).

Every check here depends on the input alone, never on the service's state, so a command that fails
validation is refused before anything (not even expiry) could be blamed on it, and the same bytes
are refused identically on every replica. The shape rule for every command and query is::

    [op, required positional arguments..., {optional arguments by name}?]

The trailing options map may be left out or be ``None``; an option given as ``None`` means "not
given". Unknown ops,
missing or extra positional arguments, unknown option names and wrongly typed values are
``InvalidArgument``; a key or value over its limit is ``TooLarge`` (a subclass).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

from trimaran import limits
from trimaran.errors import InvalidArgument, TooLarge
from trimaran.protocols.codec import show_bytes
from trimaran.protocols import command_shape
from trimaran.protocols.command_shape import split

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
#: Longest TTL accepted: ten years. Bounds ``timestamp_ms + ttl_ms`` far below int64.
ttl_ms_max = 10 * 365 * 24 * 3_600_000
#: Pairs in one ``mset`` (the command must also fit ``limits.command_bytes_max``).
mset_keys_max = 10_000
#: Keys in one ``mget``.
mget_keys_max = 1_000
#: Steps of one ``txn``, and the keys its ``if_revisions`` may name (it must also fit
#: ``limits.command_bytes_max``).
txn_steps_max = 1_000
txn_conditions_max = 1_000
#: Longest decimal text of an int64 ("-9223372036854775808").
int64_text_bytes_max = 20


# --- parsed commands -----------------------------------------------------------------------------
# NamedTuples, not frozen dataclasses: they are built once per command on the apply path, and a
# frozen dataclass sets each field through object.__setattr__ (measurably slower).


class Conditions(NamedTuple):
    """Preconditions of a conditional write; all given ones must hold (logical AND)."""

    if_absent: bool = False
    #: The key's current revision must equal this; 0 means "the key must be absent".
    if_revision: int | None = None
    #: The key must exist with exactly this value.
    if_value: bytes | None = None
    #: The key must exist (Redis's ``SET ... XX``).
    if_exists: bool = False


NO_CONDITIONS = Conditions()


class SetCmd(NamedTuple):
    key: bytes
    value: bytes
    ttl_ms: int | None
    cond: Conditions
    #: Keep the key's expiry (Redis's ``KEEPTTL``); exclusive with ``ttl_ms``.
    keep_ttl: bool = False


class DeleteCmd(NamedTuple):
    key: bytes
    cond: Conditions


class IncrCmd(NamedTuple):
    key: bytes
    #: Signed amount added (``decr`` arrives here negated; the int64 check is on the result).
    delta: int


class MsetCmd(NamedTuple):
    #: (key, value, ttl_ms | None), keys distinct, in command order.
    items: tuple[tuple[bytes, bytes, int | None], ...]
    #: Every key must be absent, else nothing is written (Redis's ``MSETNX``).
    if_absent: bool = False


class AppendCmd(NamedTuple):
    key: bytes
    #: Added to the end of the value (a missing key counts as empty); the expiry is kept.
    suffix: bytes


class TouchCmd(NamedTuple):
    key: bytes


class ExpireCmd(NamedTuple):
    key: bytes
    #: None removes the key's TTL.
    ttl_ms: int | None


class TxnCmd(NamedTuple):
    #: Commands (any but ``txn``) and ``get``/``mget`` queries, applied in order.
    steps: tuple[Any, ...]
    #: (key, revision): every key's current revision must equal its revision (0: absent).
    if_revisions: tuple[tuple[bytes, int], ...]
    #: (key, expires_at_ms): every key's expiry must equal it (0: none, or absent); each key must
    #: be in ``if_revisions`` too (so its read scope is checked). Redis's WATCH fails on EXPIRE.
    if_expiries: tuple[tuple[bytes, int], ...] = ()


# --- parsed queries ------------------------------------------------------------------------------


class GetQuery(NamedTuple):
    key: bytes


class MgetQuery(NamedTuple):
    keys: tuple[bytes, ...]
    #: Each found key's answer also carries its absolute ``expires_at_ms`` (0: none).
    expires_at: bool = False


class ScanQuery(NamedTuple):
    prefix: bytes
    start_after: bytes | None
    #: None: the service's ``scan_limit_max``.
    limit: int | None


class WatchQuery(NamedTuple):
    match: bytes
    is_prefix: bool
    from_revision: int
    #: None: the service's ``watch_limit_max``.
    limit: int | None


class StatsQuery(NamedTuple):
    pass


# --- field checks --------------------------------------------------------------------------------


def key_arg(v: Any, what: str = "key") -> bytes:
    if type(v) is not bytes:
        raise InvalidArgument(f"{what} must be bytes, not {type(v).__name__}")
    if not v:
        raise InvalidArgument(f"{what} must not be empty")
    if len(v) > limits.key_bytes_max:
        raise TooLarge(f"{what} of {len(v)} bytes is over key_bytes_max={limits.key_bytes_max}")
    return v


def prefix_arg(v: Any) -> bytes:
    """A key prefix: like a key, but empty means "every key"."""
    if type(v) is not bytes:
        raise InvalidArgument(f"prefix must be bytes, not {type(v).__name__}")
    if len(v) > limits.key_bytes_max:
        raise TooLarge(f"prefix of {len(v)} bytes is over key_bytes_max={limits.key_bytes_max}")
    return v


def value_arg(v: Any, what: str = "value") -> bytes:
    if type(v) is not bytes:
        raise InvalidArgument(f"{what} must be bytes, not {type(v).__name__}")
    if len(v) > limits.value_bytes_max:
        raise TooLarge(f"{what} of {len(v)} bytes is over value_bytes_max={limits.value_bytes_max}")
    return v


def ttl_arg(v: Any) -> int | None:
    """None (no expiry) or whole milliseconds in [1, ttl_ms_max]; floats (NaN, inf) and bools are
    refused by type, so no rounding rule can differ between replicas."""
    if v is None:
        return None
    if type(v) is not int:
        raise InvalidArgument(f"ttl_ms must be an integer number of milliseconds, not {type(v).__name__}")
    if not 1 <= v <= ttl_ms_max:
        raise InvalidArgument(f"ttl_ms must be between 1 and {ttl_ms_max}, not {v}")
    return v


def int_arg(v: Any, what: str, minimum: int = INT64_MIN, maximum: int = INT64_MAX) -> int:
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


def conditions(opts: dict[str, Any], allow_absent: bool) -> Conditions:
    if not opts:
        return NO_CONDITIONS
    if_revision = opts.get("if_revision")
    if_value = opts.get("if_value")
    return Conditions(
        if_absent=bool_arg(opts.get("if_absent"), "if_absent") if allow_absent else False,
        if_revision=None if if_revision is None else int_arg(if_revision, "if_revision", 0),
        if_value=None if if_value is None else value_arg(if_value, "if_value"),
        if_exists=bool_arg(opts.get("if_exists"), "if_exists") if allow_absent else False,
    )


# --- commands ------------------------------------------------------------------------------------


def _set(c: list[Any]) -> SetCmd:
    (key, value), opts = split(c, "command", 2, ("ttl_ms", "if_absent", "if_revision", "if_value", "if_exists", "keep_ttl"))
    ttl_ms, keep_ttl = ttl_arg(opts.get("ttl_ms")), bool_arg(opts.get("keep_ttl"), "keep_ttl")
    if ttl_ms is not None and keep_ttl:
        raise InvalidArgument("set takes ttl_ms or keep_ttl, not both")
    return SetCmd(key_arg(key), value_arg(value), ttl_ms, conditions(opts, True), keep_ttl)


def _append(c: list[Any]) -> AppendCmd:
    (key, suffix), _ = split(c, "command", 2, ())
    return AppendCmd(key_arg(key), value_arg(suffix, "suffix"))


def _delete(c: list[Any]) -> DeleteCmd:
    (key,), opts = split(c, "command", 1, ("if_revision", "if_value"))
    return DeleteCmd(key_arg(key), conditions(opts, False))


def _incr(c: list[Any]) -> IncrCmd:
    (key, delta), _ = split(c, "command", 2, ())
    amount = int_arg(delta, "delta")
    return IncrCmd(key_arg(key), -amount if c[0] == "decr" else amount)


def _mset(c: list[Any]) -> MsetCmd:
    (pairs,), opts = split(c, "command", 1, ("if_absent",))
    if type(pairs) is not list or not pairs:
        raise InvalidArgument("mset takes a non-empty list of [key, value] or [key, value, ttl_ms]")
    if len(pairs) > mset_keys_max:
        raise TooLarge(f"mset of {len(pairs)} keys is over mset_keys_max={mset_keys_max}")
    items: list[tuple[bytes, bytes, int | None]] = []
    seen: set[bytes] = set()  # membership only; never iterated
    for pair in pairs:
        if type(pair) is not list or len(pair) not in (2, 3):
            raise InvalidArgument("each mset item is [key, value] or [key, value, ttl_ms]")
        key = key_arg(pair[0])
        if key in seen:
            raise InvalidArgument(f"mset names key {show_bytes(key)} twice")
        seen.add(key)
        items.append((key, value_arg(pair[1]), ttl_arg(pair[2] if len(pair) == 3 else None)))
    return MsetCmd(tuple(items), bool_arg(opts.get("if_absent"), "if_absent"))


def _touch(c: list[Any]) -> TouchCmd:
    (key,), _ = split(c, "command", 1, ())
    return TouchCmd(key_arg(key))


def _expire(c: list[Any]) -> ExpireCmd:
    (key, ttl), _ = split(c, "command", 2, ())
    return ExpireCmd(key_arg(key), ttl_arg(ttl))


def _txn(c: list[Any]) -> TxnCmd:
    (steps,), opts = split(c, "command", 1, ("if_revisions", "if_expiries"))
    if type(steps) is not list:
        raise InvalidArgument("txn takes a list of steps (kv commands, or get/mget queries)")
    if len(steps) > txn_steps_max:
        raise TooLarge(f"txn of {len(steps)} steps is over txn_steps_max={txn_steps_max}")
    parsed: list[Any] = []
    for step in steps:
        op = command_shape.op_of(step, "txn step")
        if op in _TXN_QUERY_PARSERS:
            parsed.append(_TXN_QUERY_PARSERS[op](step))
        elif op != "txn" and op in _COMMAND_PARSERS:
            parsed.append(_COMMAND_PARSERS[op](step))
        else:
            known = ", ".join([o for o in _COMMAND_PARSERS if o != "txn"] + list(_TXN_QUERY_PARSERS))
            raise InvalidArgument(f"unknown txn step {show_bytes(op.encode())} (known: {known})")
    conditions_raw = opts.get("if_revisions", [])
    if type(conditions_raw) is not list:
        raise InvalidArgument("if_revisions is a list of [key, revision]")
    if len(conditions_raw) > txn_conditions_max:
        raise TooLarge(f"txn of {len(conditions_raw)} conditions is over txn_conditions_max={txn_conditions_max}")
    if_revisions = []
    for item in conditions_raw:
        if type(item) is not list or len(item) != 2:
            raise InvalidArgument("each if_revisions item is [key, revision]")
        if_revisions.append((key_arg(item[0]), int_arg(item[1], "revision", 0)))
    expiries_raw = opts.get("if_expiries", [])
    if type(expiries_raw) is not list or len(expiries_raw) > len(if_revisions):
        raise InvalidArgument("if_expiries is a list of [key, expires_at_ms], each key also in if_revisions")
    revision_keys = {key for key, _ in if_revisions}  # membership only; never iterated
    if_expiries = []
    for item in expiries_raw:
        if type(item) is not list or len(item) != 2 or item[0] not in revision_keys:
            raise InvalidArgument("each if_expiries item is [key, expires_at_ms] of a key in if_revisions")
        if_expiries.append((key_arg(item[0]), int_arg(item[1], "expires_at_ms", 0)))
    return TxnCmd(tuple(parsed), tuple(if_revisions), tuple(if_expiries))


Command = SetCmd | DeleteCmd | IncrCmd | MsetCmd | TouchCmd | ExpireCmd | AppendCmd | TxnCmd

_COMMAND_PARSERS: dict[str, Callable[[list[Any]], Command]] = {
    "set": _set,
    "delete": _delete,
    "incr": _incr,
    "decr": _incr,
    "mset": _mset,
    "touch": _touch,
    "expire": _expire,
    "append": _append,
    "txn": _txn,
}


def parse_command(message: Any) -> Command:
    """A validated command, or ``InvalidArgument`` / ``TooLarge``."""
    return command_shape.parse(message, "kv", "command", _COMMAND_PARSERS)


# --- queries -------------------------------------------------------------------------------------


def _get(q: list[Any]) -> GetQuery:
    (key,), _ = split(q, "query", 1, ())
    return GetQuery(key_arg(key))


def _mget(q: list[Any]) -> MgetQuery:
    (keys,), opts = split(q, "query", 1, ("expires_at",))
    if type(keys) is not list:
        raise InvalidArgument("mget takes a list of keys")
    if len(keys) > mget_keys_max:
        raise TooLarge(f"mget of {len(keys)} keys is over mget_keys_max={mget_keys_max}")
    return MgetQuery(tuple(key_arg(k) for k in keys), bool_arg(opts.get("expires_at"), "expires_at"))


def _scan(q: list[Any]) -> ScanQuery:
    (prefix,), opts = split(q, "query", 1, ("start_after", "limit"))
    start_after = opts.get("start_after")
    limit = opts.get("limit")
    return ScanQuery(
        prefix_arg(prefix),
        None if start_after is None else key_arg(start_after, "start_after"),
        None if limit is None else int_arg(limit, "limit", 1),
    )


def _watch(q: list[Any]) -> WatchQuery:
    (match, from_revision), opts = split(q, "query", 2, ("prefix", "limit"))
    is_prefix = bool_arg(opts.get("prefix"), "prefix")
    limit = opts.get("limit")
    return WatchQuery(
        prefix_arg(match) if is_prefix else key_arg(match),
        is_prefix,
        int_arg(from_revision, "from_revision", 0),
        None if limit is None else int_arg(limit, "limit", 1),
    )


def _stats(q: list[Any]) -> StatsQuery:
    split(q, "query", 0, ())
    return StatsQuery()


Query = GetQuery | MgetQuery | ScanQuery | WatchQuery | StatsQuery

_QUERY_PARSERS: dict[str, Callable[[list[Any]], Query]] = {"get": _get, "mget": _mget, "scan": _scan, "watch": _watch, "stats": _stats}
#: The queries a ``txn`` may hold (each answers from the state the steps before it left).
_TXN_QUERY_PARSERS: dict[str, Callable[[list[Any]], Query]] = {"get": _get, "mget": _mget}


def parse_query(message: Any) -> Query:
    """A validated query, or ``InvalidArgument`` / ``TooLarge``."""
    # A valid ``["get", key]``, the query of nearly every read, is taken without the generic shape
    # check (a copy of the arguments and an options dict per read: a twentieth of a leader's CPU
    # per RESP GET). It gives what the generic path gives; anything else, valid or not, goes there.
    if type(message) is list and len(message) == 2 and message[0] == "get":
        key = message[1]
        if type(key) is bytes and 0 < len(key) <= limits.key_bytes_max:
            return GetQuery(key)
    return command_shape.parse(message, "kv", "query", _QUERY_PARSERS)
