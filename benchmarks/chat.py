"""Chat fan-out through a real 3-node cluster, beside NATS with WebSocket subscribers in the same run.

One publisher (the native client: every publish is committed on a majority, fsynced, before it is
acknowledged) and S WebSocket subscribers spread round-robin over the three nodes' gateways
(``/v1/ws``). The subscribers live in ``--procs`` worker processes, each one loop over raw sockets
with a minimal WebSocket reader (no framework: the load generator should cost as little CPU as it
can): ``chat_reader.c``, which the benchmark builds into ``build/`` with the machine's C compiler
(a quarter to a third of the Python worker's CPU), or the Python :func:`subscribers_worker` when
there is no compiler (or with ``--python-subscribers``); the table says which ran. Every
subscriber checks every message's offset: offsets 1..total in order, no gap, no duplicate (a
delivery that is not checked is not counted). The publisher keeps at most ``--window`` publishes
in flight (that many tasks, each publishing in turn). Prints deliveries per second over all
subscribers (first publish to last delivery) and the publish→delivery latency (p50, p99), the CPU seconds each process spent
per 1000 deliveries (nodes, publisher, subscriber workers; the machine is shared, so CPU per
delivery is steadier than deliveries/s), then the same fan-out for NATS core over WebSocket
(``../shared/peers/nats.sh load --mode fanout --transport ws``: at-most-once, neither persisted nor
replicated; its window is deliveries outstanding per subscriber), and the ratio.

    python benchmarks/chat.py                       # 10 and 100 subscribers, 64 publishes in flight
    python benchmarks/chat.py --subs 1,10,100 --repeat 3
    python benchmarks/chat.py --subs 100 --window 16 --ports 33000    # nodes on free ports from 33000
    python benchmarks/chat.py --subs 100 --no-nats --profile build/prof   # cProfile of every process

The window: 64 publishes in flight is the issue's 64-publisher shape (64 users publishing at once,
each waiting for its acknowledgement), where both systems run as fast as their CPU lets them, and
the target is judged there. With fewer in flight the rate is bound by the publish round trip, a
quorum commit (two fsyncs and a replication round) against NATS's fire-and-forget publish: at 16
it is about 0.85x NATS on an idle machine, at 128 about 1.27x.

Fairness: the subscriber workers and the publisher share the 2 cores with the nodes (their CPU share
is printed); NATS's load generator is Go. Every process this starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import selectors
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.client.real_cluster
sys.path.insert(0, str(ROOT / "src"))  # the package, uninstalled too

NATS_SH = ROOT.parent / "shared" / "peers" / "nats.sh"
_NATS_LINE = re.compile(r"ok=(\d+) failed=(\d+) ops/s=([\d.]+) p50_ms=([\d.]+) p99_ms=([\d.]+)")
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
#: One message push as the gateway encodes it (compact JSON, its key order, text data without
#: escapes), a whole line: the subscriber workers' fast check (offset and data captured).
_MESSAGE_LINE = re.compile(
    rb'^\{"type":"message","channel":"[^"\\]*","offset":(\d+),"epoch":"[^"\\]*","data":"([^"\\]*)","at_ms":\d+\}$', re.MULTILINE
)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def ports_from(base: int, count: int) -> list[int]:
    """``count`` ports from ``base`` up (within 1000) that bind now: the range overlaps the OS's
    ephemeral ports, so one may be held by a connection's local end."""
    ports: list[int] = []
    for port in range(base, base + 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"fewer than {count} free ports in {base}..{base + 999}")


class Cluster:
    def __init__(self, root: Path, profile_dir: Path | None = None, port_base: int | None = None) -> None:
        from tests.client.real_cluster import free_ports

        ports = free_ports(9) if port_base is None else ports_from(port_base, 9)
        self.root = root
        self.profile_dir = profile_dir
        self.client = {i: ports[i - 1] for i in (1, 2, 3)}
        self.peer = {i: ports[2 + i] for i in (1, 2, 3)}
        self.http = {i: ports[5 + i] for i in (1, 2, 3)}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for i in (1, 2, 3):
            cmd = [sys.executable]
            if self.profile_dir is not None:  # cProfile writes its file when the node exits (SIGTERM)
                cmd += ["-m", "cProfile", "-o", str(self.profile_dir / f"node{i}.prof")]
            cmd += ["-m", "trimaran", "node", "run", "--id", str(i), "--log-level", "warning"]
            cmd += ["--listen", f"127.0.0.1:{self.client[i]}", "--peer-listen", f"127.0.0.1:{self.peer[i]}"]
            cmd += ["--http-listen", f"127.0.0.1:{self.http[i]}", "--data-dir", str(self.root / f"node{i}")]
            for j in (1, 2, 3):
                if j != i:
                    cmd += ["--peer", f"{j}=127.0.0.1:{self.peer[j]}", "--peer-client", f"{j}=127.0.0.1:{self.client[j]}"]
            with open(self.root / f"node{i}.log", "ab") as log:
                self.procs[i] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
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


# ---------------------------------------------------------------------------------- subscriber worker


class RawSubscriber:
    """One WebSocket subscriber on a raw socket: the upgrade by hand, unmasked server frames parsed
    in place, each frame's pushes (newline-delimited JSON) decoded with one ``json.loads``."""

    __slots__ = ("sock", "buf", "expect", "got", "subscribed", "errors")

    def __init__(self, port: int, channel: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = (
            f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(upgrade.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the WebSocket upgrade")
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"upgrade refused: {head[:200]!r}")
        self.sock.setblocking(False)
        self.buf = bytearray(rest)
        self.expect = 1  # the next offset wanted (a fresh channel: offsets start at 1)
        self.got = 0
        self.subscribed = False
        self.errors: list[str] = []
        self.send_text(json.dumps({"id": 1, "type": "subscribe", "channel": channel}))

    def send_text(self, text: str, opcode: int = 0x1) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.setblocking(True)
        self.sock.sendall(head + mask + masked)
        self.sock.setblocking(False)

    def frames(self) -> list[tuple[int, bytes]]:
        """The whole frames in the buffer (taken out of it)."""
        buf, pos, out = self.buf, 0, []
        size = len(buf)
        while size - pos >= 2:
            b0, n = buf[pos], buf[pos + 1] & 0x7F
            start = pos + 2
            if n == 126:
                if size - pos < 4:
                    break
                n, start = (buf[pos + 2] << 8) | buf[pos + 3], pos + 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if size - start < n:
                break
            if not b0 & 0x80:
                raise ConnectionError("a fragmented frame (the gateway sends whole frames)")
            out.append((b0 & 0x0F, bytes(buf[start : start + n])))
            pos = start + n
        del buf[:pos]
        return out


READER_SOURCE = ROOT / "benchmarks" / "chat_reader.c"
READER_BINARY = ROOT / "build" / "chat_reader"


def c_reader(binary: Path = READER_BINARY) -> Path | None:
    """The C subscriber worker (``chat_reader.c``, the same check of every offset at a fraction of
    the Python worker's CPU), built at ``binary`` with the machine's compiler when it is missing
    or older than its source; None when no compiler is found or the build fails."""
    if binary.exists() and binary.stat().st_mtime >= READER_SOURCE.stat().st_mtime:
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    binary.parent.mkdir(parents=True, exist_ok=True)
    built = subprocess.run([compiler, "-O2", "-o", str(binary), str(READER_SOURCE)], capture_output=True, text=True)
    if built.returncode != 0:
        print(f"  the C subscriber worker did not build ({built.stderr.strip()[-300:]}); the Python worker runs", flush=True)
        return None
    return binary


def worker_command(reader: Path | None, channel: str, total: int, deadline_s: float, ports: list[int]) -> list[str]:
    """The command of one subscriber worker process: the C one, or the Python one (None)."""
    if reader is not None:
        return [str(reader), channel, str(total), str(deadline_s), *map(str, ports)]
    spec = {"ports": ports, "channel": channel, "total": total, "deadline_s": deadline_s}
    return [sys.executable, __file__, "--worker", json.dumps(spec)]


def subscribers_worker(spec: dict[str, Any]) -> None:
    """A worker process: ``spec`` says which ports, channel and how many; prints ``ready`` once every
    subscriber is subscribed, then one JSON line with what they received."""
    channel, total, deadline_s = spec["channel"], spec["total"], spec["deadline_s"]
    subs = [RawSubscriber(port, channel) for port in spec["ports"]]
    sel = selectors.DefaultSelector()
    for s in subs:
        sel.register(s.sock, selectors.EVENT_READ, s)
    latencies: list[float] = []
    frames = reads = 0  # data frames and socket reads after every subscriber is subscribed
    # One buffer for every read (a fresh 256 KiB bytes object per recv cost a quarter of the worker's CPU).
    into = bytearray(1 << 18)
    into_view = memoryview(into)
    pending_ready = len(subs)
    done = 0
    last_at = 0.0
    cpu_start = None
    loads = json.loads
    message_lines = _MESSAGE_LINE.findall
    now = time.monotonic
    give_up = now() + deadline_s
    while done < len(subs) and now() < give_up:
        for key, _ in sel.select(timeout=1.0):
            s = key.data
            try:
                size = s.sock.recv_into(into)
            except BlockingIOError:
                continue
            if not size:
                s.errors.append("connection closed")
                sel.unregister(s.sock)
                done += 1
                continue
            s.buf += into_view[:size]
            reads += 1
            for opcode, payload in s.frames():
                if opcode == 0x9:
                    s.send_text(payload.decode("latin-1"), opcode=0xA)
                    continue
                if opcode == 0x8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                    s.errors.append(f"closed by the gateway: {code} {payload[2:].decode(errors='replace')}")
                    continue
                # One frame: pushes as newline-delimited JSON (a JSON text has no raw newline).
                frames += 1
                at = now()
                # The common case, checked in bulk: every line a message push in the gateway's
                # exact form (read with one regex, half the CPU of json.loads), offsets exactly
                # the next ones. Anything else is parsed as JSON below.
                found = message_lines(payload)
                n = len(found)
                if n == payload.count(b"\n") + 1 and [int(o) for o, _ in found] == list(range(s.expect, s.expect + n)):
                    s.expect += n
                    s.got += n
                    latencies.extend([at - float(d) for _, d in found])
                    if s.got - n < total <= s.got:
                        done += 1
                        last_at = at
                    continue
                pushes = loads(b"[" + payload.replace(b"\n", b",") + b"]")
                # The common case, checked in bulk: only messages, offsets exactly the next ones.
                n = len(pushes)
                offsets = [p.get("offset") for p in pushes if p["type"] == "message"]
                if len(offsets) == n and offsets == list(range(s.expect, s.expect + n)):
                    s.expect += n
                    s.got += n
                    latencies.extend([at - float(p["data"]) for p in pushes])
                    if s.got - n < total <= s.got:
                        done += 1
                        last_at = at
                    continue
                for push in pushes:  # one by one: answers, or an offset out of order (an error)
                    kind = push["type"]
                    if kind == "message":
                        offset = push["offset"]
                        if offset != s.expect:
                            s.errors.append(f"offset {offset} where {s.expect} was due")
                            s.expect = max(s.expect, offset + 1)
                            continue
                        s.expect += 1
                        s.got += 1
                        latencies.append(at - float(push["data"]))
                        if s.got == total:
                            done += 1
                            last_at = at
                    elif kind == "subscribed":
                        s.subscribed = True
                        pending_ready -= 1
                        if pending_ready == 0:
                            cpu_start = os.times()
                            frames = reads = 0
                            print("ready", flush=True)
                    elif kind == "error":
                        s.errors.append(json.dumps(push["error"])[:200])
                        if not s.subscribed:
                            give_up = now()  # a subscribe refused: this row cannot be measured
        if pending_ready and now() > give_up:
            break
    cpu_end = os.times()
    cpu = (cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) if cpu_start else 0.0
    errors = [e for s in subs for e in s.errors]
    for s in subs:
        s.sock.close()
    if pending_ready:
        print("not subscribed", flush=True)  # the parent stops waiting; the errors say why
    print(json.dumps({"delivered": sum(s.got for s in subs), "last_at": last_at, "cpu_s": cpu, "frames": frames, "reads": reads,
                      "errors": errors[:20] + ([f"... {len(errors) - 20} more"] if len(errors) > 20 else []),
                      "latencies": [round(x, 6) for x in latencies]}), flush=True)  # fmt: skip


# ---------------------------------------------------------------------------------- one row


class NotSubscribed(RuntimeError):
    """A subscriber worker's subscribe was refused (its errors say why)."""


def fanout(cluster: Cluster, subs: int, total: int, window: int, procs: int, reader: Path | None) -> dict[str, Any]:
    """Run ``total`` publishes to ``subs`` subscribers (the workers: ``reader``, the C one, or the
    Python :func:`subscribers_worker` when None); the row's figures."""
    import trio

    import trimaran

    channel = f"bench.{subs}.{time.monotonic_ns()}"
    ports = [cluster.http[1 + i % 3] for i in range(subs)]
    procs = max(1, min(procs, subs))
    workers = []
    for w in range(procs):
        cmd = worker_command(reader, channel, total, 180, ports[w::procs])
        if reader is None and cluster.profile_dir is not None:
            cmd[1:1] = ["-m", "cProfile", "-o", str(cluster.profile_dir / f"subscribers{subs}-{w}.prof")]
        workers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
    try:
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                result = worker.stdout.read().strip().splitlines()
                raise NotSubscribed(f"a subscriber worker did not subscribe: {result[-1][:1000] if result else worker.wait()}")
        node_cpu0 = {i: cpu_s(p.pid) for i, p in cluster.procs.items()}
        me0 = resource.getrusage(resource.RUSAGE_SELF)

        acks_s: list[float] = []  # publish -> acknowledged (committed on a majority, applied)

        log_entries: list[int] = []  # the leader's last log index before and after (lever: batching)

        async def publish_all() -> float:
            async with trimaran.connect(cluster.endpoints, timeout_ms=30_000) as c:
                log_entries.append((await c.status())["last_index"])
                started = await publish_window(c)
                log_entries.append((await c.status())["last_index"])
            return started

        async def publish_window(c: Any) -> float:
            # ``window`` tasks publishing one after another (not a task per publish: the load
            # generator should cost as little CPU as it can), so at most ``window`` in flight.
            left = [total]

            async def publisher() -> None:
                while left[0] > 0:
                    left[0] -= 1
                    at = time.monotonic()
                    await c.chat.publish(channel, repr(at))
                    acks_s.append(time.monotonic() - at)

            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                for _ in range(min(window, total)):
                    nursery.start_soon(publisher)
            return started

        if cluster.profile_dir is None:
            started = trio.run(publish_all)
        else:
            import cProfile

            profiler = cProfile.Profile()
            started = profiler.runcall(trio.run, publish_all)
            profiler.dump_stats(str(cluster.profile_dir / f"publisher{subs}.prof"))
        me1 = resource.getrusage(resource.RUSAGE_SELF)
        results = []
        for worker in workers:
            assert worker.stdout is not None
            # Read through the file object: readline() above may hold the start of this already
            # (communicate() would read the pipe past it).
            lines = worker.stdout.read().strip().splitlines()
            worker.wait(timeout=30)
            if not lines:
                raise RuntimeError(f"a subscriber worker ended (status {worker.returncode}) without its result")
            results.append(json.loads(lines[-1]))
        node_cpu1 = {i: cpu_s(p.pid) for i, p in cluster.procs.items()}
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
    delivered = sum(r["delivered"] for r in results)
    errors = [e for r in results for e in r["errors"]]
    latencies = sorted(x for r in results for x in r["latencies"])
    elapsed = max(r["last_at"] for r in results) - started
    per_k = 1000 / delivered if delivered else 0.0
    frames = sum(r["frames"] for r in results)
    reads = sum(r["reads"] for r in results)
    cpu = {f"node{i}": (node_cpu1[i] - node_cpu0[i]) * per_k for i in cluster.procs}
    cpu["publisher"] = (me1.ru_utime + me1.ru_stime - me0.ru_utime - me0.ru_stime) * per_k
    cpu["subscribers"] = sum(r["cpu_s"] for r in results) * per_k
    return {
        "rate": delivered / elapsed if elapsed > 0 and delivered == subs * total else 0.0,
        "p50": percentile_ms(latencies, 0.5), "p99": percentile_ms(latencies, 0.99), "ack_p50": percentile_ms(sorted(acks_s), 0.5),
        "delivered": delivered, "expected": subs * total,
        "per_entry": total / (log_entries[1] - log_entries[0]) if log_entries[1] > log_entries[0] else 0.0,
        "per_frame": delivered / frames if frames else 0.0, "per_read": delivered / reads if reads else 0.0, "errors": errors, "cpu_ms_per_k": {k: v * 1000 for k, v in cpu.items()},
    }  # fmt: skip


async def wait_ready(cluster: Cluster) -> None:
    import trimaran

    async with trimaran.connect(cluster.endpoints, timeout_ms=60_000) as c:
        await c.chat.publish("warmup", "x")


def run_trimaran(
    subs_list: list[int], total: int, window: int, procs: int, profile_dir: Path | None, port_base: int | None, reader: Path | None
) -> dict[int, dict[str, Any]]:
    import trio

    root = Path(tempfile.mkdtemp(prefix="trimaran-chat-bench-"))
    cluster = Cluster(root, profile_dir, port_base)
    out: dict[int, dict[str, Any]] = {}
    try:
        cluster.start()
        trio.run(wait_ready, cluster)
        for subs in subs_list:
            try:
                row = fanout(cluster, subs, total, window, procs, reader)
            except NotSubscribed as exc:
                # A follower refuses a subscribe while it knows no leader (its read index): seen
                # on a loaded machine right after start. The row again, once, on a fresh channel.
                print(f"  trimaran subs={subs}: {exc}; once more", flush=True)
                row = fanout(cluster, subs, total, window, procs, reader)
            out[subs] = row
            cpu = " ".join(f"{k} {v:.2f}" for k, v in row["cpu_ms_per_k"].items())
            load_generator = row["cpu_ms_per_k"]["publisher"] + row["cpu_ms_per_k"]["subscribers"]
            share = load_generator / sum(row["cpu_ms_per_k"].values()) if row["delivered"] else 0.0
            print(
                f"  trimaran subs={subs}: {row['rate']:.0f} deliveries/s p50 {row['p50']:.2f} ms p99 {row['p99']:.2f} ms"
                f" ({row['delivered']}/{row['expected']} delivered and checked; publish acknowledged p50 {row['ack_p50']:.1f} ms;"
                f" {row['per_entry']:.1f} publishes per log entry, {row['per_frame']:.1f} messages per WebSocket frame, {row['per_read']:.1f} per socket read)\n"
                f"    CPU ms per 1000 deliveries: {cpu} (load generator {share:.0%} of the CPU)",
                flush=True,
            )
            for error in row["errors"][:5]:
                print(f"    ERROR {error}", flush=True)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return out


def nats_sh(*args: str) -> str:
    return subprocess.run(["bash", str(NATS_SH), *args], capture_output=True, text=True, timeout=900, check=True).stdout


def run_nats(subs_list: list[int], total: int, window: int) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    nats_sh("start")
    try:
        for subs in subs_list:
            line = nats_sh("load", "--mode", "fanout", "--transport", "ws", "--subs", str(subs), "--total", str(total), "--window", str(window))
            m = _NATS_LINE.search(line)
            if m:
                out[subs] = {"rate": float(m.group(3)), "p50": float(m.group(4)), "p99": float(m.group(5))}
                print(f"  nats subs={subs}: {out[subs]['rate']:.0f} deliveries/s p50 {out[subs]['p50']:.2f} ms p99 {out[subs]['p99']:.2f} ms", flush=True)
    finally:
        nats_sh("stop")
    return out


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        subscribers_worker(json.loads(sys.argv[2]))
        return
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--subs", default="10,100", help="comma-separated subscriber counts")
    p.add_argument("--total", type=int, default=1000, help="publishes per row")
    p.add_argument("--window", type=int, default=64, help="publishes in flight (NATS: deliveries outstanding per subscriber); 64: the 64-publisher shape the target is judged at")
    p.add_argument("--procs", type=int, help="subscriber worker processes (default: 1 for the C reader, 2 for the Python one)")
    p.add_argument("--repeat", type=int, default=1, help="runs per system; medians are printed")
    p.add_argument("--python-subscribers", action="store_true", help="the Python subscriber workers even when the C one builds")
    p.add_argument("--no-nats", action="store_true", help="skip the NATS comparison")
    p.add_argument("--ports", type=int, help="the nodes' 9 ports: free ones from PORTS up (default: free ports the OS picks)")
    p.add_argument("--profile", type=Path, help="run each node and subscriber worker under cProfile, writing DIR/*.prof")
    args = p.parse_args()
    subs_list = [int(s) for s in args.subs.split(",")]
    with_nats = not args.no_nats and NATS_SH.exists() and shutil.which("go") is not None
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    reader = None if args.python_subscribers else c_reader()
    generator = f"C ({READER_BINARY.relative_to(ROOT)})" if reader is not None else "Python"
    if args.procs is None:  # (one C process for 100 subscribers cost 0.23 ms per 1000 deliveries, two 0.30)
        args.procs = 1 if reader is not None else 2
    ours: list[dict[int, dict[str, Any]]] = []
    theirs: list[dict[int, dict[str, Any]]] = []
    for r in range(args.repeat):
        print(f"run {r + 1}/{args.repeat} (load average {os.getloadavg()[0]:.2f})", flush=True)
        ours.append(run_trimaran(subs_list, args.total, args.window, args.procs, args.profile, args.ports, reader))
        if with_nats:
            try:
                theirs.append(run_nats(subs_list, args.total, args.window))
            except subprocess.CalledProcessError as exc:
                print(f"  nats: {exc.stderr.strip()[-300:]}")
    print(
        f"\nmedians of {args.repeat} run(s); {args.total} publishes, window {args.window}, {args.procs} subscriber processes ({generator});"
        f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; trimaran: every publish committed on a majority"
    )
    print(f"{'subs':>5} | {'trimaran/s':>10}{'p50 ms':>8}{'p99 ms':>8} | {'nats ws/s':>10}{'p50 ms':>8}{'p99 ms':>8} | {'ratio':>6}")
    for subs in subs_list:
        mine = [run[subs] for run in ours if subs in run]
        other = [run[subs] for run in theirs if subs in run]
        m = tuple(statistics.median(x[k] for x in mine) for k in ("rate", "p50", "p99")) if mine else (0.0, 0.0, 0.0)
        o = tuple(statistics.median(x[k] for x in other) for k in ("rate", "p50", "p99")) if other else None
        ratio = f"{m[0] / o[0]:>6.2f}" if o and o[0] else f"{'-':>6}"
        cells = f"{o[0]:>10.0f}{o[1]:>8.2f}{o[2]:>8.2f}" if o else f"{'-':>10}{'-':>8}{'-':>8}"
        print(f"{subs:>5} | {m[0]:>10.0f}{m[1]:>8.2f}{m[2]:>8.2f} | {cells} | {ratio}")
        if mine:
            cpu = {k: statistics.median(x["cpu_ms_per_k"][k] for x in mine) for k in mine[0]["cpu_ms_per_k"]}
            ack_ms = statistics.median(x["ack_p50"] for x in mine)
            print(f"{'':>5}   CPU ms per 1000 deliveries: " + " ".join(f"{k} {v:.2f}" for k, v in cpu.items()) + f"; publish acknowledged p50 {ack_ms:.1f} ms")
    print("\ntarget (issue 11): deliveries/s >= 1.0x NATS at 100 subscribers with 64 publishes in flight (--window 64)")


if __name__ == "__main__":
    main()
