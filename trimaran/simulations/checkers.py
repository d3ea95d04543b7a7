"""The simulator's checkers beyond Raft's invariants: a sequential model of the register service
for the linearizability checker, exactly-once, and the durable-term rule across crashes.

Every checker raises :class:`CheckFailure` (an ``AssertionError``: a failure is a bug in
trimaran, or in the simulator) with a ``category`` the shrinker uses to tell one failure from
another.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Callable

from trimaran.cluster.sessions import Outcome
from trimaran.services.register import INT64_MAX, INT64_MIN
from trimaran.simulations.invariants import InvariantViolation, RaftInvariants
from trimaran.simulations.linearizability import ErrorOutput


class CheckFailure(AssertionError):
    """A checker found a bug. ``category`` names the checker: invariant, linearizability,
    durability, exactly_once, liveness, storm (a livelock), crash (an exception escaped the core)."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(f"{category}: {message}")
        self.category = category
        self.message = message


#: The output the register service's deterministic refusals (incr on a non-integer, overflow)
#: become in the history: the refusal is a linearized read of the state, so it is an OK operation.
INVALID = ErrorOutput("invalid_argument")


class RegisterServiceModel:
    """The sequential specification of one key of :class:`~trimaran.services.register.RegisterService`.

    The state is the stored bytes, or ``None`` when absent. It differs from the checker's
    ``RegisterModel`` where the service does: values are bytes, and ``incr`` parses and stores
    decimal ASCII (so ``set(b"41")`` then ``incr(1)`` gives 42, and ``incr`` on ``b"x"`` is refused).
    """

    def init(self) -> Hashable:
        return None

    def step(self, state: Any, kind: str, args: tuple[Any, ...]) -> tuple[Hashable, Any]:
        if kind == "get":
            return state, state
        if kind == "set":
            return args[0], None
        if kind == "cas":
            expected, new = args
            return (new, True) if state == expected else (state, False)
        if kind == "delete":
            return None, state is not None
        if kind == "incr":
            try:
                value = int(state if state is not None else b"0") + args[0]
            except ValueError:
                return state, INVALID
            if not INT64_MIN <= value <= INT64_MAX:
                return state, INVALID
            return str(value).encode(), value
        raise ValueError(f"no register operation {kind!r}")

    def never_changes_state(self, kind: str, args: tuple[Any, ...], output: Any) -> bool:
        """Reads and refused conditional writes leave every state as it was (ReadOnlyHint)."""
        return kind == "get" or (kind in ("cas", "delete") and output is False) or output == INVALID


class ExactlyOnce:
    """Every client command is applied at one log position, on every replica, in every lifetime.

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
            if where == (index, pos) and (client_id, seq) not in self.first_applied:
                self.first_applied[(client_id, seq)] = (self._clock(), outcome)
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


__all__ = ["CheckFailure", "ExactlyOnce", "INVALID", "InvariantViolation", "RegisterServiceModel", "SimInvariants"]
