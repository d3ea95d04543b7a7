"""The ``trimaran`` command line: parses arguments and calls into the package; no logic of its own.

This module holds the ``main`` group, the options and helpers every group shares, and the groups
not yet moved out (simulate, up and node, status, chat, jobs and worker), each in its own section. The
others are modules of this package (kv, auth, certs, member and leader, snapshot) that register on
``main`` when imported at the end of this file. Keep groups independent of each other.
"""

from __future__ import annotations

from typing import Any

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trimaran")
def main() -> None:
    """trimaran: a Raft-replicated KV cache, job queue and chat pub/sub on trio."""


# === simulate (trimaran.simulations) ============================================================
# Imports of trimaran.simulations stay inside the command: `trimaran --help` stays fast.


@main.command("simulate")
@click.option("--seed", type=int, help="Run one seed: one summary line; exit 1 if it fails.")
@click.option("--seeds", "seed_range", metavar="A..B", help="Run seeds A to B (both included) and print a table.")
@click.option("--nodes", type=click.IntRange(1, 15), default=5, show_default=True, help="Nodes in the simulated cluster.")
@click.option(
    "--sim-seconds",
    type=click.FloatRange(min=20.0),
    default=300.0,
    show_default=True,
    help="Simulated time the run may take: faults strike in its first part, then everything heals, "
    "the clients stop, the final reads run, and the run ends early once every member caught up "
    "(so a summary's sim_s is at most this).",
)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes for --seeds.")
@click.option("--mutant", "mutants", multiple=True, metavar="NAME", help="Plant a bug (see --list-mutants); repeatable.")
@click.option("--list-mutants", is_flag=True, help="List the planted bugs and exit.")
@click.option("--plan", "plan_text", metavar="PLAN|FILE", help="Replay this fault plan (as printed by a shrink).")
@click.option("--shrink/--no-shrink", default=True, show_default=True, help="Shrink the plan of a failing --seed.")
@click.option(
    "--rules/--no-rules",
    default=True,
    show_default=True,
    help="Check protocol rules directly (off: only end-to-end checkers: invariants, linearizability...).",
)
@click.option("-v", "--verbose", is_flag=True, help="Also print the fault plan (to stderr).")
def simulate_command(
    seed: int | None,
    seed_range: str | None,
    nodes: int,
    sim_seconds: float,
    jobs: int,
    mutants: tuple[str, ...],
    list_mutants: bool,
    plan_text: str | None,
    shrink: bool,
    rules: bool,
    verbose: bool,
) -> None:
    """Run the deterministic fault-injection simulator on one seed or a range of seeds."""
    import functools
    import sys
    import time

    from trimaran.simulations import cli_support

    if list_mutants:
        for line in cli_support.mutant_lines():
            click.echo(line)
        return
    if (seed is None) == (seed_range is None):
        raise click.UsageError("give exactly one of --seed S or --seeds A..B")
    try:
        if seed is not None:
            status = cli_support.simulate_one(
                seed, nodes, sim_seconds, mutants, plan_text, shrink, verbose, click.echo, rules
            )
        else:
            assert seed_range is not None
            if plan_text:
                raise click.UsageError("--plan replays one seed: use it with --seed")
            progressbar = functools.partial(click.progressbar, file=sys.stderr)
            status = cli_support.simulate_many(
                seed_range, nodes, sim_seconds, mutants, jobs, click.echo, progressbar, time.perf_counter, rules
            )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(status)


# === cluster and node (trimaran.node) ===========================================================
# Imports of trimaran.node stay inside the commands, like the client's: `--help` stays fast.


def _node_error(exc: BaseException) -> click.ClickException:
    """One clear line for an error that stopped a node or the local cluster."""
    from trimaran.errors import TrimaranError

    if isinstance(exc, TrimaranError):
        return click.ClickException(f"{exc.code}: {exc.message}".splitlines()[0])
    if isinstance(exc, OSError):
        return click.ClickException(f"{exc.strerror or exc}".splitlines()[0] + (f": {exc.filename}" if exc.filename else ""))
    return click.ClickException(f"{type(exc).__name__}: {exc}".splitlines()[0])


_KV_MAXMEMORY_ENV = "TRIMARAN_KV_MAXMEMORY_BYTES"
_KV_EVICTION_ENV = "TRIMARAN_KV_EVICTION"
#: How `trimaran up` hands its log settings to its nodes (as with the KV settings above).
_LOG_LEVEL_ENV = "TRIMARAN_LOG_LEVEL"
_LOG_FORMAT_ENV = "TRIMARAN_LOG_FORMAT"


def _log_level_option(help_text: str, **extra: Any) -> Any:
    """--log-level, shared by `up`, `node run` and `worker`."""
    return click.option(
        "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True, help=help_text, **extra
    )


def _kv_node_options(fn: Any) -> Any:
    """--kv-maxmemory-bytes and --kv-eviction, shared by `up` and `node run` (with env fallbacks,
    which is also how `up` hands them to its `node run` children)."""
    fn = click.option(
        "--kv-eviction",
        envvar=_KV_EVICTION_ENV,
        type=click.Choice(["lru", "noeviction"]),
        default="lru",
        show_default=True,
        help=f"What a KV write over the cap does: evict least recently used keys, or fail [env {_KV_EVICTION_ENV}].",
    )(fn)
    return click.option(
        "--kv-maxmemory-bytes",
        envvar=_KV_MAXMEMORY_ENV,
        type=click.IntRange(min=1),
        default=None,
        help=f"Memory cap of the KV cache (default: none). Give every node the same [env {_KV_MAXMEMORY_ENV}].",
    )(fn)


#: Connection bounds of `node run`: (flag, default, help). The defaults are NodeConfig's (a test
#: checks they agree); the option's name is the NodeConfig field's.
_CONNECTION_BOUNDS: tuple[tuple[str, int, str], ...] = (
    ("--client-idle-timeout-ms", 60_000, "Close a client connection idle this long (>= --request-timeout-ms)."),
    ("--client-handshakes-max", 256, "Client connections waiting for their hello; one more closes the oldest."),
    ("--client-answer-bytes-max", 32 * 1024 * 1024, "Bytes of answers queued, not yet written, per client connection."),
    ("--client-answer-bytes-node-max", 256 * 1024 * 1024, "The same, summed over the node's client connections."),
    ("--peer-handshakes-max", 30, "Peer connections waiting for their handshake; one more closes the oldest."),
)


def _connection_bound_options(fn: Any) -> Any:
    """The connection bounds of `node run` (see _CONNECTION_BOUNDS), passed on as NodeConfig fields."""
    for flag, default, help_text in reversed(_CONNECTION_BOUNDS):
        fn = click.option(flag, type=click.IntRange(min=1), default=default, show_default=True, help=help_text)(fn)
    return fn


@main.command("up")
@click.option(
    "--data-dir", default="./trimaran-data", show_default=True, help="One directory per node is made in here."
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65000),
    default=7000,
    show_default=True,
    help="Node i listens for clients on BASE+i, for peers on BASE+100+i, and for HTTP on BASE+1000+i.",
)
@click.option(
    "--resp-base-port",
    type=click.IntRange(1, 65000),
    default=6380,
    show_default=True,
    help="Node i serves the Redis protocol (redis-cli, redis-py) on RESP_BASE_PORT+i (TLS only with --tls).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address every node listens on.")
@click.option(
    "--nodes",
    "size",
    type=click.IntRange(1, 9),
    default=3,
    show_default=True,
    help="Nodes in the local cluster (node i: ports BASE_PORT+i, +100+i, +1000+i); the same for one data dir each time.",
)
@click.option("--cluster-id", default="trimaran", show_default=True, help="Name the nodes check in every handshake.")
@click.option("--tick-ms", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Raft tick.")
@click.option(
    "--auth/--no-auth",
    default=True,
    show_default=True,
    help="Require signed tokens: a signing key is kept in DATA_DIR/auth and an admin token written there at each start.",
)
@click.option("--tls", is_flag=True, help="Serve TLS on every port, with a CA and certificates made once in DATA_DIR/tls.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Let nodes listen beyond loopback (--host) without TLS and auth (anyone who reaches them may do anything).",
)
@_log_level_option("Least severe log lines each node writes to its log file (DATA_DIR/nodeN.log).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Each node's log lines: text or JSON.")
@_kv_node_options
def up_command(
    data_dir: str,
    base_port: int,
    resp_base_port: int,
    host: str,
    size: int,
    cluster_id: str,
    tick_ms: int,
    auth: bool,
    tls: bool,
    insecure: bool,
    log_level: str,
    log_format: str,
    kv_maxmemory_bytes: int | None,
    kv_eviction: str,
) -> None:
    """Start a local cluster, 3 nodes by default (Ctrl-C stops it; run again to come back from its data).

    Auth is on by default: the banner shows how to use the admin token it writes."""
    import os
    import sys

    from trimaran.node.local_cluster import run_local_cluster

    # The children are `trimaran node run` processes, which read these (see _kv_node_options): one
    # setting for all three, as the KV service needs.
    if kv_maxmemory_bytes is not None:
        os.environ[_KV_MAXMEMORY_ENV] = str(kv_maxmemory_bytes)
    os.environ[_KV_EVICTION_ENV] = kv_eviction
    os.environ[_LOG_LEVEL_ENV], os.environ[_LOG_FORMAT_ENV] = log_level, log_format
    try:
        status = run_local_cluster(
            data_dir,
            base_port,
            cluster_id,
            tick_ms,
            echo=click.echo,
            host=host,
            auth=auth,
            tls=tls,
            insecure=insecure,
            resp_base_port=resp_base_port,
            size=size,
        )
    except Exception as exc:  # one line, not a traceback: the user's next step is in the message
        raise _node_error(exc) from None
    sys.exit(status)


@main.group("node")
def node_group() -> None:
    """Run one node of a cluster spread over machines."""


@node_group.command("run")
@click.option("--id", "node_id", type=click.IntRange(min=1), required=True, help="This node's id (a positive integer).")
@click.option("--listen", required=True, metavar="HOST:PORT", help="Address for clients.")
@click.option("--peer-listen", required=True, metavar="HOST:PORT", help="Address for the other nodes (firewall it off from clients).")
@click.option("--peer", "peers", multiple=True, metavar="ID=HOST:PORT", help="Another node's peer address; repeat per node.")
@click.option(
    "--peer-client",
    "peer_clients",
    multiple=True,
    metavar="ID=HOST:PORT",
    help="Another node's client address, for the leader hint in not_leader answers; repeat per node.",
)
@click.option(
    "--http-listen",
    metavar="HOST:PORT",
    default=None,
    help="Serve the REST API (/v1/, see /v1/openapi.json) on this address. Default: no HTTP edge.",
)
@click.option(
    "--resp-listen",
    metavar="HOST:PORT",
    default=None,
    help="Serve the Redis protocol (redis-cli, redis-py) on this address. Default: no RESP listener.",
)
@click.option("--data-dir", required=True, help="Directory of this node's LMDB store (created if missing).")
@click.option("--cluster-id", default="trimaran", show_default=True, help="Name checked in every handshake.")
@click.option("--tick-ms", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Raft tick.")
@click.option(
    "--join",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ENDPOINTS]",
    help="Start with no membership and wait for a leader to add this node (`trimaran member add`). With "
    "ENDPOINTS (the cluster's client HOST:PORTs, comma-separated), learn every member's peer and client "
    "address from it instead of --peer flags (with auth on, TRIMARAN_TOKEN needs cluster:read).",
)
@click.option("--lease-reads", is_flag=True, help="Allow lease reads (assumes bounded clock drift).")
@click.option(
    "--snapshot-interval-entries",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Take a snapshot of the state machine (and compact the log) every this many applied entries.",
)
@click.option(
    "--request-timeout-ms",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="A client request not answered within this is answered 'timeout' (outcome unknown; the "
    "client retries it exactly-once).",
)
@_connection_bound_options
@click.option(
    "--storage-reserve-bytes",
    type=click.IntRange(min=0),
    default=None,
    help="Refuse client writes (storage_full) while the data directory's file system has less free than "
    "this; 0: only when a write fails [default: 5% of the file system, at most 64 MiB].",
)
@click.option(
    "--clock-offset-max-ms",
    "clock_offset_ms_max",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Refuse leadership while this node's clock is further than this from a majority of the voters "
    "(a leader's clock stamps TTLs); 0: off.",
)
@_log_level_option("Least severe log lines written (to stderr; `trimaran up` sends them to each node's log file).", envvar=_LOG_LEVEL_ENV)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar=_LOG_FORMAT_ENV,
    help="One event per line: text, or a JSON object (fields: ts, level, node, term, logger, event, msg, ...).",
)
@click.option("--parent-pid", type=int, hidden=True, help="Stop when this process is gone (used by `trimaran up`).")
@click.option(
    "--auth-public-key",
    "auth_public_keys",
    multiple=True,
    metavar="[KID=]FILE",
    help="Require signed tokens (PASETO v4.public) from clients, trusting this Ed25519 public key (PEM "
    "or 32 raw bytes; kid: its key id unless given). Repeat for several. Give every node the same. "
    "Default: none (auth off: any client may do anything).",
)
@click.option(
    "--auth-leeway-ms",
    type=click.IntRange(0, 30_000),
    default=30_000,
    show_default=True,
    help="Clock skew tolerated when checking a token's expiry and not-before. Give every node the same.",
)
@click.option(
    "--tls-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Serve TLS on both ports with the certificates of `trimaran certs init` in this directory "
    "(the peer port then requires the cluster CA's certificate of the dialing node). Default: plain TCP.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Listen on a non-loopback address even without TLS and auth (anyone who reaches the port can "
    "read and write everything).",
)
@_kv_node_options
def node_run_command(
    node_id: int,
    listen: str,
    peer_listen: str,
    peers: tuple[str, ...],
    peer_clients: tuple[str, ...],
    http_listen: str | None,
    resp_listen: str | None,
    data_dir: str,
    cluster_id: str,
    tick_ms: int,
    join: str | None,
    lease_reads: bool,
    snapshot_interval_entries: int,
    request_timeout_ms: int,
    storage_reserve_bytes: int | None,
    clock_offset_ms_max: int,
    log_level: str,
    log_format: str,
    parent_pid: int | None,
    kv_maxmemory_bytes: int | None,
    kv_eviction: str,
    auth_public_keys: tuple[str, ...],
    auth_leeway_ms: int,
    tls_dir: str | None,
    insecure: bool,
    **connection_bounds: Any,
) -> None:
    """Run one node until SIGINT/SIGTERM, then stop gracefully (exit status 0)."""
    from trimaran.node.config import Address, NodeConfig, build_peers, load_auth_key
    from trimaran.node.logs import configure_logging
    from trimaran.node.node import run_node_process

    from trimaran.errors import ConfigError

    try:  # malformed addresses are usage mistakes: exit status 2, like click's own
        listen_address = Address.parse(listen, "--listen")
        peer_listen_address = Address.parse(peer_listen, "--peer-listen")
        if join:
            peers, peer_clients = _joined_peers(join, node_id, cluster_id, tls_dir, peers, peer_clients)
        peer_specs = build_peers(list(peers), list(peer_clients))
        http_address = Address.parse(http_listen, "--http-listen") if http_listen else None
        resp_address = Address.parse(resp_listen, "--resp-listen") if resp_listen else None
    except ConfigError as exc:
        raise click.UsageError(exc.message) from None
    try:
        config = NodeConfig(
            node_id,
            listen_address,
            peer_listen_address,
            peer_specs,
            data_dir,
            cluster_id=cluster_id,
            tick_ms=tick_ms,
            join=join is not None,
            lease_reads=lease_reads,
            snapshot_interval_entries=snapshot_interval_entries,
            request_timeout_ms=request_timeout_ms,
            storage_reserve_bytes=storage_reserve_bytes,
            clock_offset_ms_max=clock_offset_ms_max,
            kv_maxmemory_bytes=kv_maxmemory_bytes,
            kv_eviction=kv_eviction,
            auth_keys=tuple(load_auth_key(spec) for spec in auth_public_keys),
            auth_leeway_ms=auth_leeway_ms,
            tls_dir=tls_dir,
            insecure=insecure,
            http_listen=http_address,
            resp_listen=resp_address,
            **connection_bounds,
        ).validate()
        configure_logging(log_level, node_id, log_format)
        run_node_process(config, parent_pid)
    except Exception as exc:
        raise _node_error(exc) from None


def _joined_peers(
    endpoints: str, node_id: int, cluster_id: str, tls_dir: str | None, peers: tuple[str, ...], peer_clients: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``--peer``/``--peer-client`` flags for every member the cluster at ``endpoints`` names (the
    flags given win); a node with --tls-dir verifies the cluster with its CA."""
    import os

    from trimaran.client.commands import join_addresses
    from trimaran.node.tls import CA_CERT

    if tls_dir and not os.environ.get("TRIMARAN_CA_FILE"):
        os.environ["TRIMARAN_CA_FILE"] = os.path.join(tls_dir, CA_CERT)
    try:
        members = _client_call(join_addresses, endpoints, cluster_id=cluster_id, token=os.environ.get("TRIMARAN_TOKEN"))
    except click.ClickException as exc:
        raise click.ClickException(f"--join {endpoints}: {exc.message}") from None
    given = {text.partition("=")[0] for text in peers}
    learned = {n: a for n, a in members.items() if n != node_id and str(n) not in given and a[0]}
    if not learned and not given:
        raise click.ClickException(f"--join {endpoints}: no member's peer address is known there")
    peers += tuple(f"{n}={peer}" for n, (peer, _) in sorted(learned.items()))
    peer_clients += tuple(f"{n}={client}" for n, (_, client) in sorted(learned.items()) if client)
    return peers, peer_clients


# === client commands (trimaran.client) ===========================================================
# Imports of trimaran.client stay inside the commands: `trimaran --help` must not pay for trio.

_DEFAULT_ENDPOINTS = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"  # where `trimaran up` listens
_ENDPOINTS_HELP = "Comma-separated HOST:PORT client addresses [env TRIMARAN_ENDPOINTS; default: the `trimaran up` ports]."


def _check_endpoints(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A malformed endpoint is a usage mistake (exit status 2, like click's own), not a runtime failure."""
    from trimaran.client.connection import parse_endpoints
    from trimaran.errors import InvalidArgument

    try:
        parse_endpoints(value)
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, ctx=ctx, param=param) from None
    return value


def _use_ca_file(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """--ca-file is the flag form of TRIMARAN_CA_FILE, which every client of this process reads."""
    import os

    if value:
        os.environ["TRIMARAN_CA_FILE"] = value


def _client_options(default_timeout_ms: int) -> Any:
    """--endpoints, --cluster-id, --token, --timeout-ms and --json, shared by every client command."""

    def decorate(fn: Any) -> Any:
        options = [
            click.option(
                "--endpoints",
                envvar="TRIMARAN_ENDPOINTS",
                default=_DEFAULT_ENDPOINTS,
                callback=_check_endpoints,
                help=_ENDPOINTS_HELP,
            ),
            click.option(
                "--cluster-id", envvar="TRIMARAN_CLUSTER_ID", help="Refuse nodes of any other cluster [env TRIMARAN_CLUSTER_ID]."
            ),
            click.option("--token", envvar="TRIMARAN_TOKEN", help="Auth token for the handshake [env TRIMARAN_TOKEN]."),
            click.option(
                "--ca-file",
                envvar="TRIMARAN_CA_FILE",
                type=click.Path(exists=True, dir_okay=False),
                expose_value=False,
                callback=_use_ca_file,
                help="Connect with TLS, verifying the nodes against this CA certificate (the ca.pem of "
                "`trimaran certs init`) [env TRIMARAN_CA_FILE; default: plain TCP].",
            ),
            click.option(
                "--timeout-ms",
                type=click.IntRange(min=1),
                default=default_timeout_ms,
                show_default=True,
                help="Deadline of the command, retries included.",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text."),
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _client_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a client call; a trimaran error becomes one line on stderr and exit status 1."""
    from trimaran.errors import TrimaranError

    try:
        return fn(*args, **kwargs)
    except TrimaranError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}".splitlines()[0]) from None


def _stream_lines(
    follow: Any, endpoints: str, name: str, *, line: Any, to_json: Any, as_json: bool, **options: Any
) -> None:
    """Run ``follow(endpoints, name, show, **options)`` (a watch or a subscription), printing each
    item it hands ``show`` as a line (or a JSON line); Ctrl-C, how such a command ends, exits 130
    without a traceback."""
    import json

    def show(item: Any) -> None:
        click.echo(json.dumps(to_json(item)) if as_json else line(item))

    try:
        _client_call(follow, endpoints, name, show, **options)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


@main.command("status")
@_client_options(default_timeout_ms=2_000)
def status_command(endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool) -> None:
    """Members, leader, term, commit and applied index, and lag of every node.

    Asks each endpoint (and each member it learns of) for its own status; a node that does not
    answer within --timeout-ms is shown as down. Exit status 1 if no leader is known.
    """
    import json

    from trimaran.client.commands import cluster_status

    status = _client_call(cluster_status, endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms)
    click.echo(json.dumps(status.to_json(), indent=2) if as_json else status.format_table())
    refused = status.refused()
    if refused is not None:
        raise click.ClickException(f"{refused} (every node refused the token; the cluster itself may be fine)")
    if status.leader_id is None:
        raise click.ClickException("no leader: the cluster cannot serve writes right now")


def _service(
    service: str, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, method: str, *args: Any, **options: Any
) -> Any:
    """One ``c.<service>`` call with the shared client options; errors become one line and exit 1."""
    from trimaran.client.commands import service_call

    return _client_call(
        service_call, endpoints, service, method, *args, options=options, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms
    )


# === chat (c.chat; the WebSocket gateway for subscribe) ===========================================


@main.group("chat")
def chat_group() -> None:
    """Chat pub/sub: publish, subscribe, history, presence (see also the WebSocket gateway /v1/ws)."""


@chat_group.command("publish")
@click.argument("channel")
@click.argument("message")
@click.option("--ephemeral", is_flag=True, help="Deliver live only: not kept in history, no offset (typing indicators).")
@_client_options(default_timeout_ms=5_000)
def chat_publish_command(
    channel: str, message: str, ephemeral: bool, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool
) -> None:
    """Publish MESSAGE to CHANNEL; prints its offset and the channel's epoch once committed."""
    import json

    offset, epoch = _service("chat", endpoints, cluster_id, token, timeout_ms, "publish", channel, message, ephemeral=ephemeral)
    click.echo(json.dumps({"offset": offset, "epoch": epoch}) if as_json else f"{offset} {epoch}")


@chat_group.command("history")
@click.argument("channel")
@click.option("--since", type=click.IntRange(min=0), help="The last offset you have (default: from the oldest kept).")
@click.option("--epoch", help="The epoch SINCE belongs to (a reset channel then says it did not recover).")
@click.option("--limit", type=click.IntRange(min=0), help="Messages at most (one page).")
@_client_options(default_timeout_ms=5_000)
def chat_history_command(
    channel: str,
    since: int | None,
    epoch: str | None,
    limit: int | None,
    endpoints: str,
    cluster_id: str | None,
    token: str | None,
    timeout_ms: int,
    as_json: bool,
) -> None:
    """Print CHANNEL's messages after --since, one per line: OFFSET MESSAGE (JSON lines with --json)."""
    import json

    from trimaran.client.commands import bytes_to_json, text

    page = _service("chat", endpoints, cluster_id, token, timeout_ms, "history", channel, since=since, epoch=epoch, limit=limit)
    for m in page.messages:
        click.echo(json.dumps({"offset": m.offset, **bytes_to_json("data", m.data), "at_ms": m.at_ms}) if as_json else f"{m.offset} {text(m.data)}")
    if not page.recovered:
        click.echo(f"history no longer reaches back to {since}: it starts at {page.oldest} (epoch {page.epoch})", err=True)


@chat_group.command("presence")
@click.argument("channel")
@_client_options(default_timeout_ms=5_000)
def chat_presence_command(
    channel: str, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool
) -> None:
    """Print who is present in CHANNEL: SESSION INFO per line."""
    import json

    from trimaran.client.commands import bytes_to_json, text

    for session, info, joined_at_ms in _service("chat", endpoints, cluster_id, token, timeout_ms, "presence", channel):
        line = json.dumps({"session": session, **bytes_to_json("info", info), "joined_at_ms": joined_at_ms})
        click.echo(line if as_json else f"{session} {text(info)}")


@chat_group.command("subscribe")
@click.argument("channel")
@click.option("--since", type=click.IntRange(min=0), help="Replay the messages after this offset first (0: all kept).")
@click.option("--epoch", help="The epoch SINCE belongs to.")
@click.option("--count", type=click.IntRange(min=0), help="Stop after this many messages (default: until Ctrl-C).")
@_client_options(default_timeout_ms=5_000)
def chat_subscribe_command(
    channel: str,
    since: int | None,
    epoch: str | None,
    count: int | None,
    endpoints: str,
    cluster_id: str | None,
    token: str | None,
    timeout_ms: int,
    as_json: bool,
) -> None:
    """Print CHANNEL's messages as they come: OFFSET MESSAGE per line; '~' ephemeral, '+'/'-'
    presence, '#' a new epoch (JSON lines with --json). Through a node's WebSocket gateway;
    reconnects and resumes without a gap or a repeat."""
    from trimaran.client.commands import chat_event_line, chat_event_to_json, chat_subscribe

    _stream_lines(
        chat_subscribe, endpoints, channel, line=chat_event_line, to_json=chat_event_to_json, as_json=as_json,
        since=since, epoch=epoch, count=count, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms,
    )  # fmt: skip


# === jobs and worker (c.jobs; trimaran.client.worker) ===========================================


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


def _jobs(endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, method: str, *args: Any, **options: Any) -> Any:
    return _service("jobs", endpoints, cluster_id, token, timeout_ms, method, *args, **options)


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


@jobs_group.command("enqueue")
@click.argument("queue")
@click.argument("payload", required=False)
@click.option("--priority", type=click.IntRange(-1000, 1000), help="Higher is claimed first (default 0).")
@click.option("--delay-ms", type=click.IntRange(min=0), help="Not claimable before this many milliseconds from now.")
@click.option("--unique-key", help="At most one live job per key in the queue: a second enqueue returns the first job's id.")
@click.option("--max-attempts", type=click.IntRange(1, 1000), help="Attempts before the job is dead-lettered (default 20).")
@click.option("--job-timeout-ms", type=click.IntRange(min=1), help="The job's lease: how long one attempt may run.")
@click.option("--group", help="The job's group (per-group concurrency and rate limits).")
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
    endpoints: str,
    cluster_id: str | None,
    token: str | None,
    timeout_ms: int,
    as_json: bool,
) -> None:
    """Enqueue a job with PAYLOAD (JSON; default null) to QUEUE; prints its id."""
    options = dict(priority=priority, delay_ms=delay_ms, unique_key=unique_key, max_attempts=max_attempts, job_timeout_ms=job_timeout_ms, group=group)
    value = _json_arg(payload, "PAYLOAD")
    job_id = _jobs(endpoints, cluster_id, token, timeout_ms, "enqueue", queue, value, **{k: v for k, v in options.items() if v is not None})
    click.echo(_dumps({"id": job_id}) if as_json else job_id)


@jobs_group.command("show")
@click.argument("job")
@click.option("--wait-ms", type=click.IntRange(min=0), default=0, show_default=True, help="Wait up to this long for the job to end.")
@_client_options(default_timeout_ms=5_000)
def jobs_show_command(
    job: str, wait_ms: int, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool
) -> None:
    """Print JOB's fields (state, attempts, payload, result, error...); exit status 1 if unknown."""
    if wait_ms:
        _jobs(endpoints, cluster_id, token, max(timeout_ms, wait_ms + timeout_ms), "result", job, wait_ms=wait_ms)
    info = _jobs(endpoints, cluster_id, token, timeout_ms, "job", job)
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
    endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool,
) -> None:  # fmt: skip
    """Print QUEUE's jobs in creation order: ID STATE ATTEMPT/MAX PAYLOAD (JSON lines with --json)."""
    page = _jobs(endpoints, cluster_id, token, timeout_ms, "list_jobs", queue, state=state, limit=limit, start_after=start_after)
    for info in page.items:
        click.echo(_dumps(info.to_json()) if as_json else _job_line(info))
    if page.next is not None:
        click.echo(f"more: --start-after {page.next}", err=True)


@jobs_group.command("stats")
@click.argument("queue")
@_client_options(default_timeout_ms=5_000)
def jobs_stats_command(queue: str, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool) -> None:
    """Print how many of QUEUE's jobs are in each state, whether it is paused, and its limits."""
    stats = _jobs(endpoints, cluster_id, token, timeout_ms, "stats", queue).to_json()
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
    limit: int | None, start_after: str | None, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool
) -> None:
    """Print every queue: NAME READY DELAYED RUNNING DEAD HELD (every job the queue still holds:
    waiting, delayed, ready, running, dead, and ended ones kept for their result), and (paused)
    (JSON lines with --json)."""
    page = _jobs(endpoints, cluster_id, token, timeout_ms, "queues", limit=limit, start_after=start_after)
    if not as_json and page.items:
        click.echo(f"{'QUEUE':24} {'READY':>7} {'DELAYED':>7} {'RUNNING':>7} {'DEAD':>7} {'HELD':>7}")
    for item in page.items:
        if as_json:
            click.echo(_dumps(item))
            continue
        paused = "  (paused)" if item["paused"] else ""
        click.echo(f"{item['queue']:24} {item['ready']:>7} {item['delayed']:>7} {item['running']:>7} {item['dead']:>7} {item['held']:>7}{paused}")
    if page.next is not None:
        click.echo(f"more: --start-after {page.next}", err=True)


@jobs_group.command("cancel")
@click.argument("job")
@_client_options(default_timeout_ms=5_000)
def jobs_cancel_command(job: str, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool) -> None:
    """Cancel JOB: "cancelled", "cancelling" (running: its worker stops it), or the state it ended in."""
    state = _jobs(endpoints, cluster_id, token, timeout_ms, "cancel", job)
    click.echo(_dumps({"id": job, "state": state}) if as_json else state)


@jobs_group.command("retry")
@click.argument("jobs", nargs=-1, required=True)
@_client_options(default_timeout_ms=5_000)
def jobs_retry_command(
    jobs: tuple[str, ...], endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool
) -> None:
    """Requeue dead JOBS from their dead-letter list, attempts reset; prints each id requeued."""
    requeued = [i for job in jobs for i in _jobs(endpoints, cluster_id, token, timeout_ms, "retry", job)]
    click.echo(_dumps({"requeued": requeued}) if as_json else "\n".join(requeued))


@jobs_group.command("dlq")
@click.argument("queue")
@click.option("--limit", type=click.IntRange(1, 1000), help="Jobs at most (one page).")
@click.option("--purge", is_flag=True, help="Delete the oldest dead jobs (up to 1000) instead of listing them.")
@click.option("--requeue", is_flag=True, help="Requeue the oldest dead jobs (up to 1000) instead of listing them.")
@_client_options(default_timeout_ms=5_000)
def jobs_dlq_command(
    queue: str, limit: int | None, purge: bool, requeue: bool,
    endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool,
) -> None:  # fmt: skip
    """Print QUEUE's dead-letter list, oldest death first: ID STATE ATTEMPT/MAX PAYLOAD, then the
    error indented (JSON lines with --json); or purge or requeue it."""
    if purge and requeue:
        raise click.UsageError("--purge or --requeue, not both")
    if purge:
        count = _jobs(endpoints, cluster_id, token, timeout_ms, "dlq_purge", queue)
        click.echo(_dumps({"purged": count}) if as_json else f"purged {count}")
        return
    if requeue:
        ids = _jobs(endpoints, cluster_id, token, timeout_ms, "dlq_requeue", queue)
        click.echo(_dumps({"requeued": ids}) if as_json else "\n".join(ids))
        return
    page = _jobs(endpoints, cluster_id, token, timeout_ms, "dlq", queue, limit=limit)
    for info in page.items:
        click.echo(_dumps(info.to_json()) if as_json else f"{_job_line(info)}\n    {info.error}")


@jobs_group.command("pause")
@click.argument("queue")
@_client_options(default_timeout_ms=5_000)
def jobs_pause_command(queue: str, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool) -> None:
    """Pause QUEUE: workers claim nothing from it until it is resumed (running jobs go on)."""
    changed = _jobs(endpoints, cluster_id, token, timeout_ms, "pause", queue)
    click.echo(_dumps({"queue": queue, "paused": True, "changed": changed}) if as_json else ("paused" if changed else "already paused"))


@jobs_group.command("resume")
@click.argument("queue")
@_client_options(default_timeout_ms=5_000)
def jobs_resume_command(queue: str, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool) -> None:
    """Resume a paused QUEUE."""
    changed = _jobs(endpoints, cluster_id, token, timeout_ms, "resume", queue)
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
    endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool,
) -> None:  # fmt: skip
    """Enqueue PAYLOAD (JSON) to QUEUE at every slot of schedule NAME (replaces one of that name);
    prints the next slot's time (UTC, and ms since the epoch; --json: next_ms)."""
    if (cron is None) == (every_ms is None):
        raise click.UsageError("give exactly one of --cron and --every-ms")
    value = _json_arg(payload, "PAYLOAD")
    next_ms = _jobs(endpoints, cluster_id, token, timeout_ms, "schedule", name, queue, value, cron=cron, every_ms=every_ms, catch_up=catch_up or None)
    click.echo(_dumps({"name": name, "next_ms": next_ms}) if as_json else f"next: {_utc(next_ms)} ({next_ms})")


@jobs_group.command("unschedule")
@click.argument("name")
@_client_options(default_timeout_ms=5_000)
def jobs_unschedule_command(name: str, endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool) -> None:
    """Remove schedule NAME (jobs it enqueued stay)."""
    removed = _jobs(endpoints, cluster_id, token, timeout_ms, "unschedule", name)
    click.echo(_dumps({"name": name, "removed": removed}) if as_json else ("removed" if removed else f"no schedule {name}"))


@jobs_group.command("schedules")
@_client_options(default_timeout_ms=5_000)
def jobs_schedules_command(endpoints: str, cluster_id: str | None, token: str | None, timeout_ms: int, as_json: bool) -> None:
    """Print the schedules: NAME QUEUE CRON|EVERY NEXT (UTC) FIRED (JSON lines with --json)."""
    import dataclasses

    for s in _jobs(endpoints, cluster_id, token, timeout_ms, "schedules"):
        every = s.cron if s.cron is not None else f"every {s.every_ms} ms"
        click.echo(_dumps(dataclasses.asdict(s)) if as_json else f"{s.name}\t{s.queue}\t{every}\t{_utc(s.next_ms)}\t{s.fired}")


from trimaran.cli import auth as _auth  # noqa: E402,F401
from trimaran.cli import certs as _certs  # noqa: E402,F401
from trimaran.cli import kv as _kv_commands  # noqa: E402,F401
from trimaran.cli import members as _members  # noqa: E402,F401
from trimaran.cli import snapshot as _snapshot  # noqa: E402,F401

if __name__ == "__main__":
    main()
