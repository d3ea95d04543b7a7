"""Presence sessions of the chat service: one per gateway connection, kept alive by heartbeats.

A session has a TTL; each ``heartbeat`` (or ``join``/``leave`` naming it) moves its deadline to
``timestamp_ms + ttl_ms`` of that entry. Once log time reaches the deadline the session lapses: the
service leaves every channel it was in, in channel name order, at the entry whose timestamp passed
it — the same entry on every replica. Sessions lapsing at one entry go in ``(deadline, session_id)``
order.
"""

from __future__ import annotations

from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]


class PresenceSession:
    __slots__ = ("ttl_ms", "expires_at_ms", "channels")

    def __init__(self, ttl_ms: int, expires_at_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self.expires_at_ms = expires_at_ms
        #: Channels joined, kept sorted (the order a lapse leaves them in).
        self.channels: SortedList = SortedList()


class PresenceTable:
    def __init__(self) -> None:
        self.sessions: dict[int, PresenceSession] = {}
        self._deadlines: SortedList = SortedList()  # (expires_at_ms, session_id)
        #: The last session id given (ids are 1, 2, 3, ... in apply order; never reused).
        self.last_id = 0

    def __len__(self) -> int:
        return len(self.sessions)

    def next_deadline_ms(self) -> int | None:
        return self._deadlines[0][0] if self._deadlines else None

    def open(self, ttl_ms: int, now_ms: int) -> tuple[int, int]:
        self.last_id += 1
        session = PresenceSession(ttl_ms, now_ms + ttl_ms)
        self.sessions[self.last_id] = session
        self._deadlines.add((session.expires_at_ms, self.last_id))
        return self.last_id, session.expires_at_ms

    def refresh(self, session_id: int, now_ms: int) -> int:
        session = self.sessions[session_id]
        expires_at_ms = now_ms + session.ttl_ms
        if expires_at_ms != session.expires_at_ms:
            self._deadlines.remove((session.expires_at_ms, session_id))
            self._deadlines.add((expires_at_ms, session_id))
            session.expires_at_ms = expires_at_ms
        return expires_at_ms

    def remove(self, session_id: int) -> PresenceSession:
        session = self.sessions.pop(session_id)
        self._deadlines.remove((session.expires_at_ms, session_id))
        return session

    def due(self, now_ms: int) -> list[int]:
        """Sessions whose deadline is at or before ``now_ms``, in (deadline, id) order."""
        out = []
        for expires_at_ms, session_id in self._deadlines:
            if expires_at_ms > now_ms:
                break
            out.append(session_id)
        return out

    def snapshot(self) -> dict[str, Any]:
        return {
            "last_id": self.last_id,
            "sessions": [[sid, s.ttl_ms, s.expires_at_ms] for sid, s in sorted(self.sessions.items())],
        }

    def restore(self, data: dict[str, Any], memberships: list[tuple[int, str]]) -> None:
        """From a snapshot's sessions and the ``(session_id, channel)`` pairs of the channels' members."""
        self.last_id = data["last_id"]
        self.sessions = {sid: PresenceSession(ttl, exp) for sid, ttl, exp in data["sessions"]}
        self._deadlines = SortedList((s.expires_at_ms, sid) for sid, s in self.sessions.items())
        for session_id, channel in memberships:
            self.sessions[session_id].channels.add(channel)
