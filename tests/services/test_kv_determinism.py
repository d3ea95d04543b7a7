"""Every replica of the KV service decides alike: the same evictions and expiries from the same log,
under any PYTHONHASHSEED, and through real Replicas with snapshots, crashes and a leader change."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from trimaran.cluster.replica import ReplicaConfig
from trimaran.errors import TrimaranError
from trimaran.protocols.codec import pack
from trimaran.protocols.service import ApplyContext
from trimaran.services.kv import KvService, entry_bytes
from trimaran.simulations.harness import Harness

ROOT = Path(__file__).resolve().parents[2]


def workload(seed: int, entries: int) -> list[tuple[ApplyContext, list[list[Any]]]]:
    """A seeded stream of log entries over 200 keys: sets (some with TTLs), incrs, touches, msets."""
    rng = random.Random(seed)
    out: list[tuple[ApplyContext, list[list[Any]]]] = []
    now = 1_000
    for index in range(1, entries + 1):
        now += rng.choice([0, 1, 3, 10])
        batch: list[list[Any]] = []
        for _ in range(rng.randrange(4)):
            key = b"key-%03d" % rng.randrange(200)
            roll = rng.random()
            if roll < 0.5:
                ttl = rng.choice([None, None, 5, 50])
                batch.append(["set", key, bytes(rng.randrange(40)), {"ttl_ms": ttl}])
            elif roll < 0.7:
                batch.append(["incr", key, rng.randrange(-5, 6)])
            elif roll < 0.85:
                batch.append(["touch", key])
            else:
                batch.append(["mset", [[b"m-%03d" % rng.randrange(50), b"x" * rng.randrange(30)] for _ in range(3)]])
        out.append((ApplyContext(index, now), batch))
    return out


def run(svc: KvService, stream: list[tuple[ApplyContext, list[list[Any]]]]) -> list[Any]:
    """Feed ``stream`` the way the Replica does; every command's outcome."""
    outcomes: list[Any] = []
    for ctx, batch in stream:
        svc.on_time(ctx)
        for cmd in batch:
            try:
                outcomes.append(svc.apply(cmd, ctx))
            except TrimaranError as exc:
                outcomes.append(exc.to_wire())
    return outcomes


def evicted(svc: KvService, ctx: ApplyContext) -> list[list[Any]]:
    page = svc.query(["watch", b"", 0, {"prefix": True, "limit": 1_000_000}], ctx)
    return [e for e in page["events"] if e[4] == "evicted"]


def test_two_instances_fed_the_same_log_evict_the_same_keys() -> None:
    stream = workload(seed=7, entries=3_000)
    maxmemory = 40 * entry_bytes(b"key-000", b"x" * 20)
    a = KvService(maxmemory_bytes=maxmemory, watch_history_max=100_000)
    b = KvService(maxmemory_bytes=maxmemory, watch_history_max=100_000)
    assert run(a, stream) == run(b, stream)
    last = stream[-1][0]
    assert len(evicted(a, last)) > 100, "the workload must actually evict"
    assert evicted(a, last) == evicted(b, last)
    assert pack(a.snapshot()) == pack(b.snapshot())


def test_noeviction_refuses_instead_of_evicting() -> None:
    stream = workload(seed=7, entries=3_000)
    svc = KvService(maxmemory_bytes=40 * entry_bytes(b"key-000", b"x" * 20), eviction_policy="noeviction")
    outcomes = run(svc, stream)
    assert any(isinstance(o, dict) and o["code"] == "out_of_memory" for o in outcomes)
    stats = svc.query(["stats"], stream[-1][0])
    assert stats["evicted_keys_total"] == 0 and stats["used_bytes"] <= stats["maxmemory_bytes"]


DIGEST_SCRIPT = """
import hashlib, sys
sys.path.insert(0, {root!r})
from tests.services.test_kv_determinism import run, workload
from trimaran.protocols.codec import pack
from trimaran.services.kv import KvService, entry_bytes
svc = KvService(maxmemory_bytes=40 * entry_bytes(b"key-000", b"x" * 20))
outcomes = run(svc, workload(seed=11, entries=1_500))
print(hashlib.sha256(pack([svc.snapshot(), outcomes])).hexdigest())
"""


def test_the_same_log_gives_the_same_state_under_any_hash_seed() -> None:
    script = DIGEST_SCRIPT.format(root=str(ROOT))
    digests = set()
    for hash_seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1, digests


# ---------------------------------------------------------------------------- through Replicas


def kv_digest(h: Harness, node_id: int) -> str:
    return hashlib.sha256(pack(h.nodes[node_id].replica.services["kv"].snapshot())).hexdigest()


def settle(h: Harness, leader: int) -> None:
    h.process()
    h.settle()
    h.tick(leader)
    h.settle()


def test_replicas_expire_and_evict_alike_across_snapshots_a_crash_and_a_leader_change() -> None:
    maxmemory = 8 * entry_bytes(b"k00", b"v" * 10)
    h = Harness(
        3,
        seed=3,
        replica_config=ReplicaConfig(snapshot_interval_entries=5, snapshot_keep_entries=2),
        make_services=lambda: [KvService(maxmemory_bytes=maxmemory)],
    )
    h.elect(1)
    h.nodes[1].replica.register("reg", 1_000)
    settle(h, 1)
    client_id = next(r.value for r in h.replies(1) if r.token == "reg")
    seq = 0

    def submit(leader: int, command: list[Any], now_ms: int) -> None:
        nonlocal seq
        seq += 1
        h.nodes[leader].replica.submit(("c", seq), client_id, seq, seq - 1, "kv", command, now_ms)
        settle(h, leader)

    for i in range(12):  # more than fits: the first keys are evicted
        submit(1, ["set", b"k%02d" % i, b"v" * 10, {"ttl_ms": 5_000 if i % 2 else None}], 1_000 + i)
    h.crash(3)
    submit(1, ["set", b"k99", b"v" * 10, {"ttl_ms": 100}], 1_100)
    h.restart(3)
    assert h.nodes[3].replica.raft.log.offset_index > 0, "node 3 came back from a snapshot"
    settle(h, 1)
    h.elect(2)
    h.nodes[2].replica.advance_clock(7_000)  # the new leader's clock: every TTL has passed
    settle(h, 2)
    kv = h.nodes[2].replica.services["kv"]
    ctx = ApplyContext(h.nodes[2].replica.applied_index, h.nodes[2].replica.last_timestamp_ms)
    stats = kv.query(["stats"], ctx)
    # 8 keys fit: k00..k03 go for k08..k11, and k04 for k99; then the odd keys expire.
    assert (stats["evicted_keys_total"], stats["expired_keys_total"]) == (5, 5)
    assert [i[0] for i in kv.query(["scan", b""], ctx)["items"]] == [b"k06", b"k08", b"k10"]
    assert kv_digest(h, 1) == kv_digest(h, 2) == kv_digest(h, 3)
