"""The authoriser's per-request check, without a node: a grant that covers a whole op of the kv
service skips the per-request match (:func:`trimaran.node.authoriser.whole_kv_ops`), and must
decide exactly as the match would, on every request."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trimaran.errors import InvalidArgument, PermissionDenied, Unauthenticated
from trimaran.node.authoriser import Authoriser, requirements, whole_kv_ops
from trimaran.node.clock import wall_clock_ms
from trimaran.protocols import scopes
from trimaran.protocols.tokens import Claims
from trimaran.services.auth import AuthService, Grant

#: Grants around the keys below: whole-service, whole-action, prefixes that cover some keys, exact names.
SCOPE_TEXTS = [
    "admin:*", "kv:*", "kv:read:*", "kv:write:*", "kv:read:a*", "kv:write:a*", "kv:read:ab",
    "kv:write:b", "kv:*:a*", "chat:*", "jobs:*", "cluster:read",
]  # fmt: skip
KEYS = st.sampled_from([b"a", b"ab", b"abc", b"b", b"ba", b"c"])
PREFIXES = st.sampled_from([b"", b"a", b"ab", b"b"])
QUERIES = st.one_of(
    st.builds(lambda k: ["get", k], KEYS),
    st.builds(lambda ks: ["mget", ks], st.lists(KEYS, min_size=1, max_size=3)),
    st.builds(lambda p: ["scan", p], PREFIXES),
    st.builds(lambda k: ["watch", k, 0], KEYS),
    st.builds(lambda p: ["watch", p, 0, {"prefix": True}], PREFIXES),
    st.just(["stats"]),
)
COMMANDS = st.one_of(
    st.builds(lambda k: ["set", k, b"v"], KEYS),
    st.builds(lambda k: ["delete", k], KEYS),
    st.builds(lambda k: ["incr", k, 1], KEYS),
    st.builds(lambda ks: ["mset", [[k, b"v"] for k in ks]], st.lists(KEYS, min_size=1, max_size=3, unique=True)),
    st.builds(
        lambda w, k, r: ["txn", [["set", k, b"v"], ["get", r]], {"if_revisions": [[w, 1]]}], KEYS, KEYS, KEYS
    ),
)
REQUESTS = st.one_of(
    st.builds(lambda q: ("read", {"service": "kv", "query": q}), QUERIES),
    st.builds(lambda c: ("command", {"service": "kv", "client_id": 1, "seq": 1, "ack_seq": 0, "command": c}), COMMANDS),
)


def authoriser() -> Authoriser:
    config = SimpleNamespace(auth_enabled=True, node_id=1, cluster_id="c", auth_leeway_ms=0)
    replica = SimpleNamespace(services={"auth": AuthService()}, last_timestamp_ms=0, applied_index=0)
    return Authoriser(config, replica, wall_clock_ms)  # type: ignore[arg-type]


def grant(texts: list[str]) -> Grant:
    claims = Claims("alice", "j1", "c", "k", 1 << 50, 0, 0, scopes.parse_scopes(texts), tuple(texts))
    return Grant(claims, expires_after_ms=1 << 50, key_not_after_ms=0)


def matched(texts: list[str], op: str, body: dict[str, Any]) -> bool:
    """The reference: every requirement of the request matched against the grant, one by one."""
    granted = scopes.parse_scopes(texts)
    return all(scopes.allowed(granted, *needs) for needs in requirements(op, body))


@settings(max_examples=400, deadline=None)
@given(texts=st.lists(st.sampled_from(SCOPE_TEXTS), max_size=3, unique=True), request=REQUESTS)
def test_check_decides_every_kv_request_as_the_per_requirement_match_does(texts: list[str], request: tuple[str, dict[str, Any]]) -> None:
    op, body = request
    auth = authoriser()
    try:
        auth.check(grant(texts), op, body)
        allowed = True
    except PermissionDenied:
        allowed = False
    assert allowed == matched(texts, op, body), (texts, op, body, whole_kv_ops(scopes.parse_scopes(texts)))


def test_only_a_grant_of_every_key_covers_a_whole_op() -> None:
    def ops(*texts: str) -> set[str]:
        return set(whole_kv_ops(scopes.parse_scopes(list(texts))))

    assert ops("admin:*") == ops("kv:*") == ops("kv:read:*", "kv:write:*") == {"read", "command"}
    assert ops("kv:read:*") == {"read"}  # a txn may read too, so writes need both
    assert ops("kv:write:*") == set()
    assert ops("kv:read:a*", "kv:write:a*") == ops("kv:*:a*") == ops("chat:*", "jobs:*") == set()


def test_a_command_that_does_not_parse_is_refused_under_a_whole_grant_too() -> None:
    # Refused at the edge as before, so it never reaches the log; a read is left to the service.
    body = {"service": "kv", "client_id": 1, "seq": 1, "ack_seq": 0, "command": ["set", "not bytes", b"v"]}
    with pytest.raises(InvalidArgument):
        authoriser().check(grant(["admin:*"]), "command", body)


def test_a_whole_grant_still_lapses_and_still_stops_at_other_services() -> None:
    auth = authoriser()
    expired = grant(["kv:*"])
    expired.expires_after_ms = 0
    with pytest.raises(Unauthenticated, match="token expired"):
        auth.check(expired, "read", {"service": "kv", "query": ["get", b"a"]})
    with pytest.raises(PermissionDenied, match="admin"):
        auth.check(grant(["kv:*"]), "read", {"service": "auth", "query": ["keys"]})


@settings(max_examples=300, deadline=None)
@given(
    now_ms=st.integers(0, 40),
    log_ms=st.integers(0, 40),
    expires_after_ms=st.integers(0, 40),
    key_not_after_ms=st.integers(0, 40),
    texts=st.sampled_from([["kv:*"], ["kv:read:a*"], ["admin:*"]]),
)
def test_check_refuses_exactly_when_the_grant_has_lapsed(
    now_ms: int, log_ms: int, expires_after_ms: int, key_not_after_ms: int, texts: list[str]
) -> None:
    """check() tests the lapse inline (it runs per request); it must refuse exactly when
    Grant.lapsed() does, at the later of the node's clock and the log's, with the same reason."""
    config = SimpleNamespace(auth_enabled=True, node_id=1, cluster_id="c", auth_leeway_ms=0)
    replica = SimpleNamespace(services={"auth": AuthService()}, last_timestamp_ms=log_ms, applied_index=0)
    auth = Authoriser(config, replica, lambda: now_ms)  # type: ignore[arg-type]
    g = grant(texts)
    g.expires_after_ms, g.key_not_after_ms = expires_after_ms, key_not_after_ms
    expected = g.lapsed(max(now_ms, log_ms))
    body = {"service": "kv", "query": ["get", b"a"]}
    if expected is None:
        auth.check(g, "read", body)
        assert auth.unauthenticated == 0
    else:
        with pytest.raises(Unauthenticated) as refused:
            auth.check(g, "read", body)
        assert refused.value.details["reason"] == expected.details["reason"]
        assert auth.unauthenticated == 1


def test_a_grant_keeps_its_whole_kv_ops_after_the_first_request() -> None:
    auth, g = authoriser(), grant(["kv:read:*"])
    assert g.whole_kv_ops is None
    auth.check(g, "read", {"service": "kv", "query": ["get", b"a"]})
    assert g.whole_kv_ops == frozenset({"read"})
    with pytest.raises(PermissionDenied):
        auth.check(g, "command", {"service": "kv", "client_id": 1, "seq": 1, "ack_seq": 0, "command": ["set", b"a", b"v"]})
