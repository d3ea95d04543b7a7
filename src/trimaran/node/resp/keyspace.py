"""Commands over the whole keyspace: SCAN, KEYS, FLUSHDB, on the KV service's ``scan`` query.

- ``SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]``: a page of at most ``n`` keys (default 10, at
  most ``PAGE_KEYS``) in key order. 0 starts (and ends) a scan; other cursors are opaque numbers
  (longer than Redis's 64 bits) that any connection to the node may go on with (:class:`Cursors`). Keys written during a scan that sort after the cursor are seen, as
  Redis guarantees for keys present throughout. MATCH is Redis's glob (``*``, ``?``, ``[a-z]``,
  ``[^a]``, ``\\`` escapes); its literal head narrows the scan to that prefix. ``TYPE`` other than
  ``string`` matches nothing (strings are the only type).
- ``KEYS pattern``: every matching key, scanning page by page; refused once it examined
  ``limits.resp_keys_scanned_max`` keys (use SCAN).
- ``FLUSHDB [ASYNC|SYNC]`` (``admin:*``): deletes every key, a scan page at a time, each page in
  one ``txn``. Not one atomic step: a key written meanwhile may be deleted or may survive.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from trimaran import limits
from trimaran.node.resp.base import Handler, RespError, arity_error, parse_int
from trimaran.protocols.resp import OK, SYNTAX_ERROR, ErrorReply, Reply

if TYPE_CHECKING:
    from trimaran.node.resp.server import RespServer, _Connection

#: SCAN's COUNT when none is given (Redis's), and the page of KEYS and FLUSHDB.
SCAN_COUNT_DEFAULT = 10
PAGE_KEYS = 1_000
#: Longest key a stateless cursor carries (about 2,500 decimal digits), and the long-key cursors kept.
CURSOR_KEY_BYTES_MAX = 1_024
LONG_CURSORS_MAX = 1_024
_GLOB_SPECIAL = re.compile(rb"[*?\[\\]")


def glob_regex(pattern: bytes) -> re.Pattern[bytes]:
    """Redis's ``stringmatchlen`` glob as a regex over the whole key (bytes, case-sensitive)."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i : i + 1]
        if ch == b"*":
            out.append(b".*")
        elif ch == b"?":
            out.append(b".")
        elif ch == b"\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i : i + 1]))
        elif ch == b"[":
            end = pattern.find(b"]", i + 2 if pattern[i + 1 : i + 2] in (b"^", b"]") else i + 1)
            if end < 0:
                out.append(re.escape(ch))  # an unclosed class is a literal "[" (close enough)
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith(b"^")
                if negate:
                    body = body[1:]
                body = body.replace(b"\\", b"\\\\").replace(b"]", b"\\]")
                out.append(b"[" + (b"^" if negate else b"") + body + b"]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile(b"".join(out) + rb"\Z", re.DOTALL)


def literal_prefix(pattern: bytes) -> bytes:
    """The pattern's head before its first special character: every match starts with it."""
    match = _GLOB_SPECIAL.search(pattern)
    return pattern if match is None else pattern[: match.start()]


class Cursors:
    """SCAN cursors. Stateless for keys up to ``CURSOR_KEY_BYTES_MAX`` (a Redis client parses a
    cursor as an integer, and Python's ``int()`` refuses over 4,300 digits): the decimal of the
    big-endian integer of ``0x01`` and the key. A longer key is kept in a node-wide table of the
    last ``LONG_CURSORS_MAX`` such cursors, its cursor being ``0x02`` and its number."""

    def __init__(self) -> None:
        self._long: OrderedDict[int, bytes] = OrderedDict()
        self._next = 0

    def cursor_of(self, key: bytes | None) -> bytes:
        if key is None:
            return b"0"
        if len(key) <= CURSOR_KEY_BYTES_MAX:
            return str(int.from_bytes(b"\x01" + key, "big")).encode()
        self._next += 1
        self._long[self._next] = key
        if len(self._long) > LONG_CURSORS_MAX:
            self._long.popitem(last=False)
        return str(int.from_bytes(b"\x02" + self._next.to_bytes(8, "big"), "big")).encode()

    def key_of(self, cursor: bytes) -> bytes | None:
        """The key a cursor resumes after (None: from the start); ``-ERR invalid cursor`` otherwise."""
        if cursor == b"0":
            return None
        if not cursor.isdigit() or len(cursor) > 3 * (CURSOR_KEY_BYTES_MAX + 1):
            raise RespError(ErrorReply("invalid cursor"))
        number = int(cursor)
        raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
        if len(raw) >= 2 and raw[0] == 1:
            return raw[1:]
        if len(raw) == 9 and raw[0] == 2 and int.from_bytes(raw[1:], "big") in self._long:
            return self._long[int.from_bytes(raw[1:], "big")]
        raise RespError(ErrorReply("invalid cursor (or one of a long key this node no longer holds: scan again)"))


async def _scan_page(s: RespServer, c: _Connection, prefix: bytes, after: bytes | None, count: int) -> tuple[list[bytes], bytes | None]:
    """One page of keys under ``prefix`` after ``after``; (its keys, where the next page starts or None)."""
    page = await s.read(c, ["scan", prefix, {"start_after": after, "limit": count}])
    return [item[0] for item in page["items"]], page["next"]


async def _scan(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) < 2 or len(a) % 2:
        raise arity_error(a[0]) if len(a) < 2 else RespError(SYNTAX_ERROR)
    after = s.scan_cursors.key_of(a[1])
    pattern: bytes | None = None
    count = SCAN_COUNT_DEFAULT
    strings = True
    for i in range(2, len(a), 2):
        option = a[i].upper()
        if option == b"MATCH":
            pattern = a[i + 1]
        elif option == b"COUNT":
            count = parse_int(a[i + 1])
            if count < 1:
                raise RespError(SYNTAX_ERROR)
        elif option == b"TYPE":
            strings = a[i + 1].lower() == b"string"
        else:
            raise RespError(SYNTAX_ERROR)
    prefix = literal_prefix(pattern) if pattern is not None else b""
    if after is not None and not after.startswith(prefix) and after < prefix:
        after = None  # a cursor from before the prefix: start the prefix from its beginning
    keys, following = await _scan_page(s, c, prefix, after, min(count, PAGE_KEYS))
    if pattern is not None:
        regex = glob_regex(pattern)
        keys = [key for key in keys if regex.match(key)]
    page: list[Reply] = list(keys) if strings else []
    return [s.scan_cursors.cursor_of(following), page]


async def _keys(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) != 2:
        raise arity_error(a[0])
    pattern = a[1]
    regex = glob_regex(pattern)
    prefix = literal_prefix(pattern)
    found: list[Reply] = []
    after: bytes | None = None
    scanned = 0
    while True:
        keys, after = await _scan_page(s, c, prefix, after, PAGE_KEYS)
        scanned += len(keys)
        found += [key for key in keys if regex.match(key)]
        if after is None:
            return found
        if scanned >= limits.resp_keys_scanned_max:
            return ErrorReply(f"KEYS examined {scanned} keys (limits.resp_keys_scanned_max); use SCAN")


async def _flushdb(s: RespServer, c: _Connection, a: list[bytes]) -> Reply:
    if len(a) > 2 or (len(a) == 2 and a[1].upper() not in (b"ASYNC", b"SYNC")):
        raise RespError(SYNTAX_ERROR)
    s.authorise(c, "flushdb", {})  # admin:* (an op the authoriser does not know needs it)
    for _ in range(limits.resp_flush_rounds_max):
        keys, _after = await _scan_page(s, c, b"", None, PAGE_KEYS)
        if not keys:
            return OK
        steps: list[Any] = [["delete", key] for key in keys]
        await s.write(c, ["txn", steps], sum(map(len, keys)))
    return ErrorReply("FLUSHDB: keys kept arriving; try again")


#: The keyspace commands, by upper-case name.
COMMANDS: dict[bytes, Handler] = {b"SCAN": _scan, b"KEYS": _keys, b"FLUSHDB": _flushdb, b"FLUSHALL": _flushdb}
