"""Chaos on real processes: a 3-node cluster (``trimaran node run`` processes on loopback) serves KV
writes, job enqueues run by an in-process worker, and chat publishes, while a seeded schedule hits
one node at a time (the leader half of the time): kill -9 then restart, SIGSTOP (a node cut off
with its sockets still open, as in a partition or a long GC pause) then SIGCONT, or a graceful
restart. Then every node comes back, and:

- every acknowledged KV write is readable with its value (each key is written once);
- every acknowledged enqueue ends ``completed`` (the worker keeps claiming through the faults),
  and each job's outcome was accepted once (a late completion of an older lease is refused);
- every acknowledged publish is in the channel's history, at the offset it was answered with, once;
- every node applied the same log: equal applied index, equal KV key count and bytes.

``make test`` runs it for ``TRIMARAN_CHAOS_SECONDS`` (default 10 s) of faults; ``make chaos`` for
longer (``CHAOS_SECONDS``, default 300) over several seeds. ``TRIMARAN_CHAOS_SEED`` replays one
schedule of faults (the processes' timing is not replayed: this is the real-process complement of
the simulator, which replays exactly).
"""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.node.procs import ProcessCluster
from trimaran.client import Client
from trimaran.client.worker import Jobs, current_job
from trimaran.errors import TrimaranError

pytestmark = pytest.mark.slow

CHAOS_SECONDS = float(os.environ.get("TRIMARAN_CHAOS_SECONDS", "10"))
#: Every fault step is bounded in time; this bounds their count too.
FAULT_STEPS_MAX = 10_000
#: How long the cluster gets to heal, and the checks to finish, after the faults stop.
HEAL_S = 60.0
KV_WRITERS = 4
QUEUE = "chaos"
CHANNEL = "chaos"
#: Client request deadline: long enough to ride out an election, short enough to keep writing.
CLIENT_TIMEOUT_MS = 4_000


def _seeds() -> list[int]:
    given = os.environ.get("TRIMARAN_CHAOS_SEED")
    if given:
        return [int(given)]
    # Under pytest-xdist every worker collects the tests and must find the same ones: the seed then
    # comes from the run's id, which all of its workers share (and which is new for every run).
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    source = random.Random(run_id) if run_id else random.SystemRandom()
    return [source.randrange(1 << 31)]


@dataclass
class Ledger:
    """What the cluster acknowledged, and what the worker saw."""

    kv: dict[bytes, bytes] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)  # job id -> payload n
    publishes: dict[int, bytes] = field(default_factory=dict)  # offset -> data
    epochs: set[str] = field(default_factory=set)
    runs: Counter[str] = field(default_factory=Counter)  # job id -> task runs started
    unknown: Counter[str] = field(default_factory=Counter)  # outcomes not known (timeouts): not checked
    faults: list[str] = field(default_factory=list)


async def _kv_writer(c: Client, w: int, ledger: Ledger, stop: trio.Event) -> None:
    n = 0
    while not stop.is_set():
        key, value = b"k%d-%d" % (w, n), b"v%d" % n
        n += 1
        try:
            await c.kv.set(key, value)
            ledger.kv[key] = value
        except TrimaranError:
            ledger.unknown["kv"] += 1  # may or may not have been applied; never acknowledged
        await trio.sleep(0)


async def _producer(c: Client, ledger: Ledger, stop: trio.Event) -> None:
    n = 0
    while not stop.is_set():
        try:
            job = await c.jobs.enqueue(QUEUE, {"n": n}, max_attempts=50)
            ledger.jobs[job] = n
        except TrimaranError:
            ledger.unknown["jobs"] += 1
        n += 1
        await trio.sleep(0.01)


async def _publisher(c: Client, ledger: Ledger, stop: trio.Event) -> None:
    n = 0
    while not stop.is_set():
        data = b"m%d" % n
        n += 1
        try:
            offset, epoch = await c.chat.publish(CHANNEL, data)
            assert offset is not None and epoch is not None
            assert offset not in ledger.publishes, f"offset {offset} answered twice"
            ledger.publishes[offset] = data
            ledger.epochs.add(epoch)
        except TrimaranError:
            ledger.unknown["chat"] += 1
        await trio.sleep(0.01)


async def _faults(cluster: ProcessCluster, rng: random.Random, ledger: Ledger, until: float) -> None:
    """One node at a time: kill -9, SIGSTOP or a graceful restart, then a calm moment."""
    for _ in range(FAULT_STEPS_MAX):
        if trio.current_time() >= until:
            return
        try:
            leader, _ = await cluster.leader(timeout_s=3.0)
        except AssertionError:
            leader = None
        victim = leader if leader is not None and rng.random() < 0.5 else rng.choice(cluster.ids)
        action = rng.choice(("kill9", "stop", "restart"))
        down_s = rng.uniform(0.3, 2.5)
        ledger.faults.append(f"{action} node {victim}{' (leader)' if victim == leader else ''} for {down_s:.1f} s")
        if action == "kill9":
            cluster.kill9(victim)
            await trio.sleep(down_s)
            cluster.start(victim)
        elif action == "stop":
            cluster.signal(victim, signal.SIGSTOP)
            await trio.sleep(down_s)
            cluster.signal(victim, signal.SIGCONT)
        else:
            await trio.to_thread.run_sync(lambda: None)  # a checkpoint; terminate() waits for the exit
            await cluster.terminate(victim)
            await trio.sleep(down_s / 3)
            cluster.start(victim)
        await trio.sleep(rng.uniform(0.5, 2.0))


async def _converged(cluster: ProcessCluster) -> list[dict[str, Any]]:
    """Every node's status once all of them applied the same index (within HEAL_S)."""
    with trio.fail_after(HEAL_S):
        while True:
            statuses = [await cluster.status(n, timeout_s=1.0) for n in cluster.ids]
            if all(statuses):
                applied = {s["applied_index"] for s in statuses if s}
                commits = {s["commit_index"] for s in statuses if s}
                if len(applied) == 1 and applied == commits:
                    return [s for s in statuses if s]
            await trio.sleep(0.1)


@pytest.mark.parametrize("seed", _seeds())
async def test_acknowledged_work_survives_kills_pauses_and_restarts(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    cluster = ProcessCluster(tmp_path)
    ledger = Ledger()
    endpoints = ",".join(str(cluster.client[n]) for n in cluster.ids)
    completions: Counter[str] = Counter()
    cluster.start_all()
    try:
        await cluster.leader(timeout_s=20.0)
        async with Client(endpoints, timeout_ms=CLIENT_TIMEOUT_MS) as c:
            app = Jobs(client=c)  # the worker shares the test's client

            @app.task(QUEUE, timeout_ms=5_000)
            async def chaos_task(n: int) -> int:
                ledger.runs[current_job().id] += 1
                return n

            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                worker_scope = trio.CancelScope()

                async def work() -> None:
                    with worker_scope:
                        await app.run_worker(concurrency=8, session_ttl_ms=3_000)

                nursery.start_soon(work)
                async with trio.open_nursery() as load:
                    for w in range(KV_WRITERS):
                        load.start_soon(_kv_writer, c, w, ledger, stop)
                    load.start_soon(_producer, c, ledger, stop)
                    load.start_soon(_publisher, c, ledger, stop)
                    await _faults(cluster, rng, ledger, trio.current_time() + CHAOS_SECONDS)
                    stop.set()
                # The load has ended, each task's last call answered: the ledger is complete. The
                # worker goes on until every job ended.

                for n in cluster.ids:  # every node back and running
                    if not cluster.alive(n):
                        cluster.start(n)
                    cluster.signal(n, signal.SIGCONT)
                await cluster.leader(timeout_s=20.0)
                with trio.fail_after(HEAL_S):
                    for job in list(ledger.jobs):
                        while True:
                            result = await c.jobs.result(job, wait_ms=2_000)
                            if result is not None and result.state == "completed":
                                completions[job] += 1
                                break
                            assert result is None or result.state not in ("dead", "failed", "cancelled", "expired"), (job, result)
                worker_scope.cancel()

            context = f"seed {seed}; faults: {'; '.join(ledger.faults)}"
            print(f"chaos seed {seed}: {len(ledger.kv)} writes, {len(ledger.jobs)} jobs, {len(ledger.publishes)} publishes acknowledged; not known {dict(ledger.unknown)}; {len(ledger.faults)} faults")
            assert len(ledger.faults) >= 1 and ledger.kv and ledger.jobs and ledger.publishes, context

            # Every acknowledged write, with its value.
            stored = {item.key: item.value async for item in c.kv.scan(b"k")}
            missing = {k: v for k, v in ledger.kv.items() if stored.get(k) != v}
            assert not missing, f"{len(missing)} acknowledged writes lost or changed, e.g. {sorted(missing)[:5]}; {context}"

            # Every acknowledged job completed, and ran at least once (at-least-once execution;
            # the service accepted one outcome).
            assert set(completions) == set(ledger.jobs), context
            assert all(ledger.runs[job] >= 1 for job in ledger.jobs), context

            # Every acknowledged publish in history at its offset, once (no reset: one epoch).
            assert len(ledger.epochs) == 1, context
            history: dict[int, bytes] = {}
            since: int | None = None
            oldest = 1
            for _ in range(len(ledger.publishes) + ledger.unknown["chat"] + 1):  # pages: bounded
                page = await c.chat.history(CHANNEL, since=since, limit=1_000)
                oldest = page.oldest if since is None else oldest
                for m in page.messages:
                    assert m.offset not in history, f"offset {m.offset} twice in history; {context}"
                    history[m.offset] = m.data
                if page.next is None:
                    break
                since = page.next
            # (A long run publishes past the channel's history bound: what retention dropped, below
            # the oldest offset kept, is not lost.)
            lost = {o: d for o, d in ledger.publishes.items() if o >= oldest and history.get(o) != d}
            assert not lost, f"{len(lost)} acknowledged publishes lost or moved, e.g. {sorted(lost)[:5]}; {context}"
            assert len(set(history.values())) == len(history), f"a message stored twice; {context}"

        # The replicas agree.
        statuses = await _converged(cluster)
        per_node = []
        for n in cluster.ids:
            async with Client(str(cluster.client[n]), timeout_ms=CLIENT_TIMEOUT_MS) as one:
                stats = await one.read("kv", ["stats"], consistency="stale")
                per_node.append((stats["keys"], stats["used_bytes"]))
        assert len({s["applied_index"] for s in statuses}) == 1 and len(set(per_node)) == 1, (statuses, per_node, context)
    finally:
        cluster.close()
