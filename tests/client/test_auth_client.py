"""The client library against a real in-process node with auth on: the token in the hello,
``TRIMARAN_TOKEN``, a refresh through ``token_provider`` when the token expires (once, then the
call is retried; exactly-once holds), and every other refusal raised as its typed error."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest
import trio

import trimaran
from trimaran import errors
from trimaran.node.node import Node

from tests.node.helpers import in_process_cluster
from tests.node.test_auth_edge import Signer, admin, auth_command

SCOPES = ["kv:*"]


@pytest.fixture(scope="module")
def key() -> Signer:
    return Signer("client-key")


@pytest.fixture
async def node(tmp_path: Path, key: Signer) -> AsyncIterator[Node]:
    async with in_process_cluster(tmp_path, 1, auth_keys=(key.trusted,), auth_leeway_ms=0) as cluster:
        await cluster.leader()
        yield cluster.nodes[1]


def endpoint(node: Node) -> str:
    return str(node.client_address)


class Provider:
    def __init__(self, key: Signer, ttl_ms: int = 600_000) -> None:
        self.key, self.ttl_ms, self.calls = key, ttl_ms, 0

    def __call__(self) -> str:
        self.calls += 1
        return self.key.token(SCOPES, ttl_ms=self.ttl_ms)


async def test_an_expired_token_is_refreshed_once_and_the_command_applies_once(node: Node, key: Signer) -> None:
    provider = Provider(key)
    async with trimaran.connect(endpoint(node), token=key.token(SCOPES, ttl_ms=1_000), token_provider=provider) as c:
        assert await c.kv.incr("n") == 1
        await trio.sleep(1.1)
        assert await c.kv.incr("n") == 2  # refused as expired, refreshed, retried under the same seq
        assert provider.calls == 1
        assert (await c.kv.get("n")).value == b"2"  # type: ignore[union-attr]
        assert provider.calls == 1


async def test_a_token_expired_before_the_hello_is_refreshed_too(node: Node, key: Signer) -> None:
    provider = Provider(key)
    stale = key.token(SCOPES, now_ms=key_now() - 120_000, ttl_ms=60_000)
    async with trimaran.connect(endpoint(node), token=stale, token_provider=provider) as c:
        await c.kv.set("k", "v")
    assert provider.calls == 1


async def test_the_provider_gives_the_first_token_when_none_is_given(node: Node, key: Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRIMARAN_TOKEN", raising=False)
    provider = Provider(key)
    async with trimaran.connect(endpoint(node), token_provider=provider) as c:
        await c.kv.set("k", "v")
    assert provider.calls == 1


async def test_without_a_provider_an_expired_token_raises(node: Node, key: Signer) -> None:
    async with trimaran.connect(endpoint(node), token=key.token(SCOPES, ttl_ms=1_000)) as c:
        await c.kv.set("k", "v")
        await trio.sleep(1.1)
        with pytest.raises(errors.Unauthenticated, match="expired"):
            await c.kv.set("k", "w")


async def test_a_revoked_token_raises_even_with_a_provider(node: Node, key: Signer) -> None:
    provider = Provider(key)
    async with trimaran.connect(endpoint(node), token=key.token(SCOPES, jti="revoke-me"), token_provider=provider) as c:
        await c.kv.set("k", "v")
        ops = await admin(node, key)
        await auth_command(ops, ["revoke", "revoke-me", 0])
        await ops.aclose()
        with pytest.raises(errors.Unauthenticated, match="revoked"):
            await c.kv.set("k", "w")
    assert provider.calls == 0


async def test_a_missing_scope_raises_permission_denied(node: Node, key: Signer) -> None:
    async with trimaran.connect(endpoint(node), token=key.token(["kv:read:public:*"])) as c:
        assert await c.kv.get("public:x") is None
        with pytest.raises(errors.PermissionDenied, match="kv:write:secret") as info:
            await c.kv.set("secret", "v")
        assert info.value.details == {"scope": "kv:write:secret"}
        with pytest.raises(errors.PermissionDenied, match="cluster:read"):
            await c.status()


async def test_the_token_comes_from_trimaran_token_when_none_is_given(node: Node, key: Signer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRIMARAN_TOKEN", key.token(SCOPES))
    async with trimaran.connect(endpoint(node)) as c:
        await c.kv.set("k", "v")
    monkeypatch.delenv("TRIMARAN_TOKEN")
    async with trimaran.connect(endpoint(node)) as c:
        with pytest.raises(errors.Unauthenticated, match="requires a token"):
            await c.kv.set("k", "v")


def key_now() -> int:
    from tests.node.test_auth_edge import now_ms

    return now_ms()
