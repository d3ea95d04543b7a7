"""Commands per second through 3 in-process replicas with no IO.

The pure core only: three Replicas (Raft + register service + sessions) wired by in-memory queues,
persistence acknowledged at once, every command applied on all three. Clients submit batches of 64
commands per proposal, with several proposals in flight (pipelining). Prints a table with the
median of several runs.

    python benchmarks/raft_core.py [--commands 200000] [--batch 64] [--inflight 8] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))  # the package, uninstalled too

from trimaran.cluster.config import RaftConfig  # noqa: E402
from trimaran.cluster.raft import Role  # noqa: E402
from trimaran.cluster.replica import Replica, ReplicaConfig  # noqa: E402
from trimaran.protocols.messages import Membership, Message  # noqa: E402
from trimaran.services.register import RegisterService  # noqa: E402

IDS = (1, 2, 3)


class Bench:
    def __init__(self) -> None:
        config = ReplicaConfig(snapshot_interval_entries=1 << 40)
        self.nodes = {
            n: Replica(RaftConfig(n, Membership(IDS)), random.Random(n), [RegisterService()], config=config) for n in IDS
        }
        self.queues: dict[int, deque[Message]] = {n: deque() for n in IDS}
        self.applied_commands = 0
        self.first_reply: int | None = None

    def pump(self) -> None:
        """Take every Ready (persisting at once), deliver every message, until quiet."""
        busy = True
        while busy:
            busy = False
            for n, replica in self.nodes.items():
                queue = self.queues[n]
                while queue:
                    replica.step(queue.popleft())
                    busy = True
                if replica.has_ready():
                    busy = True
                    out = replica.ready()
                    rd = out.raft
                    for m in rd.messages:
                        self.queues[m.recipient].append(m)
                    if rd.persist_index:
                        replica.on_persisted(rd.persist_index, rd.persist_term)
                    for m in rd.messages_after_persist:
                        self.queues[m.recipient].append(m)
                    if n == self.leader_id:
                        self.applied_commands += len(out.replies)
                        if out.replies and self.first_reply is None:
                            self.first_reply = out.replies[0].value

    def elect(self) -> None:
        for _ in range(100):
            self.nodes[1].tick()
            self.pump()
            if self.nodes[1].raft.role == Role.LEADER:
                return
        raise RuntimeError("no leader")

    leader_id = 1


def run_once(commands: int, batch: int, inflight: int) -> float:
    b = Bench()
    b.elect()
    leader = b.nodes[1]
    leader.register("reg", 1)
    b.pump()
    client_id = b.first_reply
    b.applied_commands = 0
    value = b"v" * 16
    seq = 0
    start = time.perf_counter()
    while seq < commands:
        for _ in range(inflight):
            for _ in range(batch):
                seq += 1
                leader.submit(seq, client_id, seq, seq - 1, "register", ["set", b"key%d" % (seq % 1000), value], seq)
            leader.flush()  # one proposal per batch of commands
        b.pump()
    elapsed = time.perf_counter() - start
    assert b.applied_commands == seq, (b.applied_commands, seq)
    for n in IDS:
        assert b.nodes[n].raft.log.applied_index == leader.raft.log.applied_index
    return seq / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rates = [run_once(args.commands, args.batch, args.inflight) for _ in range(args.runs)]
    target = 100_000
    median = statistics.median(rates)
    print(f"{'benchmark':<34} {'median':>12} {'min':>12} {'max':>12} {'target':>10}  ok")
    print(
        f"{'raft core, 3 replicas, batch ' + str(args.batch):<34} {median:>12,.0f} {min(rates):>12,.0f} "
        f"{max(rates):>12,.0f} {target:>10,}  {'yes' if median >= target else 'NO'}"
    )
    print(f"(commands/s applied on all 3 replicas; {args.runs} runs of {args.commands:,} commands, {args.inflight} proposals in flight)")


if __name__ == "__main__":
    main()
