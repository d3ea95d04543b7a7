"""String and key commands, mapped onto the KV service (:mod:`trimaran.services.kv`); see
:data:`COMMANDS` and each handler. A command that is one KV step has a planner (it joins its
pipeline's group, :mod:`.groups`, and may be queued inside MULTI): SET with any of its options
(``XX`` is the service's ``if_exists``, ``KEEPTTL`` its ``keep_ttl``), APPEND (its ``append``),
MSETNX (``mset`` with ``if_absent``); GETSET, GETDEL, GETEX, SET ... GET and DEL of several keys
are one ``txn`` entry. Only SET with an expiry already past and ``XX`` or ``GET`` (a read, then a
delete) is a compare-and-set loop on the key's revision, not served inside MULTI."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from trimaran.errors import ConditionFailed, InvalidArgument, error_from_wire
from trimaran.node.resp.base import Handler, Planned, Read, RespError, Write, arity_error, error_reply, parse_int
from trimaran.protocols.resp import NOT_AN_INTEGER, OK, SYNTAX_ERROR, ErrorReply, Reply, SimpleString
from trimaran.services.kv_args import INT64_MIN, ttl_ms_max

if TYPE_CHECKING:
    from trimaran.node.resp.server import RespServer, _Connection

#: Compare-and-set tries of SET XX/GET and GETDEL before giving up (each failure is another
#: client's write to the same key in between).
CAS_ATTEMPTS_MAX = 16

def _expiry_ms(s: RespServer, unit: bytes, arg: bytes, command: str) -> int:
    """A SET/EXPIRE expiry as milliseconds from now (may be 0 or negative: already expired)."""
    value = parse_int(arg)
    ms = {b"EX": value * 1000, b"PX": value, b"EXAT": value * 1000 - s.wall_clock_ms(), b"PXAT": value - s.wall_clock_ms()}[unit]
    if unit in (b"EX", b"PX") and value <= 0 or ms > ttl_ms_max:
        raise RespError(ErrorReply(f"invalid expire time in '{command}' command"))
    return ms


def _found_value(found: Any) -> Reply:
    """A get's reply: the value, or nil."""
    return None if found is None else found[0]


def _plan_get(s: RespServer, c: _Connection, a: list[bytes]) -> Read:
    if len(a) != 2:
        raise arity_error(a[0])
    return Read(["get", a[1]], _found_value)


async def _set_with(
    s: RespServer,
    c: _Connection,
    key: bytes,
    value: bytes,
    ttl_ms: int | None,
    nx: bool = False,
    xx: bool = False,
    get: bool = False,
    keepttl: bool = False,
) -> tuple[bool, bytes | None]:
    """Set ``key``; (applied, the old value when ``get``). NX alone is the service's ``if_absent``;
    XX, GET or KEEPTTL read the key and write if its revision did not move (retried while it did).
    KEEPTTL writes the TTL that remained at the read (the service has no "keep the TTL" write), so
    the key lives on for that long from the write's own log time: later by the commit's latency."""
    options: dict[str, Any] = {}
    if ttl_ms is not None and ttl_ms <= 0:
        ttl_ms = None  # already expired: written, then deleted below (Redis deletes it at once)
        expired = True
    else:
        expired = False
    if ttl_ms is not None:
        options["ttl_ms"] = ttl_ms
    if not (xx or get or keepttl):
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
        if keepttl and found is not None and found[2] is not None:
            options["ttl_ms"] = max(1, int(found[2]))
        try:
            if expired:
                await s.write(c, ["delete", key, {"if_revision": revision}], len(key))
            else:
                await s.write(c, ["set", key, value, {**options, "if_revision": revision}], len(key) + len(value))
        except ConditionFailed:
            continue
        return True, old
    raise RespError(ErrorReply("the key changed under every try; try again", "TRYAGAIN"))


def _parse_set(s: RespServer, a: list[bytes]) -> tuple[int | None, bool, bool, bool, bool]:
    """SET's options: (ttl_ms, nx, xx, get, keepttl)."""
    if len(a) < 3:
        raise arity_error(a[0])
    ttl_ms: int | None = None
    nx = xx = get = keepttl = False
    i = 3
    while i < len(a):
        option = a[i].upper()
        if option in (b"EX", b"PX", b"EXAT", b"PXAT") and ttl_ms is None and not keepttl and i + 1 < len(a):
            ttl_ms = _expiry_ms(s, option, a[i + 1], "set")
            i += 2
            continue
        if option == b"NX" and not xx:
            nx = True
        elif option == b"XX" and not nx:
            xx = True
        elif option == b"GET":
            get = True
        elif option == b"KEEPTTL" and ttl_ms is None:
            keepttl = True
        else:
            raise RespError(SYNTAX_ERROR)
        i += 1
    return ttl_ms, nx, xx, get, keepttl


def _set_write(
    key: bytes, value: bytes, ttl_ms: int | None, nx: bool, reply: Callable[[bool], Reply], xx: bool = False, keepttl: bool = False
) -> Write | None:
    """A set with its conditions as one write (None: an already expired TTL, two writes)."""
    if ttl_ms is not None and ttl_ms <= 0:
        return None
    options: dict[str, Any] = {}
    if ttl_ms is not None:
        options["ttl_ms"] = ttl_ms
    if nx:
        options["if_absent"] = True
    if xx:
        options["if_exists"] = True
    if keepttl:
        options["keep_ttl"] = True
    answer = _SET_ANSWER if reply is _ok_or_nil else _set_answer(reply)
    return Write(["set", key, value, options], len(key) + len(value), answer)


def _set_answer(reply: Callable[[bool], Reply]) -> Callable[[bool, Any], Reply]:
    """A set's reply from its write's outcome: ``reply(applied)``, also when its condition did not
    hold (not applied); any other error as it is."""

    def answer(ok: bool, result: Any) -> Reply:
        if ok or isinstance(result, ConditionFailed):
            return reply(ok)
        return error_reply(result)

    return answer


def _ok_or_nil(applied: bool) -> Reply:
    """SET's reply: OK, or nil when its NX or XX condition did not hold."""
    return OK if applied else None


#: SET's answer, built once (not a closure per command).
_SET_ANSWER = _set_answer(_ok_or_nil)


def _plan_set(s: RespServer, c: _Connection, a: list[bytes]) -> Write | None:
    if len(a) == 3:  # no options (most SETs): no option parsing
        return Write(["set", a[1], a[2], {}], len(a[1]) + len(a[2]), _SET_ANSWER)
    ttl_ms, nx, xx, get, keepttl = _parse_set(s, a)
    write = _set_write(a[1], a[2], ttl_ms, nx, _ok_or_nil, xx, keepttl)
    if get:  # read and write in one entry: [get, set]
        if write is None:  # already expired: [get, delete] (with XX or NX: the loop of _set_with)
            if xx or nx:
                return None
            return _txn_write([["get", a[1]], ["delete", a[1]]], len(a[1]), lambda results: _value(results[0]))
        return _txn_write([["get", a[1]], write.command], write.size_bytes, _old_value_unless_failed)
    if write is None and xx:
        return None  # an expired SET XX deletes the key if it exists: _set_with's read and delete
    return write


def _old_value_unless_failed(results: list[list[Any]]) -> Reply:
    """SET ... GET: the old value, whether the set applied or its NX/XX condition did not hold
    (Redis answers the old value either way); another failure of the set is the error."""
    ok, error = results[1]
    if not ok:
        failure = error_from_wire(error)
        if not isinstance(failure, ConditionFailed):
            return error_reply(failure)
    return _value(results[0])


async def _set(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    ttl_ms, nx, xx, get, keepttl = _parse_set(s, a)
    applied, old = await _set_with(s, c, a[1], a[2], ttl_ms, nx, xx, get, keepttl)
    if get:
        return old
    return OK if applied else None


def _plan_setnx(s: RespServer, c: _Connection, a: list[bytes]) -> Write | None:
    if len(a) != 3:
        raise arity_error(a[0])
    return _set_write(a[1], a[2], None, True, int)


def _plan_setex(s: RespServer, c: _Connection, a: list[bytes]) -> Write | None:
    if len(a) != 4:
        raise arity_error(a[0])
    name = a[0].upper()
    ttl_ms = _expiry_ms(s, b"EX" if name == b"SETEX" else b"PX", a[2], name.decode().lower())
    return _set_write(a[1], a[3], ttl_ms, False, lambda _applied: OK)


def _txn_write(steps: list[list[Any]], size_bytes: int, answer: Callable[[list[list[Any]]], Reply]) -> Write:
    """A command that is several KV steps in one entry (a ``txn``): ``answer`` gets the steps'
    results ([ok, result or error on the wire], ...); a step's error is the command's error, but
    for a failed condition of the last step, which ``answer`` judges."""

    def reply(ok: bool, result: Any) -> Reply:
        if not ok:
            return error_reply(result)
        for index, (step_ok, step_result) in enumerate(result):
            if not step_ok and not (index == len(result) - 1 and step_result.get("code") == "condition_failed"):
                return error_reply(error_from_wire(step_result))
        return answer(result)

    return Write(["txn", steps], size_bytes, reply)


def _value(step: list[Any]) -> Reply:
    """The value a ``get`` step found (None: absent)."""
    return None if step[1] is None else step[1][0]


def _plan_getdel(s: RespServer, c: _Connection, a: list[bytes]) -> Write:
    if len(a) != 2:
        raise arity_error(a[0])
    return _txn_write([["get", a[1]], ["delete", a[1]]], len(a[1]), lambda results: _value(results[0]))


def _plan_getset(s: RespServer, c: _Connection, a: list[bytes]) -> Write:
    if len(a) != 3:
        raise arity_error(a[0])
    return _txn_write([["get", a[1]], ["set", a[1], a[2]]], len(a[1]) + len(a[2]), lambda results: _value(results[0]))


def _plan_getex(s: RespServer, c: _Connection, a: list[bytes]) -> Read | Write:
    if len(a) < 2:
        raise arity_error(a[0])
    key = a[1]
    if len(a) == 2:
        return _plan_get(s, c, a)
    option = a[2].upper()
    if option == b"PERSIST" and len(a) == 3:
        change: list[Any] = ["expire", key, None]
    elif option in (b"EX", b"PX", b"EXAT", b"PXAT") and len(a) == 4:
        ttl_ms = _expiry_ms(s, option, a[3], "getex")
        change = ["expire", key, ttl_ms] if ttl_ms > 0 else ["delete", key]
    else:
        raise RespError(SYNTAX_ERROR)
    return _txn_write([["get", key], change], len(key), lambda results: _value(results[0]))


def _plan_strlen(s: RespServer, c: _Connection, a: list[bytes]) -> Read:
    if len(a) != 2:
        raise arity_error(a[0])
    return Read(["get", a[1]], lambda found: 0 if found is None else len(found[0]))


def _plan_append(s: RespServer, c: _Connection, a: list[bytes]) -> Write:
    """The service's ``append`` (the TTL kept); its answer the value's new length."""
    if len(a) != 3:
        raise arity_error(a[0])
    return Write(["append", a[1], a[2]], len(a[1]) + len(a[2]), lambda ok, result: int(result) if ok else error_reply(result))


def _plan_mget(s: RespServer, c: _Connection, a: list[bytes]) -> Read:
    if len(a) < 2:
        raise arity_error(a[0])
    return Read(["mget", a[1:]], lambda found: [None if f is None else f[0] for f in found])


def _plan_mset(s: RespServer, c: _Connection, a: list[bytes]) -> Write:
    if len(a) < 3 or len(a) % 2 == 0:
        raise arity_error(a[0])
    pairs: dict[bytes, bytes] = {}
    for i in range(1, len(a), 2):
        pairs.pop(a[i], None)  # Redis: the last value wins; the service wants each key once
        pairs[a[i]] = a[i + 1]
    size = sum(len(k) + len(v) for k, v in pairs.items())
    return Write(["mset", [[k, v] for k, v in pairs.items()]], size, lambda ok, result: OK if ok else error_reply(result))


def _plan_msetnx(s: RespServer, c: _Connection, a: list[bytes]) -> Write:
    """MSET if none of the keys exists: the service's ``mset`` with ``if_absent``."""
    mset = _plan_mset(s, c, a)

    def answer(ok: bool, result: Any) -> Reply:
        if ok:
            return 1
        return 0 if isinstance(result, ConditionFailed) else error_reply(result)

    return Write([*mset.command, {"if_absent": True}], mset.size_bytes, answer)


def _plan_del(s: RespServer, c: _Connection, a: list[bytes]) -> Write:
    if len(a) < 2:
        raise arity_error(a[0])
    if len(a) == 2:
        return Write(["delete", a[1]], len(a[1]), lambda ok, result: int(bool(result)) if ok else error_reply(result))
    keys = list(dict.fromkeys(a[1:]))  # the service would count a key named twice once too
    return _txn_write([["delete", key] for key in keys], sum(map(len, keys)), lambda results: sum(bool(r[1]) for r in results))


def _plan_exists(s: RespServer, c: _Connection, a: list[bytes]) -> Read:
    if len(a) < 2:
        raise arity_error(a[0])
    return Read(["mget", a[1:]], lambda found: sum(f is not None for f in found))


def _plan_incr(s: RespServer, c: _Connection, a: list[bytes]) -> Write | None:
    name = a[0].upper()
    by = name in (b"INCRBY", b"DECRBY")
    if len(a) != (3 if by else 2):
        raise arity_error(a[0])
    delta = parse_int(a[2]) if by else 1
    if name.startswith(b"DECR"):
        if delta == INT64_MIN:
            raise RespError(ErrorReply("decrement would overflow"))
        delta = -delta
    return Write(["incr", a[1], delta], len(a[1]), _incr_answer)


def _incr_answer(ok: bool, result: Any) -> Reply:
    """INCR's (and DECR's, INCRBY's, DECRBY's) reply: the new value, or why there is none."""
    if ok:
        return int(result[0])
    # Not a decimal int64, or the result would leave int64.
    return NOT_AN_INTEGER if isinstance(result, InvalidArgument) else error_reply(result)


def _plan_expire(s: RespServer, c: _Connection, a: list[bytes]) -> Write | None:
    if len(a) != 3:  # NX/XX/GT/LT: not served
        raise arity_error(a[0]) if len(a) < 3 else RespError(SYNTAX_ERROR)
    name = a[0].upper()
    value = parse_int(a[2])
    ms = {b"EXPIRE": value * 1000, b"PEXPIRE": value, b"EXPIREAT": value * 1000 - s.wall_clock_ms()}.get(name, value - s.wall_clock_ms())
    if ms > ttl_ms_max:
        raise RespError(ErrorReply(f"invalid expire time in '{name.decode().lower()}' command"))
    command = ["delete", a[1]] if ms <= 0 else ["expire", a[1], ms]
    return Write(command, len(a[1]), lambda ok, result: int(bool(result)) if ok else error_reply(result))


async def _persist(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise arity_error(a[0])
    found = await s.read(c, ["get", a[1]])
    if found is None or found[2] is None:
        return 0
    return int(bool(await s.write(c, ["expire", a[1], None], len(a[1]))))


def _plan_ttl(s: RespServer, c: _Connection, a: list[bytes]) -> Read:
    if len(a) != 2:
        raise arity_error(a[0])
    milliseconds = a[0].upper() == b"PTTL"

    def answer(found: Any) -> Reply:
        if found is None:
            return -2
        ttl_ms = found[2]
        if ttl_ms is None:
            return -1
        return int(ttl_ms) if milliseconds else (int(ttl_ms) + 500) // 1000

    return Read(["get", a[1]], answer)


def _plan_type(s: RespServer, c: _Connection, a: list[bytes]) -> Read:
    if len(a) != 2:
        raise arity_error(a[0])
    return Read(["get", a[1]], lambda found: SimpleString("none" if found is None else "string"))


#: The string and key commands, by upper-case name.
COMMANDS: dict[bytes, Handler] = {
    b"GET": Planned(_plan_get),
    b"SET": Planned(_plan_set, _set),
    b"SETNX": Planned(_plan_setnx),
    b"SETEX": Planned(_plan_setex),
    b"PSETEX": Planned(_plan_setex),
    b"GETDEL": Planned(_plan_getdel),
    b"GETSET": Planned(_plan_getset),
    b"GETEX": Planned(_plan_getex),
    b"STRLEN": Planned(_plan_strlen),
    b"APPEND": Planned(_plan_append),
    b"MSETNX": Planned(_plan_msetnx),
    b"MGET": Planned(_plan_mget),
    b"MSET": Planned(_plan_mset),
    b"DEL": Planned(_plan_del),
    b"UNLINK": Planned(_plan_del),
    b"EXISTS": Planned(_plan_exists),
    b"INCR": Planned(_plan_incr),
    b"DECR": Planned(_plan_incr),
    b"INCRBY": Planned(_plan_incr),
    b"DECRBY": Planned(_plan_incr),
    b"EXPIRE": Planned(_plan_expire),
    b"PEXPIRE": Planned(_plan_expire),
    b"EXPIREAT": Planned(_plan_expire),
    b"PEXPIREAT": Planned(_plan_expire),
    b"PERSIST": _persist,
    b"TTL": Planned(_plan_ttl),
    b"PTTL": Planned(_plan_ttl),
    b"TYPE": Planned(_plan_type),
}
