"""Chat fan-out through a real 3-node cluster, beside NATS with WebSocket subscribers in the same run.

One publisher (the native client: every publish is committed on a majority, fsynced, before it is
acknowledged) and S WebSocket subscribers spread round-robin over the three nodes' gateways
(``/v1/ws``), all in this process (trio + trio-websocket). The publisher keeps at most ``--window``
publishes in flight. Prints deliveries per second over all subscribers and the publish→delivery
latency (p50, p99), then the same for NATS core fan-out over WebSocket (``../shared/peers/nats.sh
load --mode fanout --transport ws``: at-most-once, neither persisted nor replicated; its window is
deliveries outstanding per subscriber), and the ratio.

    python benchmarks/chat.py                       # 10 and 100 subscribers
    python benchmarks/chat.py --subs 1,10,100 --repeat 3

Fairness: the Python subscribers share the 2 cores with the nodes; NATS's load generator is Go. Every
process this starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.client.real_cluster
sys.path.insert(0, str(ROOT / "src"))  # the package, uninstalled too

import trio  # noqa: E402
from trio_websocket import open_websocket_url  # noqa: E402

import trimaran  # noqa: E402
from tests.client.real_cluster import free_ports  # noqa: E402

NATS_SH = ROOT.parent / "shared" / "peers" / "nats.sh"
_NATS_LINE = re.compile(r"ok=(\d+) failed=(\d+) ops/s=([\d.]+) p50_ms=([\d.]+) p99_ms=([\d.]+)")


class Cluster:
    def __init__(self, root: Path) -> None:
        ports = free_ports(9)
        self.root = root
        self.client = {i: ports[i - 1] for i in (1, 2, 3)}
        self.peer = {i: ports[2 + i] for i in (1, 2, 3)}
        self.http = {i: ports[5 + i] for i in (1, 2, 3)}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        for i in (1, 2, 3):
            cmd = [sys.executable, "-m", "trimaran", "node", "run", "--id", str(i), "--log-level", "warning"]
            cmd += ["--listen", f"127.0.0.1:{self.client[i]}", "--peer-listen", f"127.0.0.1:{self.peer[i]}"]
            cmd += ["--http-listen", f"127.0.0.1:{self.http[i]}", "--data-dir", str(self.root / f"node{i}")]
            for j in (1, 2, 3):
                if j != i:
                    cmd += ["--peer", f"{j}=127.0.0.1:{self.peer[j]}", "--peer-client", f"{j}=127.0.0.1:{self.client[j]}"]
            with open(self.root / f"node{i}.log", "ab") as log:
                self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.client.values()]


def percentile_ms(sorted_s: list[float], p: float) -> float:
    return sorted_s[int(p * (len(sorted_s) - 1))] * 1000 if sorted_s else 0.0


async def fanout(cluster: Cluster, subs: int, total: int, window: int) -> tuple[float, float, float]:
    """(deliveries/s, p50 ms, p99 ms) of ``total`` publishes to ``subs`` subscribers."""
    channel = f"bench.{subs}.{time.monotonic_ns()}"
    latencies_s: list[float] = []
    delivered = 0
    all_in = trio.Event()
    subscribed = 0
    ready = trio.Event()

    async def subscriber(index: int) -> None:
        nonlocal delivered, subscribed
        port = cluster.http[1 + index % 3]
        async with open_websocket_url(f"ws://127.0.0.1:{port}/v1/ws") as ws:
            await ws.send_message(json.dumps({"id": 1, "type": "subscribe", "channel": channel}))
            got = 0
            while got < total:
                frame = json.loads(await ws.get_message())
                if frame["type"] == "subscribed":
                    subscribed += 1
                    if subscribed == subs:
                        ready.set()
                elif frame["type"] == "message":
                    latencies_s.append(time.perf_counter() - float(frame["data"]))
                    got += 1
                    delivered += 1
            if delivered == subs * total:
                all_in.set()

    async with trimaran.connect(cluster.endpoints, timeout_ms=30_000) as c, trio.open_nursery() as nursery:
        for i in range(subs):
            nursery.start_soon(subscriber, i)
        with trio.fail_after(60):
            await ready.wait()
        slots = trio.Semaphore(window)
        started = time.perf_counter()

        async def publish_one() -> None:
            try:
                await c.chat.publish(channel, repr(time.perf_counter()))
            finally:
                slots.release()

        async with trio.open_nursery() as publishers:
            for _ in range(total):
                await slots.acquire()
                publishers.start_soon(publish_one)
        with trio.fail_after(120):
            await all_in.wait()
        elapsed = time.perf_counter() - started
    latencies_s.sort()
    return delivered / elapsed, percentile_ms(latencies_s, 0.5), percentile_ms(latencies_s, 0.99)


async def wait_ready(cluster: Cluster) -> None:
    async with trimaran.connect(cluster.endpoints, timeout_ms=60_000) as c:
        await c.chat.publish("warmup", "x")


def run_trimaran(subs_list: list[int], total: int, window: int) -> dict[int, tuple[float, float, float]]:
    root = Path(tempfile.mkdtemp(prefix="trimaran-chat-bench-"))
    cluster = Cluster(root)
    out: dict[int, tuple[float, float, float]] = {}
    try:
        cluster.start()
        trio.run(wait_ready, cluster)
        for subs in subs_list:
            out[subs] = trio.run(fanout, cluster, subs, total, window)
            print(f"  trimaran subs={subs}: {out[subs][0]:.0f} deliveries/s p50 {out[subs][1]:.2f} ms p99 {out[subs][2]:.2f} ms", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


def nats_sh(*args: str) -> str:
    return subprocess.run(["bash", str(NATS_SH), *args], capture_output=True, text=True, timeout=900, check=True).stdout


def run_nats(subs_list: list[int], total: int, window: int) -> dict[int, tuple[float, float, float]]:
    out: dict[int, tuple[float, float, float]] = {}
    nats_sh("start")
    try:
        for subs in subs_list:
            line = nats_sh("load", "--mode", "fanout", "--transport", "ws", "--subs", str(subs), "--total", str(total), "--window", str(window))
            m = _NATS_LINE.search(line)
            if m:
                out[subs] = (float(m.group(3)), float(m.group(4)), float(m.group(5)))
                print(f"  nats subs={subs}: {out[subs][0]:.0f} deliveries/s p50 {out[subs][1]:.2f} ms p99 {out[subs][2]:.2f} ms", flush=True)
    finally:
        nats_sh("stop")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--subs", default="10,100", help="comma-separated subscriber counts")
    p.add_argument("--total", type=int, default=1000, help="publishes per row")
    p.add_argument("--window", type=int, default=16, help="publishes in flight (NATS: deliveries outstanding per subscriber)")
    p.add_argument("--repeat", type=int, default=1, help="runs per system; medians are printed")
    p.add_argument("--no-nats", action="store_true", help="skip the NATS comparison")
    args = p.parse_args()
    subs_list = [int(s) for s in args.subs.split(",")]
    with_nats = not args.no_nats and NATS_SH.exists() and shutil.which("go") is not None
    ours: list[dict[int, tuple[float, float, float]]] = []
    theirs: list[dict[int, tuple[float, float, float]]] = []
    for r in range(args.repeat):
        print(f"run {r + 1}/{args.repeat}", flush=True)
        ours.append(run_trimaran(subs_list, args.total, args.window))
        if with_nats:
            try:
                theirs.append(run_nats(subs_list, args.total, args.window))
            except subprocess.CalledProcessError as exc:
                print(f"  nats: {exc.stderr.strip()[-300:]}")
    print(f"\nmedians of {args.repeat} run(s); {args.total} publishes, window {args.window}; trimaran: every publish committed on a majority")
    print(f"{'subs':>5} | {'trimaran/s':>10}{'p50 ms':>8}{'p99 ms':>8} | {'nats ws/s':>10}{'p50 ms':>8}{'p99 ms':>8} | {'ratio':>6}")
    for subs in subs_list:
        mine = [run[subs] for run in ours if subs in run]
        other = [run[subs] for run in theirs if subs in run]
        m = tuple(statistics.median(x[k] for x in mine) for k in range(3)) if mine else (0.0, 0.0, 0.0)
        o = tuple(statistics.median(x[k] for x in other) for k in range(3)) if other else None
        ratio = f"{m[0] / o[0]:>6.2f}" if o and o[0] else f"{'-':>6}"
        cells = f"{o[0]:>10.0f}{o[1]:>8.2f}{o[2]:>8.2f}" if o else f"{'-':>10}{'-':>8}{'-':>8}"
        print(f"{subs:>5} | {m[0]:>10.0f}{m[1]:>8.2f}{m[2]:>8.2f} | {cells} | {ratio}")
    print("\ntarget (issue 11): deliveries/s >= 1.0x NATS at 100 subscribers")


if __name__ == "__main__":
    main()
