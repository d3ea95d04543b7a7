"""Durable writes and linearizable reads through a real 3-node cluster, side by side with etcd.

Starts a 3-node trimaran cluster (subprocesses on loopback, temporary data directories), drives
``set`` (durable: committed on a majority, fsynced, applied) and linearizable ``get`` with 1, 64 and
256 concurrent closed-loop clients, pipelined over a few client connections, and prints ops/s with
p50 and p99 latency. If ``../shared/peers/etcd.sh`` exists it then starts a 3-member etcd on
loopback and runs its load generator with the same shape (op, clients, connections, total), and
prints the trimaran/etcd ratio per row. The two systems never run at the same time; each repeat
starts fresh clusters, and medians are printed.

    python benchmarks/kv_cluster.py                      # full run, 1 repeat
    python benchmarks/kv_cluster.py --quick              # a smaller total per row
    python benchmarks/kv_cluster.py --repeat 3           # medians of 3
    python benchmarks/kv_cluster.py --profile /tmp/prof  # cProfile every node and the client

Everything it starts is stopped by PID (SIGTERM, then SIGKILL), also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

import trimaran  # noqa: E402
from trimaran.errors import TrimaranError  # noqa: E402

ETCD_SH = ROOT.parent / "shared" / "peers" / "etcd.sh"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Row:
    op: str  # "put" (durable set) or "get" (linearizable)
    clients: int
    conns: int
    total: int


@dataclass
class Result:
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int = 0
    #: CPU seconds per 1000 ops: of the load generator, and of each node (trimaran only).
    client_cpu_ms_per_kop: float = 0.0
    node_cpu_ms_per_kop: dict[int, float] | None = None


# --- the trimaran cluster ------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def stop_pid(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    """SIGTERM (graceful stop, which also lets cProfile write its file), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class TrimaranCluster:
    def __init__(self, data_root: Path, size: int = 3, profile_dir: Path | None = None) -> None:
        self.data_root = data_root
        ports = free_ports(2 * size)
        self.client_ports = {i: ports[i - 1] for i in range(1, size + 1)}
        self.peer_ports = {i: ports[size + i - 1] for i in range(1, size + 1)}
        self.profile_dir = profile_dir
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for _, p in sorted(self.client_ports.items())]

    def start(self) -> None:
        for node_id in self.client_ports:
            others = [j for j in self.client_ports if j != node_id]
            runner = [sys.executable]
            if self.profile_dir is not None:
                runner += ["-m", "cProfile", "-o", str(self.profile_dir / f"node{node_id}.prof")]
            cmd = runner + ["-m", "trimaran", "node", "run", "--id", str(node_id), "--log-level", "warning"]
            cmd += ["--listen", f"127.0.0.1:{self.client_ports[node_id]}"]
            cmd += ["--peer-listen", f"127.0.0.1:{self.peer_ports[node_id]}"]
            cmd += ["--data-dir", str(self.data_root / f"node{node_id}")]
            for j in others:
                cmd += ["--peer", f"{j}=127.0.0.1:{self.peer_ports[j]}"]
                cmd += ["--peer-client", f"{j}=127.0.0.1:{self.client_ports[j]}"]
            with open(self.data_root / f"node{node_id}.log", "ab") as log:
                self.processes[node_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop(self) -> None:
        for proc in self.processes.values():
            stop_pid(proc)
        self.processes.clear()

    def cpu_s(self) -> dict[int, float]:
        return {node_id: proc_cpu_s(proc.pid) for node_id, proc in self.processes.items()}


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (0 where unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


# --- the trimaran load -----------------------------------------------------------------------------


def percentile_ms(sorted_s: list[float], p: float) -> float:
    """Same rule as etcdload: the element at int(p * (n - 1))."""
    return sorted_s[int(p * (len(sorted_s) - 1))] * 1000 if sorted_s else 0.0


async def trimaran_load(cluster: TrimaranCluster, row: Row, value: bytes, profiler: cProfile.Profile | None) -> Result:
    """Closed loop like etcdload: ``row.clients`` workers share ``row.conns`` client connections and
    take request numbers from one counter until ``row.total`` have been issued."""
    async with contextlib.AsyncExitStack() as stack:
        conns = [
            await stack.enter_async_context(trimaran.connect(cluster.endpoints, timeout_ms=10_000))
            for _ in range(row.conns)
        ]
        for c in conns:  # sessions registered, leader found, before the clock starts
            await c.set("seed", value)
        issued, failed = 0, 0
        latencies_s: list[float] = []
        perf = time.perf_counter

        async def worker(w: int) -> None:
            nonlocal issued, failed
            c = conns[w % len(conns)]
            while issued < row.total:
                i = issued
                issued += 1
                started = perf()
                try:
                    if row.op == "put":
                        await c.set(b"key%08d" % i, value)
                    else:
                        await c.get(b"seed")
                except TrimaranError:
                    failed += 1
                    continue
                latencies_s.append(perf() - started)

        nodes_before, client_before = cluster.cpu_s(), time.process_time()
        if profiler is not None:
            profiler.enable()
        started = perf()
        async with trio.open_nursery() as nursery:
            for w in range(row.clients):
                nursery.start_soon(worker, w)
        elapsed = perf() - started
        if profiler is not None:
            profiler.disable()
        client_cpu, nodes_after = time.process_time() - client_before, cluster.cpu_s()
    latencies_s.sort()
    kops = max(1, len(latencies_s)) / 1000
    return Result(
        len(latencies_s) / elapsed,
        percentile_ms(latencies_s, 0.50),
        percentile_ms(latencies_s, 0.99),
        failed,
        client_cpu * 1000 / kops,
        {n: (nodes_after[n] - nodes_before[n]) * 1000 / kops for n in nodes_after},
    )


async def wait_ready(endpoints: list[str], timeout_s: float = 60.0) -> None:
    async with trimaran.connect(endpoints, timeout_ms=int(timeout_s * 1000)) as c:
        await c.set("ready", "1")


def run_trimaran(rows: list[Row], value: bytes, profile_dir: Path | None) -> dict[Row, Result]:
    data_root = Path(tempfile.mkdtemp(prefix="trimaran-bench-"))
    cluster = TrimaranCluster(data_root, profile_dir=profile_dir)
    profiler = cProfile.Profile() if profile_dir is not None else None
    results: dict[Row, Result] = {}
    try:
        cluster.start()
        trio.run(wait_ready, cluster.endpoints)
        for row in rows:
            results[row] = trio.run(trimaran_load, cluster, row, value, profiler)
            print(f"  trimaran {describe(row)}: {format_result(results[row])}", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(data_root, ignore_errors=True)
    if profiler is not None and profile_dir is not None:
        profiler.dump_stats(str(profile_dir / "client.prof"))
    return results


# --- etcd ------------------------------------------------------------------------------------------

_ETCD_LINE = re.compile(r"ok=(\d+) failed=(\d+) ops/s=([\d.]+) p50_ms=([\d.]+) p99_ms=([\d.]+)")


def etcd_sh(*args: str, timeout_s: float = 600) -> str:
    out = subprocess.run(["bash", str(ETCD_SH), *args], capture_output=True, text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise RuntimeError(f"etcd.sh {' '.join(args)} failed: {out.stderr.strip()[-500:]}")
    return out.stdout


def run_etcd(rows: list[Row], value_bytes: int) -> dict[Row, Result]:
    etcd_dir = Path(tempfile.mkdtemp(prefix="trimaran-bench-etcd-"))
    results: dict[Row, Result] = {}
    try:
        etcd_sh("start", str(etcd_dir), timeout_s=120)
        for row in rows:
            line = etcd_sh(
                "load", "--op", row.op, "--clients", str(row.clients), "--conns", str(row.conns),
                "--total", str(row.total), "--val-size", str(value_bytes),
            )
            m = _ETCD_LINE.search(line)
            if m is None:
                raise RuntimeError(f"unexpected etcdload output: {line!r}")
            results[row] = Result(float(m[3]), float(m[4]), float(m[5]), int(m[2]))
            print(f"  etcd     {describe(row)}: {format_result(results[row])}", flush=True)
    finally:
        etcd_sh("stop", str(etcd_dir), timeout_s=120)
        shutil.rmtree(etcd_dir, ignore_errors=True)
    return results


def etcd_available() -> bool:
    if not ETCD_SH.exists():
        return False
    binary = Path(os.environ.get("TMPDIR", "/tmp")) / "trimaran-peers" / "bin" / "etcdload"
    if shutil.which("etcd") is None or not binary.exists():
        print("installing etcd and etcdload (etcd.sh install) ...", flush=True)
        etcd_sh("install", timeout_s=1800)
    return True


# --- report ----------------------------------------------------------------------------------------


def describe(row: Row) -> str:
    return f"{row.op:<3} clients={row.clients:<3} conns={row.conns:<2} total={row.total}"


def format_result(r: Result) -> str:
    return f"{r.ops_per_s:8.0f} ops/s  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  failed {r.failed}"


def median_result(results: list[Result]) -> Result:
    nodes = None
    per_node = [r.node_cpu_ms_per_kop for r in results if r.node_cpu_ms_per_kop]
    if per_node:
        nodes = {n: statistics.median(p.get(n, 0.0) for p in per_node) for n in per_node[0]}
    return Result(
        statistics.median(r.ops_per_s for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.failed for r in results),
        statistics.median(r.client_cpu_ms_per_kop for r in results),
        nodes,
    )


def print_table(rows: list[Row], ours: dict[Row, Result], theirs: dict[Row, Result] | None, repeat: int) -> None:
    print(f"\nmedians of {repeat} run(s); put = durable set (majority fsync + apply), get = linearizable\n")
    head = f"{'op':<4}{'clients':>8}{'conns':>6} | {'trimaran ops/s':>14}{'p50 ms':>8}{'p99 ms':>8}"
    if theirs is not None:
        head += f" | {'etcd ops/s':>10}{'p50 ms':>8}{'p99 ms':>8} | {'ratio':>6}"
    print(head)
    print("-" * len(head))
    for row in rows:
        r = ours[row]
        line = f"{row.op:<4}{row.clients:>8}{row.conns:>6} | {r.ops_per_s:>14.0f}{r.p50_ms:>8.2f}{r.p99_ms:>8.2f}"
        if theirs is not None:
            e = theirs[row]
            line += f" | {e.ops_per_s:>10.0f}{e.p50_ms:>8.2f}{e.p99_ms:>8.2f} | {r.ops_per_s / e.ops_per_s:>6.2f}"
        print(line)
    print("\nCPU ms per 1000 ops (trimaran): client process, then each node")
    for row in rows:
        r = ours[row]
        nodes = "  ".join(f"n{n}={v:.0f}" for n, v in sorted((r.node_cpu_ms_per_kop or {}).items()))
        print(f"  {row.op:<4}{row.clients:>4} clients: client={r.client_cpu_ms_per_kop:.0f}  {nodes}")
    check_targets(rows, ours, theirs)


def check_targets(rows: list[Row], ours: dict[Row, Result], theirs: dict[Row, Result] | None) -> None:
    print("\ntargets (issue 4): durable writes >= 0.5x etcd at 64 and 256 clients; 1-client write p50 <= 1 ms")
    for row in rows:
        if row.op == "put" and row.clients == 1:
            p50 = ours[row].p50_ms
            print(f"  put 1 client p50 {p50:.2f} ms: {'met' if p50 <= 1.0 else 'MISSED'}")
        if row.op == "put" and row.clients in (64, 256) and theirs is not None:
            ratio = ours[row].ops_per_s / theirs[row].ops_per_s
            print(f"  put {row.clients} clients ratio {ratio:.2f}: {'met' if ratio >= 0.5 else 'MISSED'}")


def print_profile(profile_dir: Path, top: int) -> None:
    for path in sorted(profile_dir.glob("*.prof")):
        print(f"\n=== {path.name}: top {top} by own time ===")
        stats = pstats.Stats(str(path))
        stats.sort_stats("tottime").print_stats(top)


# --- main ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="smaller totals (a run of about a minute)")
    p.add_argument("--repeat", type=int, default=1, help="runs per system; medians are printed")
    p.add_argument("--clients", default="1,64,256", help="comma-separated client counts")
    p.add_argument("--ops", default="put,get", help="put (durable set) and/or get (linearizable)")
    p.add_argument("--conns", type=int, default=8, help="client connections for many clients (1 client uses 1)")
    p.add_argument("--total", type=int, default=0, help="requests per row (default: by --quick and client count)")
    p.add_argument("--value-bytes", type=int, default=256, help="value size (etcdload's default is 256)")
    p.add_argument("--no-etcd", action="store_true", help="skip the etcd comparison")
    p.add_argument("--profile", type=Path, default=None, help="cProfile every node and the client into DIR")
    p.add_argument("--profile-top", type=int, default=25, help="functions printed per profile")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.conns < 1 or args.value_bytes < 0 or args.total < 0:
        p.error("--repeat and --conns must be >= 1; --total and --value-bytes >= 0")
    return args


def build_rows(args: argparse.Namespace) -> list[Row]:
    rows = []
    for op in [o.strip() for o in args.ops.split(",") if o.strip()]:
        if op not in ("put", "get"):
            raise SystemExit(f"unknown op {op!r}")
        for clients in [int(c) for c in args.clients.split(",")]:
            total = args.total or (clients == 1 and (500 if args.quick else 3000)) or (4000 if args.quick else 30000)
            rows.append(Row(op, clients, 1 if clients == 1 else min(args.conns, clients), total))
    return rows


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows = build_rows(args)
    value = b"v" * args.value_bytes
    with_etcd = not args.no_etcd and etcd_available()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    # SIGTERM becomes KeyboardInterrupt, so the finally blocks stop every process by PID.
    signal.signal(signal.SIGTERM, _interrupt)
    ours: list[dict[Row, Result]] = []
    theirs: list[dict[Row, Result]] = []
    for r in range(args.repeat):
        print(f"run {r + 1}/{args.repeat}", flush=True)
        ours.append(run_trimaran(rows, value, args.profile if r == 0 else None))
        if with_etcd:
            theirs.append(run_etcd(rows, args.value_bytes))
    print_table(
        rows,
        {row: median_result([o[row] for o in ours]) for row in rows},
        {row: median_result([t[row] for t in theirs]) for row in rows} if with_etcd else None,
        args.repeat,
    )
    if args.profile is not None:
        print_profile(args.profile, args.profile_top)


if __name__ == "__main__":
    main()
