"""A deliberately naive model of the KV service, for the property tests.

Plain dicts and lists, full scans everywhere, no indexes: slow but obviously right, so when it and
:class:`~trimaran.services.kv.KvService` disagree the service is the suspect. It takes commands
already known to be well-formed (the tests check malformed input separately) and returns
``("ok", result)`` or ``("err", error class)``.

The LRU order is the model dict's insertion order: a key is moved to the end by popping and
re-inserting it, and eviction pops the first key.
"""

from __future__ import annotations

from typing import Any

from trimaran.errors import ConditionFailed, InvalidArgument, OutOfMemory, RevisionCompacted
from trimaran.services.kv import ENTRY_OVERHEAD_BYTES
from trimaran.services.kv_watch import EVENT_OVERHEAD_BYTES

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


def _size(key: bytes, value: bytes) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD_BYTES


def _canonical_int(value: bytes) -> int | None:
    try:
        text = value.decode("ascii")
        number = int(text)
    except (UnicodeDecodeError, ValueError):
        return None
    if str(number) != text or not INT64_MIN <= number <= INT64_MAX:
        return None  # "+1", "01", " 1", "-0", "1_0" and out-of-range values are not counters
    return number


class ModelKv:
    def __init__(
        self,
        maxmemory_bytes: int | None = None,
        eviction_policy: str = "lru",
        watch_history_max: int = 10_000,
        watch_history_bytes_max: int = 8 << 20,
    ) -> None:
        self.maxmemory_bytes = maxmemory_bytes
        self.policy = eviction_policy
        self.watch_history_max = watch_history_max
        self.watch_history_bytes_max = watch_history_bytes_max
        self.data: dict[bytes, list[Any]] = {}  # key -> [value, revision, expires_at_ms or None]
        self.events: list[list[Any]] = []  # every event ever, never dropped
        self.revision = 0
        self.expired = 0
        self.evicted = 0

    # ---------------------------------------------------------------- helpers

    def used_bytes(self) -> int:
        return sum(_size(k, e[0]) for k, e in self.data.items())

    def _event(self, rev: int, kind: str, key: bytes, value: bytes | None, reason: str | None) -> None:
        self.events.append([rev, kind, key, value, reason])
        self.revision = rev

    def _store(self, key: bytes, value: bytes, rev: int, expires: int | None) -> None:
        self.data.pop(key, None)
        self.data[key] = [value, rev, expires]
        self._event(rev, "put", key, value, None)

    def _bump(self, key: bytes) -> None:
        self.data[key] = self.data.pop(key)

    def advance(self, index: int, now_ms: int) -> None:
        due = sorted((e[2], k) for k, e in self.data.items() if e[2] is not None and e[2] <= now_ms)
        for _, key in due:
            del self.data[key]
            self.expired += 1
            self._event(index, "delete", key, None, "expired")

    def _fits(self, new: dict[bytes, bytes]) -> bool:
        """Would writing ``new`` be allowed by maxmemory (evicting others under lru)?"""
        if self.maxmemory_bytes is None:
            return True
        after = {k: e[0] for k, e in self.data.items()} | new
        growth = sum(_size(k, v) for k, v in after.items()) - self.used_bytes()
        if growth <= 0 or self.used_bytes() + growth <= self.maxmemory_bytes:
            return True
        return self.policy == "lru" and sum(_size(k, v) for k, v in new.items()) <= self.maxmemory_bytes

    def _evict(self, rev: int) -> None:
        if self.maxmemory_bytes is None or self.policy != "lru":
            return
        while self.used_bytes() > self.maxmemory_bytes:
            key = next(iter(self.data))
            del self.data[key]
            self.evicted += 1
            self._event(rev, "delete", key, None, "evicted")

    def _holds(self, key: bytes, opts: dict[str, Any]) -> bool:
        cur = self.data.get(key)
        if opts.get("if_absent") and cur is not None:
            return False
        if opts.get("if_revision") is not None and opts["if_revision"] != (cur[1] if cur else 0):
            return False
        if opts.get("if_value") is not None and (cur is None or cur[0] != opts["if_value"]):
            return False
        return True

    # ---------------------------------------------------------------- commands

    def apply(self, cmd: list[Any], index: int, now_ms: int) -> tuple[str, Any]:
        self.advance(index, now_ms)
        op = cmd[0]
        opts = cmd[-1] if isinstance(cmd[-1], dict) else {}
        opts = {k: v for k, v in opts.items() if v is not None}
        if op == "set":
            key, value = cmd[1], cmd[2]
            if not self._holds(key, opts):
                return ("err", ConditionFailed)
            if not self._fits({key: value}):
                return ("err", OutOfMemory)
            ttl = opts.get("ttl_ms")
            self._store(key, value, index, now_ms + ttl if ttl is not None else None)
            self._evict(index)
            return ("ok", index)
        if op == "delete":
            key = cmd[1]
            if not self._holds(key, opts):
                return ("err", ConditionFailed)
            if key not in self.data:
                return ("ok", False)
            del self.data[key]
            self._event(index, "delete", key, None, "deleted")
            return ("ok", True)
        if op in ("incr", "decr"):
            return self._incr(cmd[1], cmd[2] if op == "incr" else -cmd[2], index)
        if op == "mset":
            return self._mset(cmd[1], index, now_ms)
        if op in ("touch", "expire"):
            key = cmd[1]
            if key not in self.data:
                return ("ok", False)
            self._bump(key)
            if op == "expire":
                self.data[key][2] = now_ms + cmd[2] if cmd[2] is not None else None
            return ("ok", True)
        raise AssertionError(f"model got an unknown op {op}")

    def _incr(self, key: bytes, delta: int, index: int) -> tuple[str, Any]:
        cur = self.data.get(key)
        base = 0 if cur is None else _canonical_int(cur[0])
        if base is None:
            return ("err", InvalidArgument)
        result = base + delta
        if not INT64_MIN <= result <= INT64_MAX:
            return ("err", InvalidArgument)
        value = str(result).encode()
        if not self._fits({key: value}):
            return ("err", OutOfMemory)
        self._store(key, value, index, cur[2] if cur else None)
        self._evict(index)
        return ("ok", [result, index])

    def _mset(self, pairs: list[list[Any]], index: int, now_ms: int) -> tuple[str, Any]:
        if not self._fits({p[0]: p[1] for p in pairs}):
            return ("err", OutOfMemory)
        for p in pairs:
            ttl = p[2] if len(p) == 3 else None
            self._store(p[0], p[1], index, now_ms + ttl if ttl is not None else None)
        self._evict(index)
        return ("ok", index)

    # ---------------------------------------------------------------- queries

    def get(self, key: bytes, now_ms: int) -> list[Any] | None:
        e = self.data.get(key)
        if e is None or (e[2] is not None and e[2] <= now_ms):
            return None
        return [e[0], e[1], None if e[2] is None else e[2] - now_ms]

    def scan_all(self, prefix: bytes, now_ms: int) -> list[list[Any]]:
        out = []
        for key in sorted(self.data):
            view = self.get(key, now_ms)
            if key.startswith(prefix) and view is not None:
                out.append([key, *view])
        return out

    def window(self) -> tuple[list[list[Any]], int]:
        """(events kept, compacted revision): the longest suffix of all events within both bounds."""
        kept: list[list[Any]] = []
        size = 0
        for ev in reversed(self.events):
            ev_size = len(ev[2]) + len(ev[3] or b"") + EVENT_OVERHEAD_BYTES
            if len(kept) + 1 > self.watch_history_max or size + ev_size > self.watch_history_bytes_max:
                return kept[::-1], ev[0]
            kept.append(ev)
            size += ev_size
        return kept[::-1], 0

    def watch(self, match: bytes, is_prefix: bool, from_revision: int) -> tuple[str, Any]:
        kept, compacted = self.window()
        if from_revision < compacted:
            return ("err", RevisionCompacted)
        return (
            "ok",
            [
                ev
                for ev in kept
                if ev[0] > from_revision and (ev[2].startswith(match) if is_prefix else ev[2] == match)
            ],
        )
