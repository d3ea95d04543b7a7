"""A node upgraded with a new service boots from, and installs, snapshots an older version took."""

from __future__ import annotations

import random

from tests.cluster.test_raft import write
from trimaran.cluster.replica import Replica
from trimaran.protocols.service import ApplyContext
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
