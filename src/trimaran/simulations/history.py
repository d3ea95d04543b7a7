"""The history a simulated workload records, for the linearizability checker.

A client records an *invocation* when it sends an operation and a *completion* when it learns the
outcome. Times are the simulator's clock (integers; the unit is the simulator's, the checker only
compares them). The outcome is one of three :class:`OpStatus` values, and the difference matters to
the checker:

- ``OK``: the operation took effect exactly once, somewhere inside ``[invoke_time,
  complete_time]``, and ``result`` is what the client observed.
- ``FAILED``: the operation *definitely* did not take effect (e.g. rejected before it was proposed).
  The checker ignores it entirely.
- ``INDETERMINATE``: the client cannot know (a timeout, a lost connection, a leader that stepped
  down after proposing). The operation may have taken effect at any point after its invocation --
  even long after the client gave up -- or never, and its output is unconstrained.

Operations still pending when the run ends are indeterminate: :meth:`History.finalize` marks them.

Real-time order is strict: operation A precedes B iff ``A.complete_time < B.invoke_time``. Two
operations whose intervals share an endpoint are concurrent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Iterator

#: A partition key of the history. Histories record bytes (the KV wire type); tests may use str.
Key = bytes | str


class OpStatus(enum.Enum):
    """How an operation ended, as far as its client knows."""

    #: Took effect once within its interval; ``result`` is the observed output.
    OK = "ok"
    #: Definitely never took effect.
    FAILED = "failed"
    #: May have taken effect at any time after its invocation, or never; output unknown.
    INDETERMINATE = "indeterminate"


@dataclass(slots=True)
class Operation:
    """One client operation on one key, with its real-time interval and outcome.

    ``status`` is ``None`` while the operation is pending; the checker treats a pending operation
    as indeterminate. ``complete_time`` is ``None`` for an operation that never completed; for an
    indeterminate one it may hold the time the client gave up, which the checker ignores (the
    effect can land later than that).
    """

    op_id: int
    client_id: int
    key: Key
    kind: str
    args: tuple[Any, ...]
    invoke_time: int
    complete_time: int | None = None
    status: OpStatus | None = None
    result: Any = None

    def is_definite(self) -> bool:
        """True if the operation is known to have taken effect (status ``OK``)."""
        return self.status is OpStatus.OK

    def describe(self) -> str:
        """A one-line human rendering, for failure reports."""
        args = ", ".join(repr(arg) for arg in self.args)
        status = self.status.value if self.status is not None else "pending"
        end = "inf" if self.complete_time is None else str(self.complete_time)
        outcome = f" -> {self.result!r}" if self.status is OpStatus.OK else ""
        return (
            f"#{self.op_id} c{self.client_id} [{self.invoke_time}, {end}] "
            f"{self.kind}({args}) on {self.key!r} {status}{outcome}"
        )


class History:
    """An append-only record of operations, in invocation order.

    Operation ids are dense (``0, 1, 2, ...``) in invocation order, so a history built from the
    same run is the same object graph every time.
    """

    __slots__ = ("_ops", "_finalized")

    def __init__(self) -> None:
        self._ops: list[Operation] = []
        self._finalized = False

    def invoke(self, client_id: int, key: Key, kind: str, args: tuple[Any, ...], time: int) -> int:
        """Record that ``client_id`` sent ``kind(*args)`` on ``key`` at ``time``; return its id."""
        assert not self._finalized, "history already finalized"
        if self._ops:
            # Recording happens in simulated-time order; a step back is a harness bug.
            assert time >= self._ops[-1].invoke_time, "invocations must be recorded in time order"
        op_id = len(self._ops)
        self._ops.append(Operation(op_id, client_id, key, kind, tuple(args), time))
        return op_id

    def complete(self, op_id: int, status: OpStatus, result: Any, time: int) -> None:
        """Record the outcome of ``op_id`` learnt at ``time`` (``result`` matters only if OK)."""
        assert not self._finalized, "history already finalized"
        op = self._ops[op_id]
        assert op.status is None, f"operation {op_id} completed twice"
        assert time >= op.invoke_time, "an operation cannot complete before it was invoked"
        op.status = status
        op.complete_time = time
        op.result = result if status is OpStatus.OK else None

    def finalize(self) -> None:
        """End the run: every operation still pending becomes indeterminate (fate unknown)."""
        for op in self._ops:
            if op.status is None:
                op.status = OpStatus.INDETERMINATE
        self._finalized = True

    @property
    def operations(self) -> tuple[Operation, ...]:
        """The operations in invocation order (the objects themselves; do not mutate them)."""
        return tuple(self._ops)

    def __len__(self) -> int:
        return len(self._ops)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self._ops)


def partition_by_key(operations: list[Operation]) -> list[tuple[Key, list[Operation]]]:
    """Split operations per key, keys in order of first appearance, each list in input order.

    First appearance (not sorting) keeps the order deterministic without requiring keys of one
    type to be mutually comparable.
    """
    groups: dict[Key, list[Operation]] = {}
    for op in operations:
        groups.setdefault(op.key, []).append(op)
    return list(groups.items())
