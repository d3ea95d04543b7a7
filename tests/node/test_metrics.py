"""``GET /metrics`` scraped from a real (in-process, loopback) 3-node cluster with auth on, and
parsed with prometheus_client's own parser: the scope it needs, and values that move with what the
cluster does (KV writes, a job, the leader's view of its peers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.node.helpers import HOST, RawClient, in_process_cluster
from tests.node.test_auth_edge import Signer
from tests.node.test_http_rest import call
from trimaran.node.config import Address

TIMEOUT_S = 20
WRITES = 25


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(scraped: dict[Any, float], name: str, **labels: str) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(address: Address, token: str) -> dict[Any, float]:
    answer = await call(address, "GET", "/metrics", token=token)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(answer.body.decode())


async def test_metrics_need_cluster_read_and_move_with_the_cluster(tmp_path: Path) -> None:
    admin, user = Signer("admin-key"), Signer("user-key")
    async with in_process_cluster(
        tmp_path, 3, http_listen=Address(HOST, 0), resp_listen=Address(HOST, 0), auth_keys=(admin.trusted, user.trusted)
    ) as cluster:
        with trio.fail_after(TIMEOUT_S * 2):
            leader = await cluster.leader(timeout_s=TIMEOUT_S)
            http = {n: node.http_address for n, node in cluster.nodes.items()}
            reader = user.token(["cluster:read"])
            # The scope: none is 401, a KV-only token 403, cluster:read (or admin) 200.
            assert (await call(http[leader], "GET", "/metrics")).status == 401
            assert (await call(http[leader], "GET", "/metrics", token=user.token(["kv:*"]))).status == 403
            assert (await call(http[leader], "GET", "/metrics", token=admin.token(["admin:*"]))).status == 200
            # The dashboard's stream needs the same scope; its page and chart library load without
            # one (the page asks for it), and the page's policy allows scripts from this node only.
            assert (await call(http[leader], "GET", "/v1/dashboard/stream")).status == 401
            assert (await call(http[leader], "GET", "/v1/dashboard/stream", token=user.token(["kv:*"]))).status == 403
            page = await call(http[leader], "GET", "/")
            assert page.status == 200 and b"/v1/dashboard/plotly.min.js" in page.body
            csp = page.headers["content-security-policy"]
            assert "script-src 'self' 'unsafe-inline'" in csp and "http" not in csp and "connect-src 'self'" in csp
            chart_library = await call(http[leader], "GET", "/v1/dashboard/plotly.min.js")
            assert chart_library.status == 200 and b"plotly" in chart_library.body[:2000].lower()

            # Exactly one node says it is the leader, and it is the one status names.
            scraped = {n: await scrape(http[n], reader) for n in cluster.nodes}
            leaders = [n for n, s in scraped.items() if value(s, "trimaran_raft_role", role="leader") == 1]
            assert leaders == [leader]
            for n, s in scraped.items():
                assert value(s, "trimaran_raft_leader_id") == leader
                assert value(s, "trimaran_raft_term") == cluster.status(n)["term"] >= 1
                assert value(s, "trimaran_node_info", node_id=str(n), cluster_id="trimaran") == 1
            before = scraped[leader]
            assert value(before, "trimaran_raft_leader_changes_total") >= 1
            # The process's cycle collector (which a node's own process tunes): every generation.
            assert all(("python_gc_collections_total", (("generation", str(g)),)) in before for g in (0, 1, 2))
            assert value(before, "trimaran_auth_failures_total", reason="unauthenticated") >= 1  # the bad call above
            assert value(before, "trimaran_auth_failures_total", reason="permission_denied") >= 1

            # N writes through the client port: the KV ops counter grows by exactly N.
            client = await RawClient.connect(cluster.client_address(leader), token=admin.token(["admin:*"]))
            await client.register()
            for i in range(WRITES):
                body = client.command_body(["set", b"k%d" % i, b"v" * 100])
                body["service"] = "kv"
                await client.call("command", body)
            job = client.command_body(["enqueue", "mail", b"hello"])
            job["service"] = "jobs"
            await client.call("command", job)
            await client.aclose()
            # One write through the HTTP edge: counted under edge="http", the rest under "native".
            put = await call(http[leader], "PUT", "/v1/kv/by-http", body=b"x", token=admin.token(["admin:*"]))
            assert put.status == 200, put.body
            # And a read through the Redis port: counted under edge="resp".
            resp_at = cluster.nodes[leader].resp_address
            assert resp_at is not None
            r = redis.Redis(host=resp_at.host, port=resp_at.port, password=admin.token(["admin:*"]), socket_timeout=10)
            try:
                assert await trio.to_thread.run_sync(r.get, "by-http") == b"x"
            finally:
                r.close()
            after = await scrape(http[leader], reader)

            kv_set = "trimaran_requests_total"
            assert value(after, kv_set, service="kv", op="set", outcome="ok") - value(before, kv_set, service="kv", op="set", outcome="ok") == WRITES + 1  # and the HTTP one
            assert value(after, "trimaran_raft_proposals_total") - value(before, "trimaran_raft_proposals_total") == WRITES + 2
            assert value(after, "trimaran_kv_keys") == WRITES + 1
            # The RESP GET was a linearizable read on the leader: one read asked, one round at most.
            reads = value(after, "trimaran_raft_reads_total") - value(before, "trimaran_raft_reads_total")
            rounds = value(after, "trimaran_raft_read_rounds_total") - value(before, "trimaran_raft_read_rounds_total")
            assert reads >= 1 and 1 <= rounds <= reads
            native = "trimaran_edge_requests_total"
            # The sets, the job, and the client's register, all through the client port.
            assert value(after, native, edge="native", outcome="ok") - value(before, native, edge="native", outcome="ok") == WRITES + 2
            assert value(after, native, edge="http", outcome="ok") - value(before, native, edge="http", outcome="ok") >= 1
            assert value(after, native, edge="resp", outcome="ok") - value(before, native, edge="resp", outcome="ok") >= 1
            assert not [k for k in after if k[0] == native and ("edge", "other") in k[1]]  # every request has its edge
            assert value(after, "trimaran_edge_request_duration_seconds_count", edge="native") >= WRITES + 2
            assert value(after, "trimaran_kv_used_bytes") >= WRITES * 100
            assert value(after, "trimaran_jobs", queue="mail", state="ready") == 1
            assert value(after, "trimaran_jobs_lease_expiries_total", queue="mail") == 0  # counted in the service's unit tests
            assert value(after, "trimaran_jobs_dead_lettered_total", queue="mail") == 0
            latency = value(after, "trimaran_request_duration_seconds_count", service="kv", kind="command")
            assert latency - value(before, "trimaran_request_duration_seconds_count", service="kv", kind="command") == WRITES + 1
            # Every write was made durable by a group commit, timed; and appended in batches.
            assert value(after, "trimaran_storage_write_seconds_count") > value(before, "trimaran_storage_write_seconds_count")
            assert value(after, "trimaran_storage_write_seconds_sum") > 0
            assert value(after, "trimaran_raft_append_batch_entries_count") > value(before, "trimaran_raft_append_batch_entries_count")
            assert value(after, "trimaran_raft_commit_index") >= value(before, "trimaran_raft_commit_index") + WRITES / 2

            # The leader's view of its peers: both heard from lately, and a quorum with one to spare.
            peers = [n for n in cluster.nodes if n != leader]
            for peer in peers:
                assert value(after, "trimaran_raft_peer_last_contact_seconds", peer=str(peer)) < 2.0
                assert ("trimaran_raft_peer_lag_entries", (("peer", str(peer)),)) in after
            assert value(after, "trimaran_raft_failure_tolerance") == 1
            # Followers apply the same writes, and export no failure tolerance (only the leader knows).
            follower = peers[0]
            await cluster.wait_for(
                lambda: cluster.status(follower)["applied_index"] >= cluster.status(leader)["commit_index"], TIMEOUT_S, "follower applied"
            )
            on_follower = await scrape(http[follower], reader)
            assert value(on_follower, "trimaran_kv_keys") == WRITES + 1
            assert ("trimaran_raft_failure_tolerance", ()) not in on_follower
