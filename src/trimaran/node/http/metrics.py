"""``GET /metrics``: the node's counters in the Prometheus text format, read at scrape time.

One :class:`~prometheus_client.CollectorRegistry` per node (several nodes may share a process, as in
the tests) holding one custom collector, :class:`NodeCollector`, which reads what the runtime
already counts (the driver, the writer, the client server, the edges, the chat hub) and the
services' own ``stats`` queries against the applied state. Nothing is incremented for Prometheus'
sake: ``cluster/`` and ``services/`` know nothing of metrics, and a scrape changes nothing.

Families (all prefixed ``trimaran_``; ``_total`` are counters since the node started):

======================================  ====================================================================
family                                  what
======================================  ====================================================================
``node_info{node_id,cluster_id}``       1
``raft_term``, ``raft_leader_id``       the current term and leader (0: none known)
``raft_role{role}``                     1 for this node's role, 0 for the others
``raft_{commit,applied,last,``          log positions
``persisted,snapshot}_index``
``raft_leader_changes_total``           leaders (a new term or leader) this node has seen
``raft_proposals_total``                client commands handed to the Replica
``raft_proposal_failures_total``        commands answered not_leader, storage_full, unavailable,
                                        too_large or timeout (they did not reach, or left, the log)
``raft_reads_total``,                   linearizable reads (and backup points) asked of this node, and
``raft_read_rounds_total``              the ReadIndex rounds it started as leader: reads per round is
                                        how well reads share a round's heartbeats
``raft_append_batch_entries``           histogram: entries per batch appended to the log
``storage_write_seconds``               histogram: one group commit (LMDB transaction and fsync)
``raft_snapshots_total{kind}``          snapshots ``taken`` here or ``installed`` from the leader
``raft_snapshot_bytes``                 size of the current snapshot
``raft_voters``, ``raft_learners``      membership
``raft_peer_lag_entries{peer}``         leader only: entries a peer is behind
``raft_peer_last_contact_seconds``      since a message from the peer was taken (any role)
``{peer}``
``raft_failure_tolerance``              leader only: voters that may still fail without losing quorum
``requests_total{service,op,outcome}``  requests served by the driver, from every edge; ``outcome`` is
                                        ``ok`` or the error code (KV ops: ``service="kv"``)
``request_duration_seconds``            histogram per ``service`` and ``kind`` (command, read, other):
                                        from the driver taking a request to answering it
``edge_requests_total{edge,outcome}``,  the same requests by the edge they came in on at this node:
``edge_request_duration_seconds{edge}`` ``native`` (the client port; a follower's forwarded requests
                                        too), ``http``, ``resp``
``kv_keys``, ``kv_used_bytes``,         the KV service's ``stats``
``kv_maxmemory_bytes``,
``kv_expired_keys_total``,
``kv_evicted_keys_total``
``jobs{queue,state}``                   jobs per queue and state (the jobs ``stats`` query, dead
                                        letters are ``state="dead"``)
``jobs_claims_total``                   claim requests answered
``jobs_lease_expiries_total{queue}``    leases ended by a job's timeout or its session's lapse
``jobs_dead_lettered_total{queue}``     jobs sent to the dead-letter list (both counted since this
                                        node built the queue: its start or a snapshot install)
``chat_channels``, ``chat_messages``,   the chat service's ``stats`` (messages kept, present sessions)
``chat_sessions``
``chat_publishes_total``                publishes answered
``chat_ws_connections``,                this node's WebSocket gateway: connections, channel
``chat_subscriptions``,                 subscriptions, slow consumers cut, events pushed
``chat_slow_consumers_closed_total``,
``chat_events_pushed_total``
``client_connections`` and the          the client port: open connections, refusals, protocol errors,
client port's ``_total`` counters       idle closes, answers refused
``auth_failures_total{reason}``         ``unauthenticated`` or ``permission_denied``, every edge
``http_requests_total``, ...            the HTTP edge and the RESP listener
======================================  ====================================================================

Besides these, prometheus_client's ``python_gc_collections_total{generation}`` (and objects
collected and uncollectable): the process's cycle collector, which a node process tunes
(:func:`trimaran.node.node.tune_gc`).

Scraping needs the ``cluster:read`` scope (or ``admin:*``) when auth is on, like ``/v1/status``:
Prometheus sends it with ``authorization: {credentials: <token>}`` in its scrape config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from trimaran.cluster.raft import Role
from trimaran.errors import TrimaranError
from trimaran.node.http.rest import Receive, Scope, Send
from trimaran.node.stats import Buckets
from trimaran.protocols.service import ApplyContext
from trimaran.services.jobs.args import JOB_STATES

if TYPE_CHECKING:
    from trimaran.node.node import Node

#: The content type of the text exposition format.
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
#: Job queues exported by name (in name order); a cluster with more is cut there (series are cheap
#: in Prometheus, but not unbounded).
JOB_QUEUES_EXPORTED_MAX = 200


def local_query(node: Node, service: str, query: list[Any]) -> Any:
    """A read-only query against this node's applied state (no Raft round: a scrape must not
    disturb the cluster, and may be a little stale); None if the service is absent or refuses."""
    assert node.driver is not None
    replica = node.driver.replica
    svc = replica.services.get(service)
    if svc is None:
        return None
    try:
        return svc.query(query, ApplyContext(replica.raft.log.applied_index, replica.last_timestamp_ms))
    except TrimaranError:
        return None


def job_queues(node: Node) -> list[dict[str, Any]]:
    """The first :data:`JOB_QUEUES_EXPORTED_MAX` job queues (in name order), each with its counts
    by state and its lease-expiry and dead-letter totals: the jobs service's ``queues`` query."""
    page = local_query(node, "jobs", ["queues", {"limit": JOB_QUEUES_EXPORTED_MAX}])
    return [] if page is None else list(page["items"])


def _histogram(name: str, doc: str, labels: list[str], series: list[tuple[list[str], Buckets]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in series:
        family.add_metric(values, hist.cumulative(), hist.sum)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class NodeCollector(Collector):
    """Reads one node's counters at each scrape; see the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        if node.driver is None:
            return
        yield from self._raft()
        yield from self._requests()
        yield from self._services()
        yield from self._edges()

    def _raft(self) -> Iterator[Metric]:
        node = self.node
        driver = node.driver
        assert driver is not None
        raft = driver.replica.raft
        lg = raft.log
        info = GaugeMetricFamily("trimaran_node_info", "This node's id and cluster.", labels=["node_id", "cluster_id"])
        info.add_metric([str(node.config.node_id), node.config.cluster_id], 1)
        yield info
        yield _gauge("trimaran_raft_term", "The current Raft term.", raft.term)
        yield _gauge("trimaran_raft_leader_id", "The leader this node knows (0: none).", raft.leader_id)
        role = GaugeMetricFamily("trimaran_raft_role", "1 for this node's Raft role.", labels=["role"])
        for r in Role:
            role.add_metric([r.name.lower()], 1 if raft.role == r else 0)
        yield role
        for name, value in (
            ("commit", lg.commit_index),
            ("applied", lg.applied_index),
            ("last", lg.last_index()),
            ("persisted", lg.persisted_index),
            ("snapshot", raft.snapshot.meta.last_index if raft.snapshot is not None else 0),
        ):
            yield _gauge(f"trimaran_raft_{name}_index", f"The {name} index of this node's log.", value)
        yield _counter("trimaran_raft_leader_changes", "Leaders (a new term or leader) this node has seen.", driver.leader_changes)
        yield _counter("trimaran_raft_proposals", "Client commands handed to the Replica.", driver.requests.proposals)
        yield _counter("trimaran_raft_reads", "Reads (and backup points) asked of this node's Replica.", driver.replica.reads_asked)
        yield _counter(
            "trimaran_raft_read_rounds", "ReadIndex rounds started as leader.", driver.replica.raft.read_rounds_started
        )
        yield _counter(
            "trimaran_raft_proposal_failures",
            "Commands that did not reach, or left, the log (not_leader, storage_full, unavailable, too_large, timeout).",
            driver.requests.proposal_failures,
        )
        yield _histogram("trimaran_raft_append_batch_entries", "Entries per batch appended to the log.", [], [([], driver.append_batch_entries)])
        writer = node._writer
        if writer is not None:
            yield _histogram(
                "trimaran_storage_write_seconds",
                "One group commit to storage: an LMDB transaction and its fsync.",
                [],
                [([], writer.write_seconds)],
            )
        snapshots = CounterMetricFamily("trimaran_raft_snapshots", "Snapshots taken here or installed from the leader.", labels=["kind"])
        snapshots.add_metric(["taken"], driver.snapshots_taken)
        snapshots.add_metric(["installed"], driver.snapshots_installed)
        yield snapshots
        yield _gauge("trimaran_raft_snapshot_bytes", "Size of the current snapshot.", len(raft.snapshot.data) if raft.snapshot is not None else 0)
        yield _gauge("trimaran_raft_voters", "Voters in the membership.", len(raft.membership.voters))
        yield _gauge("trimaran_raft_learners", "Learners in the membership.", len(raft.membership.learners))
        lag = GaugeMetricFamily("trimaran_raft_peer_lag_entries", "Leader only: entries a peer is behind.", labels=["peer"])
        if raft.role == Role.LEADER:
            last = lg.last_index()
            for peer, pr in sorted(raft.progress.items()):
                if peer != node.config.node_id:
                    lag.add_metric([str(peer)], max(0, last - pr.match))
        yield lag
        contact = GaugeMetricFamily(
            "trimaran_raft_peer_last_contact_seconds", "Seconds since a message from the peer was taken.", labels=["peer"]
        )
        for peer in node.config.peer_ids:
            ms = driver.last_contact_ms(peer)
            if ms is not None:
                contact.add_metric([str(peer)], ms / 1000)
        yield contact
        tolerance = driver.failure_tolerance()
        if tolerance is not None:
            yield _gauge(
                "trimaran_raft_failure_tolerance", "Leader only: voters that may still fail without losing quorum.", tolerance
            )

    def _requests(self) -> Iterator[Metric]:
        stats = self.node.driver.requests  # type: ignore[union-attr]
        total = CounterMetricFamily(
            "trimaran_requests", "Requests the driver served, from every edge.", labels=["service", "op", "outcome"]
        )
        claims = publishes = 0
        for (service, op, outcome), n in sorted(stats.outcomes.items()):
            total.add_metric([service, op, outcome], n)
            if outcome == "ok" and (service, op) == ("jobs", "claim"):
                claims += n
            elif outcome == "ok" and (service, op) == ("chat", "publish"):
                publishes += n
        yield total
        yield _histogram(
            "trimaran_request_duration_seconds",
            "From the driver taking a request to answering it.",
            ["service", "kind"],
            [([s, k], h) for (s, k), h in sorted(stats.latency.items())],
        )
        edges = CounterMetricFamily(
            "trimaran_edge_requests", "The same requests by the edge they came in on at this node.", labels=["edge", "outcome"]
        )
        for (edge, outcome), n in sorted(stats.edge_outcomes.items()):
            edges.add_metric([edge, outcome], n)
        yield edges
        yield _histogram(
            "trimaran_edge_request_duration_seconds",
            "From the driver taking a request to answering it, by the edge it came in on.",
            ["edge"],
            [([edge], h) for edge, h in sorted(stats.edge_latency.items())],
        )
        yield _counter("trimaran_jobs_claims", "Claim requests answered.", claims)
        yield _counter("trimaran_chat_publishes", "Publishes answered.", publishes)

    def _services(self) -> Iterator[Metric]:
        node = self.node
        kv = local_query(node, "kv", ["stats"])
        if kv is not None:
            yield _gauge("trimaran_kv_keys", "Keys in the KV cache.", kv["keys"])
            yield _gauge("trimaran_kv_used_bytes", "Bytes the KV cache counts as used.", kv["used_bytes"])
            yield _gauge("trimaran_kv_maxmemory_bytes", "The KV cache's memory cap (0: none).", kv["maxmemory_bytes"] or 0)
            yield _counter("trimaran_kv_expired_keys", "Keys expired (replicated: the same on every node).", kv["expired_keys_total"])
            yield _counter("trimaran_kv_evicted_keys", "Keys evicted (replicated: the same on every node).", kv["evicted_keys_total"])
        jobs = GaugeMetricFamily("trimaran_jobs", "Jobs per queue and state (dead: the dead-letter list).", labels=["queue", "state"])
        expiries = CounterMetricFamily(
            "trimaran_jobs_lease_expiries",
            "Leases that ended without an outcome (a job's timeout or its worker session's lapse), per queue.",
            labels=["queue"],
        )
        dead_lettered = CounterMetricFamily("trimaran_jobs_dead_lettered", "Jobs sent to the dead-letter list, per queue.", labels=["queue"])
        for item in job_queues(node):
            queue = item["queue"]
            for state in JOB_STATES:
                jobs.add_metric([queue, state], item[state])
            expiries.add_metric([queue], item["lease_expiries_total"])
            dead_lettered.add_metric([queue], item["dead_lettered_total"])
        yield jobs
        yield expiries
        yield dead_lettered
        chat = local_query(node, "chat", ["stats"])
        if chat is not None:
            yield _gauge("trimaran_chat_channels", "Chat channels.", chat["channels"])
            yield _gauge("trimaran_chat_messages", "Chat messages kept in history.", chat["messages"])
            yield _gauge("trimaran_chat_sessions", "Chat presence sessions.", chat["sessions"])
        hub = node.chat_hub
        if hub is not None:
            yield _gauge("trimaran_chat_ws_connections", "WebSocket connections to this node's gateway.", len(hub.connections))
            yield _gauge(
                "trimaran_chat_subscriptions", "Channel subscriptions on this node's gateway.", sum(len(c) for c in hub.by_channel.values())
            )
            yield _counter("trimaran_chat_slow_consumers_closed", "WebSocket connections cut as slow consumers.", hub.slow_closed)
            yield _counter("trimaran_chat_events_pushed", "Chat frames pushed to WebSocket connections.", hub.pushed)

    def _edges(self) -> Iterator[Metric]:
        node = self.node
        cs = node.client_server
        if cs is not None:
            yield _gauge("trimaran_client_connections", "Open client-port connections.", cs.connection_count)
            for name, value, doc in (
                ("connections_refused", cs.connections_refused, "Client connections refused (at the cap or shutting down)."),
                ("protocol_errors", cs.protocol_errors, "Client connections closed for a protocol error."),
                ("idle_closed", cs.idle_closed, "Client connections closed as idle."),
                ("answers_refused", cs.answers_refused, "Answers replaced by an error over the answer-byte caps."),
            ):
                yield _counter(f"trimaran_client_{name}", doc, value)
            auth = CounterMetricFamily("trimaran_auth_failures", "Requests or hellos refused by the authoriser.", labels=["reason"])
            auth.add_metric(["unauthenticated"], cs.authoriser.unauthenticated)
            auth.add_metric(["permission_denied"], cs.authoriser.permission_denied)
            yield auth
        if node.http_edge is not None:
            yield _counter("trimaran_http_requests", "HTTP requests.", node.http_edge.requests)
            yield _counter("trimaran_http_errors", "HTTP requests answered with an error.", node.http_edge.errors)
            yield _counter("trimaran_http_forwarded", "HTTP requests forwarded to the leader.", node.http_edge.forwarded)
        if node.resp_server is not None:
            yield _counter("trimaran_resp_connections", "RESP connections accepted.", node.resp_server.connections)
            yield _counter("trimaran_resp_commands", "RESP commands.", node.resp_server.commands)
        transport = node.transport
        if transport is not None:
            yield _counter("trimaran_peer_frames_sent", "Frames sent to peers.", transport.frames_sent)
            yield _counter("trimaran_peer_frames_received", "Frames received from peers.", transport.frames_received)
            yield _counter("trimaran_peer_frames_dropped", "Frames to peers dropped (queue full).", sum(transport.dropped_frames.values()))


class NodeMetrics:
    """The node's registry and its text rendering (what ``/metrics`` answers)."""

    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        # The process's cycle collector (python_gc_*: collections, collected and uncollectable
        # objects per generation): the node process tunes it (node.tune_gc), so show its work.
        GCCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsRoute:
    """``GET /metrics`` (a :class:`~trimaran.node.http.rest.Handler` needing ``cluster:read``)."""

    scoped = True

    def __init__(self, node: Node) -> None:
        self.metrics = NodeMetrics(node)

    async def __call__(self, scope: Scope, receive: Receive, send: Send, token: str | None) -> None:
        body = self.metrics.render()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", CONTENT_TYPE)]})
        await send({"type": "http.response.body", "body": body})
