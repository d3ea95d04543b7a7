"""The driver: the one trio task that owns the Replica and runs the Ready protocol with real IO.

It does exactly what the pure reference driver does (:class:`trimaran.simulations.driver.SimNode`,
``process`` then ``sync``), in the order :mod:`trimaran.cluster.ready` prescribes:

1. take every ``Ready`` the Replica has, hand its batch (hard state, snapshot, truncation,
   entries, and a local snapshot with its ``compact_through``) to the writer thread;
2. send its ``messages`` at once;
3. the Replica has already applied ``committed`` inside ``ready()``: answer the clients it replied to;
4. hold ``messages_after_persist`` until this batch and every earlier one is durable: the writer
   reports durability in submission order, and the driver releases held messages strictly in
   order (a Ready with nothing to write still waits behind earlier writes, as in ``SimNode``);
5. then call ``on_persisted`` (and ``on_snapshot_saved`` for a local snapshot).

One round of the loop: take writer results, deliver the ticks that are due, take a bounded batch of
inputs (peer messages, client requests), then call ``ready()`` while the Replica has work, and send
what the round produced in one go (so the transport can encode a message for several peers once,
and write each peer's frames with one call), and flush each client connection's answers once.
Client commands taken in one round end up in one log entry (the Replica's group proposal).

Who runs a round: the loop, or, when the loop is parked with nothing to do, the task that delivered
the input (a peer connection's reader, a client connection's reader), at once and without awaiting
(:meth:`Driver._run_round_here`). That saves a pass of trio's scheduler per hop on the latency
path: a follower's append, the leader's acknowledgements, a lone client request. A reader hands
over everything it read at once before the round starts (``more=True``), so a round still takes
them all; client requests start a round here only when nothing else is in flight (otherwise the
loop gathers the requests of every connection into one proposal, as before).

The round's batches are written after its messages are sent (a leader's appends need not wait for
its own fsync, thesis §10.2.1), in submission order, in one of two ways:

- handed to the writer thread;
- or, on a follower (``write_inline_bytes_max``; not while its edges relay client requests to the
  leader, see ``relaying``; a leader if ``write_inline_leader_bytes_max``, or
  while its clients come one at a time, ``write_inline_leader_serial_requests``) and only when the
  thread has nothing outstanding, written inline on this thread. The batch is then durable before
  the round ends: its held messages are released and ``on_persisted`` called in the same round, so
  an append is acknowledged, and a lone client's entry counted by its leader, without a thread
  hand-off either way.

A leader holds back empty appends that only announce a new commit index for up to
``commit_notice_delay_ms``, and drops them when the next append to that follower carries the same
commit index (see :meth:`Driver._hold`): with one client that halves the followers' traffic.

A full store (the LMDB map at its cap, or the file system full): the writer keeps the refused
group and retries it, and the driver (:meth:`Driver._take_results`) sets ``storage_full``. Raft
needs nothing else: every message that depends on the refused batch (a vote, an append
acknowledgement) waits behind it in ``_pending`` as it would behind a slow fsync, a leader counts
itself only for what it persisted, and heartbeats are answered at once, so the node keeps its
place in the cluster and linearizable reads keep working. Meanwhile the node refuses client
writes and membership changes with ``storage_full``, a leader proposes nothing of its own (no
clock entries), and it hands leadership to a voter that proved it can still write (it persisted
entries this node could not). A write that succeeds clears the state. Before the file system
fills, a leader already refuses client writes once less than a reserve is free
(``storage_reserve_bytes``): what it accepted still fits, on it and on followers of the same size,
and Raft's own small writes (terms, votes, a new leader's entry) keep finding room.

Time: ticks come from the monotonic clock (``trio.current_time``); the leader timestamp given to
``register``, ``submit`` and ``advance_clock`` (TTLs, session expiry) is wall-clock ``time.time()``
(injectable, for the simulator's trio tier).
Ticks are computed from the clock at the start of every round, so after a pause (SIGSTOP, a long
GC) the missed ticks are delivered before any request is served: an old leader's Check-Quorum and
lease expire first.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import trio

from trimaran.cluster.raft import Role
from trimaran.cluster.replica import Replica, ReplicaReady
from trimaran.errors import InvalidArgument, MembershipChangeRejected, NotLeader, StorageFullError, TrimaranError
from trimaran.node.clock import wall_clock_ms as system_wall_clock_ms
from trimaran.node.config import NodeConfig
from trimaran.node.logs import event
from trimaran.node.stats import BATCH_ENTRIES_BUCKETS, LEADER_HISTORY_MAX, Buckets, RequestStats
from trimaran.node.writer import StorageWriter, WriteResult
from trimaran.protocols.messages import AppendEntries, ConfChange, ConfChangeKind, Membership, Message, Snapshot
from trimaran.storage import WriteBatch

log = logging.getLogger("trimaran.node.driver")


#: ``ready()`` calls per round; one normally takes everything, the bound keeps a round finite.
READY_CALLS_PER_ROUND_MAX = 16
#: Where the count of serial client requests stops (it only needs to reach the configured bound).
SERIAL_REQUESTS_COUNTED_MAX = 1 << 20
#: Ticks delivered at once after a pause: enough for every timeout to fire (Check-Quorum needs
#: two election timeouts), and a bound on the loop.
TICKS_CATCH_UP_MAX_FACTOR = 4

#: A client command accepted takes up to this many times its size in the store (LMDB pages, the
#: entry's framing), for the reserve check between two measurements.
ACCEPTED_BYTES_OVERHEAD_FACTOR = 2

MEMBERSHIP_KINDS = {
    "add_learner": ConfChangeKind.ADD_LEARNER,
    "promote": ConfChangeKind.PROMOTE,
    "remove": ConfChangeKind.REMOVE,
}


class ReplyTarget(Protocol):
    """Whoever asked (a client connection): told the answer to its request ``seq``.

    A target may also have ``flush_replies()``: the driver calls it once at the end of every round
    in which it answered that target, so answers given together leave together (one write).
    """

    def on_reply(self, seq: int, ok: bool, value: Any) -> None: ...


#: What the driver hands the Replica as a request token: the asker and its per-connection number.
Token = tuple[ReplyTarget, int]


@dataclass(slots=True)
class _PendingWrite:
    #: Durable once the writer reports a sequence >= this (0: nothing of its own to write).
    write_seq: int
    after: list[Message]
    persist_index: int
    persist_term: int
    local_snapshot: Snapshot | None


class Driver:
    """Owns the Replica; see the module docstring. All methods run on the trio thread."""

    def __init__(
        self,
        config: NodeConfig,
        replica: Replica,
        writer: StorageWriter,
        send: Callable[[Sequence[Message]], None],
        client_address_of: Callable[[int], str | None],
        wall_clock_ms: Callable[[], int] = system_wall_clock_ms,
    ) -> None:
        """``wall_clock_ms`` gives the leader timestamps put in the log; injected so the simulator's
        trio tier can run this driver on simulated time."""
        self.config = config
        self._wall_clock_ms = wall_clock_ms
        self.replica = replica
        self._writer = writer
        self._send = send
        self.client_address_of = client_address_of
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._inbox_space = trio.lowlevel.ParkingLot()
        self._wake = trio.lowlevel.ParkingLot()
        #: The loop is parked on ``_wake`` (waking it is only needed then: it checks for work
        #: before it parks, and nothing runs between that check and the park).
        self._parked = False
        #: The cancel scope whose deadline ends the loop's park (the next tick or held notice).
        self._park_scope: trio.CancelScope | None = None
        #: What a round run by another task raised (see _run_round_here): the loop raises it.
        self._failure: BaseException | None = None
        #: Client requests in a row that found the node quiescent: one client at a time (see
        #: ``write_inline_leader_serial_requests``).
        self._serial_requests = 0
        #: Producers waiting for inbox space.
        self._inbox_waiters = 0
        self._results: deque[WriteResult] = deque()
        self._pending: deque[_PendingWrite] = deque()
        self._outgoing: list[Message] = []
        #: Batches of this round, numbered but not yet handed to the writer (sent first, then written).
        self._unwritten: list[tuple[int, WriteBatch]] = []
        #: Whoever got answers this round, flushed once at its end (one write per connection).
        self._answered: dict[int, ReplyTarget] = {}
        #: Empty appends (commit notices) held back per follower, and until when (see _hold).
        self._held: dict[int, AppendEntries] = {}
        self._held_until = float("inf")
        # Never longer than half a heartbeat interval, which carries the commit index too.
        self._hold_s = min(config.commit_notice_delay_ms / 1000, config.heartbeat_interval_ticks * config.tick_s / 2)
        #: The writer's optional same-thread write (StorageWriter.write_inline); None: always hand over.
        self._write_inline: Callable[[list[WriteBatch]], bool] | None = getattr(writer, "write_inline", None)
        #: Numbered batches (``_write_seq_submitted`` counts numbers given, so "outstanding" includes
        #: this round's) and the highest one known durable.
        self._write_seq_submitted = 0
        self._write_seq_durable = 0
        self._next_tick_at = 0.0
        #: A write was refused for want of space and is being retried (see the module docstring).
        self.storage_full = False
        #: The data directory's file system has less free than the reserve: client writes refused.
        self.storage_low = False
        #: (free, size) of the data directory's file system at the last tick; None: not known.
        self.disk_space: tuple[int, int] | None = None
        self._disk_space: Callable[[], tuple[int, int] | None] | None = getattr(writer, "disk_space", None)
        #: Client command bytes accepted since the last disk space check (they may not be on disk yet).
        self._accepted_bytes = 0
        #: True while the node's edges relay clients' requests to the leader (wired by the node;
        #: None: never): a follower then hands its writes to the writer thread, never inline, so
        #: its loop keeps relaying requests and answers during the fsync.
        self.relaying: Callable[[], bool] | None = None
        #: Called at the end of every round, once its entries are applied and its answers flushed:
        #: the client edge re-checks live connections when the auth service changed, the chat
        #: gateway pushes what was applied. Each must be quick and must not raise.
        self.after_round_hooks: list[Callable[[], None]] = []
        #: Counters (reported by the status op).
        self.rounds = 0
        self.readies = 0
        self.ticks = 0
        self.inline_writes = 0
        self.held_notices_dropped = 0
        #: For /metrics and the dashboard (node/stats.py): requests by outcome with their latency,
        #: leader changes seen (with wall time ms, term, leader), entries per appended batch,
        #: snapshots, and when (trio time) each peer was last heard from.
        self.requests = RequestStats(trio.current_time)
        self.leader_changes = 0
        self.leader_history: deque[tuple[int, int, int]] = deque(maxlen=LEADER_HISTORY_MAX)
        self.append_batch_entries = Buckets(BATCH_ENTRIES_BUCKETS)
        self.snapshots_taken = 0
        self.snapshots_installed = 0
        self.peer_contact_at: dict[int, float] = {}
        # What the log events last saw (see _count_ready): an election and a membership change are
        # logged once each.
        self._seen_candidate_term = 0
        self._seen_membership: Membership | None = None

    # ------------------------------------------------------------------ inputs (any task)

    def on_write_result(self, result: WriteResult) -> None:
        """Called on the trio thread (via run_sync_soon) by the writer."""
        self._results.append(result)
        if self._parked:
            self._wake.unpark_all()

    async def deliver_peer(self, msg: Message, *, more: bool = False) -> None:
        """A message from a peer; waits while the inbox is full (backpressure on that connection).

        ``more``: the caller has more messages already read and delivers them next; the last one
        (``more=False``) starts the round (see :meth:`_put`), so a round takes them all."""
        await self._put(("peer", msg), more)

    async def submit_client(self, op: str, body: dict[str, Any], token: Token, size_bytes: int, *, more: bool = False) -> None:
        """A client request (already shape-checked by ``parse_request``); answered via the token.
        ``more`` as for :meth:`deliver_peer`."""
        await self._put(("client", op, body, token, size_bytes), more, client=True)

    async def submit_client_group(self, op: str, bodies: list[dict[str, Any]], target: ReplyTarget, sizes_bytes: list[int]) -> None:
        """Client requests of one group, answered to ``target`` as tokens ``(target, 0)``,
        ``(target, 1)``, ... in order: what :meth:`submit_client` does for each (``more=True``:
        the caller then calls :meth:`start_round`), as one inbox item, so a group of a hundred
        commands costs one wait for space and one coroutine, not a hundred.

        A round still takes at most ``driver_inputs_per_round_max`` inputs: of a larger group it
        takes a prefix and leaves the rest first in the inbox for the next round (ticks and peer
        messages run between). The inbox's bound counts a group as one item; its producers bound
        what a group holds (the RESP listener: its connections' commands in flight, at most
        ``resp_connections_max`` x ``resp_inflight_commands_max``)."""
        await self._put(("group", op, bodies, target, sizes_bytes, 0), True, client=True)

    def submit_client_nowait(self, op: str, body: dict[str, Any], token: Token, size_bytes: int) -> None:
        """A client request held back at the edge and due now (a long-polling job claim, see
        :mod:`trimaran.node.claim_waits`), from an after-round hook: queued without waiting for
        inbox space (the holder bounds how many it holds) and taken by the next round, never a
        round nested in this one."""
        self._inbox.append(("client", op, body, token, size_bytes))
        if self._parked:
            self._wake.unpark_all()

    async def _put(self, item: tuple[Any, ...], more: bool = False, client: bool = False) -> None:
        while len(self._inbox) >= self.config.driver_inbox_items_max:
            if self._parked:
                self._wake.unpark_all()  # what earlier calls with ``more`` left must not wait
            self._inbox_waiters += 1
            try:
                await self._inbox_space.park()
            finally:
                self._inbox_waiters -= 1
        self._inbox.append(item)
        if not more:
            self.start_round(client=client)

    def start_round(self, *, client: bool = False) -> None:
        """Inputs were delivered (the last with ``more=False``, or all with ``more=True`` and then
        this call): start a round for them, here if the loop is idle, else by waking the loop.
        ``client``: they include client requests (see :meth:`_quiescent`)."""
        quiet = self._parked and (not client or self._quiescent())
        if client:
            self._serial_requests = min(self._serial_requests + 1, SERIAL_REQUESTS_COUNTED_MAX) if quiet else 0
        if not self._parked:
            return
        if quiet and self._may_run_round_here():
            self._run_round_here()
        else:
            self._wake.unpark_all()

    def _may_run_round_here(self) -> bool:
        """The loop is parked and not yet woken, and has nothing of its own to do first (writer
        results, which would raise a storage failure in the wrong task)."""
        return len(self._wake) > 0 and not self._results and self._failure is None

    def _quiescent(self) -> bool:
        """Nothing is in flight: every entry committed, every write durable. A client request that
        finds the node so may start a round at once; with concurrent clients there is always
        something in flight, and their requests wait for the loop, which takes the requests of
        every connection read meanwhile into one group proposal."""
        log_ = self.replica.raft.log
        return not self._pending and self._write_seq_durable == self._write_seq_submitted and log_.commit_index == log_.last_index()

    def _run_round_here(self) -> None:
        """Run a round in the calling task (a connection's reader) while the loop stays parked.

        This saves a pass of trio's scheduler per input on the latency path (a follower's append,
        a leader's acknowledgement, a lone client request): the round starts as soon as the input
        is read, and its messages, its inline write and its answers leave from here. The Replica is
        still touched by one task at a time: a round never awaits, and the loop is parked. What the
        round raises is the loop's to raise (it fails the node as before), not the reader's.
        """
        try:
            self._round()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
            self._failure = exc
            self._wake.unpark_all()
            return
        if self._has_work():
            self._wake.unpark_all()
        elif self._park_scope is not None:
            # The round may have held a commit notice: the loop must wake for its deadline. Only
            # ever earlier (moving a deadline costs trio some work; waking early costs one round).
            deadline = min(self._next_tick_at, self._held_until)
            if deadline < self._park_scope.deadline:
                self._park_scope.deadline = deadline

    def wake(self) -> None:
        self._wake.unpark_all()

    def set_clock_suspect(self, suspect: bool) -> None:
        """The clock check's verdict (:mod:`trimaran.node.clock`), handed to Raft as an input
        (:meth:`~trimaran.cluster.raft.Raft.set_clock_suspect`); a leader's hand-off goes out in
        the next round. Called between rounds (a round never awaits)."""
        self.replica.raft.set_clock_suspect(suspect)
        self.wake()

    # ------------------------------------------------------------------ the loop

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run rounds until cancelled; raises if the writer reported a fatal storage error."""
        self._next_tick_at = trio.current_time() + self.config.tick_s
        task_status.started()
        while True:
            if self._has_work():
                await trio.lowlevel.checkpoint()  # let connections and peers run between rounds
            else:
                self._parked = True
                try:
                    with trio.move_on_at(min(self._next_tick_at, self._held_until)) as self._park_scope:
                        await self._wake.park()
                finally:
                    self._parked = False
                    self._park_scope = None
            if self._failure is not None:
                raise self._failure
            self._round()

    def _backlogged(self) -> bool:
        return self._write_seq_submitted - self._write_seq_durable >= self.config.writes_outstanding_max

    def _has_work(self) -> bool:
        return bool(
            self._results
            or (self._inbox and not self._backlogged())
            or trio.current_time() >= min(self._next_tick_at, self._held_until)
            or self.replica.has_ready()
        )

    def _round(self) -> None:
        self.rounds += 1
        self._take_results()
        self._take_ticks()
        if not self._backlogged():
            self._take_inputs()
        if self._held and trio.current_time() >= self._held_until:
            self._release_held()
        ready_calls = 0
        while True:
            while ready_calls < READY_CALLS_PER_ROUND_MAX and self.replica.has_ready():
                self._process_ready()
                ready_calls += 1
            # Messages and answers leave before the write: a leader's appends need not wait for its
            # own fsync (thesis §10.2.1), an inline write would hold them back, and the writer
            # thread, woken earlier, would take the GIL between two sends.
            self._flush()
            batches, self._unwritten = self._unwritten, []
            if not batches:
                break
            if not self._may_write_inline(batches):
                self._submit(batches)
                break
            if not self._write_now(batches):
                break
            # Written inline: the after-persist messages are released and on_persisted called, which
            # may give the Replica more to do (a leader's commit, its answers) in this same round.
        for hook in self.after_round_hooks:
            hook()

    def _flush(self) -> None:
        """Send this round's messages (one call: each peer gets one write) and flush its answers."""
        if self._outgoing:
            outgoing, self._outgoing = self._outgoing, []
            if self._hold_s > 0:
                outgoing = self._hold(outgoing)
            if outgoing:
                self._send(outgoing)
        if self._answered:
            answered, self._answered = self._answered, {}
            for target in answered.values():
                flush = getattr(target, "flush_replies", None)
                if flush is not None:
                    flush()

    # ------------------------------------------------------------------ commit notices

    def _hold(self, messages: list[Message]) -> list[Message]:
        """Hold back empty appends (a leader's commit notices) for up to ``commit_notice_delay_ms``.

        When the commit index advances the core sends every follower an empty AppendEntries, only
        to tell it the new commit index; with one client that doubles the follower traffic (each
        notice is also acknowledged). The next append to that follower carries the same commit index
        with the next entries, so a notice is held, and dropped when a later append to the same
        follower supersedes it (same term, from no earlier a position, a commit index no lower).
        Any other message to that follower first releases the notice, in order; so does the delay
        running out. Holding a message is a network delay to Raft, which tolerates any; nothing
        here waits on persistence, so "persist before you speak" is untouched.
        """
        held = self._held
        out: list[Message] = []
        for msg in messages:
            recipient = msg.recipient
            if type(msg) is AppendEntries and not msg.entries:
                old = held.get(recipient)
                if old is not None and not _supersedes(msg, old):
                    out.append(old)
                elif old is not None:
                    self.held_notices_dropped += 1
                held[recipient] = msg
                if self._held_until == float("inf"):
                    self._held_until = trio.current_time() + self._hold_s
                continue
            if held:
                old = held.pop(recipient, None)
                if old is not None:
                    if _supersedes(msg, old):
                        self.held_notices_dropped += 1
                    else:
                        out.append(old)
                if not held:
                    self._held_until = float("inf")
            out.append(msg)
        return out

    def _release_held(self) -> None:
        held = list(self._held.values())
        self._held.clear()
        self._held_until = float("inf")
        self._send(held)

    # ------------------------------------------------------------------ durability

    def _take_results(self) -> None:
        while self._results:
            result = self._results.popleft()
            if result.error is None:
                self._write_seq_durable = result.seq
                if self.storage_full:
                    log.warning("node %d: storage accepts writes again", self.config.node_id)
                self.storage_full = False
            elif isinstance(result.error, StorageFullError):
                if not self.storage_full:
                    log.warning("node %d: storage full; refusing writes until space returns", self.config.node_id)
                    self.storage_full = True
                    self._hand_off_when_full()
            else:
                raise result.error  # fail-stop: durability can no longer be promised
        self._release_durable()

    def _release_durable(self) -> None:
        """Ready protocol step 4-5 for every pending Ready whose batch (and every earlier one) is durable."""
        while self._pending and self._pending[0].write_seq <= self._write_seq_durable:
            p = self._pending.popleft()
            self._outgoing.extend(p.after)
            if p.persist_index:
                self.replica.on_persisted(p.persist_index, p.persist_term)
            if p.local_snapshot is not None:
                self.replica.on_snapshot_saved(p.local_snapshot)

    def _take_ticks(self) -> None:
        now = trio.current_time()
        if now < self._next_tick_at:
            return
        tick_s = self.config.tick_s
        due = int((now - self._next_tick_at) / tick_s) + 1
        self._next_tick_at += due * tick_s
        due = min(due, TICKS_CATCH_UP_MAX_FACTOR * self.config.election_timeout_ticks_max)
        for _ in range(due):
            self.replica.tick()
        self.ticks += due
        self._check_disk_space()
        if self.storage_full:
            # A leader that cannot persist proposes nothing of its own; a peer may take over.
            self._hand_off_when_full()
            return
        # Log time for services (TTLs, delays): an idle leader whose services have a deadline that
        # passed on its wall clock appends a timestamp-only entry. Checked once per tick is enough:
        # the Replica spaces such entries by clock_entry_interval_ms anyway.
        self.replica.advance_clock(self._wall_clock_ms())

    def _check_disk_space(self) -> None:
        """Once per tick: is the store's room (the file system's, or the map's) below the reserve?"""
        if self._disk_space is None:
            return
        try:
            space = self._disk_space()
        except OSError as exc:
            log.debug("node %d: statvfs failed: %r", self.config.node_id, exc)
            return
        if space is None:
            return
        free_bytes, size_bytes = self.disk_space = space
        self._accepted_bytes = 0
        low = free_bytes < self.config.storage_reserve_bytes_for(size_bytes)
        if low != self.storage_low:
            log.warning(
                "node %d: %d bytes free on the data directory's file system: client writes %s",
                self.config.node_id,
                free_bytes,
                "refused" if low else "accepted again",
            )
            self.storage_low = low

    def _take_inputs(self) -> None:
        inbox = self._inbox
        now = trio.current_time()
        budget = self.config.driver_inputs_per_round_max
        while inbox and budget > 0:
            item = inbox.popleft()
            kind = item[0]
            if kind == "peer":
                self.peer_contact_at[item[1].sender] = now
                self.replica.step(item[1])
                budget -= 1
            elif kind == "client":
                self._on_client(item[1], item[2], item[3], item[4], now)
                budget -= 1
            else:  # a group (submit_client_group), from its first request not yet taken
                _, op, bodies, target, sizes_bytes, start = item
                end = min(len(bodies), start + budget)
                on_client = self._on_client
                for index in range(start, end):
                    on_client(op, bodies[index], (target, index), sizes_bytes[index], now)
                budget -= end - start
                if end < len(bodies):  # the rest goes first in the next round
                    inbox.appendleft(("group", op, bodies, target, sizes_bytes, end))
        if self._inbox_waiters:
            self._inbox_space.unpark_all()

    def _process_ready(self) -> None:
        out: ReplicaReady = self.replica.ready()
        self.readies += 1
        rd = out.raft
        self._count_ready(out)
        batch = WriteBatch(rd.hard_state, rd.snapshot, rd.truncate_from, list(rd.entries), 0)
        if out.local_snapshot is not None:
            batch.snapshot = out.local_snapshot
            batch.compact_through = out.compact_through
        for reply in out.replies:
            self._reply(reply.token, reply.ok, reply.value)
        self._outgoing.extend(rd.messages)
        if batch.is_empty() and not self._pending:
            # Nothing to make durable and nothing ahead of us: "after persist" is now.
            self._outgoing.extend(rd.messages_after_persist)
            return
        # With nothing of its own to write, a Ready still waits for every write ahead of it.
        write_seq = self._write_seq_submitted
        if not batch.is_empty():
            self._write_seq_submitted += 1
            write_seq = self._write_seq_submitted
            self._unwritten.append((write_seq, batch))
        self._pending.append(
            _PendingWrite(write_seq, list(rd.messages_after_persist), rd.persist_index, rd.persist_term, out.local_snapshot)
        )

    def _count_ready(self, out: ReplicaReady) -> None:
        """Metrics and log events of one Ready: its batch of entries, snapshots, an election, a new
        leader (or term), a membership change."""
        rd = out.raft
        if rd.entries:
            self.append_batch_entries.observe(len(rd.entries))
        node_id = self.config.node_id
        if rd.snapshot is not None:
            self.snapshots_installed += 1
            meta = rd.snapshot.meta
            event(log, logging.INFO, "snapshot_installed", "node %d: installed the leader's snapshot at index %d", node_id, meta.last_index,
                  index=meta.last_index, bytes=len(rd.snapshot.data))  # fmt: skip
        if out.local_snapshot is not None:
            self.snapshots_taken += 1
            meta = out.local_snapshot.meta
            event(log, logging.INFO, "snapshot_taken", "node %d: took a snapshot at index %d", node_id, meta.last_index,
                  index=meta.last_index, bytes=len(out.local_snapshot.data))  # fmt: skip
        raft = self.replica.raft
        if raft.role == Role.CANDIDATE and raft.term != self._seen_candidate_term:
            self._seen_candidate_term = raft.term
            event(log, logging.INFO, "election", "node %d: standing for election in term %d", node_id, raft.term)
        if raft.leader_id and (not self.leader_history or self.leader_history[-1][1:] != (raft.term, raft.leader_id)):
            self.leader_changes += 1
            self.leader_history.append((self._wall_clock_ms(), raft.term, raft.leader_id))
            event(log, logging.INFO, "leader_elected", "node %d: node %d leads term %d", node_id, raft.leader_id, raft.term, leader=raft.leader_id)
        membership = raft.membership
        if membership is not self._seen_membership and membership != self._seen_membership:  # (identity: most rounds)
            if self._seen_membership is not None:
                event(log, logging.INFO, "membership", "node %d: members now voters %s, learners %s", node_id,
                      sorted(membership.voters), sorted(membership.learners) or "none",
                      voters=sorted(membership.voters), learners=sorted(membership.learners))  # fmt: skip
                if node_id not in membership.members:
                    event(log, logging.WARNING, "removed", "node %d: this node was removed from the cluster; it stays out "
                          "(stop it, or add it again with `trimaran member add`)", node_id)  # fmt: skip
            self._seen_membership = membership

    def _submit(self, batches: list[tuple[int, WriteBatch]]) -> None:
        for seq, batch in batches:
            self._writer.submit(seq, batch)

    def _write_now(self, batches: list[tuple[int, WriteBatch]]) -> bool:
        """Write on this thread; True once durable (Readies released). If the writer declines,
        the batches go to its thread as usual and False is returned."""
        assert self._write_inline is not None
        if not self._write_inline([batch for _, batch in batches]):
            self._submit(batches)
            return False
        self.inline_writes += 1
        self._write_seq_durable = batches[-1][0]
        if self.storage_full:
            log.warning("node %d: storage accepts writes again", self.config.node_id)
        self.storage_full = False
        self._release_durable()
        return True

    def _may_write_inline(self, batches: list[tuple[int, WriteBatch]]) -> bool:
        """Write on this thread (no wake-up of the writer thread, none back) when the writer thread
        has nothing outstanding (so order holds), nothing is a snapshot, and the entries fit this
        role's bound: a follower only waits for its fsync anyway, while a leader's loop would stop
        replicating and answering during it, so it keeps the thread for anything but small writes."""
        if self._write_inline is None or self._write_seq_durable != batches[0][0] - 1:
            return False
        cfg = self.config
        bytes_max = cfg.write_inline_bytes_max
        if self.replica.raft.role == Role.LEADER:
            serial = 0 < cfg.write_inline_leader_serial_requests <= self._serial_requests
            bytes_max = cfg.write_inline_leader_bytes_max or (bytes_max if serial else 0)
        elif self.relaying is not None and self.relaying():
            return False
        size_bytes = 0
        for _, batch in batches:
            if batch.snapshot is not None:
                return False
            for entry in batch.entries:
                size_bytes += len(entry.data)
        return size_bytes <= bytes_max if bytes_max else False

    # ------------------------------------------------------------------ client requests

    def _on_client(self, op: str, body: dict[str, Any], token: Token, size_bytes: int, now_s: float) -> None:
        """``now_s``: trio's time when the round took its inputs."""
        replica = self.replica
        self.requests.started((id(token[0]), token[1]), op, body, getattr(token[0], "edge_name", "other"), now_s)
        try:
            if op == "command":
                self._refuse_if_full(size_bytes)
                now_ms = self._wall_clock_ms()
                replica.submit(
                    token, body["client_id"], body["seq"], body["ack_seq"], body["service"], body["command"], now_ms, size_bytes
                )
                self.requests.proposals += 1
            elif op == "register":
                self._refuse_if_full()
                replica.register(token, self._wall_clock_ms())
            elif op == "read":
                replica.read(token, body["service"], body["query"], body.get("consistency", "linearizable"))
            elif op == "membership":
                self._refuse_if_full()
                if not body.get("force"):
                    self._refuse_risky_removal(body["kind"], body["node_id"])
                replica.change_membership(token, ConfChange(MEMBERSHIP_KINDS[body["kind"]], body["node_id"]))
            elif op == "transfer":
                replica.transfer_leadership(body["node_id"])
                self._reply(token, True, None)
            elif op == "backup":
                if replica.raft.role != Role.LEADER:
                    raise self.not_leader()  # taken where the newest state is, as etcdctl does
                replica.backup(token)
            else:
                raise InvalidArgument(f"operation {op!r} is not served by the driver")
        except TrimaranError as exc:
            self._reply(token, False, exc)

    def _refuse_risky_removal(self, kind: str, node_id: int) -> None:
        """Removals that lose what a cluster is for, refused unless the caller says ``force``
        (etcd, ScyllaDB and RedisRaft users lost quorum to each): the Raft core itself refuses a
        change while another is pending, the last voter's removal and a learner's promotion
        before it caught up."""
        raft = self.replica.raft
        if kind != "remove" or raft.role != Role.LEADER or node_id not in raft.membership.voters:
            return
        if node_id == raft.id:
            raise MembershipChangeRejected(
                f"node {node_id} is the leader: transfer leadership first (trimaran leader transfer), or force it",
                reason="leader",
            )
        if len(raft.membership.voters) == 2:
            raise MembershipChangeRejected(
                "removing a voter of a 2-voter cluster leaves one voter, whose loss then stops the cluster; "
                "add a voter first, or force it",
                reason="two_voters",
            )

    def _refuse_if_full(self, size_bytes: int = 0) -> None:
        """Refuse a write on a leader whose store is full or below its reserve. A follower's own
        disk does not decide where writes go: it answers not_leader, so the client finds the
        leader (after a hand-off, one that can write)."""
        if self.replica.raft.role != Role.LEADER:
            return
        if self.storage_full:
            raise StorageFullError(
                "this node's storage is full; writes are refused until space is freed", reason="full"
            )
        if not self.storage_low and self.disk_space is not None:
            # Between two checks (a tick) a busy leader may accept many writes: count them against
            # the room measured, twice over for the store's overhead (pages, the entry's framing).
            free_bytes, store_bytes = self.disk_space
            reserve_bytes = self.config.storage_reserve_bytes_for(store_bytes)
            accepted_bytes = self._accepted_bytes + size_bytes
            if reserve_bytes and free_bytes - ACCEPTED_BYTES_OVERHEAD_FACTOR * accepted_bytes < reserve_bytes:
                self.storage_low = True  # until the next check measures again
            else:
                self._accepted_bytes = accepted_bytes
        if self.storage_low:
            raise StorageFullError(
                "this node's store is below its free-space reserve; writes are refused until space is freed",
                reason="reserve",
                free_bytes=self.disk_space[0] if self.disk_space is not None else None,
            )

    def not_leader(self) -> NotLeader:
        """A not_leader error with the leader's id and, when known, its client address."""
        leader = self.replica.leader_id
        return NotLeader(leader_hint=leader or None, leader_address=self.client_address_of(leader) if leader else None)

    def _reply(self, token: Token, ok: bool, value: Any) -> None:
        if not ok and isinstance(value, NotLeader):
            value = self.not_leader()  # the freshest hint, with the leader's client address
        elif ok and isinstance(value, Membership):
            value = {"voters": list(value.voters), "learners": list(value.learners)}
        target = token[0]
        self.requests.finished((id(target), token[1]), ok, value, self._wall_clock_ms)
        target.on_reply(token[1], ok, value)
        self._answered[id(target)] = target

    # ------------------------------------------------------------------ leadership and shutdown

    def _hand_off_when_full(self) -> None:
        """A leader whose store refuses writes hands off to a voter that has persisted entries this
        node could not (its match is past our persisted index): that one can still write, so it can
        persist its new term and vote and lead. With no such voter (every disk is full, or nothing
        was proposed since) it keeps leading: it still serves reads, and a transfer to a node that
        cannot persist its term would only leave the cluster without a leader."""
        raft = self.replica.raft
        if raft.role != Role.LEADER or raft.transferee:
            return
        persisted = raft.log.persisted_index
        able = [(pr.match, n) for n, pr in sorted(raft.progress.items()) if n in raft.membership.voters and pr.match > persisted]
        if able:
            self._hand_off_leadership(max(able)[1])

    def _hand_off_leadership(self, target: int | None = None) -> bool:
        """If leader, start a transfer to the most caught-up voter (thesis §3.10); True if started."""
        raft = self.replica.raft
        if raft.role != Role.LEADER:
            return False
        if target is None:
            candidates = [(pr.match, n) for n, pr in sorted(raft.progress.items()) if n in raft.membership.voters]
            if not candidates:
                return False
            target = max(candidates)[1]
        try:
            self.replica.transfer_leadership(target)
        except TrimaranError as exc:
            log.info("node %d: leadership transfer to %d refused: %s", self.config.node_id, target, exc)
            return False
        self.wake()
        return True

    async def step_down(self, timeout_s: float) -> None:
        """Graceful shutdown: hand leadership to a peer and wait (bounded) until it took it."""
        if not self._hand_off_leadership():
            return
        with trio.move_on_after(timeout_s):
            while self.replica.raft.role == Role.LEADER:
                await trio.sleep(self.config.tick_s)

    async def wait_durable(self, timeout_s: float) -> bool:
        """Wait (bounded) until everything handed to the writer is durable."""
        with trio.move_on_after(timeout_s):
            while self._pending or self._write_seq_durable < self._write_seq_submitted:
                await trio.sleep(self.config.tick_s / 5)
            return True
        return False

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The ``status`` op's result; documented in :mod:`trimaran.protocols.client_protocol`."""
        raft = self.replica.raft
        lg = raft.log
        leader = raft.leader_id
        progress = []
        if raft.role == Role.LEADER:
            last = lg.last_index()
            for node_id, pr in sorted(raft.progress.items()):
                progress.append(
                    {
                        "node_id": node_id,
                        "match": pr.match,
                        "next": pr.next,
                        "lag": max(0, last - pr.match),
                        "state": pr.state.name.lower(),
                        "recent_active": bool(pr.recent_active),
                        "last_contact_ms": self.last_contact_ms(node_id),
                    }
                )
        return {
            "node_id": self.config.node_id,
            "cluster_id": self.config.cluster_id,
            "role": raft.role.name.lower(),
            "term": raft.term,
            "leader_id": leader,
            "leader_address": self.client_address_of(leader) if leader else None,
            "commit_index": lg.commit_index,
            "applied_index": lg.applied_index,
            "last_index": lg.last_index(),
            "persisted_index": lg.persisted_index,
            "snapshot_index": raft.snapshot.meta.last_index if raft.snapshot is not None else 0,
            "voters": list(raft.membership.voters),
            "learners": list(raft.membership.learners),
            "members": [
                {
                    "node_id": n,
                    "role": "voter" if n in raft.membership.voters else "learner",
                    "address": self.client_address_of(n),
                }
                for n in raft.membership.members
            ],
            "progress": progress,
            "storage_full": self.storage_full,
            "storage_low": self.storage_low,
            "disk_free_bytes": self.disk_space[0] if self.disk_space is not None else None,
            "leader_changes": self.leader_changes,
            "leader_history": [list(h) for h in self.leader_history],
            "failure_tolerance": self.failure_tolerance(),
            "requests": self.requests.summary(),
            "writes": {
                "submitted": self._write_seq_submitted,
                "durable": self._write_seq_durable,
                "groups": self._writer.groups_written,
                "batches": self._writer.batches_written,
            },
        }


    def last_contact_ms(self, node_id: int) -> int | None:
        """Milliseconds since a message from peer ``node_id`` was taken; None: never heard from."""
        at = self.peer_contact_at.get(node_id)
        return None if at is None else int((trio.current_time() - at) * 1000)

    def failure_tolerance(self) -> int | None:
        """On the leader: how many more voters may fail before quorum is lost, counting as alive
        itself and the voters heard from within the longest election timeout (Consul's "failure
        tolerance"); None elsewhere (a follower hears only from the leader)."""
        raft = self.replica.raft
        if raft.role != Role.LEADER:
            return None
        timeout_ms = self.config.election_timeout_ticks_max * self.config.tick_s * 1000
        voters = raft.membership.voters
        alive = 0
        for n in voters:
            contact_ms = self.last_contact_ms(n)
            alive += n == self.config.node_id or (contact_ms is not None and contact_ms <= timeout_ms)
        return alive - (len(voters) // 2 + 1)


def _supersedes(msg: Message, held: AppendEntries) -> bool:
    """``msg`` tells the follower everything the held empty append would have: an append of the
    same term from no earlier a position with a commit index no lower (the follower takes
    ``min(commit_index, last new index)``, which cannot be lower either)."""
    return (
        type(msg) is AppendEntries
        and msg.term == held.term
        and msg.prev_index >= held.prev_index
        and msg.commit_index >= held.commit_index
    )
