"""The Replica joins the Raft core to the replicated services and to client sessions.

It is as pure as Raft: the driver feeds it ticks, messages, client requests (with the driver's
wall-clock ``now_ms``, which becomes the leader timestamp of the batch) and persistence reports, and
takes a :class:`ReplicaReady` holding Raft's :class:`~trimaran.cluster.ready.Ready` plus the replies
to send to clients and, now and then, a snapshot to save.

Client commands submitted between two ``ready()`` calls go into ONE log entry (group proposal),
whose payload is ``[timestamp_ms, [[client_id, seq, ack_seq, service, command], ...]]``. A command
with client_id 0 registers a new session; its id is derived from the entry's position in the log,
so every replica assigns the same one.

Any committed entry applies on every replica, whatever its bytes: data that is not such a batch
(undecodable, nested too deep, the wrong shape) applies as nothing, and a batch item that is not a
well-formed command as a ``invalid_argument`` result, with fixed texts, so replicas stay identical
and no byte sequence in the log can stop a node (it would stop it again at every restart).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from trimaran import limits
from trimaran.cluster.config import RaftConfig
from trimaran.cluster.raft import Raft, Role
from trimaran.cluster.ready import Ready
from trimaran.cluster.sessions import Outcome, SessionTable
from trimaran.errors import (
    InvalidArgument,
    NotLeader,
    RequestTimeout,
    SessionExpired,
    TooLarge,
    TrimaranError,
    Unavailable,
    error_from_wire,
)
from trimaran.protocols.codec import brief, depth_exceeds, depth_within, pack, unpack
from trimaran.protocols.messages import ConfChange, Entry, EntryKind, HardState, Message, Snapshot
from trimaran.protocols.service import ApplyContext, Service

#: Positions per entry in a session id: id = index * SESSION_ID_STRIDE + position in the batch.
SESSION_ID_STRIDE = 1 << 16
assert limits.proposal_batch_commands_max < SESSION_ID_STRIDE

CONSISTENCIES = ("linearizable", "lease", "stale")
#: The "service" of a backup in the read queue (service names are never empty).
_BACKUP = ""

#: The answer, on every replica, to the proposer of an entry that is not a command batch.
BAD_ENTRY_TEXT = "the log entry is not a batch of commands; nothing in it was applied"
#: The outcome, on every replica, of a batch item that is not [client_id, seq, ack_seq, service, command].
BAD_COMMAND_TEXT = "the log holds a malformed command here; it was not applied"
#: The outcome of a command on which a service raised something other than a TrimaranError.
SERVICE_FAILED_TEXT = "the service failed on this command; it may be partly applied"

REPLICA_MUTANTS = {
    "dedup_not_in_snapshot": "saved session answers are left out of snapshots",
}


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    #: Take a snapshot after this many entries applied since the last one (§7).
    snapshot_interval_entries: int = 10_000
    #: Log entries kept below a snapshot so slightly lagging followers need no snapshot.
    snapshot_keep_entries: int = 1_000
    #: Sessions idle this long (leader time) expire (thesis §6.3).
    session_timeout_ms: int = 3_600_000
    sessions_max: int = limits.sessions_max
    #: Linearizable reads waiting for their read point or for apply.
    pending_reads_max: int = 65_536
    #: Least leader time between two timestamp-only entries (the precision of expiry on an idle log).
    clock_entry_interval_ms: int = 100
    mutants: frozenset[str] = frozenset()


@dataclass(slots=True)
class Reply:
    """The answer to one client request; ``token`` is whatever the driver passed in."""

    token: Any
    ok: bool
    #: The result when ok, else a TrimaranError.
    value: Any


@dataclass(slots=True)
class ReplicaReady:
    raft: Ready
    replies: list[Reply] = field(default_factory=list)
    #: A snapshot of the applied state to save; call ``on_snapshot_saved`` once it is durable.
    local_snapshot: Snapshot | None = None
    #: With ``local_snapshot``: storage may drop log entries through this index in the same batch.
    compact_through: int = 0


#: Observer of every command applied (simulator checkers): (node-independent) index, position,
#: client_id, seq, service, command, outcome.
ApplyObserver = Callable[[int, int, int, int, str, Any, Outcome], None]


def _err(exc: TrimaranError) -> Outcome:
    return ("err", exc.to_wire())


def _decode_batch(data: bytes) -> tuple[int, list[Any]] | None:
    """An entry's ``(timestamp_ms, items)``, or None if it is not a command batch. Decided by fixed
    limits alone (never by this machine's recursion limit), so every replica decides the same."""
    try:
        payload = unpack(data)
    except TrimaranError:
        return None
    if type(payload) is not list or len(payload) != 2:
        return None
    timestamp_ms, batch = payload
    if type(timestamp_ms) is not int or not 0 <= timestamp_ms < 1 << 63:
        return None
    if type(batch) is not list or len(batch) > limits.proposal_batch_commands_max:
        return None  # more would collide with the session ids of the next entry
    return timestamp_ms, batch


class Replica:
    def __init__(
        self,
        raft_config: RaftConfig,
        rng: random.Random,
        services: Iterable[Service],
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: list[Entry] | None = None,
        config: ReplicaConfig = ReplicaConfig(),
        observer: ApplyObserver | None = None,
    ) -> None:
        self.config = config
        self.raft = Raft(raft_config, rng, hard_state, snapshot, entries)
        self.services: dict[str, Service] = {}
        for svc in services:
            assert svc.name not in self.services and svc.name, "service names unique and non-empty"
            self.services[svc.name] = svc
        #: Each service's state before anything applied: what a snapshot taken before the service
        #: existed (an older version's) stands for, so a node upgraded with a new service still
        #: boots from, and installs, such snapshots.
        self._initial_states: dict[str, Any] = {name: svc.snapshot() for name, svc in self.services.items()}
        self.sessions = SessionTable(config.session_timeout_ms, config.sessions_max)
        self.observer = observer
        self.last_timestamp_ms = 0
        self._stamp_ms = 0
        #: Index of the last timestamp-only entry proposed here (one in flight at a time).
        self._clock_index = 0
        self._batch: list[list[Any]] = []
        self._batch_tokens: list[Any] = []
        self._batch_bytes = 0
        #: Entry index -> (term, one token per batch position) for proposals made here.
        self._proposals: dict[int, tuple[int, list[Any]]] = {}
        self._replies: list[Reply] = []
        self._read_seq = 0
        self._reads: dict[int, tuple[Any, str, Any]] = {}
        self._reads_waiting_apply: deque[tuple[int, int]] = deque()
        self._last_snapshot_index = snapshot.meta.last_index if snapshot else 0
        self._snapshot_in_progress = False
        #: Committed entries that were not a command batch, and batch items not a command (counters).
        self.bad_entries = 0
        self.bad_commands = 0
        if snapshot is not None:
            self._restore(snapshot)
        self._show_unapplied_tail(snapshot.meta.last_index if snapshot else 0)

    # ------------------------------------------------------------------ queries

    @property
    def node_id(self) -> int:
        return self.raft.id

    @property
    def is_leader(self) -> bool:
        return self.raft.role == Role.LEADER

    @property
    def leader_id(self) -> int:
        return self.raft.leader_id

    @property
    def applied_index(self) -> int:
        return self.raft.log.applied_index

    @property
    def reads_asked(self) -> int:
        """Reads (and backup points) asked of this node (a counter for the node's metrics)."""
        return self._read_seq

    def has_ready(self) -> bool:
        return bool(self._batch or self._replies) or self.raft.has_ready()

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        self.raft.tick()

    def step(self, msg: Message) -> None:
        self.raft.step(msg)

    def advance_clock(self, now_ms: int) -> None:
        """The driver's clock reads ``now_ms``. On an idle leader, when a service has a deadline that
        has passed, propose a timestamp-only entry so log time (and so expiry) moves on."""
        if not self.is_leader or self._batch or self.raft.transferee:
            return
        if self._clock_index > self.raft.log.applied_index:
            return  # one timestamp-only entry in flight at a time
        if now_ms - self._stamp_ms < self.config.clock_entry_interval_ms:
            return
        due = [d for d in (svc.next_deadline_ms() for svc in self.services.values()) if d is not None]
        if not due or min(due) > now_ms:
            return
        self._stamp_ms = now_ms
        self._clock_index, _ = self.raft.propose([pack([self._stamp_ms, []])])

    def register(self, token: Any, now_ms: int) -> None:
        """Open a session; the reply's value is the new client id."""
        self._enqueue(token, [0, 0, 0, "", None], now_ms, 16)

    def submit(
        self, token: Any, client_id: int, seq: int, ack_seq: int, service: str, command: Any, now_ms: int, size_bytes: int = 0
    ) -> None:
        """Queue one client command for the next proposal. Raises NotLeader, InvalidArgument, TooLarge.

        A command nested deeper than ``limits.command_depth_max`` (the client edge refuses those)
        or that msgpack cannot encode is answered ``invalid_argument`` when the batch is proposed."""
        if client_id <= 0 or seq <= 0 or ack_seq < 0 or ack_seq >= seq:
            raise InvalidArgument("client_id and seq must be positive, with ack_seq < seq")
        if service not in self.services:
            raise InvalidArgument(f"unknown service {brief(service)}")
        if size_bytes > limits.command_bytes_max:
            raise TooLarge(f"command of {size_bytes} bytes is over command_bytes_max={limits.command_bytes_max}")
        self._enqueue(token, [client_id, seq, ack_seq, service, command], now_ms, size_bytes)

    def _enqueue(self, token: Any, item: list[Any], now_ms: int, size_bytes: int) -> None:
        if not self.is_leader:
            raise NotLeader(leader_hint=self.raft.leader_id or None)
        if (
            len(self._batch) >= limits.proposal_batch_commands_max
            or self._batch_bytes + size_bytes > limits.proposal_batch_bytes_max
        ):
            self.flush()
        self._stamp_ms = max(self._stamp_ms, now_ms)
        self._batch.append(item)
        self._batch_tokens.append(token)
        self._batch_bytes += size_bytes

    def read(self, token: Any, service: str, query: Any, consistency: str = "linearizable") -> None:
        """Queue a read; answered in a later ready() (or the next one, for stale reads)."""
        if service not in self.services:
            raise InvalidArgument(f"unknown service {brief(service)}")
        if consistency not in CONSISTENCIES:
            raise InvalidArgument(f"consistency must be one of {', '.join(CONSISTENCIES)}")
        if consistency == "stale":
            self._answer_query(token, service, query)
            return
        if len(self._reads) >= self.config.pending_reads_max:
            raise Unavailable("too many reads pending")
        self._read_seq += 1
        self._reads[self._read_seq] = (token, service, query)
        self.raft.read_index(self._read_seq, lease=consistency == "lease")

    def backup(self, token: Any) -> None:
        """Answer with a :class:`Snapshot` of the applied state at a linearizable point (a read
        index), for ``trimaran snapshot save``: it holds every write acknowledged before."""
        if len(self._reads) >= self.config.pending_reads_max:
            raise Unavailable("too many reads pending")
        self._read_seq += 1
        self._reads[self._read_seq] = (token, _BACKUP, None)
        self.raft.read_index(self._read_seq, lease=False)

    def change_membership(self, token: Any, change: ConfChange) -> None:
        """Propose a membership change; answered once it is applied."""
        index = self.raft.propose_conf_change(change)
        self._proposals[index] = (self.raft.term, [token])

    def transfer_leadership(self, target: int) -> None:
        self.raft.transfer_leadership(target)

    def on_persisted(self, index: int, term: int) -> None:
        self.raft.on_persisted(index, term)

    def on_snapshot_saved(self, snapshot: Snapshot) -> None:
        """A local snapshot is durable: Raft may now drop the log below it."""
        self.raft.compact(snapshot, self.config.snapshot_keep_entries)
        self._snapshot_in_progress = False

    # ------------------------------------------------------------------ output

    def ready(self) -> ReplicaReady:
        self.flush()
        rd = self.raft.ready()
        out = ReplicaReady(rd)
        if rd.snapshot is not None:
            self._restore(rd.snapshot)
        for entry in rd.committed:
            self._apply_entry(entry)
        for rs in rd.read_states:
            self._on_read_state(rs.context, rs.index, rs.ok)
        self._serve_applied_reads()
        if rd.snapshot is None:
            self._maybe_snapshot(out)
        out.replies, self._replies = self._replies, []
        return out

    # ------------------------------------------------------------------ proposals and apply

    def flush(self) -> None:
        """Propose the commands queued so far as one entry now (``ready()`` does this too)."""
        if not self._batch:
            return
        batch, tokens = self._batch, self._batch_tokens
        self._batch, self._batch_tokens, self._batch_bytes = [], [], 0
        try:
            data = pack([self._stamp_ms, batch])
            fits = depth_within(data, limits.msgpack_depth_max)
        except (ValueError, TypeError, OverflowError):
            fits = False
        if not fits:
            # A command msgpack cannot carry, or too deep for every replica to decode (the client
            # edge checks this; an in-process caller may not have): it alone is refused, and the
            # commands queued with it still go. Never an exception: it would stop the leader.
            batch, tokens = self._refuse_unfit(batch, tokens)
            if not batch:
                return
            data = pack([self._stamp_ms, batch])
            assert depth_within(data, limits.msgpack_depth_max)  # by command_depth_max's relation
        try:
            index, term = self.raft.propose([data])
        except TrimaranError as exc:
            self._replies.extend(Reply(t, False, exc) for t in tokens)
            return
        self._proposals[index] = (term, tokens)

    def _refuse_unfit(self, batch: list[list[Any]], tokens: list[Any]) -> tuple[list[list[Any]], list[Any]]:
        """The items that fit a log entry (and their tokens); the others are answered here."""
        kept: tuple[list[list[Any]], list[Any]] = ([], [])
        for item, token in zip(batch, tokens):
            if depth_exceeds(item[4], limits.command_depth_max):
                exc = InvalidArgument(f"command nests lists and maps deeper than {limits.command_depth_max} levels")
                self._replies.append(Reply(token, False, exc))
                continue
            try:
                pack(item)
            except (ValueError, TypeError, OverflowError) as error:
                self._replies.append(Reply(token, False, InvalidArgument(f"the command cannot be encoded: {brief(str(error))}")))
                continue
            kept[0].append(item)
            kept[1].append(token)
        return kept

    def _show_unapplied_tail(self, applied_index: int) -> None:
        """Hand each service with an ``on_unapplied`` hook the commands of this node's own log past
        what it applied at boot (the log as it came from disk). Some of them were committed and
        applied before a crash, though the commit index that covered them never reached the disk;
        a service whose edge decisions must not go backward across a restart (the auth service:
        a token revoked here stays refused here) holds those commands provisionally until this
        replica applies past their index. Never touches replicated state."""
        hooks = {name: hook for name, svc in self.services.items() if (hook := getattr(svc, "on_unapplied", None))}
        if not hooks:
            return
        for entry in self.raft.log.entries:
            if entry.index <= applied_index or entry.kind == EntryKind.CONF_CHANGE or not entry.data:
                continue
            decoded = _decode_batch(entry.data)
            for item in decoded[1] if decoded else ():
                if type(item) is list and len(item) == 5 and item[3].__class__ is str and item[3] in hooks:
                    hooks[item[3]](entry.index, item[4])

    def _apply_entry(self, entry: Entry) -> None:
        proposal = self._proposals.pop(entry.index, None)
        tokens = None
        if proposal is not None:
            if proposal[0] == entry.term:
                tokens = proposal[1]
            else:
                # Our entry was overwritten by another leader's: it will never commit.
                exc = Unavailable("leadership changed before the request committed; retry")
                self._replies.extend(Reply(t, False, exc) for t in proposal[1])
        if entry.kind == EntryKind.CONF_CHANGE:
            if tokens:
                self._replies.append(Reply(tokens[0], True, self.raft.membership_at(entry.index)))
            return
        if not entry.data:
            return  # a leader's no-op
        decoded = _decode_batch(entry.data)
        if decoded is None:
            self.bad_entries += 1
            bad = InvalidArgument(BAD_ENTRY_TEXT, index=entry.index)
            self._replies.extend(Reply(t, False, bad) for t in tokens or ())
            return
        timestamp_ms, batch = decoded
        self.last_timestamp_ms = max(self.last_timestamp_ms, timestamp_ms)
        ctx = ApplyContext(entry.index, self.last_timestamp_ms)
        self.sessions.expire(self.last_timestamp_ms)
        for svc in self.services.values():
            svc.on_time(ctx)
        for pos, item in enumerate(batch):
            outcome = self._apply_command(entry.index, pos, item, ctx)
            if tokens is not None and pos < len(tokens):
                ok = outcome[0] == "ok"
                self._replies.append(Reply(tokens[pos], ok, outcome[1] if ok else error_from_wire(outcome[1])))

    def _bad_command(self, index: int, pos: int) -> Outcome:
        self.bad_commands += 1
        return _err(InvalidArgument(BAD_COMMAND_TEXT, index=index, position=pos))

    def _apply_command(self, index: int, pos: int, item: Any, ctx: ApplyContext) -> Outcome:
        # This runs once per command on every replica, so its checks are the cheap ones: a failed
        # unpacking costs nothing until it happens, and ``__class__`` a third of ``type()``. A str,
        # bytes or map of five items unpacks too, but then fails the checks below.
        try:
            client_id, seq, ack_seq, service, command = item
        except (TypeError, ValueError):
            return self._bad_command(index, pos)
        if not (client_id.__class__ is int and seq.__class__ is int and ack_seq.__class__ is int and service.__class__ is str):
            return self._bad_command(index, pos)
        if client_id == 0:
            new_id = index * SESSION_ID_STRIDE + pos
            self.sessions.register(new_id, ctx.timestamp_ms)
            return ("ok", new_id)
        svc = self.services.get(service)
        if svc is None:
            self.bad_commands += 1
            return _err(InvalidArgument(f"unknown service {brief(service)}"))
        session, saved = self.sessions.lookup(client_id, seq, ack_seq, ctx.timestamp_ms)
        if session is None:
            return _err(SessionExpired(f"session {client_id} is unknown or expired; open a new one"))
        if saved is not None:
            return saved
        if seq <= session.ack_seq:
            return _err(SessionExpired(f"sequence {seq} was already acknowledged"))
        if len(session.responses) >= limits.session_responses_max:
            return _err(Unavailable("too many unacknowledged requests on this session"))
        try:
            outcome: Outcome = ("ok", svc.apply(command, ctx))
        except TrimaranError as exc:
            outcome = _err(exc)
        except (AssertionError, MemoryError, RecursionError):
            raise  # a bug or this machine, not the command: another replica might not fail
        except Exception:  # noqa: BLE001 - deterministic for the same command on every replica
            outcome = _err(TrimaranError(SERVICE_FAILED_TEXT))
        session.keep(seq, outcome)
        if self.observer is not None:
            self.observer(index, pos, client_id, seq, service, command, outcome)
        return outcome

    # ------------------------------------------------------------------ reads

    def _on_read_state(self, context: int, index: int, ok: bool) -> None:
        if context not in self._reads:
            return
        if not ok:
            token = self._reads.pop(context)[0]
            self._replies.append(Reply(token, False, NotLeader(leader_hint=self.raft.leader_id or None)))
            return
        self._reads_waiting_apply.append((index, context))

    def _serve_applied_reads(self) -> None:
        applied = self.raft.log.applied_index
        waiting = self._reads_waiting_apply
        # Read points arrive in commit order per leader, so the queue is served from the front; a
        # read point out of order only waits a little longer behind the one before it.
        while waiting and waiting[0][0] <= applied:
            _, context = waiting.popleft()
            token, service, query = self._reads.pop(context)
            self._answer_query(token, service, query)

    def _answer_query(self, token: Any, service: str, query: Any) -> None:
        if service == _BACKUP:
            self._replies.append(Reply(token, True, self.take_snapshot()))
            return
        ctx = ApplyContext(self.raft.log.applied_index, self.last_timestamp_ms)
        try:
            self._replies.append(Reply(token, True, self.services[service].query(query, ctx)))
        except TrimaranError as exc:
            self._replies.append(Reply(token, False, exc))

    # ------------------------------------------------------------------ snapshots

    def _maybe_snapshot(self, out: ReplicaReady) -> None:
        applied = self.raft.log.applied_index
        if self._snapshot_in_progress or applied - self._last_snapshot_index < self.config.snapshot_interval_entries:
            return
        out.local_snapshot = self.take_snapshot()
        out.compact_through = max(self.raft.log.offset_index, applied - self.config.snapshot_keep_entries)
        self._snapshot_in_progress = True
        self._last_snapshot_index = applied

    def take_snapshot(self) -> Snapshot:
        """The applied state (services, sessions, log time) as a snapshot at the applied index."""
        with_responses = "dedup_not_in_snapshot" not in self.config.mutants
        data = pack(
            {
                "timestamp_ms": self.last_timestamp_ms,
                "sessions": self.sessions.snapshot(with_responses),
                "services": {name: svc.snapshot() for name, svc in sorted(self.services.items())},
            }
        )
        return Snapshot(self.raft.snapshot_meta(self.raft.log.applied_index, data), data)

    def _restore(self, snapshot: Snapshot) -> None:
        # Whatever take_snapshot could pack restores: its depth is bounded by the packer's, not by
        # what a frame may hold (services keep data from commands a few levels down).
        state = unpack(snapshot.data, size_bytes_max=len(snapshot.data), depth_max=limits.msgpack_pack_depth_max)
        self.last_timestamp_ms = state["timestamp_ms"]
        self.sessions.restore(state["sessions"])
        held = state["services"]
        for name, svc in self.services.items():
            svc.restore(held[name] if name in held else self._initial_states[name])
        index = snapshot.meta.last_index
        self._last_snapshot_index = max(self._last_snapshot_index, index)
        # Proposals inside the snapshot: their outcome is not known here; the client's retry with
        # the same sequence number gets the saved answer.
        for at in [at for at in self._proposals if at <= index]:
            exc = RequestTimeout("outcome unknown after a snapshot install; retry with the same sequence")
            self._replies.extend(Reply(t, False, exc) for t in self._proposals.pop(at)[1])
