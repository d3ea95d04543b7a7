"""The client wire protocol: what a client and a node's client port say to each other.

Every frame (see :mod:`trimaran.protocols.framing`) holds one msgpack value.

1. Handshake. The client's first frame (within ``limits.handshake_timeout_ms``)::

       {"type": "hello", "version": 1, "cluster_id": str | None, "token": str | None}

   The node answers ``{"type": "welcome", "version": 1, "node_id": int, "leader_id": int,
   "cluster_id": str}``, or ``{"type": "error", "error": <error>}`` and closes. ``token`` is a
   PASETO v4.public token (:mod:`trimaran.protocols.tokens`), required by a node with auth on and
   ignored otherwise; ``cluster_id`` guards against talking to the wrong cluster. On a node with
   ``--tls-dir`` all of this runs inside TLS (:mod:`trimaran.protocols.tls`).

2. Requests, pipelined (many in flight on one connection, answered in any order)::

       [request_id: int, op: str, body: dict]    ->    [request_id, ok: bool, result | <error>]

   where ``<error>`` is :meth:`trimaran.errors.TrimaranError.to_wire` output
   (``{"code", "message", "details"}``), e.g. code ``not_leader`` with ``details.leader_hint``.

Operations and their bodies:

======================  ================================================================  ==========
op                      body                                                              result
======================  ================================================================  ==========
``register``            ``{}``                                                            client id
``command``             ``{"client_id", "seq", "ack_seq", "service", "command"}``         service's
``read``                ``{"service", "query", "consistency"}`` (linearizable|lease|stale) service's
``status``              ``{}``                                                            dict
``membership``          ``{"kind": "add_learner"|"promote"|"remove", "node_id"}``         members
``transfer``            ``{"node_id"}``                                                   None
======================  ================================================================  ==========

``command`` is exactly-once: retrying with the same ``(client_id, seq)`` returns the saved answer.

What the node runtime (:mod:`trimaran.node.client_server`) adds, all optional for a client:

- ``welcome`` may carry ``"leader_address": "host:port" | None``, the leader's client address
  when the node knows it.
- After the handshake, a frame that is not a request at all (malformed msgpack, not
  ``[request_id, op, body]``, over the node's frame limit, cut short) gets one
  ``{"type": "error", "error": <error>}`` frame and the node closes the connection. A connection
  over the node's cap, or opened while it shuts down, gets the same with code ``unavailable``.
- A connection idle for the node's ``client_idle_timeout_ms`` gets one error frame with code
  ``idle_timeout`` and is closed; the node reads nothing after deciding so, so a request sent
  meanwhile was not processed and may be sent again on a new connection. An answer over the node's
  answer-bytes caps (answers queued but not yet read) comes back as ``unavailable`` (``read``,
  ``status``) or ``timeout`` (outcome unknown) under its request id.
- A request with bad fields is answered under its request id (``invalid_argument``, ``too_large``)
  and the connection stays open; so is a ``command`` or ``query`` that nests lists and maps
  deeper than ``limits.command_depth_max`` (64). A frame nested deeper than
  ``limits.msgpack_depth_max`` (72) is not a request at all.
- ``read``: ``consistency`` may be left out; it defaults to ``"linearizable"``.
- Auth on: every request needs a scope of the token (the table is in
  :mod:`trimaran.node.authoriser` and :mod:`trimaran.protocols.scopes`; ``register`` needs only a
  valid token). A request the token does not cover is answered ``permission_denied`` under its
  request id, ``details.scope`` naming the scope needed; once the token expired, requests are
  answered ``unauthenticated`` (``details.reason``: ``"expired"``); either way nothing was done
  and the connection stays open. When a revocation or a key retirement that covers the token is
  applied on the node, it sends an ``unauthenticated`` error frame (``details.reason``:
  ``"revoked"`` or ``"key_retired"``) after the answers already due, and closes.
- Error codes a request may meet: ``not_leader`` (``details.leader_hint``: node id or None,
  ``details.leader_address``: its client ``"host:port"`` or None), ``timeout`` (not answered
  within the node's request timeout; the outcome is unknown, retry with the same ``seq``),
  ``unavailable`` (shutting down, leadership changed, overloaded), ``storage_full`` (this node
  refuses writes until space is freed; reads still work), ``unauthenticated``,
  ``permission_denied``, ``invalid_argument``, ``too_large``,
  ``session_expired``, ``membership_rejected``, and the services' own codes.
- ``membership`` result: ``{"voters": [int], "learners": [int]}`` once the change is applied.
- ``status`` result (a node describes itself; ints are log indexes unless said otherwise)::

      {"node_id", "cluster_id", "address": "host:port" (this node's client address),
       "role": "leader"|"follower"|"candidate"|"pre_candidate", "term",
       "leader_id" (0: none known), "leader_address": "host:port" | None,
       "commit_index", "applied_index", "last_index", "persisted_index", "snapshot_index",
       "voters": [int], "learners": [int],
       "members": [{"node_id", "role": "voter"|"learner", "address": "host:port" | None}],
       "progress": [{"node_id", "match", "next", "lag" (entries behind the leader's last index),
                     "state": "probe"|"replicate"|"snapshot", "recent_active": bool}]
                   (leader only; [] elsewhere),
       "storage_full": bool,
       "clock": {"offset_ms_max" (0: check off), "suspect": bool (refuses leadership),
                 "peers": [{"node_id", "offset_ms" (its clock minus this node's), "rtt_ms",
                            "age_ms" (of the sample), "agrees": bool}]
                          (the fields are None while not measured; "agrees" too with the check off),
                 "probes_sent", "replies_received", "samples_dropped" (round trip too long)},
       "writes": {"submitted", "durable", "groups", "batches"} (counts of LMDB write batches and
                 of group-commit transactions),
       "metrics": {str: int} (counters; names may grow)}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trimaran import limits
from trimaran.errors import InvalidArgument, ProtocolError, TrimaranError
from trimaran.protocols.codec import brief, depth_exceeds

PROTOCOL_VERSION = 1
OPS = ("register", "command", "read", "status", "membership", "transfer", "backup", "backup_chunk")
MEMBERSHIP_KINDS = ("add_learner", "promote", "remove")
CONSISTENCIES = ("linearizable", "lease", "stale")


@dataclass(slots=True, frozen=True)
class Hello:
    version: int
    cluster_id: str | None
    token: str | None


@dataclass(slots=True, frozen=True)
class Request:
    request_id: int
    op: str
    body: dict[str, Any]


def hello(cluster_id: str | None = None, token: str | None = None) -> dict[str, Any]:
    return {"type": "hello", "version": PROTOCOL_VERSION, "cluster_id": cluster_id, "token": token}


def welcome(node_id: int, leader_id: int, cluster_id: str) -> dict[str, Any]:
    return {"type": "welcome", "version": PROTOCOL_VERSION, "node_id": node_id, "leader_id": leader_id, "cluster_id": cluster_id}


def error_frame(exc: TrimaranError) -> dict[str, Any]:
    return {"type": "error", "error": exc.to_wire()}


def parse_hello(obj: Any) -> Hello:
    if not isinstance(obj, dict) or obj.get("type") != "hello":
        raise ProtocolError("the first frame must be a hello")
    version = obj.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {brief(version)}; this node speaks {PROTOCOL_VERSION}")
    cluster_id, token = obj.get("cluster_id"), obj.get("token")
    if cluster_id is not None and not isinstance(cluster_id, str):
        raise ProtocolError("cluster_id must be a string")
    if token is not None and (not isinstance(token, str) or len(token) > 8 * limits.KIB):
        raise ProtocolError("token must be a string of at most 8 KiB")
    return Hello(version, cluster_id, token)


def _int_field(body: dict[str, Any], name: str, minimum: int = 0) -> int:
    v = body.get(name)
    if type(v) is not int or v < minimum or v >= 1 << 63:
        raise InvalidArgument(f"{name} must be an integer >= {minimum}")
    return v


def _str_field(body: dict[str, Any], name: str, choices: tuple[str, ...] | None = None) -> str:
    v = body.get(name)
    if not isinstance(v, str) or (choices is not None and v not in choices):
        raise InvalidArgument(f"{name} must be {'one of ' + ', '.join(choices) if choices else 'a string'}")
    return v


def _shallow(value: Any, name: str) -> None:
    # What reaches the log must re-encode, and an entry wraps a command in three more levels.
    if depth_exceeds(value, limits.command_depth_max):
        raise InvalidArgument(f"{name} nests lists and maps deeper than {limits.command_depth_max} levels")


def parse_request(obj: Any) -> Request:
    """Check a request's shape; ``ProtocolError`` if it is not a request at all (close the
    connection), ``InvalidArgument`` if it is one with bad fields (answer it with the error)."""
    if type(obj) is not list or len(obj) != 3 or type(obj[0]) is not int or not 0 <= obj[0] < 1 << 63:
        raise ProtocolError("a request is [request_id, op, body]")
    request_id, op, body = obj
    if op not in OPS:
        raise InvalidArgument(f"unknown operation {brief(op)}", request_id=request_id)
    if not isinstance(body, dict):
        raise InvalidArgument("body must be a map", request_id=request_id)
    if op == "command":
        _int_field(body, "client_id", 1)
        seq = _int_field(body, "seq", 1)
        if _int_field(body, "ack_seq") >= seq:
            raise InvalidArgument("ack_seq must be below seq")
        _str_field(body, "service")
        if "command" not in body:
            raise InvalidArgument("command missing")
        _shallow(body["command"], "command")
    elif op == "read":
        body.setdefault("consistency", "linearizable")
        _str_field(body, "service")
        _str_field(body, "consistency", CONSISTENCIES)
        if "query" not in body:
            raise InvalidArgument("query missing")
        _shallow(body["query"], "query")
    elif op == "membership":
        _str_field(body, "kind", MEMBERSHIP_KINDS)
        _int_field(body, "node_id", 1)
        if type(body.setdefault("force", False)) is not bool:
            raise InvalidArgument("force must be true or false")
    elif op == "transfer":
        _int_field(body, "node_id", 1)
    elif op == "backup_chunk":
        _int_field(body, "offset")
    return Request(request_id, op, body)


def response(request_id: int, ok: bool, value: Any) -> list[Any]:
    """``value`` is the result when ok, else a TrimaranError."""
    if ok:
        return [request_id, True, value]
    assert isinstance(value, TrimaranError)
    return [request_id, False, value.to_wire()]
