"""Parsing and validation of the job service's commands and queries (see :mod:`trimaran.services.jobs`).

Every check here depends on the input alone, never on the service's state, so a malformed command is
refused identically on every replica before anything changes. The shape rule is the KV service's::

    [op, required positional arguments..., {optional arguments by name}?]

The options map may be left out or be ``None``; an option given as ``None`` means "not given".
Unknown ops, wrong argument counts, unknown option names and wrongly typed values are
``InvalidArgument``; a payload, result or name over its limit is ``TooLarge`` (a subclass). Numbers
are ints (never floats: no NaN or rounding may differ between replicas; bools are refused).
"""

from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple

from trimaran import limits
from trimaran.errors import InvalidArgument, TooLarge
from trimaran.protocols.codec import brief
from trimaran.protocols import command_shape
from trimaran.protocols.command_shape import split
from trimaran.services.jobs import cron

#: Far beyond any log time (ms since the epoch) the service meets; bounds sums below int64.
TIME_MS_MAX = 1 << 52

BACKOFF_KINDS = ("fixed", "exponential")
JOB_STATES = ("waiting", "delayed", "ready", "running", "completed", "failed", "dead", "cancelled", "expired")
#: A job id as the service makes them: "<entry index>-<position in the entry>".
JOB_ID = re.compile(r"(0|[1-9][0-9]{0,17})-(0|[1-9][0-9]{0,17})")


class Backoff(NamedTuple):
    """``kind`` "fixed" waits ``delay_ms`` before each retry; "exponential" waits ``delay_ms * 2**(n-1)``
    before retry n; both capped at ``max_ms``, then shortened by a deterministic jitter of up to
    ``jitter_pct`` percent (see :func:`trimaran.services.jobs.backoff.retry_delay_ms`)."""

    kind: str = "exponential"
    delay_ms: int = 1_000
    max_ms: int = 3_600_000
    jitter_pct: int = 20


DEFAULT_BACKOFF = Backoff()


class JobSpec(NamedTuple):
    """One job to enqueue. ``None`` timeout/result TTL: the service's defaults."""

    queue: str
    payload: bytes
    priority: int = 0
    delay_ms: int | None = None
    run_at_ms: int | None = None
    unique_key: str | None = None
    unique_window_ms: int = 0
    max_attempts: int = limits.job_attempts_default
    backoff: Backoff = DEFAULT_BACKOFF
    timeout_ms: int | None = None
    expires_at_ms: int = 0
    depends_on: tuple[str, ...] = ()
    group: str = ""
    result_ttl_ms: int | None = None


class EnqueueCmd(NamedTuple):
    specs: tuple[JobSpec, ...]
    #: ``enqueue`` answers one id, ``enqueue_batch`` a list.
    batch: bool


class ClaimCmd(NamedTuple):
    session: str
    queues: tuple[str, ...]
    n: int
    #: How long the node may hold the claim before proposing it (a long poll, see
    #: :mod:`trimaran.node.claim_waits`); the service ignores it when applying.
    wait_ms: int = 0


class SessionOpenCmd(NamedTuple):
    worker: str
    ttl_ms: int


class HeartbeatJob(NamedTuple):
    job: str
    token: int
    extend_ms: int | None
    progress: bytes | None


class HeartbeatCmd(NamedTuple):
    session: str
    jobs: tuple[HeartbeatJob, ...]


class SessionCloseCmd(NamedTuple):
    session: str


class CompleteCmd(NamedTuple):
    job: str
    token: int
    result: bytes | None


class CompleteBatchCmd(NamedTuple):
    """Several ``complete``s in one command, each applied as its own in order (one stale token
    refuses that job alone)."""

    items: tuple[CompleteCmd, ...]


class FailCmd(NamedTuple):
    job: str
    token: int
    error: str
    retry: bool


class ReleaseCmd(NamedTuple):
    job: str
    token: int


class AckCancelCmd(NamedTuple):
    job: str
    token: int


class CancelCmd(NamedTuple):
    job: str


class DlqCmd(NamedTuple):
    """``dlq_requeue`` / ``dlq_purge``: the ids named, or (None) the oldest up to the batch bound."""

    queue: str
    jobs: tuple[str, ...] | None
    purge: bool


class PauseCmd(NamedTuple):
    queue: str
    paused: bool


class QueueConfigCmd(NamedTuple):
    queue: str
    #: Option name -> int (0 = no limit); only the options given.
    settings: tuple[tuple[str, int], ...]


class ScheduleCmd(NamedTuple):
    name: str
    cron: str | None
    every_ms: int | None
    start_ms: int | None
    catch_up: bool
    #: The job each slot enqueues (its delay and dependencies are refused: a slot is its run time).
    spec: JobSpec


class UnscheduleCmd(NamedTuple):
    name: str


# --- queries -------------------------------------------------------------------------------------


class JobQuery(NamedTuple):
    job: str


class ResultQuery(NamedTuple):
    job: str


class StatsQuery(NamedTuple):
    queue: str


class QueuesQuery(NamedTuple):
    start_after: str | None
    limit: int


class ReadyQuery(NamedTuple):
    queues: tuple[str, ...]


class DlqQuery(NamedTuple):
    queue: str
    start_after: str | None
    limit: int


class ListQuery(NamedTuple):
    queue: str
    state: str | None
    #: (index, position) of the job id to start after.
    start_after: tuple[int, int] | None
    limit: int


class SchedulesQuery(NamedTuple):
    pass


class SessionQuery(NamedTuple):
    session: str


# --- field checks --------------------------------------------------------------------------------


def name_arg(v: Any, what: str) -> str:
    if type(v) is not str:
        raise InvalidArgument(f"{what} must be a string, not {type(v).__name__}")
    if not v:
        raise InvalidArgument(f"{what} must not be empty")
    if len(v) > limits.job_name_chars_max:
        raise TooLarge(f"{what} of {len(v)} characters is over job_name_chars_max={limits.job_name_chars_max}")
    return v


def bytes_arg(v: Any, what: str, size_max: int, limit_name: str) -> bytes:
    if type(v) is not bytes:
        raise InvalidArgument(f"{what} must be bytes, not {type(v).__name__}")
    if len(v) > size_max:
        raise TooLarge(f"{what} of {len(v)} bytes is over {limit_name}={size_max}")
    return v


def int_arg(v: Any, what: str, minimum: int, maximum: int) -> int:
    if type(v) is not int:  # also refuses bool, a subclass of int
        raise InvalidArgument(f"{what} must be an integer, not {type(v).__name__}")
    if not minimum <= v <= maximum:
        raise InvalidArgument(f"{what} must be between {minimum} and {maximum}, not {v}")
    return v


def bool_arg(v: Any, what: str, default: bool = False) -> bool:
    if v is None:
        return default
    if type(v) is not bool:
        raise InvalidArgument(f"{what} must be a boolean, not {type(v).__name__}")
    return v


def names_arg(v: Any, what: str, count_max: int) -> tuple[str, ...]:
    """A list of distinct names, 1..count_max long, in the order given."""
    if type(v) is not list or not v:
        raise InvalidArgument(f"{what} must be a non-empty list")
    if len(v) > count_max:
        raise TooLarge(f"{what} names {len(v)}; at most {count_max}")
    out = tuple(name_arg(x, what) for x in v)
    if len(set(out)) != len(out):
        raise InvalidArgument(f"{what} names one entry twice")
    return out


def token_arg(v: Any) -> int:
    return int_arg(v, "token", 1, TIME_MS_MAX)


def backoff_arg(v: Any) -> Backoff:
    if type(v) is not dict:
        raise InvalidArgument("backoff must be a map {kind, delay_ms, max_ms, jitter_pct}")
    unknown = sorted(str(k) for k in v if k not in Backoff._fields)
    if unknown:
        raise InvalidArgument(f"backoff: unknown field(s) {', '.join(unknown)}")
    kind = v.get("kind") or DEFAULT_BACKOFF.kind
    if kind not in BACKOFF_KINDS:
        raise InvalidArgument(f"backoff kind must be one of {', '.join(BACKOFF_KINDS)}, not {brief(kind)}")
    delay_ms = int_arg(v.get("delay_ms", DEFAULT_BACKOFF.delay_ms), "backoff delay_ms", 0, limits.job_backoff_ms_max)
    max_ms = int_arg(v.get("max_ms", max(delay_ms, DEFAULT_BACKOFF.max_ms)), "backoff max_ms", 0, limits.job_backoff_ms_max)
    if max_ms < delay_ms:
        raise InvalidArgument(f"backoff max_ms ({max_ms}) is below its delay_ms ({delay_ms})")
    jitter_pct = int_arg(v.get("jitter_pct", DEFAULT_BACKOFF.jitter_pct), "backoff jitter_pct", 0, 100)
    return Backoff(kind, delay_ms, max_ms, jitter_pct)


ENQUEUE_OPTIONS = (
    "priority", "delay_ms", "run_at_ms", "unique_key", "unique_window_ms", "max_attempts", "backoff",
    "timeout_ms", "expires_at_ms", "depends_on", "group", "result_ttl_ms",
)  # fmt: skip


def job_spec(queue: Any, payload: Any, opts: dict[str, Any]) -> JobSpec:
    """One job's validated fields (``opts`` already stripped of None values)."""
    if not opts:  # (most jobs: every option its default, checked once here rather than per job)
        return JobSpec(name_arg(queue, "queue"), bytes_arg(payload, "payload", limits.job_payload_bytes_max, "job_payload_bytes_max"))
    unknown = sorted(str(k) for k in opts if k not in ENQUEUE_OPTIONS)
    if unknown:
        raise InvalidArgument(f"enqueue: unknown option(s) {', '.join(unknown)} (allowed: {', '.join(ENQUEUE_OPTIONS)})")
    if "delay_ms" in opts and "run_at_ms" in opts:
        raise InvalidArgument("enqueue takes delay_ms or run_at_ms, not both")
    o = opts.get
    depends_on = () if o("depends_on") is None else names_arg(o("depends_on"), "depends_on", limits.job_depends_on_max)
    return JobSpec(
        queue=name_arg(queue, "queue"),
        payload=bytes_arg(payload, "payload", limits.job_payload_bytes_max, "job_payload_bytes_max"),
        priority=int_arg(o("priority", 0), "priority", -limits.job_priority_max, limits.job_priority_max),
        delay_ms=None if o("delay_ms") is None else int_arg(o("delay_ms"), "delay_ms", 0, limits.job_delay_ms_max),
        run_at_ms=None if o("run_at_ms") is None else int_arg(o("run_at_ms"), "run_at_ms", 0, TIME_MS_MAX),
        unique_key=None if o("unique_key") is None else name_arg(o("unique_key"), "unique_key"),
        unique_window_ms=int_arg(o("unique_window_ms", 0), "unique_window_ms", 0, limits.job_result_ttl_ms_max),
        max_attempts=int_arg(o("max_attempts", limits.job_attempts_default), "max_attempts", 1, limits.job_attempts_max),
        backoff=DEFAULT_BACKOFF if o("backoff") is None else backoff_arg(o("backoff")),
        timeout_ms=None if o("timeout_ms") is None else int_arg(o("timeout_ms"), "timeout_ms", 1, limits.job_timeout_ms_max),
        expires_at_ms=int_arg(o("expires_at_ms", 0), "expires_at_ms", 0, TIME_MS_MAX),
        depends_on=depends_on,
        group="" if o("group") is None else name_arg(o("group"), "group"),
        result_ttl_ms=None if o("result_ttl_ms") is None else int_arg(o("result_ttl_ms"), "result_ttl_ms", 0, limits.job_result_ttl_ms_max),
    )


# --- commands ------------------------------------------------------------------------------------


def _enqueue(c: list[Any]) -> EnqueueCmd:
    (queue, payload), opts = split(c, "command", 2, ENQUEUE_OPTIONS)
    return EnqueueCmd((job_spec(queue, payload, opts),), batch=False)


def _batch_items(c: list[Any], shape: str, limit: str) -> list[list[Any]]:
    """The items of a batch command ``[op, [item, ...]]``: a non-empty list of at most ``limits.<limit>``
    lists of 2 or 3 elements (``shape`` names them, for the error)."""
    (items,), _ = split(c, "command", 1, ())
    if type(items) is not list or not items:
        raise InvalidArgument(f"{c[0]} takes a non-empty list of {shape}")
    if len(items) > getattr(limits, limit):
        raise TooLarge(f"{c[0]} of {len(items)} jobs is over {limit}={getattr(limits, limit)}")
    for item in items:
        if type(item) is not list or len(item) not in (2, 3):
            raise InvalidArgument(f"each {c[0]} item is {shape}")
    return items


def _enqueue_batch(c: list[Any]) -> EnqueueCmd:
    specs = []
    for item in _batch_items(c, "[queue, payload, {options}?]", "job_enqueue_batch_max"):
        if len(item) == 3 and item[2] is not None and type(item[2]) is not dict:
            raise InvalidArgument("each enqueue_batch item is [queue, payload, {options}?]")
        opts = {k: v for k, v in (item[2] or {}).items() if v is not None} if len(item) == 3 else {}
        specs.append(job_spec(item[0], item[1], opts))
    return EnqueueCmd(tuple(specs), batch=True)


def _claim(c: list[Any]) -> ClaimCmd:
    (session, queues, n), opts = split(c, "command", 3, ("wait_ms",))
    return ClaimCmd(
        name_arg(session, "session"),
        names_arg(queues, "queues", limits.job_claim_queues_max),
        int_arg(n, "n", 1, limits.job_claim_jobs_max),
        int_arg(opts.get("wait_ms", 0), "wait_ms", 0, limits.job_claim_wait_ms_max),
    )


def _session_open(c: list[Any]) -> SessionOpenCmd:
    (worker, ttl_ms), _ = split(c, "command", 2, ())
    return SessionOpenCmd(name_arg(worker, "worker"), int_arg(ttl_ms, "ttl_ms", 1, limits.job_session_ttl_ms_max))


def _heartbeat(c: list[Any]) -> HeartbeatCmd:
    (session,), opts = split(c, "command", 1, ("jobs",))
    items = opts.get("jobs", [])
    if type(items) is not list:
        raise InvalidArgument("heartbeat jobs must be a list of [job, token, {extend_ms, progress}?]")
    if len(items) > limits.job_session_jobs_max:
        raise TooLarge(f"heartbeat names {len(items)} jobs; at most job_session_jobs_max={limits.job_session_jobs_max}")
    jobs = []
    for item in items:
        if type(item) is not list or len(item) not in (2, 3):
            raise InvalidArgument("each heartbeat job is [job, token, {extend_ms, progress}?]")
        extra = item[2] if len(item) == 3 and item[2] is not None else {}
        if type(extra) is not dict or any(k not in ("extend_ms", "progress") for k in extra):
            raise InvalidArgument("a heartbeat job's options are {extend_ms, progress}")
        extend = extra.get("extend_ms")
        progress = extra.get("progress")
        jobs.append(
            HeartbeatJob(
                name_arg(item[0], "job"),
                token_arg(item[1]),
                None if extend is None else int_arg(extend, "extend_ms", 1, limits.job_timeout_ms_max),
                None if progress is None else bytes_arg(progress, "progress", limits.job_progress_bytes_max, "job_progress_bytes_max"),
            )
        )
    return HeartbeatCmd(name_arg(session, "session"), tuple(jobs))


def _session_close(c: list[Any]) -> SessionCloseCmd:
    (session,), _ = split(c, "command", 1, ())
    return SessionCloseCmd(name_arg(session, "session"))


def _complete(c: list[Any]) -> CompleteCmd:
    (job, token), opts = split(c, "command", 2, ("result",))
    result = opts.get("result")
    return CompleteCmd(
        name_arg(job, "job"),
        token_arg(token),
        None if result is None else bytes_arg(result, "result", limits.job_result_bytes_max, "job_result_bytes_max"),
    )


def _complete_batch(c: list[Any]) -> CompleteBatchCmd:
    items = _batch_items(c, "[job, token, {result}?]", "job_complete_batch_max")
    return CompleteBatchCmd(tuple(_completion(item) for item in items))


def _completion(item: list[Any]) -> CompleteCmd:
    """One ``complete_batch`` item: ``_complete``'s checks, without rebuilding the command for the
    shape a worker sends (``[job, token, {"result": bytes}]``)."""
    opts = item[2] if len(item) == 3 else None
    if type(opts) is not dict or len(opts) != 1 or "result" not in opts:
        return _complete(["complete", *item])
    result = opts["result"]
    return CompleteCmd(
        name_arg(item[0], "job"),
        token_arg(item[1]),
        None if result is None else bytes_arg(result, "result", limits.job_result_bytes_max, "job_result_bytes_max"),
    )


def _fail(c: list[Any]) -> FailCmd:
    (job, token), opts = split(c, "command", 2, ("error", "retry"))
    error = opts.get("error", "")
    if type(error) is not str:
        raise InvalidArgument(f"error must be a string, not {type(error).__name__}")
    if len(error) > limits.job_error_chars_max:
        raise TooLarge(f"error of {len(error)} characters is over job_error_chars_max={limits.job_error_chars_max}")
    return FailCmd(name_arg(job, "job"), token_arg(token), error, bool_arg(opts.get("retry"), "retry", default=True))


def _release(c: list[Any]) -> ReleaseCmd:
    (job, token), _ = split(c, "command", 2, ())
    return ReleaseCmd(name_arg(job, "job"), token_arg(token))


def _ack_cancel(c: list[Any]) -> AckCancelCmd:
    (job, token), _ = split(c, "command", 2, ())
    return AckCancelCmd(name_arg(job, "job"), token_arg(token))


def _cancel(c: list[Any]) -> CancelCmd:
    (job,), _ = split(c, "command", 1, ())
    return CancelCmd(name_arg(job, "job"))


def _dlq(c: list[Any]) -> DlqCmd:
    (queue,), opts = split(c, "command", 1, ("jobs",))
    jobs = opts.get("jobs")
    return DlqCmd(
        name_arg(queue, "queue"),
        None if jobs is None else names_arg(jobs, "jobs", limits.job_dlq_batch_max),
        purge=c[0] == "dlq_purge",
    )


def _pause(c: list[Any]) -> PauseCmd:
    (queue,), _ = split(c, "command", 1, ())
    return PauseCmd(name_arg(queue, "queue"), paused=c[0] == "pause")


QUEUE_SETTINGS = ("concurrency", "rate_max", "rate_window_ms", "group_concurrency", "group_rate_max", "group_rate_window_ms")


def _queue_config(c: list[Any]) -> QueueConfigCmd:
    (queue,), opts = split(c, "command", 1, QUEUE_SETTINGS)
    settings = []
    for key in QUEUE_SETTINGS:  # a fixed order, whatever the map's
        if key in opts:
            top = limits.job_rate_window_ms_max if key.endswith("window_ms") else limits.job_queue_jobs_max
            settings.append((key, int_arg(opts[key], key, 0, top)))
    return QueueConfigCmd(name_arg(queue, "queue"), tuple(settings))


SCHEDULE_OPTIONS = ("cron", "every_ms", "start_ms", "catch_up", "job")


def _schedule(c: list[Any]) -> ScheduleCmd:
    (name, queue, payload), opts = split(c, "command", 3, SCHEDULE_OPTIONS)
    expr, every_ms = opts.get("cron"), opts.get("every_ms")
    if (expr is None) == (every_ms is None):
        raise InvalidArgument("schedule takes exactly one of cron and every_ms")
    if expr is not None:
        if type(expr) is not str or len(expr) > limits.job_name_chars_max:
            raise InvalidArgument("cron must be a string of at most job_name_chars_max characters")
        cron.check(expr)
    job_opts = opts.get("job", {})
    if type(job_opts) is not dict:
        raise InvalidArgument("schedule's job option is a map of enqueue options")
    job_opts = {k: v for k, v in job_opts.items() if v is not None}
    for refused in ("delay_ms", "run_at_ms", "depends_on", "expires_at_ms"):
        if refused in job_opts:
            raise InvalidArgument(f"a scheduled job cannot take {refused}: its slot is when it runs")
    start_ms = opts.get("start_ms")
    return ScheduleCmd(
        name=name_arg(name, "schedule name"),
        cron=expr,
        every_ms=None if every_ms is None else int_arg(every_ms, "every_ms", 1, limits.job_delay_ms_max),
        start_ms=None if start_ms is None else int_arg(start_ms, "start_ms", 0, TIME_MS_MAX),
        catch_up=bool_arg(opts.get("catch_up"), "catch_up"),
        spec=job_spec(queue, payload, job_opts),
    )


def _unschedule(c: list[Any]) -> UnscheduleCmd:
    (name,), _ = split(c, "command", 1, ())
    return UnscheduleCmd(name_arg(name, "schedule name"))


Command = (
    EnqueueCmd | ClaimCmd | SessionOpenCmd | HeartbeatCmd | SessionCloseCmd | CompleteCmd | CompleteBatchCmd | FailCmd | ReleaseCmd
    | AckCancelCmd | CancelCmd | DlqCmd | PauseCmd | QueueConfigCmd | ScheduleCmd | UnscheduleCmd
)  # fmt: skip

_COMMAND_PARSERS: dict[str, Callable[[list[Any]], Command]] = {
    "enqueue": _enqueue,
    "enqueue_batch": _enqueue_batch,
    "claim": _claim,
    "session_open": _session_open,
    "heartbeat": _heartbeat,
    "session_close": _session_close,
    "complete": _complete,
    "complete_batch": _complete_batch,
    "fail": _fail,
    "release": _release,
    "ack_cancel": _ack_cancel,
    "cancel": _cancel,
    "dlq_requeue": _dlq,
    "dlq_purge": _dlq,
    "pause": _pause,
    "resume": _pause,
    "queue_config": _queue_config,
    "schedule": _schedule,
    "unschedule": _unschedule,
}


def parse_command(message: Any) -> Command:
    """A validated command, or ``InvalidArgument`` / ``TooLarge``."""
    return command_shape.parse(message, "jobs", "command", _COMMAND_PARSERS)


# --- queries -------------------------------------------------------------------------------------


def _job_query(q: list[Any]) -> JobQuery | ResultQuery:
    (job,), _ = split(q, "query", 1, ())
    return (JobQuery if q[0] == "job" else ResultQuery)(name_arg(job, "job"))


def _stats(q: list[Any]) -> StatsQuery:
    (queue,), _ = split(q, "query", 1, ())
    return StatsQuery(name_arg(queue, "queue"))


def _ready(q: list[Any]) -> ReadyQuery:
    (queues,), _ = split(q, "query", 1, ())
    return ReadyQuery(names_arg(queues, "queues", limits.job_claim_queues_max))


def _dlq_query(q: list[Any]) -> DlqQuery:
    (queue,), opts = split(q, "query", 1, ("start_after", "limit"))
    start_after = opts.get("start_after")
    return DlqQuery(
        name_arg(queue, "queue"),
        None if start_after is None else name_arg(start_after, "start_after"),
        int_arg(opts.get("limit", limits.job_dlq_batch_max), "limit", 1, limits.job_dlq_batch_max),
    )


def _list(q: list[Any]) -> ListQuery:
    (queue,), opts = split(q, "query", 1, ("state", "start_after", "limit"))
    state = opts.get("state")
    if state is not None and state not in JOB_STATES:
        raise InvalidArgument(f"state must be one of {', '.join(JOB_STATES)}, not {brief(state)}")
    start_after = opts.get("start_after")
    cursor = None
    if start_after is not None:
        match = JOB_ID.fullmatch(name_arg(start_after, "start_after"))
        if match is None:
            raise InvalidArgument(f"start_after must be a job id, not {brief(start_after)}")
        cursor = (int(match[1]), int(match[2]))
    return ListQuery(
        name_arg(queue, "queue"), state, cursor, int_arg(opts.get("limit", limits.job_dlq_batch_max), "limit", 1, limits.job_dlq_batch_max)
    )


def _queues_query(q: list[Any]) -> QueuesQuery:
    _, opts = split(q, "query", 0, ("start_after", "limit"))
    start_after = opts.get("start_after")
    return QueuesQuery(
        None if start_after is None else name_arg(start_after, "start_after"),
        int_arg(opts.get("limit", limits.job_dlq_batch_max), "limit", 1, limits.job_dlq_batch_max),
    )


def _schedules(q: list[Any]) -> SchedulesQuery:
    split(q, "query", 0, ())
    return SchedulesQuery()


def _session(q: list[Any]) -> SessionQuery:
    (session,), _ = split(q, "query", 1, ())
    return SessionQuery(name_arg(session, "session"))


Query = JobQuery | ResultQuery | StatsQuery | QueuesQuery | ReadyQuery | DlqQuery | ListQuery | SchedulesQuery | SessionQuery

_QUERY_PARSERS: dict[str, Callable[[list[Any]], Query]] = {
    "job": _job_query,
    "result": _job_query,
    "stats": _stats,
    "queues": _queues_query,
    "ready": _ready,
    "dlq": _dlq_query,
    "list": _list,
    "schedules": _schedules,
    "session": _session,
}


def parse_query(message: Any) -> Query:
    """A validated query, or ``InvalidArgument`` / ``TooLarge``."""
    return command_shape.parse(message, "jobs", "query", _QUERY_PARSERS)
