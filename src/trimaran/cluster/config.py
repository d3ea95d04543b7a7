"""Raft's tunable bounds, checked against each other and against :mod:`trimaran.limits`."""

from __future__ import annotations

from dataclasses import dataclass

from trimaran import limits
from trimaran.errors import ConfigError
from trimaran.protocols.messages import Membership


@dataclass(frozen=True, slots=True)
class RaftConfig:
    node_id: int
    #: Voters the cluster starts with when the log and snapshot are empty (bootstrap). A node that
    #: joins an existing cluster starts with an empty membership and waits to hear from a leader.
    initial_membership: Membership
    #: Randomized in [min, max) ticks from the injected Random (§5.2).
    election_timeout_ticks_min: int = 10
    election_timeout_ticks_max: int = 20
    heartbeat_interval_ticks: int = 2
    #: Entries bytes per AppendEntries, and the pipelining window per follower (§10.2.1 of the thesis).
    append_bytes_max: int = 1 * limits.MIB
    inflight_messages_max: int = 256
    inflight_bytes_max: int = 32 * limits.MIB
    #: Thesis §9.6: Pre-Vote stops a rejoining node from disrupting the cluster; Check-Quorum makes a
    #: leader that cannot reach a majority step down, and lets followers ignore disruptive votes.
    pre_vote: bool = True
    check_quorum: bool = True
    #: Lease reads (thesis §6.4.1) skip the heartbeat round; safe only while clock drift between nodes
    #: stays under ``lease_margin_ticks`` per election timeout. Off by default.
    lease_reads: bool = False
    lease_margin_ticks: int = 2
    snapshot_chunk_bytes: int = 1 * limits.MIB
    #: Ceiling on a snapshot received from a leader (a follower refuses a larger one).
    snapshot_bytes_max: int = 4 * limits.GIB
    #: A learner may be promoted only once its log is within this many entries of the leader's.
    learner_catchup_entries_max: int = 0
    #: Bounds on reads waiting for a ReadIndex round (per node) and proposals per call.
    pending_reads_max: int = 65_536
    #: ReadIndex heartbeat rounds a leader keeps in flight; reads arriving meanwhile wait and share
    #: the next round (etcd's read loop keeps one). More rounds cut a read's wait by up to a round
    #: trip but cost a heartbeat to every follower per driver round with a read in it.
    read_rounds_inflight_max: int = 1
    #: Planted bugs for the simulator's mutation tests; empty in production. Test-only switch.
    mutants: frozenset[str] = frozenset()

    def validate(self) -> "RaftConfig":
        """Raise ``ConfigError`` naming the first bound that does not fit; return self when all do."""
        checks = [
            (self.node_id > 0, "node_id must be positive"),
            (self.heartbeat_interval_ticks >= 1, "heartbeat_interval_ticks must be >= 1"),
            (
                self.election_timeout_ticks_min >= 2 * self.heartbeat_interval_ticks + 1,
                "election_timeout_ticks_min must exceed two heartbeat intervals",
            ),
            (
                self.election_timeout_ticks_max > self.election_timeout_ticks_min,
                "election_timeout_ticks_max must exceed election_timeout_ticks_min",
            ),
            (0 < self.append_bytes_max <= limits.append_bytes_max, "append_bytes_max out of range"),
            (0 < self.inflight_messages_max <= limits.inflight_messages_max, "inflight_messages_max out of range"),
            (self.inflight_bytes_max >= self.append_bytes_max, "inflight_bytes_max below append_bytes_max"),
            (self.read_rounds_inflight_max >= 1, "read_rounds_inflight_max must be >= 1"),
            (
                0 < self.snapshot_chunk_bytes <= limits.snapshot_chunk_bytes_max,
                "snapshot_chunk_bytes out of range",
            ),
            (
                0 <= self.lease_margin_ticks < self.election_timeout_ticks_min,
                "lease_margin_ticks must be below election_timeout_ticks_min",
            ),
            (not self.lease_reads or self.check_quorum, "lease_reads needs check_quorum"),
            (self.learner_catchup_entries_max >= 0, "learner_catchup_entries_max must be >= 0"),
            (self.pending_reads_max > 0, "pending_reads_max must be positive"),
            (
                len(self.initial_membership.members) <= limits.members_max,
                f"at most {limits.members_max} members",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self
