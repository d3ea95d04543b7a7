"""A node's configuration: who it is, where it listens, who its peers are, and its runtime bounds.

Everything a node needs to start is in one frozen :class:`NodeConfig`; :meth:`NodeConfig.validate`
checks the bounds against each other and against :mod:`trimaran.limits` before anything opens a
socket or a file, so a bad configuration fails at once with one clear ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

from trimaran import limits
from trimaran.cluster.config import RaftConfig
from trimaran.cluster.replica import ReplicaConfig
from trimaran.errors import ConfigError, InvalidArgument
from trimaran.protocols import tokens
from trimaran.protocols.messages import Membership
from trimaran.protocols.tokens import TrustedKey
from trimaran.services.kv import EVICTION_POLICIES as KV_EVICTION_POLICIES

DEFAULT_CLUSTER_ID = "trimaran"
#: Probing less often than this would leave a clock that jumps undetected for minutes.
CLOCK_PROBE_INTERVAL_MS_MAX = 60_000
CLUSTER_ID_CHARS_MAX = 64


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP address; ``str()`` gives ``host:port`` (IPv6 hosts in brackets)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str = "address") -> Address:
        """Parse ``HOST:PORT`` or ``[IPV6]:PORT``; raise ``ConfigError`` naming ``what`` otherwise."""
        text = text.strip()
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ConfigError(f"{what} {text!r} is not HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ConfigError(f"{what} {text!r}: port must be in 0..65535")
        return cls(host, port)

    def is_loopback(self) -> bool:
        """Only this machine can reach it: ``localhost`` or a loopback IP (127.0.0.0/8, ::1). Any
        other name counts as reachable from elsewhere (it may resolve anywhere)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        try:
            if ipaddress.ip_address(self.host).version == 6:
                return f"[{self.host}]:{self.port}"
        except ValueError:
            pass
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """Another member: its peer-port address, and (for not_leader hints) its client address."""

    node_id: int
    peer_address: Address
    client_address: Address | None = None


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int
    #: Client port (the client protocol of :mod:`trimaran.protocols.client_protocol`).
    listen: Address
    #: Peer port (Raft messages between nodes); may be firewalled off from clients.
    peer_listen: Address
    peers: tuple[PeerSpec, ...]
    data_dir: str
    cluster_id: str = DEFAULT_CLUSTER_ID
    #: Raft's logical tick. Election timeouts and heartbeats are counted in ticks.
    tick_ms: int = 50
    #: Start with an empty membership and wait for a leader to add this node (thesis §4.1).
    join: bool = False
    election_timeout_ticks_min: int = 10
    election_timeout_ticks_max: int = 20
    heartbeat_interval_ticks: int = 2
    lease_reads: bool = False
    snapshot_interval_entries: int = 10_000
    snapshot_keep_entries: int = 1_000
    #: A learner is promoted only within this many entries of the leader's log. Not 0 (the core's
    #: default, for the simulator): under a steady write load the leader always holds a few entries
    #: the learner has not acknowledged yet, so an exact match would rarely be seen; this many go in
    #: one or two appends, well inside an election timeout (thesis §4.2.1).
    learner_catchup_entries_max: int = 512

    # --- client server ---
    #: A request not answered within this is answered ``timeout`` (its outcome is then unknown).
    request_timeout_ms: int = 10_000
    client_connections_max: int = 1024
    #: Requests in flight on one connection; the reader stops reading at this many (backpressure).
    client_inflight_requests_max: int = limits.session_responses_max
    #: Larger than one maximal command, so an oversized command gets a typed ``too_large`` answer
    #: rather than a closed connection; frames beyond this close the connection.
    client_frame_bytes_max: int = 2 * limits.command_bytes_max
    handshake_timeout_ms: int = limits.handshake_timeout_ms
    #: Connections accepted that have not sent their hello yet; they do not count against
    #: ``client_connections_max``. One more closes the oldest of them (the slowest to say hello).
    client_handshakes_max: int = 256
    #: A connection with nothing in flight, nothing left to write and no request for this long is
    #: closed with an ``idle_timeout`` error frame (the client library reconnects on its next call).
    client_idle_timeout_ms: int = 60_000
    #: Bytes of answers queued on one connection and not yet written to its socket. An answer that
    #: would go over is replaced by a typed error, and the reader stops reading requests meanwhile.
    client_answer_bytes_max: int = 32 * limits.MIB
    #: The same, summed over every client connection of the node.
    client_answer_bytes_node_max: int = 256 * limits.MIB

    # --- HTTP edge (trimaran.node.http) ---
    #: Where the REST API (and later the WebSocket gateway) listens; None: no HTTP edge.
    http_listen: Address | None = None
    #: HTTP requests waiting for the driver at once; more wait for a slot.
    http_inflight_requests_max: int = 4096
    #: Largest request body (a KV value, plus room for the command around it).
    http_body_bytes_max: int = limits.command_bytes_max

    # --- RESP listener (trimaran.node.resp) ---
    #: Where the Redis-protocol listener listens; None: no RESP listener.
    resp_listen: Address | None = None
    #: RESP connections open at once; one more is answered ``-ERR max number of clients reached``.
    resp_connections_max: int = 1024
    #: Commands read ahead of their answers on one RESP connection (pipelining); the reader stops
    #: reading while this many wait.
    resp_inflight_commands_max: int = 64
    #: Bytes of answers encoded and not yet written on one RESP connection; past this the
    #: connection stops taking commands until its client reads (one answer over it is still sent).
    resp_answer_bytes_max: int = 32 * limits.MIB

    # --- peer transport ---
    #: Inbound peer connections that completed the handshake (a peer's new connection replaces
    #: its old one, so each peer holds at most one).
    peer_connections_max: int = 4 * limits.members_max
    #: Inbound peer connections still waiting for their handshake, counted apart from the above so
    #: they cannot take a real peer's slot; one more closes the oldest of them.
    peer_handshakes_max: int = 2 * limits.members_max
    #: Per-peer send queue; a frame that does not fit is dropped (Raft retransmits).
    peer_queue_frames_max: int = 4096
    peer_queue_bytes_max: int = 64 * limits.MIB
    peer_connect_timeout_ms: int = 1_000
    peer_reconnect_ms_min: int = 50
    peer_reconnect_ms_max: int = 2_000

    # --- clock check (trimaran.node.clock) ---
    #: A node whose wall clock is beyond this from a majority of the voters refuses leadership: a
    #: leader stamps the log with its clock, and TTLs and session expiry follow the stamps (like
    #: CockroachDB's maximum clock offset, whose default this is). 0: off (offsets still shown).
    clock_offset_ms_max: int = 500
    #: How often each peer's clock is probed (one round trip on the peer connections).
    clock_probe_interval_ms: int = 500

    # --- driver and storage ---
    #: Inputs (peer messages, client requests) the driver takes before one ``ready()``.
    driver_inputs_per_round_max: int = 1024
    #: Inputs waiting for the driver; producers wait (backpressure) beyond this. A group of client
    #: requests (``Driver.submit_client_group``) is one item here, each of its requests one input
    #: of a round.
    driver_inbox_items_max: int = 8192
    #: Batches handed to the writer thread and not yet durable; the driver pauses inputs beyond.
    writes_outstanding_max: int = 4096
    #: Batches coalesced into one LMDB transaction (one fsync).
    write_group_batches_max: int = 1024
    #: How often the writer retries a group refused with ``StorageFullError``.
    storage_full_retry_ms: int = 1_000
    #: A follower writes and fsyncs a batch of at most this many entry bytes on the driver's own
    #: thread rather than handing it to the writer thread, when that thread has nothing outstanding
    #: (so order holds): no thread wake-up either way, and its loop has little to do during the
    #: fsync, since its acknowledgement needs that fsync anyway. Large batches (heavy load) still go
    #: to the thread, so that decoding the next appends overlaps the fsync (0: never inline).
    write_inline_bytes_max: int = 64 * limits.KIB
    #: The same bound for a leader (0: never, the default). A leader writing inline cannot count
    #: its followers' acknowledgements until its own fsync returns, so its fsync is always on the
    #: commit path; on its writer thread, any two of the three fsyncs commit, which measured better
    #: when the machine is busy (and about 0.2 ms worse per write when it is idle).
    write_inline_leader_bytes_max: int = 0
    #: A leader also writes inline (up to ``write_inline_bytes_max``) once this many client
    #: requests in a row each found it quiescent, nothing else in flight (0: never). Clients then
    #: come one at a time: no request can arrive during the fsync, which its answer needs anyway,
    #: and the writer thread would only add a wake-up each way, on a CPU the followers need. With
    #: concurrent clients requests find it busy, and the thread keeps the loop reading and
    #: replicating during the fsync (inline whenever merely idle cost 9% of 64-client throughput).
    write_inline_leader_serial_requests: int = 4
    #: A leader's empty appends that only announce a new commit index wait this long for the next
    #: append to the same follower, which carries the commit index anyway (0: send at once).
    commit_notice_delay_ms: int = 5
    storage_map_bytes_initial: int = limits.storage_map_bytes_initial
    storage_map_bytes_max: int = limits.storage_map_bytes_max
    #: Client writes are refused (``storage_full``) while the store has less room than this: the
    #: data directory's file system, or the map's cap (0: refuse only once a write fails). None:
    #: ``limits.storage_reserve_disk_percent`` of the smaller of the two, at most
    #: ``limits.storage_reserve_bytes_max``. The reserve keeps room for what was already accepted
    #: and for Raft's own writes (terms, votes, a new leader's first entry, catching up).
    storage_reserve_bytes: int | None = None
    #: Graceful shutdown: wait at most this long for in-flight requests, then for a leadership
    #: transfer, then for the last writes.
    shutdown_grace_ms: int = 5_000

    # --- kv service ---
    #: The KV cache's memory cap (None: unbounded) and what a write over it does: "lru" evicts
    #: the least recently used keys, "noeviction" refuses it (OutOfMemory). Part of the state
    #: machine's definition, not of its snapshots: every node of a cluster needs the same values.
    kv_maxmemory_bytes: int | None = None
    kv_eviction: str = "lru"

    # --- auth (trimaran.node.authoriser) ---
    #: Bootstrap public keys (``--auth-public-key``): tokens signed by them are trusted from the
    #: start, and auth is on iff there is at least one. Part of the state machine's definition
    #: (the auth service holds them), so every node of a cluster needs the same ones.
    auth_keys: tuple[TrustedKey, ...] = ()
    #: Clock skew tolerated when checking a token's exp and nbf (at most the library default).
    auth_leeway_ms: int = limits.token_leeway_ms_default

    # --- transport security (trimaran.node.tls) ---
    #: A directory made by ``trimaran certs init``: serve TLS on both ports, and require the
    #: cluster CA's certificate of the node a peer claims to be (mutual TLS). None: plain TCP.
    tls_dir: str | None = None
    #: Listen on a non-loopback address without TLS or without auth (see :meth:`exposure_problem`).
    insecure: bool = False
    #: Start with auth off on a data dir whose data required tokens (see :mod:`trimaran.node.data_dir`);
    #: a flag of its own, so that ``insecure`` (often set for years) never silences that check.
    allow_auth_off: bool = False

    peer_ids: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "peer_ids", tuple(sorted(p.node_id for p in self.peers)))

    def replace(self, **changes: object) -> NodeConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def state_machine_settings(self) -> dict[str, Any]:
        """The settings that define the replicated state machine. Replicas built with different
        ones would apply the same log differently (a different key evicted), so peers compare
        them in their handshake and refuse to talk when they differ."""
        settings: dict[str, Any] = {
            "kv": {"maxmemory_bytes": self.kv_maxmemory_bytes, "eviction_policy": self.kv_eviction}
        }
        # Left out with auth off and the default leeway, so such a node's handshake is what it was
        # before auth existed (and it still meets older nodes).
        if self.auth_keys or self.auth_leeway_ms != limits.token_leeway_ms_default:
            settings["auth"] = {"bootstrap_keys_sha256": self.auth_keys_digest(), "leeway_ms": self.auth_leeway_ms}
        return settings

    @property
    def auth_enabled(self) -> bool:
        """Tokens are required on the client port (at least one bootstrap key is configured)."""
        return bool(self.auth_keys)

    def auth_keys_digest(self) -> str:
        """A SHA-256 (hex) of the bootstrap keys (kid, public key, not-after), in kid order: what
        peers compare, so two nodes that trust different keys refuse each other."""
        h = hashlib.sha256()
        for key in sorted(self.auth_keys, key=lambda k: k.kid):
            h.update(f"{len(key.kid)}:{key.kid}:{key.not_after_ms}:".encode() + key.public_key)
        return h.hexdigest()

    def storage_reserve_bytes_for(self, store_bytes: int) -> int:
        """The room to keep free in a store of ``store_bytes`` (its file system or its map cap)."""
        if self.storage_reserve_bytes is not None:
            return self.storage_reserve_bytes
        return min(limits.storage_reserve_bytes_max, store_bytes * limits.storage_reserve_disk_percent // 100)

    @property
    def tick_s(self) -> float:
        return self.tick_ms / 1000

    def peer(self, node_id: int) -> PeerSpec | None:
        for p in self.peers:
            if p.node_id == node_id:
                return p
        return None

    def raft_config(self) -> RaftConfig:
        voters = () if self.join else tuple(sorted((self.node_id, *self.peer_ids)))
        return RaftConfig(
            self.node_id,
            Membership(voters),
            election_timeout_ticks_min=self.election_timeout_ticks_min,
            election_timeout_ticks_max=self.election_timeout_ticks_max,
            heartbeat_interval_ticks=self.heartbeat_interval_ticks,
            lease_reads=self.lease_reads,
            learner_catchup_entries_max=self.learner_catchup_entries_max,
        )

    def replica_config(self) -> ReplicaConfig:
        return ReplicaConfig(
            snapshot_interval_entries=self.snapshot_interval_entries,
            snapshot_keep_entries=self.snapshot_keep_entries,
        )

    def exposure_problem(self) -> str:
        """Why this node must not start as configured ("": it may): secure by default, a node that
        listens beyond loopback needs TLS (peers prove they are nodes of the cluster, clients'
        tokens cannot be read off the wire) and auth (who may do what), unless ``insecure``."""
        exposed = [str(a) for a in (self.listen, self.peer_listen, self.http_listen, self.resp_listen) if a is not None and not a.is_loopback()]
        missing = [what for what, on in (("TLS (--tls-dir)", self.tls_dir), ("auth (--auth-public-key)", self.auth_enabled)) if not on]
        if not exposed or not missing or self.insecure:
            return ""
        return (
            f"refusing to listen on {' and '.join(exposed)} without {' and '.join(missing)}: anyone who can "
            "reach the port could read and write everything"
            + ("" if self.tls_dir else " and join the consensus")
            + "; turn them on, listen on 127.0.0.1, or pass --insecure to accept the risk"
        )

    def validate(self) -> NodeConfig:
        """Raise ``ConfigError`` naming the first thing that does not fit; return self when all do."""
        problem = self.exposure_problem()
        if problem:
            raise ConfigError(problem)
        ids = [p.node_id for p in self.peers]
        checks = [
            (self.node_id > 0, "node id must be a positive integer"),
            (all(i > 0 for i in ids), "peer ids must be positive integers"),
            (len(set(ids)) == len(ids), "a peer id is given twice"),
            (self.node_id not in ids, f"node {self.node_id} is listed as its own peer"),
            (len(ids) + 1 <= limits.members_max, f"at most {limits.members_max} members"),
            (0 < len(self.cluster_id) <= CLUSTER_ID_CHARS_MAX, f"cluster id must be 1..{CLUSTER_ID_CHARS_MAX} characters"),
            (bool(self.data_dir), "a data directory is required"),
            (1 <= self.tick_ms <= 10_000, "tick_ms must be in 1..10000"),
            (self.listen != self.peer_listen or self.listen.port == 0, "the client and peer ports must differ"),
            (self.request_timeout_ms > 0, "request_timeout_ms must be positive"),
            (
                self.http_listen is None or self.http_listen not in (self.listen, self.peer_listen) or self.http_listen.port == 0,
                "the HTTP port must differ from the client and peer ports",
            ),
            (self.http_inflight_requests_max > 0, "http_inflight_requests_max must be positive"),
            (
                self.resp_listen is None
                or self.resp_listen not in (self.listen, self.peer_listen, self.http_listen)
                or self.resp_listen.port == 0,
                "the RESP port must differ from the client, peer and HTTP ports",
            ),
            (self.resp_connections_max > 0, "resp_connections_max must be positive"),
            (
                0 < self.resp_inflight_commands_max <= limits.session_responses_max // 2,
                f"resp_inflight_commands_max must be in 1..{limits.session_responses_max // 2}",
            ),
            (self.resp_answer_bytes_max > 0, "resp_answer_bytes_max must be positive"),
            (
                0 < self.http_body_bytes_max <= limits.command_bytes_max,
                f"http_body_bytes_max must be in 1..{limits.command_bytes_max}",
            ),
            (self.client_connections_max > 0, "client_connections_max must be positive"),
            (
                0 < self.client_inflight_requests_max <= limits.session_responses_max,
                f"client_inflight_requests_max must be in 1..{limits.session_responses_max}",
            ),
            (
                limits.command_bytes_max < self.client_frame_bytes_max <= limits.frame_bytes_max,
                "client_frame_bytes_max must hold one maximal command and fit frame_bytes_max",
            ),
            (self.handshake_timeout_ms > 0, "handshake_timeout_ms must be positive"),
            (self.client_handshakes_max > 0, "client_handshakes_max must be positive"),
            (
                self.client_idle_timeout_ms >= self.request_timeout_ms,
                "client_idle_timeout_ms must be at least request_timeout_ms",
            ),
            (
                self.client_answer_bytes_max >= limits.frame_bytes_max,
                f"client_answer_bytes_max must hold one largest answer (frame_bytes_max={limits.frame_bytes_max})",
            ),
            (
                self.client_answer_bytes_node_max >= self.client_answer_bytes_max,
                "client_answer_bytes_node_max must be at least client_answer_bytes_max",
            ),
            (
                self.peer_connections_max >= max(1, len(self.peers)),
                "peer_connections_max must leave every peer a slot",
            ),
            (self.peer_handshakes_max > 0, "peer_handshakes_max must be positive"),
            (self.peer_queue_frames_max > 0, "peer_queue_frames_max must be positive"),
            (
                self.peer_queue_bytes_max >= limits.frame_bytes_max,
                "peer_queue_bytes_max must hold one maximal frame",
            ),
            (
                0 < self.peer_reconnect_ms_min <= self.peer_reconnect_ms_max,
                "need 0 < peer_reconnect_ms_min <= peer_reconnect_ms_max",
            ),
            (self.peer_connect_timeout_ms > 0, "peer_connect_timeout_ms must be positive"),
            (self.clock_offset_ms_max >= 0, "clock_offset_ms_max must be >= 0 (0: no clock check)"),
            (
                0 < self.clock_probe_interval_ms <= CLOCK_PROBE_INTERVAL_MS_MAX,
                f"clock_probe_interval_ms must be in 1..{CLOCK_PROBE_INTERVAL_MS_MAX}",
            ),
            (self.driver_inputs_per_round_max > 0, "driver_inputs_per_round_max must be positive"),
            (
                self.driver_inbox_items_max >= self.driver_inputs_per_round_max,
                "driver_inbox_items_max must be at least driver_inputs_per_round_max",
            ),
            (self.writes_outstanding_max > 0, "writes_outstanding_max must be positive"),
            (self.write_group_batches_max > 0, "write_group_batches_max must be positive"),
            (self.storage_full_retry_ms > 0, "storage_full_retry_ms must be positive"),
            (self.write_inline_bytes_max >= 0, "write_inline_bytes_max must be >= 0"),
            (self.write_inline_leader_bytes_max >= 0, "write_inline_leader_bytes_max must be >= 0"),
            (self.write_inline_leader_serial_requests >= 0, "write_inline_leader_serial_requests must be >= 0"),
            (self.commit_notice_delay_ms >= 0, "commit_notice_delay_ms must be >= 0"),
            (
                0 < self.storage_map_bytes_initial <= self.storage_map_bytes_max,
                "need 0 < storage_map_bytes_initial <= storage_map_bytes_max",
            ),
            (
                self.storage_reserve_bytes is None or self.storage_reserve_bytes >= 0,
                "storage_reserve_bytes must be >= 0 (or None: automatic)",
            ),
            (self.snapshot_interval_entries > 0, "snapshot_interval_entries must be positive"),
            (self.snapshot_keep_entries >= 0, "snapshot_keep_entries must be >= 0"),
            (self.shutdown_grace_ms >= 0, "shutdown_grace_ms must be >= 0"),
            (
                self.kv_maxmemory_bytes is None or self.kv_maxmemory_bytes > 0,
                "kv_maxmemory_bytes must be positive (or None: unbounded)",
            ),
            (self.kv_eviction in KV_EVICTION_POLICIES, f"kv_eviction must be one of {', '.join(KV_EVICTION_POLICIES)}"),
            (
                0 <= self.auth_leeway_ms <= limits.token_leeway_ms_default,
                f"auth_leeway_ms must be in 0..{limits.token_leeway_ms_default}",
            ),
            (len(self.auth_keys) <= limits.trusted_keys_max, f"at most {limits.trusted_keys_max} auth keys"),
            (len({k.kid for k in self.auth_keys}) == len(self.auth_keys), "an auth key id is given twice"),
            (
                all(0 < len(k.kid) <= limits.kid_chars_max for k in self.auth_keys),
                f"an auth key id must be 1..{limits.kid_chars_max} characters",
            ),
            (
                all(len(k.public_key) == tokens.ED25519_PUBLIC_KEY_BYTES for k in self.auth_keys),
                "an auth key must be a 32-byte Ed25519 public key",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self.raft_config().validate()
        return self


def parse_peer(text: str) -> tuple[int, Address]:
    """Parse ``ID=HOST:PORT`` (the ``--peer`` and ``--peer-client`` syntax)."""
    node_text, sep, address_text = text.partition("=")
    if not sep or not node_text.strip().isdigit():
        raise ConfigError(f"peer {text!r} is not ID=HOST:PORT")
    return int(node_text), Address.parse(address_text, f"peer {node_text.strip()} address")


def build_peers(peer_texts: list[str], peer_client_texts: list[str]) -> tuple[PeerSpec, ...]:
    """Join ``--peer ID=HOST:PORT`` and ``--peer-client ID=HOST:PORT`` lists into PeerSpecs."""
    peers: dict[int, Address] = {}
    for text in peer_texts:
        node_id, address = parse_peer(text)
        if node_id in peers:
            raise ConfigError(f"peer {node_id} is given twice")
        peers[node_id] = address
    clients: dict[int, Address] = {}
    for text in peer_client_texts:
        node_id, address = parse_peer(text)
        if node_id not in peers:
            raise ConfigError(f"--peer-client names node {node_id}, which has no --peer")
        clients[node_id] = address
    return tuple(PeerSpec(n, a, clients.get(n)) for n, a in sorted(peers.items()))


def load_auth_key(spec: str) -> TrustedKey:
    """Read one ``--auth-public-key``: ``FILE`` or ``KID=FILE``, the file PEM (SubjectPublicKeyInfo)
    or the 32 raw bytes of an Ed25519 public key; the kid defaults to ``tokens.key_id(key)``."""
    kid, path = "", spec
    if not os.path.exists(spec):
        head, sep, tail = spec.partition("=")
        if sep and head:
            kid, path = head, tail
    try:
        with open(path, "rb") as f:
            text = f.read(64 * 1024)
    except OSError as exc:
        raise ConfigError(f"auth public key {path!r}: {exc.strerror or exc}") from None
    try:
        public_key = tokens.public_key_from_text(text.strip() if len(text) != tokens.ED25519_PUBLIC_KEY_BYTES else text)
    except InvalidArgument as exc:
        raise ConfigError(f"auth public key {path!r}: {exc.message}") from None
    kid = kid or tokens.key_id(public_key)
    if len(kid) > limits.kid_chars_max:
        raise ConfigError(f"auth key id {kid[:32]!r}... is over {limits.kid_chars_max} characters")
    return TrustedKey(kid, public_key)
