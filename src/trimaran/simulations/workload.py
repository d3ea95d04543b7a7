"""Simulated clients of the KV cache, recording a history for the linearizability checker.

Each client opens a session, then issues one operation at a time on a few shared keys: ``get`` (a
linearizable ReadIndex read), ``set`` (plain, with a TTL, ``if_absent``, or compare-and-swap on the
revision or the value it last saw), ``delete`` (plain or conditional), ``incr`` and ``mset``. An
attempt that times out or fails with a retryable error is sent again, to the hinted leader or
another node, with the SAME (client_id, seq): the cluster's session table makes the retry
exactly-once. An operation whose deadline passes is given up: indeterminate if any attempt may
have been proposed, failed if every attempt was definitely refused (it then never took effect).

The history records what :class:`~trimaran.simulations.kv_model.KvKeyModel` checks: an ``mset``
as one ``set`` per key (its per-key projections), deterministic refusals (a failed condition, an
``incr`` of text) as outputs, since a refusal is a read of the state.

Every request carries the client's token (the simulated nodes authorise at their edge:
:mod:`trimaran.simulations.auth_edge`). A client refused as ``unauthenticated`` (its token revoked,
its key retired, or a key its node has not applied yet) asks the issuer
(:class:`~trimaran.simulations.auth_workload.TokenIssuer`) for its token again, which is a fresh one
if the old one may no longer serve, and retries on another node: a definite refusal (nothing
reached the replica), like "not leader".

Clients talk to the simulation through a small :class:`ClientContext`, so the loop stays the only
owner of time and events.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

from trimaran.cluster.replica import Reply
from trimaran.errors import NotLeader, RequestTimeout, SessionExpired, TrimaranError, Unauthenticated, Unavailable
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.harness import sub_seed
from trimaran.simulations.history import History, OpStatus
from trimaran.simulations.kv_model import NO_COND, Cond, error_output, normalize

#: A request a client sends to a node: (kind, token, payload, bearer token); kind is register,
#: submit or read; ``token`` routes the reply, the bearer token is what the node's edge checks.
Request = tuple[str, tuple[int, int], Any, str]

#: TTLs the clients draw, in log milliseconds: short ones expire between a client's operations.
TTL_MS_CHOICES = (50, 200, 700, 2_000, 6_000)
#: What the KV service charges per key of this workload (short keys and values): a bound on
#: ``maxmemory_bytes`` that leaves room for a few keys, so eviction happens often.
_KEY_COST_BYTES = 256 + 2 + 20


class ClientContext(Protocol):
    """What a client may ask of the simulation."""

    now_us: int
    history: History
    node_ids: tuple[int, ...]

    def client_send(self, node_id: int, request: Request) -> None: ...

    def client_timer(self, client_index: int, at_us: int, generation: int) -> None: ...

    def credential(self, client_index: int) -> str:
        """The token the client presents (the same one until it is refused)."""
        ...


@dataclass(frozen=True, slots=True)
class WorkloadConfig:
    """A seed's workload shape (drawn by :func:`draw_workload`)."""

    clients: int = 3
    keys: tuple[bytes, ...] = (b"k0", b"k1")
    think_us_max: int = 200_000
    read_share_pm: int = 300
    attempt_timeout_us: int = 1_500_000
    op_deadline_us: int = 12_000_000
    #: Share of writes that carry a TTL, per mille.
    ttl_share_pm: int = 300
    #: The KV service's ``maxmemory_bytes`` (policy ``lru``); None: unbounded.
    maxmemory_bytes: int | None = None
    #: The auth admin's think time between commands (trust, retire, revoke).
    auth_think_us_max: int = 3_000_000

    def kv_settings(self) -> dict[str, Any]:
        """The KV service's settings for this workload (the same on every replica)."""
        # A short watch window keeps snapshots to a few KB: the simulator sends them in 512-byte
        # chunks, and a 10,000-event window would make every install thousands of messages.
        return {"maxmemory_bytes": self.maxmemory_bytes, "eviction_policy": "lru", "watch_history_max": 64}


def draw_workload(seed: int) -> WorkloadConfig:
    rng = random.Random(sub_seed(seed, "workload"))
    keys = tuple(b"k%d" % i for i in range(rng.randint(1, 4)))
    # Half the seeds with three keys or more run out of memory now and then: eviction under
    # faults. The bound still holds any two keys, so an mset is never refused for its own size.
    evicting = len(keys) > 2 and rng.random() < 0.5
    clients = rng.randint(2, 5)
    think_us_max = rng.choice([50_000, 200_000, 800_000])
    read_share_pm = rng.randint(150, 500)
    attempt_timeout_us = rng.choice([800_000, 1_500_000, 3_000_000])
    ttl_share_pm = rng.choice([0, 150, 400])
    # Drawn last, so the KV shape of every seed is what it was before auth joined the workload.
    auth_think_us_max = rng.choice([1_000_000, 3_000_000, 8_000_000])
    return WorkloadConfig(
        clients=clients,
        keys=keys,
        think_us_max=think_us_max,
        read_share_pm=read_share_pm,
        attempt_timeout_us=attempt_timeout_us,
        ttl_share_pm=ttl_share_pm,
        maxmemory_bytes=(len(keys) - 1) * _KEY_COST_BYTES + 40 if evicting else None,
        auth_think_us_max=auth_think_us_max,
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
    #: The command sent (a write) or query (a read).
    request: Any = None
    #: History ops of the other keys of an ``mset`` (one per key; ``op_id`` is the first key's).
    more_op_ids: tuple[int, ...] = ()
    attempts: list[int] = field(default_factory=list)
    #: Attempts sent and not definitely refused (no "not leader" / "unavailable" answer yet):
    #: any of them may still take effect, so giving up makes the operation indeterminate.
    unknown_attempts: set[int] = field(default_factory=set)
    #: The service a command goes to (reads are always of the KV cache).
    service: str = "kv"

    def describe_request(self) -> str:
        return f"{self.kind} {self.request!r:.200}"


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
        #: Last (value, revision) seen per key, or None for absent: what a conditional write expects.
        self.seen: dict[bytes, tuple[bytes, int] | None] = {}
        self.values_made = 0
        self.retries = self.given_up = 0
        #: (op_id, give-up time) of indeterminate ops, for the liveness check.
        self.gave_up_at: list[tuple[int, int]] = []
        #: (client_id, seq) of writes acknowledged OK, for the durability check.
        self.acked_writes: list[tuple[int, int]] = []
        #: History op_id -> (client_id, seq) of every write, to look up its fate in the cluster.
        self.commands: dict[int, tuple[int, int]] = {}
        #: The token presented with every request; None: ask the issuer before the next attempt.
        self.bearer: str | None = None
        self.auth_refusals = 0

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
        if rng.randrange(1000) < cfg.read_share_pm:
            op_id = self.ctx.history.invoke(self.client_id, key, "get", (), now)
            return PendingOp(op_id, "get", key, (), 0, now + cfg.op_deadline_us, ["get", key])
        kind = rng.choice(["set", "set", "cas", "cas", "incr", "incr", "delete", "mset"])
        self.seq += 1
        if kind == "mset" and len(cfg.keys) > 1:
            return self._draw_mset(now)
        if kind == "incr":
            delta = rng.choice([1, 2, 5, -3, 9, 1 << 62])  # the last one overflows after a few
            return self._record(now, key, "incr", (delta,), ["incr", key, delta])
        if kind == "delete":
            cond = self._condition(key) if rng.random() < 0.4 else NO_COND
            if cond[0]:
                cond = (False, 0, None)  # delete has no if_absent; revision 0 means the same
            return self._record(now, key, "delete", (cond,), ["delete", key, command_options(None, cond)])
        value = self._new_value()
        ttl_ms = rng.choice(TTL_MS_CHOICES) if rng.randrange(1000) < cfg.ttl_share_pm else None
        cond = self._condition(key) if kind == "cas" else NO_COND
        return self._record(now, key, "set", (value, ttl_ms, cond), ["set", key, value, command_options(ttl_ms, cond)])

    def _draw_mset(self, now: int) -> PendingOp:
        rng = self.rng
        keys = rng.sample(self.config.keys, 2)
        items = []
        for key in keys:
            ttl_ms = rng.choice(TTL_MS_CHOICES) if rng.randrange(1000) < self.config.ttl_share_pm else None
            items.append((key, self._new_value(), ttl_ms))
        command = ["mset", [[k, v] if t is None else [k, v, t] for k, v, t in items]]
        op_ids = [self.ctx.history.invoke(self.client_id, k, "mset", (v, t, NO_COND), now) for k, v, t in items]
        for op_id in op_ids:
            self.commands[op_id] = (self.client_id, self.seq)
        key, value, ttl_ms = items[0]
        return PendingOp(
            op_ids[0], "mset", key, (value, ttl_ms, NO_COND), self.seq, now + self.config.op_deadline_us, command,
            tuple(op_ids[1:]),
        )  # fmt: skip

    def _record(self, now: int, key: bytes, kind: str, args: tuple[Any, ...], command: list[Any]) -> PendingOp:
        op_id = self.ctx.history.invoke(self.client_id, key, kind, args, now)
        self.commands[op_id] = (self.client_id, self.seq)
        return PendingOp(op_id, kind, key, args, self.seq, now + self.config.op_deadline_us, command)

    def _new_value(self) -> bytes:
        # Unique values keep the linearizability search small; a few are not numbers, so incr
        # also meets the service's refusal.
        self.values_made += 1
        unique = self.index * 1_000_000 + self.values_made
        return (b"x%d" if self.rng.random() < 0.1 else b"%d") % unique

    def _condition(self, key: bytes) -> Cond:
        """A condition on what this client last saw of ``key``: mostly right, sometimes stale."""
        rng, seen = self.rng, self.seen.get(key)
        roll = rng.randrange(3)
        if seen is None:
            return (True, None, None) if roll else (False, 0, None)
        if roll == 0:
            return (False, None, seen[0])
        if roll == 1 and rng.random() < 0.2:
            return (True, None, None)
        return (False, seen[1], None)

    def _attempt(self) -> None:
        op = self.op
        assert op is not None
        self.attempt_count += 1
        attempt = self.attempt_count
        op.attempts.append(attempt)
        op.unknown_attempts.add(attempt)
        token = (self.index, attempt)
        if self.bearer is None:
            self.bearer = self.ctx.credential(self.index)
        if op.kind == "register":
            request: Request = ("register", token, None, self.bearer)
        elif op.kind == "get":
            request = ("read", token, op.request, self.bearer)
        else:
            request = ("submit", token, (self.client_id, op.seq, self.ack_seq, op.service, op.request), self.bearer)
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
        if isinstance(exc, Unauthenticated):
            self._refused(op, attempt)
            return
        refusal = error_output(exc.code, exc.details) if isinstance(exc, TrimaranError) else None
        if refusal is not None and op.kind not in ("register", "get"):
            # The service's deterministic refusal (a failed condition, incr on text): a read of
            # the state, so the operation took effect as that read.
            self._complete(op, refusal)
            return
        if isinstance(exc, SessionExpired):
            raise CheckFailure(
                "durability", f"client {self.client_id} seq {op.seq}: session lost after it was acknowledged ({exc.message})"
            )
        if not isinstance(exc, (NotLeader, Unavailable, RequestTimeout)):
            raise CheckFailure("workload", f"client {self.client_id}: unexpected answer {exc!r} to {op.describe_request()}")
        # Retryable (not leader, unavailable, outcome unknown after a snapshot): try again soon.
        if isinstance(exc, (NotLeader, Unavailable)):
            # Refused before proposal, or its entry was overwritten: this attempt never applies.
            op.unknown_attempts.discard(attempt)
        self.retries += 1
        hint = exc.leader_hint if isinstance(exc, NotLeader) else None
        self.target = hint if hint in self.ctx.node_ids else self._other_node()
        backoff = self.rng.randint(5_000, 30_000 if hint else 150_000)
        self._set_timer(min(self.ctx.now_us + backoff, op.deadline_us), backing_off=True)

    def _refused(self, op: PendingOp, attempt: int) -> None:
        """The node's edge refused the token: nothing reached its replica. Ask for the token again
        (a fresh one if this one may no longer serve) and try another node."""
        self.auth_refusals += 1
        self.bearer = None
        op.unknown_attempts.discard(attempt)
        self.retries += 1
        self.target = self._other_node()
        self._set_timer(min(self.ctx.now_us + self.rng.randint(5_000, 150_000), op.deadline_us), backing_off=True)

    def _complete(self, op: PendingOp, value: Any) -> None:
        now = self.ctx.now_us
        if op.kind == "register":
            self.client_id = value
        else:
            value = normalize(value)
            for op_id in (op.op_id, *op.more_op_ids):
                self.ctx.history.complete(op_id, OpStatus.OK, value, now)
            if op.kind == "get":
                self.seen[op.key] = None if value is None else (value[0], value[1])
            else:
                self.ack_seq = op.seq
                self.acked_writes.append((self.client_id, op.seq))
                self._learn(op, value)
        self.op = None
        self._set_timer(now + self.rng.randint(0, self.config.think_us_max))

    def _learn(self, op: PendingOp, value: Any) -> None:
        """What a write's answer says about its key (for the next conditional write)."""
        if op.kind == "set" and type(value) is int:
            self.seen[op.key] = (op.args[0], value)
        elif op.kind == "incr" and isinstance(value, tuple) and len(value) == 2:
            self.seen[op.key] = (b"%d" % value[0], value[1])
        elif op.kind == "delete" and type(value) is bool:
            self.seen[op.key] = None
        elif op.kind == "mset" and type(value) is int:
            for item in op.request[1]:
                self.seen[item[0]] = (item[1], value)
        elif isinstance(value, tuple) and len(value) == 2 and type(value[1]) is int and value[1] == 0:
            self.seen[op.key] = None  # a refused condition said the key is absent

    def _give_up(self, op: PendingOp) -> None:
        now = self.ctx.now_us
        self.given_up += 1
        if op.kind != "register":
            status = OpStatus.INDETERMINATE if op.unknown_attempts or op.kind == "get" else OpStatus.FAILED
            for op_id in (op.op_id, *op.more_op_ids):
                self.ctx.history.complete(op_id, status, None, now)
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
        #: Nodes that timed out or could not name a leader: tried again only when no other is left.
        self.avoided: set[int] = set()

    def _other_node(self) -> int:
        """As a real client does with a node that went silent (trimaran.client's suspects): after
        a timeout or an answer naming no leader, prefer the nodes not yet found wanting. Without
        it, the final reads could keep picking a node whose disk failed (3 s per try) or a removed
        node that never learns of its removal (no leader to name), and miss the drain window
        (simulator seed 301902, 7 nodes)."""
        self.avoided.add(self.target)
        others = [n for n in self.ctx.node_ids if n not in self.avoided]
        if not others:
            self.avoided = {self.target}
            others = [n for n in self.ctx.node_ids if n != self.target] or [self.target]
        return self.rng.choice(others)

    def _begin_next(self) -> None:
        if not self.script:
            self.stopped = self.done = True
            return
        key = self.script.pop(0)
        now = self.ctx.now_us
        op_id = self.ctx.history.invoke(self.client_id, key, "get", (), now)
        # No deadline: the final reads must be answered before the run ends (liveness).
        self.op = PendingOp(op_id, "get", key, (), 0, 1 << 62, ["get", key])
        self._attempt()


def command_options(ttl_ms: int | None, cond: Cond) -> dict[str, Any]:
    """A KV ``set``/``delete`` command's options map from a TTL and a condition (None entries mean "not given")."""
    if_absent, if_revision, if_value = cond
    given = {"ttl_ms": ttl_ms, "if_absent": if_absent or None, "if_revision": if_revision, "if_value": if_value}
    return {name: value for name, value in given.items() if value is not None}
