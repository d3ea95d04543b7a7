"""Real node processes for the slow tests: started through the CLI, stopped by PID, bounded waits.

Every process a test starts is registered here and stopped in ``close()`` (SIGCONT first, in case a
test left it stopped; then SIGTERM; SIGKILL after a bound) — by PID only, never by name.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from tests.client.real_cluster import free_ports
from tests.node.helpers import HOST
from trimaran.node.config import Address
from trimaran.node.probe import fetch_status

STOP_WAIT_S = 10.0


class ProcessCluster:
    """Three ``python -m trimaran node run`` processes on free loopback ports."""

    def __init__(self, root: Path, size: int = 3, extra_args: tuple[str, ...] = (), http: bool = False, resp: bool = False) -> None:
        self.root = root
        self.ids = list(range(1, size + 1))
        ports = iter(free_ports(4 * size))  # picked together: all distinct
        self.client = {i: Address(HOST, next(ports)) for i in self.ids}
        self.peer = {i: Address(HOST, next(ports)) for i in self.ids}
        #: Each node's HTTP edge (``http=True``).
        self.http = {i: Address(HOST, next(ports)) for i in self.ids} if http else {}
        #: Each node's RESP listener (``resp=True``).
        self.resp = {i: Address(HOST, next(ports)) for i in self.ids} if resp else {}
        self.extra_args = extra_args
        #: What status probes present: a token (auth on) and a TLS context (TLS on).
        self.token: str | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: list[Any] = []

    def argv(self, node_id: int) -> list[str]:
        argv = [
            sys.executable, "-m", "trimaran", "node", "run",
            "--id", str(node_id),
            "--listen", str(self.client[node_id]),
            "--peer-listen", str(self.peer[node_id]),
            "--data-dir", str(self.root / f"node{node_id}"),
            "--log-level", "info",
            *self.extra_args,
        ]  # fmt: skip
        if self.http:
            argv += ["--http-listen", str(self.http[node_id])]
        if self.resp:
            argv += ["--resp-listen", str(self.resp[node_id])]
        for other in self.ids:
            if other != node_id:
                argv += ["--peer", f"{other}={self.peer[other]}", "--peer-client", f"{other}={self.client[other]}"]
        return argv

    def log_path(self, node_id: int) -> Path:
        return self.root / f"node{node_id}.log"

    def start(self, node_id: int) -> None:
        assert node_id not in self.procs or self.procs[node_id].poll() is not None
        log = open(self.log_path(node_id), "ab")
        self._logs.append(log)
        self.procs[node_id] = subprocess.Popen(self.argv(node_id), stdout=log, stderr=subprocess.STDOUT)

    def start_all(self) -> None:
        for node_id in self.ids:
            self.start(node_id)

    def signal(self, node_id: int, signum: int) -> None:
        proc = self.procs[node_id]
        if proc.poll() is None:
            os.kill(proc.pid, signum)

    def kill9(self, node_id: int) -> None:
        self.signal(node_id, signal.SIGKILL)
        self.procs[node_id].wait(timeout=STOP_WAIT_S)

    def alive(self, node_id: int) -> bool:
        return self.procs[node_id].poll() is None

    async def terminate(self, node_id: int) -> int:
        """SIGTERM (graceful) and the exit status."""
        self.signal(node_id, signal.SIGCONT)
        self.signal(node_id, signal.SIGTERM)
        proc = self.procs[node_id]
        with trio.fail_after(STOP_WAIT_S):
            while proc.poll() is None:
                await trio.sleep(0.02)
        return proc.returncode

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_WAIT_S)
        for log in self._logs:
            log.close()

    def logs(self) -> str:
        return "\n".join(f"--- node {i}\n{self.log_path(i).read_text(errors='replace')[-3000:]}" for i in self.ids)

    async def status(self, node_id: int, timeout_s: float = 0.5) -> dict[str, Any] | None:
        return await fetch_status(self.client[node_id], timeout_s=timeout_s, token=self.token, ssl_context=self.ssl_context)

    async def leader(self, among: list[int] | None = None, timeout_s: float = 10.0, min_term: int = 0) -> tuple[int, int]:
        """(leader id, term) once one node among ``among`` says it leads in a term >= ``min_term``."""
        among = among or self.ids
        with trio.move_on_after(timeout_s):
            while True:
                for node_id in among:
                    status = await self.status(node_id, timeout_s=0.2)
                    if status and status["role"] == "leader" and status["term"] >= min_term:
                        return node_id, status["term"]
                await trio.sleep(0.02)
        raise AssertionError(f"no leader among {among} within {timeout_s} s\n{self.logs()}")
