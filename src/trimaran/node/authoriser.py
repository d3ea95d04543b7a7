"""The one authoriser every edge uses: who a connection is (its token, verified once), and what
each of its requests may do (its scopes, checked per request with no crypto).

Auth is on iff the node has at least one bootstrap key (``NodeConfig.auth_keys``); with it off the
edges never call this module and behave as they did before auth existed.

- :meth:`Authoriser.authenticate` verifies a connection's token (PASETO v4.public, see
  :mod:`trimaran.protocols.tokens`) against the local replica's auth service: the keys it trusts
  (bootstrap keys from the configuration, keys trusted through the log, retired ones refused) and
  the token ids it revoked, at the node's clock: its wall clock, or the last applied entry's log
  time if that is later (a key retired by an entry stamped with the leader's clock is refused from
  that entry on, even where this node's clock lags a little). Refusals are ``Unauthenticated``.
- :meth:`Authoriser.check` maps one client request to what it touches (:func:`requirements`) and
  checks the connection's scopes against it: ``PermissionDenied`` naming the scope needed
  (:func:`trimaran.protocols.scopes.needed`), or ``Unauthenticated`` once the token expired (two
  integer comparisons; the client may refresh the token and reconnect). A grant that covers every
  key for a kv op (``kv:*``, ``kv:read:*`` for reads, ``admin:*``: :func:`whole_kv_ops`, worked out
  once per scope list) allows each such request without matching its keys; a kv command is still
  parsed, so one that does not parse is refused here as before.
- After each driver round, :meth:`Authoriser.generation_moved` tells whether a revocation or a key
  retirement was applied (the auth service's ``generation``); the edge then calls
  :meth:`Authoriser.recheck` for each live connection and closes those whose token no longer holds.

The decisions themselves against the replica's state (revoked, key retired or unknown, a grant and
its per-request lapse, the re-check) are the auth service's (:mod:`trimaran.services.auth`): this
module adds the clock, the counters and the logging, and the simulator's edge calls the same code.

What a request touches (deny by default; the table of scopes is in :mod:`trimaran.protocols.scopes`):

==============================  =================================================================
request                         needs
==============================  =================================================================
``register``                    any valid token (a session is not data)
``status``                      ``cluster:read``
``membership``, ``transfer``    ``admin:*``
``command`` to ``kv``           ``kv:write`` on every key it writes (``mset``: each key; ``txn``:
                                what each step needs, and ``kv:read`` on its ``if_revisions`` keys)
``read`` of ``kv``              ``kv:read`` on every key it reads (``mget``: each key); ``scan``
                                and a prefix ``watch``: a prefix grant covering the whole prefix;
                                ``stats``: ``kv:read`` on the empty prefix (``kv:read:*``)
``command`` to ``chat``         ``publish``: ``chat:publish`` on the channel; ``join``, ``leave``:
                                ``chat:publish`` on the channel (being present is publishing);
                                ``open``, ``heartbeat``, ``close`` of a presence session: any valid
                                token; ``reset``: ``admin:*``
``read`` of ``chat``            ``history``, ``presence``: ``chat:subscribe`` on the channel;
                                ``channels``, ``events``, ``stats``: ``admin:*``
``command``/``read`` of         per queue, ``jobs:enqueue``/``work``/``read``/``manage``: the table in
``jobs``                        :mod:`trimaran.protocols.scopes`; a job, session or schedule id is
                                mapped to its queue by the local replica's jobs service (a dict
                                lookup, see "Jobs" below)
``command``/``read`` of any     ``admin:*`` (the ``register`` test service, the ``auth`` service,
other service                   and names no service has)
==============================  =================================================================

A kv, chat or jobs command or query that does not parse cannot be authorised: it is answered with
the service's own ``invalid_argument``/``too_large`` at the edge, and never reaches the log.

Jobs. Most job commands name a job (``complete``, ``cancel``, the ``result`` query; each job of a
``complete_batch``, which needs ``jobs:work`` on every queue they belong to), a worker
session (``heartbeat``, ``session_close``) or a schedule (``unschedule``), not a queue: the
authoriser asks the local replica's jobs service which queue that is (``queue_of_job``,
``session_queues``, ``queue_of_schedule``: dict lookups). A job's queue never changes, and a
session only ever holds jobs of queues its claims were allowed. An id the replica does not hold
needs the action on any one queue (the service then answers ``NotFound``/``StaleLease``/None,
which tells nothing about other queues) -- unless the id's index (ids are ``<entry index>-<n>``,
sessions ``s<index>-<n>``) is past what this replica applied: that job may sit in the log
unapplied, so the request is refused ``Unavailable`` (the client retries; by then it is applied)
rather than judged on a state that is about to change. A schedule's name carries no index: a
``schedule``/``unschedule`` racing an unapplied ``schedule`` of the same name is judged on the
applied state (a gap of one round; schedule names are best kept per tenant, e.g. prefixed).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from trimaran.cluster.replica import Replica
from trimaran.errors import ConfigError, PermissionDenied, Unauthenticated, Unavailable
from trimaran.node.config import NodeConfig
from trimaran.node.logs import event
from trimaran.protocols import scopes, tokens
from trimaran.services import kv_args
from trimaran.services.chat import args as chat_args
from trimaran.services.jobs import args as jobs_args
from trimaran.services.jobs.service import JobsService
# Grant lives with the auth service (the simulator's edge uses it too); re-exported for the edges.
from trimaran.services.auth import KEY_RETIRED, AuthService
from trimaran.services.auth import Grant as Grant

log = logging.getLogger("trimaran.node.authoriser")

#: Refusal log lines per window; past that they are counted, and the next line says how many were
#: left out (a hostile client must not be able to flood the log, nor hide among the lines).
REFUSAL_LOG_LINES_MAX = 20
REFUSAL_LOG_WINDOW_S = 10.0


class _RefusalLog:
    def __init__(self) -> None:
        self._window_start_s = 0.0
        self._lines = 0
        self._left_out = 0

    def info(self, fmt: str, *args: Any) -> None:
        now_s = time.monotonic()
        if now_s - self._window_start_s >= REFUSAL_LOG_WINDOW_S:
            self._window_start_s, self._lines = now_s, 0
        if self._lines >= REFUSAL_LOG_LINES_MAX:
            self._left_out += 1
            return
        self._lines += 1
        if self._left_out:
            fmt, args = fmt + " (and %d refusals not logged)", (*args, self._left_out)
            self._left_out = 0
        event(log, logging.INFO, "auth_refused", fmt, *args)


#: One thing a request touches: (service, action, name, name_is_prefix); name None: any one name.
Requirement = tuple[str, str, bytes | None, bool]
ADMIN: tuple[Requirement, ...] = (("admin", "*", b"", False),)
NOTHING: tuple[Requirement, ...] = ()
CLUSTER_READ: tuple[Requirement, ...] = (("cluster", "read", b"", False),)


def _kv_command_requirements(cmd: Any) -> tuple[Requirement, ...]:
    if isinstance(cmd, kv_args.MsetCmd):
        return tuple(("kv", "write", key, False) for key, _, _ in cmd.items)
    if isinstance(cmd, kv_args.TxnCmd):
        needs: list[Requirement] = [("kv", "read", key, False) for key, _ in cmd.if_revisions]
        for step in cmd.steps:
            needs += _kv_query_requirements(step) if isinstance(step, (kv_args.GetQuery, kv_args.MgetQuery)) else _kv_command_requirements(step)
        return tuple(needs)
    return (("kv", "write", cmd.key, False),)


def _kv_requirements(op: str, body: dict[str, Any]) -> tuple[Requirement, ...]:
    if op == "command":
        return _kv_command_requirements(kv_args.parse_command(body["command"]))
    raw = body["query"]
    if type(raw) is list and len(raw) == 2 and raw[0] == "get" and type(raw[1]) is bytes:
        # The hot read: its key is all the scope needs, and a read never reaches the log, so the
        # full parse (key limits) is left to the service's query, which answers the same typed
        # error. Measured: a third of the leader's extra work per authorised read at 64 clients.
        return (("kv", "read", raw[1], False),)
    return _kv_query_requirements(kv_args.parse_query(raw))


def _kv_query_requirements(query: Any) -> tuple[Requirement, ...]:
    if isinstance(query, kv_args.GetQuery):
        return (("kv", "read", query.key, False),)
    if isinstance(query, kv_args.MgetQuery):
        return tuple(("kv", "read", key, False) for key in query.keys)
    if isinstance(query, kv_args.ScanQuery):
        return (("kv", "read", query.prefix, True),)
    if isinstance(query, kv_args.WatchQuery):
        return (("kv", "read", query.match, query.is_prefix),)
    assert isinstance(query, kv_args.StatsQuery), query
    return (("kv", "read", b"", True),)


def _chat_requirements(op: str, body: dict[str, Any]) -> tuple[Requirement, ...]:
    if op == "command":
        cmd = chat_args.parse_command(body["command"])
        if isinstance(cmd, (chat_args.PublishCmd, chat_args.JoinCmd, chat_args.LeaveCmd)):
            return (("chat", "publish", cmd.channel.encode(), False),)
        if isinstance(cmd, (chat_args.OpenCmd, chat_args.HeartbeatCmd, chat_args.CloseCmd)):
            return NOTHING
        return ADMIN  # reset
    query = chat_args.parse_query(body["query"])
    if isinstance(query, (chat_args.HistoryQuery, chat_args.PresenceQuery)):
        return (("chat", "subscribe", query.channel.encode(), False),)
    return ADMIN  # channels, events, stats


class _JobsState:
    """What a jobs request's ids belong to, in the local replica's applied state (see "Jobs")."""

    def __init__(self, replica: Replica) -> None:
        self._replica = replica
        service = replica.services.get("jobs")
        self._service = service if isinstance(service, JobsService) else JobsService()

    def _unapplied(self, some_id: str) -> bool:
        match = jobs_args.JOB_ID.fullmatch(some_id[1:] if some_id.startswith("s") else some_id)
        return match is not None and int(match[1]) > self._replica.applied_index

    def _refuse_unapplied(self, some_id: str) -> None:
        if self._unapplied(some_id):
            raise Unavailable(f"{some_id} is not applied on this node yet; retry", retry_after_ms=10)

    def job(self, action: str, job_id: str) -> Requirement:
        queue = self._service.queue_of_job(job_id)
        if queue is None:
            self._refuse_unapplied(job_id)
            return ("jobs", action, None, False)
        return ("jobs", action, queue.encode(), False)

    def session(self, action: str, session_id: str) -> tuple[Requirement, ...]:
        queues = self._service.session_queues(session_id)
        if queues is None:
            self._refuse_unapplied(session_id)
            return (("jobs", action, None, False),)
        # A live session with no jobs: any one queue (what it holds is what its claims were allowed).
        return tuple(("jobs", action, q.encode(), False) for q in queues) or (("jobs", action, None, False),)

    def schedule(self, name: str) -> Requirement | None:
        queue = self._service.queue_of_schedule(name)
        return None if queue is None else ("jobs", "manage", queue.encode(), False)


def _queues(action: str, queues: Any) -> tuple[Requirement, ...]:
    return tuple(("jobs", action, q.encode(), False) for q in dict.fromkeys(queues))


def _jobs_requirements(op: str, body: dict[str, Any], state: _JobsState) -> tuple[Requirement, ...]:
    if op == "command":
        cmd = jobs_args.parse_command(body["command"])
        if isinstance(cmd, jobs_args.EnqueueCmd):
            needs = _queues("enqueue", (spec.queue for spec in cmd.specs))
            deps = dict.fromkeys(dep for spec in cmd.specs for dep in spec.depends_on)
            return needs + tuple(state.job("read", dep) for dep in deps)  # a dependency's outcome is read
        if isinstance(cmd, jobs_args.ClaimCmd):
            return _queues("work", cmd.queues)
        if isinstance(cmd, (jobs_args.CompleteCmd, jobs_args.FailCmd, jobs_args.ReleaseCmd, jobs_args.AckCancelCmd)):
            return (state.job("work", cmd.job),)
        if isinstance(cmd, jobs_args.CompleteBatchCmd):
            return tuple(dict.fromkeys(state.job("work", item.job) for item in cmd.items))
        if isinstance(cmd, jobs_args.HeartbeatCmd):
            return state.session("work", cmd.session) + tuple(state.job("work", beat.job) for beat in cmd.jobs)
        if isinstance(cmd, jobs_args.SessionCloseCmd):
            return state.session("work", cmd.session)
        if isinstance(cmd, jobs_args.SessionOpenCmd):
            return (("jobs", "work", None, False),)
        if isinstance(cmd, jobs_args.CancelCmd):
            return (state.job("manage", cmd.job),)
        if isinstance(cmd, (jobs_args.DlqCmd, jobs_args.PauseCmd, jobs_args.QueueConfigCmd)):
            return _queues("manage", (cmd.queue,))
        if isinstance(cmd, jobs_args.ScheduleCmd):
            replaced = state.schedule(cmd.name)
            return _queues("manage", (cmd.spec.queue,)) + ((replaced,) if replaced else ())
        assert isinstance(cmd, jobs_args.UnscheduleCmd), cmd
        return (state.schedule(cmd.name) or ("jobs", "manage", None, False),)
    query = jobs_args.parse_query(body["query"])
    if isinstance(query, (jobs_args.JobQuery, jobs_args.ResultQuery)):
        return (state.job("read", query.job),)
    if isinstance(query, (jobs_args.StatsQuery, jobs_args.DlqQuery, jobs_args.ListQuery)):
        return _queues("read", (query.queue,))
    if isinstance(query, jobs_args.ReadyQuery):
        return _queues("work", query.queues)
    if isinstance(query, jobs_args.SessionQuery):
        return state.session("work", query.session)
    assert isinstance(query, (jobs_args.SchedulesQuery, jobs_args.QueuesQuery)), query
    return (("jobs", "read", b"", True),)  # every queue's schedules or stats: jobs:read:*


def requirements(op: str, body: dict[str, Any], jobs: _JobsState | None = None) -> tuple[Requirement, ...]:
    """What a request (shape-checked by ``parse_request``) touches; InvalidArgument / TooLarge if a
    kv, chat or jobs command or query does not parse; Unavailable if a jobs request names an id
    past what ``jobs`` (the local replica) applied. Without ``jobs`` every jobs request is ``admin:*``."""
    if op in ("command", "read"):
        service = body["service"]
        if service == "kv":
            return _kv_requirements(op, body)
        if service == "chat":
            return _chat_requirements(op, body)
        if service == "jobs" and jobs is not None:
            return _jobs_requirements(op, body, jobs)
        return ADMIN
    if op == "register":
        return NOTHING
    if op == "status":
        return CLUSTER_READ
    return ADMIN  # membership, transfer, and any op added later until it says otherwise


#: The most any kv request of an op needs (see :func:`_kv_requirements`): a read, ``kv:read`` on
#: some keys or a prefix; a command, ``kv:write`` on some keys and, in a ``txn``, ``kv:read``.
_KV_NEEDS_MOST: dict[str, tuple[str, ...]] = {"read": ("read",), "command": ("read", "write")}
#: Distinct scope lists whose whole-namespace coverage is remembered (:meth:`Authoriser.check`);
#: only verified tokens add one, and one past this starts the memory afresh.
WHOLE_KV_CACHE_MAX = 1024


def whole_kv_ops(granted: tuple[scopes.Scope, ...]) -> frozenset[str]:
    """The ops (``read``, ``command``) of which ``granted`` allows every kv request whatever it
    names: it covers each action such a request may need on every key (``kv:*``,
    ``kv:read:*`` for reads, ``admin:*``)."""
    return frozenset(
        op for op, actions in _KV_NEEDS_MOST.items() if all(scopes.allowed(granted, "kv", a, b"", True) for a in actions)
    )


def needed(requirement: Requirement) -> str:
    service, action, name, name_is_prefix = requirement
    return "admin:*" if service == "admin" else scopes.needed(service, action, name, name_is_prefix)


class Authoriser:
    """See the module docstring. ``enabled`` is False with no bootstrap key: nothing is checked."""

    def __init__(self, config: NodeConfig, replica: Replica, wall_clock_ms: Callable[[], int]) -> None:
        self.enabled = config.auth_enabled
        self._node_id = config.node_id
        self._cluster_id = config.cluster_id
        self._leeway_ms = config.auth_leeway_ms
        self._replica = replica
        self._wall_clock_ms = wall_clock_ms
        auth = replica.services.get("auth")
        if self.enabled and not isinstance(auth, AuthService):
            raise ConfigError("auth keys are configured but this node runs no auth service")
        self._auth = auth if isinstance(auth, AuthService) else AuthService()
        self._jobs = _JobsState(replica)
        self._generation = self._auth.generation
        self._refusals = _RefusalLog()
        #: A grant's scope texts -> :func:`whole_kv_ops` of its scopes (computed once per scope list).
        self._whole_kv: dict[tuple[str, ...], frozenset[str]] = {}
        #: Counters (reported by the status op).
        self.unauthenticated = 0
        self.permission_denied = 0
        self.connections_closed = 0

    def now_ms(self) -> int:
        return max(self._wall_clock_ms(), self._replica.last_timestamp_ms)

    # ------------------------------------------------------------------ once per connection

    def authenticate(self, token: object) -> Grant:
        """Verify a hello's token; the connection's Grant, or Unauthenticated (logged, with the
        ``sub`` when the token got as far as naming a verified one; never the token)."""
        sub = None
        try:
            if token is None:
                raise Unauthenticated("this node requires a token: the client's --token or TRIMARAN_TOKEN (over HTTP, an 'Authorization: Bearer' header; over RESP, AUTH)", reason="missing")
            if not isinstance(token, str):
                raise Unauthenticated("the token must be a string of ASCII text")
            now_ms = self.now_ms()
            keys = self._auth.trusted_keys()
            claims = tokens.verify(token, keys, audience=self._cluster_id, now_ms=now_ms, leeway_ms=self._leeway_ms)
            sub = claims.sub
            refused = self._auth.refusal(claims, now_ms)
            if refused is not None:
                raise refused
            return self._auth.grant(claims, self._leeway_ms)
        except Unauthenticated as exc:
            self.unauthenticated += 1
            self._refusals.info("node %d: refused a client's token (sub=%r): %s", self._node_id, sub, exc.message)
            raise

    # ------------------------------------------------------------------ every request

    def check(self, grant: Grant, op: str, body: dict[str, Any], now_ms: int | None = None) -> None:
        """Raise Unauthenticated (expired, revoked) or PermissionDenied unless ``grant`` covers the
        request; InvalidArgument / TooLarge if a command or query does not parse; Unavailable if a
        jobs request names an id this node has not applied yet.

        ``now_ms``: :meth:`now_ms` as the caller read it for the requests that arrived together
        (one read of a connection, one RESP group), so that it is read once for all of them and
        each is judged as of its arrival; None: read here."""
        if grant.refused is not None:
            raise grant.refused
        if now_ms is None:
            now_ms = self.now_ms()
        # grant.lapsed() inline: this runs for every request of every connection.
        if now_ms > grant.expires_after_ms or (grant.key_not_after_ms and now_ms >= grant.key_not_after_ms):
            self._refuse_lapsed(grant, now_ms)
        if op == "read" or op == "command":
            whole = grant.whole_kv_ops
            if whole is None:
                claims = grant.claims
                whole = grant.whole_kv_ops = self._whole_kv_ops(claims.scope_texts, claims.scopes)
            if op in whole and body["service"] == "kv":
                # The grant covers every key for this op: no per-request match. A command is still
                # parsed, so one that does not parse is refused here and never reaches the log; a
                # read never reaches it, and the service's query answers the same typed error.
                if op == "command":
                    kv_args.parse_command(body["command"])
                return
        granted = grant.claims.scopes
        for requirement in requirements(op, body, self._jobs):
            if not scopes.allowed(granted, *requirement):
                self.permission_denied += 1
                scope = needed(requirement)
                self._refusals.info("node %d: sub=%r may not %s: needs %s", self._node_id, grant.claims.sub, op, scope)
                raise PermissionDenied(f"this token does not grant {scope!r}", scope=scope)

    def _refuse_lapsed(self, grant: Grant, now_ms: int) -> None:
        """Raise the refusal of a grant past its token's exp or its key's not-after (counted, logged)."""
        lapsed = grant.lapsed(now_ms)
        if lapsed is None:  # the caller's inline test and Grant.lapsed agree (a test holds them to it)
            return
        self.unauthenticated += 1
        retired = lapsed.details["reason"] == KEY_RETIRED
        self._refusals.info(
            "node %d: sub=%r: token %s", self._node_id, grant.claims.sub, "key retired" if retired else "expired"
        )
        raise lapsed

    def _whole_kv_ops(self, texts: tuple[str, ...], granted: tuple[scopes.Scope, ...]) -> frozenset[str]:
        ops = self._whole_kv.get(texts)
        if ops is None:
            if len(self._whole_kv) >= WHOLE_KV_CACHE_MAX:
                self._whole_kv.clear()
            ops = self._whole_kv[texts] = whole_kv_ops(granted)
        return ops

    # ------------------------------------------------------------------ after each apply round

    @property
    def generation(self) -> int:
        """Moves when a revocation or a key retirement is applied (the auth service's generation)."""
        return self._auth.generation

    def generation_moved(self) -> bool:
        """Was a revocation or a key retirement applied since the last call? (One int compare.)"""
        generation = self._auth.generation
        if generation == self._generation:
            return False
        self._generation = generation
        return True

    def recheck(self, grant: Grant) -> Unauthenticated | None:
        """The refusal of a live connection's token after a revocation or a retirement, or None if
        it still holds (then its key's not-after is refreshed)."""
        exc = self._auth.recheck(grant, self.now_ms())
        if exc is None:
            return None
        self.connections_closed += 1
        log.info("node %d: closing a connection of sub=%r: %s", self._node_id, grant.claims.sub, exc.message)
        return exc
