"""The live dashboard: ``GET /`` on the HTTP port, fed by ``GET /v1/dashboard/stream``.

=================================  ========================================================================
route                              answer
=================================  ========================================================================
``GET /``                          ``dashboard.html`` (no token needed to load it; it asks for one like
                                   the chat page: ``/#token=...``, a paste box, or localStorage)
``GET /v1/dashboard/plotly.min.js``  the chart library, read from the installed ``plotly`` package's own
                                   files (never copied into this repository, never from a CDN)
``GET /v1/dashboard/stream``       ``text/event-stream``: one ``data: {json}`` view every
                                   :data:`INTERVAL_S` (``cluster:read``; the page reads it with
                                   ``fetch`` so it can send ``Authorization``, which EventSource cannot)
``GET /metrics``                   Prometheus text (:mod:`~trimaran.node.http.metrics`)
=================================  ========================================================================

A view is built on the node that serves the page: its own ``status`` plus every other member's,
asked on the member's client port with the viewer's token (at most :data:`MEMBER_TIMEOUT_S`; no
answer: the member is shown down), the services' ``stats`` against this node's applied state, and
rates from the difference with the previous view (ops/s and p99 latency per service, summed over
the members that answered both times). One view is shared by every viewer for
:data:`VIEW_REUSE_S`, and at most :data:`STREAMS_MAX` streams are open at once, so viewers cannot
turn the node into a status storm.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from trimaran.errors import Unavailable
from trimaran.node.clock import wall_clock_ms
from trimaran.node.config import Address
from trimaran.node.http.metrics import MetricsRoute, job_queues, local_query
from trimaran.node.http.rest import Handler, Receive, Scope, Send, send_page
from trimaran.node.probe import fetch_status
from trimaran.node.stats import LATENCY_BUCKETS_S, quantile
from trimaran.services.jobs.args import JOB_STATES

if TYPE_CHECKING:
    from trimaran.node.node import Node

#: Seconds between two views on a stream.
INTERVAL_S = 1.0
#: A view younger than this is sent again rather than built again (several viewers).
VIEW_REUSE_S = 0.5
#: How long a member may take to answer ``status`` before it is shown down.
MEMBER_TIMEOUT_S = 1.0
#: Dashboard streams open at once on one node.
STREAMS_MAX = 16
#: A stream ends after this long (the page reconnects): no connection lives forever.
STREAM_LIFETIME_S = 3600.0
#: Recent errors and leader changes shown.
ERRORS_SHOWN = 20
LEADER_CHANGES_SHOWN = 30
#: Chat channels listed (the busiest by subscribers and members).
CHANNELS_SHOWN = 20
#: The page's content security policy: scripts only inline or from this node (the chart library),
#: data only from this node.
DASHBOARD_CSP = b"default-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; script-src 'self' 'unsafe-inline'; img-src 'self' data:"


@functools.cache
def dashboard_page() -> bytes:
    return importlib.resources.files("trimaran.node.http").joinpath("dashboard.html").read_bytes()


@functools.cache
def plotly_js() -> bytes:
    """plotly.js as the ``plotly`` Python package ships it (``package_data/plotly.min.js``)."""
    import plotly  # a run-time dependency (setup.cfg); imported here so only the dashboard pays for it

    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()


class PageRoute:
    scoped = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send, token: str | None) -> None:
        await send_page(send, dashboard_page(), DASHBOARD_CSP)


class PlotlyRoute:
    scoped = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send, token: str | None) -> None:
        headers = [(b"content-type", b"text/javascript; charset=utf-8"), (b"cache-control", b"max-age=86400")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": plotly_js()})


def _sum_requests(status: dict[str, Any]) -> dict[str, Any]:
    """Per service: requests answered and latency bucket counts, from one member's status."""
    out: dict[str, Any] = {}
    requests = status.get("requests") or {}
    for service, _op, _outcome, n in requests.get("outcomes", ()):
        out.setdefault(service, {"count": 0, "buckets": [0] * (len(LATENCY_BUCKETS_S) + 1)})["count"] += n
    for service, _kind, hist in requests.get("latency", ()):
        entry = out.setdefault(service, {"count": 0, "buckets": [0] * (len(LATENCY_BUCKETS_S) + 1)})
        if len(hist.get("counts", ())) == len(entry["buckets"]):
            entry["buckets"] = [a + b for a, b in zip(entry["buckets"], hist["counts"])]
    return out


class ClusterView:
    """Builds the views the streams send; see the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.streams = 0
        self._view: dict[str, Any] | None = None
        self._built_at = float("-inf")
        self._lock = trio.Lock()
        #: Per member: (trio time, per-service totals) of the previous view, for rates.
        self._previous: dict[int, tuple[float, dict[str, Any]]] = {}
        #: Members that did not answer, as errors for the page (wall ms, member, text).
        self._errors: deque[list[Any]] = deque(maxlen=ERRORS_SHOWN)
        self._down: set[int] = set()

    async def view(self, token: str | None) -> dict[str, Any]:
        async with self._lock:
            if self._view is None or trio.current_time() - self._built_at >= VIEW_REUSE_S:
                self._view = await self._build(token)
                self._built_at = trio.current_time()
            return self._view

    async def _member_statuses(self, own: dict[str, Any], token: str | None) -> dict[int, dict[str, Any] | None]:
        node = self.node
        assert node.http_edge is not None
        statuses: dict[int, dict[str, Any] | None] = {node.config.node_id: own}

        async def ask(member: int, address: str) -> None:
            statuses[member] = await fetch_status(
                Address.parse(address, "member address"), node.config.cluster_id, MEMBER_TIMEOUT_S, token, node.http_edge.forward_tls  # type: ignore[union-attr]
            )

        async with trio.open_nursery() as nursery:
            for member in own["members"]:
                if member["node_id"] == node.config.node_id:
                    continue
                if member["address"]:
                    nursery.start_soon(ask, member["node_id"], member["address"])
                else:
                    statuses[member["node_id"]] = None
        return statuses

    async def _build(self, token: str | None) -> dict[str, Any]:
        node = self.node
        own = node.status()
        statuses = await self._member_statuses(own, token)
        now_s = trio.current_time()
        leader_status = next((s for s in statuses.values() if s and s["role"] == "leader"), None)
        progress = {p["node_id"]: p for p in (leader_status or {}).get("progress", ())}
        members = []
        for member in own["members"]:
            n = member["node_id"]
            status = statuses.get(n)
            row: dict[str, Any] = {"node_id": n, "voter": member["role"] == "voter", "address": member["address"], "up": status is not None}
            if status is not None:
                for field in ("role", "term", "commit_index", "applied_index", "last_index", "leader_id"):
                    row[field] = status.get(field)
                self._down.discard(n)
            elif n not in self._down:  # once when it goes down, not once per view
                self._down.add(n)
                self._errors.append([wall_clock_ms(), n, "dashboard", "down", f"node {n} gave no status within {MEMBER_TIMEOUT_S:g} s"])
            pr = progress.get(n)
            if pr is not None:
                row["lag"] = pr["lag"]
                row["last_contact_ms"] = pr.get("last_contact_ms")
            members.append(row)
        voters = [m for m in members if m["voter"]]
        quorum = len(voters) // 2 + 1
        history: dict[tuple[int, int], int] = {}
        errors: list[list[Any]] = list(self._errors)
        for n, status in statuses.items():
            if status is None:
                continue
            for at_ms, term, leader in status.get("leader_history", ()):
                key = (term, leader)
                history[key] = min(history.get(key, at_ms), at_ms)
            for at_ms, service, op, code, message in (status.get("requests") or {}).get("recent_errors", ()):
                errors.append([at_ms, n, f"{service} {op}", code, message])
        errors.sort(key=lambda e: e[0], reverse=True)
        return {
            "at_ms": wall_clock_ms(),
            "served_by": node.config.node_id,
            "members": members,
            "leader": {"id": leader_status["node_id"], "term": leader_status["term"]} if leader_status else None,
            "leader_changes": [[at, term, leader] for (term, leader), at in sorted(history.items(), key=lambda kv: kv[1])][-LEADER_CHANGES_SHOWN:],
            "voters": len(voters),
            "quorum": quorum,
            "failure_tolerance": sum(1 for m in voters if m["up"]) - quorum,
            "services": self._rates(statuses, now_s),
            "kv": local_query(node, "kv", ["stats"]),
            "jobs": self._jobs(),
            "chat": self._chat(),
            "errors": errors[:ERRORS_SHOWN],
        }

    def _rates(self, statuses: dict[int, dict[str, Any] | None], now_s: float) -> dict[str, Any]:
        """ops/s and p99 latency (ms) per service since the previous view, over members that
        answered both times (a restarted member's counters start again: its drop is skipped)."""
        totals: dict[str, dict[str, Any]] = {}
        current: dict[int, tuple[float, dict[str, Any]]] = {}
        for n, status in statuses.items():
            if status is None:
                continue
            sums = _sum_requests(status)
            current[n] = (now_s, sums)
            before = self._previous.get(n)
            if before is None:
                continue
            dt = now_s - before[0]
            for service, entry in sums.items():
                old = before[1].get(service, {"count": 0, "buckets": [0] * len(entry["buckets"])})
                delta = entry["count"] - old["count"]
                if delta < 0 or dt <= 0:
                    continue
                total = totals.setdefault(service, {"ops": 0.0, "buckets": [0] * len(entry["buckets"])})
                total["ops"] += delta / dt
                total["buckets"] = [t + max(0, a - b) for t, a, b in zip(total["buckets"], entry["buckets"], old["buckets"])]
        self._previous = current
        out = {}
        for service, total in sorted(totals.items()):
            p99_s = quantile(LATENCY_BUCKETS_S, total["buckets"], 0.99)
            out[service] = {"ops_per_s": round(total["ops"], 2), "p99_ms": None if p99_s is None else p99_s * 1000}
        return out

    def _jobs(self) -> dict[str, dict[str, int]]:
        return {item["queue"]: {state: item[state] for state in JOB_STATES} for item in job_queues(self.node)}

    def _chat(self) -> dict[str, Any]:
        stats = local_query(self.node, "chat", ["stats"]) or {}
        hub = self.node.chat_hub
        subscribers = {ch: len(conns) for ch, conns in hub.by_channel.items()} if hub is not None else {}
        listing = local_query(self.node, "chat", ["channels", {"limit": CHANNELS_SHOWN * 5}]) or {"channels": []}
        channels = [
            {"channel": name, "top": top, "members": present, "subscribers": subscribers.get(name, 0)}
            for name, _epoch, top, _oldest, present in listing["channels"]
        ]
        channels.sort(key=lambda c: (-c["subscribers"], -c["members"], c["channel"]))
        return {
            "channels": stats.get("channels", 0),
            "sessions": stats.get("sessions", 0),
            "messages": stats.get("messages", 0),
            "subscribers": sum(subscribers.values()),
            "top": channels[:CHANNELS_SHOWN],
        }


class StreamRoute:
    """``GET /v1/dashboard/stream`` (``cluster:read``): server-sent events, one view per interval."""

    scoped = True

    def __init__(self, view: ClusterView) -> None:
        self.cluster = view

    async def __call__(self, scope: Scope, receive: Receive, send: Send, token: str | None) -> None:
        cluster = self.cluster
        if cluster.streams >= STREAMS_MAX:
            raise Unavailable(f"{STREAMS_MAX} dashboard streams are open on this node; close one or use another node")
        cluster.streams += 1
        try:
            headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_until_disconnect, receive, nursery.cancel_scope)
                with trio.move_on_after(STREAM_LIFETIME_S):
                    while True:
                        view = await cluster.view(token)
                        await send({"type": "http.response.body", "body": b"data: " + json.dumps(view).encode() + b"\n\n", "more_body": True})
                        await trio.sleep(INTERVAL_S)
                nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the viewer went away mid-write
        finally:
            cluster.streams -= 1


async def _until_disconnect(receive: Receive, cancel: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    cancel.cancel()


def operator_routes(node: Node) -> dict[bytes, Handler]:
    """The operator's routes on the HTTP port: ``/metrics`` and the dashboard."""
    return {
        b"/metrics": MetricsRoute(node),
        b"/": PageRoute(),
        b"/v1/dashboard/plotly.min.js": PlotlyRoute(),
        b"/v1/dashboard/stream": StreamRoute(ClusterView(node)),
    }
