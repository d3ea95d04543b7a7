"""The KV service's watch history: a bounded window of change events, read by revision.

An event is ``(revision, kind, key, value, reason)``:

- ``(rev, "put", key, value, None)`` for ``set``, ``mset``, ``incr``/``decr``;
- ``(rev, "delete", key, None, reason)`` with reason ``"deleted"`` (a ``delete`` command),
  ``"expired"`` (its TTL passed in log time) or ``"evicted"`` (maxmemory, policy ``lru``).

Events are appended in apply order, so revisions never decrease along the window; several events may
share one revision (one log entry). The window keeps at most ``events_max`` events and
``bytes_max`` bytes (key + value + ``EVENT_OVERHEAD_BYTES`` each) and drops the oldest first.
``compacted_revision`` is the highest revision of which some event was dropped: a reader that has
seen everything through revision R can resume iff ``R >= compacted_revision``.

Pages never split a revision (the events of one log entry are delivered together, as etcd does), so
a reader that resumes from the last revision it processed neither misses nor repeats an event. A
page may therefore exceed its ``limit`` when one revision alone has more matching events; it is
still bounded by the window itself (``events_max``, ``bytes_max``).
"""

from __future__ import annotations

import bisect
from typing import Any

from trimaran import limits
from trimaran.errors import RevisionCompacted

#: Bytes charged per event on top of its key and value (the tuple and list slot; an estimate).
EVENT_OVERHEAD_BYTES = 64
#: Fields of one event in a snapshot's flat event lists.
EVENT_FIELDS = 5
#: Items per list in a snapshot (msgpack decoding in the Replica refuses arrays over
#: ``limits.msgpack_array_len_max``, so long columns are cut into lists of this many items).
SNAPSHOT_CHUNK_ITEMS = 65_536
#: Drop the consumed front of the event list once this many events are dead (amortises the copy).
COMPACT_DEAD_EVENTS_MIN = 1_024

Event = tuple[int, str, bytes, "bytes | None", "str | None"]


assert EVENT_FIELDS * SNAPSHOT_CHUNK_ITEMS <= limits.msgpack_array_len_max


def event_bytes(key: bytes, value: bytes | None) -> int:
    return len(key) + (len(value) if value is not None else 0) + EVENT_OVERHEAD_BYTES


class WatchWindow:
    def __init__(self, events_max: int, bytes_max: int) -> None:
        assert events_max >= 1 and bytes_max >= 1
        self.events_max = events_max
        self.bytes_max = bytes_max
        # A list with a moving head, not a deque: the read path bisects by revision (O(log n)),
        # which a deque cannot do without O(n) indexing.
        self._events: list[Event] = []
        self._head = 0
        self.size_bytes = 0
        self.compacted_revision = 0

    def __len__(self) -> int:
        return len(self._events) - self._head

    def record(self, revision: int, kind: str, key: bytes, value: bytes | None, reason: str | None) -> None:
        events = self._events
        assert len(events) == self._head or events[-1][0] <= revision, "revisions never decrease"
        events.append((revision, kind, key, value, reason))
        self.size_bytes += len(key) + (len(value) if value is not None else 0) + EVENT_OVERHEAD_BYTES
        if len(events) - self._head <= self.events_max and self.size_bytes <= self.bytes_max:
            return  # the common case while the window fills, on the apply path
        while len(events) - self._head > self.events_max or self.size_bytes > self.bytes_max:
            dropped = events[self._head]
            events[self._head] = None  # type: ignore[call-overload]  # free the value now
            self._head += 1
            self.size_bytes -= event_bytes(dropped[2], dropped[3])
            self.compacted_revision = dropped[0]
        if self._head >= COMPACT_DEAD_EVENTS_MIN and self._head * 2 >= len(events):
            del events[: self._head]
            self._head = 0

    def since(
        self,
        match: bytes,
        is_prefix: bool,
        from_revision: int,
        limit: int,
        page_bytes_max: int,
        current_revision: int,
    ) -> dict[str, Any]:
        """Events after ``from_revision`` on ``match`` (a key, or a prefix if ``is_prefix``).

        Returns ``{"events": [[rev, kind, key, value, reason], ...], "next": int, "revision": int}``:
        ``next`` is the ``from_revision`` of the following call (the last revision delivered, or the
        current revision when every event up to it was examined, so a quiet watch moves forward and
        does not fall behind the window); ``revision`` is the service's current revision.
        Raises ``RevisionCompacted`` (details ``oldest_revision``: the least ``from_revision`` still
        answerable, and ``current_revision``) when events after ``from_revision`` were dropped.
        """
        if from_revision < self.compacted_revision:
            raise RevisionCompacted(
                f"revision {from_revision} is compacted: the watch history starts after revision "
                f"{self.compacted_revision}; re-read the keys and watch from a newer revision",
                oldest_revision=self.compacted_revision,
                current_revision=current_revision,
            )
        events = self._events
        start = bisect.bisect_right(events, from_revision, lo=self._head, key=lambda e: e[0])
        out: list[list[Any]] = []
        size_bytes = 0
        last_revision = from_revision
        for i in range(start, len(events)):
            rev, kind, key, value, reason = events[i]
            if not (key.startswith(match) if is_prefix else key == match):
                continue
            if rev != last_revision and (len(out) >= limit or size_bytes >= page_bytes_max):
                return {"events": out, "next": last_revision, "revision": current_revision}
            out.append([rev, kind, key, value, reason])
            size_bytes += event_bytes(key, value)
            last_revision = rev
        return {"events": out, "next": max(from_revision, current_revision), "revision": current_revision}

    def snapshot(self) -> dict[str, Any]:
        flat: list[Any] = []
        for i in range(self._head, len(self._events)):
            flat.extend(self._events[i])
        return {"events": chunked(flat, EVENT_FIELDS * SNAPSHOT_CHUNK_ITEMS), "compacted_revision": self.compacted_revision}

    def restore(self, data: dict[str, Any]) -> None:
        flat = [x for chunk in data["events"] for x in chunk]
        assert len(flat) % EVENT_FIELDS == 0, "a snapshot's event list is whole events"
        self._events = [
            (flat[i], flat[i + 1], flat[i + 2], flat[i + 3], flat[i + 4]) for i in range(0, len(flat), EVENT_FIELDS)
        ]
        self._head = 0
        self.size_bytes = sum(event_bytes(e[2], e[3]) for e in self._events)
        self.compacted_revision = data["compacted_revision"]


def chunked(items: list[Any], size: int = SNAPSHOT_CHUNK_ITEMS) -> list[list[Any]]:
    """``items`` cut into lists of at most ``size`` items (see ``SNAPSHOT_CHUNK_ITEMS``)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
