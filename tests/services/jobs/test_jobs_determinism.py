"""Every replica of the job service decides alike: the same log gives the same outcomes and the same
state bytes, in two instances, across a snapshot, and under any PYTHONHASHSEED."""

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
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.service import ApplyContext
from trimaran.services.jobs import JobsService
from trimaran.simulations.harness import Harness

ROOT = Path(__file__).resolve().parents[3]


def workload(seed: int, entries: int) -> list[tuple[ApplyContext, list[list[Any]]]]:
    """A seeded stream of entries: producers (priorities, delays, groups, unique keys, dependencies),
    workers that claim, complete, fail, release, heartbeat or vanish, cancellations and schedules.
    The generator plays the log into a service of its own to learn session ids and leases, so most
    tokens are real; some are old, and are refused (that is exercised too)."""
    rng = random.Random(seed)
    driver = JobsService()
    out: list[tuple[ApplyContext, list[list[Any]]]] = []
    sessions: list[str] = []
    leases: list[tuple[str, int]] = []
    jobs: list[str] = ["1-0"]
    now = 1_000_000
    for index in range(1, entries + 1):
        now += rng.choice([0, 1, 5, 20, 100])
        ctx = ApplyContext(index, now)
        driver.on_time(ctx)
        batch: list[list[Any]] = []
        for _ in range(rng.randrange(4)):
            cmd = _command(rng, sessions, leases, jobs)
            batch.append(cmd)
            try:
                result = driver.apply(cmd, ctx)
            except TrimaranError:
                continue
            if cmd[0] == "enqueue":
                jobs.append(result)
            elif cmd[0] == "session_open":
                sessions.append(result["session"])
            elif cmd[0] == "claim":
                leases.extend((j["id"], j["token"]) for j in result["jobs"])
        out.append((ctx, batch))
    return out


def _command(rng: random.Random, sessions: list[str], leases: list[tuple[str, int]], jobs: list[str]) -> list[Any]:
    roll = rng.random()
    queue = rng.choice(["mail", "video"])
    job = rng.choice(jobs[-50:])
    job_id, token = rng.choice(leases[-20:]) if leases else (job, 1)
    session = rng.choice(sessions[-5:]) if sessions else "s1-0"
    if roll < 0.35:
        opts = {
            "priority": rng.choice([None, 0, 1, 5]),
            "delay_ms": rng.choice([None, None, 50, 500]),
            "group": rng.choice([None, "t1", "t2", "t3"]),
            "unique_key": rng.choice([None, None, None, "k1", "k2"]),
            "max_attempts": rng.choice([None, 1, 3]),
            "timeout_ms": rng.choice([None, 200, 2_000]),
            "result_ttl_ms": rng.choice([None, 100, 5_000]),
            "depends_on": [job] if rng.random() < 0.1 else None,
        }
        return ["enqueue", queue, bytes(rng.randrange(20)), opts]
    if roll < 0.42:
        return ["session_open", "w", rng.choice([300, 3_000])]
    if roll < 0.62:
        return ["claim", session, ["mail", "video"], rng.randrange(1, 4)]
    if roll < 0.74:
        return ["complete", job_id, token, {"result": b"ok"}]
    if roll < 0.82:
        return ["fail", job_id, token, {"error": "boom", "retry": rng.random() < 0.8}]
    if roll < 0.86:
        return ["release", job_id, token]
    if roll < 0.9:
        return ["heartbeat", session, {"jobs": [[job_id, token, {"extend_ms": 500}]]}]
    if roll < 0.93:
        return ["cancel", job]
    if roll < 0.95:
        return ["queue_config", queue, {"group_concurrency": rng.choice([0, 1, 2]), "rate_max": rng.choice([0, 5])}]
    if roll < 0.97:
        return ["dlq_requeue", queue]
    return ["schedule", f"every-{queue}", queue, b"tick", {"every_ms": rng.choice([100, 1_000])}]


def run(svc: JobsService, stream: list[tuple[ApplyContext, list[list[Any]]]]) -> list[Any]:
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


def test_two_instances_fed_the_same_log_agree_and_the_workload_does_something() -> None:
    stream = workload(seed=5, entries=2_000)
    a, b = JobsService(), JobsService()
    outcomes = run(a, stream)
    assert outcomes == run(b, stream)
    assert pack(a.snapshot()) == pack(b.snapshot())
    completed = sum(1 for o in outcomes if o == "completed")
    stale = sum(1 for o in outcomes if isinstance(o, dict) and o.get("code") == "stale_lease")
    assert completed > 20 and stale > 20, (completed, stale)


def test_a_replica_restored_from_a_snapshot_midway_ends_in_the_same_state() -> None:
    stream = workload(seed=9, entries=1_500)
    straight = JobsService()
    run(straight, stream)
    first = JobsService()
    run(first, stream[:700])
    second = JobsService()
    second.restore(unpack(pack(first.snapshot())))
    run(second, stream[700:])
    assert pack(second.snapshot()) == pack(straight.snapshot())


DIGEST_SCRIPT = """
import hashlib, sys
sys.path.insert(0, {root!r})
from tests.services.jobs.test_jobs_determinism import run, workload
from trimaran.protocols.codec import pack
from trimaran.services.jobs import JobsService
svc = JobsService()
outcomes = run(svc, workload(seed=11, entries=1_000))
print(hashlib.sha256(pack([svc.snapshot(), outcomes])).hexdigest())
"""


def test_the_same_log_gives_the_same_state_under_any_hash_seed() -> None:
    script = DIGEST_SCRIPT.format(root=str(ROOT))
    digests = set()
    for hash_seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        digests.add(done.stdout.strip())
    assert len(digests) == 1, digests
    assert len(next(iter(digests))) == len(hashlib.sha256().hexdigest())


# ---------------------------------------------------------------------------- through Replicas


def test_replicas_agree_across_snapshots_a_crash_and_a_leader_change() -> None:
    h = Harness(
        3,
        seed=4,
        replica_config=ReplicaConfig(snapshot_interval_entries=5, snapshot_keep_entries=2),
        make_services=lambda: [JobsService()],
    )

    def settle(leader: int) -> None:
        h.process()
        h.settle()
        h.tick(leader)
        h.settle()

    h.elect(1)
    h.nodes[1].replica.register("reg", 1_000)
    settle(1)
    client_id = next(r.value for r in h.replies(1) if r.token == "reg")
    seq = 0

    def submit(leader: int, command: list[Any], now_ms: int) -> Any:
        nonlocal seq
        seq += 1
        h.nodes[leader].replica.submit(("c", seq), client_id, seq, seq - 1, "jobs", command, now_ms)
        settle(leader)
        return next(r.value for r in h.replies(leader) if r.token == ("c", seq))

    session = submit(1, ["session_open", "w", 2_000], 1_000)["session"]
    for i in range(6):
        submit(1, ["enqueue", "q", b"job-%d" % i, {"priority": i % 2, "timeout_ms": 10_000}], 1_000 + i)
    claimed = submit(1, ["claim", session, ["q"], 2], 1_010)["jobs"]
    assert [j["payload"] for j in claimed] == [b"job-1", b"job-3"]
    h.crash(3)
    submit(1, ["complete", claimed[0]["id"], claimed[0]["token"], {"result": b"done"}], 1_020)
    submit(1, ["schedule", "tick", "q", b"tick", {"every_ms": 1_000}], 1_030)
    h.restart(3)
    assert h.nodes[3].replica.raft.log.offset_index > 0, "node 3 came back from a snapshot"
    settle(1)
    h.elect(2)
    h.nodes[2].replica.advance_clock(5_000)  # the session lapses, the schedule fires, in log time
    settle(2)
    jobs = h.nodes[2].replica.services["jobs"]
    ctx = ApplyContext(h.nodes[2].replica.applied_index, h.nodes[2].replica.last_timestamp_ms)
    stats = jobs.query(["stats", "q"], ctx)
    assert (stats["completed"], stats["running"], stats["ready"]) == (1, 0, 6), stats
    assert jobs.query(["job", claimed[1]["id"]], ctx)["error"] == "worker session lapsed"
    digests = {hashlib.sha256(pack(h.nodes[n].replica.services["jobs"].snapshot())).hexdigest() for n in (1, 2, 3)}
    assert len(digests) == 1
