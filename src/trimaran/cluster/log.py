"""Raft's view of its log: the live entries in memory, plus what is committed, persisted and applied.

The log holds entries ``offset_index + 1 .. last_index``; ``offset_index``/``offset_term`` name the last
compacted entry (0/0 for a fresh log). Compaction keeps the log bounded, so keeping it in memory is
cheap, and the hot path never reads the disk.

Indexes kept here, always ``applied <= commit`` and ``applied <= persisted``:
- ``commit_index``: known committed (§5.3);
- ``persisted_index``: known durable locally and still matching this log;
- ``applied_index``: handed to the state machine;
- ``unstable_from``: the first index not yet handed to storage.
"""

from __future__ import annotations

from trimaran.protocols.messages import Entry


class RaftLog:
    __slots__ = (
        "offset_index",
        "offset_term",
        "entries",
        "commit_index",
        "persisted_index",
        "applied_index",
        "unstable_from",
        "handed_last_index",
    )

    def __init__(self, offset_index: int, offset_term: int, entries: list[Entry], commit_index: int) -> None:
        assert all(e.index == offset_index + 1 + i for i, e in enumerate(entries)), "log not contiguous"
        self.offset_index = offset_index
        self.offset_term = offset_term
        self.entries = list(entries)
        last = offset_index + len(entries)
        # A hard state may name a commit beyond a log a torn write shortened; never trust it past
        # what the log holds.
        self.commit_index = max(offset_index, min(commit_index, last))
        self.persisted_index = last
        self.applied_index = offset_index
        self.unstable_from = last + 1
        self.handed_last_index = last

    # --- reading --------------------------------------------------------------------------------

    def last_index(self) -> int:
        return self.offset_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def first_index(self) -> int:
        return self.offset_index + 1

    def term_at(self, index: int) -> int | None:
        """The entry's term, the offset term at ``offset_index``, None when compacted or beyond the end."""
        if index == self.offset_index:
            return self.offset_term
        pos = index - self.offset_index - 1
        if 0 <= pos < len(self.entries):
            return self.entries[pos].term
        return None

    def entry(self, index: int) -> Entry:
        return self.entries[index - self.offset_index - 1]

    def slice(self, lo: int, hi: int, bytes_max: int) -> list[Entry]:
        """Entries [lo, hi) within ``bytes_max`` (at least one when the range is not empty)."""
        assert lo > self.offset_index, "slice below the compacted prefix"
        start = lo - self.offset_index - 1
        stop = min(hi, self.last_index() + 1) - self.offset_index - 1
        out: list[Entry] = []
        size = 0
        for pos in range(start, stop):
            e = self.entries[pos]
            size += len(e.data) + 24
            if out and size > bytes_max:
                break
            out.append(e)
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def conflict_hint(self, index: int) -> tuple[int, int]:
        """For a rejected AppendEntries at ``index``: (first index of our term there, that term), or
        (last_index + 1, 0) when our log is shorter."""
        if index > self.last_index():
            return self.last_index() + 1, 0
        term = self.term_at(index)
        assert term is not None
        first = index
        while first - 1 > self.offset_index and self.term_at(first - 1) == term:
            first -= 1
        return first, term

    def last_index_of_term(self, term: int, at_most: int) -> int:
        """Largest index <= at_most whose term is ``term``, or 0 when none is held."""
        index = min(at_most, self.last_index())
        while index > self.offset_index:
            t = self.term_at(index)
            assert t is not None
            if t == term:
                return index
            if t < term:
                return 0
            index -= 1
        return 0

    # --- writing --------------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Leader append: entries continue the log."""
        if not entries:
            return
        assert entries[0].index == self.last_index() + 1
        self.entries.extend(entries)

    def merge(self, prev_index: int, entries: list[Entry]) -> int:
        """Follower append after prev_index matched: skip entries we already hold, truncate at the first
        conflict (§5.3), append the rest. Returns the first index written (0 if nothing changed)."""
        for i, e in enumerate(entries):
            if e.index <= self.offset_index:
                continue
            term = self.term_at(e.index)
            if term == e.term:
                continue
            assert e.index > self.commit_index, "truncating a committed entry"
            if term is not None:
                self._truncate_from(e.index)
            self.entries.extend(entries[i:])
            self.unstable_from = min(self.unstable_from, e.index)
            return e.index
        return 0

    def _truncate_from(self, index: int) -> None:
        del self.entries[index - self.offset_index - 1 :]
        self.persisted_index = min(self.persisted_index, index - 1)

    def compact(self, through_index: int) -> None:
        """Drop entries <= through_index (they are in a snapshot)."""
        if through_index <= self.offset_index:
            return
        assert through_index <= self.applied_index, "compacting what is not applied"
        term = self.term_at(through_index)
        assert term is not None
        del self.entries[: through_index - self.offset_index]
        self.offset_index, self.offset_term = through_index, term

    def restore(self, index: int, term: int) -> None:
        """Replace the whole log by a snapshot at (index, term) (§7)."""
        self.entries = []
        self.offset_index, self.offset_term = index, term
        self.commit_index = index
        self.applied_index = index
        self.persisted_index = min(self.persisted_index, index - 1) if index else 0
        self.unstable_from = index + 1
        self.handed_last_index = index

    # --- durability and apply -------------------------------------------------------------------

    def take_unstable(self) -> tuple[int, list[Entry]]:
        """Entries not yet handed to storage, and the truncate_from storage needs before them."""
        if self.unstable_from > self.last_index():
            return 0, []
        start = max(self.unstable_from, self.offset_index + 1)
        entries = self.entries[start - self.offset_index - 1 :]
        truncate_from = start if start <= self.handed_last_index else 0
        self.unstable_from = self.last_index() + 1
        self.handed_last_index = self.last_index()
        return truncate_from, entries

    def mark_persisted(self, index: int, term: int) -> bool:
        """Storage says entries through (index, term) are durable; ignored if the log moved on."""
        if index <= self.persisted_index or self.term_at(index) != term:
            return False
        self.persisted_index = min(index, self.last_index())
        return True

    def take_committed(self) -> list[Entry]:
        """Committed, locally durable entries not yet handed to the state machine."""
        hi = min(self.commit_index, self.persisted_index)
        if hi <= self.applied_index:
            return []
        lo = self.applied_index + 1
        out = self.entries[lo - self.offset_index - 1 : hi - self.offset_index]
        self.applied_index = hi
        return out
