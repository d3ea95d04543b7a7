"""The seeded event loop: N Replicas over the memory storage twin, a faulty network, drifting
clocks, simulated clients, and the checkers, all driven from one seed.

Events live in a heap keyed by (time in µs, sequence number): ties break in the order events were
scheduled, so a run is a pure function of (seed, plan, config). Each node is a :class:`SimNode`,
the same pure driver the harness uses, fed exactly what the trio runtime feeds a Replica: ticks
of its own clock, messages, client requests stamped with its own wall clock (offset, drifting and
jumping: :meth:`_Slot.local_us`), and "this batch is durable" after a simulated fsync. The services
are the KV cache, wrapped to report each entry's log time and evictions to a :class:`LogClock`,
the auth service, wrapped to report what it applied to an :class:`AuthRecord`, the job queue,
wrapped to report every entry it applied to a :class:`JobsRecord` (checked against a model of the
queue as it goes: :mod:`.jobs_check`), and the chat service, wrapped to report every publish
applied (:mod:`.chat_edge`); each node's edge
(:class:`NodeEdge`) authorises every client request against its own replica's auth state before
the replica sees it, and re-checks its live connections after every apply round, and each node's
chat hub feeds the subscribers attached to it from what it applied (:mod:`.chat_workload`).
Persist-before-speak holds by construction: SimNode releases a Ready's ``messages_after_persist``
only when its batch syncs, and a crash between write and sync loses both.

Timeline of a run: faults from the plan until ``heal_us``; then every fault heals (except failed
disks, which are permanent) and a functional leader must appear within 10 election timeouts;
clients stop issuing at ``stop_us``, a final reader reads every key, every member must catch up
with the leader, and the run ends then (reaching ``end_us`` first is a liveness failure).

Checks run as the run goes: Raft's invariants and the protocol rules (:mod:`.rules`) after every
Ready, exactly-once on every application, an event-rate alarm for livelocks; the rest at the end
(:mod:`.verdict`). The first failure stops the run and is kept in :attr:`Simulation.failure`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
from array import array
from dataclasses import dataclass
from typing import Any, Callable

from trimaran import limits
from trimaran.cluster.config import RaftConfig
from trimaran.cluster.raft import MUTANTS, Role
from trimaran.cluster.replica import REPLICA_MUTANTS, ReplicaConfig, Reply
from trimaran.errors import AuthError, TrimaranError
from trimaran.protocols import messages as m
from trimaran.services.auth import AUTH_MUTANTS
from trimaran.services.jobs import JOBS_MUTANTS
from trimaran.services.chat import CHAT_MUTANTS
from trimaran.services.chat.feed import FEED_MUTANTS
from trimaran.services.kv import KV_MUTANTS
from trimaran.simulations.auth_edge import AuthRecord, Need, NodeEdge, RecordingAuth
from trimaran.simulations.auth_workload import ISSUED_BEFORE_MS, AuthAdmin, TokenIssuer
from trimaran.simulations.chat_edge import CHAT_EDGE_MUTANTS
from trimaran.simulations.chat_workload import ChatSide
from trimaran.simulations.checkers import CheckFailure, ExactlyOnce, InvariantViolation, SimInvariants
from trimaran.simulations.driver import SimNode
from trimaran.simulations.faults import FaultInjector
from trimaran.simulations.harness import sub_seed
from trimaran.simulations.jobs_check import JobsRecord, RecordingJobs
from trimaran.simulations.jobs_workload import (
    JOB_RESULT_TTL_MS,
    JOB_TIMEOUT_DEFAULT_MS,
    draw_jobs_shape,
    jobs_need,
    make_jobs_clients,
)
from trimaran.simulations.history import History
from trimaran.simulations.kv_model import LogClock, RecordingKv
from trimaran.simulations.network import SimNetwork
from trimaran.simulations.plan import FaultPlan
from trimaran.simulations.rules import ProtocolRules
from trimaran.simulations.verdict import final_checks
from trimaran.simulations.workload import Client, FinalReader, Request, WorkloadConfig
from trimaran.storage.memory import MemoryStorage

EV_TICK, EV_DELIVER, EV_SYNC, EV_REQUEST, EV_REPLY, EV_TIMER, EV_FAULT, EV_CALL = range(8)

#: What the nodes' wall clocks read at the start of a run (give or take their offsets).
CLOCK_EPOCH_US = 1_000_000_000

#: Shortest run that leaves room for faults, a heal, an election and the final reads.
SIM_SECONDS_MIN = 20.0

#: Event rate (per simulated second) that means a livelock: three times the busiest run seen.
STORM_EVENTS_PER_S = 20_000
STORM_EVENTS_MIN = 4_000

#: Message classes numbered for the trace digest (a fixed order, never hash()).
_MESSAGE_IDS = {
    cls: i
    for i, cls in enumerate(
        (
            m.AppendEntries,
            m.AppendEntriesResponse,
            m.Heartbeat,
            m.HeartbeatResponse,
            m.RequestVote,
            m.RequestVoteResponse,
            m.InstallSnapshot,
            m.InstallSnapshotResponse,
            m.TimeoutNow,
            m.ReadIndexRequest,
            m.ReadIndexResponse,
        )
    )
}

#: The final reader's attempt timeout (the client library's attempt_timeout_ms).
FINAL_ATTEMPT_TIMEOUT_US = 1_000_000


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What a run is, besides its plan and workload (which the seed draws)."""

    seed: int
    nodes: int = 5
    sim_seconds: float = 300.0
    #: Planted bugs (names from MUTANTS, REPLICA_MUTANTS, KV_MUTANTS, AUTH_MUTANTS, JOBS_MUTANTS and the chat ones).
    mutants: frozenset[str] = frozenset()
    #: Nominal tick interval; heartbeats every 2 ticks and elections after 10-20 ticks, as etcd's
    #: defaults (100 ms heartbeat, 1 s election timeout).
    tick_us: int = 100_000
    election_ticks_min: int = 10
    election_ticks_max: int = 20
    heartbeat_ticks: int = 2
    #: Clients stop issuing this long before the end, so their last operations can finish.
    drain_us: int = 6_000_000
    #: Check the protocol rules directly (rules.py) besides their end-to-end consequences.
    rules: bool = True
    #: Run the job queue's producers and workers (off: only to replay a case recorded before they
    #: existed, as a shrunk fault plan in the mutant matrix).
    jobs_workload: bool = True

    def __post_init__(self) -> None:
        known = {*MUTANTS, *REPLICA_MUTANTS, *KV_MUTANTS, *AUTH_MUTANTS, *JOBS_MUTANTS, *CHAT_MUTANTS, *FEED_MUTANTS, *CHAT_EDGE_MUTANTS}
        unknown = sorted(set(self.mutants) - known)
        if unknown:
            raise ValueError(f"unknown mutants: {', '.join(unknown)}")
        if not 1 <= self.nodes <= 15:
            raise ValueError("nodes must be between 1 and 15")
        if self.sim_seconds < SIM_SECONDS_MIN:
            # Faults, a heal, an election and the final reads need this much simulated time.
            raise ValueError(f"sim_seconds must be at least {SIM_SECONDS_MIN}")

    @property
    def end_us(self) -> int:
        return int(self.sim_seconds * 1_000_000)

    @property
    def election_timeout_us_max(self) -> int:
        # The slowest clock (drift of up to 6%) stretches a timeout.
        return self.election_ticks_max * self.tick_us * 106 // 100

    @property
    def liveness_us(self) -> int:
        """After the heal, a leader must appear within 10 election timeouts."""
        return 10 * self.election_timeout_us_max

    @property
    def heal_us(self) -> int:
        quiet = self.liveness_us + self.drain_us + 2_000_000
        return max(self.end_us - quiet, self.end_us * 2 // 5)

    @property
    def stop_us(self) -> int:
        return self.end_us - self.drain_us


class _Slot:
    """The loop's view of one node: lifetime, pause state, clock rate, fsync scheduling."""

    __slots__ = (
        "sim",
        "life",
        "paused",
        "inbox",
        "interval_us",
        "rate",
        "sync_at",
        "crash_at_sync",
        "disk_failed",
        "synced_vote",
        "missed_ticks",
        "tick_us",
        "clock_local_us",
        "clock_real_us",
    )

    def __init__(self, sim: SimNode, interval_us: int, tick_us: int, clock_local_us: int) -> None:
        self.sim = sim
        #: Incremented at every crash and restart: events of an older lifetime are ignored.
        self.life = 0
        self.paused = False
        #: Events that reached the node while it was paused, handled when it resumes.
        self.inbox: list[tuple[int, Any]] = []
        self.interval_us = interval_us
        self.rate = 1.0
        self.sync_at = 0
        #: (mode, down_ms, torn) of a crash armed for the next fsync.
        self.crash_at_sync: tuple[int, int, int] | None = None
        self.disk_failed = False
        #: (term, vote) as last made durable: a sync that changes it carries a new term or vote.
        self.synced_vote = (0, 0)
        #: Ticks that came due while paused: the runtime delivers them first on resume.
        self.missed_ticks = 0
        #: The node's wall clock runs at the pace of its ticks (a nominal ``tick_us`` per tick):
        #: it read ``clock_local_us`` at simulated time ``clock_real_us``.
        self.tick_us = tick_us
        self.clock_local_us = clock_local_us
        self.clock_real_us = 0

    def local_us(self, now_us: int) -> int:
        """What the node's own clock reads at simulated time ``now_us`` (its drift and steps
        included): the ``now_ms`` its runtime would stamp proposals with."""
        elapsed_us = (now_us - self.clock_real_us) * self.tick_us / (self.interval_us * self.rate)
        return self.clock_local_us + int(elapsed_us)

    def set_rate(self, rate: float, now_us: int) -> None:
        """Ticks (and the clock) now come ``rate`` times slower than nominal drift makes them."""
        self.clock_local_us = self.local_us(now_us)
        self.clock_real_us = now_us
        self.rate = rate

    def step_clock(self, step_us: int, now_us: int) -> None:
        """The clock leaps forward."""
        self.clock_local_us = self.local_us(now_us) + step_us
        self.clock_real_us = now_us


class Simulation:
    """One run. Build it, call :meth:`run`; read the counters and :attr:`failure` afterwards."""

    def __init__(self, config: SimConfig, plan: FaultPlan, workload: WorkloadConfig) -> None:
        self.config = config
        self.plan = plan
        self.workload = workload
        self.seed = config.seed
        self.now_us = 0
        self._heap: list[tuple[int, int, int, Any, Any]] = []
        self._seq = 0
        self.node_ids = tuple(range(1, config.nodes + 1))
        self.history = History()
        self.invariants = SimInvariants()
        self.exactly_once = ExactlyOnce(lambda: self.now_us)
        self.net = SimNetwork(random.Random(sub_seed(self.seed, "net")), plan.weather, self._deliver_at)
        #: Log time and evictions per entry, as every replica's KV service applied them.
        self.log_clock = LogClock()
        #: What each node's auth service applied and its edge accepted, for the auth checker.
        self.auth_record = AuthRecord(lambda: self.now_us)
        self.issuer = TokenIssuer(self.seed, CLOCK_EPOCH_US // 1000 - ISSUED_BEFORE_MS)
        self.edges = {n: NodeEdge(self.auth_record, limits.token_leeway_ms_default) for n in self.node_ids}
        #: What each node's jobs service applied, checked against a model of the queue.
        self.jobs_record = JobsRecord(JOB_TIMEOUT_DEFAULT_MS, JOB_RESULT_TTL_MS)
        self._disk_rng = random.Random(sub_seed(self.seed, "disk"))
        #: The chat workload, its nodes' hubs and its record (:mod:`.chat_workload`).
        self.chat = ChatSide(self, config.mutants)
        self.slots: dict[int, _Slot] = {n: self._make_slot(n) for n in self.node_ids}
        self.storages = {n: slot.sim.storage for n, slot in self.slots.items()}
        self.rules = ProtocolRules(self.invariants.leader_of_term) if config.rules else None
        #: Read token -> highest commit index anywhere when the read reached a node.
        self._read_floor: dict[Any, int] = {}
        self.clients: list[Client] = [
            Client(i, workload, random.Random(sub_seed(self.seed, "client", i)), self) for i in range(workload.clients)
        ]
        # The auth admin is the last client: it stops at the heal (see _start).
        admin_workload = dataclasses.replace(workload, think_us_max=workload.auth_think_us_max)
        self.admin = AuthAdmin(
            len(self.clients), admin_workload, random.Random(sub_seed(self.seed, "auth-admin")), self, self.issuer
        )
        self.clients.append(self.admin)
        # The job queue's producers and workers (their shape has its own stream: the KV one is unchanged).
        if config.jobs_workload:
            self.clients.extend(make_jobs_clients(len(self.clients), workload, draw_jobs_shape(self.seed), self.seed, self))
        self.clients.extend(self.chat.make_clients(len(self.clients), workload))
        self.final_reader: FinalReader | None = None
        self.healed = False
        self.leader_ok_us = -1
        #: The leader's commit index when the final reads were done: every member must reach it.
        self.converge_target = -1
        self.lagging: list[tuple[int, int]] = []
        self.failure: CheckFailure | None = None
        self.finished = False
        self.event_count = self.fault_count = self.fault_skipped = 0
        self.crash_count = self.admin_ok = self.disk_failures = 0
        self.linearizability_states = 0
        self._digest = hashlib.blake2b(digest_size=16)
        self._trace = array("q")
        self._storm_mark = (0, 0)
        self.faults = FaultInjector(self)

    def _make_slot(self, node_id: int) -> _Slot:
        cfg, weather = self.config, self.plan.weather
        raft_mutants = frozenset(n for n in cfg.mutants if n in MUTANTS)
        replica_mutants = frozenset(n for n in cfg.mutants if n in REPLICA_MUTANTS)
        raft_config = RaftConfig(
            node_id,
            m.Membership(self.node_ids),
            election_timeout_ticks_min=cfg.election_ticks_min,
            election_timeout_ticks_max=cfg.election_ticks_max,
            heartbeat_interval_ticks=cfg.heartbeat_ticks,
            append_bytes_max=weather.append_bytes,
            inflight_messages_max=weather.inflight,
            snapshot_chunk_bytes=512,
            learner_catchup_entries_max=32,
            mutants=raft_mutants,
        )
        replica_config = ReplicaConfig(
            snapshot_interval_entries=weather.snap_every,
            snapshot_keep_entries=weather.snap_keep,
            mutants=replica_mutants,
        )
        kv_mutants = frozenset(n for n in cfg.mutants if n in KV_MUTANTS)
        kv_settings = self.workload.kv_settings()
        if "ttl_local_clock" in kv_mutants:
            kv_settings["local_clock_ms"] = lambda: self.slots[node_id].local_us(self.now_us) // 1000
        auth_mutants = frozenset(n for n in cfg.mutants if n in AUTH_MUTANTS)
        jobs_settings: dict[str, Any] = {
            "default_timeout_ms": JOB_TIMEOUT_DEFAULT_MS,
            "default_result_ttl_ms": JOB_RESULT_TTL_MS,
            "mutants": frozenset(n for n in cfg.mutants if n in JOBS_MUTANTS),
        }
        if any(n.endswith("_local_clock") for n in jobs_settings["mutants"]):
            jobs_settings["local_clock_ms"] = lambda: self.slots[node_id].local_us(self.now_us) // 1000
        bootstrap = self.issuer.bootstrap()
        sim = SimNode(
            node_id,
            raft_config,
            lambda: [
                RecordingKv(node_id, self.log_clock, mutants=kv_mutants, **kv_settings),
                RecordingAuth(node_id, self.auth_record, bootstrap=bootstrap, mutants=auth_mutants),
                RecordingJobs(node_id, self.jobs_record, **jobs_settings),
                self.chat.service(node_id),
            ],
            random.Random(sub_seed(self.seed, "node", node_id)),
            MemoryStorage(),
            replica_config,
            self.exactly_once.observer(node_id),
        )
        sim.on_apply_entry = self.invariants.on_apply
        drift = weather.drift_pm[node_id - 1] if node_id <= len(weather.drift_pm) else 0
        # Wall clocks start up to a second apart (NTP on a bad day); log time must not care.
        offset_us = random.Random(sub_seed(self.seed, "clock", node_id)).randrange(-1_000_000, 1_000_000)
        return _Slot(sim, cfg.tick_us * (1000 + drift) // 1000, cfg.tick_us, CLOCK_EPOCH_US + offset_us)

    # ================================================================== scheduling

    def schedule(self, at_us: int, kind: int, a: Any = None, b: Any = None) -> None:
        assert at_us >= self.now_us, "an event in the past would turn the clock back"
        self._seq += 1
        heapq.heappush(self._heap, (at_us, self._seq, kind, a, b))

    def call_at(self, at_us: int, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` at ``at_us`` (for the rare events: fault ends, restarts, heal)."""
        self.schedule(at_us, EV_CALL, fn, args)

    def _deliver_at(self, at_us: int, msg: Any) -> None:
        self.schedule(at_us, EV_DELIVER, msg)

    def client_send(self, node_id: int, request: Request) -> None:
        if self.net.lost(0, node_id):
            return
        self.schedule(self.now_us + self.net.latency_us(), EV_REQUEST, node_id, request)

    def client_timer(self, client_index: int, at_us: int, generation: int) -> None:
        self.schedule(max(at_us, self.now_us), EV_TIMER, client_index, generation)

    def credential(self, client_index: int) -> str:
        return self.issuer.credential(client_index)

    # ================================================================== running

    def run(self) -> None:
        """Run to the end, or to the first checker failure (kept in :attr:`failure`)."""
        try:
            self._start()
            self._loop()
            if self.failure is None:
                self._finish()
        except CheckFailure as exc:
            self.failure = exc
        except InvariantViolation as exc:
            self.failure = CheckFailure("invariant", str(exc))
        except (AssertionError, TrimaranError, Exception) as exc:  # noqa: BLE001 - a core crash is a finding
            self.failure = CheckFailure("crash", f"{type(exc).__name__}: {exc}{_where(exc)}")
        self._seal_digest()

    def _start(self) -> None:
        tick_rng = random.Random(sub_seed(self.seed, "phase"))
        for node_id in self.node_ids:
            slot = self.slots[node_id]
            self.schedule(tick_rng.randrange(slot.interval_us), EV_TICK, node_id, slot.life)
        heal_us = self.config.heal_us
        for i, client in enumerate(self.clients):
            client.stop_at_us = self.config.stop_us
            client.start(10_000 + i * 1_000)
        self.admin.stop_at_us = heal_us  # auth changes strike during the faults
        self.chat.start()
        for index, fault in enumerate(self.plan.faults):
            if fault.at_ms * 1000 < heal_us:
                self.schedule(fault.at_ms * 1000, EV_FAULT, index)
        self.call_at(heal_us, self.faults.heal)
        self.call_at(self.config.end_us, self._end_reached)

    def _loop(self) -> None:
        handlers = (
            self._on_tick,
            self._on_deliver,
            self._on_sync,
            self._on_request,
            self._on_reply,
            self._on_timer,
            self._on_fault,
            self._on_call,
        )
        heap, pop, trace = self._heap, heapq.heappop, self._trace
        while heap and not self.finished:
            at_us, _, kind, a, b = pop(heap)
            self.now_us = at_us
            self.event_count += 1
            trace.append(at_us << 3 | kind)
            handlers[kind](a, b)
            if len(trace) > 16_384:
                self._flush_trace()
                self._check_storm()

    def _check_storm(self) -> None:
        """A livelock (say, a leader and a follower bouncing rejections forever) shows up as an
        event rate far above what any workload here produces (at most about 7 000 events per second
        over 4 000 events, in 120 seeds). Slower livelocks fail the convergence check at the end."""
        events = self.event_count - self._storm_mark[1]
        elapsed_us = self.now_us - self._storm_mark[0]
        if events >= STORM_EVENTS_MIN and events * 1_000_000 > STORM_EVENTS_PER_S * max(elapsed_us, 1):
            raise CheckFailure(
                "storm", f"{events} events in {elapsed_us / 1e6:.3f} simulated seconds before {self.now_us / 1e6:.3f}s: a livelock"
            )
        self._storm_mark = (self.now_us, self.event_count)

    def _end_reached(self) -> None:
        self.finished = True

    def _flush_trace(self) -> None:
        self._digest.update(self._trace.tobytes())
        del self._trace[:]

    # ================================================================== event handlers

    def _on_tick(self, node_id: int, life: int) -> None:
        slot = self.slots[node_id]
        if life != slot.life:
            return  # the tick chain of an earlier lifetime
        self._trace.append(node_id)
        self.schedule(self.now_us + max(1, int(slot.interval_us * slot.rate)), EV_TICK, node_id, life)
        if slot.paused:
            slot.missed_ticks += 1
            return
        self._tick(slot)
        self.pump(node_id)

    def _tick(self, slot: _Slot) -> None:
        """One tick, as the runtime's driver gives it: Raft's tick, then the wall clock."""
        slot.sim.tick()
        if slot.sim.up:
            slot.sim.replica.advance_clock(slot.local_us(self.now_us) // 1000)

    def _on_deliver(self, msg: Any, _: Any) -> None:
        node_id = msg.recipient
        slot = self.slots.get(node_id)
        if slot is None or not slot.sim.up:
            return
        # Node ids fit 4 bits (at most 15 members) and message kinds 4 bits.
        self._trace.append((msg.term << 4 | _MESSAGE_IDS[type(msg)]) << 8 | msg.sender << 4 | node_id)
        if slot.paused:
            slot.inbox.append((EV_DELIVER, msg))
            return
        slot.sim.deliver(msg)
        self.pump(node_id)

    def _on_sync(self, node_id: int, life: int) -> None:
        slot = self.slots[node_id]
        if life != slot.life:
            return
        self._trace.append(node_id)
        if slot.paused:
            slot.inbox.append((EV_SYNC, life))
            return
        slot.sync_at = 0
        raft = slot.sim.replica.raft
        vote = (raft.term, raft.vote)
        armed = slot.crash_at_sync
        if armed is not None and armed[0] == 3 and vote == slot.synced_vote:
            armed = None  # waiting for an fsync that carries a new term or vote
        if armed is not None and armed[0] in (1, 3):
            self.faults.crash_now(node_id, armed[1], armed[2])  # before the fsync lands
            return
        slot.synced_vote = vote
        msgs = slot.sim.sync()
        self.invariants.on_synced(node_id, slot.sim.storage.hard_state().term)
        if armed is not None:
            self.faults.crash_now(node_id, armed[1], armed[2])  # durable, but nothing said yet
            return
        send, now = self.net.send, self.now_us
        for msg in msgs:
            send(msg, now)
        self.pump(node_id)

    def _on_request(self, node_id: int, request: Request) -> None:
        slot = self.slots[node_id]
        if not slot.sim.up:
            return
        if slot.paused:
            slot.inbox.append((EV_REQUEST, request))
            return
        kind, token, payload, bearer = request
        self._trace.extend((node_id, token[0], token[1]))
        replica = slot.sim.replica
        now_ms = slot.local_us(self.now_us) // 1000
        auth = replica.services["auth"]
        assert isinstance(auth, RecordingAuth)
        need: Need = None if kind == "register" else ("kv", "read") if kind == "read" else _need(payload[3], payload[4])
        try:
            # The edge, at the node's clock (its wall clock, or the log time applied if later).
            self.edges[node_id].admit(auth, token[0], bearer, need, max(now_ms, replica.last_timestamp_ms))
        except AuthError as exc:
            self._trace.append(-1)
            self._route_reply(node_id, Reply(token, False, exc))
            return
        try:
            if kind == "register":
                replica.register(token, now_ms)
            elif kind == "submit":
                client_id, seq, ack_seq, service, command = payload
                replica.submit(token, client_id, seq, ack_seq, service, command, now_ms, 64)
            else:
                self._read_floor[token] = max(s.sim.replica.raft.log.commit_index for s in self.slots.values())
                replica.read(token, "kv", payload, "linearizable")
        except TrimaranError as exc:
            self._route_reply(node_id, Reply(token, False, exc))
        self.pump(node_id)

    def _on_reply(self, reply: Reply, _: Any) -> None:
        index = reply.token[0]
        self._trace.extend((index, reply.token[1], int(reply.ok)))
        if index < len(self.clients):
            self.clients[index].on_reply(reply)
        elif self.final_reader is not None:
            self.final_reader.on_reply(reply)
            self._maybe_done()

    def _on_timer(self, index: int, generation: int) -> None:
        if index < len(self.clients):
            client = self.clients[index]
            client.on_timer(generation)
            if client.stopped:
                self._maybe_final_reads()
        elif self.final_reader is not None:
            self.final_reader.on_timer(generation)
            self._maybe_done()

    def _on_fault(self, index: int, _: Any) -> None:
        self.faults.apply(index, self.plan.faults[index])

    def _on_call(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        fn(*args)

    # ================================================================== node plumbing

    def pump(self, node_id: int) -> None:
        """Take the node's Readies, send their messages, schedule its fsync, route its replies,
        then check Raft's invariants on it (every property is checked per node, incrementally)."""
        slot = self.slots[node_id]
        sim = slot.sim
        if not sim.up or not sim.replica.has_ready():
            return  # the common case of a tick: nothing to write, send, answer or check
        send, now = self.net.send, self.now_us
        rules = self.rules
        taken = sim.readies_taken
        for _ in range(8):
            before = sim.readies_taken
            msgs = sim.process()
            if sim.readies_taken == before:
                break
            if rules is not None and msgs:
                rules.check_sent(node_id, sim.storage, sim.replica.raft, msgs)
            for msg in msgs:
                send(msg, now)
        took = sim.readies_taken != taken
        if sim.pending and not slot.sync_at:
            jitter = self.plan.weather.fsync_jitter_us if not self.healed else 0
            latency = self.plan.weather.fsync_us + (self.net.rng.randrange(jitter) if jitter else 0)
            slot.sync_at = now + latency
            self.schedule(slot.sync_at, EV_SYNC, node_id, slot.life)
        if took:
            # After the apply round, before anything else reaches the node (the runtime's
            # driver calls its client port's after_round the same way).
            auth = sim.replica.services["auth"]
            assert isinstance(auth, RecordingAuth)
            edge = self.edges[node_id]
            if edge.generation_moved(auth):
                edge.recheck(auth, max(slot.local_us(now) // 1000, sim.replica.last_timestamp_ms))
            self.chat.after_round(node_id)  # the node's subscribers, from what it applied
        if sim.replies:
            for reply in sim.take_replies():
                self._route_reply(node_id, reply)
        # Everything the invariants look at (term, log, commit, applied, becoming leader) changes
        # only together with a Ready, so a tick or message that produced none needs no check.
        if took and sim.up:
            self.invariants.check(((node_id, sim.replica.raft),))
            if rules is not None:
                rules.check_node(node_id, sim.replica.raft, self.storages)

    def _route_reply(self, node_id: int, reply: Reply) -> None:
        token = reply.token
        if token[0] == "admin":
            self.admin_ok += int(reply.ok)
            return
        if token[0] == "chat":  # a history read of the node's own chat hub
            self.chat.on_reply(node_id, reply)
            return
        floor = self._read_floor.pop(token, None)
        if floor is not None and reply.ok and self.rules is not None:
            self.rules.check_read(node_id, self.slots[node_id].sim.replica.applied_index, floor)
        if self.net.lost(node_id, 0):
            return
        self.schedule(self.now_us + self.net.latency_us(), EV_REPLY, reply)

    def resume_inbox(self, node_id: int) -> None:
        """A paused node resumes. Like the runtime's driver, it first takes the ticks that came
        due meanwhile (so an old leader's Check-Quorum runs before it serves anything), then
        what reached it, in arrival order."""
        slot = self.slots[node_id]
        missed, slot.missed_ticks = slot.missed_ticks, 0
        for _ in range(missed):
            self._tick(slot)
        if missed:
            self.pump(node_id)
        inbox, slot.inbox = slot.inbox, []
        for kind, payload in inbox:
            if kind == EV_DELIVER:
                self._on_deliver(payload, None)
            elif kind == EV_SYNC:
                self._on_sync(node_id, payload)
            else:
                self._on_request(node_id, payload)

    def tick_once(self, node_id: int) -> None:
        """An extra tick now (a clock that jumps forward)."""
        slot = self.slots[node_id]
        slot.step_clock(slot.tick_us, self.now_us)
        self._tick(slot)
        self.pump(node_id)

    def restart_tick_chain(self, node_id: int) -> None:
        slot = self.slots[node_id]
        self.schedule(self.now_us + slot.interval_us, EV_TICK, node_id, slot.life)

    def leader(self) -> int | None:
        """The up leader of the highest term, if any."""
        best: tuple[int, int] | None = None
        for node_id, slot in self.slots.items():
            raft = slot.sim.replica.raft
            if slot.sim.up and raft.role == Role.LEADER and (best is None or raft.term > best[0]):
                best = (raft.term, node_id)
        return best[1] if best else None

    # ================================================================== end of run

    def _maybe_final_reads(self) -> None:
        if self.final_reader is not None or not all(c.stopped for c in self.clients):
            return
        # No think time, and a 1 s attempt timeout (trimaran.client's): the final reads must fit in
        # the drain window even after timeouts on the nodes that are down for good (failed disks:
        # seed 400012 has two of five, and two 3 s timeouts filled the whole window).
        workload = dataclasses.replace(
            self.workload, think_us_max=0, attempt_timeout_us=min(self.workload.attempt_timeout_us, FINAL_ATTEMPT_TIMEOUT_US)
        )
        reader = FinalReader(len(self.clients), workload, random.Random(sub_seed(self.seed, "final")), self)
        self.final_reader = reader
        reader.start(self.now_us)

    def _maybe_done(self) -> None:
        reader = self.final_reader
        if reader is not None and reader.done and self.converge_target < 0:
            self.faults.probe_leader()
            leader = self.leader()
            self.converge_target = self.slots[leader].sim.replica.raft.log.commit_index if leader else 0
            self._converge()

    def _converge(self) -> None:
        """The last liveness condition: every member the leader knows catches up with it (a
        follower a leader can never repair is a replication livelock). Ends the run when met."""
        self.lagging = self.lagging_members()
        if not self.lagging:
            self.finished = True
        else:
            self.call_at(self.now_us + self.config.tick_us, self._converge)

    def lagging_members(self) -> list[tuple[int, int]]:
        """(node, applied index) of the leader's members still behind the convergence target."""
        leader = self.leader()
        if leader is None:
            return [(0, 0)]
        members = self.slots[leader].sim.replica.raft.membership.members
        out = []
        for node_id in members:
            slot = self.slots.get(node_id)
            if slot is not None and not slot.disk_failed:
                applied = slot.sim.replica.applied_index if slot.sim.up else -1
                if applied < self.converge_target:
                    out.append((node_id, applied))
        return out

    def _finish(self) -> None:
        final_checks(self)

    def _seal_digest(self) -> None:
        self._flush_trace()
        summary = array("q")
        for node_id in self.node_ids:
            raft = self.slots[node_id].sim.replica.raft
            summary.extend((node_id, raft.term, raft.log.commit_index, raft.log.last_index(), raft.log.applied_index))
        for op in self.history:
            summary.extend((op.op_id, op.complete_time or -1, 0 if op.status is None else len(op.status.value)))
        record = self.auth_record
        summary.extend((len(record.accepted), record.refused, record.closed, sum(map(len, record.applied))))
        summary.extend((len(self.chat.record.applied), *(s.received for s in self.chat.subscribers)))
        self._digest.update(summary.tobytes())
        self._digest.update(repr([(op.op_id, op.result) for op in self.history]).encode())

    @property
    def digest(self) -> str:
        return self._digest.hexdigest()


#: What a command needs of its token, by service: the auth service's commands need ``admin:*``.
_NEEDS: dict[str, Need] = {"kv": ("kv", "write"), "auth": ("admin", "*"), "chat": ("chat", "publish")}


def _need(service: str, command: Any) -> Need:
    return jobs_need(command) if service == "jobs" else _NEEDS[service]


def _where(exc: BaseException) -> str:
    """`` at file:line`` of the innermost frame, to point a crash report at the code."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return ""
    code = tb.tb_frame.f_code
    return f" (at {code.co_filename.rsplit('trimaran/', 1)[-1]}:{tb.tb_lineno} in {code.co_name})"
