"""The chat side of the simulated workload: publishers with presence, and subscribers that drop and
resume on another node, checking what they are sent.

:class:`ChatClient` is a client of the ``chat`` service through a client session, with the KV
clients' retries (the same seq, to the hinted leader or another node) and deadlines: it publishes
(unique data, now and then ephemeral) to a few channels, now and then resets one (its history is
cleared and it gets a new epoch), and keeps a presence session: ``open``
with a short TTL, ``join`` and ``leave`` channels, ``heartbeat`` it now and then but not always in
time, so sessions lapse under the faults and the service leaves their channels at one log position
on every replica. A presence refusal (``PresenceExpired``, ``LimitExceeded``) is an answer of the
state, not a failure: the client opens a new session. Acknowledged publishes are kept for the
end-of-run checks and are in the durability check like any write.

:class:`Subscriber` follows one or two channels through a connection to one node at a time (the
node's :class:`~trimaran.simulations.chat_edge.NodeChat`): it connects to a random node that is up,
subscribes from where it stands (``since=(offset, epoch)``; the first time from offset 0 or live
only), and drops the connection after a random while, or when the node crashes, a request of the
connection fails or the subscription does not go live in time, to resume on another node. It
checks every push as it comes (``chat_delivery``, ``chat_uncommitted``: see
:mod:`trimaran.simulations.chat_edge`).

:class:`ChatSide` joins them to the loop through a few hooks (the loop calls ``after_round`` after
every apply round of a node, ``on_reply`` for the hub's reads, ``node_crashed``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trimaran.cluster.replica import Reply
from trimaran.errors import LimitExceeded, PresenceExpired, TrimaranError
from trimaran.protocols.service import ApplyContext
from trimaran.services.chat import CHAT_MUTANTS, ChatService
from trimaran.services.chat.feed import FEED_MUTANTS
from trimaran.simulations.chat_edge import CHAT_EDGE_MUTANTS, ChatRecord, Connection, NodeChat, RecordingChat, check_chat
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.harness import sub_seed
from trimaran.simulations.workload import Client, PendingOp, WorkloadConfig

if TYPE_CHECKING:
    from trimaran.simulations.loop import Simulation

#: Channels of the workload (a few, so subscribers and publishers meet).
CHANNELS = ("room.0", "room.1", "room.2")
#: Presence TTLs the clients draw (log ms): the shortest lapse between two heartbeats now and then.
PRESENCE_TTL_MS_CHOICES = (1_000, 2_500, 6_000)
#: A subscriber's connection lasts this long at most before it drops and resumes elsewhere.
CONNECTION_US_MIN = 300_000
CONNECTION_US_MAX = 8_000_000
#: Wait before connecting again (after a drop, or when the chosen node was down).
RECONNECT_US_MAX = 400_000


@dataclass(frozen=True, slots=True)
class ChatShape:
    """A seed's chat workload and the chat service's settings (the same on every replica)."""

    publishers: int = 1
    subscribers: int = 3
    think_us_max: int = 300_000
    #: History kept per channel (small, so a subscriber away long enough is told recovered: false).
    history_messages_max: int = 16
    #: History pages (small, so a replay takes several reads).
    history_limit_max: int = 8
    #: The applied-events window (small, so a node back from a snapshot install meets a gap, and
    #: snapshots stay a few KB: the simulator sends them in 512-byte chunks).
    events_max: int = 32
    #: Messages age out of history after this much log time (short in some seeds: channels are
    #: forgotten and made again in a new epoch).
    history_age_ms: int = 24 * 3_600_000

    def service_settings(self) -> dict[str, Any]:
        return {
            "channels_max": 8,
            "message_bytes_max": 64,
            "history_messages_max": self.history_messages_max,
            "history_bytes_max": 4_096,
            "history_bytes_total_max": 8_192,
            "history_age_ms": self.history_age_ms,
            "events_max": self.events_max,
            "events_bytes_max": 8_192,
            "presence_sessions_max": 16,
            "presence_members_max": 8,
            "presence_channels_per_session_max": 4,
            "history_limit_max": self.history_limit_max,
            "query_result_bytes_max": 16_384,
        }


def draw_chat_shape(seed: int) -> ChatShape:
    rng = random.Random(sub_seed(seed, "chat-workload"))
    return ChatShape(
        publishers=1,
        subscribers=rng.randint(2, 3),
        think_us_max=rng.choice([400_000, 1_000_000, 2_000_000]),
        history_messages_max=rng.choice([4, 12, 32]),
        history_limit_max=rng.choice([3, 8, 64]),
        events_max=rng.choice([4, 16, 48]),
        history_age_ms=rng.choice([24 * 3_600_000, 24 * 3_600_000, 15_000]),
    )


class ChatClient(Client):
    """A publisher with a presence session (see the module docstring)."""

    def __init__(self, index: int, config: WorkloadConfig, rng: random.Random, side: ChatSide) -> None:
        super().__init__(index, config, rng, side.sim)
        self.side = side
        self.session_id: int | None = None
        self.published = 0
        #: (channel, data, offset, epoch) of every publish acknowledged (not ephemeral).
        self.acked: list[tuple[str, bytes, int, str]] = []
        self.presence_refusals = 0

    def _begin_next(self) -> None:
        now = self.ctx.now_us
        if self.client_id == 0 or now >= self.stop_at_us:
            super()._begin_next()  # the session first; at the stop time, stop
            return
        self.seq += 1
        kind, command = self._draw_command()
        self.op = PendingOp(-1, kind, b"", (), self.seq, now + self.config.op_deadline_us, command, service="chat")
        self._attempt()

    def _draw_command(self) -> tuple[str, list[Any]]:
        rng = self.rng
        channel = rng.choice(CHANNELS)
        roll = rng.randrange(100)
        sid = self.session_id
        if roll < 65 or (sid is None and roll < 80):
            self.published += 1
            data = b"c%d-%d" % (self.index, self.published)
            if rng.randrange(10) == 0:
                return "ephemeral", ["publish", channel, data, {"ephemeral": True}]
            return "publish", ["publish", channel, data]
        if sid is None:
            return "open", ["open", {"ttl_ms": rng.choice(PRESENCE_TTL_MS_CHOICES)}]
        if roll < 80:
            return "join", ["join", channel, sid, b"i%d" % self.index]
        if roll < 90:
            return "heartbeat", ["heartbeat", sid]
        if roll < 96:
            return "leave", ["leave", channel, sid]
        if roll < 98:
            return "close", ["close", sid]
        return "reset", ["reset", channel]

    def _attempt(self) -> None:
        op = self.op
        if op is not None and op.kind == "publish" and op.attempts and "publish_retry_new_seq" in self.side.mutants:
            self.seq += 1  # the planted bug: the retry leaves the session's deduplication
            op.seq = self.seq
        super()._attempt()

    def on_reply(self, reply: Reply) -> None:
        op = self.op
        if op is not None and op.service == "chat" and not reply.ok and reply.token[1] in op.attempts:
            if isinstance(reply.value, (PresenceExpired, LimitExceeded)) and not self.stopped:
                # The state's answer (the session lapsed, a bound is reached): done, open another.
                self.presence_refusals += 1
                self.session_id = None
                self._complete(op, None)
                return
        super().on_reply(reply)

    def _complete(self, op: PendingOp, value: Any) -> None:
        if op.kind == "register":
            super()._complete(op, value)
            return
        if op.kind == "publish":
            if type(value) is not list or type(value[0]) is not int or type(value[1]) is not str:
                raise CheckFailure("workload", f"chat client {self.index}: answer {value!r} to {op.describe_request()}")
            self.acked.append((op.request[1], op.request[2], value[0], value[1]))
        elif op.kind == "open":
            self.session_id = value[0]
        elif op.kind == "close":
            self.session_id = None
        self.ack_seq = op.seq
        self.acked_writes.append((self.client_id, op.seq))
        self.op = None
        self._set_timer(self.ctx.now_us + self.rng.randint(0, self.side.shape.think_us_max))

    def _give_up(self, op: PendingOp) -> None:
        if op.kind == "register":
            super()._give_up(op)
            return
        # Not in the KV history: its fate is in the chat record (applied at most once, checked).
        self.given_up += 1
        self.op = None
        self._set_timer(self.ctx.now_us + self.rng.randint(0, self.side.shape.think_us_max))


class Subscriber:
    """A WebSocket subscriber that moves between nodes (see the module docstring)."""

    def __init__(self, index: int, channels: tuple[str, ...], rng: random.Random, side: ChatSide) -> None:
        self.index = index
        self.rng = rng
        self.side = side
        #: Channel -> [epoch, last offset received]; last None: never subscribed yet.
        self.state: dict[str, list[Any]] = {ch: [None, None] for ch in channels}
        self.node: int | None = None
        self.generation = 0
        self.received = self.unrecovered = self.connections = 0

    def start(self, at_us: int) -> None:
        self.side.sim.call_at(at_us, self._connect, self.generation)

    def _connect(self, generation: int) -> None:
        if generation != self.generation or self.side.sim.finished:
            return
        sim = self.side.sim
        node = self.rng.choice(sim.node_ids)
        if not self.side.reachable(node):  # refused, or (paused) no answer: try another
            sim.call_at(sim.now_us + self.rng.randint(50_000, RECONNECT_US_MAX), self._connect, generation)
            return
        since: dict[str, tuple[int | None, str | None]] = {}
        for channel, (epoch, last) in self.state.items():
            if last is None and self.rng.random() >= 0.3:
                last = self.state[channel][1] = 0  # everything kept (else live only)
            since[channel] = (last, epoch)
        self.node = node
        self.connections += 1
        sim.call_at(sim.now_us + self.rng.randint(CONNECTION_US_MIN, CONNECTION_US_MAX), self._drop, generation)
        self.side.hubs[node].attach(self, since, sim.slots[node].sim.replica)
        self.side.pump_soon(node)

    def _drop(self, generation: int) -> None:
        if generation == self.generation and self.node is not None:
            self.side.hubs[self.node].detach(self.index)
            self.dropped(self.node)

    def dropped(self, node_id: int) -> None:
        """The connection to ``node_id`` is gone: resume on another node soon."""
        if self.node != node_id:
            return
        self.node = None
        self.generation += 1
        sim = self.side.sim
        sim.call_at(sim.now_us + self.rng.randint(0, RECONNECT_US_MAX), self._connect, self.generation)

    def subscribed(self, channel: str, head: dict[str, Any]) -> None:
        """A live-only subscription learnt where the channel stands: it goes on from there."""
        state = self.state[channel]
        assert state[1] is None, "only a first subscription is live only"
        state[0], state[1] = head["epoch"], head["top"]

    def receive(self, node_id: int, channel: str, push: tuple[Any, ...]) -> None:
        """One push of ``node_id``'s feed: check it against what this subscriber has."""
        assert node_id == self.node, "a push reaches only the connection it was made on"
        state = self.state[channel]
        what = push[0]
        if what == "epoch":
            _, epoch, recovered, last = push
            state[0], state[1] = epoch, last
            self.unrecovered += recovered is False
            return
        if what == "message":
            _, offset, epoch, data, _at_ms = push
        else:
            event = push[1]
            if event[1] != "message":
                return  # presence and ephemeral events: live only, nothing to check in order
            offset, epoch, data = event[3], event[4], event[6]
        self.received += 1
        have_epoch, last = state
        if have_epoch is None and last is not None and offset == last + 1:
            have_epoch = epoch  # a first read names the epoch with its first message
        if last is None or epoch != have_epoch or offset != last + 1:
            problem = "a duplicate" if epoch == have_epoch and last is not None and offset <= last else "a gap or a foreign epoch"
            raise CheckFailure(
                "chat_delivery",
                f"subscriber {self.index} on node {node_id} got offset {offset} of {channel} epoch {epoch} after offset"
                f" {last} of epoch {have_epoch}: {problem} (it was not told recovered: false)",
            )
        applied = self.side.record.applied.get((channel, epoch, offset))
        if applied != data:
            raise CheckFailure(
                "chat_uncommitted",
                f"subscriber {self.index} on node {node_id} was sent {data!r} at offset {offset} of {channel} epoch"
                f" {epoch}, which no replica had applied ({applied!r} there)",
            )
        state[0], state[1] = epoch, offset

    def check_caught_up(self) -> None:
        """At the end: attached live to a node that caught up, it has each channel through its top."""
        sim = self.side.sim
        if self.node is None or not sim.slots[self.node].sim.up:
            return
        conn = self.side.hubs[self.node].connections.get(self.index)
        replica = sim.slots[self.node].sim.replica
        if conn is None or conn.reading or not conn.live or replica.applied_index < sim.converge_target:
            return
        service = replica.services["chat"]
        for channel, (epoch, last) in self.state.items():
            head = service.query(["history", channel, {"limit": 0}], ApplyContext(0, 0))
            if last != head["top"] or (head["top"] and epoch != head["epoch"]):
                raise CheckFailure(
                    "chat_delivery",
                    f"subscriber {self.index}, live on node {self.node}, stopped at offset {last} of {channel} epoch"
                    f" {epoch}; the node has offset {head['top']} of epoch {head['epoch']}: delivery stalled",
                )


class ChatSide:
    """The chat workload of one run and its hooks into the loop (see the module docstring)."""

    def __init__(self, sim: Simulation, mutants: frozenset[str]) -> None:
        self.sim = sim
        self.mutants = mutants
        self.shape = draw_chat_shape(sim.seed)
        self.record = ChatRecord()
        self.settings = self.shape.service_settings()
        edge_mutants = frozenset(m for m in mutants if m in CHAT_EDGE_MUTANTS or m in FEED_MUTANTS)
        self.hubs = {n: NodeChat(n, self._reader(n), edge_mutants) for n in sim.node_ids}
        self.clients: list[ChatClient] = []
        rng = random.Random(sub_seed(sim.seed, "chat-subscribers"))
        self.subscribers = [
            Subscriber(i, tuple(sorted(rng.sample(CHANNELS, rng.randint(1, 2)))), random.Random(sub_seed(sim.seed, "chat-sub", i)), self)
            for i in range(self.shape.subscribers)
        ]
        #: Read id -> (node, connection, channel, query) of the hubs' history reads.
        self._reads: dict[int, tuple[int, Connection, str, list[Any]]] = {}
        self._read_id = 0

    def service(self, node_id: int) -> ChatService:
        """A new chat service for ``node_id``'s replica (at boot and every restart)."""
        service_mutants = frozenset(m for m in self.mutants if m in CHAT_MUTANTS)
        settings = dict(self.settings)
        if "presence_local_clock" in service_mutants:
            settings["local_clock_ms"] = lambda: self.sim.slots[node_id].local_us(self.sim.now_us) // 1000
        return RecordingChat(node_id, self.record, mutants=service_mutants, **settings)

    def make_clients(self, first_index: int, workload: WorkloadConfig) -> list[ChatClient]:
        sim = self.sim
        self.clients = [
            ChatClient(first_index + i, workload, random.Random(sub_seed(sim.seed, "chat-client", i)), self)
            for i in range(self.shape.publishers)
        ]
        return list(self.clients)

    def start(self) -> None:
        for i, sub in enumerate(self.subscribers):
            sub.start(20_000 + i * 7_000)

    # ------------------------------------------------------------------ loop hooks

    def after_round(self, node_id: int) -> None:
        self.hubs[node_id].after_round(self.sim.slots[node_id].sim.replica)

    def node_crashed(self, node_id: int) -> None:
        self.hubs[node_id].close_all()

    def on_reply(self, node_id: int, reply: Reply) -> None:
        read = self._reads.pop(reply.token[1], None)
        if read is not None:
            self.hubs[node_id].on_reply(read[1], read[2], read[3], reply)

    def pump_soon(self, node_id: int) -> None:
        """Let the node answer what the hub asked (unless it is paused: then when it resumes)."""
        self.sim.call_at(self.sim.now_us, self._pump, node_id)

    def _pump(self, node_id: int) -> None:
        if not self.sim.slots[node_id].paused:
            self.sim.pump(node_id)

    def reachable(self, node_id: int) -> bool:
        slot = self.sim.slots[node_id]
        return slot.sim.up and not slot.paused

    def _reader(self, node_id: int) -> Any:
        def read(conn: Connection, channel: str, query: list[Any], consistency: str) -> bool:
            slot = self.sim.slots[node_id]
            if not self.reachable(node_id):
                return False
            self._read_id += 1
            try:
                slot.sim.replica.read(("chat", self._read_id), "chat", query, consistency)
            except TrimaranError:
                return False
            self._reads[self._read_id] = (node_id, conn, channel, query)
            self.pump_soon(node_id)
            return True

        return read

    # ------------------------------------------------------------------ end of run

    def check(self) -> None:
        leader = self.sim.leader()
        assert leader is not None, "a run that ends with its final reads done has a leader"
        service = self.sim.slots[leader].sim.replica.services["chat"]
        assert isinstance(service, ChatService)
        acked = [a for client in self.clients for a in client.acked]
        check_chat(self.record, acked, service, self.subscribers)
