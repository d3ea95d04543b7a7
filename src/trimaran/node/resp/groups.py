"""A pipeline's consecutive writes (or reads) go to the driver together, so they share one commit
round (or one read point).

The runner of a connection (:mod:`.server`) hands a run of consecutive writes (commands with a
planner: one KV write each, :class:`~trimaran.node.resp.base.Write`) to :meth:`RespSession.command_group`,
and a run of reads (one KV query each) to :func:`submit_or_forward`.
It numbers them in the connection's client session in pipeline order and submits them to the
driver as one inbox item (``submit_client_group``, then one ``start_round``; each request is then
served as the native client port's are): the driver takes them in that order into one group
proposal (one log entry), so they are applied in order, each once (its own session seq), and each
gets its own answer. A follower that knows the leader sends a group of writes straight there; a
node that turns out not to be the leader answers ``not_leader``, and those requests are then
forwarded to the leader together over the node's kept-open link for the caller's token
(:mod:`trimaran.node.forwarding`; TLS when the node has ``--tls-dir``), in pipeline order and with
the seqs they already have, so a write the old leader did commit is not applied twice. Each group
waits for its answers until the listener's :class:`Lapses` ends it (``request_timeout_ms``).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, cast

import trio

from trimaran.errors import NotLeader, RequestTimeout, SessionExpired, TrimaranError, Unavailable
from trimaran.node.config import Address
from trimaran.node.http.edge import LEADER_ONLY_OPS, EdgeSession, HttpEdge
from trimaran.node.probe import request_many

#: How long a group waits before asking again while no leader is known (an election).
NO_LEADER_WAIT_S = 0.05
#: One write's outcome: ok, then its result or its typed error.
Outcome = tuple[bool, Any]


#: How often :class:`Lapses` looks for groups not answered in time.
LAPSE_CHECK_S = 0.1


class Answers:
    """The driver's reply target for one group: the outcome of each write, by its index. Its
    caller waits for them all by parking its task (:meth:`wait`), woken by the last answer: a
    ``trio.Event`` per group cost its allocation and a parking lot each time. Or, with
    ``on_done`` (the listener's poller, :mod:`.poller`, which waits for no group), that is called
    once every answer came (at the end of the driver's round that gave the last one, from
    :meth:`flush_replies`, so peer messages leave first) or the wait lapsed; no task waits."""

    __slots__ = ("edge_name", "outcomes", "left", "finished", "give_up_at", "_task", "_on_done")

    def __init__(self, count: int, edge_name: str, on_done: Callable[[], None] | None = None) -> None:
        #: The edge the group's requests are counted under (``RequestStats.edge_outcomes``).
        self.edge_name = edge_name
        self.outcomes: list[Outcome | None] = [None] * count
        self.left = count
        #: Every answer came, or the wait lapsed (see :class:`Lapses`).
        self.finished = False
        #: When it stops waiting (trio time; see :class:`Lapses`).
        self.give_up_at = 0.0
        self._task: trio.lowlevel.Task | None = None
        self._on_done = on_done

    def on_reply(self, index: int, ok: bool, value: Any) -> None:
        if self.finished:
            return  # lapsed (its caller answered RequestTimeout and kept no outcomes): too late
        if self.outcomes[index] is None:
            self.outcomes[index] = (ok, value)
            self.left -= 1
            if not self.left:
                self.finish()

    def finish(self) -> None:
        """Stop waiting (the outcomes still None are the caller's to call lapsed)."""
        if not self.finished:
            self.finished = True
            task, self._task = self._task, None
            if task is not None:
                trio.lowlevel.reschedule(task)

    def flush_replies(self) -> None:
        """The driver's end of a round that answered this group (see ``ReplyTarget``)."""
        if self.finished and self._on_done is not None:
            on_done, self._on_done = self._on_done, None
            on_done()

    async def wait(self) -> None:
        if self.finished:
            await trio.lowlevel.checkpoint()
            return
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        self._task = None  # cancelled: the answers that still come are dropped
        return trio.lowlevel.Abort.SUCCEEDED


class Lapses:
    """The groups waiting for the driver's answers, oldest first, and a task that ends the wait of
    any not answered within ``request_timeout_ms`` (checked every :data:`LAPSE_CHECK_S`, so the
    wait lasts up to that much longer). A timeout per group (a cancel scope, a deadline in trio's
    heap) cost several microseconds of every command; every group has the same timeout, so the
    oldest are always first."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._waiting: deque[Answers] = deque()
        self.lapsed = 0
        #: Groups submitted and not yet answered (or lapsed), of every connection.
        self.open = 0

    def add(self, answers: Answers) -> None:
        answers.give_up_at = trio.current_time() + self.timeout_s
        self._waiting.append(answers)

    def drop_answered(self) -> None:
        waiting = self._waiting
        while waiting and waiting[0].finished:
            waiting.popleft()

    def lapse_overdue(self, now: float) -> None:
        waiting = self._waiting
        while waiting and (waiting[0].finished or waiting[0].give_up_at <= now):
            answers = waiting.popleft()
            if not answers.finished:
                self.lapsed += 1
                answers.finish()  # the outcomes still None are answered RequestTimeout
                answers.flush_replies()

    async def run(self) -> None:
        while True:
            await trio.sleep(LAPSE_CHECK_S)
            self.lapse_overdue(trio.current_time())


async def submit_group(edge: HttpEdge, op: str, bodies: list[dict[str, Any]], sizes_bytes: list[int], lapses: Lapses) -> list[Outcome]:
    """Submit requests to the local driver in order, in one round; their outcomes in that order
    (``RequestTimeout`` for any not answered within ``request_timeout_ms``, ended by ``lapses``)."""
    answers = Answers(len(bodies), edge.edge_name)
    driver = edge.driver
    lapses.add(answers)
    lapses.open += 1
    try:
        await driver.submit_client_group(op, bodies, answers, sizes_bytes)
        if op == "read" and lapses.open > 1:
            # Reads wait for the loop's next round rather than starting one here: the other
            # connections' reads of this scheduler pass join it, and share one read point
            # (one heartbeat round), where a round per connection would ask for one each.
            # A group alone (no other connection waits) starts its round at once.
            driver.wake()
        else:
            driver.start_round(client=True)
        await answers.wait()
    finally:
        lapses.open -= 1
    return take_outcomes(answers, lapses)


def take_outcomes(answers: Answers, lapses: Lapses) -> list[Outcome]:
    """A finished group's outcomes (``RequestTimeout`` for those not answered in time)."""
    outcomes = answers.outcomes
    if None in outcomes:  # (built only then: an exception per group cost its formatting every time)
        late = RequestTimeout(f"no answer within {lapses.timeout_s:g} s; the outcome is unknown")
        got = [outcome if outcome is not None else (False, late) for outcome in outcomes]
    else:
        got = cast("list[Outcome]", outcomes)
    answers.outcomes = []  # (it may wait in the lapses' queue behind an older group: keep no values)
    lapses.drop_answered()
    return got


async def submit_or_forward(
    edge: HttpEdge, op: str, bodies: list[dict[str, Any]], sizes_bytes: list[int], token: str | None, lapses: Lapses
) -> list[Outcome]:
    """:func:`submit_group`; the requests this node refused as not the leader then go to the leader
    as they are (a write keeps its session seq), together on one connection, in order.

    During an election (no leader known, or the one known cannot be reached) the refused requests
    are asked again every ``NO_LEADER_WAIT_S`` within the request timeout, as they are (same seqs:
    applied once even if a lost connection had delivered them), since Redis clients do not retry
    ``TRYAGAIN``. Only a refused tail of the group is asked again (it still comes after the
    requests applied); otherwise the error is the answer."""
    give_up_at = trio.current_time() + edge.config.request_timeout_ms / 1000
    got: list[Outcome] | None = None
    leader = edge.other_leader() if op in LEADER_ONLY_OPS else None
    if leader is not None:
        # A follower that knows who leads sends writes there at once: asking its own driver first
        # only cost a round (and a pass through the loop) to learn not_leader. Reads stay here (a
        # follower serves them at a read point it asks the leader for). If the leader cannot be
        # reached, its own node is asked as below (same seqs: applied once).
        got = await _forward(edge, leader, op, bodies, token, give_up_at)
    if got is None:
        got = await submit_group(edge, op, bodies, sizes_bytes, lapses)
    return await settle(edge, op, bodies, sizes_bytes, token, lapses, got, give_up_at)


async def settle(
    edge: HttpEdge, op: str, bodies: list[dict[str, Any]], sizes_bytes: list[int], token: str | None, lapses: Lapses,
    got: list[Outcome], give_up_at: float,
) -> list[Outcome]:  # fmt: skip
    """``got`` (a group's outcomes from this node's driver) with the requests refused as not the
    leader sent to the leader, or asked again during an election (see :func:`submit_or_forward`)."""
    while True:
        refused = [i for i, (ok, value) in enumerate(got) if not ok and isinstance(value, NotLeader)]
        if not refused:
            return got
        leader_address = got[refused[0]][1].details.get("leader_address")
        if isinstance(leader_address, str) and leader_address:
            reached = await _forward(edge, Address.parse(leader_address, "leader address"), op, [bodies[i] for i in refused], token, give_up_at)
            if reached is not None:
                for index, outcome in zip(refused, reached):
                    got[index] = outcome
                return got
        if refused != list(range(refused[0], len(got))) or trio.current_time() + NO_LEADER_WAIT_S > give_up_at:
            return got
        await trio.sleep(NO_LEADER_WAIT_S)
        again = await submit_group(edge, op, [bodies[i] for i in refused], [sizes_bytes[i] for i in refused], lapses)
        for index, outcome in zip(refused, again):
            got[index] = outcome


async def _forward(
    edge: HttpEdge, leader: Address, op: str, bodies: list[dict[str, Any]], token: str | None, give_up_at: float
) -> list[Outcome] | None:
    """The leader's outcomes of ``bodies``, or None if it could not be reached (the caller may ask
    its own node again: the leader may be gone)."""
    edge.forwarded += len(bodies)
    with trio.move_on_at(give_up_at):
        try:
            if edge.links is not None:
                return await edge.links.request_many(leader, [(op, body) for body in bodies], token)
            return await request_many(leader, [(op, body) for body in bodies], edge.config.cluster_id, token, edge.forward_tls)
        except (OSError, trio.BrokenResourceError):
            return None
        except TrimaranError as exc:  # the leader refused the hello (a token it does not accept)
            return [(False, exc)] * len(bodies)
    late = RequestTimeout(f"the leader at {leader} did not answer in time; the outcome is unknown")
    return [(False, late)] * len(bodies)


class RespSession(EdgeSession):
    """A RESP connection's client session: an :class:`EdgeSession` that can also number and submit
    a group of writes at once (the connection's runner sends one group at a time); ``lapses``: the
    listener's, which times its groups out."""

    def __init__(self, edge: HttpEdge, inflight_max: int, lapses: Lapses) -> None:
        super().__init__(edge, inflight_max)
        self.lapses = lapses

    async def _register(self, token: str | None) -> int:
        # Registered already (every write but the first): no lock, so no pass through trio's
        # scheduler per write (taking a trio.Lock always yields).
        if self.client_id is not None:
            return self.client_id
        give_up_at = trio.current_time() + self.edge.config.request_timeout_ms / 1000
        while True:
            try:
                return await super()._register(token)
            except (NotLeader, Unavailable):  # an election (no leader, or a gone one): wait, as writes do
                if trio.current_time() + NO_LEADER_WAIT_S > give_up_at:
                    raise
                await trio.sleep(NO_LEADER_WAIT_S)

    def number(self, client_id: int, service: str, commands: list[Any]) -> tuple[list[int], list[dict[str, Any]]]:
        """Number ``commands`` in this (registered) session, in order: their seqs (unanswered
        until the caller takes them out of ``_unanswered``) and request bodies."""
        unanswered = self._unanswered
        if len(commands) == 1:  # one command in flight per connection, the common case: fewer objects
            seq = self._seq = self._seq + 1
            ack_seq = (min(unanswered) if unanswered else seq) - 1
            unanswered.add(seq)
            return [seq], [{"client_id": client_id, "seq": seq, "ack_seq": ack_seq, "service": service, "command": commands[0]}]
        seqs = list(range(self._seq + 1, self._seq + 1 + len(commands)))
        self._seq = seqs[-1]
        unanswered.update(seqs)
        ack_seq = min(unanswered) - 1
        bodies = [{"client_id": client_id, "seq": seq, "ack_seq": ack_seq, "service": service, "command": command} for command, seq in zip(commands, seqs)]
        return seqs, bodies

    def registered(self, client_id: int) -> None:
        """Registered by the listener's poller (with the first writes of other connections)."""
        self.client_id, self._seq = client_id, 0

    def answered(self, seqs: list[int]) -> None:
        self._unanswered.difference_update(seqs)

    async def command_group(self, service: str, commands: list[tuple[Any, int]], token: str | None) -> list[Outcome]:
        """Apply ``commands`` ([command, size_bytes], ...) in order, each exactly once; their outcomes."""
        outcomes: list[Outcome | None] = [None] * len(commands)
        todo = list(range(len(commands)))
        for attempt in range(2):
            client_id = await self._register(token)
            seqs, bodies = self.number(client_id, service, [commands[i][0] for i in todo])
            sizes_bytes = [commands[i][1] for i in todo]
            try:
                got = await submit_or_forward(self.edge, "command", bodies, sizes_bytes, token, self.lapses)
            finally:
                self._unanswered.difference_update(seqs)
            expired = []
            for i, outcome in zip(todo, got):
                if not outcome[0] and isinstance(outcome[1], SessionExpired) and not attempt:
                    expired.append(i)  # nothing was applied: sent again under a new registration
                else:
                    outcomes[i] = outcome
            if not expired:
                break
            if self.client_id == client_id:
                self.client_id = None
            todo = expired
        return [outcome if outcome is not None else (False, TrimaranError("unreachable")) for outcome in outcomes]
