"""A whole-cluster view built from every node's own ``status`` answer (``trimaran status``).

Each node only knows itself well, so the view asks every endpoint (and every member address it
learns on the way) concurrently, then merges: the leader is the node that says it leads in the
highest term, and a node's lag is how far its applied index trails the leader's commit index. A node
that does not answer in time is shown as down, never left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from trimaran.errors import TrimaranError

from .client import Client
from .connection import Address


@dataclass(slots=True)
class NodeStatus:
    """One node as it described itself (or as unreachable)."""

    address: Address | None
    node_id: int | None = None
    up: bool = False
    error: str | None = None
    #: The typed error's code when the node refused the call (``unauthenticated``, ...).
    error_code: str | None = None
    role: str | None = None
    term: int | None = None
    leader_id: int | None = None
    commit_index: int | None = None
    applied_index: int | None = None
    last_index: int | None = None
    #: The node's whole answer, for --json (it may carry more than the fields above).
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ClusterStatus:
    nodes: list[NodeStatus]
    leader_id: int | None
    term: int | None
    voters: list[int]
    learners: list[int]

    def refused(self) -> str | None:
        """The refusal when every node answered but refused the call for the caller's token
        (``unauthenticated``, ``permission_denied``): the cluster may be healthy, the token is not."""
        codes = {n.error_code for n in self.nodes}
        if self.nodes and not any(n.up for n in self.nodes) and codes <= {"unauthenticated", "permission_denied"}:
            return next(n.error for n in self.nodes if n.error)
        return None

    def leader(self) -> NodeStatus | None:
        return next((n for n in self.nodes if n.up and n.node_id == self.leader_id), None)

    def lag_entries(self, node: NodeStatus) -> int | None:
        """How far ``node`` trails the leader, in entries: the leader's own view (its replication
        progress, known even for a node that is down) when it answered, else how many committed
        entries the node has yet to apply (against the highest commit index any node reports)."""
        leader = self.leader()
        if leader is not None:
            if node is leader:
                return 0
            progress = leader.raw.get("progress")
            for p in progress if isinstance(progress, list) else []:
                if isinstance(p, dict) and p.get("node_id") == node.node_id and type(p.get("lag")) is int:
                    return max(0, int(p["lag"]))
        if not node.up or node.applied_index is None:
            return None
        reference = leader.commit_index if leader is not None else None
        if reference is None:
            reference = max((n.commit_index for n in self.nodes if n.commit_index is not None), default=None)
        return None if reference is None else max(0, reference - node.applied_index)

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``trimaran status --json``."""
        return {
            "leader_id": self.leader_id,
            "term": self.term,
            "voters": self.voters,
            "learners": self.learners,
            "nodes": [
                {
                    "node_id": n.node_id,
                    "address": None if n.address is None else str(n.address),
                    "up": n.up,
                    "error": n.error,
                    "role": n.role,
                    "term": n.term,
                    "leader_id": n.leader_id,
                    "commit_index": n.commit_index,
                    "applied_index": n.applied_index,
                    "last_index": n.last_index,
                    "lag_entries": self.lag_entries(n),
                    "status": _plain(n.raw),
                }
                for n in self.nodes
            ],
        }

    def format_table(self) -> str:
        """A human-readable table: one summary line, then one row per node."""
        leader = "none" if self.leader_id is None else str(self.leader_id)
        members = f"voters: {_ids(self.voters)}   learners: {_ids(self.learners)}"
        lines = [f"leader: {leader}   term: {_dash(self.term)}   {members}"]
        header = ("NODE", "ADDRESS", "STATE", "TERM", "COMMIT", "APPLIED", "LAG")
        rows = [header]
        for n in self.nodes:
            state = (n.role or "up") if n.up else "down"
            if n.up and n.node_id == self.leader_id:
                state = "leader"
            rows.append(
                (
                    _dash(n.node_id),
                    _dash(n.address),
                    state,
                    _dash(n.term),
                    _dash(n.commit_index),
                    _dash(n.applied_index),
                    _dash(self.lag_entries(n)),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
        for n in self.nodes:
            if not n.up and n.error:
                lines.append(f"node {_dash(n.node_id)} at {_dash(n.address)}: {n.error}")
        lines.extend(line for line in map(_clock_line, self.nodes) if line)
        return "\n".join(lines)


def _clock_line(node: NodeStatus) -> str | None:
    """A line for a node that refuses leadership because its clock is off (status ``clock``)."""
    clock = node.raw.get("clock") if node.up else None
    if not isinstance(clock, dict) or clock.get("suspect") is not True:
        return None
    peers = clock.get("peers")
    offsets = ", ".join(
        f"{_dash(p.get('node_id'))}: " + ("unknown" if p.get("offset_ms") is None else f"{p['offset_ms']:+} ms")
        for p in (peers if isinstance(peers, list) else [])
        if isinstance(p, dict)
    )
    return (
        f"node {_dash(node.node_id)}: clock not within {_dash(clock.get('offset_ms_max'))} ms of a majority of the "
        f"voters; it will not lead (peer clocks minus its own: {offsets or '-'})"
    )


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _ids(ids: list[int]) -> str:
    return ",".join(map(str, ids)) if ids else "-"


def _plain(value: Any) -> Any:
    """JSON-safe copy of a status answer (bytes shown as text where possible)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value


def _int(status: dict[str, Any], *names: str) -> int | None:
    for name in names:
        v = status.get(name)
        if type(v) is int:
            return v
    return None


def node_from_status(address: Address | None, status: dict[str, Any]) -> NodeStatus:
    """Read the fields the table needs, tolerating absent ones."""
    role = status.get("role", status.get("state"))
    return NodeStatus(
        address=address,
        node_id=_int(status, "node_id", "id"),
        up=True,
        role=str(role).lower() if role is not None else None,
        term=_int(status, "term"),
        leader_id=_int(status, "leader_id", "leader"),
        commit_index=_int(status, "commit_index", "commit"),
        applied_index=_int(status, "applied_index", "applied"),
        last_index=_int(status, "last_index", "last_log_index"),
        raw=status,
    )


def _members(status: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Voters and learners from a status dict: ``voters``/``learners`` lists, either at the top or in
    a ``membership`` map, or ``members`` entries with a ``node_id`` and an optional ``role``."""
    membership = status.get("membership")
    source: dict[str, Any] = membership if isinstance(membership, dict) else status
    voters = [v for v in source.get("voters", []) if type(v) is int] if isinstance(source.get("voters"), list) else []
    learners = (
        [v for v in source.get("learners", []) if type(v) is int] if isinstance(source.get("learners"), list) else []
    )
    members = status.get("members")
    if not voters and isinstance(members, list):
        for m in members:
            if isinstance(m, dict) and type(m.get("node_id")) is int:
                (learners if m.get("role") == "learner" or m.get("learner") else voters).append(m["node_id"])
            elif type(m) is int:
                voters.append(m)
    return sorted(set(voters)), sorted(set(learners))


def merge(nodes: list[NodeStatus], node_addresses: dict[int, Address]) -> ClusterStatus:
    """Merge per-node answers: the leader is the one claiming it in the highest term; members the
    leader names but nobody answered for are added as down."""
    up = [n for n in nodes if n.up]
    term = max((n.term for n in up if n.term is not None), default=None)
    leaders = [n for n in up if n.node_id is not None and n.node_id == n.leader_id and n.term == term]
    if leaders:
        leader_id: int | None = leaders[0].node_id
    else:  # nobody claims it: go by what the most recent term's nodes believe
        named = [n.leader_id for n in up if n.term == term and n.leader_id]
        leader_id = max(set(named), key=named.count) if named else None
    reference = leaders[0] if leaders else (up[0] if up else None)
    voters, learners = _members(reference.raw) if reference is not None else ([], [])
    seen = {n.node_id for n in nodes if n.node_id is not None}
    merged = list(nodes)
    for node_id in sorted(set(voters) | set(learners)):
        if node_id in seen:
            continue
        address = node_addresses.get(node_id)
        row = None
        if address is not None:
            row = next((n for n in merged if not n.up and n.node_id is None and n.address == address), None)
        if row is not None:  # an endpoint that did not answer turns out to be this member
            row.node_id = node_id
        else:
            merged.append(NodeStatus(address, node_id, up=False, error="no answer from this member"))
    merged.sort(key=lambda n: (n.node_id is None, n.node_id or 0, str(n.address)))
    return ClusterStatus(merged, leader_id, term, voters, learners)


async def fetch_cluster_status(client: Client, *, timeout_ms: int | None = None) -> ClusterStatus:
    """Ask every endpoint of ``client`` (and member addresses learned from the answers) for its status."""
    results: dict[Address, NodeStatus] = {}

    async def ask(address: Address) -> None:
        try:
            status = await client.node_status(address, timeout_ms=timeout_ms)
        except TrimaranError as exc:
            results[address] = NodeStatus(address, up=False, error=f"{exc.code}: {exc.message}", error_code=exc.code)
            return
        if not isinstance(status, dict):
            results[address] = NodeStatus(address, up=False, error="status answer is not a map")
            return
        results[address] = node_from_status(address, status)

    pending = list(client.endpoints)
    while pending:  # a second round asks the members the first round revealed
        async with trio.open_nursery() as nursery:
            for address in pending:
                nursery.start_soon(ask, address)
        known = set(results)
        pending = [a for _, a in sorted(client.node_addresses.items()) if a not in known]
    nodes = list(results.values())
    # An endpoint that answered under another address of the same node must not show twice.
    by_id: dict[int, NodeStatus] = {}
    unique: list[NodeStatus] = []
    for n in nodes:
        if n.node_id is None:
            unique.append(n)
        elif n.node_id not in by_id:
            by_id[n.node_id] = n
            unique.append(n)
    return merge(unique, client.node_addresses)
