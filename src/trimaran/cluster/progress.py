"""A leader's view of one follower: how far it matches, what to send next, how much is in flight.

States follow etcd-io/raft's tracker: PROBE sends one AppendEntries at a time until a match is found;
REPLICATE pipelines appends under a window of messages and bytes; SNAPSHOT streams a snapshot in
chunks and sends nothing else.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from trimaran.protocols.messages import Snapshot


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "inflight",
        "inflight_bytes",
        "recent_active",
        "last_heard_tick",
        "snapshot",
        "snapshot_offset",
        "progress_seen",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        #: (last index, bytes) of each AppendEntries in flight, oldest first.
        self.inflight: deque[tuple[int, int]] = deque()
        self.inflight_bytes = 0
        #: Heard from since the last Check-Quorum round (thesis §6.2).
        self.recent_active = False
        #: Leader tick at which this follower last answered (lease reads).
        self.last_heard_tick = -(1 << 62)
        self.snapshot: Snapshot | None = None
        self.snapshot_offset = 0
        #: match (or snapshot_offset) at the previous heartbeat answer: when it did not move, what
        #: was in flight is presumed lost and is sent again.
        self.progress_seen = -1

    def update_match(self, index: int) -> bool:
        """Record an acknowledged index; True if the match advanced."""
        advanced = index > self.match
        if advanced:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return advanced

    def become_probe(self) -> None:
        floor = self.snapshot.meta.last_index if self.state == ProgressState.SNAPSHOT and self.snapshot else 0
        self.state = ProgressState.PROBE
        self.next = max(self.match + 1, floor + 1)
        self._reset()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self._reset()

    def become_snapshot(self, snapshot: Snapshot) -> None:
        self.state = ProgressState.SNAPSHOT
        self._reset()
        self.snapshot = snapshot
        self.snapshot_offset = 0

    def _reset(self) -> None:
        self.probe_sent = False
        self.inflight.clear()
        self.inflight_bytes = 0
        self.snapshot = None
        self.snapshot_offset = 0
        self.progress_seen = -1

    def add_inflight(self, last_index: int, size_bytes: int) -> None:
        self.inflight.append((last_index, size_bytes))
        self.inflight_bytes += size_bytes

    def free_inflight_through(self, index: int) -> None:
        while self.inflight and self.inflight[0][0] <= index:
            _, size = self.inflight.popleft()
            self.inflight_bytes -= size

    def is_paused(self, messages_max: int, bytes_max: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return len(self.inflight) >= messages_max or self.inflight_bytes >= bytes_max
        return True
