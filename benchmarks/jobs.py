"""The job queue through a real 3-node cluster, beside RabbitMQ quorum queues and NATS JetStream work
queues in the same run, and the queue's scale (memory per job, claim latency at 1k vs 1M queued).

1. Enqueue rate: P closed-loop producers (1, 64, 256) enqueue 256-byte jobs over P/8 clients (1 to
   8); each enqueue is committed on a majority, fsynced and applied before it is acknowledged (the
   enqueues waiting on one client at once share a command: ``enqueue_batch``, one in flight per
   client; it prints the jobs per command). ops/s and the latency enqueue -> acknowledgement (p50, p99).
2. Round trip: the same producers, and 8 workers (the worker runtime, ``trimaran.client.Worker``:
   one session and heartbeat each, two long-polling claims in flight, completions reported together
   in ``complete_batch`` commands, concurrency 32) in separate processes (``--worker-procs``, 4
   workers each by default); claims and completions go through the log too. ops/s = completed
   jobs/s; latency enqueue -> the worker's completion acknowledged (wall clock, one host). It also
   prints where a job's cost goes: CPU per job of the nodes, the worker processes and the producer
   process; the leader's log entries, rounds and peer writes per 1000 jobs; claims and batches per
   job; and the producers' enqueue rate during the round trip (64 closed-loop producers bound it).
3. RabbitMQ 3.10 quorum queue, R3 (``../shared/peers/rabbitmq.sh``): publisher confirms (window 1),
   8 consumers with manual acks and prefetch 32; latency publish -> confirm / publish -> ack.
   NATS JetStream WorkQueue stream, R3 (``../shared/peers/nats.sh``, started with ``--sync always``:
   each write fsynced, the fair match for a Raft write; ``--nats-sync default`` for its default),
   8 pull consumers with 32 outstanding. Their load generators are Go (lighter than our Python
   clients, which share the 2 cores with the nodes).
4. Scale (``--scale``): a ``JobsService`` holding N queued jobs (tracemalloc bytes per job) and
   the time of one ``claim`` and one ``complete`` through ``apply`` (mean of up to 2,000, so at
   least N/2 stay queued) at N queued: at 1,000 and at the
   largest N asked (1,000,000 = ``job_queue_jobs_max``). The service alone: the node's per-entry
   cost is the same at any N.

    python benchmarks/jobs.py                         # everything once
    python benchmarks/jobs.py --repeat 3              # medians of 3
    python benchmarks/jobs.py --quick --no-rabbitmq   # smaller totals, no RabbitMQ
    python benchmarks/jobs.py --only scale --scale 1000,1000000
    python benchmarks/jobs.py --quick --only roundtrip --producers 64 --no-rabbitmq --no-nats --profile /tmp/p
                                                      # cProfile the nodes and the worker processes

Each system runs alone (never two at once); each repeat starts fresh clusters. Everything this
starts is stopped by PID (the peers by their scripts, which stop what they started by PID).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.client.real_cluster, benchmarks.kv_cluster
sys.path.insert(0, str(ROOT / "src"))  # the package, uninstalled too

import trio  # noqa: E402

from benchmarks.kv_cluster import TrimaranCluster, percentile_ms, print_profile, proc_cpu_s, stop_pid  # noqa: E402
from trimaran.client import Client, Jobs, Worker  # noqa: E402
from trimaran.client.jobs import JobsClient  # noqa: E402
from trimaran.errors import TrimaranError  # noqa: E402
from trimaran.protocols.codec import unpack  # noqa: E402
from trimaran.protocols.service import ApplyContext  # noqa: E402
from trimaran.services.jobs import JobsService  # noqa: E402

RABBITMQ_SH = ROOT.parent / "shared" / "peers" / "rabbitmq.sh"
NATS_SH = ROOT.parent / "shared" / "peers" / "nats.sh"
_PEER_LINE = re.compile(r"ok=(\d+) failed=(\d+) ops/s=([\d.]+) p50_ms=([\d.]+) p99_ms=([\d.]+)")
PAYLOAD_BYTES = 256
WORKERS = 8
CONCURRENCY = 32


@dataclass
class Result:
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int = 0


def median_result(results: list[Result]) -> Result:
    return Result(*(statistics.median(getattr(r, f) for r in results) for f in ("ops_per_s", "p50_ms", "p99_ms", "failed")))


# --- the worker processes (``--worker-proc``) --------------------------------------------------------


async def worker_proc(endpoints: str, queue: str, workers: int, concurrency: int, out: Path) -> None:
    """``workers`` Worker runtimes on ``queue`` (each its own client, session and heartbeat) until
    SIGTERM; then writes each completion's (enqueued at, acknowledged at) wall times to ``out``."""
    done: list[tuple[float, float, float]] = []
    claimed_at: dict[str, float] = {}
    claims = [0, 0]  # claim answers, jobs in them
    complete_batch, claim = JobsClient.complete_batch, JobsClient.claim

    def claimed(answer: Any) -> None:
        now = time.time()
        claims[0] += 1
        claims[1] += len(answer.jobs)
        for lease in answer.jobs:
            claimed_at[lease.id] = now

    def completed(completions: Any, answers: list[str]) -> None:
        now = time.time()
        for c, answer in zip(completions, answers):
            if answer == "completed":  # (enqueued at: the task's result, claim answered at, complete acknowledged at)
                done.append((unpack(c.result), claimed_at.pop(c.job, 0.0), now))

    async def timed_claim(self: JobsClient, *args: Any, **kw: Any) -> Any:
        answer = await claim(self, *args, **kw)
        claimed(answer)
        return answer

    async def timed_complete_batch(self: JobsClient, completions: Any, **kw: Any) -> list[str]:
        answers = await complete_batch(self, completions, **kw)
        completed(completions, answers)
        return answers

    JobsClient.complete_batch = timed_complete_batch  # type: ignore[method-assign]
    JobsClient.claim = timed_claim  # type: ignore[method-assign]
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with contextlib.AsyncExitStack() as stack:
            runtimes: list[Worker] = []
            for w in range(workers):
                client = await stack.enter_async_context(Client(endpoints.split(","), timeout_ms=30_000))
                app = Jobs(client=client)

                @app.task(queue, timeout_ms=60_000)
                async def job(t0: float, pad: bytes) -> float:
                    return t0

                runtimes.append(app.worker(concurrency=concurrency, name=f"bench-{os.getpid()}-{w}"))
            async with trio.open_nursery() as nursery:
                for runtime in runtimes:
                    await nursery.start(runtime.run)
                print("ready", flush=True)
                async for _ in signals:
                    for runtime in runtimes:
                        runtime.stop()
                    break
    batches = [sum(r.completions.batches for r in runtimes if r.completions), sum(r.completions.jobs for r in runtimes if r.completions)]
    out.write_text(json.dumps({"done": done, "claims": claims, "batches": batches}))


class WorkerProcs:
    def __init__(self, root: Path, endpoints: list[str], queue: str, procs: int, per_proc: int, profile_dir: Path | None = None) -> None:
        self.outs = [root / f"{queue}-w{i}.json" for i in range(procs)]
        self.procs = []
        for i, out in enumerate(self.outs):
            runner = [sys.executable]
            if profile_dir is not None:
                runner += ["-m", "cProfile", "-o", str(profile_dir / f"{queue}-worker{i}.prof")]
            argv = runner + [__file__, "--worker-proc", "--endpoints", ",".join(endpoints), "--queue", queue]
            argv += ["--workers-per-proc", str(per_proc), "--out", str(out)]
            log = open(root / f"{out.stem}.log", "ab")
            self.procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, cwd=ROOT))
            log.close()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # (blocking: the processes print "ready" once)
            if line.strip() != b"ready":
                raise RuntimeError(f"a worker process did not start (exit {proc.poll()}); see its log")

    def stop(self) -> tuple[list[tuple[float, float, float]], list[int]]:
        """Each completion's (enqueued at, claim answered at, complete acknowledged at), and
        [claim answers, jobs in them, complete_batch answers, jobs in them] over all the worker processes."""
        for proc in self.procs:
            stop_pid(proc, timeout_s=30)
        done: list[tuple[float, float, float]] = []
        claims = [0, 0, 0, 0]
        for out in self.outs:
            if out.exists():
                data = json.loads(out.read_text())
                done += [tuple(x) for x in data["done"]]
                claims = [a + b for a, b in zip(claims, data["claims"] + data["batches"])]
        return done, claims


# --- trimaran producers --------------------------------------------------------------------------------


async def produce(endpoints: list[str], queue: str, producers: int, total: int) -> tuple[Result, list[float]]:
    """``producers`` closed-loop producers over a few connections enqueue ``total`` jobs."""
    conns_count = max(1, min(8, producers // 8))
    pad = b"x" * (PAYLOAD_BYTES - 40)
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(Client(endpoints, timeout_ms=30_000)) for _ in range(conns_count)]
        for c in conns:  # sessions registered, leader found, before the clock starts
            await c.jobs.stats(queue)
            await c.kv.set("bench-seed", "1")
        issued, failed = 0, 0
        latencies_s: list[float] = []
        perf = time.perf_counter

        async def producer(p: int) -> None:
            nonlocal issued, failed
            c = conns[p % len(conns)]
            while issued < total:
                issued += 1
                started = perf()
                try:
                    await c.jobs.enqueue(queue, {"t0": time.time(), "pad": pad})
                except TrimaranError:
                    failed += 1
                    continue
                latencies_s.append(perf() - started)

        started = perf()
        async with trio.open_nursery() as nursery:
            for p in range(producers):
                nursery.start_soon(producer, p)
        elapsed = perf() - started
        groups = [g for c in conns for g in c.jobs.enqueues.values()]
        batches, jobs = sum(g.batches for g in groups), sum(g.jobs for g in groups)
        print(f"    enqueue commands: {batches}, {jobs / max(1, batches):.1f} jobs per command (concurrent enqueues of a client share one)", flush=True)
    latencies_s.sort()
    return Result(len(latencies_s) / elapsed, percentile_ms(latencies_s, 0.5), percentile_ms(latencies_s, 0.99), failed), latencies_s


async def wait_completed(endpoints: list[str], queue: str, total: int, timeout_s: float) -> int:
    async with Client(endpoints, timeout_ms=30_000) as c:
        with trio.move_on_after(timeout_s):
            while (await c.jobs.stats(queue)).counts["completed"] < total:
                await trio.sleep(0.2)
        return (await c.jobs.stats(queue)).counts["completed"]


async def leader_counters(endpoints: list[str]) -> dict[str, int]:
    """The leader's log index, driver rounds and peer socket writes (what a job costs the log)."""
    async with Client(endpoints, timeout_ms=10_000) as c:
        for address in endpoints:
            status = await c.node_status(address)
            if status["role"] == "leader":
                m = status["metrics"]
                return {"entries": status["last_index"], "rounds": m["driver_rounds"], "peer writes": m["peer_socket_writes"]}
    return {}


def print_log_cost(before: dict[str, int], after: dict[str, int], jobs: int) -> None:
    if before and after:
        print("    leader per 1000 jobs: " + ", ".join(f"{k} {(after[k] - before[k]) * 1000 / max(1, jobs):.0f}" for k in before), flush=True)


def trimaran_roundtrip(root: Path, cluster: TrimaranCluster, producers: int, total: int, worker_procs: int, profile_dir: Path | None = None) -> Result:
    queue = f"rt{producers}"
    workers = WorkerProcs(root, cluster.endpoints, queue, worker_procs, WORKERS // worker_procs, profile_dir)
    try:
        workers.wait_ready()
        counters = trio.run(leader_counters, cluster.endpoints)
        nodes_cpu, workers_cpu, producer_cpu = cluster.cpu_s(), [proc_cpu_s(p.pid) for p in workers.procs], time.process_time()
        enq, _ = trio.run(produce, cluster.endpoints, queue, producers, total)
        print(f"    enqueues meanwhile: {fmt(enq)}", flush=True)
        completed = trio.run(wait_completed, cluster.endpoints, queue, total - enq.failed, 120.0)
        # CPU per job: where the 2 cores went (the nodes, the worker processes, this producer).
        kjobs = max(1, completed) / 1000
        nodes_after = cluster.cpu_s()
        node_ms = f"nodes={sum(nodes_after[n] - nodes_cpu[n] for n in nodes_after) / kjobs:.2f}"
        workers_ms = sum(proc_cpu_s(p.pid) - c for p, c in zip(workers.procs, workers_cpu)) / kjobs
        print(f"    cpu ms/job: {node_ms} workers={workers_ms:.2f} producer={(time.process_time() - producer_cpu) / kjobs:.2f}", flush=True)
        print_log_cost(counters, trio.run(leader_counters, cluster.endpoints), completed)
    finally:
        done, claims = workers.stop()
    if not done:
        return Result(0, 0, 0, total)
    print(
        f"    claims: {claims[0]} answered, {claims[1] / max(1, claims[0]):.1f} jobs per claim, {claims[0] / len(done):.2f} claims per job;"
        f" complete_batch: {claims[2]}, {claims[3] / max(1, claims[2]):.1f} jobs per batch",
        flush=True,
    )
    first_t0 = min(t0 for t0, _, _ in done)
    last = max(t for _, _, t in done)
    latencies = sorted(t - t0 for t0, _, t in done)
    to_claim = sorted(c - t0 for t0, c, _ in done)
    to_done = sorted(t - c for _, c, t in done)
    print(
        f"    p50/p99 ms: enqueue->claim answered {percentile_ms(to_claim, 0.5):.1f}/{percentile_ms(to_claim, 0.99):.1f},"
        f" claim answered->complete acknowledged {percentile_ms(to_done, 0.5):.1f}/{percentile_ms(to_done, 0.99):.1f}",
        flush=True,
    )
    return Result(len(done) / (last - first_t0), percentile_ms(latencies, 0.5), percentile_ms(latencies, 0.99), total - completed)


def run_trimaran(
    producers_list: list[int], totals: dict[int, int], worker_procs: int, modes: set[str], profile_dir: Path | None = None
) -> dict[tuple[str, int], Result]:
    root = Path(tempfile.mkdtemp(prefix="trimaran-jobs-bench-"))
    cluster = TrimaranCluster(root, profile_dir=profile_dir)
    out: dict[tuple[str, int], Result] = {}
    try:
        cluster.start()
        trio.run(wait_ready, cluster)
        for producers in producers_list:
            if "enqueue" in modes:
                counters = trio.run(leader_counters, cluster.endpoints)
                nodes_cpu, producer_cpu = cluster.cpu_s(), time.process_time()
                out["enqueue", producers] = trio.run(produce, cluster.endpoints, f"enq{producers}", producers, totals[producers])[0]
                print_log_cost(counters, trio.run(leader_counters, cluster.endpoints), totals[producers])
                kjobs = totals[producers] / 1000
                nodes_ms = sum(cluster.cpu_s().values()) - sum(nodes_cpu.values())
                print(f"    cpu ms/job: nodes={nodes_ms / kjobs:.2f} producer={(time.process_time() - producer_cpu) / kjobs:.2f}", flush=True)
                print(f"  trimaran enqueue   P={producers:<3} {fmt(out['enqueue', producers])}", flush=True)
            if "roundtrip" in modes:
                out["roundtrip", producers] = trimaran_roundtrip(root, cluster, producers, totals[producers], worker_procs, profile_dir)
                print(f"  trimaran roundtrip P={producers:<3} {fmt(out['roundtrip', producers])}", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


async def wait_ready(cluster: TrimaranCluster, timeout_s: float = 60.0) -> None:
    async with Client(cluster.endpoints, timeout_ms=int(timeout_s * 1000)) as c:
        await c.jobs.stats("ready")
        await c.kv.set("ready", "1")


# --- peers ----------------------------------------------------------------------------------------------


def peer_sh(script: Path, *args: str, timeout_s: float = 900) -> str:
    proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{script.name} {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout


def parse_peer(text: str) -> Result:
    match = _PEER_LINE.search(text)
    if match is None:
        raise RuntimeError(f"no result line in: {text[-300:]}")
    ok, failed, ops, p50, p99 = match.groups()
    return Result(float(ops), float(p50), float(p99), int(failed))


def peer_server_pids(name: str) -> list[int]:
    """The server processes the peer script started (its pid files)."""
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "trimaran-peers"
    files = [root / "rabbitmq" / f"rmq{i}" / "beam.pid" for i in (1, 2, 3)] if name == "rabbitmq" else [root / "nats" / f"n{i}.pid" for i in (1, 2, 3)]
    return [int(f.read_text().strip()) for f in files if f.exists()]


def peer_load(name: str, script: Path, *args: str) -> Result:
    """One load run, with the CPU it cost per job: the servers' and the load generator's."""
    pids = peer_server_pids(name)
    servers_before = sum(proc_cpu_s(pid) for pid in pids)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = parse_peer(peer_sh(script, "load", *args))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    kjobs = int(args[args.index("--total") + 1]) / 1000
    servers_ms = (sum(proc_cpu_s(pid) for pid in pids) - servers_before) / kjobs
    load_ms = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) / kjobs
    print(f"    cpu ms/job: servers={servers_ms:.2f} load generator={load_ms:.2f}", flush=True)
    return result


def run_peer(name: str, producers_list: list[int], totals: dict[int, int], modes: set[str], nats_sync: str) -> dict[tuple[str, int], Result]:
    script = RABBITMQ_SH if name == "rabbitmq" else NATS_SH
    start = ["start"] if name == "rabbitmq" or nats_sync == "default" else ["start", "--sync", "always"]
    out: dict[tuple[str, int], Result] = {}
    try:
        peer_sh(script, *start)
        for producers in producers_list:
            common = ["--producers", str(producers), "--total", str(totals[producers]), "--size", str(PAYLOAD_BYTES)]
            if "enqueue" in modes:
                out["enqueue", producers] = peer_load(name, script, "--mode", "enqueue", *common)
                print(f"  {name} enqueue   P={producers:<3} {fmt(out['enqueue', producers])}", flush=True)
            if "roundtrip" in modes:
                mode = "roundtrip" if name == "rabbitmq" else "workqueue"
                extra = ["--consumers", str(WORKERS), "--prefetch", str(CONCURRENCY)]
                out["roundtrip", producers] = peer_load(name, script, "--mode", mode, *common, *extra)
                print(f"  {name} roundtrip P={producers:<3} {fmt(out['roundtrip', producers])}", flush=True)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"  {name}: {exc}", flush=True)
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            peer_sh(script, "stop", timeout_s=120)
    return out


# --- scale: the service alone -------------------------------------------------------------------------


def fill_jobs(svc: JobsService, count: int, index: int = 1) -> int:
    """``count`` queued 256-byte jobs in one queue, through ``apply`` in batches; the next index."""
    pad = b"x" * PAYLOAD_BYTES
    for start in range(0, count, 1_000):
        batch = [["scale", pad] for _ in range(min(1_000, count - start))]
        svc.apply(["enqueue_batch", batch], ApplyContext(index, index))
        index += 1
    return index


def scale_point(count: int, claims: int = 2_000) -> tuple[float, float, float]:
    """(tracemalloc bytes per queued job, µs per claim of 1, µs per complete) at ``count`` queued."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        svc = JobsService()
        fill_jobs(svc, count)
        gc.collect()
        per_job = (tracemalloc.get_traced_memory()[0] - base) / count
    finally:
        tracemalloc.stop()
    # Timed on a fresh fill: tracemalloc's own bookkeeping (its traces are freed at stop, then
    # the memory comes back fragmented) would be measured too.
    del svc
    gc.collect()
    svc = JobsService()
    index = fill_jobs(svc, count)
    session = svc.apply(["session_open", "bench", 3_600_000], ApplyContext(index, index))["session"]
    index += 1
    claims = min(claims, count // 2)  # the queue stays between count and count/2 queued
    claim_s = complete_s = 0.0
    gc.collect()
    gc.freeze()  # the queued jobs are long-lived: a full collection's cost is the heap's, not a claim's
    for _ in range(claims):
        ctx = ApplyContext(index, index)
        t = time.perf_counter()
        lease = svc.apply(["claim", session, ["scale"], 1], ctx)["jobs"][0]
        claim_s += time.perf_counter() - t
        ctx = ApplyContext(index + 1, index + 1)
        t = time.perf_counter()
        svc.apply(["complete", lease["id"], lease["token"]], ctx)
        complete_s += time.perf_counter() - t
        index += 2
    gc.unfreeze()
    return per_job, claim_s / claims * 1e6, complete_s / claims * 1e6


# --- output ---------------------------------------------------------------------------------------------


def fmt(r: Result | None) -> str:
    if r is None:
        return "-"
    return f"{r.ops_per_s:8.0f}/s p50 {r.p50_ms:7.2f} ms p99 {r.p99_ms:7.2f} ms" + (f" failed {r.failed:.0f}" if r.failed else "")


def print_table(producers_list: list[int], modes: list[str], systems: dict[str, dict[tuple[str, int], Result]]) -> None:
    names = list(systems)
    print()
    header = f"{'mode':<10} {'P':>4}  " + "  ".join(f"{n + ' ops/s  p50/p99 ms':<32}" for n in names)
    header += "  " + "  ".join(f"vs {n:<9}" for n in names[1:])
    print(header)
    print("-" * len(header))
    for mode in modes:
        for producers in producers_list:
            cells = []
            for n in names:
                r = systems[n].get((mode, producers))
                cells.append(f"{r.ops_per_s:8.0f}  {r.p50_ms:7.2f}/{r.p99_ms:<8.2f}" + " " * 6 if r else f"{'-':<32}")
            ours = systems[names[0]].get((mode, producers))
            ratios = []
            for n in names[1:]:
                theirs = systems[n].get((mode, producers))
                ratios.append(f"{ours.ops_per_s / theirs.ops_per_s:>5.2f}x    " if ours and theirs and theirs.ops_per_s else f"{'-':<11}")
            print(f"{mode:<10} {producers:>4}  " + "  ".join(f"{c:<32}" for c in cells) + "  " + "  ".join(ratios))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--producers", default="1,64,256")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smaller totals")
    ap.add_argument("--only", choices=("enqueue", "roundtrip", "scale", "cluster"), help="one part (cluster: enqueue and roundtrip)")
    ap.add_argument("--no-rabbitmq", action="store_true")
    ap.add_argument("--no-nats", action="store_true")
    ap.add_argument("--nats-sync", choices=("always", "default"), default="always")
    ap.add_argument("--worker-procs", type=int, default=2, help=f"processes hosting the {WORKERS} workers")
    ap.add_argument("--scale", default="1000,1000000", help="queued job counts of the scale part")
    ap.add_argument("--profile", type=Path, default=None, help="cProfile the nodes and worker processes of the first repeat into DIR")
    ap.add_argument("--profile-top", type=int, default=25, help="functions printed per profile")
    # (internal) one worker process of the round trip
    ap.add_argument("--worker-proc", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--endpoints", help=argparse.SUPPRESS)
    ap.add_argument("--queue", help=argparse.SUPPRESS)
    ap.add_argument("--workers-per-proc", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker_proc:
        trio.run(worker_proc, args.endpoints, args.queue, args.workers_per_proc, CONCURRENCY, Path(args.out))
        return
    producers_list = [int(p) for p in args.producers.split(",")]
    totals = {p: (300 if p == 1 else 3_000) if args.quick else (1_000 if p == 1 else 10_000) for p in producers_list}
    modes = {"enqueue", "roundtrip"} if args.only in (None, "cluster") else {args.only} - {"scale"}
    print(f"jobs benchmark: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; totals {totals}", flush=True)
    if modes:
        runs: dict[str, list[dict[tuple[str, int], Result]]] = {"trimaran": []}
        if not args.no_rabbitmq:
            runs["rabbitmq"] = []
        if not args.no_nats:
            runs["nats"] = []
        for repeat in range(args.repeat):
            print(f"repeat {repeat + 1}/{args.repeat}", flush=True)
            profile_dir = args.profile if repeat == 0 else None
            if profile_dir is not None:
                profile_dir.mkdir(parents=True, exist_ok=True)
            runs["trimaran"].append(run_trimaran(producers_list, totals, args.worker_procs, modes, profile_dir))
            for name in list(runs)[1:]:
                runs[name].append(run_peer(name, producers_list, totals, modes, args.nats_sync))
        systems = {
            name: {key: median_result([r[key] for r in results if key in r]) for key in {k for r in results for k in r}}
            for name, results in runs.items()
        }
        print(f"\nmedians of {args.repeat}; ops/s = acknowledged enqueues/s (enqueue) or completed jobs/s (roundtrip)")
        print_table(producers_list, [m for m in ("enqueue", "roundtrip") if m in modes], systems)
        if args.profile is not None:
            print_profile(args.profile, args.profile_top)
    if args.only in (None, "scale"):
        print("\nscale (the service alone, one queue):")
        print(f"{'queued':>10}  {'bytes/job':>10}  {'claim µs':>9}  {'complete µs':>11}")
        for count in (int(n) for n in args.scale.split(",")):
            per_job, claim_us, complete_us = scale_point(count)
            print(f"{count:>10}  {per_job:>10.0f}  {claim_us:>9.1f}  {complete_us:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
