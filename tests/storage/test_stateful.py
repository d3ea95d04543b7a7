"""Stateful property test: random valid write sequences against both stores and a plain model.

After every step the store's bounds, terms, entries (with random byte budgets), hard state,
snapshot and boot state must agree with :class:`Model`, a dict-based log with none of the stores'
machinery. Restarts (LMDB reopen, memory crash) must lose nothing that was written durably; the
memory twin's unsynced writes must vanish on a crash, or land as a valid torn prefix.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.storage.helpers import MAP_BYTES_INITIAL, entry, meta_for, snapshot
from trimaran.protocols.messages import Entry, HardState, Snapshot
from trimaran.storage import LmdbStorage, MemoryStorage, NodeStorage, WriteBatch

SETTINGS = settings(max_examples=30, stateful_step_count=30, deadline=None)


@dataclass
class Model:
    log: dict[int, Entry] = field(default_factory=dict)
    snapshot: Snapshot | None = None
    hard_state: HardState = field(default_factory=HardState)

    def copy(self) -> Model:
        return Model(dict(self.log), self.snapshot, self.hard_state)

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.meta.last_index if self.snapshot else 0

    @property
    def first(self) -> int:
        return min(self.log) if self.log else self.snapshot_index + 1

    @property
    def last(self) -> int:
        return max(self.log) if self.log else self.snapshot_index

    def term_at(self, index: int) -> int | None:
        if index == self.snapshot_index:
            return self.snapshot.meta.last_term if self.snapshot else 0
        return self.log[index].term if index in self.log else None

    def apply(self, batch: WriteBatch) -> None:
        if batch.snapshot is not None:
            self.snapshot = batch.snapshot
        if batch.truncate_from:
            self.log = {i: e for i, e in self.log.items() if i < batch.truncate_from}
        self.log.update((e.index, e) for e in batch.entries)
        if batch.compact_through:
            self.log = {i: e for i, e in self.log.items() if i > batch.compact_through}
        if batch.hard_state is not None:
            self.hard_state = batch.hard_state


# --- batches valid against a model state --------------------------------------------------------


def _new_entries(data: st.DataObject, model: Model, lo: int, term: int) -> list[Entry]:
    count = data.draw(st.integers(0, 4), label="count")
    sizes = data.draw(st.lists(st.integers(0, 60), min_size=count, max_size=count), label="sizes")
    return [entry(lo + i, term, bytes([(lo + i) % 256]) * size) for i, size in enumerate(sizes)]


def _term(model: Model) -> int:
    return max(model.hard_state.term, model.term_at(model.last) or 0)


def draw_batch(data: st.DataObject, model: Model) -> WriteBatch:
    """One batch that is valid for ``model`` (the caller applies it to the model)."""
    kinds = ["append", "hard_state", "install"]
    if model.last > model.snapshot_index:
        kinds += ["truncate", "snapshot"]
    if model.log and model.first <= model.snapshot_index:
        kinds.append("compact")
    kind = data.draw(st.sampled_from(kinds), label="kind")
    term = _term(model)
    if kind == "append":
        return WriteBatch(entries=_new_entries(data, model, model.last + 1, term))
    if kind == "hard_state":
        bump = data.draw(st.integers(0, 2), label="term bump")
        vote = data.draw(st.integers(0, 3), label="vote")
        return WriteBatch(hard_state=HardState(model.hard_state.term + bump, vote, model.last))
    if kind == "truncate":
        index_from = data.draw(st.integers(model.snapshot_index + 1, model.last), label="truncate_from")
        return WriteBatch(truncate_from=index_from, entries=_new_entries(data, model, index_from, term + 1))
    if kind == "snapshot":
        at = data.draw(st.integers(model.snapshot_index + 1, model.last), label="snapshot at")
        compact = data.draw(st.sampled_from([0, at, max(model.first, at - 2)]), label="compact")
        snap = snapshot(at, model.term_at(at) or 0, data.draw(st.binary(max_size=300), label="snapshot data"))
        return WriteBatch(snapshot=snap, compact_through=min(compact, at))
    if kind == "install":
        at = model.last + data.draw(st.integers(1, 3), label="ahead")
        snap = snapshot(at, term + 1, data.draw(st.binary(max_size=300), label="snapshot data"))
        return WriteBatch(snapshot=snap, truncate_from=1, entries=_new_entries(data, model, at + 1, term + 1))
    through = data.draw(st.integers(model.first, model.snapshot_index), label="compact_through")
    return WriteBatch(compact_through=through)


def draw_batches(data: st.DataObject, model: Model) -> tuple[list[WriteBatch], Model]:
    """1 to 3 batches valid in sequence from ``model``, and the model after them."""
    after = model.copy()
    batches = []
    for _ in range(data.draw(st.integers(1, 3), label="batches")):
        batch = draw_batch(data, after)
        after.apply(batch)
        batches.append(batch)
    return batches, after


# --- the machine --------------------------------------------------------------------------------


class StoreMachine(RuleBasedStateMachine):
    """Rules shared by both implementations; subclasses say how to open and restart."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Model()
        self.store: NodeStorage = self.open_store()

    def open_store(self) -> NodeStorage:
        """Open this implementation's store (each subclass says how)."""

    def check(self, model: Model) -> None:
        store = self.store
        assert (store.first_index(), store.last_index()) == (model.first, model.last)
        for index in {0, model.snapshot_index, *range(model.first - 2, model.last + 3)}:
            if index >= 0:
                assert store.term_at(index) == model.term_at(index), index
        held = [model.log[i] for i in sorted(model.log)]
        assert store.entries(model.first, model.last + 1, 1 << 30) == held
        assert store.hard_state() == model.hard_state
        assert store.snapshot_meta() == (model.snapshot.meta if model.snapshot else None)

    @invariant()
    def agrees_with_model(self) -> None:
        self.check(self.model)

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        batches, self.model = draw_batches(data, self.model)
        self.store.write(batches)

    @rule(data=st.data())
    def read_with_a_budget(self, data: st.DataObject) -> None:
        model = self.model
        lo = data.draw(st.integers(model.first, model.last + 1), label="lo")
        hi = data.draw(st.integers(lo, model.last + 1), label="hi")
        bytes_max = data.draw(st.integers(0, 300), label="bytes_max")
        expected: list[Entry] = []
        size_bytes = 0
        for index in range(lo, hi):
            size_bytes += model.log[index].size_bytes()
            if expected and size_bytes > bytes_max:
                break
            expected.append(model.log[index])
        assert self.store.entries(lo, hi, bytes_max) == expected

    @precondition(lambda self: self.model.last > self.model.snapshot_index)
    @rule(data=st.data())
    def publish_with_a_writer(self, data: st.DataObject) -> None:
        model = self.model
        at = data.draw(st.integers(model.snapshot_index + 1, model.last), label="at")
        payload = data.draw(st.binary(max_size=500), label="snapshot data")
        compact = data.draw(st.sampled_from([0, at]), label="compact")
        writer = self.store.begin_snapshot(meta_for(at, model.term_at(at) or 0, payload))
        for offset in range(0, len(payload), 128):
            writer.write(payload[offset : offset + 128])
        writer.publish(compact_through=compact)
        model.apply(WriteBatch(snapshot=Snapshot(meta_for(at, model.term_at(at) or 0, payload), payload)))
        model.apply(WriteBatch(compact_through=compact))

    @rule()
    def restart_and_load(self) -> None:
        self.restart()
        boot = self.store.load()
        assert boot.hard_state == self.model.hard_state
        assert boot.snapshot == self.model.snapshot
        assert boot.entries == [e for i, e in sorted(self.model.log.items()) if i > self.model.snapshot_index]
        if boot.snapshot is not None:
            assert b"".join(self.store.snapshot_chunks(64)) == boot.snapshot.data

    def restart(self) -> None:
        """Restart as this implementation does: LMDB closes and reopens, the twin crashes after a sync."""


class LmdbMachine(StoreMachine):
    def open_store(self) -> NodeStorage:
        if not hasattr(self, "directory"):
            self.directory = tempfile.mkdtemp(prefix="trimaran-storage-")
        return LmdbStorage(self.directory, map_bytes_initial=MAP_BYTES_INITIAL)

    def restart(self) -> None:
        self.store.close()
        self.store = self.open_store()

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class MemoryMachine(StoreMachine):
    store: MemoryStorage

    def open_store(self) -> NodeStorage:
        return MemoryStorage()

    def restart(self) -> None:
        self.store.crash()

    @rule(data=st.data(), torn=st.booleans())
    def write_unsynced_then_crash(self, data: st.DataObject, torn: bool) -> None:
        batches, after = draw_batches(data, self.model)
        self.store.write(batches, sync=False)
        self.check(after)  # reads see unsynced writes
        self.store.crash(torn=torn)
        written = [batch for batch in batches if not batch.is_empty()]
        if torn and written:
            # An empty batch writes nothing, so the first one that writes something tears.
            first = written[0]
            half = first.entries[: len(first.entries) // 2]
            self.model.apply(replace(first, entries=half, hard_state=None, compact_through=0))

    @rule(data=st.data())
    def write_unsynced_then_sync(self, data: st.DataObject) -> None:
        batches, self.model = draw_batches(data, self.model)
        self.store.write(batches[:1], sync=False)
        self.store.write(batches[1:], sync=False)
        self.store.sync()
        self.store.crash()


TestLmdbStateful = LmdbMachine.TestCase
TestLmdbStateful.settings = SETTINGS
TestMemoryStateful = MemoryMachine.TestCase
TestMemoryStateful.settings = SETTINGS
