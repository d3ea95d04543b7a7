"""Linearizability checking of recorded histories (Wing & Gong, with Lowe's memoization).

A history is linearizable if every operation that took effect can be given a point inside its
real-time interval such that running the operations one by one, in point order, on a sequential
:class:`Model` produces exactly the outputs the clients observed (Herlihy & Wing, 1990).

How :func:`check` decides:

1. **Partition per key.** Linearizability is *local* (Herlihy & Wing, Theorem 1;
   "P-compositionality" in Horn & Kroening, 2015): when the model's keys are independent, a
   history is linearizable iff each per-key sub-history is. Searching small partitions instead
   of one big history turns an exponential blow-up in the number of keys into a sum.
2. **Search each partition with WGL** (Wing & Gong, 1993; Lowe, "Testing for linearizability",
   2017): the call and return events, sorted by time, form a doubly linked list. In a given
   configuration, the *callable* operations are those whose call precedes the first return
   still in the list (that return's operation must take effect before anything invoked later).
   A depth-first search tries each callable operation that the model accepts with the observed
   output, lifts its call and return out of the list, and goes on; when nothing works it
   backtracks. A configuration whose list holds no return any more is a full linearization.
3. **Memoize** (Lowe's optimisation): the future of the search depends only on *which* operations
   are linearized (a bitset) and the model state, so a configuration that failed once is not
   searched again. This is why model states must be hashable.
4. **Prune by dominance**, two rules that keep busy keys cheap (each is proven where it is used,
   and cross-checked against :func:`check_brute_force`): a callable read-only operation that is
   legal now is linearized now, with no alternative (models opt in with :class:`ReadOnlyHint`);
   and a failed configuration also dooms those that differ only by having linearized *more*
   unconstrained operations.

Outcomes of the client's view map onto the search as follows: ``FAILED`` operations are removed
before the search (they never took effect). ``INDETERMINATE`` (and pending) operations have their
return event at +infinity, so they never force a backtrack; their output is unconstrained; and the
search accepts when only they remain -- i.e. they may also never have taken effect.

Every check has a state budget: a search that runs out reports :attr:`Outcome.UNKNOWN`, which is
neither a pass nor a violation.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from trimaran.simulations.history import History, Key, Operation, OpStatus, partition_by_key

#: Default budget of configurations searched per partition. A state costs roughly 5-10 us, so the
#: worst case of one partition stays within a few seconds. A passing 200-op key needs ~1 000.
states_per_partition_max_default = 500_000

#: The brute-force checker enumerates orderings: factorial growth, so only tiny histories.
brute_force_ops_max = 8


# --- Models ---------------------------------------------------------------------------------------


@runtime_checkable
class Model(Protocol):
    """A deterministic sequential specification of the operations on one key.

    States must be hashable and compare by value (they are memoized together with the set of
    linearized operations); treat them as immutable.
    """

    def init(self) -> Hashable:
        """The state of a key no operation has touched."""
        ...

    def step(self, state: Any, kind: str, args: tuple[Any, ...]) -> tuple[Hashable, Any]:
        """Apply ``kind(*args)`` to ``state``; return ``(new_state, output)``."""
        ...


@runtime_checkable
class NondeterministicModel(Protocol):
    """A sequential specification whose step may have several outcomes, or depend on *when* it ran.

    The hook for time-dependent services (the KV cache's TTLs): ``step_choices`` receives the whole
    :class:`Operation`, so it can see the real-time interval the linearization point lies in, and
    returns every possible ``(new_state, output)``. A TTL model keeps a lower bound of the current
    time in its state (points are ordered, so time only moves forward) and branches on "expired by
    now or not". The checker tries each choice in order, and memoizes them like any other state.
    """

    def init(self) -> Hashable:
        """The state of a key no operation has touched."""
        ...

    def step_choices(self, state: Any, op: Operation) -> Sequence[tuple[Hashable, Any]]:
        """Every possible ``(new_state, output)`` of ``op`` on ``state``, in a fixed order."""
        ...


AnyModel = Model | NondeterministicModel


@runtime_checkable
class ReadOnlyHint(Protocol):
    """Optional, for speed: a model may say which completed operations changed nothing.

    The checker linearizes such an operation as soon as it is legal instead of also trying to
    place it later, which removes most of the branching a busy key's reads cause. The hint must be
    true of *every* state: a ``get`` qualifies, a ``cas`` that output ``False`` qualifies, a
    ``set`` never does (it is a no-op only when the value was already there). A wrong ``True``
    makes the checker report false violations.
    """

    def never_changes_state(self, kind: str, args: tuple[Any, ...], output: Any) -> bool:
        """True if ``kind(*args)`` with this output leaves any state as it was."""
        ...


@dataclass(frozen=True, slots=True)
class ErrorOutput:
    """The output of an operation the service refused deterministically (e.g. incr on text).

    ``code`` is the wire code of the error (``trimaran.errors``), which is what a client sees. The
    refusal is still a linearized read of the state, so such an operation is recorded as ``OK``
    with this as its result (not as ``FAILED``, which would let the checker drop it).
    """

    code: str


#: incr's output when the value is not a decimal integer, or the sum overflows int64.
INVALID_ARGUMENT = ErrorOutput("invalid_argument")
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


class RegisterModel:
    """One key of the register service (``trimaran.services.register``); no TTLs.

    The state is the stored value (bytes), or ``None`` when absent:

    =================== =====================================================================
    ``get()``           the value, or ``None`` if absent
    ``set(value)``      ``None``; the key now holds ``value``
    ``cas(exp, new)``   ``True`` and stores ``new`` iff the value equals ``exp`` (``None``: absent)
    ``delete()``        ``True`` iff the key existed; the key is now absent
    ``incr(delta)``     the new int, stored as its decimal ASCII; an absent key counts as 0; a
                        value that is not a decimal integer, a non-int delta or an int64 overflow
                        leaves the key alone and outputs :data:`INVALID_ARGUMENT`
    =================== =====================================================================

    A KV model with TTLs is meant to be a :class:`NondeterministicModel` over states
    ``(value, expires_at, now_lower_bound)`` that reuses :meth:`apply` once it has settled
    whether the key expired before the operation's point.
    """

    def init(self) -> Hashable:
        """A key starts absent."""
        return None

    def step(self, state: Any, kind: str, args: tuple[Any, ...]) -> tuple[Hashable, Any]:
        """Apply one operation; see the class docstring for the table of operations."""
        return self.apply(state, kind, args)

    @staticmethod
    def apply(value: Any, kind: str, args: tuple[Any, ...]) -> tuple[Hashable, Any]:
        """The register semantics on a bare value (shared with richer models)."""
        if kind == "get":
            return value, value
        if kind == "set":
            (new,) = args
            return new, None
        if kind == "cas":
            expected, new = args
            if value == expected:
                return new, True
            return value, False
        if kind == "delete":
            return None, value is not None
        if kind == "incr":
            (delta,) = args
            total = _incremented(value, delta)
            if total is None:
                return value, INVALID_ARGUMENT
            return str(total).encode(), total
        raise ValueError(f"RegisterModel has no operation {kind!r}")

    def never_changes_state(self, kind: str, args: tuple[Any, ...], output: Any) -> bool:
        """Reads, and refused or failed conditional writes, change nothing (see ReadOnlyHint)."""
        if kind == "get":
            return True
        if kind in ("cas", "delete"):
            return output is False
        return kind == "incr" and output == INVALID_ARGUMENT


def _incremented(value: Any, delta: Any) -> int | None:
    """``value + delta`` as the register service computes it, or None where it refuses."""
    # Mirrors RegisterService.apply: same parser (int() of the bytes), same int64 bounds.
    if type(delta) is not int:
        return None
    if value is None:
        value = b"0"
    if type(value) is not bytes:
        return None
    try:
        total = int(value) + delta
    except ValueError:
        return None
    return total if INT64_MIN <= total <= INT64_MAX else None


# --- Results --------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    """The verdict of a check."""

    #: Every partition is linearizable.
    OK = "ok"
    #: Some partition is not linearizable: a real bug (in the system or in the model).
    VIOLATION = "violation"
    #: The search ran out of budget before deciding; no verdict.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict of a check, with what is needed to understand a failure.

    On ``VIOLATION`` (or ``UNKNOWN``), ``key`` names the partition, ``operations`` holds its
    operations -- for a violation, only those invoked before the latest point the search ever
    reached, which are already enough to be non-linearizable -- and ``longest_prefix`` is the
    longest sequence of them the search managed to linearize.
    """

    outcome: Outcome
    key: Key | None = None
    operations: tuple[Operation, ...] = ()
    longest_prefix: tuple[Operation, ...] = ()
    #: Configurations (linearized set, model state) searched, over all partitions searched.
    states_explored: int = 0
    #: Calls of the model (step or step_choices), over all partitions searched.
    model_steps: int = 0
    partitions_checked: int = 0

    @property
    def ok(self) -> bool:
        """True only if the history was proven linearizable (never on an unfinished search)."""
        return self.outcome is Outcome.OK

    @property
    def violated(self) -> bool:
        """True only if the history was proven non-linearizable."""
        return self.outcome is Outcome.VIOLATION

    def explain(self) -> str:
        """A multi-line report for a human (or a failing test)."""
        lines = [
            f"linearizability: {self.outcome.value} (partitions {self.partitions_checked}, "
            f"states {self.states_explored}, model steps {self.model_steps})"
        ]
        if self.outcome is Outcome.OK:
            return lines[0]
        lines.append(f"key {self.key!r}; operations ({len(self.operations)}):")
        lines.extend("  " + op.describe() for op in self.operations)
        lines.append(f"longest linearizable prefix ({len(self.longest_prefix)}):")
        lines.extend("  " + op.describe() for op in self.longest_prefix)
        return "\n".join(lines)


# --- Shared plumbing ------------------------------------------------------------------------------

Successors = Callable[[Hashable, Operation], Sequence[tuple[Hashable, Any]]]


def _successors_of(model: AnyModel) -> Successors:
    """One calling convention for both kinds of model: ``(state, op) -> [(state, output), ...]``."""
    if isinstance(model, NondeterministicModel):
        return model.step_choices
    step = model.step
    return lambda state, op: (step(state, op.kind, op.args),)


def _is_constrained(op: Operation) -> bool:
    """Whether the op must be linearized with its observed output (only OK ops)."""
    return op.status is OpStatus.OK


def _same_output(output: Any, observed: Any) -> bool:
    """Equality that also compares types: ``True == 1`` must not let a cas pass for an incr."""
    return type(output) is type(observed) and output == observed


def _live_operations(history: History | Sequence[Operation]) -> list[Operation]:
    """The operations that may have taken effect, by op id; validates the history's shape."""
    operations = list(history.operations if isinstance(history, History) else history)
    operations.sort(key=lambda op: op.op_id)
    for before, after in zip(operations, operations[1:]):
        if before.op_id == after.op_id:
            raise ValueError(f"duplicate op_id {after.op_id}")
    live = []
    for op in operations:
        if op.status is OpStatus.FAILED:
            continue
        if op.status is OpStatus.OK:
            if op.complete_time is None or op.complete_time < op.invoke_time:
                raise ValueError(f"OK operation without a valid interval: {op.describe()}")
        live.append(op)
    return live


# --- WGL search -----------------------------------------------------------------------------------


class _EntryList:
    """The time-sorted call/return events of one partition as a doubly linked list.

    Positions ``1..n`` are the events in time order; ``0`` is the head sentinel and ``n + 1`` the
    tail sentinel. Unconstrained ops have no return event: "at +infinity" and "absent" are the
    same to the search, which accepts as soon as it reaches the tail.
    """

    __slots__ = ("op_of", "is_call", "return_of", "nxt", "prv", "tail")

    def __init__(self, ops: Sequence[Operation]) -> None:
        events: list[tuple[int, int, int, int]] = []
        for index, op in enumerate(ops):
            # At equal times calls sort before returns: intervals sharing an endpoint overlap,
            # because A precedes B only if A.complete_time < B.invoke_time.
            events.append((op.invoke_time, 0, op.op_id, index))
            if _is_constrained(op):
                assert op.complete_time is not None
                events.append((op.complete_time, 1, op.op_id, index))
        events.sort()
        size = len(events)
        self.tail = size + 1
        self.op_of = [-1] + [event[3] for event in events] + [-1]
        self.is_call = [False] + [event[1] == 0 for event in events] + [False]
        self.return_of = [-1] * len(ops)
        for position, event in enumerate(events, start=1):
            if event[1] == 1:
                self.return_of[event[3]] = position
        self.nxt = list(range(1, size + 2)) + [self.tail]
        self.prv = [0] + list(range(0, size + 1))

    def lift(self, call: int) -> None:
        """Remove a call and its return (if any) from the list."""
        nxt, prv = self.nxt, self.prv
        nxt[prv[call]] = nxt[call]
        prv[nxt[call]] = prv[call]
        ret = self.return_of[self.op_of[call]]
        if ret >= 0:
            nxt[prv[ret]] = nxt[ret]
            prv[nxt[ret]] = prv[ret]

    def unlift(self, call: int) -> None:
        """Undo :meth:`lift` (must be called in the reverse order of the lifts)."""
        nxt, prv = self.nxt, self.prv
        ret = self.return_of[self.op_of[call]]
        if ret >= 0:
            prv[nxt[ret]] = ret
            nxt[prv[ret]] = ret
        prv[nxt[call]] = call
        nxt[prv[call]] = call


def _legal_choices(
    ops: Sequence[Operation], successors: Successors, state: Hashable, index: int
) -> list[Hashable]:
    """The next states of linearizing ``ops[index]`` now that agree with what its client saw."""
    op = ops[index]
    if _is_constrained(op):
        return [new for new, output in successors(state, op) if _same_output(output, op.result)]
    # An unconstrained op that leaves the state as it is can be left out instead: not linearizing
    # it keeps every option open, so linearizing it is never needed (this drops timed-out reads).
    return [new for new, _output in successors(state, op) if new != state]


@dataclass(slots=True)
class _Frame:
    """One configuration on the search path and the ways out of it still to try."""

    state: Hashable
    linearized: int
    #: (call position, next state) pairs: every legal way to linearize a callable op now.
    candidates: list[tuple[int, Hashable]]
    tried_count: int = 0
    #: The call lifted to reach the child configuration currently above this one.
    lifted: int = -1


class _FailedConfigurations:
    """Configurations proven to have no way to the end, with subsumption on unconstrained ops.

    Lowe's memo, strengthened: a configuration is (constrained ops linearized, unconstrained ops
    linearized, state). Linearizing an unconstrained op is optional, so a configuration that
    failed also dooms every one with the same constrained set and state and *more* unconstrained
    ops linearized (it has strictly fewer options). This collapses the branches in which a
    timed-out write took effect but was overwritten before anyone could tell.
    """

    __slots__ = ("_constrained_mask", "_masks")

    def __init__(self, constrained_mask: int) -> None:
        self._constrained_mask = constrained_mask
        # (constrained bits, state) -> antichain of failed unconstrained bitsets.
        self._masks: dict[tuple[int, Hashable], list[int]] = {}

    def dooms(self, linearized: int, state: Hashable) -> bool:
        """True if a failed configuration subsumes this one."""
        masks = self._masks.get((linearized & self._constrained_mask, state))
        if masks is None:
            return False
        free = linearized & ~self._constrained_mask
        return any(failed & ~free == 0 for failed in masks)

    def add(self, linearized: int, state: Hashable) -> None:
        """Record a configuration whose every continuation failed."""
        free = linearized & ~self._constrained_mask
        masks = self._masks.setdefault((linearized & self._constrained_mask, state), [])
        # Supersets of the new mask are now redundant (the new mask was not subsumed itself,
        # or it would never have been explored).
        masks[:] = [failed for failed in masks if free & ~failed != 0]
        masks.append(free)


class _Search:
    """Iterative WGL depth-first search with memoization over one partition."""

    def __init__(self, ops: Sequence[Operation], model: AnyModel, states_max: int) -> None:
        self.ops = ops
        self.successors = _successors_of(model)
        hint = model.never_changes_state if isinstance(model, ReadOnlyHint) else None
        #: Per op: a constrained op that provably left the state alone (see ReadOnlyHint).
        self.read_only = [
            hint is not None and _is_constrained(op) and hint(op.kind, op.args, op.result)
            for op in ops
        ]
        self.states_max = states_max
        self.entries = _EntryList(ops)
        constrained_mask = sum(1 << i for i, op in enumerate(ops) if _is_constrained(op))
        self.failed = _FailedConfigurations(constrained_mask)
        self.states = self.steps = 0
        #: Highest position of a return event that bounded the callable calls (0: none yet).
        self.frontier = 0
        self.longest: list[int] = []

    def expand(self, state: Hashable, linearized: int) -> _Frame | None:
        """The frame of a new configuration, or None if it is already a full linearization."""
        nxt, is_call, op_of = self.entries.nxt, self.entries.is_call, self.entries.op_of
        # Callable ops are those whose call comes before the first unlinearized return: that
        # return's op must take effect before anything invoked after it.
        region, position = [], nxt[0]
        while is_call[position]:
            region.append(position)
            position = nxt[position]
        if position == self.entries.tail:
            return None  # only unconstrained ops remain, and they may never take effect
        self.frontier = max(self.frontier, position)
        constrained: list[tuple[int, Hashable]] = []
        optional: list[tuple[int, Hashable]] = []
        for call in region:
            index = op_of[call]
            self.steps += 1
            for new in _legal_choices(self.ops, self.successors, state, index):
                if self.read_only[index] and new == state:
                    # A legal read-only op can be moved to the front of any completion of this
                    # configuration (nothing pending must precede it, and it changes no state
                    # wherever it sits), so linearizing it now is as good as any other branch.
                    return _Frame(state, linearized, [(call, new)])
                (constrained if _is_constrained(self.ops[index]) else optional).append((call, new))
        # Optional (unconstrained) ops last: configurations that leave them out then fail first,
        # and their failures subsume the branches that linearized them (_FailedConfigurations).
        return _Frame(state, linearized, constrained + optional)

    def run(self, initial: Hashable) -> Outcome:
        """Search from the empty configuration; the outcome of the whole partition."""
        root = self.expand(initial, 0)
        if root is None:
            return Outcome.OK
        stack = [root]
        entries, op_of = self.entries, self.entries.op_of
        while stack:
            frame = stack[-1]
            if frame.tried_count == len(frame.candidates):
                # Every way out failed: so does this configuration. Back up to the parent.
                stack.pop()
                self.failed.add(frame.linearized, frame.state)
                if stack:
                    entries.unlift(stack[-1].lifted)
                continue
            call, new = frame.candidates[frame.tried_count]
            frame.tried_count += 1
            linearized = frame.linearized | 1 << op_of[call]
            if self.failed.dooms(linearized, new):
                continue
            if self.states >= self.states_max:
                return Outcome.UNKNOWN
            self.states += 1
            entries.lift(call)
            frame.lifted = call
            child = self.expand(new, linearized)
            if child is None:
                return Outcome.OK
            stack.append(child)
            if len(stack) - 1 > len(self.longest):
                self.longest = [op_of[f.lifted] for f in stack[:-1]]
        return Outcome.VIOLATION

    def relevant(self) -> list[int]:
        """Operations (ascending indices) whose call precedes the frontier.

        On a violation the search never looked past the frontier, so these ops alone are already
        not linearizable: the same search, on them only, fails the same way.
        """
        entries = self.entries
        return sorted(entries.op_of[p] for p in range(1, self.frontier) if entries.is_call[p])


def check(
    history: History | Sequence[Operation],
    model: AnyModel,
    max_states: int = states_per_partition_max_default,
) -> CheckResult:
    """Decide whether ``history`` is linearizable with respect to the per-key ``model``.

    ``max_states`` bounds the configurations searched *per key*. Partitions are checked
    in order of their first operation; the first violation ends the check (one is enough). A
    partition out of budget makes the result ``UNKNOWN`` unless another one is a violation.
    The result, counters included, depends only on the operations, not on their order in
    ``history``.
    """
    states = steps = checked = 0
    unknown: CheckResult | None = None
    for key, ops in partition_by_key(_live_operations(history)):
        search = _Search(ops, model, max_states)
        outcome = search.run(model.init())
        states, steps, checked = states + search.states, steps + search.steps, checked + 1
        if outcome is Outcome.OK:
            continue
        violated = outcome is Outcome.VIOLATION
        result = CheckResult(
            outcome,
            key,
            tuple(ops[index] for index in search.relevant()) if violated else tuple(ops),
            tuple(ops[index] for index in search.longest),
            states,
            steps,
            checked,
        )
        if violated:
            return result
        if unknown is None:
            unknown = result
    if unknown is not None:
        return CheckResult(
            Outcome.UNKNOWN, unknown.key, unknown.operations, unknown.longest_prefix,
            states, steps, checked,
        )
    return CheckResult(
        Outcome.OK, states_explored=states, model_steps=steps, partitions_checked=checked
    )


# --- Brute force (the reference the search is tested against) -------------------------------------


def check_brute_force(
    history: History | Sequence[Operation],
    model: AnyModel,
    ops_max: int = brute_force_ops_max,
) -> CheckResult:
    """Decide linearizability by trying every ordering; a reference for testing :func:`check`.

    Shares nothing with the WGL search but the model adapter: no partitioning (the state is one
    model state per key), no event list, no memo. It extends a sequence with any operation whose
    real-time predecessors are all placed, in every order, until every ``OK`` operation is placed;
    stopping there, or placing an indeterminate operation anywhere before, covers every subset of
    the indeterminate operations. Factorial time: refuses more than ``ops_max`` live operations.
    """
    live = _live_operations(history)
    if len(live) > ops_max:
        raise ValueError(f"brute force is for at most {ops_max} operations, got {len(live)}")
    successors = _successors_of(model)
    initial = model.init()
    count = len(live)
    required_mask = sum(1 << i for i, op in enumerate(live) if _is_constrained(op))
    # predecessors[i]: mask of the ops that finished before op i was invoked. Only OK ops
    # finish; an indeterminate op may take effect arbitrarily late, so it precedes nothing.
    predecessors = [
        sum(
            1 << j
            for j, other in enumerate(live)
            if _is_constrained(other)
            and other.complete_time is not None
            and other.complete_time < op.invoke_time
        )
        for op in live
    ]
    order: list[int] = []
    longest: list[int] = []
    visited = steps = 0

    def extend(placed: int, states: dict[Key, Hashable]) -> bool:
        nonlocal longest, visited, steps
        visited += 1
        if placed & required_mask == required_mask:
            return True
        for i in range(count):
            if placed >> i & 1 or predecessors[i] & ~placed:
                continue
            op = live[i]
            steps += 1
            for new, output in successors(states.get(op.key, initial), op):
                if _is_constrained(op) and not _same_output(output, op.result):
                    continue
                order.append(i)
                if len(order) > len(longest):
                    longest = list(order)
                if extend(placed | 1 << i, {**states, op.key: new}):
                    return True
                order.pop()
        return False

    outcome = Outcome.OK if extend(0, {}) else Outcome.VIOLATION
    return CheckResult(
        outcome,
        None,
        tuple(live) if outcome is Outcome.VIOLATION else (),
        tuple(live[i] for i in longest) if outcome is Outcome.VIOLATION else (),
        visited,
        steps,
        1,
    )
