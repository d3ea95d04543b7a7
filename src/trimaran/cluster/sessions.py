"""Client sessions for exactly-once commands (thesis §6.3).

A client registers once (the register command's log position becomes its id), then numbers its
commands 1, 2, 3 ... and tells the cluster the highest sequence whose answer it has received
(``ack_seq``). The table keeps each session's answers for sequences above ``ack_seq``, so a retried
command returns the saved answer instead of applying twice. Everything is decided from the log:
sessions expire when no command of theirs has been applied for ``session_timeout_ms`` of leader
time, and the table is bounded (the least recently active session is evicted first), so every
replica keeps exactly the same sessions.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from trimaran import limits

#: Saved answers: ("ok", value) or ("err", TrimaranError.to_wire()).
Outcome = tuple[str, Any]


@dataclass(slots=True)
class Session:
    last_active_ms: int
    ack_seq: int = 0
    responses: dict[int, Outcome] = field(default_factory=dict)


class SessionTable:
    def __init__(self, timeout_ms: int, sessions_max: int = limits.sessions_max) -> None:
        assert timeout_ms > 0 and 0 < sessions_max <= limits.sessions_max
        self.timeout_ms = timeout_ms
        self.sessions_max = sessions_max
        # Insertion order == order of last activity, because timestamps applied are monotonic.
        self._sessions: OrderedDict[int, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def register(self, client_id: int, now_ms: int) -> None:
        self.expire(now_ms)
        while len(self._sessions) >= self.sessions_max:
            self._sessions.popitem(last=False)
        self._sessions[client_id] = Session(now_ms)

    def expire(self, now_ms: int) -> None:
        """Drop sessions idle for longer than the timeout (oldest first; stops at the first live one)."""
        deadline = now_ms - self.timeout_ms
        while self._sessions:
            client_id, session = next(iter(self._sessions.items()))
            if session.last_active_ms >= deadline:
                break
            del self._sessions[client_id]

    def lookup(self, client_id: int, seq: int, ack_seq: int, now_ms: int) -> tuple[Session | None, Outcome | None]:
        """Find the session for a command; returns (session, saved outcome if this is a duplicate).

        A None session means unknown or expired: the caller must answer ``session_expired``.
        """
        session = self._sessions.get(client_id)
        if session is None:
            return None, None
        session.last_active_ms = now_ms
        self._sessions.move_to_end(client_id)
        if ack_seq > session.ack_seq:
            for s in [s for s in session.responses if s <= ack_seq]:
                del session.responses[s]
            session.ack_seq = ack_seq
        return session, session.responses.get(seq)

    def snapshot(self, with_responses: bool = True) -> list[Any]:
        return [
            [cid, s.last_active_ms, s.ack_seq, [[q, list(o)] for q, o in sorted(s.responses.items())] if with_responses else []]
            for cid, s in self._sessions.items()
        ]

    def restore(self, data: list[Any]) -> None:
        self._sessions = OrderedDict()
        for cid, last_active_ms, ack_seq, responses in data:
            self._sessions[cid] = Session(last_active_ms, ack_seq, {q: (o[0], o[1]) for q, o in responses})
