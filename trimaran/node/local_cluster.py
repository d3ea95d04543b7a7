"""``trimaran up``: a local cluster of ``trimaran node run`` child processes, supervised.

Why child processes rather than three nodes in one process: each node then owns its process,
its LMDB environment and its signals exactly as in production, a crash of one is a crash of one,
and tests of the real thing (kill -9, SIGSTOP) apply to what ``up`` runs.

The supervisor starts the children in their own sessions, so a Ctrl-C in the terminal reaches only
the supervisor, which then stops every child by PID (SIGTERM, graceful; SIGKILL after a bound).
Each child is given ``--parent-pid`` and stops by itself if the supervisor disappears. A child that
dies is restarted (its data brings it back); one that keeps dying right after start stops the
whole cluster with its last log line. Running ``up`` again comes back from the same data.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trio

from trimaran.errors import ConfigError
from trimaran.node.config import DEFAULT_CLUSTER_ID, Address
from trimaran.node.probe import fetch_status

#: A child that exits sooner than this after starting counts as failing to start.
EARLY_EXIT_S = 3.0
RESTARTS_PER_NODE_MAX = 5
#: Bounds of the supervisor's waits.
LEADER_WAIT_S = 20.0
STOP_WAIT_S = 15.0
POLL_INTERVAL_S = 0.1


@dataclass(frozen=True, slots=True)
class LocalNode:
    node_id: int
    client: Address
    peer: Address
    data_dir: Path
    log_path: Path


def local_nodes(data_dir: str, base_port: int, host: str = "127.0.0.1", size: int = 3) -> list[LocalNode]:
    """Node i gets client port base+i and peer port base+100+i, data in DATA_DIR/node<i>."""
    root = Path(data_dir)
    if base_port < 1 or base_port + 100 + size > 65535:
        raise ConfigError(f"base port {base_port} leaves no room for {size} nodes")
    return [
        LocalNode(i, Address(host, base_port + i), Address(host, base_port + 100 + i), root / f"node{i}", root / f"node{i}.log")
        for i in range(1, size + 1)
    ]


def node_argv(node: LocalNode, nodes: list[LocalNode], cluster_id: str, tick_ms: int, parent_pid: int) -> list[str]:
    """The ``python -m trimaran node run`` command line of one local node."""
    argv = [
        sys.executable, "-m", "trimaran", "node", "run",
        "--id", str(node.node_id),
        "--listen", str(node.client),
        "--peer-listen", str(node.peer),
        "--data-dir", str(node.data_dir),
        "--cluster-id", cluster_id,
        "--tick-ms", str(tick_ms),
        "--parent-pid", str(parent_pid),
    ]  # fmt: skip
    for other in nodes:
        if other.node_id != node.node_id:
            argv += ["--peer", f"{other.node_id}={other.peer}", "--peer-client", f"{other.node_id}={other.client}"]
    return argv


def check_ports_free(nodes: list[LocalNode]) -> None:
    """Fail early with one clear line if a port is taken (another ``up`` is probably running)."""
    for node in nodes:
        for address in (node.client, node.peer):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((address.host, address.port))
                except OSError as exc:
                    raise ConfigError(
                        f"{address} is not free ({exc.strerror}); is another `trimaran up` running? Try --base-port"
                    ) from None


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


class _Child:
    def __init__(self, node: LocalNode, argv: list[str]) -> None:
        self.node = node
        self.argv = argv
        self.process: trio.Process | None = None
        self.started_at = 0.0
        self.restarts = 0

    async def start(self) -> None:
        self.node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.node.log_path, "ab") as log_file:
            # Own session: terminal signals go to the supervisor only; it stops children by PID.
            self.process = await trio.lowlevel.open_process(
                self.argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started_at = trio.current_time()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                os.kill(self.process.pid, signum)
            except ProcessLookupError:
                pass


async def _wait_for_leader(children: list[_Child], cluster_id: str) -> dict[str, object] | None:
    with trio.move_on_after(LEADER_WAIT_S):
        while True:
            for child in children:
                if child.process is not None and child.process.returncode is not None:
                    return None
                status = await fetch_status(child.node.client, cluster_id, timeout_s=0.5)
                if status and status.get("role") == "leader":
                    return status
            await trio.sleep(POLL_INTERVAL_S)
    return None


def _banner(nodes: list[LocalNode], data_dir: str, cluster_id: str, leader: object, default_ports: bool) -> str:
    endpoints = ",".join(str(n.client) for n in nodes)
    lines = [f"trimaran: cluster {cluster_id!r} is up — {len(nodes)} nodes, leader: node {leader}, data in {data_dir}"]
    for n in nodes:
        lines.append(f"  node {n.node_id}  clients {n.client}  peers {n.peer}  log {n.log_path}")
    lines += ["", "Try next (in another terminal):"]
    if not default_ports:
        lines.append(f"  export TRIMARAN_ENDPOINTS={endpoints}")
    addresses = ", ".join(f'"{n.client}"' for n in nodes)
    lines += [
        "  trimaran status",
        "  trimaran kv set greeting hello && trimaran kv get greeting",
        "",
        "From Python:",
        "  import trimaran",
        f"  with trimaran.connect_sync([{addresses}]) as c:",
        '      c.kv.set("greeting", "hello", ttl_ms=60_000)',
        '      print(c.kv.get("greeting").value)',
        "",
        f"Ctrl-C stops the cluster; `trimaran up` again comes back from {data_dir}.",
    ]
    return "\n".join(lines)


async def _supervise(children: list[_Child], echo: Callable[[str], None]) -> int:
    """Restart children that die; return an exit status once one cannot be kept running."""
    while True:
        for child in children:
            proc = child.process
            assert proc is not None
            if proc.returncode is None:
                continue
            node = child.node
            early = trio.current_time() - child.started_at < EARLY_EXIT_S
            echo(f"trimaran: node {node.node_id} exited with status {proc.returncode}: {_last_line(node.log_path)}")
            if early or child.restarts >= RESTARTS_PER_NODE_MAX:
                echo(f"trimaran: node {node.node_id} cannot be kept running; stopping the cluster (see {node.log_path})")
                return 1
            child.restarts += 1
            echo(f"trimaran: restarting node {node.node_id} ({child.restarts}/{RESTARTS_PER_NODE_MAX})")
            await child.start()
        await trio.sleep(POLL_INTERVAL_S)


async def _stop_all(children: list[_Child], echo: Callable[[str], None]) -> None:
    for child in children:
        child.signal(signal.SIGTERM)
    with trio.move_on_after(STOP_WAIT_S):
        for child in children:
            if child.process is not None:
                await child.process.wait()
    for child in children:
        if child.process is not None and child.process.returncode is None:
            echo(f"trimaran: node {child.node.node_id} did not stop in {STOP_WAIT_S:g} s; killing it")
            child.signal(signal.SIGKILL)
            await child.process.wait()


async def run_local_cluster_async(
    data_dir: str, base_port: int, cluster_id: str, tick_ms: int, echo: Callable[[str], None], host: str = "127.0.0.1"
) -> int:
    nodes = local_nodes(data_dir, base_port, host)
    check_ports_free(nodes)
    children = [_Child(n, node_argv(n, nodes, cluster_id, tick_ms, os.getpid())) for n in nodes]
    status = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        echo("\ntrimaran: stopping the cluster ...")
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                for child in children:
                    await child.start()
                leader = await _wait_for_leader(children, cluster_id)
                if leader is None:
                    echo(f"trimaran: no leader within {LEADER_WAIT_S:g} s; see the logs in {data_dir}")
                    for n in nodes:
                        echo(f"  node {n.node_id}: {_last_line(n.log_path)}")
                    status = 1
                else:
                    echo(_banner(nodes, data_dir, cluster_id, leader.get("node_id"), base_port == 7000 and host == "127.0.0.1"))
                    status = await _supervise(children, echo)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(children, echo)
    echo("trimaran: stopped")
    return status


def run_local_cluster(
    data_dir: str = "./trimaran-data",
    base_port: int = 7000,
    cluster_id: str = DEFAULT_CLUSTER_ID,
    tick_ms: int = 50,
    echo: Callable[[str], None] = print,
    host: str = "127.0.0.1",
) -> int:
    """Blocking entry point of ``trimaran up``; returns the process exit status."""
    return trio.run(run_local_cluster_async, data_dir, base_port, cluster_id, tick_ms, echo, host)
