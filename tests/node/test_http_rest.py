"""The REST API of the HTTP edge (``--http-listen``) on an in-process cluster: KV routes with TTL and
CAS, typed JSON errors, the leader redirect, bearer tokens and scopes, status and the OpenAPI
document. Requests are made with the standard library's ``http.client`` in a worker thread."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.node.helpers import HOST, in_process_cluster
from trimaran.node.config import Address
from trimaran.protocols import tokens
from trimaran.protocols.tokens import TrustedKey

TIMEOUT_S = 15


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    address: Address, method: str, path: str, body: bytes | None = None, token: str | None = None, headers: dict[str, str] | None = None
) -> Answer:
    def run() -> Answer:
        conn = http.client.HTTPConnection(address.host, address.port, timeout=10)
        try:
            all_headers = dict(headers or {})
            if token is not None:
                all_headers["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    return await trio.to_thread.run_sync(run)



async def leader_http(cluster: Any) -> Address:
    leader = await cluster.leader(timeout_s=TIMEOUT_S)
    address = cluster.nodes[leader].http_address
    assert address is not None
    return address


async def test_kv_routes_with_ttl_cas_and_typed_errors(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            http = await leader_http(cluster)
            put = await call(http, "PUT", "/v1/kv/user%3A1", b"alice")
            assert put.status == 200, put.body
            revision = put.json["revision"]
            got = await call(http, "GET", "/v1/kv/user%3A1")
            assert got.status == 200 and got.json == {"key": "user:1", "value": "alice", "revision": revision, "ttl_remaining_ms": None}
            # CAS on the revision: the stale one fails with a typed 412, the current one wins.
            stale = await call(http, "PUT", f"/v1/kv/user%3A1?if_revision={revision - 1}", b"bob")
            assert stale.status == 412 and stale.json["error"]["code"] == "condition_failed"
            assert stale.json["error"]["name"] == "ConditionFailed"
            assert (await call(http, "PUT", f"/v1/kv/user%3A1?if_revision={revision}", b"bob")).status == 200
            # TTL, binary values, delete, absent keys.
            ttl = await call(http, "PUT", "/v1/kv/t?ttl_ms=60000", b"\xff\x00")
            assert ttl.status == 200
            got = (await call(http, "GET", "/v1/kv/t")).json
            assert got["value_base64"] == "/wA=" and 0 < got["ttl_remaining_ms"] <= 60000
            assert (await call(http, "DELETE", "/v1/kv/t")).json == {"deleted": True}
            missing = await call(http, "GET", "/v1/kv/t")
            assert missing.status == 404 and missing.json["error"]["code"] == "not_found"
            # Bad input: typed errors, nothing changed.
            assert (await call(http, "PUT", "/v1/kv/x?ttl_ms=abc", b"v")).json["error"]["code"] == "invalid_argument"
            assert (await call(http, "PUT", "/v1/kv/x?nope=1", b"v")).status == 400
            big = await call(http, "PUT", "/v1/kv/x", b"v" * (2 << 20))
            assert big.status == 413 and big.json["error"]["name"] == "TooLarge"
            assert (await call(http, "GET", "/v1/kv/x?consistency=maybe")).status == 400
            assert (await call(http, "PATCH", "/v1/kv/x")).status == 405
            assert (await call(http, "GET", "/v2/anything")).status == 404
            assert (await call(http, "GET", "/v1/kv/x")).status == 404
            status = await call(http, "GET", "/v1/status")
            assert status.status == 200 and status.json["role"] == "leader"
            doc = (await call(http, "GET", "/v1/openapi.json")).json
            assert doc["openapi"].startswith("3.") and "/v1/kv/{key}" in doc["paths"]


async def test_a_follower_forwards_what_only_the_leader_serves(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            follower = next(i for i in cluster.nodes if i != leader)
            http = cluster.nodes[follower].http_address
            edge = cluster.nodes[follower].http_edge
            assert http is not None and edge is not None
            put = await call(http, "PUT", "/v1/kv/k?ttl_ms=50000", b"v")
            assert put.status == 200, put.body
            got = await call(http, "GET", "/v1/kv/k")
            assert got.status == 200 and got.json["value"] == "v" and got.json["revision"] == put.json["revision"]
            # The session's registration and the write went to the leader's client port.
            assert edge.forwarded >= 2
            # A failed condition comes back from the leader as the same typed error.
            stale = await call(http, "PUT", "/v1/kv/k?if_absent", b"w")
            assert stale.status == 412 and stale.json["error"]["code"] == "condition_failed"


async def test_bearer_tokens_and_scopes(tmp_path: Path) -> None:
    private = tokens.new_private_key()
    public = tokens.public_key_of(private)
    kid = tokens.key_id(public)
    now_ms = int(time.time() * 1000)

    def token(scopes: list[str], jti: str) -> str:
        return tokens.sign(private, kid=kid, sub="app", scopes=scopes, audience="trimaran", now_ms=now_ms, ttl_ms=600_000, jti=jti)

    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0), auth_keys=(TrustedKey(kid, public),)) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            http = await leader_http(cluster)
            writer, reader = token(["kv:write:user:*", "kv:read:user:*"], "w"), token(["kv:read:user:*"], "r")
            none = await call(http, "GET", "/v1/kv/user:1")
            assert none.status == 401 and none.json["error"]["code"] == "unauthenticated"
            assert (await call(http, "GET", "/v1/kv/user:1", headers={"Authorization": "Basic x"})).status == 401
            assert (await call(http, "GET", "/v1/kv/user:1", token="v4.public.garbage")).status == 401
            assert (await call(http, "PUT", "/v1/kv/user:1", b"a", token=writer)).status == 200
            assert (await call(http, "GET", "/v1/kv/user:1", token=reader)).json["value"] == "a"
            denied = await call(http, "PUT", "/v1/kv/user:1", b"b", token=reader)
            assert denied.status == 403 and denied.json["error"]["details"]["scope"] == "kv:write:user:1"
            assert (await call(http, "GET", "/v1/kv/admin", token=reader)).status == 403
            assert (await call(http, "GET", "/v1/status", token=reader)).status == 403
            assert (await call(http, "GET", "/v1/openapi.json")).status == 200  # no token needed
            # A revoked token is refused at its next request (the cached grant is dropped).
            admin = token(["admin:*"], "admin")
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            edge = cluster.nodes[leader].http_edge
            assert edge is not None
            await edge.command("auth", ["revoke", "r", now_ms + 600_000], 0)
            await cluster.wait_for(lambda: edge.authoriser.generation > 0, what="revocation applied")
            revoked = await call(http, "GET", "/v1/kv/user:1", token=reader)
            assert revoked.status == 401 and "revoked" in revoked.json["error"]["message"]
            assert (await call(http, "GET", "/v1/status", token=admin)).status == 200


async def test_https_and_forwarding_over_tls_with_the_callers_token(tmp_path: Path) -> None:
    import ssl

    from trimaran.node.tls import CA_CERT, init_certs

    tls = tmp_path / "tls"
    init_certs(tls, [1, 2, 3])
    private = tokens.new_private_key()
    public = tokens.public_key_of(private)
    kid = tokens.key_id(public)
    now_ms = int(time.time() * 1000)
    writer = tokens.sign(private, kid=kid, sub="app", scopes=["kv:*"], audience="trimaran", now_ms=now_ms, ttl_ms=600_000, jti="w")
    reader = tokens.sign(private, kid=kid, sub="ro", scopes=["kv:read:*"], audience="trimaran", now_ms=now_ms, ttl_ms=600_000, jti="r")
    ctx = ssl.create_default_context(cafile=str(tls / CA_CERT))

    async def https(address: Address, method: str, path: str, body: bytes | None, token: str) -> Answer:
        def run() -> Answer:
            conn = http.client.HTTPSConnection(address.host, address.port, timeout=10, context=ctx)
            try:
                conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}"})
                response = conn.getresponse()
                return Answer(response.status, {}, response.read())
            finally:
                conn.close()

        return await trio.to_thread.run_sync(run)

    overrides = dict(http_listen=Address(HOST, 0), tls_dir=str(tls), auth_keys=(TrustedKey(kid, public),))
    async with in_process_cluster(tmp_path / "data", 3, **overrides) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            follower = next(i for i in cluster.nodes if i != leader)
            address = cluster.nodes[follower].http_address
            assert address is not None
            put = await https(address, "PUT", "/v1/kv/k", b"over https", writer)
            assert put.status == 200, put.body
            assert cluster.nodes[follower].http_edge.forwarded >= 1  # type: ignore[union-attr]
            # The leader checks the forwarded token too: the reader's write is refused there or here.
            denied = await https(address, "PUT", "/v1/kv/k", b"no", reader)
            assert denied.status == 403, denied.body
            got = await https(address, "GET", "/v1/kv/k", None, reader)
            assert got.status == 200 and got.json["value"] == "over https"


async def test_chat_routes_publish_history_and_presence(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            follower = next(i for i in cluster.nodes if i != leader)
            http = cluster.nodes[follower].http_address
            assert http is not None
            first = await call(http, "POST", "/v1/chat/room.1", b"hello")
            assert first.status == 200 and first.json["offset"] == 1, first.body
            assert (await call(http, "POST", "/v1/chat/room.1", b"\xff")).json["offset"] == 2
            typing = await call(http, "POST", "/v1/chat/room.1?ephemeral", b"...")
            assert typing.status == 200 and typing.json["offset"] is None
            page = (await call(http, "GET", "/v1/chat/room.1?since=0")).json
            assert [m["offset"] for m in page["messages"]] == [1, 2]
            assert page["messages"][0]["data"] == "hello" and page["messages"][1]["data_base64"] == "/w=="
            assert page["recovered"] is True and page["epoch"] == first.json["epoch"]
            assert (await call(http, "GET", "/v1/chat/room.1?since=1")).json["messages"][0]["offset"] == 2
            assert (await call(http, "GET", "/v1/chat/room.1/presence")).json["members"] == []
            assert (await call(http, "POST", "/v1/chat/bad%20name", b"x")).status == 400
            assert (await call(http, "GET", "/v1/chat/room.1?since=x")).status == 400
            assert (await call(http, "DELETE", "/v1/chat/room.1")).status == 405
