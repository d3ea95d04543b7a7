"""Auth in the simulator: deterministic tokens, each node's edge (the auth service's own decisions,
against that node's state), the record of what each node applied and accepted, and the checker."""

from __future__ import annotations

from typing import Any

import pytest

from trimaran.errors import PermissionDenied, Unauthenticated
from trimaran.protocols import tokens
from trimaran.protocols.service import ApplyContext
from trimaran.simulations.auth_edge import SIM_CLUSTER_ID, AuthRecord, NodeEdge, RecordingAuth, check_auth
from trimaran.simulations.auth_workload import TokenIssuer
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.loop import Simulation
from trimaran.simulations.plan import draw_plan
from trimaran.simulations.run import sim_config
from trimaran.simulations.workload import draw_workload

ISSUED_AT_MS = 1_000_000
NOW_MS = ISSUED_AT_MS + 5_000
KV_WRITE = ("kv", "write")


class Clock:
    def __init__(self) -> None:
        self.now_us = 0

    def __call__(self) -> int:
        return self.now_us


def _node(record: AuthRecord, issuer: TokenIssuer, mutants: frozenset[str] = frozenset(), node_id: int = 1) -> RecordingAuth:
    return RecordingAuth(node_id, record, bootstrap=issuer.bootstrap(), mutants=mutants)


def _apply_round(edge: NodeEdge, auth: RecordingAuth) -> None:
    """What the loop does after every apply round (the runtime's ClientServer._after_round)."""
    if edge.generation_moved(auth):
        edge.recheck(auth, NOW_MS)


def _reason(exc: pytest.ExceptionInfo[Any]) -> object:
    return exc.value.details.get("reason")


def test_tokens_are_real_deterministic_and_verify_against_the_bootstrap_keys() -> None:
    a, b = TokenIssuer(7, ISSUED_AT_MS), TokenIssuer(7, ISSUED_AT_MS)
    assert a.credential(0) == b.credential(0) != TokenIssuer(8, ISSUED_AT_MS).credential(0)
    assert a.credential(0) == a.credential(0)  # the same token until it may no longer serve
    keys = {k.kid: k for k in a.bootstrap()}
    claims = tokens.verify(a.credential(0), keys, audience=SIM_CLUSTER_ID, now_ms=NOW_MS)
    assert (claims.kid, claims.sub, claims.scope_texts) == ("user0", "client-0", ("kv:*", "jobs:*", "chat:*"))
    a.revoked[claims.jti] = None
    assert tokens.verify(a.credential(0), keys, audience=SIM_CLUSTER_ID, now_ms=NOW_MS).jti != claims.jti


def test_the_edge_refuses_a_revoked_token_from_the_apply_round_that_revoked_it() -> None:
    clock, issuer = Clock(), TokenIssuer(7, ISSUED_AT_MS)
    record = AuthRecord(clock)
    auth, edge = _node(record, issuer), NodeEdge(record, 30_000)
    bearer = issuer.credential(0)
    jti = tokens.unverified_claims(bearer)["jti"]
    edge.admit(auth, 0, bearer, KV_WRITE, NOW_MS)
    with pytest.raises(PermissionDenied):
        edge.admit(auth, 0, bearer, ("admin", "*"), NOW_MS)
    clock.now_us = 10
    assert auth.apply(["revoke", jti, issuer.exp_ms], ApplyContext(5, NOW_MS)) is True
    _apply_round(edge, auth)
    assert record.closed == 1
    clock.now_us = 20
    with pytest.raises(Unauthenticated) as refused:
        edge.admit(auth, 0, bearer, KV_WRITE, NOW_MS)
    assert _reason(refused) == "revoked"
    with pytest.raises(Unauthenticated):  # a new connection with it is refused at its hello
        edge.admit(auth, 0, bearer, KV_WRITE, NOW_MS)
    check_auth(record)
    assert len(record.accepted) == 1 and record.refused == 3


def test_the_edge_closes_connections_whose_key_was_retired() -> None:
    clock, issuer = Clock(), TokenIssuer(7, ISSUED_AT_MS)
    record = AuthRecord(clock)
    auth, edge = _node(record, issuer), NodeEdge(record, 30_000)
    bearer = issuer.credential(3)
    edge.admit(auth, 3, bearer, None, NOW_MS)
    auth.apply(["retire", "user0"], ApplyContext(5, NOW_MS))
    _apply_round(edge, auth)
    with pytest.raises(Unauthenticated) as refused:
        edge.admit(auth, 3, bearer, None, NOW_MS)
    assert _reason(refused) == "key_retired"
    check_auth(record)


def test_the_checker_catches_an_edge_that_keeps_serving_on_stale_state() -> None:
    """The revocation_stale_state mutant: no generation move, no re-check, the request served."""
    clock, issuer = Clock(), TokenIssuer(7, ISSUED_AT_MS)
    record = AuthRecord(clock)
    auth = _node(record, issuer, frozenset({"revocation_stale_state"}))
    edge = NodeEdge(record, 30_000)
    bearer = issuer.credential(0)
    edge.admit(auth, 0, bearer, KV_WRITE, NOW_MS)
    _apply_round(edge, auth)  # an apply round before the revocation
    clock.now_us = 1_500_000
    auth.apply(["revoke", tokens.unverified_claims(bearer)["jti"], issuer.exp_ms], ApplyContext(5, NOW_MS))
    _apply_round(edge, auth)
    clock.now_us = 2_000_000
    edge.admit(auth, 0, bearer, KV_WRITE, NOW_MS)
    with pytest.raises(CheckFailure, match=r"auth: node 1 accepted a request of client 0 at 2\.000000s on token t1 "
                       r"\(key user0\), but the revocation of token t1 was applied there at 1\.500000s"):
        check_auth(record)


def test_what_a_node_applied_counts_across_its_lifetimes_and_snapshots_count_as_applied() -> None:
    clock, issuer = Clock(), TokenIssuer(7, ISSUED_AT_MS)
    record = AuthRecord(clock)
    first = _node(record, issuer)
    claims = tokens.verify(issuer.credential(0), {k.kid: k for k in issuer.bootstrap()}, audience=SIM_CLUSTER_ID, now_ms=NOW_MS)
    record.note_accepted(first.incarnation, 0, claims)  # before the retirement: fine
    first.apply(["revoke", "t9", issuer.exp_ms], ApplyContext(5, NOW_MS))
    first.apply(["retire", "user0"], ApplyContext(6, NOW_MS))
    check_auth(record)
    # After a crash the node has not applied them again yet, but it applied them before: a request
    # it accepts on that key now is a failure (it must hold its unapplied tail's retirements).
    second = _node(record, issuer)
    record.note_accepted(second.incarnation, 0, claims)
    with pytest.raises(CheckFailure, match="retirement of key user0"):
        check_auth(record)
    # A snapshot installed in a lifetime counts as applied in it.
    third_record = AuthRecord(clock)
    fresh = _node(third_record, issuer)
    fresh.restore(first.snapshot())
    assert set(third_record.applied[fresh.incarnation]) == {("jti", "t9"), ("kid", "user0")}
    third_record.note_accepted(fresh.incarnation, 0, claims)
    with pytest.raises(CheckFailure, match="retirement of key user0"):
        check_auth(third_record)
    # Another node that never applied them may still serve the token (it lags; by design).
    other_record = AuthRecord(clock)
    _node(other_record, issuer).apply(["retire", "user0"], ApplyContext(6, NOW_MS))
    lagging = _node(other_record, issuer, node_id=2)
    other_record.note_accepted(lagging.incarnation, 0, claims)
    check_auth(other_record)


def test_a_run_trusts_retires_and_revokes_during_the_faults_and_closes_connections() -> None:
    totals = {"trust": 0, "retire": 0, "revoke": 0}
    closed = refused = 0
    for seed in (12, 14):  # seeds whose admin trusts, retires and revokes (the jobs load shifts them)
        config = sim_config(seed, 5, 40.0)
        sim = Simulation(config, draw_plan(seed, 5, config.heal_us // 1000), draw_workload(seed))
        sim.run()
        assert sim.failure is None, sim.failure
        for op, count in sim.admin.done.items():
            totals[op] += count
        closed += sim.auth_record.closed
        refused += sim.auth_record.refused
    assert all(totals.values()), totals
    assert closed > 0 and refused > 0
