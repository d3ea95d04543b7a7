"""Auth on the simulated nodes: each node's client edge, the record of what every node applied and
accepted, and the auth checker.

Each node has a :class:`NodeEdge`, the simulator's twin of the runtime's client port with its
authoriser (:mod:`trimaran.node.authoriser`), calling the same decisions of the auth service
(:meth:`~trimaran.services.auth.AuthService.refusal`, ``grant``, ``Grant.lapsed``, ``recheck``) on
ITS OWN replica's state at the moment a request arrives, at the node's clock (its wall clock, or
the last applied entry's log time if later, as the runtime's). A client holds one connection per
node it has talked to: its token is verified when the connection opens (``tokens.verify``, real
PASETO), every request is checked against the grant, and after every apply round in which the auth
generation moved, every live connection is re-checked and those refused are closed. A crash
closes every connection of the node.

The record (:class:`AuthRecord`) is what the checker reads, kept apart from the edge's decisions:
per node incarnation (one per lifetime of a node: a crash loses the in-memory state, which the
restarted node rebuilds from its disk and the leader), the moment each revocation and each key
retirement was applied there (by a command, or by installing or booting from a snapshot holding
it), and every request its edge accepted, with the token id and key it rested on. Moments are an
event counter (requests and applies at the same simulated microsecond are still ordered) and the
simulated time. :func:`check_auth`: no request was accepted by a node after the revocation of its
token, or the retirement of its token's key, was applied on that node, in this lifetime or an
earlier one (category ``auth``).

Across lifetimes, deliberately: a node can apply a committed entry before the commit index that
covers it is durable on its own disk, so it may boot without that entry applied; it must still
refuse the token (the auth service holds the revocations of its unapplied log tail, see
``AuthService.on_unapplied``). Before that hook, seeds 92 and 154 (5 nodes, 60 s) showed a restarted
node serving a token it had revoked, for up to 8 seconds of a partition. A node that never applied a
revocation (it lags the leader) may still serve the token: that lag is the design's.
"""

from __future__ import annotations

from typing import Any, Callable

from trimaran.errors import PermissionDenied, Unauthenticated
from trimaran.protocols import scopes, tokens
from trimaran.protocols.service import ApplyContext
from trimaran.services.auth import AuthService, Grant
from trimaran.simulations.checkers import CheckFailure

#: The simulated cluster's id: every token's audience.
SIM_CLUSTER_ID = "sim"

#: What a request needs: (service, action), on every name of the service; None: only a valid token.
Need = tuple[str, str] | None

#: A revocation ("jti", token id) or a retirement ("kid", key id), as the record names them.
Covered = tuple[str, str]


class AuthRecord:
    """What each node incarnation applied (revocations, retirements) and accepted (requests)."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        #: Orders records made at the same simulated time.
        self._moment = 0
        #: Incarnation -> node id.
        self.node_of: list[int] = []
        #: Incarnation -> what it applied -> (moment, time in µs) of the first time.
        self.applied: list[dict[Covered, tuple[int, int]]] = []
        #: (incarnation, moment, time in µs, holder, jti, kid) of every request an edge accepted.
        self.accepted: list[tuple[int, int, int, int, str, str]] = []
        #: Requests an edge refused (Unauthenticated or PermissionDenied), and connections closed
        #: by a re-check.
        self.refused = 0
        self.closed = 0

    def incarnation(self, node_id: int) -> int:
        """A new lifetime of ``node_id`` (its auth service was just built): its number."""
        self.node_of.append(node_id)
        self.applied.append({})
        return len(self.node_of) - 1

    def note_applied(self, incarnation: int, covered: Covered) -> None:
        self._moment += 1
        self.applied[incarnation].setdefault(covered, (self._moment, self._clock()))

    def note_accepted(self, incarnation: int, holder: int, claims: tokens.Claims) -> None:
        self._moment += 1
        self.accepted.append((incarnation, self._moment, self._clock(), holder, claims.jti, claims.kid))


class RecordingAuth(AuthService):
    """The auth service of one simulated replica (one incarnation), reporting what it applied."""

    def __init__(self, node_id: int, record: AuthRecord, **settings: Any) -> None:
        super().__init__(**settings)
        self.incarnation = record.incarnation(node_id)
        self._record = record

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        result = super().apply(command, ctx)
        # True: newly revoked, or a key trusted until now retired (command shapes were checked).
        if result is True and command[0] in ("revoke", "retire"):
            self._record.note_applied(self.incarnation, ("jti" if command[0] == "revoke" else "kid", command[1]))
        return result

    def restore(self, data: Any) -> None:
        super().restore(data)
        # A snapshot installed, or booted from: what it holds is applied here from now on.
        for jti, _ in data["revoked"]:
            self._record.note_applied(self.incarnation, ("jti", str(jti)))
        for kid, _, not_after_ms in data["keys"]:
            if not_after_ms:  # the workload trusts with no end: an end is a retirement
                self._record.note_applied(self.incarnation, ("kid", str(kid)))
        for kid, _ in data["retired_bootstrap"]:
            self._record.note_applied(self.incarnation, ("kid", str(kid)))


class NodeEdge:
    """One node's client edge: connections by holder (a client's index), each with its token and
    grant. See the module docstring."""

    def __init__(self, record: AuthRecord, leeway_ms: int) -> None:
        self._record = record
        self._leeway_ms = leeway_ms
        #: Holder -> (its token, the connection's grant).
        self.connections: dict[int, tuple[str, Grant]] = {}
        self._generation = -1

    def close_all(self) -> None:
        """The node crashed: every connection is gone."""
        self.connections.clear()

    def admit(self, auth: RecordingAuth, holder: int, bearer: str, need: Need, now_ms: int) -> None:
        """Let a request through (recorded as accepted) or raise its refusal: Unauthenticated
        (the token, at connect time or since) or PermissionDenied (its scopes)."""
        try:
            grant = self._grant(auth, holder, bearer, now_ms)
            if need is not None and not scopes.allowed(grant.claims.scopes, need[0], need[1], b"", True):
                raise PermissionDenied(f"this token does not grant {need[0]}:{need[1]}", scope=f"{need[0]}:{need[1]}")
        except (Unauthenticated, PermissionDenied):
            self._record.refused += 1
            raise
        self._record.note_accepted(auth.incarnation, holder, grant.claims)

    def _grant(self, auth: RecordingAuth, holder: int, bearer: str, now_ms: int) -> Grant:
        held = self.connections.get(holder)
        if held is not None and held[0] == bearer:
            grant = held[1]
            refused = grant.refused or grant.lapsed(now_ms)
            if refused is not None:
                del self.connections[holder]  # closed: the client reconnects, with a new token or not
                raise refused
            return grant
        # A new connection (or a new token on it): verified once, as at a hello.
        self.connections.pop(holder, None)
        claims = tokens.verify(bearer, auth.trusted_keys(), audience=SIM_CLUSTER_ID, now_ms=now_ms, leeway_ms=self._leeway_ms)
        refused = auth.refusal(claims, now_ms)
        if refused is not None:
            raise refused
        grant = auth.grant(claims, self._leeway_ms)
        self.connections[holder] = (bearer, grant)
        return grant

    def generation_moved(self, auth: RecordingAuth) -> bool:
        """After an apply round: was a revocation or a key retirement applied since the last call?
        (One int compare, as the runtime's ``Authoriser.generation_moved``.)"""
        if auth.generation == self._generation:
            return False
        self._generation = auth.generation
        return True

    def recheck(self, auth: RecordingAuth, now_ms: int) -> None:
        """The generation moved: re-check every live connection, closing those refused (the
        runtime's ``ClientServer._after_round``)."""
        for _, grant in self.connections.values():
            if grant.refused is None and auth.recheck(grant, now_ms) is not None:
                self._record.closed += 1


def check_auth(record: AuthRecord) -> None:
    """No request accepted by a node after the revocation of its token, or the retirement of its
    token's key, was applied on that node (in any lifetime up to the request's)."""
    # Per node, the first moment each revocation or retirement was applied there, in any lifetime
    # (moments only grow, and a node's lifetimes follow each other).
    applied_on: dict[int, dict[Covered, tuple[int, int]]] = {}
    for incarnation, node_id in enumerate(record.node_of):
        merged = applied_on.setdefault(node_id, {})
        for covered, first in record.applied[incarnation].items():
            if covered not in merged or first[0] < merged[covered][0]:
                merged[covered] = first
    for incarnation, moment, at_us, holder, jti, kid in record.accepted:
        applied = applied_on[record.node_of[incarnation]]
        for covered in (("jti", jti), ("kid", kid)):
            hit = applied.get(covered)
            if hit is not None and hit[0] < moment:
                what = f"the revocation of token {jti}" if covered[0] == "jti" else f"the retirement of key {kid}"
                raise CheckFailure(
                    "auth",
                    f"node {record.node_of[incarnation]} accepted a request of client {holder} at {at_us / 1e6:.6f}s"
                    f" on token {jti} (key {kid}), but {what} was applied there at {hit[1] / 1e6:.6f}s",
                )
