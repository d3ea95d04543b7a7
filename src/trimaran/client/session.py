"""The client's half of an exactly-once session (Raft thesis §6.3).

The cluster gives a registered client an id; the client numbers its commands 1, 2, 3 ... and tells
the cluster, with every command, ``ack_seq``: the highest sequence number such that the client has
finished with it *and with every number below it* (got the answer, or gave up and will never retry).
The cluster keeps saved answers only above ``ack_seq``, so a retry with the same sequence number gets
the saved answer instead of applying the command twice.

Pipelined commands finish out of order, so ``ack_seq`` only advances over a contiguous prefix. The
cluster keeps at most ``limits.session_responses_max`` unacknowledged answers per session; the
window below keeps the client from ever needing more (a slow old command holds newer ones back
instead of making the cluster refuse them).
"""

from __future__ import annotations

import trio

from trimaran import limits


class Session:
    """Sequence numbers and acknowledgements of one registered client id."""

    def __init__(self, client_id: int, window_max: int = limits.session_responses_max) -> None:
        assert client_id > 0 and 0 < window_max <= limits.session_responses_max
        self.client_id = client_id
        self.window_max = window_max
        self._last_issued_seq = 0
        self._ack_seq = 0
        # Finished sequence numbers above ack_seq (waiting for a slower lower number to finish).
        self._finished_above_ack: set[int] = set()
        self._ack_advanced = trio.Event()

    @property
    def ack_seq(self) -> int:
        return self._ack_seq

    @property
    def unacknowledged_count(self) -> int:
        """Sequence numbers issued and not yet covered by ``ack_seq``."""
        return self._last_issued_seq - self._ack_seq

    async def next_seq(self) -> int:
        """The next sequence number, waiting while the unacknowledged window is full."""
        while self.unacknowledged_count >= self.window_max:
            await self._ack_advanced.wait()
        self._last_issued_seq += 1
        return self._last_issued_seq

    def finish(self, seq: int) -> None:
        """The client is done with ``seq`` for good: answered, or abandoned and never to be retried."""
        assert self._ack_seq < seq <= self._last_issued_seq, (seq, self._ack_seq, self._last_issued_seq)
        self._finished_above_ack.add(seq)
        advanced = False
        while self._ack_seq + 1 in self._finished_above_ack:
            self._ack_seq += 1
            self._finished_above_ack.remove(self._ack_seq)
            advanced = True
        if advanced:
            self._ack_advanced.set()
            self._ack_advanced = trio.Event()
