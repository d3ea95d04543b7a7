"""Simulator tier 2: the real node driver, on simulated time, replayable from a seed.

Tier 1 (:mod:`trimaran.simulations.run`) drives the pure core with its own event loop. This tier
runs the runtime's own :class:`~trimaran.node.driver.Driver` — its rounds, tick catch-up, inbox
backpressure, writer hand-off and the ordering of after-persist messages — for several nodes in one
trio run, with what is below it replaced by in-memory twins:

- :class:`SimWriter` keeps :class:`~trimaran.node.writer.StorageWriter`'s contract (``submit(seq,
  batch)``, results reported in order through ``driver.on_write_result``; group commit) over the
  memory storage twin, after a simulated fsync delay;
- :class:`SimNetwork` carries messages between drivers with seeded delay and loss;
- simulated clients call ``driver.submit_client`` exactly as the client server does.

Everything runs under :func:`trimaran.simulations.trio_tier.run` (MockClock plus seeded
scheduling), so a run replays from its seed: :func:`run_tier2` returns a digest of its trace.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import trio

from trimaran.cluster.raft import Role
from trimaran.cluster.replica import Replica
from trimaran.node.config import Address, NodeConfig, PeerSpec
from trimaran.node.driver import Driver
from trimaran.node.writer import WriteResult
from trimaran.protocols.messages import Message
from trimaran.services.register import RegisterService
from trimaran.simulations import trio_tier
from trimaran.simulations.harness import sub_seed
from trimaran.simulations.history import History, OpStatus
from trimaran.simulations.invariants import InvariantViolation, RaftInvariants
from trimaran.simulations.linearizability import RegisterModel, check
from trimaran.storage.base import WriteBatch
from trimaran.storage.memory import MemoryStorage


class SimWriter:
    """StorageWriter's contract over MemoryStorage, on simulated time (one fsync per group)."""

    def __init__(self, storage: MemoryStorage, rng: random.Random, fsync_ms: tuple[float, float]) -> None:
        self.storage = storage
        self.driver: Driver | None = None
        self._rng = rng
        self._fsync_ms = fsync_ms
        self._queue: list[tuple[int, WriteBatch]] = []
        self._wake = trio.Event()
        self.groups_written = 0
        self.batches_written = 0

    def submit(self, seq: int, batch: WriteBatch) -> None:
        self._queue.append((seq, batch))
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                await trio.sleep(self._rng.uniform(*self._fsync_ms) / 1000)
                group, self._queue = self._queue, []
                self.storage.write([batch for _, batch in group], sync=True)
                self.groups_written += 1
                self.batches_written += len(group)
                assert self.driver is not None
                self.driver.on_write_result(WriteResult(group[-1][0], None))


class SimNetwork:
    """Delivers messages between drivers after a seeded delay, losing some."""

    def __init__(self, rng: random.Random, delay_ms: tuple[float, float], loss: float) -> None:
        self._rng = rng
        self.delay_ms = delay_ms
        self.loss = loss
        self.drivers: dict[int, Driver] = {}
        self.nursery: trio.Nursery | None = None
        self.trace: Any = hashlib.sha256()
        self.delivered = 0
        self.dropped = 0
        #: Nodes cut off from everyone (messages to and from them are lost).
        self.isolated: set[int] = set()

    def sender(self, node_id: int) -> Any:
        def send(messages: Sequence[Message]) -> None:
            for msg in messages:
                if self._rng.random() < self.loss or msg.sender in self.isolated or msg.recipient in self.isolated:
                    self.dropped += 1
                    continue
                delay_s = self._rng.uniform(*self.delay_ms) / 1000
                assert self.nursery is not None
                self.nursery.start_soon(self._deliver, msg, delay_s)

        return send

    async def _deliver(self, msg: Message, delay_s: float) -> None:
        await trio.sleep(delay_s)
        driver = self.drivers.get(msg.recipient)
        if driver is None or msg.sender in self.isolated or msg.recipient in self.isolated:
            self.dropped += 1  # the node is down
            return
        self.delivered += 1
        self.trace.update(f"{trio.current_time():.6f}:{type(msg).__name__}:{msg.sender}>{msg.recipient}:{msg.term}".encode())
        await driver.deliver_peer(msg)


@dataclass
class _Client:
    """Answers land here: the token the driver hands back is (self, request number)."""

    waiting: dict[int, trio.Event] = field(default_factory=dict)
    answers: dict[int, tuple[bool, Any]] = field(default_factory=dict)

    def on_reply(self, seq: int, ok: bool, value: Any) -> None:
        self.answers[seq] = (ok, value)
        event = self.waiting.pop(seq, None)
        if event is not None:
            event.set()


@dataclass
class Tier2Result:
    seed: int
    ok: bool
    digest: str
    ops: int
    ops_ok: int
    crashes: int
    sim_seconds: float
    delivered: int
    dropped: int
    problem: str = ""

    def line(self) -> str:
        return (
            f"tier2 seed={self.seed} result={'pass' if self.ok else 'fail'} ops={self.ops} ok_ops={self.ops_ok} "
            f"crashes={self.crashes} sim_seconds={self.sim_seconds:.1f} delivered={self.delivered} dropped={self.dropped} digest={self.digest}"
            + (f" problem={self.problem}" if self.problem else "")
        )


class Tier2Cluster:
    """N real drivers over memory storage and a simulated network, with crash and restart."""

    def __init__(self, seed: int, node_count: int, loss: float, mutants: frozenset[str] = frozenset()) -> None:
        self.seed = seed
        self.mutants = mutants
        self.ids = tuple(range(1, node_count + 1))
        self.network = SimNetwork(random.Random(sub_seed(seed, "network")), (0.2, 3.0), loss)
        self.storages = {n: MemoryStorage() for n in self.ids}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.replicas: dict[int, Replica] = {}
        self.invariants = RaftInvariants()
        self.boots = 0

    def config(self, node_id: int) -> NodeConfig:
        peers = tuple(PeerSpec(n, Address("127.0.0.1", 9000 + n)) for n in self.ids if n != node_id)
        return NodeConfig(
            node_id, Address("127.0.0.1", 8000 + node_id), Address("127.0.0.1", 9000 + node_id), peers, "sim",
            tick_ms=10, request_timeout_ms=2_000,
        )

    async def boot(self, node_id: int, nursery: trio.Nursery) -> None:
        config = self.config(node_id)
        storage = self.storages[node_id]
        state = storage.load()
        rng = random.Random(sub_seed(self.seed, "node", node_id, self.boots))
        self.boots += 1
        raft_config = dataclasses.replace(config.raft_config(), mutants=self.mutants)
        replica = Replica(raft_config, rng, [RegisterService()], state.hard_state, state.snapshot, state.entries, config.replica_config())
        writer = SimWriter(storage, random.Random(sub_seed(self.seed, "disk", node_id, self.boots)), (0.05, 0.5))
        clock = self._wall_clock_ms
        driver = Driver(config, replica, writer, self.network.sender(node_id), lambda n: None, wall_clock_ms=clock)  # type: ignore[arg-type]
        writer.driver = driver
        scope = trio.CancelScope()
        self.scopes[node_id] = scope
        self.replicas[node_id] = replica
        self.invariants.node_restarted(node_id)

        async def life() -> None:
            with scope:
                async with trio.open_nursery() as inner:
                    inner.start_soon(writer.run)
                    await inner.start(driver.run)
                    self.network.drivers[node_id] = driver

        nursery.start_soon(life)
        await trio.sleep(0)

    def crash(self, node_id: int) -> None:
        """Power loss: the tasks stop where they are; unsynced writes are lost."""
        self.network.drivers.pop(node_id, None)
        self.replicas.pop(node_id, None)
        self.scopes.pop(node_id).cancel()
        self.storages[node_id].crash()

    @staticmethod
    def _wall_clock_ms() -> int:
        return int(trio.current_time() * 1000)

    def leader(self, rng: random.Random | None = None) -> Driver | None:
        """A node that believes it leads. With ``rng``, any of them, as a real client that cannot
        see terms might reach a deposed leader; without, the one of the highest term."""
        leaders = [d for _, d in sorted(self.network.drivers.items()) if d.replica.raft.role == Role.LEADER]
        if not leaders:
            return None
        if rng is not None:
            return rng.choice(leaders)
        return max(leaders, key=lambda d: d.replica.raft.term)

    def check_invariants(self) -> None:
        self.invariants.check((n, r.raft) for n, r in sorted(self.replicas.items()))


async def _client(cluster: Tier2Cluster, client_no: int, history: History, rng: random.Random, ops: int) -> None:
    """Registers, then runs ``ops`` operations; each is retried with the same sequence number."""
    me = _Client()
    request = 0

    async def call(op: str, body: dict[str, Any], timeout_s: float) -> tuple[bool, Any] | None:
        nonlocal request
        with trio.move_on_after(timeout_s):
            while True:
                leader = cluster.leader(rng)
                if leader is None:
                    await trio.sleep(0.05)
                    continue
                request += 1
                event = trio.Event()
                me.waiting[request] = event
                await leader.submit_client(op, body, (me, request), 64)
                with trio.move_on_after(0.5):
                    await event.wait()
                answer = me.answers.pop(request, None)
                if answer is not None and (answer[0] or getattr(answer[1], "code", "") not in ("not_leader", "unavailable", "timeout")):
                    return answer
                await trio.sleep(0.02)
        return None

    registered = await call("register", {}, 30)
    if registered is None or not registered[0]:
        return
    client_id, seq = registered[1], 0
    for _ in range(ops):
        await trio.sleep(rng.uniform(0.02, 0.25))  # think time: spreads the ops across the faults
        key = b"k%d" % rng.randrange(2)
        if rng.random() < 0.4:
            op_id = history.invoke(client_no, key, "get", (), int(trio.current_time() * 1e6))
            answer = await call("read", {"service": "register", "query": ["get", key], "consistency": "linearizable"}, 3)
            status = OpStatus.OK if answer and answer[0] else OpStatus.FAILED
            history.complete(op_id, status, answer[1] if answer and answer[0] else None, int(trio.current_time() * 1e6))
            continue
        seq += 1
        delta = rng.randrange(1, 5)
        op_id = history.invoke(client_no, key, "incr", (delta,), int(trio.current_time() * 1e6))
        body = {"client_id": client_id, "seq": seq, "ack_seq": seq - 1, "service": "register", "command": ["incr", key, delta]}
        answer = await call("command", body, 3)
        if answer is not None and answer[0]:
            history.complete(op_id, OpStatus.OK, answer[1], int(trio.current_time() * 1e6))
        else:
            return  # outcome unknown: leave it indeterminate, and stop (later seqs would reuse it)


async def _run(
    seed: int, node_count: int, clients: int, ops_per_client: int, loss: float, crashes: int, mutants: frozenset[str]
) -> Tier2Result:
    cluster = Tier2Cluster(seed, node_count, loss, mutants)
    rng = random.Random(sub_seed(seed, "faults"))
    history = History()
    problem = ""
    crashed = 0
    async with trio.open_nursery() as nursery:
        cluster.network.nursery = nursery
        for n in cluster.ids:
            await cluster.boot(n, nursery)

        async def faults() -> None:
            nonlocal crashed
            for _ in range(crashes):
                await trio.sleep(rng.uniform(0.3, 1.5))
                leader = cluster.leader()
                victim = rng.choice(cluster.ids) if rng.random() < 0.3 or leader is None else leader.config.node_id
                if rng.random() < 0.5:
                    # Partition: the victim keeps running, cut off, then rejoins with stale state.
                    cluster.network.isolated.add(victim)
                    await trio.sleep(rng.uniform(0.3, 1.5))
                    cluster.network.isolated.discard(victim)
                elif victim in cluster.scopes:
                    cluster.crash(victim)
                    crashed += 1
                    await trio.sleep(rng.uniform(0.2, 1.0))
                    await cluster.boot(victim, nursery)

        async def checker() -> None:
            while True:
                await trio.sleep(0.01)
                cluster.check_invariants()

        nursery.start_soon(checker)
        async with trio.open_nursery() as workload:
            workload.start_soon(faults)
            for c in range(clients):
                workload.start_soon(_client, cluster, c + 1, history, random.Random(sub_seed(seed, "client", c)), ops_per_client)
        cluster.check_invariants()
        nursery.cancel_scope.cancel()
    sim_seconds = trio.current_time()
    history.finalize()
    result = check(history, RegisterModel())
    if not result.ok:
        problem = "linearizability: " + result.explain()[:300] if result.violated else "linearizability check unfinished"
    digest = cluster.network.trace.hexdigest()[:16]
    ok_ops = sum(1 for op in history if op.status == OpStatus.OK)
    return Tier2Result(seed, not problem, digest, len(history), ok_ops, crashed, sim_seconds, cluster.network.delivered, cluster.network.dropped, problem)


def run_tier2(
    seed: int,
    node_count: int = 3,
    clients: int = 3,
    ops_per_client: int = 30,
    loss: float = 0.05,
    crashes: int = 3,
    mutants: frozenset[str] = frozenset(),
) -> Tier2Result:
    """One tier-2 run; the same arguments give the same digest, in any process. An invariant
    violation inside the run is reported as a failed result naming it."""
    try:
        return trio_tier.run(seed, lambda: _run(seed, node_count, clients, ops_per_client, loss, crashes, mutants))
    except BaseException as exc:  # noqa: BLE001 - an invariant violation may arrive in an ExceptionGroup
        violation = _find_violation(exc)
        if violation is None:
            raise
        return Tier2Result(seed, False, "-", 0, 0, 0, 0.0, 0, 0, f"invariant: {violation}")


def _find_violation(exc: BaseException) -> InvariantViolation | None:
    if isinstance(exc, InvariantViolation):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_violation(inner)
            if found is not None:
                return found
    return None
