"""Simulated clients of the register service, recording a history for the linearizability checker.

Each client opens a session, then issues one operation at a time: get (a linearizable ReadIndex
read), set, cas, incr or delete on a few shared keys. An attempt that times out or fails with a
retryable error is sent again, to the hinted leader or another node, with the SAME (client_id,
seq): the cluster's session table makes the retry exactly-once. An operation whose deadline
passes is given up: indeterminate if any attempt may have been proposed, failed if every attempt
was definitely refused (it then never took effect).

Clients talk to the simulation through a small :class:`ClientContext`, so the loop stays the only
owner of time and events.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from trimaran.cluster.replica import Reply
from trimaran.errors import InvalidArgument, NotLeader, SessionExpired, Unavailable
from trimaran.simulations.checkers import INVALID, CheckFailure
from trimaran.simulations.harness import sub_seed
from trimaran.simulations.history import History, OpStatus

#: A request a client sends to a node: (kind, token, payload); kind is register, submit or read.
Request = tuple[str, tuple[int, int], Any]


class ClientContext(Protocol):
    """What a client may ask of the simulation."""

    now_us: int
    history: History
    node_ids: tuple[int, ...]

    def client_send(self, node_id: int, request: Request) -> None: ...

    def client_timer(self, client_index: int, at_us: int, generation: int) -> None: ...


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """A seed's workload shape (drawn by :func:`draw_workload`)."""

    clients: int = 3
    keys: tuple[bytes, ...] = (b"k0", b"k1")
    think_us_max: int = 200_000
    read_share_pm: int = 300
    attempt_timeout_us: int = 1_500_000
    op_deadline_us: int = 12_000_000


def draw_workload(seed: int) -> WorkloadConfig:
    rng = random.Random(sub_seed(seed, "workload"))
    return WorkloadConfig(
        clients=rng.randint(2, 5),
        keys=tuple(b"k%d" % i for i in range(rng.randint(1, 4))),
        think_us_max=rng.choice([50_000, 200_000, 800_000]),
        read_share_pm=rng.randint(150, 500),
        attempt_timeout_us=rng.choice([800_000, 1_500_000, 3_000_000]),
    )


@dataclass(slots=True)
class PendingOp:
    """The operation a client is working on (a session registration has ``op_id`` -1)."""

    op_id: int
    kind: str
    key: bytes
    args: tuple[Any, ...]
    seq: int
    deadline_us: int
    attempts: list[int] = field(default_factory=list)
    #: Attempts sent and not definitely refused (no "not leader" / "unavailable" answer yet):
    #: any of them may still take effect, so giving up makes the operation indeterminate.
    unknown_attempts: set[int] = field(default_factory=set)


class Client:
    """One simulated client: a session, one operation in flight, retries with the same seq."""

    def __init__(self, index: int, config: WorkloadConfig, rng: random.Random, ctx: ClientContext) -> None:
        self.index = index
        self.config = config
        self.rng = rng
        self.ctx = ctx
        self.client_id = 0
        self.seq = 0
        self.ack_seq = 0
        self.op: PendingOp | None = None
        self.target = rng.choice(ctx.node_ids)
        self.timer_generation = 0
        #: The pending timer ends a back-off after a refusal (not an attempt timeout).
        self.backing_off = False
        self.attempt_count = 0
        self.stop_at_us = 1 << 62
        self.stopped = False
        #: Last value seen per key: what a cas expects.
        self.seen: dict[bytes, bytes | None] = {}
        self.values_made = 0
        self.retries = self.given_up = 0
        #: (op_id, give-up time) of indeterminate ops, for the liveness check.
        self.gave_up_at: list[tuple[int, int]] = []
        #: (client_id, seq) of writes acknowledged OK, for the durability check.
        self.acked_writes: list[tuple[int, int]] = []
        #: History op_id -> (client_id, seq) of every write, to look up its fate in the cluster.
        self.commands: dict[int, tuple[int, int]] = {}

    # ------------------------------------------------------------------ scheduling

    def start(self, at_us: int) -> None:
        self._set_timer(at_us)

    def _set_timer(self, at_us: int, backing_off: bool = False) -> None:
        self.backing_off = backing_off
        self.timer_generation += 1
        self.ctx.client_timer(self.index, at_us, self.timer_generation)

    def on_timer(self, generation: int) -> None:
        if generation != self.timer_generation or self.stopped:
            return
        op = self.op
        if op is None:
            self._begin_next()
        elif self.ctx.now_us >= op.deadline_us:
            self._give_up(op)
        else:
            if not self.backing_off:
                # The attempt timed out: the node may be down or cut off; try another.
                self.retries += 1
                self.target = self._other_node()
            self._attempt()

    # ------------------------------------------------------------------ operations

    def _begin_next(self) -> None:
        now = self.ctx.now_us
        if self.client_id == 0:
            self.op = PendingOp(-1, "register", b"", (), 0, now + self.config.op_deadline_us)
        elif now >= self.stop_at_us:
            self.stopped = True
            return
        else:
            self.op = self._draw_op(now)
        self._attempt()

    def _draw_op(self, now: int) -> PendingOp:
        rng, cfg = self.rng, self.config
        key = rng.choice(cfg.keys)
        roll = rng.randrange(1000)
        if roll < cfg.read_share_pm:
            kind, args = "get", ()
        else:
            kind = rng.choice(["set", "set", "cas", "cas", "incr", "incr", "delete"])
            args = self._write_args(kind, key)
        seq = 0
        if kind != "get":
            self.seq += 1
            seq = self.seq
        op_id = self.ctx.history.invoke(self.client_id, key, kind, args, now)
        if seq:
            self.commands[op_id] = (self.client_id, seq)
        return PendingOp(op_id, kind, key, args, seq, now + self.config.op_deadline_us)

    def _write_args(self, kind: str, key: bytes) -> tuple[Any, ...]:
        rng = self.rng
        if kind == "incr":
            return (rng.randint(1, 9),)
        if kind == "delete":
            return ()
        self.values_made += 1
        # Unique values keep the linearizability search small; a few are not numbers, so incr
        # also meets the service's refusal.
        unique = self.index * 1_000_000 + self.values_made
        new = (b"x%d" if rng.random() < 0.1 else b"%d") % unique
        if kind == "set":
            return (new,)
        return (self.seen.get(key) if rng.random() < 0.8 else None, new)

    def _attempt(self) -> None:
        op = self.op
        assert op is not None
        self.attempt_count += 1
        attempt = self.attempt_count
        op.attempts.append(attempt)
        op.unknown_attempts.add(attempt)
        token = (self.index, attempt)
        if op.kind == "register":
            request: Request = ("register", token, None)
        elif op.kind == "get":
            request = ("read", token, ["get", op.key])
        else:
            command = [op.kind, op.key, *op.args]
            request = ("submit", token, (self.client_id, op.seq, self.ack_seq, command))
        self.ctx.client_send(self.target, request)
        self._set_timer(self.ctx.now_us + self.config.attempt_timeout_us)

    # ------------------------------------------------------------------ replies

    def on_reply(self, reply: Reply) -> None:
        op = self.op
        attempt = reply.token[1]
        if op is None or attempt not in op.attempts or self.stopped:
            return  # an answer to an operation already finished
        if reply.ok:
            self._complete(op, reply.value)
            return
        exc = reply.value
        if isinstance(exc, InvalidArgument) and op.kind not in ("register", "get"):
            # The service's deterministic refusal (incr on a non-number): a read of the state.
            self._complete(op, INVALID)
            return
        if isinstance(exc, SessionExpired):
            raise CheckFailure(
                "durability", f"client {self.client_id} seq {op.seq}: session lost after it was acknowledged ({exc.message})"
            )
        # Retryable (not leader, unavailable, outcome unknown after a snapshot): try again soon.
        if isinstance(exc, (NotLeader, Unavailable)):
            # Refused before proposal, or its entry was overwritten: this attempt never applies.
            op.unknown_attempts.discard(attempt)
        self.retries += 1
        hint = exc.leader_hint if isinstance(exc, NotLeader) else None
        self.target = hint if hint in self.ctx.node_ids else self._other_node()
        backoff = self.rng.randint(5_000, 30_000 if hint else 150_000)
        self._set_timer(min(self.ctx.now_us + backoff, op.deadline_us), backing_off=True)

    def _complete(self, op: PendingOp, value: Any) -> None:
        now = self.ctx.now_us
        if op.kind == "register":
            self.client_id = value
        else:
            self.ctx.history.complete(op.op_id, OpStatus.OK, value, now)
            if op.kind == "get":
                self.seen[op.key] = value
            else:
                self.ack_seq = op.seq
                self.acked_writes.append((self.client_id, op.seq))
                if op.kind in ("set", "cas") and value is not False:
                    self.seen[op.key] = op.args[-1]
        self.op = None
        self._set_timer(now + self.rng.randint(0, self.config.think_us_max))

    def _give_up(self, op: PendingOp) -> None:
        now = self.ctx.now_us
        self.given_up += 1
        if op.kind != "register":
            status = OpStatus.INDETERMINATE if op.unknown_attempts or op.kind == "get" else OpStatus.FAILED
            self.ctx.history.complete(op.op_id, status, None, now)
            self.gave_up_at.append((op.op_id, now))
        self.op = None
        self._set_timer(now + self.rng.randint(0, self.config.think_us_max))

    def _other_node(self) -> int:
        others = [n for n in self.ctx.node_ids if n != self.target]
        return self.rng.choice(others) if others else self.target

    @property
    def busy(self) -> bool:
        return self.op is not None


class FinalReader(Client):
    """After the clients stop, reads every key once (linearizably) so the history ends with the
    cluster's final state: an acknowledged write lost by a crash shows up as a non-linearizable
    read (the durability check)."""

    def __init__(self, index: int, config: WorkloadConfig, rng: random.Random, ctx: ClientContext) -> None:
        super().__init__(index, config, rng, ctx)
        self.client_id = -1  # reads need no session
        self.script = list(config.keys)
        self.done = False

    def _begin_next(self) -> None:
        if not self.script:
            self.stopped = self.done = True
            return
        key = self.script.pop(0)
        now = self.ctx.now_us
        op_id = self.ctx.history.invoke(self.client_id, key, "get", (), now)
        # No deadline: the final reads must be answered before the run ends (liveness).
        self.op = PendingOp(op_id, "get", key, (), 0, 1 << 62)
        self._attempt()
