"""The KV cache as the linearizability checker sees it: one key's sequential specification, with
the log's clock as an oracle.

TTLs make the cache's answers depend on *log time*: the leader timestamp carried by the entry
that applies a write (``ApplyContext.timestamp_ms``; :mod:`trimaran.services.kv`). A client never
sees it, but the simulator does, and the cache's answers pin it down far enough to check exactly:

- a write that succeeded returns its revision ``r``, the index of its log entry, and
  :class:`LogClock` knows the log time ``T(r)`` every replica applied entry ``r`` at (and checks
  that they agree); so ``set(ttl_ms)`` has ``expires_at_ms = T(r) + ttl_ms`` exactly;
- a ``get`` of a key with a TTL returns its remaining time, so it happened at log time
  ``expires_at_ms - ttl_remaining_ms`` exactly;
- everything else (a ``get`` that found nothing, a ``delete``, a refused condition) happened at an
  unknown log position after everything linearized before it.

So the model's state per key is ``(value, revision, expires_at_ms, time_floor_ms, index_floor)``:
the stored entry (``value`` None: absent) and lower bounds of the log time and log index reached by
the operations linearized so far. Points in a linearization are in log order, so both floors only
rise: a write at ``r`` needs ``r >= index_floor`` and ``T(r) >= time_floor_ms``; a ``get`` that saw
the key expired moves ``time_floor_ms`` to its expiry. An operation at an unknown position sees
the key live (if the floors allow it) or expired (raising the floor) -- the model returns both
choices and the checker keeps those that match what the client saw.

Eviction (``maxmemory_bytes`` with ``lru``) removes keys as a side effect of writes to *other*
keys, which a per-key history cannot see; :class:`LogClock` also records, from every replica,
which keys each entry evicted (replicas must agree), and the model lets a value vanish at the
first recorded eviction of its key at or after its revision (a relaxation that never hides a
wrong value: the key reads as absent only where the log says it was evicted).

``mset`` is recorded as one ``set`` per key with the same interval and outcome: per-key
projections of a linearizable history are linearizable, so this is sound (it does not check
atomicity across keys; the replica-agreement checker and the unit tests do).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence
from typing import Any

from trimaran.protocols.service import ApplyContext
from trimaran.services import kv
from trimaran.services.kv_args import INT64_MAX, INT64_MIN
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.history import Operation, OpStatus

#: A key's model state: (value or None, revision, expires_at_ms or 0, time_floor_ms, index_floor).
State = tuple[bytes | None, int, int, int, int]

#: A condition of a conditional write, as the workload records it: (if_absent, if_revision, if_value).
Cond = tuple[bool, int | None, bytes | None]
NO_COND: Cond = (False, None, None)

#: Outputs of refusals, as the history records them (a refusal is a read of the state, so an OK op).
CONDITION_FAILED = "condition_failed"
INVALID_ARGUMENT = ("invalid_argument",)


class LogClock:
    """What every replica's KV service saw at each log index: its log time, and the keys it evicted.

    Filled by :class:`RecordingKv` on every replica, in every lifetime; the first replica to apply
    an index sets the record, every later one must match it (a mismatch is a divergence of the
    replicas, reported at once).
    """

    def __init__(self) -> None:
        self.time_ms: dict[int, int] = {}
        #: Entry index -> keys it evicted (in eviction order), for indexes that evicted any.
        self.evicted_at: dict[int, tuple[bytes, ...]] = {}
        #: Key -> sorted indexes of the entries that evicted it.
        self.evictions: dict[bytes, list[int]] = {}

    def record_time(self, node_id: int, index: int, timestamp_ms: int) -> None:
        seen = self.time_ms.setdefault(index, timestamp_ms)
        if seen != timestamp_ms:
            raise CheckFailure(
                "replicas_diverge", f"node {node_id} applied entry {index} at log time {timestamp_ms}, another node at {seen}"
            )

    def record_evictions(self, node_id: int, index: int, keys: tuple[bytes, ...]) -> None:
        seen = self.evicted_at.setdefault(index, keys)
        if seen != keys:
            raise CheckFailure(
                "replicas_diverge", f"node {node_id} evicted {list(keys)} at entry {index}, another node {list(seen)}"
            )
        if seen is keys:
            for key in keys:
                bisect.insort(self.evictions.setdefault(key, []), index)

    def eviction_from(self, key: bytes, revision: int) -> int | None:
        """The first entry at or after ``revision`` that evicted ``key``, if any."""
        indexes = self.evictions.get(key)
        if not indexes:
            return None
        at = bisect.bisect_left(indexes, revision)
        return indexes[at] if at < len(indexes) else None


class RecordingKv(kv.KvService):
    """The KV service of one simulated replica, reporting to the :class:`LogClock` what it applied."""

    def __init__(self, node_id: int, clock: LogClock, **settings: Any) -> None:
        super().__init__(**settings)
        self._node_id = node_id
        self._clock = clock
        self._evicted_total_seen = 0

    def on_time(self, ctx: ApplyContext) -> None:
        self._clock.record_time(self._node_id, ctx.index, ctx.timestamp_ms)
        super().on_time(ctx)
        self._note_evictions(ctx)

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        try:
            return super().apply(command, ctx)
        finally:
            self._note_evictions(ctx)

    def restore(self, data: Any) -> None:
        super().restore(data)
        self._evicted_total_seen = self.query(["stats"], ApplyContext(0, 0))["evicted_keys_total"]

    def _note_evictions(self, ctx: ApplyContext) -> None:
        if self.maxmemory_bytes is None:
            return
        total = self.query(["stats"], ctx)["evicted_keys_total"]
        if total == self._evicted_total_seen:
            return
        self._evicted_total_seen = total
        # Events after index - 1 are this entry's; its evictions are among them.
        page = self.query(["watch", b"", ctx.index - 1, {"prefix": True}], ctx)
        keys = tuple(e[2] for e in page["events"] if e[0] == ctx.index and e[4] == "evicted")
        self._clock.record_evictions(self._node_id, ctx.index, keys)


def normalize(value: Any) -> Hashable:
    """A service answer as the history records it: lists become tuples (hashable, comparable)."""
    if isinstance(value, list):
        return tuple(normalize(v) for v in value)
    return value


def error_output(code: str, details: dict[str, Any]) -> Hashable:
    """A deterministic refusal as the history records it, or None if it is not one (a retryable
    error, which says nothing about the state)."""
    if code == CONDITION_FAILED:
        return (CONDITION_FAILED, details.get("revision"))
    if code == INVALID_ARGUMENT[0]:
        return INVALID_ARGUMENT
    return None


class KvKeyModel:
    """One key of :class:`~trimaran.services.kv.KvService` (a :class:`NondeterministicModel`).

    Operations as the workload records them (``args`` / observed output):

    ==========  ==========================  =====================================================
    ``get``     ()                          None, or (value, revision, ttl_remaining_ms | None)
    ``set``     (value, ttl_ms|None, cond)  revision, or (CONDITION_FAILED, current revision)
    ``delete``  (cond,)                     bool, or (CONDITION_FAILED, current revision)
    ``incr``    (delta,)                    (new value, revision), or INVALID_ARGUMENT
    ==========  ==========================  =====================================================

    ``mset`` items are ``set`` operations with no condition.
    """

    def __init__(self, clock: LogClock) -> None:
        self.clock = clock

    def init(self) -> Hashable:
        return (None, 0, 0, 0, 0)

    def step_choices(self, state: Any, op: Operation) -> Sequence[tuple[Hashable, Any]]:
        kind, observed = op.kind, op.result
        if op.status is not OpStatus.OK:
            # Unresolved: only reads stay so (the simulator resolves every write it can).
            assert kind == "get", f"an unresolved write reached the model: {op.describe()}"
            return ((state, None),)
        key = op.key
        assert isinstance(key, bytes)
        if kind == "get":
            return self._get(state, key, observed)
        if kind in ("set", "mset"):
            value, ttl_ms, cond = op.args
            return self._set(state, key, value, ttl_ms, cond, observed)
        if kind == "delete":
            return self._delete(state, key, op.args[0], observed)
        if kind == "incr":
            return self._incr(state, key, op.args[0], observed)
        raise ValueError(f"KvKeyModel has no operation {kind!r}")

    def never_changes_state(self, kind: str, args: tuple[Any, ...], output: Any) -> bool:
        """A ``get`` that saw a live key without a TTL learns no time: it changes no state."""
        return kind == "get" and isinstance(output, tuple) and output[2] is None

    # ------------------------------------------------------------------ views of the key

    def _views(self, state: State, key: bytes) -> list[State]:
        """What an operation at an unknown later log position may find: the key live, expired or
        evicted, each as a state whose floors say what that finding implies."""
        value, revision, expires_at_ms, time_floor_ms, index_floor = state
        if value is None:
            return [state]
        evicted = self.clock.eviction_from(key, revision)
        out: list[State] = []
        if (not expires_at_ms or time_floor_ms < expires_at_ms) and (evicted is None or index_floor <= evicted):
            out.append(state)
        if expires_at_ms:
            out.append((None, 0, 0, max(time_floor_ms, expires_at_ms), index_floor))
        if evicted is not None:
            time_ms = self.clock.time_ms.get(evicted, time_floor_ms)
            out.append((None, 0, 0, max(time_floor_ms, time_ms), max(index_floor, evicted)))
        return out

    def _view_at(self, state: State, key: bytes, index: int) -> list[State] | None:
        """What a write applied at entry ``index`` found (None: the index is not a legal next
        point: before the floors, or not an entry any replica applied)."""
        time_ms = self.clock.time_ms.get(index)
        value, revision, expires_at_ms, time_floor_ms, index_floor = state
        if time_ms is None or index < index_floor or time_ms < time_floor_ms:
            return None
        if value is None or (expires_at_ms and expires_at_ms <= time_ms):
            return [(None, 0, 0, time_ms, index)]
        evicted = self.clock.eviction_from(key, revision)
        if evicted is not None and evicted < index:
            return [(None, 0, 0, time_ms, index)]
        live: State = (value, revision, expires_at_ms, time_ms, index)
        # An eviction in the same entry may come before or after this write's command.
        return [live] if evicted != index else [live, (None, 0, 0, time_ms, index)]

    @staticmethod
    def _holds(view: State, cond: Cond) -> bool:
        if_absent, if_revision, if_value = cond
        return (
            (not if_absent or view[0] is None)
            and (if_revision is None or if_revision == view[1])
            and (if_value is None or view[0] == if_value)
        )

    # ------------------------------------------------------------------ operations

    def _get(self, state: State, key: bytes, observed: Any) -> list[tuple[Hashable, Any]]:
        out: list[tuple[Hashable, Any]] = []
        for view in self._views(state, key):
            value, revision, expires_at_ms, time_floor_ms, index_floor = view
            if value is None:
                if observed is None:
                    out.append((view, None))
                continue
            if not isinstance(observed, tuple) or observed[:2] != (value, revision):
                continue
            ttl_ms = observed[2]
            if ttl_ms is None:
                if not expires_at_ms:
                    out.append((view, observed))
                continue
            read_at_ms = expires_at_ms - ttl_ms
            if expires_at_ms and ttl_ms > 0 and read_at_ms >= time_floor_ms:
                out.append(((value, revision, expires_at_ms, read_at_ms, index_floor), observed))
        return out

    def _set(
        self, state: State, key: bytes, value: bytes, ttl_ms: int | None, cond: Cond, observed: Any
    ) -> list[tuple[Hashable, Any]]:
        if isinstance(observed, int) and not isinstance(observed, bool):
            views = self._view_at(state, key, observed)
            if views is None:
                return []
            time_ms = self.clock.time_ms[observed]
            expires_at_ms = time_ms + ttl_ms if ttl_ms is not None else 0
            if any(self._holds(view, cond) for view in views):
                return [((value, observed, expires_at_ms, time_ms, observed), observed)]
            return []
        return self._refused(state, key, cond, observed)

    def _refused(self, state: State, key: bytes, cond: Cond, observed: Any) -> list[tuple[Hashable, Any]]:
        """A conditional write refused at an unknown position: the views whose revision it names."""
        out: list[tuple[Hashable, Any]] = []
        for view in self._views(state, key):
            if not self._holds(view, cond):
                output = (CONDITION_FAILED, view[1])
                if output == observed:
                    out.append((view, output))
        return out

    def _delete(self, state: State, key: bytes, cond: Cond, observed: Any) -> list[tuple[Hashable, Any]]:
        if isinstance(observed, tuple):
            return self._refused(state, key, cond, observed)
        out: list[tuple[Hashable, Any]] = []
        for view in self._views(state, key):
            if not self._holds(view, cond):
                continue
            existed = view[0] is not None
            if existed is observed:
                out.append(((None, 0, 0, view[3], view[4]), observed))
        return out

    def _incr(self, state: State, key: bytes, delta: int, observed: Any) -> list[tuple[Hashable, Any]]:
        if observed == INVALID_ARGUMENT:
            return [(view, observed) for view in self._views(state, key) if _incremented(view[0], delta) is None]
        if not isinstance(observed, tuple) or len(observed) != 2:
            return []
        total, index = observed
        views = self._view_at(state, key, index)
        if views is None:
            return []
        time_ms = self.clock.time_ms[index]
        for view in views:
            if _incremented(view[0], delta) == total:
                expires_at_ms = view[2] if view[0] is not None else 0
                return [((b"%d" % total, index, expires_at_ms, time_ms, index), observed)]
        return []


def _incremented(value: bytes | None, delta: int) -> int | None:
    """``value + delta`` as the KV service computes it, or None where it refuses."""
    if value is None:
        current = 0
    elif kv.INT64_TEXT.fullmatch(value):
        current = int(value)
    else:
        return None
    total = current + delta
    return total if INT64_MIN <= total <= INT64_MAX else None


__all__ = ["CONDITION_FAILED", "INVALID_ARGUMENT", "KvKeyModel", "LogClock", "NO_COND", "RecordingKv", "error_output", "normalize"]

