"""``trimaran up`` (a local cluster of `node run` children) and ``trimaran node run`` (one node).

Imports of trimaran.node stay inside the commands, like the client's: `--help` stays fast.
"""

from __future__ import annotations

from typing import Any

import click

from trimaran.cli import _client_call, _log_level_option, _node_error, main

_KV_MAXMEMORY_ENV = "TRIMARAN_KV_MAXMEMORY_BYTES"
_KV_EVICTION_ENV = "TRIMARAN_KV_EVICTION"
#: How `trimaran up` hands its log settings to its nodes (as with the KV settings above).
_LOG_LEVEL_ENV = "TRIMARAN_LOG_LEVEL"
_LOG_FORMAT_ENV = "TRIMARAN_LOG_FORMAT"

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
@click.option(
    "--allow-auth-off",
    is_flag=True,
    help="With --no-auth: serve a data dir whose data required tokens without them (anyone may then read and write it).",
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
    allow_auth_off: bool,
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
            allow_auth_off=allow_auth_off,
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
@click.option(
    "--allow-auth-off",
    is_flag=True,
    help="Start without --auth-public-key on a data dir whose data required tokens (its AUTH_REQUIRED "
    "file; anyone who reaches a port may then read and write that data).",
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
    allow_auth_off: bool,
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
            allow_auth_off=allow_auth_off,
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

