"""Every replica of the chat service decides alike: the same offsets, epochs, retention and presence
lapses from the same log, under any PYTHONHASHSEED, and through real Replicas with snapshots, a
crash, a leader change and a retried publish (exactly-once through the client session)."""

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
from trimaran.services.chat import ChatService
from trimaran.simulations.harness import Harness

ROOT = Path(__file__).resolve().parents[2]
CONFIG: dict[str, Any] = {"history_messages_max": 20, "history_age_ms": 2_000, "presence_ttl_ms": 1_000, "events_max": 500}


def workload(seed: int, entries: int) -> list[tuple[ApplyContext, list[list[Any]]]]:
    """A seeded stream of entries over 30 channels: publishes (some ephemeral), presence sessions
    that join, heartbeat, leave, close or lapse, and resets."""
    rng = random.Random(seed)
    out: list[tuple[ApplyContext, list[list[Any]]]] = []
    now, sessions = 1_000, 0
    for index in range(1, entries + 1):
        now += rng.choice([0, 1, 10, 100, 400])
        batch: list[list[Any]] = []
        for _ in range(rng.randrange(5)):
            channel = f"room.{rng.randrange(30)}"
            roll = rng.random()
            sid = max(1, sessions - rng.randrange(4))  # mostly recent, so often still live
            if roll < 0.55:
                batch.append(["publish", channel, bytes(rng.randrange(40)), {"ephemeral": rng.random() < 0.1}])
            elif roll < 0.62:
                sessions += 1
                batch.append(["open"])
            elif roll < 0.8:
                batch.append(["join", channel, sid, b"user-%d" % sid])
            elif roll < 0.9:
                batch.append(["heartbeat", sid])
            elif roll < 0.95:
                batch.append(["leave", channel, sid])
            elif roll < 0.98:
                batch.append(["close", sid])
            else:
                batch.append(["reset", channel])
        out.append((ApplyContext(index, now), batch))
    return out


def run(svc: ChatService, stream: list[tuple[ApplyContext, list[list[Any]]]]) -> list[Any]:
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


def test_two_instances_fed_the_same_log_decide_alike() -> None:
    stream = workload(seed=7, entries=2_000)
    a, b = ChatService(**{**CONFIG, "events_max": 100_000}), ChatService(**{**CONFIG, "events_max": 100_000})
    outcomes = run(a, stream)
    assert outcomes == run(b, stream)
    assert pack(a.snapshot()) == pack(b.snapshot())
    page = a.events_after(0, limit=1_000_000)
    assert not page["gap"]
    kinds = {e[1] for e in page["events"]} | {e[6][1] for e in page["events"] if e[1] == "leave"}
    assert {"message", "ephemeral", "join", "reset", "dropped", "left", "closed", "expired"} <= kinds, kinds
    assert any(isinstance(o, dict) and o["code"] == "presence_expired" for o in outcomes)


DIGEST_SCRIPT = """
import hashlib, sys
sys.path.insert(0, {root!r})
from tests.services.test_chat_determinism import CONFIG, run, workload
from trimaran.protocols.codec import pack
from trimaran.services.chat import ChatService
svc = ChatService(**CONFIG)
outcomes = run(svc, workload(seed=11, entries=1_000))
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


def chat_digest(h: Harness, node_id: int) -> str:
    return hashlib.sha256(pack(h.nodes[node_id].replica.services["chat"].snapshot())).hexdigest()


def settle(h: Harness, leader: int) -> None:
    h.process()
    h.settle()
    h.tick(leader)
    h.settle()


def test_replicas_agree_and_a_retried_publish_takes_one_offset() -> None:
    h = Harness(
        3,
        seed=3,
        replica_config=ReplicaConfig(snapshot_interval_entries=5, snapshot_keep_entries=2),
        make_services=lambda: [ChatService(**CONFIG)],
    )
    h.elect(1)
    h.nodes[1].replica.register("reg", 1_000)
    settle(h, 1)
    client_id = next(r.value for r in h.replies(1) if r.token == "reg")
    seq = 0

    def submit(leader: int, command: list[Any], now_ms: int, retry: bool = False) -> Any:
        nonlocal seq
        if not retry:
            seq += 1
        h.nodes[leader].replica.submit(("c", seq, retry), client_id, seq, seq - 1, "chat", command, now_ms)
        settle(h, leader)
        return next(r.value for r in h.replies(leader) if r.token == ("c", seq, retry))

    sid = submit(1, ["open"], 1_000)[0]
    submit(1, ["join", "room", sid, b"me"], 1_001)
    first = [submit(1, ["publish", "room", b"m%d" % i], 1_010 + i) for i in range(8)]
    h.crash(3)
    answer = submit(1, ["publish", "room", b"once"], 1_100)
    h.elect(2)  # the client did not hear the answer; it retries the same sequence on the new leader
    again = submit(2, ["publish", "room", b"once"], 1_200, retry=True)
    assert again == answer == [9, first[0][1]], "the retry got the saved answer, not a second offset"
    h.restart(3)
    assert h.nodes[3].replica.raft.log.offset_index > 0, "node 3 came back from a snapshot"
    settle(h, 2)
    h.nodes[2].replica.advance_clock(9_000)  # the new leader's clock: the session lapses, history ages out
    settle(h, 2)
    chat = h.nodes[2].replica.services["chat"]
    assert isinstance(chat, ChatService)
    ctx = ApplyContext(h.nodes[2].replica.applied_index, h.nodes[2].replica.last_timestamp_ms)
    assert chat.query(["stats"], ctx)["sessions"] == 0
    assert chat.query(["history", "room"], ctx)["top"] == 0, "every message aged out; the channel is gone"
    messages = [e for e in chat.events_after(0)["events"] if e[1] == "message"]
    assert [e[3] for e in messages] == list(range(1, 10)), "offset 9 was taken once"
    assert chat_digest(h, 1) == chat_digest(h, 2) == chat_digest(h, 3)
