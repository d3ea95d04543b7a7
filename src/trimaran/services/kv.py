"""The KV cache: a replicated key-value map with TTLs, conditional writes, counters, scans,
deterministic eviction and a resumable watch history.

Everything here is decided by the log: revisions are log indexes, "now" is the leader timestamp in
the entry (``ApplyContext.timestamp_ms``), and the LRU order is the apply order. So every replica
holds the same keys, expires and evicts the same ones at the same log position, and answers the same.

Keys and values are ``bytes`` (a client encodes ``str`` as UTF-8); keys are 1..``limits.key_bytes_max``
bytes, values 0..``limits.value_bytes_max``. Every command and query is a list::

    [op, required arguments..., {options}?]     (the map may be None; an option given as None
                                                 means "not given")

Commands (through the log, exactly-once; validation is complete before anything changes, so a
refused command changes nothing):

==========  ===========================================================  ==========================
op          arguments / {options}                                        result
==========  ===========================================================  ==========================
``set``     key, value / {ttl_ms | keep_ttl, if_absent, if_exists,         revision (int)
            if_revision, if_value}
``delete``  key / {if_revision, if_value}                                True if the key existed
``incr``    key, delta (int64)                                           [new value (int), revision]
``decr``    key, delta (int64)                                           [new value (int), revision]
``mset``    [[key, value] or [key, value, ttl_ms], ...] (distinct keys)  revision (int)
            / {if_absent: every key absent, else nothing written}
``append``  key, suffix (the value grows; a missing key is empty; the    the value's new length
            expiry is kept)
``touch``   key (marks it most recently used)                            True if the key exists
``expire``  key, ttl_ms | None (None: no expiry; revision unchanged)     True if the key exists
``txn``     [step, ...] / {if_revisions: [[key, revision], ...],         [[True, result] or
            if_expiries: [[key, expires_at_ms], ...]} (a step: any       [False, error], ...] per
            command above but ``txn``, or a ``get`` or ``mget`` query;   step, in order
            at most ``txn_steps_max`` steps)
==========  ===========================================================  ==========================

Queries (read-only, against the applied state at the last applied entry's log time):

==========  =============================================  ===========================================
op          arguments / {options}                          result
==========  =============================================  ===========================================
``get``     key                                            [value, revision, ttl_remaining_ms | None]
                                                           or None
``mget``    [key, ...] (at most ``mget_keys_max``) /       [get result, ...] in the order asked;
            {expires_at}                                   ``expires_at``: each found one has its
                                                           absolute ``expires_at_ms`` (0: none) 4th
``scan``    prefix (b"" = all) / {start_after, limit}      {"items": [[key, value, revision,
                                                           ttl_remaining_ms | None], ...] (key order),
                                                           "next": start_after of the next page or
                                                           None when done, "revision": current}
``watch``   key or prefix, from_revision / {prefix: bool,  {"events": [[revision, kind, key, value,
            limit}                                         reason], ...], "next": from_revision of the
                                                           next call, "revision": current}
``stats``   (none)                                         {"keys", "used_bytes", "maxmemory_bytes",
                                                           "eviction_policy", "revision",
                                                           "compacted_revision", "watch_events",
                                                           "expired_keys_total", "evicted_keys_total",
                                                           "next_expiry_ms"}
==========  =============================================  ===========================================

Semantics, and the choices behind them:

- **Revisions.** A write's revision is the index of the log entry that carried it; writes in one
  entry share it (they are one atomic step, like the sub-revisions of an etcd transaction). Revision
  0 means "absent": ``if_revision=0`` requires the key not to exist. ``touch`` and ``expire`` change
  neither the value nor the revision (and make no watch event). The service's current revision is
  that of the latest event (put, delete, expiry, eviction).
- **Conditions.** ``if_absent``, ``if_revision``, ``if_value`` must all hold, else the command raises
  ``ConditionFailed`` with details ``key`` and ``revision`` (the key's current revision, 0 if absent)
  and changes nothing (not even LRU order).
- **Transactions.** ``txn`` applies its steps in order in one entry (one revision, atomic on every
  replica; the RESP port's MULTI/EXEC). Every step is validated before anything applies (a
  malformed step refuses the whole ``txn``). ``if_revisions`` are checked first, all-or-nothing:
  a key whose current revision differs (0: absent; an expired key is absent) raises
  ``ConditionFailed`` (details ``key``, ``revision``) and no step applies (WATCH); so does a key of
  ``if_expiries`` whose expiry moved (``expire`` changes no revision, but Redis's WATCH fails on
  it; the expiry to compare comes from ``mget`` with ``expires_at``). Then each step
  runs as it would alone, seeing the steps before it: a step that fails (its own condition,
  ``incr`` of a non-integer, ``OutOfMemory``) changes nothing, its error is its result as
  ``[False, {"code", "message", "details"}]``, and the other steps still apply (as Redis's EXEC).
  A query step answers ``[True, result]`` from the state the steps before it left.
- **Counters.** ``incr``/``decr`` store the canonical decimal ASCII of an int64 (``b"-42"``), so
  ``get`` returns bytes and a ``set`` of ``b"10"`` can be incremented; a missing key counts as 0;
  the key's TTL is kept. A value that is not canonical decimal (no sign ``+``, no leading zeros or
  spaces) or a result outside int64 is ``InvalidArgument``.
- **TTL.** ``ttl_ms`` is an int in [1, ``ttl_ms_max``] (no floats, so NaN or rounding cannot
  differ); ``expires_at_ms = timestamp_ms + ttl_ms`` of the writing entry. A key is expired once
  log time reaches ``expires_at_ms``. Expired keys are purged by :meth:`KvService.on_time` (and
  at the start of :meth:`KvService.apply`) from an expiry index sorted by ``(expires_at_ms, key)``,
  in that order, each making a ``"delete"`` event with reason ``"expired"`` at the purging entry's
  revision. Queries also hide any key with ``expires_at_ms <= timestamp_ms``. ``set`` and ``mset``
  replace a key's TTL (no ``ttl_ms``: no expiry).
- **Memory.** ``used_bytes`` = sum over keys of ``len(key) + len(value) + ENTRY_OVERHEAD_BYTES``:
  a deterministic estimate (never ``sys.getsizeof``, which may differ between replicas' Pythons);
  the overhead approximates CPython 3.11's measured cost of one key here. A write that would take
  ``used_bytes`` over ``maxmemory_bytes``: under ``noeviction`` raises ``OutOfMemory`` (details
  ``used_bytes``, ``maxmemory_bytes``, ``needed_bytes``) and changes nothing; under ``lru`` is
  applied, then least recently used keys are evicted (``"delete"`` events with reason
  ``"evicted"``, after the command's puts, at its revision) until it fits. The keys just written are
  most recent, so they are never evicted by their own write; a write whose own keys cannot fit
  even alone is ``OutOfMemory`` under both policies. Deletes and shrinking writes are always allowed.
- **LRU order.** Recency is the order of the last ``set``/``mset``/``incr``/``decr``/``touch``/
  ``expire`` applied to each key. Queries cannot record recency (they are read-only and served by a
  single replica), so a client that wants reads to count sends ``touch`` through the log.
- **Watch.** A window of the latest ``watch_history_max`` events (and ``watch_history_bytes_max``
  bytes) is kept; see :mod:`trimaran.services.kv_watch` for event shapes and paging. A
  ``from_revision`` older than the window raises ``RevisionCompacted`` naming ``oldest_revision``.
- **Pages.** ``scan`` and ``watch`` limits are clamped to ``scan_limit_max`` / ``watch_limit_max``;
  a ``scan`` page also stops after ``query_result_bytes_max`` bytes of keys and values (at least one
  item), and an ``mget`` whose answer would exceed it raises ``TooLarge``.
- **Configuration** (constructor arguments) is part of the state machine's definition: every
  replica of a cluster must be built with the same values; snapshots do not carry it.
- **Snapshots** carry the keys in LRU order (oldest first) with value, revision and expiry as
  column lists cut into chunks of ``SNAPSHOT_CHUNK_ITEMS``, the watch window, the current revision
  and the counters; the key order and expiry index are rebuilt from them, so snapshot -> restore ->
  snapshot is byte-identical.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from itertools import chain
from typing import Any, Callable

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from trimaran import limits
from trimaran.errors import ConditionFailed, ConfigError, InvalidArgument, OutOfMemory, TooLarge, TrimaranError
from trimaran.protocols.codec import show_bytes
from trimaran.protocols.service import ApplyContext
from trimaran.services import kv_args as args
from trimaran.services.kv_watch import WatchWindow, chunked, event_bytes

#: Bytes charged per key beyond its key and value bytes (see "Memory" above).
ENTRY_OVERHEAD_BYTES = 256
EVICTION_POLICIES = ("lru", "noeviction")
SNAPSHOT_FORMAT = 1
#: Ceiling of a constructor's ``watch_history_bytes_max``: a watch page (at most the window) must
#: fit in one frame with room to spare.
watch_history_bytes_max_ceiling = limits.frame_bytes_max // 2
#: Ceiling of a constructor's ``query_result_bytes_max`` (a query answer must fit a frame).
query_result_bytes_max_ceiling = limits.frame_bytes_max // 2

#: What the map holds per key: (value, revision, expires_at_ms), 0 = no expiry. A tuple is the
#: smallest per-key record CPython offers (no per-key dict); writes replace it whole.
Entry = tuple[bytes, int, int]

#: Planted bugs for the simulator's mutation tests (``trimaran simulate --mutant NAME``): each breaks
#: "services agree because the log decides" in a way a real cache might. Never on in a node.
KV_MUTANTS = {
    "ttl_local_clock": "kv expiry is decided by each replica's own clock instead of the log's timestamps",
    "eviction_per_replica": "kv reads count as uses in the LRU order of the replica that serves them",
}

#: Canonical decimal int64 text: no "+", no leading zeros, no "-0", at most 19 digits.
INT64_TEXT = re.compile(rb"0|-?[1-9][0-9]{0,18}")

assert watch_history_bytes_max_ceiling >= event_bytes(b"k" * limits.key_bytes_max, b"v" * limits.value_bytes_max)


def entry_bytes(key: bytes, value: bytes) -> int:
    """What one key costs against ``maxmemory_bytes``."""
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


def _parse_int64(key: bytes, value: bytes) -> int:
    if not INT64_TEXT.fullmatch(value):
        raise InvalidArgument(f"the value of {show_bytes(key)} is not a decimal int64", key=key)
    number = int(value)
    if not args.INT64_MIN <= number <= args.INT64_MAX:
        raise InvalidArgument(f"the value of {show_bytes(key)} is outside int64", key=key)
    return number


class KvService:
    """The ``kv`` service; see the module docstring for commands, queries and semantics."""

    name = "kv"

    def __init__(
        self,
        maxmemory_bytes: int | None = None,
        eviction_policy: str = "lru",
        watch_history_max: int = 10_000,
        watch_history_bytes_max: int = 8 * limits.MIB,
        scan_limit_max: int = 1_000,
        watch_limit_max: int = 1_000,
        query_result_bytes_max: int = 8 * limits.MIB,
        mutants: frozenset[str] = frozenset(),
        local_clock_ms: Callable[[], int] | None = None,
    ) -> None:
        """``mutants`` (names from :data:`KV_MUTANTS`) and ``local_clock_ms`` (the replica's own
        clock, which only the ``ttl_local_clock`` mutant reads) exist for the simulator alone."""
        unknown = sorted(mutants - KV_MUTANTS.keys())
        if unknown or (("ttl_local_clock" in mutants) != (local_clock_ms is not None)):
            raise ConfigError(f"kv mutants {unknown or sorted(mutants)}: unknown, or ttl_local_clock without its clock")
        _check_config(
            maxmemory_bytes, eviction_policy, watch_history_max, watch_history_bytes_max,
            scan_limit_max, watch_limit_max, query_result_bytes_max,
        )  # fmt: skip
        self.maxmemory_bytes = maxmemory_bytes
        self.eviction_policy = eviction_policy
        self.scan_limit_max = scan_limit_max
        self.watch_limit_max = watch_limit_max
        self.query_result_bytes_max = query_result_bytes_max
        # Insertion order of the OrderedDict is the LRU order (oldest first): move_to_end and
        # popitem(last=False) are O(1), and the order depends on the log alone, never on hashing.
        self._data: OrderedDict[bytes, Entry] = OrderedDict()
        self._keys: SortedList = SortedList()  # key order, for scan
        self._expiry: SortedList = SortedList()  # (expires_at_ms, key) of keys with a TTL
        # The first deadline of _expiry, cached: on_time runs for every entry and SortedList
        # indexing is Python code, so the common "nothing is due" answer costs one comparison.
        self._next_expiry_ms: int | None = None
        self._used_bytes = 0
        self._revision = 0
        self._expired_total = 0
        self._evicted_total = 0
        self._watch = WatchWindow(watch_history_max, watch_history_bytes_max)
        self._local_clock_ms = local_clock_ms
        self._reads_touch = "eviction_per_replica" in mutants
        self._commands: dict[type, Callable[[Any, ApplyContext], Any]] = {
            args.SetCmd: self._set,
            args.DeleteCmd: self._delete,
            args.IncrCmd: self._incr,
            args.MsetCmd: self._mset,
            args.TouchCmd: self._touch,
            args.ExpireCmd: self._expire,
            args.AppendCmd: self._append,
            args.TxnCmd: self._txn,
        }
        self._queries: dict[type, Callable[[Any, int], Any]] = {
            args.GetQuery: self._get,
            args.MgetQuery: self._mget,
            args.ScanQuery: self._scan,
            args.WatchQuery: self._watch_since,
            args.StatsQuery: self._stats,
        }

    # ------------------------------------------------------------------ Service protocol

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        """Apply one command (see the module table); raises ``InvalidArgument``, ``TooLarge``,
        ``ConditionFailed`` or ``OutOfMemory`` having changed nothing."""
        assert ctx.index >= 1 and ctx.index >= self._revision, "log indexes only grow"
        cmd = args.parse_command(command)
        ctx = self._mutated_clock(ctx)
        # The Replica calls on_time first; purging here too keeps apply correct on its own.
        self._expire_due(ctx)
        return self._commands[type(cmd)](cmd, ctx)

    def on_time(self, ctx: ApplyContext) -> None:
        """Purge every key whose ``expires_at_ms`` is at or before this entry's timestamp."""
        self._expire_due(self._mutated_clock(ctx))

    def next_deadline_ms(self) -> int | None:
        return self._next_expiry_ms

    def query(self, query: Any, ctx: ApplyContext) -> Any:
        """Answer a read-only query at log time ``ctx.timestamp_ms``; never changes state."""
        q = args.parse_query(query)
        ctx = self._mutated_clock(ctx)
        if self._reads_touch and type(q) is args.GetQuery and q.key in self._data:
            self._data.move_to_end(q.key)  # the eviction_per_replica mutant
        return self._queries[type(q)](q, ctx.timestamp_ms)

    def _mutated_clock(self, ctx: ApplyContext) -> ApplyContext:
        """``ctx`` itself, except under the ``ttl_local_clock`` mutant: then the replica's own clock."""
        if self._local_clock_ms is None:
            return ctx
        return ApplyContext(ctx.index, self._local_clock_ms())

    # ------------------------------------------------------------------ state changes

    def _expire_due(self, ctx: ApplyContext) -> None:
        if self._next_expiry_ms is None or self._next_expiry_ms > ctx.timestamp_ms:
            return
        expiry, data = self._expiry, self._data
        while expiry and expiry[0][0] <= ctx.timestamp_ms:
            _, key = expiry.pop(0)
            self._forget(key, data.pop(key), ctx.index, "expired", in_expiry=False)
            self._expired_total += 1
        self._next_expiry_ms = expiry[0][0] if expiry else None

    def _expiry_add(self, expires_at_ms: int, key: bytes) -> None:
        self._expiry.add((expires_at_ms, key))
        if self._next_expiry_ms is None or expires_at_ms < self._next_expiry_ms:
            self._next_expiry_ms = expires_at_ms

    def _expiry_remove(self, expires_at_ms: int, key: bytes) -> None:
        self._expiry.remove((expires_at_ms, key))
        if expires_at_ms == self._next_expiry_ms:
            self._next_expiry_ms = self._expiry[0][0] if self._expiry else None

    def _put(self, key: bytes, value: bytes, revision: int, expires_at_ms: int, cur: Entry | None) -> None:
        """Store ``key`` (``cur``: its entry now, or None), make it the most recently used."""
        if cur is None:
            self._keys.add(key)
            self._used_bytes += len(key) + len(value) + ENTRY_OVERHEAD_BYTES
        else:
            self._used_bytes += len(value) - len(cur[0])
            if cur[2] and cur[2] != expires_at_ms:
                self._expiry_remove(cur[2], key)
        if expires_at_ms and (cur is None or cur[2] != expires_at_ms):
            self._expiry_add(expires_at_ms, key)
        self._data[key] = (value, revision, expires_at_ms)
        if cur is not None:
            self._data.move_to_end(key)
        self._revision = revision
        self._watch.record(revision, "put", key, value, None)

    def _forget(self, key: bytes, entry: Entry, revision: int, reason: str, in_expiry: bool = True) -> None:
        """Drop the indexes and accounting of ``key``, already removed from ``_data``."""
        self._keys.remove(key)
        if entry[2] and in_expiry:
            self._expiry_remove(entry[2], key)
        self._used_bytes -= entry_bytes(key, entry[0])
        self._revision = revision
        self._watch.record(revision, "delete", key, None, reason)

    def _reserve(self, growth_bytes: int, written_bytes: int) -> None:
        """Refuse (``OutOfMemory``, before any change) a write growing ``used_bytes`` by
        ``growth_bytes`` whose keys take ``written_bytes`` once written, if it cannot fit."""
        limit = self.maxmemory_bytes
        if limit is None or growth_bytes <= 0 or self._used_bytes + growth_bytes <= limit:
            return
        if self.eviction_policy == "noeviction" or written_bytes > limit:
            raise OutOfMemory(
                f"the write needs {growth_bytes} more bytes; {self._used_bytes} of maxmemory_bytes="
                f"{limit} are used (policy {self.eviction_policy})",
                used_bytes=self._used_bytes,
                maxmemory_bytes=limit,
                needed_bytes=growth_bytes,
            )

    def _evict(self, revision: int) -> None:
        """Under ``lru``, drop least recently used keys until ``used_bytes`` fits again."""
        limit = self.maxmemory_bytes
        if limit is None or self.eviction_policy != "lru":
            return
        while self._used_bytes > limit:
            key, entry = self._data.popitem(last=False)
            self._forget(key, entry, revision, "evicted")
            self._evicted_total += 1

    @staticmethod
    def _check(key: bytes, cur: Entry | None, cond: args.Conditions) -> None:
        if cond is args.NO_CONDITIONS:
            return
        revision = cur[1] if cur is not None else 0
        holds = (
            (not cond.if_absent or cur is None)
            and (cond.if_revision is None or cond.if_revision == revision)
            and (cond.if_value is None or (cur is not None and cur[0] == cond.if_value))
            and (not cond.if_exists or cur is not None)
        )
        if not holds:
            raise ConditionFailed(
                f"condition failed on {show_bytes(key)} (revision {revision}, 0 = absent)", key=key, revision=revision
            )

    # ------------------------------------------------------------------ commands

    def _set(self, c: args.SetCmd, ctx: ApplyContext) -> int:
        cur = self._data.get(c.key)
        self._check(c.key, cur, c.cond)
        size = entry_bytes(c.key, c.value)
        self._reserve(size - (entry_bytes(c.key, cur[0]) if cur is not None else 0), size)
        if c.keep_ttl:
            expires_at_ms = cur[2] if cur is not None else 0
        else:
            expires_at_ms = ctx.timestamp_ms + c.ttl_ms if c.ttl_ms is not None else 0
        self._put(c.key, c.value, ctx.index, expires_at_ms, cur)
        self._evict(ctx.index)
        return ctx.index

    def _append(self, c: args.AppendCmd, ctx: ApplyContext) -> int:
        cur = self._data.get(c.key)
        value = (cur[0] if cur is not None else b"") + c.suffix
        if len(value) > limits.value_bytes_max:
            raise TooLarge(f"appending makes a value of {len(value)} bytes, over value_bytes_max={limits.value_bytes_max}", key=c.key)
        size = entry_bytes(c.key, value)
        self._reserve(size - (entry_bytes(c.key, cur[0]) if cur is not None else 0), size)
        self._put(c.key, value, ctx.index, cur[2] if cur is not None else 0, cur)
        self._evict(ctx.index)
        return len(value)

    def _delete(self, c: args.DeleteCmd, ctx: ApplyContext) -> bool:
        cur = self._data.get(c.key)
        self._check(c.key, cur, c.cond)
        if cur is None:
            return False
        del self._data[c.key]
        self._forget(c.key, cur, ctx.index, "deleted")
        return True

    def _incr(self, c: args.IncrCmd, ctx: ApplyContext) -> list[int]:
        cur = self._data.get(c.key)
        result = (0 if cur is None else _parse_int64(c.key, cur[0])) + c.delta
        if not args.INT64_MIN <= result <= args.INT64_MAX:
            raise InvalidArgument(f"adding {c.delta} to {show_bytes(c.key)} overflows int64", key=c.key)
        value = b"%d" % result
        size = entry_bytes(c.key, value)
        self._reserve(size - (entry_bytes(c.key, cur[0]) if cur is not None else 0), size)
        self._put(c.key, value, ctx.index, cur[2] if cur is not None else 0, cur)
        self._evict(ctx.index)
        return [result, ctx.index]

    def _mset(self, c: args.MsetCmd, ctx: ApplyContext) -> int:
        data = self._data
        if c.if_absent:
            for key, _, _ in c.items:
                if key in data:
                    revision = data[key][1]
                    raise ConditionFailed(f"{show_bytes(key)} exists (revision {revision})", key=key, revision=revision)
        written_bytes = growth_bytes = 0
        for key, value, _ in c.items:
            size = entry_bytes(key, value)
            written_bytes += size
            cur = data.get(key)
            growth_bytes += size - (entry_bytes(key, cur[0]) if cur is not None else 0)
        self._reserve(growth_bytes, written_bytes)
        for key, value, ttl_ms in c.items:
            expires_at_ms = ctx.timestamp_ms + ttl_ms if ttl_ms is not None else 0
            self._put(key, value, ctx.index, expires_at_ms, data.get(key))
        self._evict(ctx.index)
        return ctx.index

    def _touch(self, c: args.TouchCmd, ctx: ApplyContext) -> bool:
        if c.key not in self._data:
            return False
        self._data.move_to_end(c.key)
        return True

    def _expire(self, c: args.ExpireCmd, ctx: ApplyContext) -> bool:
        cur = self._data.get(c.key)
        if cur is None:
            return False
        expires_at_ms = ctx.timestamp_ms + c.ttl_ms if c.ttl_ms is not None else 0
        if cur[2] != expires_at_ms:
            if cur[2]:
                self._expiry_remove(cur[2], c.key)
            if expires_at_ms:
                self._expiry_add(expires_at_ms, c.key)
            self._data[c.key] = (cur[0], cur[1], expires_at_ms)
        self._data.move_to_end(c.key)
        return True

    def _txn(self, c: args.TxnCmd, ctx: ApplyContext) -> list[list[Any]]:
        for key, revision in c.if_revisions:
            view = self._view(key, ctx.timestamp_ms)
            current = view[1] if view is not None else 0
            if current != revision:
                raise ConditionFailed(
                    f"{show_bytes(key)} is at revision {current}, not {revision} (0 = absent)", key=key, revision=current
                )
        for key, expires_at_ms in c.if_expiries:
            entry = self._data.get(key) if self._view(key, ctx.timestamp_ms) is not None else None
            current = entry[2] if entry is not None else 0
            if current != expires_at_ms:
                revision = entry[1] if entry is not None else 0
                raise ConditionFailed(
                    f"{show_bytes(key)} expires at {current}, not {expires_at_ms} (0 = never or absent)", key=key, revision=revision
                )
        results: list[list[Any]] = []
        for step in c.steps:
            query = self._queries.get(type(step))
            try:
                result = query(step, ctx.timestamp_ms) if query is not None else self._commands[type(step)](step, ctx)
            except TrimaranError as exc:  # the step changed nothing (every command validates first)
                results.append([False, exc.to_wire()])
            else:
                results.append([True, result])
        return results

    # ------------------------------------------------------------------ queries

    def _view(self, key: bytes, now_ms: int) -> list[Any] | None:
        """``[value, revision, ttl_remaining_ms | None]`` of a live key, else None."""
        entry = self._data.get(key)
        if entry is None:
            return None
        value, revision, expires_at_ms = entry
        if not expires_at_ms:
            return [value, revision, None]
        return [value, revision, expires_at_ms - now_ms] if expires_at_ms > now_ms else None

    def _get(self, q: args.GetQuery, now_ms: int) -> list[Any] | None:
        return self._view(q.key, now_ms)

    def _mget(self, q: args.MgetQuery, now_ms: int) -> list[list[Any] | None]:
        found = [self._view(key, now_ms) for key in q.keys]
        if q.expires_at:
            for key, view in zip(q.keys, found):
                if view is not None:
                    view.append(self._data[key][2])
        size_bytes = sum(len(v[0]) for v in found if v is not None)
        if size_bytes > self.query_result_bytes_max:
            raise TooLarge(
                f"mget answer of {size_bytes} value bytes is over query_result_bytes_max="
                f"{self.query_result_bytes_max}; ask for fewer keys"
            )
        return found

    def _scan(self, q: args.ScanQuery, now_ms: int) -> dict[str, Any]:
        limit = min(q.limit or self.scan_limit_max, self.scan_limit_max)
        if q.start_after is not None and q.start_after >= q.prefix:
            keys = self._keys.irange(minimum=q.start_after, inclusive=(False, True))
        else:
            keys = self._keys.irange(minimum=q.prefix)
        items: list[list[Any]] = []
        size_bytes = 0
        for key in keys:
            if not key.startswith(q.prefix):
                break
            view = self._view(key, now_ms)
            if view is None:
                continue
            if len(items) >= limit or size_bytes >= self.query_result_bytes_max:
                return {"items": items, "next": items[-1][0], "revision": self._revision}
            items.append([key, *view])
            size_bytes += len(key) + len(view[0])
        return {"items": items, "next": None, "revision": self._revision}

    def _watch_since(self, q: args.WatchQuery, now_ms: int) -> dict[str, Any]:
        limit = min(q.limit or self.watch_limit_max, self.watch_limit_max)
        return self._watch.since(
            q.match, q.is_prefix, q.from_revision, limit, self.query_result_bytes_max, self._revision
        )

    def _stats(self, q: args.StatsQuery, now_ms: int) -> dict[str, Any]:
        return {
            "keys": len(self._data),
            "used_bytes": self._used_bytes,
            "maxmemory_bytes": self.maxmemory_bytes,
            "eviction_policy": self.eviction_policy,
            "revision": self._revision,
            "compacted_revision": self._watch.compacted_revision,
            "watch_events": len(self._watch),
            "expired_keys_total": self._expired_total,
            "evicted_keys_total": self._evicted_total,
            "next_expiry_ms": self.next_deadline_ms(),
        }

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> dict[str, Any]:
        """Plain data (linear in the number of keys); see "Snapshots" in the module docstring."""
        # One ordered pass for the keys, then plain lookups: CPython's OrderedDict iterator does a
        # hash lookup per step anyway, so a second ordered pass (values()) would cost more.
        keys = list(self._data)
        entries = list(map(self._data.__getitem__, keys))
        return {
            "format": SNAPSHOT_FORMAT,
            "revision": self._revision,
            "expired_keys_total": self._expired_total,
            "evicted_keys_total": self._evicted_total,
            "keys": chunked(keys),
            "values": chunked([e[0] for e in entries]),
            "revisions": chunked([e[1] for e in entries]),
            "expires_at_ms": chunked([e[2] for e in entries]),
            "watch": self._watch.snapshot(),
        }

    def restore(self, data: Any) -> None:
        """Replace the whole state by a snapshot's (taken by a service with the same configuration)."""
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a kv snapshot of format {SNAPSHOT_FORMAT}")
        keys = list(chain.from_iterable(data["keys"]))
        values = list(chain.from_iterable(data["values"]))
        revisions = list(chain.from_iterable(data["revisions"]))
        expires = list(chain.from_iterable(data["expires_at_ms"]))
        assert len(keys) == len(values) == len(revisions) == len(expires), "snapshot columns of equal length"
        self._data = OrderedDict(zip(keys, zip(values, revisions, expires)))
        assert len(self._data) == len(keys), "snapshot keys are distinct"
        self._keys = SortedList(keys)
        self._expiry = SortedList((e, k) for k, e in zip(keys, expires) if e)
        self._next_expiry_ms = self._expiry[0][0] if self._expiry else None
        self._used_bytes = sum(map(len, keys)) + sum(map(len, values)) + ENTRY_OVERHEAD_BYTES * len(keys)
        self._revision = data["revision"]
        self._expired_total = data["expired_keys_total"]
        self._evicted_total = data["evicted_keys_total"]
        self._watch.restore(data["watch"])


def _check_config(
    maxmemory_bytes: int | None,
    eviction_policy: str,
    watch_history_max: int,
    watch_history_bytes_max: int,
    scan_limit_max: int,
    watch_limit_max: int,
    query_result_bytes_max: int,
) -> None:
    if maxmemory_bytes is not None and (type(maxmemory_bytes) is not int or maxmemory_bytes < 1):
        raise ConfigError(f"maxmemory_bytes must be None (unbounded) or a positive int, not {maxmemory_bytes!r}")
    if eviction_policy not in EVICTION_POLICIES:
        raise ConfigError(f"eviction_policy must be one of {', '.join(EVICTION_POLICIES)}, not {eviction_policy!r}")
    if not 1 <= watch_history_max <= limits.msgpack_array_len_max:
        raise ConfigError(f"watch_history_max must be in [1, {limits.msgpack_array_len_max}]")
    event_bytes_max = event_bytes(b"k" * limits.key_bytes_max, b"v" * limits.value_bytes_max)
    if not event_bytes_max <= watch_history_bytes_max <= watch_history_bytes_max_ceiling:
        raise ConfigError(
            f"watch_history_bytes_max must hold one largest event ({event_bytes_max} bytes) and be at most "
            f"{watch_history_bytes_max_ceiling}"
        )
    for name, n in (("scan_limit_max", scan_limit_max), ("watch_limit_max", watch_limit_max)):
        if not 1 <= n <= limits.msgpack_array_len_max:
            raise ConfigError(f"{name} must be in [1, {limits.msgpack_array_len_max}]")
    if not limits.value_bytes_max <= query_result_bytes_max <= query_result_bytes_max_ceiling:
        raise ConfigError(
            f"query_result_bytes_max must be in [value_bytes_max={limits.value_bytes_max}, "
            f"{query_result_bytes_max_ceiling}]"
        )
