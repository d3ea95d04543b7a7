"""MULTI/EXEC/DISCARD and WATCH/UNWATCH, as one KV ``txn`` command (one log entry: atomic on every
replica, applied once through the connection's session).

- ``MULTI`` starts queueing: each command after it is planned (:class:`~trimaran.node.resp.base.Planned`:
  KV write or read, or a few steps such as GETSET's get and set; ``SET ... XX``/``KEEPTTL``,
  ``APPEND`` and ``MSETNX`` are one step each), authorised, and answered ``+QUEUED``. A command
  with no plan (connection commands, ``PERSIST``, a ``SET`` with ``XX`` or ``GET`` and an expiry
  already past), or that is refused (arity, syntax, scope) is answered its error and marks the
  transaction failed: ``EXEC`` then answers ``-EXECABORT`` and applies nothing, as Redis does for
  errors found while queueing.
- ``EXEC`` sends ``["txn", steps, {"if_revisions": ..., "if_expiries": ...}]`` (the watched keys);
  its answer is each command's reply,
  built from its step's result exactly as the command alone would build it (a step that failed
  at apply time, e.g. INCR of a non-integer, is an error in the array and the others apply, as
  Redis's EXEC). A watched key whose revision moved makes EXEC answer the null array and apply
  nothing. ``DISCARD`` drops the queue. Both end the watch.
- ``WATCH key...`` records each key's revision (0: absent) and expiry (``mget`` with
  ``expires_at``; 0: none) with a linearizable read; ``UNWATCH`` forgets them. A watched key counts
  as changed when it was written, deleted or expired (its revision moves or it disappears) or its
  expiry was set or removed (``EXPIRE``/``PEXPIRE``/``PERSIST``... move no revision: the txn's
  ``if_expiries`` catch them), as in Redis; ``touch`` does not count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trimaran.errors import ConditionFailed, TrimaranError, error_from_wire
from trimaran.node.resp.base import Handler, Planned, RespError, Write, arity_error, error_reply
from trimaran.protocols.resp import NULL_ARRAY, OK, ErrorReply, Reply, SimpleString
from trimaran.services.kv_args import txn_conditions_max, txn_steps_max

if TYPE_CHECKING:
    from trimaran.node.resp.server import RespServer, _Connection

QUEUED = SimpleString("QUEUED")
EXECABORT = ErrorReply("Transaction discarded because of previous errors.", "EXECABORT")
#: Commands that run at once inside MULTI rather than being queued.
IMMEDIATE = frozenset((b"EXEC", b"DISCARD", b"MULTI", b"WATCH", b"QUIT", b"RESET"))


def end(c: _Connection) -> None:
    """No transaction and no watched key any more (EXEC, DISCARD, RESET)."""
    c.transaction, c.transaction_failed, c.watched = None, False, {}


def queue(s: RespServer, c: _Connection, a: list[bytes], handler: Handler | None) -> Reply:
    """A command sent inside MULTI: queued (``+QUEUED``), or its error (the transaction fails)."""
    assert c.transaction is not None
    reply = _queue(s, c, a, handler)
    if reply is not QUEUED:
        c.transaction_failed = True
    return reply


def _queue(s: RespServer, c: _Connection, a: list[bytes], handler: Handler | None) -> Reply:
    assert c.transaction is not None
    name = a[0].decode("utf-8", "replace")
    if not isinstance(handler, Planned):
        return ErrorReply(f"'{name}' is not served inside MULTI (only commands that are one KV write or read)")
    try:
        plan = handler.plan(s, c, a)
        if plan is None or (isinstance(plan, Write) and plan.command[0] == "txn" and len(plan.command) > 2):
            return ErrorReply(f"'{name}' with these arguments is not served inside MULTI (it needs a read before its write, or conditions)")
        if len(c.transaction) >= txn_steps_max:
            return ErrorReply(f"a transaction holds at most {txn_steps_max} commands")
        if isinstance(plan, Write):
            s.authorise(c, "command", {"service": "kv", "command": plan.command})
        else:
            s.authorise(c, "read", {"service": "kv", "query": plan.query, "consistency": "linearizable"})
    except RespError as exc:
        return exc.reply
    except TrimaranError as exc:
        return error_reply(exc)
    c.transaction.append(plan)
    return QUEUED


async def _multi(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 1:
        raise arity_error(a[0])
    if c.transaction is not None:
        return ErrorReply("MULTI calls can not be nested")
    c.transaction, c.transaction_failed = [], False
    return OK


def _outside_multi(c: _Connection, a: list[bytes]) -> ErrorReply | None:
    """EXEC's or DISCARD's refusal when there is no transaction to end (Redis's wording)."""
    if len(a) != 1:
        raise arity_error(a[0])
    return ErrorReply(f"{a[0].decode().upper()} without MULTI") if c.transaction is None else None


async def _discard(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if (refusal := _outside_multi(c, a)) is not None:
        return refusal
    end(c)
    return OK


async def _exec(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if (refusal := _outside_multi(c, a)) is not None or c.transaction is None:
        return refusal
    queued, failed, watched = c.transaction, c.transaction_failed, c.watched
    end(c)
    if failed:
        return EXECABORT
    if not queued and not watched:
        return []
    # A command that is itself a txn of steps (GETSET, GETDEL, DEL of several keys...) adds its steps.
    steps: list[Any] = []
    spans: list[tuple[int, int]] = []
    for plan in queued:
        nested = isinstance(plan, Write) and plan.command[0] == "txn"
        start = len(steps)
        if isinstance(plan, Write):
            steps.extend(plan.command[1] if nested else [plan.command])
        else:
            steps.append(plan.query)
        spans.append((start, len(steps)))
    size_bytes = sum(plan.size_bytes if isinstance(plan, Write) else 0 for plan in queued) + 2 * sum(map(len, watched))
    options = None
    if watched:
        options = {
            "if_revisions": [[key, revision] for key, (revision, _) in watched.items()],
            "if_expiries": [[key, expires_at_ms] for key, (_, expires_at_ms) in watched.items()],
        }
    try:
        results = await s.write(c, ["txn", steps, options], size_bytes)
    except ConditionFailed:
        return NULL_ARRAY  # a watched key changed: nothing applied
    replies: list[Reply] = []
    for plan, (start, stop) in zip(queued, spans):
        if isinstance(plan, Write) and plan.command[0] == "txn":
            replies.append(plan.answer(True, results[start:stop]))
            continue
        ok, value = results[start]
        outcome: Any = value if ok else error_from_wire(value)
        if isinstance(plan, Write):
            replies.append(plan.answer(ok, outcome))
        else:
            replies.append(plan.answer(outcome) if ok else error_reply(outcome))
    return replies


async def _watch(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) < 2:
        raise arity_error(a[0])
    if c.transaction is not None:
        return ErrorReply("WATCH inside MULTI is not allowed")
    keys = [key for key in dict.fromkeys(a[1:]) if key not in c.watched]
    if len(c.watched) + len(keys) > txn_conditions_max:
        return ErrorReply(f"at most {txn_conditions_max} keys may be watched")
    if keys:
        found = await s.read(c, ["mget", keys, {"expires_at": True}])
        for key, view in zip(keys, found):
            c.watched[key] = (0, 0) if view is None else (view[1], view[3])
    return OK


async def _unwatch(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 1:
        raise arity_error(a[0])
    c.watched = {}
    return OK


#: The transaction commands, by upper-case name.
COMMANDS: dict[bytes, Handler] = {
    b"MULTI": _multi,
    b"EXEC": _exec,
    b"DISCARD": _discard,
    b"WATCH": _watch,
    b"UNWATCH": _unwatch,
}

