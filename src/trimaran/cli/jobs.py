"""``trimaran jobs ...`` (the job queue through the client, ``c.jobs``) and ``trimaran worker``
(trimaran.client.worker running an app's tasks)."""

from __future__ import annotations

from typing import Any

import click

from trimaran import limits
from trimaran.cli import ClientArgs, _DEFAULT_ENDPOINTS, ca_file_option, _check_endpoints, _client_call, _client_options, _log_level_option, _none_found, _service, main


@main.command("worker")
@click.argument("app")
@click.option("--queues", help="Comma-separated queues to take jobs from (default: every queue the app has a task for).")
@click.option("--concurrency", type=click.IntRange(1, 1000), default=8, show_default=True, help="Jobs run at once.")
@click.option(
    "--session-ttl-ms",
    type=click.IntRange(3, 3_600_000),
    default=30_000,
    show_default=True,
    help="Worker session TTL: without a heartbeat (sent every TTL/3) for this long, its jobs are released.",
)
@click.option(
    "--grace-ms",
    type=click.IntRange(min=0),
    default=10_000,
    show_default=True,
    help="On SIGTERM/SIGINT, how long running jobs may finish before they are given back unrun.",
)
@click.option(
    "--endpoints",
    envvar="TRIMARAN_ENDPOINTS",
    callback=lambda ctx, param, value: None if value is None else _check_endpoints(ctx, param, value),
    help="Comma-separated HOST:PORT client addresses [env TRIMARAN_ENDPOINTS; default: the app's, else the `trimaran up` ports].",
)
@click.option("--cluster-id", envvar="TRIMARAN_CLUSTER_ID", help="Refuse nodes of any other cluster [env TRIMARAN_CLUSTER_ID].")
@click.option("--token", envvar="TRIMARAN_TOKEN", help="Auth token for the handshake [env TRIMARAN_TOKEN].")
@ca_file_option
@click.option("--timeout-ms", type=click.IntRange(min=1), default=5_000, show_default=True, help="Deadline of each call to the cluster.")
@_log_level_option("Log level (to stderr).")
def worker_command(
    app: str,
    queues: str | None,
    concurrency: int,
    session_ttl_ms: int,
    grace_ms: int,
    endpoints: str | None,
    cluster_id: str | None,
    token: str | None,
    timeout_ms: int,
    log_level: str,
) -> None:
    """Run the job worker of APP (MODULE:ATTRIBUTE, a trimaran.Jobs) until SIGTERM or SIGINT.

    Claims jobs in batches up to --concurrency, heartbeats its session, runs each job under its
    lease and reports the outcome with its fencing token. The first SIGTERM/SIGINT stops claiming
    and lets running jobs finish within --grace-ms (the rest are given back unrun); then it exits 0.
    A second signal stops at once.
    """
    import logging

    from trimaran.client.commands import load_app, run_worker

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    jobs_app = _client_call(load_app, app)
    if endpoints is None and jobs_app.endpoints is None:
        endpoints = _DEFAULT_ENDPOINTS
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    _client_call(
        run_worker, jobs_app, endpoints, queues=names, concurrency=concurrency, session_ttl_ms=session_ttl_ms,
        grace_ms=grace_ms, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms,
        on_started=lambda w: click.echo(f"worker {w.name} session {w.session}: queues {','.join(w.queues)}", err=True),
    )  # fmt: skip


@main.group("jobs")
def jobs_group() -> None:
    """The job queue: enqueue, show, list, stats, cancel, retry, dlq, pause, resume, schedule, unschedule and schedules.

    Payloads are JSON on the command line (stored as msgpack); a worker's task gets a JSON object
    as keyword arguments. Run workers with `trimaran worker MODULE:APP`.
    """


def _jobs(client: ClientArgs, method: str, *args: Any, **options: Any) -> Any:
    return _service("jobs", client, method, *args, **options)


def _json_arg(text: str | None, what: str) -> Any:
    import json

    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"{what} is not JSON: {exc}") from None


def _utc(ms: int) -> str:
    """A log-time instant (ms since the epoch) as RFC 3339 UTC, to the second."""
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _dumps(value: Any, **options: Any) -> str:
    import json

    from trimaran.client.commands import json_default

    return json.dumps(value, default=json_default, **options)


def _job_line(info: Any) -> str:
    return f"{info.id}\t{info.state}\t{info.attempt}/{info.max_attempts}\t{_dumps(info.payload)}"


def _task_options(app_target: str, queue: str) -> dict[str, Any]:
    """The job options of the task for ``queue`` in the app ``MODULE:APP``, named as ``c.jobs.enqueue``
    takes them (a task's ``timeout_ms`` is the job's: ``job_timeout_ms`` there)."""
    from trimaran.client.commands import load_app

    jobs_app = _client_call(load_app, app_target)
    task = jobs_app.tasks.get(queue)
    if task is None:
        tasks = ", ".join(sorted(jobs_app.tasks)) or "none"
        raise click.BadParameter(f"{app_target} has no task for queue {queue} (its queues: {tasks})", param_hint="--app")
    options = dict(task.defaults)
    if "timeout_ms" in options:
        options["job_timeout_ms"] = options.pop("timeout_ms")
    return options


@jobs_group.command("enqueue")
@click.argument("queue")
@click.argument("payload", required=False)
@click.option("--priority", type=click.IntRange(-limits.job_priority_max, limits.job_priority_max), help="Higher is claimed first (default 0).")
@click.option("--delay-ms", type=click.IntRange(min=0), help="Not claimable before this many milliseconds from now.")
@click.option("--unique-key", help="At most one live job per key in the queue: a second enqueue returns the first job's id.")
@click.option(
    "--max-attempts",
    type=click.IntRange(1, limits.job_attempts_max),
    help="Attempts before the job is dead-lettered [default: the --app task's max_attempts, else the "
    f"cluster's, {limits.job_attempts_default}].",
)
@click.option("--job-timeout-ms", type=click.IntRange(min=1), help="The job's lease: how long one attempt may run.")
@click.option("--group", help="The job's group (per-group concurrency and rate limits).")
@click.option(
    "--app",
    "app_target",
    metavar="MODULE:APP",
    help="Enqueue with the options of APP's task for QUEUE (max attempts, job timeout, priority, "
    "backoff, result TTL, group), as the task's own enqueue does; the flags given win.",
)
@_client_options(default_timeout_ms=5_000)
def jobs_enqueue_command(
    queue: str,
    payload: str | None,
    priority: int | None,
    delay_ms: int | None,
    unique_key: str | None,
    max_attempts: int | None,
    job_timeout_ms: int | None,
    group: str | None,
    app_target: str | None,
    client: ClientArgs,
    as_json: bool,
) -> None:
    """Enqueue a job with PAYLOAD (JSON; default null) to QUEUE; prints its id.

    An option not given is not sent (the cluster's default applies) unless --app names the task
    whose options to take: a task's options (`@app.task(QUEUE, max_attempts=5)`) live in its app,
    which the cluster does not know."""
    options = dict(priority=priority, delay_ms=delay_ms, unique_key=unique_key, max_attempts=max_attempts, job_timeout_ms=job_timeout_ms, group=group)
    value = _json_arg(payload, "PAYLOAD")
    given = {k: v for k, v in options.items() if v is not None}
    if app_target is not None:
        given = _task_options(app_target, queue) | given
    job_id = _jobs(client, "enqueue", queue, value, **given)
    click.echo(_dumps({"id": job_id}) if as_json else job_id)


@jobs_group.command("show")
@click.argument("job")
@click.option("--wait-ms", type=click.IntRange(min=0), default=0, show_default=True, help="Wait up to this long for the job to end.")
@_client_options(default_timeout_ms=5_000)
def jobs_show_command(
    job: str, wait_ms: int, client: ClientArgs, as_json: bool
) -> None:
    """Print JOB's fields (state, attempts, payload, result, error...); exit status 1 if unknown."""
    if wait_ms:
        _jobs(client.with_timeout(max(client.timeout_ms, wait_ms + client.timeout_ms)), "result", job, wait_ms=wait_ms)
    info = _jobs(client, "job", job)
    if info is None:
        raise click.ClickException(f"job not found: {job}")
    fields = info.to_json()
    if as_json:
        click.echo(_dumps(fields))
        return
    for name, value in fields.items():
        click.echo(f"{name:17} {_dumps(value)}")


@jobs_group.command("list")
@click.argument("queue")
@click.option("--state", type=click.Choice(["waiting", "delayed", "ready", "running", "completed", "failed", "dead", "cancelled", "expired"]), help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), help="Jobs at most (one page).")
@click.option("--start-after", help="The job id the page starts after (the previous page's next).")
@_client_options(default_timeout_ms=5_000)
def jobs_list_command(
    queue: str, state: str | None, limit: int | None, start_after: str | None,
    client: ClientArgs, as_json: bool,
) -> None:  # fmt: skip
    """Print QUEUE's jobs in creation order: ID STATE ATTEMPT/MAX PAYLOAD (JSON lines with --json)."""
    page = _jobs(client, "list_jobs", queue, state=state, limit=limit, start_after=start_after)
    for info in page.items:
        click.echo(_dumps(info.to_json()) if as_json else _job_line(info))
    if not page.items:
        _none_found(f"no {state + ' ' if state else ''}jobs in {queue}" + (f" after {start_after}" if start_after else ""), as_json)
    if page.next is not None:
        click.echo(f"more: --start-after {page.next}", err=True)


@jobs_group.command("stats")
@click.argument("queue")
@_client_options(default_timeout_ms=5_000)
def jobs_stats_command(queue: str, client: ClientArgs, as_json: bool) -> None:
    """Print how many of QUEUE's jobs are in each state, whether it is paused, and its limits."""
    stats = _jobs(client, "stats", queue).to_json()
    if as_json:
        click.echo(_dumps(stats))
        return
    for name, value in stats.items():
        click.echo(f"{name:21} {value}")


@jobs_group.command("queues")
@click.option("--limit", type=click.IntRange(1, 1000), help="Queues at most (one page).")
@click.option("--start-after", help="The queue name the page starts after (the previous page's next).")
@_client_options(default_timeout_ms=5_000)
def jobs_queues_command(
    limit: int | None, start_after: str | None, client: ClientArgs, as_json: bool
) -> None:
    """Print every queue: NAME READY DELAYED RUNNING DEAD HELD (every job the queue still holds:
    waiting, delayed, ready, running, dead, and ended ones kept for their result), and (paused)
    (JSON lines with --json)."""
    page = _jobs(client, "queues", limit=limit, start_after=start_after)
    if not as_json and page.items:
        click.echo(f"{'QUEUE':24} {'READY':>7} {'DELAYED':>7} {'RUNNING':>7} {'DEAD':>7} {'HELD':>7}")
    for item in page.items:
        if as_json:
            click.echo(_dumps(item))
            continue
        paused = "  (paused)" if item["paused"] else ""
        click.echo(f"{item['queue']:24} {item['ready']:>7} {item['delayed']:>7} {item['running']:>7} {item['dead']:>7} {item['held']:>7}{paused}")
    if not page.items:
        _none_found("no queues" + (f" after {start_after}" if start_after else "") + " (a queue exists once a job is enqueued to it)", as_json)
    if page.next is not None:
        click.echo(f"more: --start-after {page.next}", err=True)


@jobs_group.command("cancel")
@click.argument("job")
@_client_options(default_timeout_ms=5_000)
def jobs_cancel_command(job: str, client: ClientArgs, as_json: bool) -> None:
    """Cancel JOB: "cancelled", "cancelling" (running: its worker stops it), or the state it ended in."""
    state = _jobs(client, "cancel", job)
    click.echo(_dumps({"id": job, "state": state}) if as_json else state)


def _echo_requeued(ids: list[str], as_json: bool, none_found: str) -> None:
    """The ids requeued, one per line (an empty list printed a blank line), or one JSON object."""
    if as_json:
        click.echo(_dumps({"requeued": ids}))
    elif ids:
        click.echo("\n".join(ids))
    else:
        _none_found(none_found, as_json)


@jobs_group.command("retry")
@click.argument("jobs", nargs=-1, required=True)
@_client_options(default_timeout_ms=5_000)
def jobs_retry_command(
    jobs: tuple[str, ...], client: ClientArgs, as_json: bool
) -> None:
    """Requeue dead JOBS from their dead-letter list, attempts reset; prints each id requeued."""
    requeued = [i for job in jobs for i in _jobs(client, "retry", job)]
    _echo_requeued(requeued, as_json, "nothing requeued")


@jobs_group.command("dlq")
@click.argument("queue")
@click.option("--limit", type=click.IntRange(1, 1000), help="Jobs at most (one page).")
@click.option("--purge", is_flag=True, help="Delete the oldest dead jobs (up to 1000) instead of listing them.")
@click.option("--requeue", is_flag=True, help="Requeue the oldest dead jobs (up to 1000) instead of listing them.")
@_client_options(default_timeout_ms=5_000)
def jobs_dlq_command(
    queue: str, limit: int | None, purge: bool, requeue: bool,
    client: ClientArgs, as_json: bool,
) -> None:  # fmt: skip
    """Print QUEUE's dead-letter list, oldest death first: ID STATE ATTEMPT/MAX PAYLOAD, then the
    error indented (JSON lines with --json); or purge or requeue it."""
    if purge and requeue:
        raise click.UsageError("--purge or --requeue, not both")
    if purge:
        count = _jobs(client, "dlq_purge", queue)
        click.echo(_dumps({"purged": count}) if as_json else f"purged {count}")
        return
    if requeue:
        ids = _jobs(client, "dlq_requeue", queue)
        _echo_requeued(ids, as_json, f"no dead jobs in {queue}")
        return
    page = _jobs(client, "dlq", queue, limit=limit)
    for info in page.items:
        click.echo(_dumps(info.to_json()) if as_json else f"{_job_line(info)}\n    {info.error}")
    if not page.items:
        _none_found(f"no dead jobs in {queue}", as_json)


@jobs_group.command("pause")
@click.argument("queue")
@_client_options(default_timeout_ms=5_000)
def jobs_pause_command(queue: str, client: ClientArgs, as_json: bool) -> None:
    """Pause QUEUE: workers claim nothing from it until it is resumed (running jobs go on)."""
    changed = _jobs(client, "pause", queue)
    click.echo(_dumps({"queue": queue, "paused": True, "changed": changed}) if as_json else ("paused" if changed else "already paused"))


@jobs_group.command("resume")
@click.argument("queue")
@_client_options(default_timeout_ms=5_000)
def jobs_resume_command(queue: str, client: ClientArgs, as_json: bool) -> None:
    """Resume a paused QUEUE."""
    changed = _jobs(client, "resume", queue)
    click.echo(_dumps({"queue": queue, "paused": False, "changed": changed}) if as_json else ("resumed" if changed else "not paused"))


@jobs_group.command("schedule")
@click.argument("name")
@click.argument("queue")
@click.argument("payload", required=False)
@click.option("--cron", help="A cron expression (UTC), e.g. '*/5 * * * *'.")
@click.option("--every-ms", type=click.IntRange(min=1), help="Fire every this many milliseconds.")
@click.option("--catch-up", is_flag=True, help="After a gap, fire every missed slot (default: only the latest).")
@_client_options(default_timeout_ms=5_000)
def jobs_schedule_command(
    name: str, queue: str, payload: str | None, cron: str | None, every_ms: int | None, catch_up: bool,
    client: ClientArgs, as_json: bool,
) -> None:  # fmt: skip
    """Enqueue PAYLOAD (JSON) to QUEUE at every slot of schedule NAME (replaces one of that name);
    prints the next slot's time (UTC, and ms since the epoch; --json: next_ms)."""
    if (cron is None) == (every_ms is None):
        raise click.UsageError("give exactly one of --cron and --every-ms")
    value = _json_arg(payload, "PAYLOAD")
    next_ms = _jobs(client, "schedule", name, queue, value, cron=cron, every_ms=every_ms, catch_up=catch_up or None)
    click.echo(_dumps({"name": name, "next_ms": next_ms}) if as_json else f"next: {_utc(next_ms)} ({next_ms})")


@jobs_group.command("unschedule")
@click.argument("name")
@_client_options(default_timeout_ms=5_000)
def jobs_unschedule_command(name: str, client: ClientArgs, as_json: bool) -> None:
    """Remove schedule NAME (jobs it enqueued stay)."""
    removed = _jobs(client, "unschedule", name)
    click.echo(_dumps({"name": name, "removed": removed}) if as_json else ("removed" if removed else f"no schedule {name}"))


@jobs_group.command("schedules")
@_client_options(default_timeout_ms=5_000)
def jobs_schedules_command(client: ClientArgs, as_json: bool) -> None:
    """Print the schedules: NAME QUEUE CRON|EVERY NEXT (UTC) FIRED (JSON lines with --json)."""
    import dataclasses

    schedules = _jobs(client, "schedules")
    for s in schedules:
        every = s.cron if s.cron is not None else f"every {s.every_ms} ms"
        click.echo(_dumps(dataclasses.asdict(s)) if as_json else f"{s.name}\t{s.queue}\t{every}\t{_utc(s.next_ms)}\t{s.fired}")
    if not schedules:
        _none_found("no schedules", as_json)

