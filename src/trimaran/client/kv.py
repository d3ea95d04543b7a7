"""Client methods of the ``kv`` service, the replicated KV cache: ``c.kv.set``, ``c.kv.get``, ...

The async :class:`KvClient` (``Client.kv``) and the blocking :class:`SyncKvClient`
(``SyncClient.kv``) have the same methods with the same arguments; ``scan`` and ``watch`` are an
async iterator in one and a plain iterator in the other::

    async with trimaran.connect(endpoints) as c:
        rev = await c.kv.set("session:42", b"...", ttl_ms=30_000)
        entry = await c.kv.get("session:42")          # KvEntry(value, revision, ttl_remaining_ms)
        await c.kv.cas("session:42", entry.revision, b"new")  # raises ConditionFailed if it moved
        async for event in c.kv.watch("session:", prefix=True):
            print(event.revision, event.kind, event.key, event.reason)

Like the register methods, everything goes through the client's two generic calls: ``command``
(exactly-once, through the log) and ``read`` (a query at a consistency level). Keys and values
are ``str`` (sent as UTF-8) or ``bytes``; what comes back is always ``bytes``. The service's
refusals arrive as the typed errors of :mod:`trimaran.errors` (``ConditionFailed``,
``OutOfMemory``, ``RevisionCompacted``, ``InvalidArgument``, ``TooLarge``); the formats and
semantics are in :mod:`trimaran.services.kv`.

``watch`` polls the service's ``watch`` query with linearizable reads: each poll returns the
changes after the last revision delivered, so the stream resumes exactly where it stopped after a
lost connection or a leader change (the client reconnects and re-finds the leader underneath). An
empty poll doubles the pause before the next one (``poll_ms_min`` to ``poll_ms_max``); a change
resets it. When the history the watch needs is gone, it raises ``RevisionCompacted`` whose
``details["oldest_revision"]`` is where a fresh watch could start (after re-reading the keys).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol, Union

import trio

from trimaran import limits
from trimaran.errors import InvalidArgument, NotLeader, ProtocolError, RequestTimeout, TooLarge, Unavailable

from .register import BytesLike, check_key, check_value, to_bytes

SERVICE = "kv"
#: Items asked per ``scan`` page (the service clamps it to its ``scan_limit_max``).
SCAN_PAGE_SIZE_DEFAULT = 500
#: Events asked per ``watch`` poll (the service clamps it to its ``watch_limit_max``).
WATCH_PAGE_SIZE_DEFAULT = 1_000
#: Pause after an empty watch poll: starts here, doubles per empty poll, up to the maximum.
WATCH_POLL_MS_MIN_DEFAULT = 10
WATCH_POLL_MS_MAX_DEFAULT = 500
#: Errors after which a watch polls again (the cluster is electing, restarting or unreachable for
#: longer than one call's deadline); anything else ends the watch with the error.
WATCH_RETRYABLE = (RequestTimeout, Unavailable, NotLeader)
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


class KvEntry(NamedTuple):
    """A live key's value, the revision that wrote it, and its remaining TTL (None: no expiry)."""

    value: bytes
    revision: int
    ttl_remaining_ms: int | None


class KvItem(NamedTuple):
    """One key of a ``scan``."""

    key: bytes
    value: bytes
    revision: int
    ttl_remaining_ms: int | None


class KvEvent(NamedTuple):
    """One change seen by ``watch``.

    ``kind`` is ``"put"`` (``set``/``mset``/``incr``/``decr``; ``value`` is the new value) or
    ``"delete"`` (``value`` None; ``reason`` is ``"deleted"``, ``"expired"`` or ``"evicted"``).
    Events of one log entry share a revision and always arrive together.
    """

    revision: int
    kind: str
    key: bytes
    value: bytes | None
    reason: str | None


class ScanPage(NamedTuple):
    """One page of a scan: ``next`` is the ``start_after`` of the following page (None: done)."""

    items: list[KvItem]
    next: bytes | None
    revision: int


class WatchPage(NamedTuple):
    """One watch poll: ``next`` is the ``from_revision`` of the following poll."""

    events: list[KvEvent]
    next: int
    revision: int


#: ``mset`` input: a mapping of key to value, or ``(key, value)`` / ``(key, value, ttl_ms)`` tuples.
#: (The mapping is ``Mapping[Any, Any]`` because Mapping keys are invariant: a ``dict[str, str]`` is
#: not a ``Mapping[str | bytes, ...]``; the items are checked at run time.)
MsetItems = Union[
    Mapping[Any, Any], Iterable[Union[tuple[BytesLike, BytesLike], tuple[BytesLike, BytesLike, "int | None"]]]
]


class _Calls(Protocol):
    """What the KV methods need of a client (``Client`` provides it)."""

    async def command(self, service: str, command: Any, *, timeout_ms: int | None = None) -> Any: ...

    async def read(
        self, service: str, query: Any, consistency: str = "linearizable", *, timeout_ms: int | None = None
    ) -> Any: ...


# --- argument checks (fail fast, nothing sent; the node checks everything again) --------------------


def _ttl(ttl_ms: Any) -> int | None:
    if ttl_ms is None:
        return None
    if type(ttl_ms) is not int or ttl_ms < 1:
        raise InvalidArgument(f"ttl_ms must be a positive int of milliseconds or None, not {ttl_ms!r}")
    return ttl_ms


def _revision(revision: Any, what: str) -> int | None:
    if revision is None:
        return None
    if type(revision) is not int or revision < 0:
        raise InvalidArgument(f"{what} must be a revision (an int >= 0; 0 = absent), not {revision!r}")
    return revision


def _int64(value: Any, what: str) -> int:
    if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
        raise InvalidArgument(f"{what} must be an int64, not {value!r}")
    return value


def _prefix(prefix: BytesLike) -> bytes:
    """A key prefix: checked as a key, except that the empty prefix (every key) is allowed."""
    return b"" if to_bytes(prefix, "prefix") == b"" else check_key(prefix)


def _page_size(n: Any, what: str) -> int:
    if type(n) is not int or n < 1:
        raise InvalidArgument(f"{what} must be a positive int, not {n!r}")
    return n


def _options(**options: Any) -> dict[str, Any] | None:
    """The trailing options map with only the options given (None and False are the defaults, so
    they are left out: the command stays as small as the service's format allows)."""
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    return given or None


def _mset_items(items: MsetItems, ttl_ms: int | None) -> list[list[Any]]:
    pairs = items.items() if isinstance(items, Mapping) else items
    out: list[list[Any]] = []
    for item in pairs:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise InvalidArgument("mset items are (key, value) or (key, value, ttl_ms) tuples, or a mapping")
        ttl = _ttl(item[2]) if len(item) == 3 else ttl_ms
        pair = [check_key(item[0]), check_value(item[1])]
        out.append(pair if ttl is None else [*pair, ttl])
    if not out:
        raise InvalidArgument("mset needs at least one key")
    return out


# --- answers ----------------------------------------------------------------------------------------


def _bad(op: str, result: Any) -> ProtocolError:
    return ProtocolError(f"kv {op}: unexpected answer {result!r:.200} from the node")


def _entry(result: Any, op: str = "get") -> KvEntry | None:
    if result is None:
        return None
    if type(result) is not list or len(result) != 3:
        raise _bad(op, result)
    return KvEntry(*result)


def _int(result: Any, op: str) -> int:
    if type(result) is not int:
        raise _bad(op, result)
    return result


def _bool(result: Any, op: str) -> bool:
    if type(result) is not bool:
        raise _bad(op, result)
    return result


def _scan_page(result: Any) -> ScanPage:
    if not isinstance(result, dict) or type(result.get("items")) is not list:
        raise _bad("scan", result)
    return ScanPage([KvItem(*item) for item in result["items"]], result.get("next"), result.get("revision", 0))


def _watch_page(result: Any) -> WatchPage:
    if not isinstance(result, dict) or type(result.get("events")) is not list or type(result.get("next")) is not int:
        raise _bad("watch", result)
    return WatchPage([KvEvent(*e) for e in result["events"]], result["next"], result.get("revision", 0))


class WatchCursor:
    """Where one watch stands (the last revision delivered) and how long to pause before polling
    again; shared by the async and the blocking watch so both resume and back off the same way."""

    def __init__(
        self, match: bytes, is_prefix: bool, from_revision: int, page_size: int, poll_ms_min: int, poll_ms_max: int
    ) -> None:
        if not 0 < poll_ms_min <= poll_ms_max:
            raise InvalidArgument("need 0 < poll_ms_min <= poll_ms_max")
        self.match = match
        self.is_prefix = is_prefix
        #: Every event up to this revision has been delivered (or was before the watch began).
        self.from_revision = from_revision
        self.page_size = page_size
        self.poll_ms_min = poll_ms_min
        self.poll_ms_max = poll_ms_max
        self.pause_ms = 0

    def query(self) -> list[Any]:
        return ["watch", self.match, self.from_revision, {"prefix": self.is_prefix, "limit": self.page_size}]

    def advance(self, page: WatchPage) -> list[KvEvent]:
        """Take one poll's answer: move the cursor, and poll again at once if it had events."""
        # ``next`` never goes back; max() keeps a stale answer (from a lagging replica) harmless.
        self.from_revision = max(self.from_revision, page.next)
        self.pause_ms = 0 if page.events else self._longer_pause()
        return page.events

    def failed(self) -> None:
        """A poll could not be answered (election, restart): wait a little longer each time."""
        self.pause_ms = self._longer_pause()

    def _longer_pause(self) -> int:
        return min(self.poll_ms_max, max(self.poll_ms_min, self.pause_ms * 2))


class KvClient:
    """The ``kv`` service's methods on an async client (``c.kv``); see the module docstring."""

    def __init__(self, client: _Calls) -> None:
        self._client = client

    # --- commands (exactly-once, through the log) -------------------------------------------------

    async def set(
        self,
        key: BytesLike,
        value: BytesLike,
        *,
        ttl_ms: int | None = None,
        if_absent: bool = False,
        if_revision: int | None = None,
        if_value: BytesLike | None = None,
        timeout_ms: int | None = None,
    ) -> int:
        """Store ``value`` under ``key``; return the write's revision.

        ``ttl_ms``: expire that long after the write (None: never; a set replaces the old TTL).
        ``if_absent`` / ``if_revision`` (0 = absent) / ``if_value``: all given must hold, else
        ``ConditionFailed`` (details ``revision``: the key's current one) and nothing changes.
        """
        opts = _options(
            ttl_ms=_ttl(ttl_ms),
            if_absent=bool(if_absent),
            if_revision=_revision(if_revision, "if_revision"),
            if_value=None if if_value is None else check_value(if_value),
        )
        command = ["set", check_key(key), check_value(value)] + ([opts] if opts else [])
        return _int(await self._client.command(SERVICE, command, timeout_ms=timeout_ms), "set")

    async def cas(
        self,
        key: BytesLike,
        expected: BytesLike | int | None,
        new: BytesLike,
        *,
        ttl_ms: int | None = None,
        timeout_ms: int | None = None,
    ) -> int:
        """Compare-and-swap: set ``key`` to ``new`` if it still holds ``expected``; the new revision.

        ``expected`` is the current value (``str``/``bytes``), the current revision (``int``; 0 =
        absent), or None (the key must be absent). Raises ``ConditionFailed`` otherwise.
        """
        if expected is None:
            return await self.set(key, new, ttl_ms=ttl_ms, if_absent=True, timeout_ms=timeout_ms)
        if isinstance(expected, bool):  # an int subclass, but surely not meant as a revision
            raise InvalidArgument("cas: expected is a value (str/bytes), a revision (int) or None, not a bool")
        if isinstance(expected, int):
            return await self.set(key, new, ttl_ms=ttl_ms, if_revision=expected, timeout_ms=timeout_ms)
        return await self.set(key, new, ttl_ms=ttl_ms, if_value=expected, timeout_ms=timeout_ms)

    async def delete(
        self,
        key: BytesLike,
        *,
        if_revision: int | None = None,
        if_value: BytesLike | None = None,
        timeout_ms: int | None = None,
    ) -> bool:
        """Remove ``key``; True if it existed. Conditions as in :meth:`set` (``ConditionFailed``)."""
        opts = _options(
            if_revision=_revision(if_revision, "if_revision"),
            if_value=None if if_value is None else check_value(if_value),
        )
        command = ["delete", check_key(key)] + ([opts] if opts else [])
        return _bool(await self._client.command(SERVICE, command, timeout_ms=timeout_ms), "delete")

    async def incr(self, key: BytesLike, delta: int = 1, *, timeout_ms: int | None = None) -> int:
        """Add ``delta`` to the int64 stored as decimal text under ``key`` (absent = 0); the new value.

        The key keeps its TTL. A value that is not a decimal int64, or overflow, is ``InvalidArgument``.
        """
        command = ["incr", check_key(key), _int64(delta, "delta")]
        result = await self._client.command(SERVICE, command, timeout_ms=timeout_ms)
        if type(result) is not list or len(result) != 2:
            raise _bad("incr", result)
        return _int(result[0], "incr")

    async def decr(self, key: BytesLike, delta: int = 1, *, timeout_ms: int | None = None) -> int:
        """Subtract ``delta``; see :meth:`incr`."""
        command = ["decr", check_key(key), _int64(delta, "delta")]
        result = await self._client.command(SERVICE, command, timeout_ms=timeout_ms)
        if type(result) is not list or len(result) != 2:
            raise _bad("decr", result)
        return _int(result[0], "decr")

    async def mset(self, items: MsetItems, *, ttl_ms: int | None = None, timeout_ms: int | None = None) -> int:
        """Set several distinct keys atomically (all or nothing); their shared revision.

        ``ttl_ms`` applies to every item that does not carry its own ``(key, value, ttl_ms)``.
        """
        command = ["mset", _mset_items(items, _ttl(ttl_ms))]
        return _int(await self._client.command(SERVICE, command, timeout_ms=timeout_ms), "mset")

    async def touch(self, key: BytesLike, *, timeout_ms: int | None = None) -> bool:
        """Mark ``key`` most recently used (reads do not count for LRU); True if it exists."""
        return _bool(await self._client.command(SERVICE, ["touch", check_key(key)], timeout_ms=timeout_ms), "touch")

    async def expire(self, key: BytesLike, ttl_ms: int | None, *, timeout_ms: int | None = None) -> bool:
        """Give ``key`` a new TTL from now (None: never expire); True if it exists."""
        command = ["expire", check_key(key), _ttl(ttl_ms)]
        return _bool(await self._client.command(SERVICE, command, timeout_ms=timeout_ms), "expire")

    # --- queries ------------------------------------------------------------------------------------

    async def get(
        self, key: BytesLike, consistency: str = "linearizable", *, timeout_ms: int | None = None
    ) -> KvEntry | None:
        """``KvEntry(value, revision, ttl_remaining_ms)`` of ``key``, or None if it is absent or expired.

        ``consistency``: ``"linearizable"`` (default), ``"lease"`` or ``"stale"`` (a replica's state).
        """
        result = await self._client.read(SERVICE, ["get", check_key(key)], consistency, timeout_ms=timeout_ms)
        return _entry(result)

    async def mget(
        self, keys: Iterable[BytesLike], consistency: str = "linearizable", *, timeout_ms: int | None = None
    ) -> list[KvEntry | None]:
        """:meth:`get` of several keys at one point in time, in the order asked."""
        query = ["mget", [check_key(k) for k in keys]]
        result = await self._client.read(SERVICE, query, consistency, timeout_ms=timeout_ms)
        if type(result) is not list:
            raise _bad("mget", result)
        return [_entry(r, "mget") for r in result]

    async def stats(self, consistency: str = "linearizable", *, timeout_ms: int | None = None) -> dict[str, Any]:
        """The service's counters: keys, used_bytes, revision, expired/evicted totals, ..."""
        result = await self._client.read(SERVICE, ["stats"], consistency, timeout_ms=timeout_ms)
        if not isinstance(result, dict):
            raise _bad("stats", result)
        return result

    async def scan_page(
        self,
        prefix: BytesLike = b"",
        *,
        start_after: BytesLike | None = None,
        limit: int = SCAN_PAGE_SIZE_DEFAULT,
        consistency: str = "linearizable",
        timeout_ms: int | None = None,
    ) -> ScanPage:
        """One page of live keys starting with ``prefix`` (b"": all), in key order, after ``start_after``."""
        opts = _options(start_after=None if start_after is None else check_key(start_after), limit=_page_size(limit, "limit"))
        query = ["scan", _prefix(prefix), opts]
        return _scan_page(await self._client.read(SERVICE, query, consistency, timeout_ms=timeout_ms))

    async def scan(
        self,
        prefix: BytesLike = b"",
        *,
        start_after: BytesLike | None = None,
        page_size: int = SCAN_PAGE_SIZE_DEFAULT,
        limit: int | None = None,
        consistency: str = "linearizable",
        timeout_ms: int | None = None,
    ) -> AsyncIterator[KvItem]:
        """Every live key starting with ``prefix`` in key order, fetched ``page_size`` at a time.

        Each page is its own read: a key written during a long scan may or may not show, but no
        key is seen twice and none that lives throughout is missed. ``limit``: stop after that many.
        """
        remaining = None if limit is None else _page_size(limit, "limit")
        after = None if start_after is None else check_key(start_after)
        while remaining is None or remaining > 0:
            want = page_size if remaining is None else min(page_size, remaining)
            page = await self.scan_page(prefix, start_after=after, limit=want, consistency=consistency, timeout_ms=timeout_ms)
            for item in page.items:
                yield item
            if remaining is not None:
                remaining -= len(page.items)
            if page.next is None:
                return
            after = page.next

    async def watch_page(
        self,
        key_or_prefix: BytesLike,
        from_revision: int,
        *,
        prefix: bool = False,
        limit: int = WATCH_PAGE_SIZE_DEFAULT,
        timeout_ms: int | None = None,
    ) -> WatchPage:
        """One linearizable poll of the changes after ``from_revision`` (see :meth:`watch`)."""
        cursor = await self._cursor(key_or_prefix, from_revision, prefix, limit, 1, 1, timeout_ms)
        return await self._poll(cursor, timeout_ms)

    async def watch(
        self,
        key_or_prefix: BytesLike,
        from_revision: int | None = None,
        *,
        prefix: bool = False,
        page_size: int = WATCH_PAGE_SIZE_DEFAULT,
        poll_ms_min: int = WATCH_POLL_MS_MIN_DEFAULT,
        poll_ms_max: int = WATCH_POLL_MS_MAX_DEFAULT,
        timeout_ms: int | None = None,
    ) -> AsyncIterator[KvEvent]:
        """Endless stream of the changes to a key (or, with ``prefix=True``, to every key under it).

        ``from_revision``: deliver the changes after this revision (None: from now on). Survives
        lost connections and leader changes; raises ``RevisionCompacted`` when the changes after
        the revision it needs are no longer kept. Stop it by leaving the ``async for`` (or a cancel
        scope); ``timeout_ms`` bounds each poll, not the watch.
        """
        cursor = await self._cursor(key_or_prefix, from_revision, prefix, page_size, poll_ms_min, poll_ms_max, timeout_ms)
        while True:
            try:
                events = cursor.advance(await self._poll(cursor, timeout_ms))
            except WATCH_RETRYABLE:
                cursor.failed()
                events = []
            for event in events:
                yield event
            if cursor.pause_ms:
                await trio.sleep(cursor.pause_ms / 1000)

    async def _cursor(
        self,
        key_or_prefix: BytesLike,
        from_revision: int | None,
        is_prefix: bool,
        page_size: int,
        poll_ms_min: int,
        poll_ms_max: int,
        timeout_ms: int | None,
    ) -> WatchCursor:
        match = _prefix(key_or_prefix) if is_prefix else check_key(key_or_prefix)
        start = _revision(from_revision, "from_revision")
        if start is None:  # "from now": the service's current revision, read linearizably
            start = _int((await self.stats(timeout_ms=timeout_ms)).get("revision"), "stats")
        return WatchCursor(match, bool(is_prefix), start, _page_size(page_size, "page_size"), poll_ms_min, poll_ms_max)

    async def _poll(self, cursor: WatchCursor, timeout_ms: int | None) -> WatchPage:
        return _watch_page(await self._client.read(SERVICE, cursor.query(), "linearizable", timeout_ms=timeout_ms))


class SyncKvClient:
    """The blocking twin of :class:`KvClient` (``SyncClient.kv``): same methods, same errors;
    ``scan`` and ``watch`` are plain iterators (a blocking ``watch`` sleeps in the caller's thread)."""

    def __init__(self, kv: KvClient, call: Callable[..., Any]) -> None:
        #: ``call(async_fn, *args, **kwargs)`` runs one call on the client's trio thread and waits.
        self._kv = kv
        self._call = call

    def set(self, key: BytesLike, value: BytesLike, **options: Any) -> int:
        """Blocking :meth:`KvClient.set` (options ``ttl_ms``, ``if_absent``, ``if_revision``, ``if_value``)."""
        return self._call(self._kv.set, key, value, **options)

    def cas(self, key: BytesLike, expected: BytesLike | int | None, new: BytesLike, **options: Any) -> int:
        """Blocking :meth:`KvClient.cas`."""
        return self._call(self._kv.cas, key, expected, new, **options)

    def delete(self, key: BytesLike, **options: Any) -> bool:
        """Blocking :meth:`KvClient.delete`."""
        return self._call(self._kv.delete, key, **options)

    def incr(self, key: BytesLike, delta: int = 1, **options: Any) -> int:
        """Blocking :meth:`KvClient.incr`."""
        return self._call(self._kv.incr, key, delta, **options)

    def decr(self, key: BytesLike, delta: int = 1, **options: Any) -> int:
        """Blocking :meth:`KvClient.decr`."""
        return self._call(self._kv.decr, key, delta, **options)

    def mset(self, items: MsetItems, **options: Any) -> int:
        """Blocking :meth:`KvClient.mset`."""
        return self._call(self._kv.mset, items, **options)

    def touch(self, key: BytesLike, **options: Any) -> bool:
        """Blocking :meth:`KvClient.touch`."""
        return self._call(self._kv.touch, key, **options)

    def expire(self, key: BytesLike, ttl_ms: int | None, **options: Any) -> bool:
        """Blocking :meth:`KvClient.expire`."""
        return self._call(self._kv.expire, key, ttl_ms, **options)

    def get(self, key: BytesLike, consistency: str = "linearizable", **options: Any) -> KvEntry | None:
        """Blocking :meth:`KvClient.get`."""
        return self._call(self._kv.get, key, consistency, **options)

    def mget(self, keys: Iterable[BytesLike], consistency: str = "linearizable", **options: Any) -> list[KvEntry | None]:
        """Blocking :meth:`KvClient.mget`."""
        return self._call(self._kv.mget, list(keys), consistency, **options)

    def stats(self, consistency: str = "linearizable", **options: Any) -> dict[str, Any]:
        """Blocking :meth:`KvClient.stats`."""
        return self._call(self._kv.stats, consistency, **options)

    def scan_page(self, prefix: BytesLike = b"", **options: Any) -> ScanPage:
        """Blocking :meth:`KvClient.scan_page`."""
        return self._call(self._kv.scan_page, prefix, **options)

    def watch_page(self, key_or_prefix: BytesLike, from_revision: int, **options: Any) -> WatchPage:
        """Blocking :meth:`KvClient.watch_page`."""
        return self._call(self._kv.watch_page, key_or_prefix, from_revision, **options)

    def scan(
        self,
        prefix: BytesLike = b"",
        *,
        start_after: BytesLike | None = None,
        page_size: int = SCAN_PAGE_SIZE_DEFAULT,
        limit: int | None = None,
        consistency: str = "linearizable",
        timeout_ms: int | None = None,
    ) -> Iterator[KvItem]:
        """Blocking :meth:`KvClient.scan`: a plain iterator, one read per page."""
        remaining = None if limit is None else _page_size(limit, "limit")
        while remaining is None or remaining > 0:
            want = page_size if remaining is None else min(page_size, remaining)
            page = self.scan_page(prefix, start_after=start_after, limit=want, consistency=consistency, timeout_ms=timeout_ms)
            yield from page.items
            if remaining is not None:
                remaining -= len(page.items)
            if page.next is None:
                return
            start_after = page.next

    def watch(
        self,
        key_or_prefix: BytesLike,
        from_revision: int | None = None,
        *,
        prefix: bool = False,
        page_size: int = WATCH_PAGE_SIZE_DEFAULT,
        poll_ms_min: int = WATCH_POLL_MS_MIN_DEFAULT,
        poll_ms_max: int = WATCH_POLL_MS_MAX_DEFAULT,
        timeout_ms: int | None = None,
    ) -> Iterator[KvEvent]:
        """Blocking :meth:`KvClient.watch`: a plain, endless iterator (stop by leaving the loop)."""
        kv = self._kv
        cursor: WatchCursor = self._call(
            kv._cursor, key_or_prefix, from_revision, prefix, page_size, poll_ms_min, poll_ms_max, timeout_ms
        )
        while True:
            try:
                events = cursor.advance(self._call(kv._poll, cursor, timeout_ms))
            except WATCH_RETRYABLE:
                cursor.failed()
                events = []
            yield from events
            if cursor.pause_ms:
                time.sleep(cursor.pause_ms / 1000)


__all__ = [
    "KvClient",
    "KvEntry",
    "KvEvent",
    "KvItem",
    "ScanPage",
    "SyncKvClient",
    "WatchCursor",
    "WatchPage",
]
