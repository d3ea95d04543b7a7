"""Scopes: the grammar, deny by default, and (hypothesis) a grant never reaches outside its pattern."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimaran.errors import InvalidArgument
from trimaran.protocols.scopes import ACTIONS, allowed, needed, parse_scope, parse_scopes


def test_exact_and_prefix_patterns() -> None:
    exact, prefix = parse_scope("chat:subscribe:room.42"), parse_scope("kv:read:user:*")
    assert exact.allows("chat", "subscribe", b"room.42") and not exact.allows("chat", "subscribe", b"room.421")
    assert not exact.allows("chat", "publish", b"room.42") and not exact.allows("kv", "subscribe", b"room.42")
    assert prefix.allows("kv", "read", b"user:42") and prefix.allows("kv", "read", b"user:")
    assert not prefix.allows("kv", "read", b"use") and not prefix.allows("kv", "write", b"user:42")


def test_a_prefix_request_needs_a_prefix_grant_covering_all_of_it() -> None:
    grants = parse_scopes(["kv:read:user:*", "kv:read:order:7"])
    assert allowed(grants, "kv", "read", b"user:4", name_is_prefix=True)  # every key under user:4
    assert not allowed(grants, "kv", "read", b"us", name_is_prefix=True)  # would reach usr, use...
    assert not allowed(grants, "kv", "read", b"order:7", name_is_prefix=True)  # order:70 too


def test_wildcards_and_admin() -> None:
    assert parse_scope("kv:*").allows("kv", "write", b"anything")
    assert parse_scope("kv:*:tmp:*").allows("kv", "write", b"tmp:1")
    assert not parse_scope("kv:*").allows("jobs", "enqueue", b"q")
    assert parse_scope("cluster:read").allows("cluster", "read")
    admin = parse_scope("admin:*")
    assert all(admin.allows(svc, act, b"x") for svc, acts in ACTIONS.items() for act in acts)


def test_deny_by_default() -> None:
    assert not allowed((), "kv", "read", b"k")
    assert not allowed(parse_scopes(["jobs:work:emails"]), "kv", "read", b"emails")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "1..512"),
        ("db:read:*", "unknown service"),
        ("kv:fly:*", "unknown action"),
        ("kv:read", "needs a pattern"),
        ("kv:read:", "needs a pattern"),
        ("kv:read:a*b", "only end a pattern"),
        ("admin:kv", "exactly 'admin:*'"),
        ("cluster:read:x", "name no pattern"),
        ("x" * 600, "1..512"),
    ],
)
def test_malformed_scopes_are_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(reason)):
        parse_scope(text)


def test_a_token_holds_a_bounded_list() -> None:
    with pytest.raises(InvalidArgument, match="list"):
        parse_scopes("kv:*")
    with pytest.raises(InvalidArgument, match="at most"):
        parse_scopes(["kv:*"] * 65)


def test_needed_names_the_missing_scope() -> None:
    assert needed("kv", "write", b"user:1") == "kv:write:user:1"
    assert needed("cluster", "read") == "cluster:read"
    assert needed("kv", "read", b"\xff") == "kv:read:\\xff"
    # What a prefix request needs is a grantable prefix scope; "any name" reads as such.
    assert needed("kv", "read", b"user:", True) == "kv:read:user:*" and parse_scope("kv:read:user:*").prefix
    assert needed("jobs", "work", None) == "jobs:work:<any>"


def test_any_name_is_covered_by_a_grant_of_the_action_on_some_name() -> None:
    granted = parse_scopes(["jobs:work:emails", "jobs:read:rep*"])
    assert allowed(granted, "jobs", "work", None) and allowed(granted, "jobs", "read", None)
    assert not allowed(granted, "jobs", "manage", None) and not allowed(granted, "jobs", "enqueue", None)
    assert not allowed(parse_scopes(["kv:*"]), "jobs", "work", None)
    assert allowed(parse_scopes(["admin:*"]), "jobs", "manage", None)


_names = st.binary(max_size=12)
_text = st.text(alphabet="abc:.*", max_size=8).filter(lambda t: "*" not in t)
_services = st.sampled_from(["kv", "jobs", "chat"])


@given(_services, st.data(), _text, st.booleans(), _names, st.booleans())
def test_a_grant_never_matches_a_name_outside_its_pattern(
    service: str, data: st.DataObject, pattern: str, prefix: bool, name: bytes, name_is_prefix: bool
) -> None:
    action = data.draw(st.sampled_from(ACTIONS[service]))
    if not pattern and not prefix:
        return  # an empty exact pattern is not a scope
    grant = parse_scope(f"{service}:{action}:{pattern}{'*' if prefix else ''}")
    base = pattern.encode()
    inside = name.startswith(base) if prefix else (name == base and not name_is_prefix)
    assert grant.allows(service, action, name, name_is_prefix) == inside
    other = next(a for a in (*ACTIONS[service], "none") if a != action)
    assert not grant.allows(service, other, name, name_is_prefix)
