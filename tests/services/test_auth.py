"""The auth service: trusted keys and revocations, decided by the log (see its command table)."""

from __future__ import annotations

import pytest

from trimaran import limits
from trimaran.errors import ConfigError, InvalidArgument, TooLarge
from trimaran.protocols.service import ApplyContext
from trimaran.protocols.tokens import Claims, TrustedKey
from trimaran.services.auth import AuthService, retired_key_keep_ms

KEY_A, KEY_B, KEY_BOOT = b"a" * 32, b"b" * 32, b"c" * 32


def at(ms: int, index: int = 1) -> ApplyContext:
    return ApplyContext(index, ms)


def test_trust_then_retire_refuses_the_key_from_that_log_time() -> None:
    svc = AuthService()
    assert svc.apply(["trust", "k1", KEY_A, 0], at(1000)) is True
    assert svc.apply(["trust", "k1", KEY_A, 0], at(1001)) is False  # idempotent
    with pytest.raises(InvalidArgument, match="another key"):
        svc.apply(["trust", "k1", KEY_B, 0], at(1002))
    assert svc.trusted_keys()["k1"] == TrustedKey("k1", KEY_A, 0)
    generation = svc.generation
    assert svc.apply(["retire", "k1"], at(5000)) is True
    assert svc.trusted_keys()["k1"].not_after_ms == 5000 and svc.generation == generation + 1
    assert svc.apply(["retire", "k1"], at(6000)) is False
    with pytest.raises(InvalidArgument, match="retired"):
        svc.apply(["trust", "k1", KEY_A, 0], at(7000))
    svc.on_time(at(5000 + retired_key_keep_ms))
    assert "k1" not in svc.trusted_keys() and svc.next_deadline_ms() is None


def test_bootstrap_keys_are_trusted_retirable_and_never_in_snapshots() -> None:
    boot = (TrustedKey("boot", KEY_BOOT),)
    svc = AuthService(bootstrap=boot)
    assert svc.query(["keys"], at(0)) == [["boot", KEY_BOOT, 0, "config"]]
    assert svc.apply(["retire", "boot"], at(100)) is True
    snap = svc.snapshot()
    assert repr(KEY_BOOT) not in repr(snap)
    other = AuthService(bootstrap=boot)
    other.restore(snap)
    assert other.trusted_keys()["boot"].not_after_ms == 100


def test_revocations_are_dropped_once_the_token_expires_in_log_time() -> None:
    svc = AuthService(leeway_ms=1000)
    assert svc.apply(["revoke", "t-1", 10_000], at(100)) is True
    assert svc.apply(["revoke", "t-1", 10_000], at(200)) is False
    assert svc.is_revoked("t-1") and svc.query(["revoked", "t-1"], at(200)) is True
    assert svc.next_deadline_ms() == 11_001
    svc.on_time(at(11_000))  # the token is still valid at exp + leeway: so is its revocation
    assert svc.is_revoked("t-1")
    svc.on_time(at(11_001))
    assert not svc.is_revoked("t-1")
    # No exp given: kept as long as any token can live.
    svc.apply(["revoke", "t-2", 0], at(500))
    assert svc.next_deadline_ms() == 500 + 1000 + limits.token_ttl_ms_max + 1000 + 1
    # A token already expired needs no revocation held; one at its last valid instant does.
    assert svc.apply(["revoke", "t-3", 100], at(2000)) is False and not svc.is_revoked("t-3")
    assert svc.apply(["revoke", "t-4", 100], at(1100)) is True and svc.is_revoked("t-4")


def test_a_revoked_token_is_refused_at_every_instant_it_would_verify() -> None:
    """The revocation is held as long as the token's own expiry does not refuse it: at log time
    exp + leeway a node whose clock reads exactly that still accepts an unrevoked token."""
    svc = AuthService(bootstrap=(TrustedKey("boot", KEY_BOOT),), leeway_ms=1000)
    claims = _claims("t-1", "boot", exp_ms=10_000)
    grant = svc.grant(claims, leeway_ms=1000)
    svc.apply(["revoke", "t-1", 10_000], at(100))
    for log_time_ms in (10_999, 11_000, 11_001, 11_002):
        svc.on_time(at(log_time_ms))
        still_valid = grant.lapsed(log_time_ms) is None
        assert not still_valid or svc.refusal(claims, log_time_ms) is not None, log_time_ms


def test_bounds_refuse_without_changing_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "trusted_keys_max", 1)
    monkeypatch.setattr(limits, "revocations_max", 1)
    svc = AuthService()
    svc.apply(["trust", "k1", KEY_A, 0], at(1))
    with pytest.raises(TooLarge, match="trusted_keys_max"):
        svc.apply(["trust", "k2", KEY_B, 0], at(2))
    svc.apply(["revoke", "t-1", 0], at(3))
    with pytest.raises(TooLarge, match="revocations_max"):
        svc.apply(["revoke", "t-2", 0], at(4))
    assert sorted(svc.trusted_keys()) == ["k1"] and svc.query(["stats"], at(5))["revocations"] == 1


@pytest.mark.parametrize(
    "command",
    [["trust", "k", b"short", 0], ["trust", "", KEY_A, 0], ["trust", "k", KEY_A, -1], ["revoke", 7, 0], ["nope"], "trust", []],
)
def test_malformed_commands_are_invalid_arguments(command: object) -> None:
    svc = AuthService()
    with pytest.raises(InvalidArgument):
        svc.apply(command, at(1))
    assert svc.snapshot() == AuthService().snapshot()


def test_snapshot_round_trip_is_identical() -> None:
    svc = AuthService()
    svc.apply(["trust", "k1", KEY_A, 0], at(1))
    svc.apply(["trust", "k2", KEY_B, 9_000], at(2))
    svc.apply(["retire", "k1"], at(3))
    for i in range(5):
        svc.apply(["revoke", f"t-{i}", 100_000 - i], at(4 + i))
    restored = AuthService()
    restored.restore(svc.snapshot())
    assert restored.snapshot() == svc.snapshot()
    assert restored.trusted_keys() == svc.trusted_keys() and restored.generation == svc.generation
    assert restored.next_deadline_ms() == svc.next_deadline_ms()


def _claims(jti: str, kid: str, exp_ms: int = 50_000) -> Claims:
    return Claims("alice", jti, "cluster", kid, exp_ms, 0, 0, (), ())


def _reason(exc: Exception | None) -> object:
    return None if exc is None else getattr(exc, "details", {}).get("reason")


def test_the_edge_decisions_follow_the_applied_state() -> None:
    """What the node's authoriser and the simulator's edge both ask: refusal at connect time, the
    grant's own per-request bounds, and the re-check of a live grant after the generation moved."""
    svc = AuthService(bootstrap=(TrustedKey("boot", KEY_BOOT),))
    svc.apply(["trust", "k1", KEY_A, 0], at(10))
    alice, bob = _claims("t-1", "k1"), _claims("t-2", "boot")
    assert svc.refusal(alice, 20) is None and _reason(svc.refusal(_claims("t-3", "nope"), 20)) == "key_retired"
    grant = svc.grant(alice, leeway_ms=1000)
    assert (grant.expires_after_ms, grant.key_not_after_ms, grant.refused) == (51_000, 0, None)
    assert grant.lapsed(51_000) is None and _reason(grant.lapsed(51_001)) == "expired"
    other = svc.grant(bob, leeway_ms=1000)

    svc.apply(["revoke", "t-1", 50_000], at(30))
    assert _reason(svc.refusal(alice, 30)) == "revoked"
    refused = svc.recheck(grant, 30)
    assert refused is not None and grant.refused is refused and _reason(refused) == "revoked"
    assert svc.recheck(other, 30) is None and other.refused is None

    svc.apply(["retire", "boot"], at(40))
    assert _reason(svc.recheck(other, 40)) == "key_retired" and other.refused is not None
    assert svc.grant(_claims("t-4", "k1"), 0).key_not_after_ms == 0
    svc.apply(["retire", "k1"], at(45))
    late = svc.grant(_claims("t-5", "k1"), 0)
    assert late.key_not_after_ms == 45 and _reason(late.lapsed(45)) == "key_retired"


def test_the_stale_state_mutants_break_what_they_say() -> None:
    svc = AuthService(mutants=frozenset({"revocation_stale_state"}))
    assert svc.apply(["revoke", "t-1", 0], at(1)) is True and svc.is_revoked("t-1") and svc.generation == 0
    svc = AuthService(bootstrap=(TrustedKey("boot", KEY_BOOT),), mutants=frozenset({"retirement_stale_state"}))
    grant = svc.grant(_claims("t-1", "boot"), leeway_ms=0)
    svc.apply(["retire", "boot"], at(10))
    assert svc.recheck(grant, 10) is None and grant.lapsed(10) is None  # served on, as granted
    with pytest.raises(ConfigError, match="unknown auth mutants"):
        AuthService(mutants=frozenset({"nope"}))


def test_revocations_in_the_boot_tail_refuse_until_application_passes_them() -> None:
    """A node restarted before its commit index reached the disk: what its own log tail revokes or
    retires is refused at once, and the applied state decides once application passes it."""
    svc = AuthService(bootstrap=(TrustedKey("boot", KEY_BOOT),))
    svc.apply(["trust", "k1", KEY_A, 0], at(10, index=3))
    before = svc.snapshot()
    svc.on_unapplied(7, ["revoke", "t-1", 50_000])
    svc.on_unapplied(8, ["retire", "k1"])
    svc.on_unapplied(9, ["revoke", 42, 0])  # malformed: applies as an error if it ever commits
    svc.on_unapplied(9, "junk")
    assert _reason(svc.refusal(_claims("t-1", "boot"), 20)) == "revoked"
    assert _reason(svc.refusal(_claims("t-2", "k1"), 20)) == "key_retired"
    assert svc.refusal(_claims("t-2", "boot"), 20) is None
    assert svc.snapshot() == before and svc.query(["revoked", "t-1"], at(20)) is False  # edge only
    # Entry 7 turned out to be the revocation: applied, it decides from then on.
    svc.on_time(at(30, index=7))
    svc.apply(["revoke", "t-1", 50_000], at(30, index=7))
    assert _reason(svc.refusal(_claims("t-1", "boot"), 30)) == "revoked"
    assert _reason(svc.refusal(_claims("t-2", "k1"), 30)) == "key_retired"  # entry 8: not yet
    # Entry 8 was overwritten by another leader's (it never committed): the key holds again.
    svc.on_time(at(40, index=8))
    assert svc.refusal(_claims("t-2", "k1"), 40) is None


def test_the_restart_mutant_forgets_the_boot_tail() -> None:
    svc = AuthService(mutants=frozenset({"restart_forgets_revocations"}))
    svc.apply(["trust", "k1", KEY_A, 0], at(10))
    svc.on_unapplied(7, ["revoke", "t-1", 50_000])
    assert svc.refusal(_claims("t-1", "k1"), 20) is None
