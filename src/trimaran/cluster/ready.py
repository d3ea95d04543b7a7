"""What one step of the Raft core asks its driver to do, in an order the type makes explicit.

A driver (the trio runtime or the simulator) handles a :class:`Ready` like this:

1. hand ``hard_state``, ``snapshot``, ``truncate_from`` and ``entries`` to storage (one batch; a
   hard state comes only when term or vote changed, or with entries — a commit index alone is
   never worth an fsync);
2. send ``messages`` at once (a leader's replication traffic: thesis §10.2.1 lets the leader write
   its own log in parallel with sending);
3. if ``snapshot``: restore the state machine from it; then apply ``committed`` in order;
4. send ``messages_after_persist`` only once this batch AND every earlier batch is durable: vote
   grants, append and snapshot acknowledgements ("persist before you speak", §5.1 Figure 2);
5. when the batch is durable, call ``Raft.on_persisted(persist_index, persist_term)``.

Batches must become durable in the order their Readies were taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trimaran.protocols.messages import Entry, HardState, Message, Snapshot


@dataclass(slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``.

    ``ok`` is False when the read could not be confirmed (leadership lost, no leader known): the
    caller should retry elsewhere.
    """

    context: int
    index: int
    ok: bool = True


@dataclass(slots=True)
class Ready:
    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    truncate_from: int = 0
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    messages_after_persist: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    #: Report these back through ``on_persisted`` once the batch is durable (0/0: nothing to report).
    persist_index: int = 0
    persist_term: int = 0

    def needs_persist(self) -> bool:
        return self.hard_state is not None or self.snapshot is not None or bool(self.entries) or bool(
            self.truncate_from
        )
