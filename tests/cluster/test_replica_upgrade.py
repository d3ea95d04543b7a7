"""What a booting Replica rebuilds: a node upgraded with a new service boots from, and installs,
snapshots an older version took; a restarted node shows its services its unapplied log tail."""

from __future__ import annotations

import random

from tests.cluster.test_raft import write
from trimaran.cluster.replica import Replica
from trimaran.protocols.codec import pack
from trimaran.protocols.messages import Entry, EntryKind
from trimaran.protocols.service import ApplyContext
from trimaran.protocols.tokens import Claims
from trimaran.services.auth import AuthService
from trimaran.services.kv import KvService
from trimaran.services.register import RegisterService
from trimaran.simulations.harness import Harness, fast_raft_config


def test_a_snapshot_without_a_newer_service_restores_it_to_its_initial_state() -> None:
    old = Harness(1, seed=2, make_services=lambda: [RegisterService(), KvService()])
    old.elect(1)
    write(old, 1, 3)
    snapshot = old.nodes[1].replica.take_snapshot()
    auth = AuthService()
    # Boot from it (the node restarts on its old data dir after an upgrade).
    upgraded = Replica(fast_raft_config(1, (1,)), random.Random(1), [RegisterService(), KvService(), auth], snapshot=snapshot)
    assert upgraded.services["register"].data == {b"k": b"3"}  # type: ignore[attr-defined]
    assert auth.snapshot() == AuthService().snapshot()
    # Install it over state the new service has built since (a lagging node is sent the snapshot).
    auth.apply(["revoke", "t-1", 0], ApplyContext(9, 1000))
    upgraded._restore(snapshot)
    assert auth.snapshot() == AuthService().snapshot()  # as it was before the service existed


def test_a_booting_replica_shows_the_auth_service_its_unapplied_tail() -> None:
    """Boot from a snapshot and a log tail holding a revocation (applied before a crash whose
    commit index never reached the disk): the token is refused before anything applies."""
    old = Harness(1, seed=2, make_services=lambda: [RegisterService(), AuthService()])
    old.elect(1)
    snapshot = old.nodes[1].replica.take_snapshot()
    last = snapshot.meta.last_index
    tail = [
        Entry(last + 1, snapshot.meta.last_term, EntryKind.NORMAL, pack([1000, [[5, 1, 0, "auth", ["revoke", "t-9", 0]]]])),
        Entry(last + 2, snapshot.meta.last_term, EntryKind.NORMAL, b""),  # a no-op
        Entry(last + 3, snapshot.meta.last_term, EntryKind.NORMAL, b"\xc1junk"),  # not a batch
    ]
    auth = AuthService()
    Replica(fast_raft_config(1, (1,)), random.Random(1), [RegisterService(), auth], snapshot=snapshot, entries=tail)
    claims = Claims("alice", "t-9", "cluster", "boot", 50_000, 0, 0, (), ())
    refused = auth.refusal(claims, 2000)
    assert refused is not None and refused.details["reason"] == "revoked"
    assert not auth.is_revoked("t-9")  # provisional: the replicated state is untouched
