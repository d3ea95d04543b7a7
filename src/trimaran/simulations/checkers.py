"""The simulator's checkers beyond Raft's invariants: exactly-once (with the same outcome on every
replica), and the durable-term rule across crashes. The KV model for the linearizability checker
lives in :mod:`trimaran.simulations.kv_model`.

Every checker raises :class:`CheckFailure` (an ``AssertionError``: a failure is a bug in
trimaran, or in the simulator) with a ``category`` the shrinker uses to tell one failure from
another.
"""

from __future__ import annotations

from typing import Any, Callable

from trimaran.cluster.sessions import Outcome
from trimaran.simulations.invariants import InvariantViolation, RaftInvariants


class CheckFailure(AssertionError):
    """A checker found a bug. ``category`` names the checker: invariant, linearizability,
    durability, exactly_once, replicas_diverge, liveness, storm (a livelock), crash (an exception
    escaped the core), workload (an answer no client should get), auth (a node served a token after
    applying its revocation or its key's retirement: :mod:`trimaran.simulations.auth_edge`), and the
    chat ones (:mod:`trimaran.simulations.chat_edge`): chat_history (an offset naming two messages,
    a publish applied twice, an acknowledged publish not where its answer said), chat_delivery (a
    subscriber's gap, duplicate or stall), chat_uncommitted (a message sent before any replica
    applied it)."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(f"{category}: {message}")
        self.category = category
        self.message = message


class ExactlyOnce:
    """Every client command is applied at one log position, on every replica, in every lifetime,
    and with the same outcome everywhere.

    A replica re-applies its log after a restart, but at the same (index, position); a command
    applied twice (a retry that slipped past the session table) shows up at a second position.
    The observer sees only real applications, not answers replayed from the session table.
    """

    def __init__(self, clock: Callable[[], int] = lambda: 0) -> None:
        self.position: dict[tuple[int, int], tuple[int, int]] = {}
        #: (client_id, seq) -> (time of the first application anywhere, its outcome).
        self.first_applied: dict[tuple[int, int], tuple[int, Outcome]] = {}
        self._clock = clock

    def observer(self, node_id: int) -> Any:
        """An :data:`~trimaran.cluster.replica.ApplyObserver` for one node."""

        def observe(index: int, pos: int, client_id: int, seq: int, service: str, command: Any, outcome: Outcome) -> None:
            where = self.position.setdefault((client_id, seq), (index, pos))
            first = self.first_applied.get((client_id, seq))
            if where == (index, pos) and first is None:
                self.first_applied[(client_id, seq)] = (self._clock(), outcome)
            elif where == (index, pos) and first is not None and first[1] != outcome:
                # The same command at the same log position must have the same outcome on every
                # replica: the services' state machines diverged.
                raise CheckFailure(
                    "replicas_diverge",
                    f"node {node_id} applied client {client_id} seq {seq} ({command!r}) at entry {index} with"
                    f" outcome {outcome!r}; it was {first[1]!r} where it was applied first",
                )
            if where != (index, pos):
                raise CheckFailure(
                    "exactly_once",
                    f"node {node_id} applied client {client_id} seq {seq} ({command!r}) at entry {index}"
                    f" position {pos}, but it was already applied at entry {where[0]} position {where[1]}",
                )

        return observe


class SimInvariants(RaftInvariants):
    """Raft's invariants, with the term rule stated for crashes: the *durable* term never goes
    back. A term adopted in memory but not yet fsynced is lost by a crash, legitimately (nothing
    was promised on it: votes and acknowledgements wait for the fsync)."""

    def __init__(self) -> None:
        super().__init__()
        self._durable_term: dict[int, int] = {}

    def node_crashed(self, node_id: int, durable_term: int) -> None:
        if durable_term < self._durable_term.get(node_id, 0):
            self.fail(f"node {node_id}: durable term went back from {self._durable_term[node_id]} to {durable_term}")
        self._durable_term[node_id] = durable_term
        self._term[node_id] = durable_term

    def on_synced(self, node_id: int, durable_term: int) -> None:
        if durable_term > self._durable_term.get(node_id, 0):
            self._durable_term[node_id] = durable_term


__all__ = ["CheckFailure", "ExactlyOnce", "InvariantViolation", "SimInvariants"]
