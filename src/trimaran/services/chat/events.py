"""The chat service's applied-events window: what the edge reads after each apply round to push to
WebSocket subscribers.

Every change a subscriber may see makes one event, numbered by a service-wide sequence ``seq`` (1,
2, 3, ... with no gap, in apply order, the same on every replica at the same log index). An event
is ``(seq, kind, channel, offset, epoch, at_ms, payload)``:

=============  ============  ==========  ==================================================
kind           offset        epoch       payload
=============  ============  ==========  ==================================================
``message``    its offset    channel's   data (bytes); kept in history too
``ephemeral``  None          channel's   data (bytes); never in history (typing indicators)
                             or None
``join``       None          channel's   [session_id, info] (also an info update)
``leave``      None          channel's   [session_id, reason]: "left", "closed" or "expired"
``reset``      None          the new     None: the history was cleared; offsets restart at 1
``dropped``    None          the old     None: the channel was forgotten (no history, no
                                         members); a later publish starts a new epoch
=============  ============  ==========  ==================================================

``at_ms`` is the log time of the entry that made the event. Because offsets are assigned in apply
order, the ``message`` events of one channel come in offset order, so an edge that reads the
window in ``seq`` order pushes each channel's messages in offset order with no gap.

**Reading.** An edge keeps one cursor (the last ``seq`` it handled), reads once after each apply
round without a channel filter (:meth:`ChatService.events_after`), and fans the events out to its
subscribers by channel; filtering per channel scans the same events once per channel. ``seq`` is
the same on every replica at the same log index, so a reader whose cursor is ahead of this node's
``seq`` (it came from a node further along) simply gets nothing until this node catches up.

**Bound.** The window keeps the latest ``events_max`` events and ``bytes_max`` bytes (channel +
data or info + ``EVENT_OVERHEAD_BYTES`` each), dropping the oldest first. A reader whose position
is older than the window gets ``gap: True`` and the events from the oldest kept: it has lost
events, so it re-reads each channel it serves from history (messages are there, with offsets) and
presence (joins and leaves are summed up there); only ephemeral messages are lost for good, which
is what ephemeral means. An edge reads after every apply round, so with the default bounds a gap
means a very slow edge or a snapshot install after a long absence.
"""

from __future__ import annotations

from typing import Any

from trimaran import limits

#: Bytes charged per event beyond its channel name and data (an estimate, the same everywhere).
EVENT_OVERHEAD_BYTES = 64
#: Drop the consumed front of the list once this many events are dead (amortises the copy).
COMPACT_DEAD_EVENTS_MIN = 1_024
#: Events per list in a snapshot (msgpack decoding refuses longer arrays).
SNAPSHOT_CHUNK_EVENTS = 65_536

Event = tuple[int, str, str, "int | None", "str | None", int, Any]

assert SNAPSHOT_CHUNK_EVENTS <= limits.msgpack_array_len_max


def payload_bytes(payload: Any) -> int:
    if type(payload) is bytes:
        return len(payload)
    if type(payload) is list:  # [session_id, info or reason]
        return 8 + len(payload[1])
    return 0


def event_bytes(channel: str, payload: Any) -> int:
    return len(channel) + payload_bytes(payload) + EVENT_OVERHEAD_BYTES


class EventWindow:
    def __init__(self, events_max: int, bytes_max: int) -> None:
        assert events_max >= 1 and bytes_max >= 1
        self.events_max = events_max
        self.bytes_max = bytes_max
        # A list with a moving head: ``seq`` maps to a position in O(1) (seqs are dense).
        self._events: list[Event | None] = []
        self._head = 0
        self.size_bytes = 0
        #: The sequence of the last event made (0: none yet).
        self.seq = 0

    def __len__(self) -> int:
        return len(self._events) - self._head

    @property
    def oldest_seq(self) -> int:
        """The sequence of the oldest event kept (``seq + 1`` when none is)."""
        return self.seq - len(self) + 1

    def record(self, kind: str, channel: str, offset: int | None, epoch: str | None, at_ms: int, payload: Any) -> int:
        self.seq += 1
        events = self._events
        events.append((self.seq, kind, channel, offset, epoch, at_ms, payload))
        self.size_bytes += event_bytes(channel, payload)
        while len(events) - self._head > self.events_max or self.size_bytes > self.bytes_max:
            dropped = events[self._head]
            assert dropped is not None
            events[self._head] = None  # free the data now
            self._head += 1
            self.size_bytes -= event_bytes(dropped[2], dropped[6])
        if self._head >= COMPACT_DEAD_EVENTS_MIN and self._head * 2 >= len(events):
            del events[: self._head]
            self._head = 0
        return self.seq

    def after(self, after_seq: int, channel: str | None, limit: int, page_bytes_max: int) -> dict[str, Any]:
        """Events with ``seq > after_seq`` (of ``channel`` only, if given), oldest first.

        Returns ``{"events": [[seq, kind, channel, offset, epoch, at_ms, payload], ...], "next":
        the after_seq of the following call, "gap": True if events after after_seq were dropped,
        "seq": the latest sequence}``. A page holds at most ``limit`` events and stops once over
        ``page_bytes_max`` bytes (at least one event)."""
        oldest = self.oldest_seq
        gap = after_seq + 1 < oldest
        start = max(after_seq + 1, oldest)
        out: list[list[Any]] = []
        size_bytes = 0
        last = max(after_seq, oldest - 1) if gap else after_seq
        pos = self._head + (start - oldest)
        events = self._events
        while pos < len(events):
            e = events[pos]
            assert e is not None
            pos += 1
            if channel is not None and e[2] != channel:
                last = e[0]
                continue
            if len(out) >= limit or size_bytes >= page_bytes_max:
                return {"events": out, "next": last, "gap": gap, "seq": self.seq}
            out.append(list(e))
            size_bytes += event_bytes(e[2], e[6])
            last = e[0]
        return {"events": out, "next": max(after_seq, self.seq), "gap": gap, "seq": self.seq}

    def snapshot(self) -> dict[str, Any]:
        kept = [list(e) for e in self._events[self._head :] if e is not None]
        chunks = [kept[i : i + SNAPSHOT_CHUNK_EVENTS] for i in range(0, len(kept), SNAPSHOT_CHUNK_EVENTS)]
        return {"seq": self.seq, "events": chunks}

    def restore(self, data: dict[str, Any]) -> None:
        self._events = [
            (e[0], e[1], e[2], e[3], e[4], e[5], e[6]) for chunk in data["events"] for e in chunk
        ]
        self._head = 0
        self.seq = data["seq"]
        self.size_bytes = sum(event_bytes(e[2], e[6]) for e in self._events if e is not None)
        assert not self._events or self._events[-1] is not None and self._events[-1][0] == self.seq
