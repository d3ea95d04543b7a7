"""Start a real 3-node trimaran cluster as subprocesses on loopback, for integration tests.

Ports are picked by binding port 0 and releasing it (the small race with another process taking the
port in between is accepted for tests). Every process is stopped by its PID: SIGTERM, then SIGKILL
if it does not exit in time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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
