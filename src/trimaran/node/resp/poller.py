"""The RESP listener's poller: one task serves the planned commands of every plain-socket connection.

With a task per connection, every command paid a task wake-up, trio's epoll registration (trio
waits with ``EPOLLONESHOT``: an ``epoll_ctl`` per wait), a read, a group of its own connection
alone and a write. The poller holds every connection's socket in one level-triggered
``select.epoll`` (registered once) and waits for that through trio (one registration per pass).
Each pass:

1. reads each ready socket once and parses what it brought (:meth:`RespServer._parse`: the same
   bounds as before);
2. takes from each idle connection its run of planned commands of one kind (writes, or reads:
   :meth:`RespServer._gather`), authorised as before (:meth:`RespServer.authorised`); a
   connection's first write waits for its client session, registered together with those of the
   other new connections of the pass (one group);
3. submits the writes of every connection as one group (one log entry), each numbered in its own
   connection's client session (so each is applied once, per connection, as before), and the
   reads of every connection as one group (one read point). On a follower that knows the leader,
   the writes go to the leader instead, one group per token over the node's link for that token
   (:func:`~.groups.submit_or_forward`, in a task of the poller's nursery; the poller goes on),
   and the reads stay here (a follower serves them at a read point it asks the leader for);
4. when a group's last answer comes, at the end of the driver's round that gave it
   (:class:`~.groups.Answers` ``on_done``: no task wakes), writes each connection's answers with
   one ``os.write``.

A connection has at most one group in flight ("busy": its socket is not read meanwhile, so its
answers stay in order and its read-ahead stays bounded); a busy socket the epoll reports readable
is disarmed until its answers are written. Everything else goes to the connection's own task
(:meth:`Poller.serve`), out of the poller until it is done, then back: a command without a
planner (HELLO, AUTH, MULTI, SUBSCRIBE, CLIENT, INFO, ...), a connection not authenticated, in a
transaction or subscribed, a protocol error, a session the driver did not register, answers the
socket does not take at once (the task waits for the socket; the other connections go on), a
group this node refused as not the leader or whose session expired (:func:`~.groups.settle`), and
a connection's first write on a follower (its session is registered through the leader by its task).
Groups lapse through the listener's :class:`~.groups.Lapses` as before.
"""

from __future__ import annotations

import logging
import os
import select
from functools import partial
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

from trimaran import limits
from trimaran.errors import NotLeader, ProtocolError, SessionExpired, TrimaranError
from trimaran.node.resp.base import Write
from trimaran.node.resp.groups import (
    Answers,
    Outcome,
    settle,
    submit_or_forward,
    take_outcomes,
)
from trimaran.protocols.resp import Reply

if TYPE_CHECKING:
    from trimaran.node.resp.server import RespServer, _Connection

log = logging.getLogger("trimaran.node.resp")

#: What a connection's task runs when the poller hands the connection to it (False: close it).
Job = Callable[[], Awaitable[bool]]


class PolledState:
    """A connection's place with the poller. ``mode``: ``task`` (its own task serves it),
    ``poll`` (idle in the poller), ``busy`` (a group of it in flight), ``closed``."""

    __slots__ = ("mode", "armed", "job", "handed")

    def __init__(self) -> None:
        self.mode = "task"
        #: Its socket is in the epoll with EPOLLIN (not disarmed while busy).
        self.armed = False
        #: What its task is to run when handed the connection (None: just serve it).
        self.job: Job | None = None
        #: Set when the poller hands the connection back to its task (or closes it).
        self.handed: trio.Event | None = None


#: Outcomes that send a connection's group to its task (:meth:`Poller._settle`): this node's
#: refusal as not the leader (:func:`~.groups.settle`'s work), and a session that expired under its writes.
_SETTLED_IN_TASK = (NotLeader, SessionExpired)


class _Entry:
    """One connection's group in a pass: its plans, the replies decided before sending (refusals),
    which plans were sent, their bodies and sizes, where its outcomes start in the pass's group,
    and (writes) their seqs in its session."""

    __slots__ = ("conn", "group", "replies", "sent", "bodies", "sizes", "start", "seqs")

    def __init__(self, conn: _Connection, group: list[Any], replies: list[Reply], sent: list[int], bodies: list[dict[str, Any]], sizes: list[int]) -> None:
        self.conn = conn
        self.group = group
        self.replies = replies
        self.sent = sent
        self.bodies = bodies
        self.sizes = sizes
        self.start = 0
        self.seqs: list[int] | None = None


class Poller:
    """See the module docstring. :meth:`open` before :meth:`run`; :meth:`close` after."""

    def __init__(self, server: RespServer) -> None:
        self.server = server
        self._epoll: Any = None
        self._wake_fd = -1
        self._woken = False
        self._conns: dict[int, _Connection] = {}
        #: Idle connections with commands parsed and not run (after their answers were written):
        #: the next pass takes them.
        self._again: list[_Connection] = []
        #: Counters (tests, profiles): passes run, connections handed to their task, and the most
        #: connections whose groups went to the driver as one group.
        self.passes = 0
        self.handed = 0
        self.widest = 0
        #: Passes whose writes this node (a follower) sent to the leader, and the groups they
        #: made: one per token among the pass's connections.
        self.forwarded_passes = 0
        self.forwarded_groups = 0
        self._nursery: trio.Nursery | None = None

    def open(self) -> None:
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, select.EPOLLIN)

    def close(self) -> None:
        if self._epoll is not None:
            trio.lowlevel.notify_closing(self._epoll.fileno())
            self._epoll.close()
            os.close(self._wake_fd)
            self._epoll = None

    async def run(self) -> None:
        """The poller's task (the listener's); the tasks that wait for the leader's answers to a
        follower's forwarded writes run in its nursery."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                await self._pass()

    # ------------------------------------------------------------------ a connection's task

    async def serve(self, conn: _Connection) -> None:
        """A plain-socket connection's task: it serves the connection until the poller may take it,
        then waits until the poller hands it back (a job to run) or closes it."""
        state = conn.polled
        try:
            while True:
                if not await self.server._loop(conn, self._take):
                    return
                assert state.handed is not None
                await state.handed.wait()
                if state.mode == "closed":
                    return
                job, state.job = state.job, None
                if job is not None and not await job():
                    return
        finally:
            if state.mode != "task":
                self._forget(conn)

    @property
    def connections(self) -> int:
        """Connections the poller holds (idle or busy), not their tasks."""
        return len(self._conns)

    def _eligible(self, conn: _Connection) -> bool:
        return conn.authenticated and conn.transaction is None and conn.pubsub is None

    def _take(self, conn: _Connection) -> bool:
        """Take ``conn`` (every command it sent answered) from its task, if the poller may serve it."""
        if self._epoll is None or not self._eligible(conn):
            return False
        state = conn.polled
        assert conn.fd is not None
        state.handed, state.job, state.mode = trio.Event(), None, "poll"
        self._epoll.register(conn.fd, select.EPOLLIN)
        state.armed = True
        self._conns[conn.fd] = conn
        return True

    def _hand(self, conn: _Connection, job: Job | None = None) -> None:
        """Give ``conn`` to its task (to run ``job``, then serve it until it may come back)."""
        self.handed += 1
        self._forget(conn)
        conn.polled.mode, conn.polled.job = "task", job
        assert conn.polled.handed is not None
        conn.polled.handed.set()

    def _close(self, conn: _Connection) -> None:
        """The client went away: its task ends (and closes the socket)."""
        self._forget(conn)
        conn.polled.mode = "closed"
        if conn.polled.handed is not None:
            conn.polled.handed.set()

    def _forget(self, conn: _Connection) -> None:
        if conn.fd is not None and self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
            if self._epoll is not None:
                self._epoll.unregister(conn.fd)
        conn.polled.mode, conn.polled.armed = "closed", False

    def _wake(self) -> None:
        if not self._woken:
            self._woken = True
            os.eventfd_write(self._wake_fd, 1)

    # ------------------------------------------------------------------ a pass

    async def _pass(self) -> None:
        self.passes += 1
        server = self.server
        ready, self._again = self._again, []
        for fd, _ in self._epoll.poll(0):
            if fd == self._wake_fd:
                os.eventfd_read(self._wake_fd)
                self._woken = False
                continue
            conn = self._conns.get(fd)
            if conn is None:
                continue
            state = conn.polled
            if state.mode != "poll" or conn.pending:  # its commands before are not answered yet
                if state.armed:
                    self._epoll.modify(fd, 0)
                    state.armed = False
                continue
            try:
                data = os.read(fd, limits.resp_receive_bytes_max)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._close(conn)
                continue
            server._parse(conn, conn.parser, conn.pending, data)
            ready.append(conn)
        writes: list[_Entry] = []
        reads: list[_Entry] = []
        registers: list[_Connection] = []
        for conn in ready:
            try:
                self._plan(conn, writes, reads, registers)
            except Exception:  # noqa: BLE001 - a bug costs this connection, not the listener
                log.exception("RESP poller: connection %d failed", conn.id)
                self._close(conn)
        leader = server.edge.other_leader() if writes or registers else None
        if writes:
            if leader is None:
                await self._submit("command", writes)
            else:
                self._forward(writes)
        if reads:
            await self._submit("read", reads)
        if registers:
            if leader is None:
                await self._register(registers)
            else:  # here they would only be refused as not the leader: their tasks register them there
                for conn in registers:
                    self._hand(conn)

    def _plan(self, conn: _Connection, writes: list[_Entry], reads: list[_Entry], registers: list[_Connection]) -> None:
        """Take ``conn``'s next run of planned commands into the pass (answered at once if all
        are refused: then the next run), or hand it to its task."""
        server = self.server
        state = conn.polled
        while state.mode == "poll" and conn.pending:
            item = conn.pending[0]
            if isinstance(item, ProtocolError) or not self._eligible(conn):
                self._hand(conn)
                return
            first = server._plan(conn, item)
            if first is None:
                self._hand(conn)
                return
            if isinstance(first, Write) and conn.session.client_id is None:
                registers.append(conn)  # (its first write: the command waits for its session)
                state.mode = "busy"
                return
            conn.pending.popleft()
            group: list[Any] = server._gather(conn, conn.pending, [first], type(first)) if conn.pending else [first]
            server.commands += len(group)
            replies, sent, bodies = server.authorised(conn, group)
            if not sent:
                self._write(conn, replies)
                continue
            if isinstance(group[sent[0]], Write):
                assert conn.session.client_id is not None
                entry = _Entry(conn, group, replies, sent, [], [group[i].size_bytes for i in sent])
                entry.seqs, entry.bodies = conn.session.number(conn.session.client_id, "kv", [group[i].command for i in sent])
                writes.append(entry)
            else:
                reads.append(_Entry(conn, group, replies, sent, bodies, [0] * len(sent)))
            state.mode = "busy"
        if state.mode == "poll":
            self._idle(conn)

    async def _submit(self, op: str, entries: list[_Entry]) -> None:
        """Every connection's group of this pass to the driver as one group, in one round."""
        server = self.server
        edge = server.edge
        count = self._place(entries)
        answers = Answers(count, edge.edge_name, lambda: self._done(entries, answers))
        server.lapses.add(answers)
        server.lapses.open += 1
        driver = edge.driver
        bodies = [body for entry in entries for body in entry.bodies]
        sizes = [size for entry in entries for size in entry.sizes]
        await driver.submit_client_group(op, bodies, answers, sizes)
        driver.start_round(client=True)

    def _place(self, entries: list[_Entry]) -> int:
        """Where each connection's outcomes start in one group of ``entries``; the group's size."""
        self.widest = max(self.widest, len(entries))
        count = 0
        for entry in entries:
            entry.start = count
            count += len(entry.sent)
        return count

    def _forward(self, entries: list[_Entry]) -> None:
        """A follower's writes of a pass: to the leader, one group per token (the node's link to the
        leader is per token), in a task each (the poller goes on). A write keeps its seq in its
        connection's session, so a group sent again (the leader changed, or could not be reached
        and this node was asked instead: :func:`~.groups.submit_or_forward`) is applied once."""
        assert self._nursery is not None
        self.forwarded_passes += 1
        by_token: dict[str | None, list[_Entry]] = {}
        for entry in entries:
            by_token.setdefault(entry.conn.token, []).append(entry)
        for token, group in by_token.items():
            self._place(group)
            self.forwarded_groups += 1
            self._nursery.start_soon(self._forward_group, token, group)

    async def _forward_group(self, token: str | None, entries: list[_Entry]) -> None:
        server = self.server
        bodies = [body for entry in entries for body in entry.bodies]
        sizes = [size for entry in entries for size in entry.sizes]
        try:
            got = await submit_or_forward(server.edge, "command", bodies, sizes, token, server.lapses)
        except Exception:  # noqa: BLE001 - a bug costs these connections, not the listener
            log.exception("RESP poller: forwarding a group of %d writes failed", len(bodies))
            for entry in entries:
                self._close(entry.conn)
            return
        self._answer_all(entries, got)

    async def _register(self, conns: list[_Connection]) -> None:
        """Register the client sessions of connections about to write for the first time, as one
        group (a task per connection, each asking the driver alone, cost about a quarter of a
        millisecond of the leader's time per new connection); their writes wait in the parser."""
        edge = self.server.edge
        answers = Answers(len(conns), edge.edge_name, lambda: self._registered(conns, answers))
        self.server.lapses.add(answers)
        self.server.lapses.open += 1
        await edge.driver.submit_client_group("register", [{} for _ in conns], answers, [0] * len(conns))
        edge.driver.start_round(client=True)

    def _registered(self, conns: list[_Connection], answers: Answers) -> None:
        """The sessions are registered (or refused: that connection's task registers it, as
        before, retrying during an election); their writes go in the next pass."""
        lapses = self.server.lapses
        lapses.open -= 1
        for conn, (ok, value) in zip(conns, take_outcomes(answers, lapses)):
            try:
                if conn.polled.mode != "busy":
                    continue
                if ok and type(value) is int:
                    conn.session.registered(value)
                    conn.polled.mode = "poll"
                    self._idle(conn)
                else:
                    self._hand(conn)
            except Exception:  # noqa: BLE001 - a bug costs this connection, not the driver's round
                log.exception("RESP poller: registering connection %d failed", conn.id)
                self._close(conn)

    # ------------------------------------------------------------------ answers

    def _done(self, entries: list[_Entry], answers: Answers) -> None:
        """Every answer of a pass's group came (or it lapsed): in the driver's round or the
        lapses' task, so nothing may raise from here."""
        lapses = self.server.lapses
        lapses.open -= 1
        self._answer_all(entries, take_outcomes(answers, lapses))

    def _answer_all(self, entries: list[_Entry], got: list[Outcome]) -> None:
        """Each connection's answers from its slice of a group's outcomes; nothing may raise."""
        for entry in entries:
            try:
                self._answer(entry, got[entry.start : entry.start + len(entry.sent)])
            except Exception:  # noqa: BLE001 - a bug costs this connection, not the driver's round
                log.exception("RESP poller: answering connection %d failed", entry.conn.id)
                self._close(entry.conn)

    def _answer(self, entry: _Entry, got: list[Outcome]) -> None:
        conn = entry.conn
        if entry.seqs is not None:
            conn.session.answered(entry.seqs)
        if conn.polled.mode != "busy":  # closed meanwhile (its task ended)
            return
        for ok, value in got:
            if not ok and isinstance(value, _SETTLED_IN_TASK):
                self._hand(conn, partial(self._settle, entry, got))
                return
        conn.polled.mode = "poll"
        self._write(conn, self.server.answer(entry.group, entry.replies, entry.sent, got))
        if conn.polled.mode == "poll":
            self._idle(conn)

    def _write(self, conn: _Connection, replies: list[Reply]) -> None:
        """Write ``conn``'s answers straight to its socket; what it does not take, its task sends."""
        assert conn.fd is not None
        wire, protocol = self.server.wire, conn.protocol
        data = wire(replies[0], protocol) if len(replies) == 1 else b"".join([wire(reply, protocol) for reply in replies])
        try:
            written = os.write(conn.fd, data)
        except BlockingIOError:
            written = 0
        except OSError:  # reset, or closed on its side
            self._close(conn)
            return
        if written < len(data):
            self._hand(conn, partial(_send_rest, conn, memoryview(data)[written:]))
        elif not conn.pending and not conn.parser.waiting:
            self.server._parse(conn, conn.parser, conn.pending, b"")  # what it sent beyond the group

    def _idle(self, conn: _Connection) -> None:
        """``conn`` waits in the poller: readable again, and taken by the next pass if it has
        commands parsed."""
        state = conn.polled
        if not state.armed:
            assert conn.fd is not None
            self._epoll.modify(conn.fd, select.EPOLLIN)
            state.armed = True
        if conn.pending:
            self._again.append(conn)
            self._wake()

    async def _settle(self, entry: _Entry, got: list[Outcome]) -> bool:
        """In ``conn``'s task: a group this node refused as not the leader goes to the leader (or
        is asked again during an election), and writes whose session expired go again under a new
        registration (nothing of them was applied), as :meth:`RespServer.run_group` does."""
        server, conn = self.server, entry.conn
        edge = server.edge
        op = "command" if entry.seqs is not None else "read"
        give_up_at = trio.current_time() + edge.config.request_timeout_ms / 1000
        got = await settle(edge, op, entry.bodies, entry.sizes, conn.token, server.lapses, got, give_up_at)
        expired = [k for k, (ok, value) in enumerate(got) if not ok and isinstance(value, SessionExpired)]
        if expired and entry.seqs is not None:
            if conn.session.client_id == entry.bodies[0]["client_id"]:
                conn.session.client_id = None
            try:
                again = await conn.session.command_group("kv", [(entry.bodies[k]["command"], entry.sizes[k]) for k in expired], conn.token)
            except TrimaranError as exc:  # the session could not be registered: nothing was sent
                again = [(False, exc)] * len(expired)
            for k, outcome in zip(expired, again):
                got[k] = outcome
        replies = server.answer(entry.group, entry.replies, entry.sent, got)
        await server._write(conn, [server.wire(reply, conn.protocol) for reply in replies])
        if not conn.pending:
            server._parse(conn, conn.parser, conn.pending, b"")
        return True


async def _send_rest(conn: _Connection, rest: memoryview) -> bool:
    """In ``conn``'s task: the answers its socket did not take at once (waiting for its client)."""
    await conn.stream.send_all(rest)
    if not conn.pending:
        conn.server._parse(conn, conn.parser, conn.pending, b"")
    return True
