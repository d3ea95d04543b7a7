"""Applying a fault plan to a running simulation, healing it, and watching liveness after the heal.

Faults that could leave the cluster unable to ever make progress are guarded at the moment they
strike: a disk failure or a membership change is skipped when afterwards some voter
set in play (any node's latest or committed membership) would no longer have a majority of
healthy nodes. Temporary faults (crashes, pauses, partitions) need no guard: the heal ends them.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Iterable

from trimaran.cluster.raft import Role
from trimaran.errors import StorageCorruptError, TrimaranError
from trimaran.protocols.messages import ConfChange, ConfChangeKind, Membership
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.harness import sub_seed
from trimaran.simulations.plan import Fault

if TYPE_CHECKING:
    from trimaran.simulations.loop import Simulation

#: Membership changes never shrink the voters below this (a 3-voter cluster still tolerates one).
VOTERS_MIN = 3


def _majority(count: int) -> int:
    return count // 2 + 1


def _nodes_in(mask: int, node_ids: Iterable[int]) -> list[int]:
    return [n for n in node_ids if mask >> n & 1]


class FaultInjector:
    """Applies the plan's faults to one :class:`~trimaran.simulations.loop.Simulation`."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.flaky: list[int] = []
        self.admin_seq = 0

    # ------------------------------------------------------------------ dispatch

    def apply(self, index: int, fault: Fault) -> None:
        rng = random.Random(sub_seed(self.sim.seed, "fault", fault.encode()))
        applied = getattr(self, "_" + fault.kind)(fault, rng)
        if applied:
            self.sim.fault_count += 1
        else:
            self.sim.fault_skipped += 1

    def _until(self, duration_ms: int) -> int | None:
        """When a fault of this duration ends, or None if the heal ends it first."""
        end = self.sim.now_us + duration_ms * 1000
        return end if end < self.sim.config.heal_us else None

    # ------------------------------------------------------------------ network

    def _target(self, node: int) -> int:
        """The node a fault names; 0 names the leader of the moment (0 again if there is none)."""
        return node or (self.sim.leader() or 0)

    def _part(self, fault: Fault, rng: random.Random) -> bool:
        shape, mask, dur_ms = fault.args
        ids = self.sim.node_ids
        if shape == 4:
            leader = self.sim.leader()
            if leader is None:
                return False
            others = [n for n in ids if n != leader]
            group = [leader, *rng.sample(others, min(mask, len(others)))]
        else:
            group = _nodes_in(mask, ids)
        rest = [n for n in ids if n not in group]
        if not group or not rest:
            return False
        if shape == 2:  # one-way: the group cannot send to the rest, but hears it
            links = [(a, b) for a in group for b in rest]
        else:
            cut = group
            if shape == 3:  # bridge: one node of the group still talks to both sides
                bridge = rng.choice(group)
                cut = [n for n in group if n != bridge]
            links = [(a, b) for a in cut for b in rest] + [(b, a) for a in cut for b in rest]
        if not links:
            return False
        net = self.sim.net
        net.block(links)
        end = self._until(dur_ms)
        if end is not None:
            self.sim.call_at(end, self._unblock, links)
        return True

    def _unblock(self, links: list[tuple[int, int]]) -> None:
        if not self.sim.healed:
            self.sim.net.unblock(links)

    def _clog(self, fault: Fault, rng: random.Random) -> bool:
        count, step_ms, _salt = fault.args
        ids = self.sim.node_ids
        links = [(a, b) for a in ids for b in ids if a != b]
        chosen = rng.sample(links, min(count, len(links)))
        unclog_order = rng.sample(chosen, len(chosen))
        now, step = self.sim.now_us, step_ms * 1000
        for i, link in enumerate(chosen):
            self.sim.call_at(now + i * step, self._clog_link, link)
        for i, link in enumerate(unclog_order):
            self.sim.call_at(now + (len(chosen) + i) * step, self._unclog_link, link)
        return bool(chosen)

    def _clog_link(self, link: tuple[int, int]) -> None:
        if not self.sim.healed:
            self.sim.net.clog(link)

    def _unclog_link(self, link: tuple[int, int]) -> None:
        if not self.sim.healed:
            self.sim.net.unclog(link, self.sim.now_us)

    def _flaky(self, fault: Fault, rng: random.Random) -> bool:
        # Unlike a partition it does not come and go: it lasts the whole fault window. It heals
        # with everything else, because a leader on a lossy node is legitimately slow for as long
        # as it stays leader (Raft does not move leadership off a live node), and the liveness
        # check needs a cluster that can be fast again.
        mask, loss_pm = fault.args
        added = [n for n in _nodes_in(mask, self.sim.node_ids) if n not in self.flaky]
        for node in added:
            self.flaky.append(node)
            self.sim.net.flaky_loss[node] = loss_pm / 1000
        return bool(added)

    # ------------------------------------------------------------------ processes

    def _crash(self, fault: Fault, rng: random.Random) -> bool:
        node, down_ms, mode, torn = fault.args
        node = self._target(node)
        slot = self.sim.slots.get(node)
        if slot is None or not slot.sim.up:
            return False
        if mode == 0:
            self.crash_now(node, down_ms, torn)
            return True
        slot.crash_at_sync = (mode, down_ms, torn)
        if mode != 3:
            # If the node writes nothing for a while, crash it anyway. (Mode 3 waits for a new
            # term or vote as long as it takes: the heal disarms it.)
            self.sim.call_at(self.sim.now_us + 2_000_000, self._crash_if_armed, node, slot.life)
        return True

    def _crash_if_armed(self, node: int, life: int) -> None:
        slot = self.sim.slots[node]
        if slot.life == life and slot.crash_at_sync is not None and slot.sim.up:
            self.crash_now(node, slot.crash_at_sync[1], slot.crash_at_sync[2])

    def crash_now(self, node: int, down_ms: int, torn: int, restart: bool = True) -> None:
        """Power loss: unsynced writes lost (the first possibly torn), volatile state gone."""
        sim = self.sim
        slot = sim.slots[node]
        slot.crash_at_sync = None
        slot.sim.crash(torn=bool(torn))
        sim.edges[node].close_all()  # the process is gone, and every client connection with it
        sim.chat.node_crashed(node)
        sim.invariants.node_crashed(node, slot.sim.storage.hard_state().term)
        slot.life += 1
        slot.paused = False
        slot.inbox = []
        slot.missed_ticks = 0
        slot.sync_at = 0
        sim.crash_count += 1
        if restart:
            self._schedule_restart(node, down_ms)

    def _schedule_restart(self, node: int, down_ms: int) -> None:
        end = self._until(max(down_ms, 1))
        if end is not None:
            self.sim.call_at(end, self.restart, node, self.sim.slots[node].life)

    def restart(self, node: int, life: int | None = None) -> None:
        """Boot the node from its disk; a record failing its CRC means the disk has failed."""
        sim = self.sim
        slot = sim.slots[node]
        if slot.sim.up or slot.disk_failed or (life is not None and life != slot.life):
            return
        try:
            slot.sim.restart()
        except StorageCorruptError:  # never boot from (or serve) a record that fails its CRC
            slot.disk_failed = True
            sim.disk_failures += 1
            return
        slot.life += 1
        raft = slot.sim.replica.raft
        slot.synced_vote = (raft.term, raft.vote)
        sim.invariants.node_restarted(node)
        if sim.rules is not None:
            sim.rules.node_restarted(node)
        sim.restart_tick_chain(node)
        sim.pump(node)

    def _pause(self, fault: Fault, rng: random.Random) -> bool:
        node, dur_ms = fault.args
        node = self._target(node)
        slot = self.sim.slots.get(node)
        if slot is None or not slot.sim.up or slot.paused:
            return False
        slot.paused = True
        end = self._until(dur_ms)
        if end is not None:
            self.sim.call_at(end, self.resume, node, slot.life)
        return True

    def resume(self, node: int, life: int) -> None:
        slot = self.sim.slots[node]
        if slot.life != life or not slot.paused:
            return
        slot.paused = False
        self.sim.resume_inbox(node)
        self.sim.pump(node)

    def _disk(self, fault: Fault, rng: random.Random) -> bool:
        node, down_ms, _salt = fault.args
        slot = self.sim.slots.get(node)
        if slot is None or not slot.sim.up or not self._keeps_majority(extra_bad=[node]):
            return False
        self.crash_now(node, down_ms, 0, restart=False)
        storage = slot.sim.storage
        meta = storage.snapshot_meta()
        lo = max(storage.first_index(), (meta.last_index if meta else 0) + 1)
        if lo <= storage.last_index():
            storage.corrupt_entry(rng.randint(lo, storage.last_index()))
        elif meta is not None:
            storage.corrupt_snapshot()
        self._schedule_restart(node, down_ms)
        return True

    # ------------------------------------------------------------------ clocks

    def _clock(self, fault: Fault, rng: random.Random) -> bool:
        node, rate_pm, dur_ms = fault.args
        node = self._target(node)
        slot = self.sim.slots.get(node)
        if slot is None:
            return False
        slot.set_rate(rate_pm / 1000, self.sim.now_us)
        end = self._until(dur_ms)
        if end is not None:
            self.sim.call_at(end, self._clock_normal, node)
        return True

    def _clock_normal(self, node: int) -> None:
        self.sim.slots[node].set_rate(1.0, self.sim.now_us)

    def _jump(self, fault: Fault, rng: random.Random) -> bool:
        node, ticks = fault.args
        slot = self.sim.slots.get(node)
        if slot is None or not slot.sim.up or slot.paused:
            return False
        for _ in range(ticks):
            self.sim.tick_once(node)
        return True

    # ------------------------------------------------------------------ cluster operations

    def _member(self, fault: Fault, rng: random.Random) -> bool:
        action, count, _salt = fault.args
        leader = self.sim.leader()
        if leader is None:
            return False
        proposed = False
        for _ in range(count):
            change = self._choose_change(leader, action, rng)
            if change is None:
                break
            self.admin_seq += 1
            try:
                self.sim.slots[leader].sim.replica.change_membership(("admin", self.admin_seq), change)
                proposed = True
            except TrimaranError:
                pass  # refused (one change at a time, learner not caught up...): also a test
            self.sim.pump(leader)
        return proposed

    def _choose_change(self, leader: int, action: int, rng: random.Random) -> ConfChange | None:
        membership = self.sim.slots[leader].sim.replica.raft.membership
        voters, learners = list(membership.voters), list(membership.learners)
        bad = self.bad_nodes()
        removable = [v for v in voters if len(voters) > VOTERS_MIN and self._healthy([x for x in voters if x != v], bad)]
        removable += learners
        addable = [n for n in self.sim.node_ids if not membership.contains(n) and not self.sim.slots[n].disk_failed]
        promotable = [n for n in learners if self._healthy([*voters, n], bad)]
        if action == 3:
            action = 2 if promotable else 1 if addable else 0
        options = (removable, addable, promotable)[action]
        if not options:
            return None
        kind = (ConfChangeKind.REMOVE, ConfChangeKind.ADD_LEARNER, ConfChangeKind.PROMOTE)[action]
        return ConfChange(kind, rng.choice(options))

    def _transfer(self, fault: Fault, rng: random.Random) -> bool:
        leader = self.sim.leader()
        if leader is None:
            return False
        voters = [v for v in self.sim.slots[leader].sim.replica.raft.membership.voters if v != leader]
        if not voters:
            return False
        try:
            self.sim.slots[leader].sim.replica.transfer_leadership(rng.choice(voters))
        except TrimaranError:
            return False
        finally:
            self.sim.pump(leader)
        return True

    # ------------------------------------------------------------------ guards

    def bad_nodes(self) -> list[int]:
        """Nodes that will never be healthy again: those whose disk failed."""
        return [n for n, s in self.sim.slots.items() if s.disk_failed]

    @staticmethod
    def _healthy(voters: list[int], bad: list[int]) -> bool:
        return sum(1 for v in voters if v not in bad) >= _majority(len(voters))

    def _keeps_majority(self, extra_bad: list[int]) -> bool:
        bad = self.bad_nodes() + extra_bad
        for slot in self.sim.slots.values():
            raft = slot.sim.replica.raft
            for membership in (raft.membership, raft.membership_at(raft.log.commit_index)):
                if not self._healthy(list(membership.voters), bad):
                    return False
        return True

    # ------------------------------------------------------------------ heal and liveness

    def heal(self) -> None:
        """Every temporary fault ends; then a functional leader must appear in 10 election timeouts."""
        sim = self.sim
        sim.healed = True
        sim.net.heal(sim.now_us)
        sim.net.flaky_loss.clear()
        for node, slot in sim.slots.items():
            slot.set_rate(1.0, sim.now_us)
            slot.crash_at_sync = None
            if slot.paused:
                self.resume(node, slot.life)
            if not slot.sim.up:
                self.restart(node)
        self._probe_loop()
        sim.call_at(sim.now_us + sim.config.liveness_us, self._leader_deadline)

    def probe_leader(self) -> None:
        """Note the first time after the heal that a leader has committed in its term."""
        sim = self.sim
        if sim.leader_ok_us >= 0 or not sim.healed:
            return
        for node, slot in sim.slots.items():
            raft = slot.sim.replica.raft
            if slot.sim.up and raft.role == Role.LEADER and raft.committed_in_term() and node in raft.membership.voters:
                sim.leader_ok_us = sim.now_us
                return

    def _probe_loop(self) -> None:
        self.probe_leader()
        if self.sim.leader_ok_us < 0:
            self.sim.call_at(self.sim.now_us + self.sim.config.tick_us, self._probe_loop)

    def _leader_deadline(self) -> None:
        self.probe_leader()
        if self.sim.leader_ok_us < 0:
            raise CheckFailure("liveness", self.stuck_report())

    def stuck_report(self) -> str:
        """Why no leader: each node's state and the memberships it holds (latest and, when it
        differs, committed), each with how many of its voters are up, so the report says at once
        whether an electable majority exists (a stuck core) or not (a fault the guard let through)."""
        sim = self.sim
        up = {n for n, s in sim.slots.items() if s.sim.up}
        states = ", ".join(
            f"{n}:{'up' if n in up else 'down'}/{s.sim.replica.raft.role.name}/t{s.sim.replica.raft.term}"
            for n, s in sim.slots.items()
        )
        lines = [f"no leader within 10 election timeouts of the heal ({states})"]
        for n, slot in sim.slots.items():
            raft = slot.sim.replica.raft
            latest, committed = raft.membership, raft.membership_at(raft.log.commit_index)
            held = [("latest", latest)] if latest == committed else [("latest", latest), ("committed", committed)]
            parts = [f"{label} {self._describe_membership(m, up)}" for label, m in held]
            lines.append(f"  node {n} (commit {raft.log.commit_index}, last {raft.log.last_index()}): " + "; ".join(parts))
        return "\n".join(lines)

    @staticmethod
    def _describe_membership(membership: Membership, up: set[int]) -> str:
        voters = list(membership.voters)
        up_count = sum(1 for v in voters if v in up)
        verdict = "a majority is up" if up_count >= _majority(len(voters)) else "NO majority up"
        learners = ",".join(map(str, membership.learners)) or "-"
        return f"voters {','.join(map(str, voters)) or '-'} learners {learners}: {up_count} of {len(voters)} voters up, {verdict}"
