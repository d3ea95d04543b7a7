"""Start a real 3-node trimaran cluster as subprocesses on loopback, for integration tests.

Ports are picked by binding and releasing them, from a range no other test and no outgoing
connection uses (see :func:`free_ports`). Every process is stopped by its PID: SIGTERM, then SIGKILL
if it does not exit in time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import port_free, worker_ports

#: Where free_ports draws from (test_up and test_cli_up use 20000-31702 for their fixed offsets).
FREE_PORTS = range(10_000, 20_000)
FREE_PORT_TRIES_MAX = 2_000
_MINE = worker_ports(FREE_PORTS)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free now, from FREE_PORTS: below Linux's ephemeral range
    (32768-60999), so no outgoing connection takes one between this check and the node's bind, and
    from this xdist worker's share of it (tests/ports.py), so the other worker never picks one."""
    rng = random.Random()
    picked: list[int] = []
    for _ in range(FREE_PORT_TRIES_MAX):
        port = rng.choice(_MINE)
        if port not in picked and port_free(port):
            picked.append(port)
            if len(picked) == count:
                return picked
    raise AssertionError(f"no {count} free ports found in {FREE_PORTS}")


@dataclass
class RealCluster:
    data_root: Path
    size: int = 3
    client_ports: dict[int, int] = field(default_factory=dict)
    peer_ports: dict[int, int] = field(default_factory=dict)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: Exit status of each node stopped through :meth:`kill`.
    exit_codes: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size)
        ids = range(1, self.size + 1)
        self.client_ports = {i: ports[i - 1] for i in ids}
        self.peer_ports = {i: ports[self.size + i - 1] for i in ids}

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for _, p in sorted(self.client_ports.items())]

    def command(self, node_id: int) -> list[str]:
        others = [j for j in self.client_ports if j != node_id]
        peers = [f"{j}=127.0.0.1:{self.peer_ports[j]}" for j in others]
        peer_clients = [f"{j}=127.0.0.1:{self.client_ports[j]}" for j in others]
        data_dir = str(self.data_root / f"node{node_id}")
        listen, peer_listen = f"127.0.0.1:{self.client_ports[node_id]}", f"127.0.0.1:{self.peer_ports[node_id]}"
        cmd = [sys.executable, "-m", "trimaran", "node", "run", "--id", str(node_id), "--listen", listen]
        cmd += ["--peer-listen", peer_listen, "--data-dir", data_dir, "--log-level", "warning"]
        for p in peers:
            cmd += ["--peer", p]
        for p in peer_clients:
            cmd += ["--peer-client", p]
        return cmd

    def start(self, node_id: int) -> None:
        log = open(self.data_root / f"node{node_id}.log", "ab")
        self.processes[node_id] = subprocess.Popen(self.command(node_id), stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def start_all(self) -> None:
        for node_id in sorted(self.client_ports):
            self.start(node_id)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop(node_id)
        os.kill(proc.pid, sig)
        self.exit_codes[node_id] = proc.wait(timeout=30)

    def stop_all(self, timeout_s: float = 10.0) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.processes.clear()

    def log_tail(self, node_id: int, lines: int = 20) -> str:
        path = self.data_root / f"node{node_id}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
