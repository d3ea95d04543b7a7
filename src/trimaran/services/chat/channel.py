"""One chat channel's state: its epoch, the offsets assigned, the history kept, and who is present.

History is a list with a moving head (like the KV watch window): offsets in it are dense, so the
message at offset ``o`` sits at position ``head + (o - oldest)``, found in O(1) by a resuming reader.
"""

from __future__ import annotations

from typing import Any

#: Bytes charged per kept message beyond its data (an estimate, the same on every replica).
MESSAGE_OVERHEAD_BYTES = 64
#: Drop the consumed front of a history list once this many messages are dead.
COMPACT_DEAD_MESSAGES_MIN = 256

#: (offset, data, published_at_ms)
Message = tuple[int, bytes, int]


def message_bytes(data: bytes) -> int:
    return len(data) + MESSAGE_OVERHEAD_BYTES


class Channel:
    __slots__ = ("name", "epoch", "top", "_messages", "_head", "size_bytes", "members")

    def __init__(self, name: str, epoch: str) -> None:
        self.name = name
        #: Changes when the history is reset or the channel is forgotten and made again.
        self.epoch = epoch
        #: The last offset assigned in this epoch (0: none yet).
        self.top = 0
        self._messages: list[Message | None] = []
        self._head = 0
        self.size_bytes = 0
        #: session_id -> [info, joined_at_ms]; listed in session id order.
        self.members: dict[int, list[Any]] = {}

    # ------------------------------------------------------------------ history

    def __len__(self) -> int:
        """Messages kept."""
        return len(self._messages) - self._head

    @property
    def oldest(self) -> int:
        """The oldest offset kept (``top + 1`` when none is)."""
        return self.top - len(self) + 1

    def oldest_message(self) -> Message:
        m = self._messages[self._head]
        assert m is not None
        return m

    def append(self, offset: int, data: bytes, at_ms: int) -> None:
        self._messages.append((offset, data, at_ms))
        self.top = offset
        self.size_bytes += message_bytes(data)

    def pop_oldest(self) -> Message:
        m = self._messages[self._head]
        assert m is not None
        self._messages[self._head] = None
        self._head += 1
        self.size_bytes -= message_bytes(m[1])
        if not len(self):
            self._messages, self._head = [], 0
        elif self._head >= COMPACT_DEAD_MESSAGES_MIN and self._head * 2 >= len(self._messages):
            del self._messages[: self._head]
            self._head = 0
        return m

    def clear(self, epoch: str) -> None:
        self.epoch = epoch
        self.top = 0
        self._messages, self._head, self.size_bytes = [], 0, 0

    def read(self, start: int, limit: int, page_bytes_max: int) -> tuple[list[list[Any]], int | None]:
        """Messages from offset ``start`` (``>= oldest``) on, at most ``limit`` and about
        ``page_bytes_max`` bytes (at least one message); and the offset to read after next, or None
        when the page reaches ``top``."""
        assert start >= self.oldest
        out: list[list[Any]] = []
        size_bytes = 0
        pos = self._head + (start - self.oldest)
        messages = self._messages
        while pos < len(messages):
            if len(out) >= limit or (out and size_bytes >= page_bytes_max):
                return out, out[-1][0] if out else start - 1
            m = messages[pos]
            assert m is not None
            out.append([m[0], m[1], m[2]])
            size_bytes += message_bytes(m[1])
            pos += 1
        return out, None

    def messages(self) -> list[Message]:
        return [m for m in self._messages[self._head :] if m is not None]

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> list[Any]:
        flat: list[Any] = []
        for m in self.messages():
            flat.extend(m)
        members = [[sid, m[0], m[1]] for sid, m in sorted(self.members.items())]
        return [self.name, self.epoch, self.top, flat, members]

    @classmethod
    def from_snapshot(cls, data: list[Any]) -> Channel:
        name, epoch, top, flat, members = data
        ch = cls(name, epoch)
        ch.top = top
        ch._messages = [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]
        ch.size_bytes = sum(message_bytes(m[1]) for m in ch._messages if m is not None)
        ch.members = {sid: [info, at_ms] for sid, info, at_ms in members}
        assert not ch._messages or ch.oldest_message()[0] == top - len(ch) + 1, "history offsets are dense"
        return ch
