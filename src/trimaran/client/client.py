"""The trio-native client: leader discovery, redirects, reconnects, retries and exactly-once commands.

One :class:`Client` keeps one connection, to the leader, shared by every task that calls it:
requests are pipelined on it (see :mod:`.connection`). Every call has a deadline; when it passes
the call raises ``RequestTimeout``. On the common path (a connection to the leader is open, the
answer comes) the deadline costs no cancel scope: it goes down to the connection, whose one
watchdog task wakes a request still waiting at its deadline. Whatever else a call waits on (leader
discovery, a reconnect, a backoff sleep, a session, a full window) runs in a cancel scope with the
same deadline, entered only then.

Each attempt also has a deadline of its own, below the call's: when the node sends nothing at all
on the connection for ``attempt_timeout_ms`` once the request has left, the connection asks it for
its ``status``; if that goes unanswered for another ``attempt_timeout_ms`` too (a stopped or hung
node: its kernel still takes the bytes), the client closes the connection and tries another node,
which it then avoids for as long (a "suspect"). A node that is merely busy or slow to commit
answers the probe, so its slow requests are not cut short. Commands and reads are retried so; ``membership`` and ``transfer``, which are not
covered by the session, wait for the call's deadline instead. A connection the node closed as idle
is reopened at once, its waiting requests sent again (the node processed none of them).

Retries never break exactly-once. A command keeps its session sequence number across every retry,
so the cluster answers a retry that already applied with the saved answer. If the cluster has
forgotten the session (``session_expired``), the client registers a new one; a command that was
certainly not applied is then re-sent under the new session, but one that *may* have applied (an
earlier attempt's answer was lost) is reported with ``SessionExpired`` rather than risk applying
twice.
"""

from __future__ import annotations

import hashlib
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

import trio

from trimaran import limits
from trimaran.errors import (
    InvalidArgument,
    NotLeader,
    ProtocolError,
    RequestTimeout,
    SessionExpired,
    TrimaranError,
    Unauthenticated,
    Unavailable,
)
from trimaran.protocols import backup_file
from trimaran.protocols.client_protocol import CONSISTENCIES
from trimaran.protocols.codec import brief

from .auth import AuthClient
from .chat import ChatClient
from .connection import (
    INFLIGHT_REQUESTS_MAX_DEFAULT,
    Address,
    Connection,
    ConnectionLost,
    DeadlinePassed,
    NodeSilent,
    address_from_wire,
    backoff_delays_s,
    describe_failure,
    open_connection,
    tls_context,
    parse_endpoints,
)
from .jobs import JobsClient
from .kv import KvClient
from .members import MembersClient
from .register import RegisterMethods
from .session import Session

#: Default deadline of one call, retries included.
TIMEOUT_MS_DEFAULT = 5_000
#: Connect plus handshake with one node. Short, so a stopped node (whose kernel still accepts the
#: connection) costs one attempt of the call's deadline, not all of it.
CONNECT_TIMEOUT_MS_DEFAULT = 1_000
#: How long an attempt waits while the node sends nothing at all on its connection, before the
#: client closes it and tries another node (see the module docstring). Below the call's deadline,
#: so a stopped leader costs one attempt of it; above a node's usual pauses (an fsync, a GC).
ATTEMPT_TIMEOUT_MS_DEFAULT = 1_000
BACKOFF_MS_MIN_DEFAULT = 10
BACKOFF_MS_MAX_DEFAULT = 1_000
#: Where a Client finds its token when none is given (the CLI's ``--token`` reads it too).
TOKEN_ENV = "TRIMARAN_TOKEN"
#: The cluster CA certificate to verify TLS nodes with, when ``ca_file`` is not given.
CA_FILE_ENV = "TRIMARAN_CA_FILE"
#: Where a Client finds its endpoints when none are given (the CLI's ``--endpoints`` reads it too),
#: and the endpoints of last resort: where ``trimaran up`` (``make run``) listens.
ENDPOINTS_ENV = "TRIMARAN_ENDPOINTS"
DEFAULT_ENDPOINTS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"
#: Answers that mean "this attempt was not applied; try again (elsewhere, or a bit later)".
_RETRYABLE = (NotLeader, Unavailable, RequestTimeout)


async def _save_backup(conn: Connection, path: str, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    """One attempt of :meth:`Client.backup` on ``conn``: the header, then every chunk, checked."""
    answer = await conn.request("backup", {})
    header = backup_file.header_from(answer)
    chunk_bytes = answer.get("chunk_bytes")
    if type(chunk_bytes) is not int or chunk_bytes <= 0:
        raise ProtocolError(f"backup answered chunk_bytes={brief(chunk_bytes)}")
    part = path + ".part"
    digest, done = hashlib.sha256(), 0
    with open(part, "wb") as out:
        out.write(backup_file.encode_prefix(header))
        while done < header.size_bytes:
            chunk = await conn.request("backup_chunk", {"offset": done})
            if type(chunk) is not bytes or not chunk or len(chunk) > chunk_bytes:
                raise ProtocolError(f"backup_chunk at {done} answered {brief(chunk)}")
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, header.size_bytes)
        out.flush()
        os.fsync(out.fileno())
    if done != header.size_bytes or digest.hexdigest() != header.sha256:
        os.unlink(part)
        raise ProtocolError("the backup's bytes do not match the checksum the node sent")
    os.replace(part, path)
    return header.to_dict()


class _SessionGone(Exception):
    """Internal: the session expired before this command could have been applied."""


#: ``"host:port,host:port"``, or a sequence of ``"host:port"`` strings or addresses.
Endpoints = str | Address | Sequence[str | Address]


class Client(RegisterMethods):
    """A connection to a trimaran cluster. Use as ``async with trimaran.connect([...]) as c:``.

    Safe to share between any number of tasks of one trio run.
    """

    def __init__(
        self,
        endpoints: Endpoints | None = None,
        *,
        cluster_id: str | None = None,
        token: str | None = None,
        token_provider: Callable[[], str] | None = None,
        ca_file: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_ms: int = TIMEOUT_MS_DEFAULT,
        connect_timeout_ms: int = CONNECT_TIMEOUT_MS_DEFAULT,
        attempt_timeout_ms: int = ATTEMPT_TIMEOUT_MS_DEFAULT,
        connect_rounds_max: int = 0,
        inflight_requests_max: int = INFLIGHT_REQUESTS_MAX_DEFAULT,
        backoff_ms_min: int = BACKOFF_MS_MIN_DEFAULT,
        backoff_ms_max: int = BACKOFF_MS_MAX_DEFAULT,
    ) -> None:
        if timeout_ms <= 0 or connect_timeout_ms <= 0 or attempt_timeout_ms <= 0:
            raise InvalidArgument("timeouts must be positive")
        if not 0 < inflight_requests_max <= limits.session_responses_max:
            raise InvalidArgument(f"inflight_requests_max must be in 1..{limits.session_responses_max}")
        if not 0 < backoff_ms_min <= backoff_ms_max:
            raise InvalidArgument("need 0 < backoff_ms_min <= backoff_ms_max")
        if endpoints is None:
            endpoints = os.environ.get(ENDPOINTS_ENV) or DEFAULT_ENDPOINTS
        self.endpoints = parse_endpoints(endpoints)
        self.cluster_id = cluster_id
        self.timeout_ms = timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.attempt_timeout_ms = attempt_timeout_ms
        #: Rounds over every endpoint in which none could be connected to, before a call fails with
        #: Unavailable naming each endpoint and why; 0: keep trying until the call's deadline.
        self.connect_rounds_max = connect_rounds_max
        self._attempt_timeout_s = attempt_timeout_ms / 1000
        #: Nodes that went silent (or did not answer a hello), and until when (trio time) to avoid them.
        self._suspect_until: dict[Address, float] = {}
        self.inflight_requests_max = inflight_requests_max
        #: Sent in every hello; from ``TRIMARAN_TOKEN`` when not given, else from the provider.
        self._token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self._token_provider = token_provider
        #: TLS to every node (None: plain TCP): ``ssl_context``, else one trusting ``ca_file`` (or
        #: ``TRIMARAN_CA_FILE``).
        self._ssl_context = ssl_context if ssl_context is not None else tls_context(ca_file or os.environ.get(CA_FILE_ENV))
        self._backoff_ms = (backoff_ms_min, backoff_ms_max)
        self._rng = random.Random()  # jitter only; nothing here needs to replay
        #: node id -> client address, learned from welcomes, not_leader details and status.
        self.node_addresses: dict[int, Address] = {}
        self.leader_id: int | None = None
        self._conn: Connection | None = None
        self._connect_lock = trio.Lock()
        self._session: Session | None = None
        self._session_lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None
        self._closed = False
        #: The most recent reason a request could not be served, for the timeout message.
        self._last_failure = ""
        #: The KV cache service's methods: ``await c.kv.set("k", b"v", ttl_ms=5000)``.
        self.kv = KvClient(self)
        #: The auth service's methods (trusted keys, revocations): ``await c.auth.revoke(jti)``.
        self.auth = AuthClient(self)
        self.members = MembersClient(self)
        self.chat = ChatClient(self)
        #: The job queue's methods: ``await c.jobs.enqueue("emails", {"to": "a@b.c"})``.
        self.jobs = JobsClient(self)

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> Client:
        if self._nursery_manager is not None or self._closed:
            raise InvalidArgument("a Client is entered once")
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection and stop the background tasks (``async with`` does this)."""
        if self._nursery is None or self._closed:
            return
        self._closed = True
        if self._conn is not None:
            self._conn.close()
        self._nursery.cancel_scope.cancel()
        # The body's own exception (if any) is left to propagate as it is: telling the nursery
        # "no exception" keeps it from wrapping the caller's error in an ExceptionGroup.
        await self._nursery_manager.__aexit__(None, None, None)

    def _require_open(self) -> trio.Nursery:
        if self._nursery is None or self._closed:
            raise InvalidArgument("the client is not open: use `async with trimaran.connect(...) as c:`")
        return self._nursery

    # ------------------------------------------------------------------ public calls

    async def command(self, service: str, command: Any, *, timeout_ms: int | None = None) -> Any:
        """Apply ``command`` to ``service`` exactly once; return the service's result.

        Raises the service's typed error if it refused the command, ``RequestTimeout`` if no answer
        came before the deadline (the command may or may not have been applied), ``SessionExpired``
        if the cluster forgot this client's session while the outcome was unknown.
        """
        return await self._with_deadline(timeout_ms, self._command, service, command, unknown_outcome=True, passes_deadline=True)

    async def read(
        self, service: str, query: Any, consistency: str = "linearizable", *, timeout_ms: int | None = None
    ) -> Any:
        """Answer ``query`` from ``service``'s state at the given consistency level."""
        if consistency not in CONSISTENCIES:
            raise InvalidArgument(f"consistency must be one of {', '.join(CONSISTENCIES)}")
        body = {"service": service, "query": query, "consistency": consistency}
        return await self._with_deadline(timeout_ms, self._idempotent, "read", body, passes_deadline=True)

    @property
    def token(self) -> str | None:
        """The token sent in every hello (None: none)."""
        return self._token

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context every connection uses (None: plain TCP)."""
        return self._ssl_context

    async def status(self, *, timeout_ms: int | None = None) -> dict[str, Any]:
        """The ``status`` dict of the node this client is connected to (normally the leader)."""
        result = await self._with_deadline(timeout_ms, self._idempotent, "status", {}, passes_deadline=True)
        if isinstance(result, dict):
            self._learn_from_status(result)
        return result

    async def node_status(self, address: str | Address, *, timeout_ms: int | None = None) -> dict[str, Any]:
        """The ``status`` dict of one particular node, over a short-lived connection of its own."""
        result = await self._with_deadline(timeout_ms, self._ask_node, address, "status", {})
        if isinstance(result, dict):
            self._learn_from_status(result)
        return result

    async def node_read(
        self, address: str | Address, service: str, query: Any, *, timeout_ms: int | None = None
    ) -> Any:
        """Answer ``query`` from one particular node's own applied state (a ``stale`` read there,
        never redirected), e.g. to compare what each replica holds."""
        body = {"service": service, "query": query, "consistency": "stale"}
        return await self._with_deadline(timeout_ms, self._ask_node, address, "read", body)

    async def _ask_node(self, address: str | Address, op: str, body: dict[str, Any]) -> Any:
        """One request to one node over a connection of its own, closed afterwards."""
        target = address if isinstance(address, Address) else Address.parse(address)
        nursery = self._require_open()
        try:
            conn = await self._open(nursery, target)
        except (OSError, ConnectionLost) as exc:
            raise Unavailable(f"cannot reach {target}: {describe_failure(exc)}") from None
        try:
            return await conn.request(op, body)
        except ConnectionLost as exc:
            raise Unavailable(f"{target}: {exc.reason}") from None
        finally:
            conn.close()

    async def membership(self, kind: str, node_id: int, *, force: bool = False, timeout_ms: int | None = None) -> Any:
        """Change membership (``add_learner``, ``promote`` or ``remove``); the new members.

        The leader refuses (``MembershipChangeRejected``) removing itself and removing a voter of
        a 2-voter cluster unless ``force``; Raft refuses a change while another is pending, the
        last voter's removal and promoting a learner that has not caught up, whatever ``force``.
        Not retried once sent: a membership change is not covered by the session, so a lost answer
        surfaces as ``RequestTimeout`` and ``status()`` tells what happened. ``c.members`` has the
        operator's steps (addresses, catching up, failure tolerance)."""
        body = {"kind": kind, "node_id": node_id, "force": force}
        return await self._with_deadline(timeout_ms, self._once, "membership", body)

    async def transfer(self, node_id: int, *, timeout_ms: int | None = None) -> None:
        """Ask the leader to hand leadership to ``node_id``."""
        await self._with_deadline(timeout_ms, self._once, "transfer", {"node_id": node_id})

    async def backup(
        self, path: str | os.PathLike[str], *, progress: Callable[[int, int], None] | None = None, timeout_ms: int | None = None
    ) -> dict[str, Any]:
        """Save a consistent snapshot of the whole cluster (taken on the leader at a linearizable
        point: it holds every write acknowledged before the call) to the backup file ``path``
        (written to ``path + ".part"``, synced, then renamed). ``progress(bytes_done, bytes_total)``
        is called after every chunk. Returns the file's header (index, term, size, checksums).
        Needs an ``admin:*`` token. A connection lost midway starts the backup again."""
        return await self._with_deadline(timeout_ms, self._backup, os.fspath(path), progress)

    async def _backup(self, path: str, progress: Callable[[int, int], None] | None) -> dict[str, Any]:
        delays = self._backoff()
        refreshed = False
        while True:
            conn = await self._leader_connection()
            try:
                return await _save_backup(conn, path, progress)
            except _RETRYABLE as exc:
                await self._after_refusal(conn, exc, delays)
            except Unauthenticated as exc:
                refreshed = self._refresh_after(conn, exc, refreshed)
            except ConnectionLost as exc:  # the bytes held there are gone with it: start again
                self._on_lost(conn, exc)
                await self._pause_after_lost(exc, delays)

    # ------------------------------------------------------------------ deadlines and retries

    async def _with_deadline(
        self,
        timeout_ms: int | None,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        unknown_outcome: bool = False,
        passes_deadline: bool = False,
    ) -> Any:
        """``fn(*args)`` bounded by ``timeout_ms`` (the client's default if None); ``RequestTimeout``
        when it passes. ``passes_deadline``: ``fn`` takes the absolute deadline (trio time) as its
        last argument and keeps to it itself (raising ``DeadlinePassed``), so that its common path
        enters no cancel scope; otherwise ``fn`` runs in a cancel scope with the deadline."""
        self._require_open()
        timeout_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        if timeout_ms <= 0:
            raise InvalidArgument("timeout_ms must be positive")
        deadline_s = trio.current_time() + timeout_ms / 1000
        try:
            if passes_deadline:
                return await fn(*args, deadline_s)
            return await _until(deadline_s, fn, *args)
        except DeadlinePassed:
            pass
        outcome = "; it may or may not have been applied" if unknown_outcome else ""
        detail = f" (last: {self._last_failure})" if self._last_failure else ""
        raise RequestTimeout(f"no answer within {timeout_ms} ms{outcome}{detail}")

    def _backoff(self) -> Iterator[float]:
        return backoff_delays_s(self._backoff_ms[0], self._backoff_ms[1], self._rng)

    async def _idempotent(self, op: str, body: dict[str, Any], deadline_s: float) -> Any:
        """Send a request that is safe to repeat until it gets a definite answer, by ``deadline_s``
        (else ``DeadlinePassed``)."""
        delays = self._backoff()
        refreshed = False
        while True:
            conn = self._conn
            if conn is None or not conn.usable:
                conn = await _until(deadline_s, self._leader_connection)
            try:
                return await conn.request(op, body, self._attempt_timeout_s, deadline_s)
            except _RETRYABLE as exc:
                await _until(deadline_s, self._after_refusal, conn, exc, delays)
            except Unauthenticated as exc:
                refreshed = self._refresh_after(conn, exc, refreshed)
            except ConnectionLost as exc:
                self._on_lost(conn, exc)
                await _until(deadline_s, self._pause_after_lost, exc, delays)

    async def _once(self, op: str, body: dict[str, Any]) -> Any:
        """Send a request that must not be repeated once it may have arrived."""
        delays = self._backoff()
        refreshed = False
        while True:
            conn = await self._leader_connection()
            try:
                return await conn.request(op, body)
            except NotLeader as exc:  # refused, so certainly not applied: safe to go elsewhere
                await self._after_refusal(conn, exc, delays)
            except Unauthenticated as exc:  # refused at the edge: not applied either
                refreshed = self._refresh_after(conn, exc, refreshed)
            except ConnectionLost as exc:
                self._on_lost(conn, exc)
                if exc.maybe_sent:
                    raise RequestTimeout(f"connection lost; the outcome of {op} is unknown: {exc.reason}") from None
                await self._pause_after_lost(exc, delays)

    async def _command(self, service: str, command: Any, deadline_s: float) -> Any:
        while True:
            session = self._session or await _until(deadline_s, self._current_session, deadline_s)
            if session.unacknowledged_count < session.window_max:
                seq = await session.next_seq()  # (returns at once: it waits only for a full window)
            else:
                seq = await _until(deadline_s, session.next_seq)
            try:
                return await self._command_in_session(session, seq, service, command, deadline_s)
            except _SessionGone:
                # Certainly not applied: send it again as a new command of a new session.
                await _until(deadline_s, self._renew_session, session, deadline_s)
            finally:
                # Answered, or abandoned (deadline, cancellation, error): this number is never re-sent.
                session.finish(seq)

    async def _command_in_session(self, session: Session, seq: int, service: str, command: Any, deadline_s: float) -> Any:
        """Send command ``seq`` until it gets a definite answer, always under the same number."""
        maybe_applied = False  # did an attempt end without a definite answer?
        delays = self._backoff()
        refreshed = False
        while True:
            body = {
                "client_id": session.client_id,
                "seq": seq,
                "ack_seq": session.ack_seq,
                "service": service,
                "command": command,
            }
            conn = self._conn
            if conn is None or not conn.usable:
                conn = await _until(deadline_s, self._leader_connection)
            try:
                result = await conn.request("command", body, self._attempt_timeout_s, deadline_s)
                self.leader_id = conn.node_id  # only the leader applies commands
                return result
            except SessionExpired:
                if not maybe_applied:
                    raise _SessionGone() from None
                raise SessionExpired(
                    "the session expired while the outcome of this command was unknown: "
                    "it may or may not have been applied",
                    indeterminate=True,
                ) from None
            except _RETRYABLE as exc:
                maybe_applied |= isinstance(exc, RequestTimeout)  # the node's deadline: unknown
                await _until(deadline_s, self._after_refusal, conn, exc, delays)
            except Unauthenticated as exc:
                # Refused at the edge, before the log: the retry under the same seq is safe anyway.
                refreshed = self._refresh_after(conn, exc, refreshed)
            except ConnectionLost as exc:
                maybe_applied |= exc.maybe_sent
                self._on_lost(conn, exc)
                await _until(deadline_s, self._pause_after_lost, exc, delays)

    # ------------------------------------------------------------------ tokens

    def _refresh_after(self, conn: Connection, exc: Unauthenticated, refreshed: bool) -> bool:
        """The node refused ``conn``'s token. If it expired and a ``token_provider`` was given (and
        this call has not refreshed yet), take a fresh token and drop the connection, so the caller
        retries once on a new one; otherwise raise ``exc``. Returns True (refreshed)."""
        if refreshed or self._token_provider is None or exc.details.get("reason") != "expired":
            raise exc
        if conn.token == self._token:  # not refreshed yet by another task sharing the connection
            self._take_fresh_token()
        if self._conn is conn:
            self._conn = None
        conn.retire()
        return True

    def _take_fresh_token(self) -> None:
        assert self._token_provider is not None
        token = self._token_provider()
        if not isinstance(token, str) or not token:
            raise InvalidArgument("token_provider must return a token (a non-empty string)")
        self._token = token

    # ------------------------------------------------------------------ sessions

    async def _current_session(self, deadline_s: float) -> Session:
        if self._session is None:
            async with self._session_lock:
                if self._session is None:
                    self._session = await self._register(deadline_s)
        return self._session

    async def _renew_session(self, expired: Session, deadline_s: float) -> Session:
        """A new session after ``expired`` was forgotten; concurrent callers share one renewal."""
        async with self._session_lock:
            if self._session is expired or self._session is None:
                self._session = await self._register(deadline_s)
            return self._session

    async def _register(self, deadline_s: float) -> Session:
        # Registering twice is harmless (the unused session expires), so it may be retried.
        client_id = await self._idempotent("register", {}, deadline_s)
        if type(client_id) is not int or client_id <= 0:
            raise ProtocolError(f"register answered {client_id!r}, not a client id")
        return Session(client_id, min(limits.session_responses_max, self.inflight_requests_max * 2))

    # ------------------------------------------------------------------ leader discovery

    async def _after_refusal(self, conn: Connection, exc: TrimaranError, delays: Iterator[float]) -> None:
        """Learn from a node's refusal, then pause unless a known leader elsewhere can be tried at once."""
        self._last_failure = f"{conn.address}: {exc.code}: {exc.message}"
        hint = exc.leader_hint if isinstance(exc, NotLeader) else None
        if hint is None or hint == conn.node_id or self._suspect(self.node_addresses.get(hint)):
            # (A leader that just went silent is named until an election replaces it: wait here.)
            # Overloaded, no leader known (an election), or a leadership change in progress:
            # keep the connection, wait a little, ask again.
            if isinstance(exc, NotLeader):
                self.leader_id = hint
            await trio.sleep(next(delays))
            return
        self.leader_id = hint
        address = address_from_wire(exc.details.get("leader_address"))
        if address is not None:
            self.node_addresses[hint] = address
        elif hint not in self.node_addresses:
            await self._learn_members(conn)
        if self._conn is conn:
            self._conn = None
        conn.retire()
        if hint not in self.node_addresses:
            await trio.sleep(next(delays))

    async def _learn_members(self, conn: Connection) -> None:
        """Ask a node for its status, for the member addresses in it (best effort)."""
        try:
            status = await conn.request("status", {})
        except (TrimaranError, ConnectionLost):
            return
        if isinstance(status, dict):
            self._learn_from_status(status)

    def _on_lost(self, conn: Connection, exc: ConnectionLost) -> None:
        if exc.idle:  # no sign of trouble: reconnect to the same node
            if self._conn is conn:
                self._conn = None
            return
        self._last_failure = exc.reason
        if self._conn is conn:
            self._conn = None
            if self.leader_id == conn.node_id:
                self.leader_id = None  # it may be dead; do not insist on it
        if isinstance(exc, NodeSilent):
            self._suspect_until[conn.address] = trio.current_time() + self._attempt_timeout_s
        conn.close(exc.reason)

    async def _pause_after_lost(self, exc: ConnectionLost, delays: Iterator[float]) -> None:
        if not exc.idle:
            await trio.sleep(next(delays))

    def _suspect(self, address: Address | None) -> bool:
        until = self._suspect_until.get(address) if address is not None else None
        if until is None:
            return False
        if trio.current_time() < until:
            return True
        del self._suspect_until[address]  # type: ignore[arg-type]
        return False

    async def _leader_connection(self) -> Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        async with self._connect_lock:  # one task discovers; the others wait and share its result
            conn = self._conn
            if conn is None or not conn.usable:
                conn = self._conn = await self._discover()
            return conn

    async def _discover(self) -> Connection:
        """Connect to the leader, or failing that to some node (which will name the leader)."""
        nursery = self._require_open()
        delays = self._backoff()
        rounds = 0
        while True:
            tried: set[Address] = set()
            fallback: Connection | None = None
            failures: list[str] = []
            # Suspects (silent or unreachable a moment ago) only when no other node answers.
            while (address := self._next_candidate(tried, suspects=fallback is None)) is not None:
                tried.add(address)
                try:
                    conn = await self._open(nursery, address)
                except (OSError, ConnectionLost, RequestTimeout, Unavailable) as exc:
                    self._last_failure = f"connect to {address}: {describe_failure(exc)}"
                    failures.append(f"{address}: {describe_failure(exc)}")
                    if isinstance(exc, RequestTimeout):  # connected, but no answer to the hello
                        self._suspect_until[address] = trio.current_time() + self._attempt_timeout_s
                    continue
                welcome = conn.welcome
                if welcome.leader_id == welcome.node_id:
                    if fallback is not None:
                        fallback.close()
                    return conn
                if fallback is None:
                    fallback = conn  # keep one node: it may forward, and it names the leader
                else:
                    conn.close()
            if fallback is not None:
                return fallback
            rounds += 1
            if self.connect_rounds_max and rounds >= self.connect_rounds_max:
                raise Unavailable("no node answered: " + "; ".join(failures), endpoints=[str(a) for a in tried])
            await trio.sleep(next(delays))

    def _next_candidate(self, tried: set[Address], suspects: bool = True) -> Address | None:
        """The leader's address if known, else a node we know least about; suspects last, and
        only if ``suspects``."""
        leader = self.node_addresses.get(self.leader_id or 0)
        if leader is not None and leader not in tried and not self._suspect(leader):
            return leader
        known_followers = {a for node_id, a in self.node_addresses.items() if node_id != self.leader_id}
        candidates = [a for a in self._all_addresses() if a not in tried and (suspects or not self._suspect(a))]
        # When the leader's address is unknown, an address we have not met yet is the likeliest one.
        candidates.sort(key=lambda a: (self._suspect(a), a in known_followers))
        return candidates[0] if candidates else None

    def _all_addresses(self) -> list[Address]:
        out = list(self.endpoints)
        out.extend(a for _, a in sorted(self.node_addresses.items()) if a not in out)
        return out

    async def _open(self, nursery: trio.Nursery, address: Address) -> Connection:
        if self._token is None and self._token_provider is not None:
            self._take_fresh_token()
        try:
            conn = await self._open_with_token(nursery, address)
        except Unauthenticated as exc:
            # A token that expired before this hello: with a provider, one fresh token and one retry.
            if self._token_provider is None or exc.details.get("reason") != "expired":
                raise
            self._take_fresh_token()
            conn = await self._open_with_token(nursery, address)
        welcome = conn.welcome
        self.node_addresses[welcome.node_id] = address
        if welcome.leader_id:
            self.leader_id = welcome.leader_id
        if self.cluster_id is None:
            # Pin the cluster met first, so a stray endpoint of another cluster is refused.
            self.cluster_id = welcome.cluster_id
        leader_address = address_from_wire(welcome.extra.get("leader_address"))
        if leader_address is not None and welcome.leader_id:
            self.node_addresses[welcome.leader_id] = leader_address
        return conn

    async def _open_with_token(self, nursery: trio.Nursery, address: Address) -> Connection:
        token = self._token
        conn = await open_connection(
            nursery,
            address,
            cluster_id=self.cluster_id,
            token=token,
            ssl_context=self._ssl_context,
            handshake_timeout_ms=self.connect_timeout_ms,
            inflight_requests_max=self.inflight_requests_max,
        )
        conn.token = token
        return conn

    def _learn_from_status(self, status: dict[str, Any]) -> None:
        """Pick node addresses out of a status dict (``members``: list of {node_id, address} maps,
        or a map of node id to address), tolerating any shape the node chooses."""
        node_id, address = _int_or_none(status.get("node_id")), address_from_wire(status.get("address"))
        if node_id and address is not None:
            self.node_addresses[node_id] = address
        members = status.get("members")
        items: list[Any] = []
        if isinstance(members, dict):
            items = [{"node_id": _int_or_none(k), "address": v} for k, v in members.items()]
        elif isinstance(members, list):
            items = members
        for item in items:
            if isinstance(item, dict):
                node_id = _int_or_none(item.get("node_id", item.get("id")))
                address = address_from_wire(item.get("address", item.get("client_address")))
                if node_id and address is not None:
                    self.node_addresses[node_id] = address


async def _until(deadline_s: float, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``await fn(*args)`` in a cancel scope with ``deadline_s``: the slow path of a call (see the
    module docstring); ``DeadlinePassed`` if the deadline cuts it short."""
    with trio.move_on_at(deadline_s):
        return await fn(*args)
    raise DeadlinePassed()


def _int_or_none(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def connect(
    endpoints: Endpoints | None = None,
    *,
    cluster_id: str | None = None,
    token: str | None = None,
    token_provider: Callable[[], str] | None = None,
    ca_file: str | None = None,
    timeout_ms: int = TIMEOUT_MS_DEFAULT,
    **options: Any,
) -> Client:
    """A client for the cluster at ``endpoints`` (``"host:port,..."`` or a list of ``"host:port"``;
    default: ``$TRIMARAN_ENDPOINTS``, if set, else the ports ``trimaran up`` and ``make run`` use).

    Use it as an async context manager, inside a trio run::

        async with trimaran.connect(["127.0.0.1:7001", "127.0.0.1:7002"]) as c:
            await c.set("greeting", "hello")
            print(await c.get("greeting"))

    ``cluster_id``: refuse nodes of any other cluster (default: pin the first one met).
    ``token``: the signed token sent in every handshake (default: ``$TRIMARAN_TOKEN``, if set); a
    node with auth on requires one (see the README's "Auth"). ``token_provider``: a plain callable
    returning a fresh token, called when a node refuses the token as expired (then the client
    reconnects and retries once; any other ``Unauthenticated``/``PermissionDenied`` is raised), and
    at the first connection if no token is given. ``ca_file``: connect with TLS, verifying the
    nodes against this CA certificate (``trimaran certs init`` writes it as ``ca.pem``; default:
    ``$TRIMARAN_CA_FILE``, if set; else plain TCP). ``timeout_ms``: default deadline per call.
    Other options: ``ssl_context`` (TLS with a context of your own), ``connect_timeout_ms``, ``attempt_timeout_ms``, ``connect_rounds_max`` (fail
    after that many rounds in which no endpoint could be reached; 0: until the deadline),
    ``inflight_requests_max``,
    ``backoff_ms_min``, ``backoff_ms_max``.
    """
    return Client(
        endpoints,
        cluster_id=cluster_id,
        token=token,
        token_provider=token_provider,
        ca_file=ca_file,
        timeout_ms=timeout_ms,
        **options,
    )

