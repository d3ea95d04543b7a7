"""A deterministic in-memory cluster driven by hand, one step at a time.

Tests say exactly what happens — tick node 2, deliver the third message in flight, drop one,
duplicate one, sync node 1's disk, crash node 3 — and the harness checks Raft's invariants after
every step. No time, no threads: the same calls give the same cluster, byte for byte.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable

from trimaran.cluster.config import RaftConfig
from trimaran.cluster.raft import Role
from trimaran.cluster.replica import ReplicaConfig, Reply
from trimaran.protocols.messages import Membership, Message, TimeoutNow
from trimaran.protocols.service import Service
from trimaran.services.register import RegisterService
from trimaran.simulations.driver import SimNode
from trimaran.simulations.invariants import RaftInvariants
from trimaran.storage.memory import MemoryStorage


def sub_seed(seed: int, *labels: object) -> int:
    """A stable sub-seed (never ``hash()``, which varies with PYTHONHASHSEED)."""
    text = ":".join([str(seed), *map(str, labels)]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def fast_raft_config(node_id: int, voters: tuple[int, ...], **overrides: Any) -> RaftConfig:
    """Short timeouts so a handful of ticks elects a leader."""
    params: dict[str, Any] = dict(
        election_timeout_ticks_min=5,
        election_timeout_ticks_max=10,
        heartbeat_interval_ticks=1,
        inflight_messages_max=8,
        snapshot_chunk_bytes=256,
    )
    params.update(overrides)
    return RaftConfig(node_id, Membership(voters), **params)


class Harness:
    def __init__(
        self,
        node_count: int = 3,
        seed: int = 0,
        replica_config: ReplicaConfig = ReplicaConfig(),
        make_services: Callable[[], list[Service]] = lambda: [RegisterService()],
        check: bool = True,
        voters: tuple[int, ...] | None = None,
        **raft_overrides: Any,
    ) -> None:
        """``voters``: the bootstrap voters (default: every node); the other nodes start outside the
        cluster, knowing no members, as a node does that will be added later."""
        self.seed = seed
        self.ids = tuple(range(1, node_count + 1))
        bootstrap = self.ids if voters is None else voters
        self.network: list[Message] = []
        self.invariants = RaftInvariants()
        self.check_enabled = check
        self.nodes: dict[int, SimNode] = {}
        for node_id in self.ids:
            node = SimNode(
                node_id,
                fast_raft_config(node_id, bootstrap if node_id in bootstrap else (), **raft_overrides),
                make_services,
                random.Random(sub_seed(seed, "node", node_id)),
                MemoryStorage(),
                replica_config,
            )
            node.on_apply_entry = self.invariants.on_apply
            self.nodes[node_id] = node

    # ---------------------------------------------------------------- steps

    def process(self) -> None:
        """Let every node take its Ready, then check the invariants."""
        for node_id in self.ids:
            self.network.extend(self.nodes[node_id].process())
        if self.check_enabled:
            self.invariants.check((n, node.replica.raft) for n, node in self.nodes.items() if node.up)

    def tick(self, node_id: int, times: int = 1) -> None:
        for _ in range(times):
            self.nodes[node_id].tick()
            self.process()

    def deliver(self, position: int = 0) -> Message:
        msg = self.network.pop(position)
        self.nodes[msg.recipient].deliver(msg)
        self.process()
        return msg

    def drop(self, position: int = 0) -> Message:
        return self.network.pop(position)

    def duplicate(self, position: int = 0) -> None:
        self.network.append(self.network[position])

    def sync(self, node_id: int) -> None:
        self.network.extend(self.nodes[node_id].sync())
        self.process()

    def crash(self, node_id: int, torn: bool = False) -> None:
        self.nodes[node_id].crash(torn)
        self.network = [m for m in self.network if m.sender != node_id]

    def restart(self, node_id: int) -> None:
        self.nodes[node_id].restart()
        self.invariants.node_restarted(node_id)
        self.process()

    def settle(self, rounds_max: int = 10_000) -> None:
        """Deliver everything and sync every disk until the network is quiet (no ticks)."""
        for _ in range(rounds_max):
            for node_id in self.ids:
                self.sync(node_id)
            if not self.network:
                return
            self.deliver(0)
        raise AssertionError("network did not settle")

    # ---------------------------------------------------------------- conveniences

    def leader(self) -> int | None:
        """The leader of the highest term among live nodes, if any."""
        leaders = [n for n in self.ids if self.nodes[n].up and self.nodes[n].replica.raft.role == Role.LEADER]
        if not leaders:
            return None
        return max(leaders, key=lambda n: self.nodes[n].replica.raft.term)

    def elect(self, node_id: int, rounds_max: int = 10) -> None:
        """Make ``node_id`` campaign at once (as a TimeoutNow does, thesis §3.10) and settle.

        Natural elections (ticks until a timeout fires) are exercised by :meth:`tick_all`; this is
        the shortcut tests use to put a chosen node in charge.
        """
        for _ in range(rounds_max):
            raft = self.raft(node_id)
            self.nodes[node_id].deliver(TimeoutNow(raft.term, 0, node_id))
            self.process()
            self.settle()
            if self.raft(node_id).role == Role.LEADER:
                return
        raise AssertionError(f"node {node_id} did not become leader")

    def tick_all(self, rounds: int = 1) -> None:
        """Tick every live node once per round, settling the network after each round."""
        for _ in range(rounds):
            for node_id in self.ids:
                if self.nodes[node_id].up:
                    self.tick(node_id)
            self.settle()

    def raft(self, node_id: int) -> Any:
        return self.nodes[node_id].replica.raft

    def replies(self, node_id: int) -> list[Reply]:
        return self.nodes[node_id].take_replies()
