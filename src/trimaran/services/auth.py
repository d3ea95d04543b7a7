"""The auth service: which public keys the cluster trusts, and which tokens it has revoked.

Replicated so that every node agrees at the same log position: a token refused on one node after a
revocation was applied there is refused on every node once it applies the same entry. Only public
keys and token ids go through the log — never a secret. A new cluster's first keys come from each
node's configuration (``bootstrap`` keys, never written to the log or a snapshot); keys added later
with ``trust`` are replicated, and either kind can be retired through the log.

Commands (through the log, exactly-once; a refused command changes nothing):

============  ===============================================  =====================================
op            arguments                                        result
============  ===============================================  =====================================
``trust``     kid (str), public_key (32 bytes, Ed25519),       True if new, False if the same key
              not_after_ms (int; 0 = no end)                   was already trusted (not_after kept)
``retire``    kid                                              True if the key was trusted until now
``revoke``    jti (str), exp_ms (the token's exp; 0 = the      True if newly revoked
              longest a token lives, token_ttl_ms_max)
============  ===============================================  =====================================

Queries (against the applied state at the last applied entry's log time):

=============  ========================  ================================================================
op             arguments                 result
=============  ========================  ================================================================
``keys``       (none)                    [[kid, public_key, not_after_ms, source], ...] by kid, where
                                         source is "config" or "log"; retired keys show their end
``revoked``    jti                       True if the token id is revoked
``stats``      (none)                    {"keys", "revocations", "generation"}
=============  ========================  ================================================================

Semantics:

- **Retirement.** ``retire`` sets the key's ``not_after_ms`` to the entry's log time: tokens it
  signed are refused from then on. A retired key is kept (so ``keys`` shows it) for
  ``retired_key_keep_ms`` of log time, then dropped; a dropped kid is simply unknown, which refuses
  the same tokens. A ``trust`` of a retired kid is refused (choose a new kid for a new key).
- **Revocation** is bounded: an entry is dropped once the revoked token's own ``exp`` (plus the
  leeway a node allows) has passed in log time (log time past it, not at it: a token is valid
  through ``exp`` + leeway), since the token is refused for expiry from then on.
  At most ``limits.revocations_max`` are held; a revoke beyond that raises ``TooLarge``. A
  revoke whose ``exp_ms`` has passed holds nothing (the token is refused as expired) and returns False.
- **After a restart.** A node may have applied a revocation or retirement whose commit index never
  reached its disk before a crash; it boots without it applied, and only relearns the commit index
  from a leader. So at boot the Replica shows this service the ``revoke`` and ``retire`` commands of
  the node's own unapplied log tail (:meth:`AuthService.on_unapplied`), and the edge refuses what they
  name until log application passes their index (then the applied state decides: the command
  committed, or another entry took its place). Conservative: a revocation that never commits
  refuses its token here until then. Edge decisions only; queries and snapshots never see it.
- **Generation.** Every applied ``retire`` or ``revoke`` adds one to ``generation``; a node compares
  it after each apply round and re-checks its live sessions when it moved, closing those that rest
  on a revoked token or a retired key.

The edge's decisions against this replica's state live here too, pure, so the node's authoriser
(:mod:`trimaran.node.authoriser`) and the simulator's edge (:mod:`trimaran.simulations.auth_edge`)
run the same code: :meth:`AuthService.refusal` (is a verified token revoked, or its key retired or
unknown, at ``now_ms``), :meth:`AuthService.grant` (what a connection's verified token allows, and
until when), :meth:`Grant.lapsed` (the per-request check: expired, or its key's end reached) and
:meth:`AuthService.recheck` (a live connection's grant after the generation moved).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from trimaran import limits
from trimaran.errors import ConfigError, InvalidArgument, TooLarge, Unauthenticated
from trimaran.protocols.service import ApplyContext
from trimaran.protocols.tokens import ED25519_PUBLIC_KEY_BYTES, Claims, TrustedKey

#: How long (log time) a retired key is still listed by ``keys`` before it is dropped.
retired_key_keep_ms = 7 * 24 * 3600 * 1000
_JTI_CHARS_MAX = 256

#: Planted bugs for the simulator's mutation tests (``tests/simulations/test_mutants.py``); a node
#: never sets them.
AUTH_MUTANTS = {
    # Live connections are then served on the state checked when they connected.
    "revocation_stale_state": "a revocation leaves the auth generation alone: no edge re-checks its live connections",
    # The re-check then looks at revocations only, and keeps the key end granted at connect time.
    "retirement_stale_state": "re-checking a live connection ignores its key's retirement",
    # A restarted node then serves a token it revoked before the crash, until it relearns the commit.
    "restart_forgets_revocations": "at boot, revocations and retirements in the unapplied log tail are ignored",
}

#: The ``reason`` detail of each refusal of a verified token (what a client may act on).
REVOKED = "revoked"
KEY_RETIRED = "key_retired"
EXPIRED = "expired"


@dataclass(slots=True)
class Grant:
    """What a connection's verified token allows, and until when (node clock, ms)."""

    claims: Claims
    #: Refused once the node's clock is past this (the token's exp plus the leeway).
    expires_after_ms: int
    #: Refused from this time on (the signing key's not-after; 0: none).
    key_not_after_ms: int
    #: Set when a revocation or a retirement took the token away: every later request gets it.
    refused: Unauthenticated | None = None
    #: The kv ops this grant allows on every key, worked out from ``claims.scopes`` by the edge's
    #: authoriser at the connection's first request and kept here (a cache: the scopes never change).
    whole_kv_ops: frozenset[str] | None = None

    def lapsed(self, now_ms: int) -> Unauthenticated | None:
        """The per-request check (two integer comparisons, no crypto, no replica state): the
        refusal of a token that expired or whose key's end came, or None. ``refused`` is the
        caller's to check first (it is not counted as a new refusal)."""
        if self.key_not_after_ms and now_ms >= self.key_not_after_ms:
            return Unauthenticated("the token's key is retired", reason=KEY_RETIRED)
        if now_ms > self.expires_after_ms:
            return Unauthenticated("token expired", reason=EXPIRED)
        return None


@dataclass(slots=True)
class _Key:
    public_key: bytes
    not_after_ms: int
    #: "config" (bootstrap, from this node's configuration) or "log" (a replicated trust).
    source: str


class AuthService:
    name = "auth"

    def __init__(
        self,
        bootstrap: tuple[TrustedKey, ...] = (),
        leeway_ms: int = limits.token_leeway_ms_default,
        mutants: frozenset[str] = frozenset(),
    ) -> None:
        """``mutants`` (names from :data:`AUTH_MUTANTS`) exist for the simulator alone."""
        unknown = sorted(mutants - AUTH_MUTANTS.keys())
        if unknown:
            raise ConfigError(f"unknown auth mutants {unknown}")
        self._stale_revocations = "revocation_stale_state" in mutants
        self._stale_retirements = "retirement_stale_state" in mutants
        self._forget_tail = "restart_forgets_revocations" in mutants
        #: From the node's configuration: the same on every node of a cluster, like the kv settings.
        self._bootstrap = {k.kid: k for k in bootstrap}
        self._leeway_ms = leeway_ms
        self._keys: dict[str, _Key] = {}
        #: Retirements of bootstrap keys (which are not in _keys): kid -> not_after_ms.
        self._retired_bootstrap: dict[str, int] = {}
        self._revoked: dict[str, int] = {}  # jti -> drop_at_ms
        self._revoked_order: SortedList = SortedList()  # (drop_at_ms, jti)
        self.generation = 0
        #: Revocations and retirements in this node's unapplied log tail at boot: jti / kid -> the
        #: index of its entry (see "After a restart"); emptied as application passes them.
        self._pending_jti: dict[str, int] = {}
        self._pending_kid: dict[str, int] = {}
        self._reset_view()

    # ------------------------------------------------------------------------------ the edge's view

    def trusted_keys(self) -> dict[str, TrustedKey]:
        """Every key a token may name (retired ones with their end), for token verification."""
        return self._view

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    def refusal(self, claims: Claims, now_ms: int) -> Unauthenticated | None:
        """Why a verified token no longer holds on this replica at ``now_ms`` (the node's clock):
        its id is revoked, or its key is retired or no longer known; None if it holds."""
        if claims.jti in self._revoked or claims.jti in self._pending_jti:
            return Unauthenticated("token revoked", reason=REVOKED)
        key = self._view.get(claims.kid)
        if key is None or (key.not_after_ms and key.not_after_ms <= now_ms) or claims.kid in self._pending_kid:
            return Unauthenticated("the token's key is retired", reason=KEY_RETIRED)
        return None

    def grant(self, claims: Claims, leeway_ms: int) -> Grant:
        """A connection's grant for ``claims``, verified (``tokens.verify``) and not refused
        (:meth:`refusal`) at this state."""
        return Grant(claims, claims.exp_ms + leeway_ms, self._view[claims.kid].not_after_ms)

    def recheck(self, grant: Grant, now_ms: int) -> Unauthenticated | None:
        """A live connection's grant after the generation moved: its refusal (kept in
        ``grant.refused``, so every later request gets it), or None if it still holds (then its
        key's not-after is refreshed)."""
        exc = self.refusal(grant.claims, now_ms)
        if exc is not None and self._stale_retirements and exc.details["reason"] == KEY_RETIRED:
            return None
        if exc is None:
            grant.key_not_after_ms = self._view[grant.claims.kid].not_after_ms
            return None
        grant.refused = exc
        return exc

    def _reset_view(self) -> None:
        view = {}
        for kid, key in self._bootstrap.items():
            view[kid] = TrustedKey(kid, key.public_key, self._retired_bootstrap.get(kid, key.not_after_ms))
        for kid, k in self._keys.items():
            view[kid] = TrustedKey(kid, k.public_key, k.not_after_ms)
        self._view = view

    # ------------------------------------------------------------------------------ commands

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        if type(command) is not list or not command or type(command[0]) is not str:
            raise InvalidArgument("command must be [op, ...]")
        op, args = command[0], command[1:]
        if op == "trust" and len(args) == 3:
            return self._trust(_kid(args[0]), _public_key(args[1]), _ms(args[2], "not_after_ms"), ctx)
        if op == "retire" and len(args) == 1:
            return self._retire(_kid(args[0]), ctx)
        if op == "revoke" and len(args) == 2:
            return self._revoke(_jti(args[0]), _ms(args[1], "exp_ms"), ctx)
        raise InvalidArgument(f"unknown auth command {op[:32]!r} with {len(args)} arguments")

    def _trust(self, kid: str, public_key: bytes, not_after_ms: int, ctx: ApplyContext) -> bool:
        current = self._view.get(kid)
        if current is not None:
            if current.not_after_ms and current.not_after_ms <= ctx.timestamp_ms:
                raise InvalidArgument(f"key id {kid!r} was retired; trust the new key under a new kid")
            if current.public_key != public_key:
                raise InvalidArgument(f"key id {kid!r} already names another key")
            return False
        if len(self._keys) >= limits.trusted_keys_max:
            raise TooLarge(f"already {limits.trusted_keys_max} trusted keys (trusted_keys_max): retire some first")
        self._keys[kid] = _Key(public_key, not_after_ms, "log")
        self._reset_view()
        return True

    def _retire(self, kid: str, ctx: ApplyContext) -> bool:
        current = self._view.get(kid)
        if current is None or (current.not_after_ms and current.not_after_ms <= ctx.timestamp_ms):
            return False
        if kid in self._keys:
            self._keys[kid].not_after_ms = ctx.timestamp_ms
        else:
            self._retired_bootstrap[kid] = ctx.timestamp_ms
        self.generation += 1
        self._reset_view()
        return True

    def _revoke(self, jti: str, exp_ms: int, ctx: ApplyContext) -> bool:
        if jti in self._revoked:
            return False
        if exp_ms and exp_ms + self._leeway_ms < ctx.timestamp_ms:
            return False  # already expired: refused anyway, nothing to hold
        if len(self._revoked) >= limits.revocations_max:
            # Not Unavailable: that is retryable, and a retry gets the same saved answer.
            raise TooLarge(f"already {limits.revocations_max} revocations held (revocations_max)")
        if not exp_ms:
            # A token accepted before now was issued by now + leeway (verify refuses a later iat)
            # and lives at most token_ttl_ms_max from then.
            exp_ms = ctx.timestamp_ms + self._leeway_ms + limits.token_ttl_ms_max
        # A token is accepted through exp + leeway (tokens.verify, Grant.lapsed refuse only past
        # it), and a node's clock can read exactly the log time of the entry that drops this: so
        # hold it until log time is past that instant, never at it.
        drop_at_ms = exp_ms + self._leeway_ms + 1
        self._revoked[jti] = drop_at_ms
        self._revoked_order.add((drop_at_ms, jti))
        if not self._stale_revocations:
            self.generation += 1
        return True

    def on_unapplied(self, index: int, command: Any) -> None:
        """A command of this node's own log past what it applied at boot (the Replica calls this
        before applying anything): hold a revocation or retirement there provisionally."""
        if self._forget_tail or type(command) is not list or len(command) < 2 or command[1].__class__ is not str:
            return  # malformed: it will apply as an error, if it commits at all
        if command[0] == "revoke" and len(command) == 3:
            self._pending_jti[command[1]] = index
        elif command[0] == "retire" and len(command) == 2:
            self._pending_kid[command[1]] = index

    # ------------------------------------------------------------------------------ time

    def on_time(self, ctx: ApplyContext) -> None:
        if self._pending_jti or self._pending_kid:
            # Applied this far: the applied state now decides what the boot tail held here.
            self._pending_jti = {j: i for j, i in self._pending_jti.items() if i > ctx.index}
            self._pending_kid = {k: i for k, i in self._pending_kid.items() if i > ctx.index}
        now = ctx.timestamp_ms
        while self._revoked_order and self._revoked_order[0][0] <= now:
            _, jti = self._revoked_order.pop(0)
            del self._revoked[jti]
        stale = [kid for kid, k in self._keys.items() if k.not_after_ms and k.not_after_ms + retired_key_keep_ms <= now]
        for kid in stale:
            del self._keys[kid]
        if stale:
            self._reset_view()

    def next_deadline_ms(self) -> int | None:
        deadlines = [self._revoked_order[0][0]] if self._revoked_order else []
        deadlines += [k.not_after_ms + retired_key_keep_ms for k in self._keys.values() if k.not_after_ms]
        return min(deadlines) if deadlines else None

    # ------------------------------------------------------------------------------ queries

    def query(self, query: Any, ctx: ApplyContext) -> Any:
        if type(query) is not list or not query or type(query[0]) is not str:
            raise InvalidArgument("query must be [op, ...]")
        op = query[0]
        if op == "keys" and len(query) == 1:
            sources = {kid: "config" for kid in self._bootstrap} | {kid: "log" for kid in self._keys}
            return [[kid, k.public_key, k.not_after_ms, sources[kid]] for kid, k in sorted(self._view.items())]
        if op == "revoked" and len(query) == 2:
            return _jti(query[1]) in self._revoked
        if op == "stats" and len(query) == 1:
            return {"keys": len(self._view), "revocations": len(self._revoked), "generation": self.generation}
        raise InvalidArgument(f"unknown auth query {op[:32]!r}")

    # ------------------------------------------------------------------------------ snapshots

    def snapshot(self) -> dict[str, Any]:
        """Replicated state only: bootstrap keys come from each node's configuration."""
        return {
            "keys": [[kid, k.public_key, k.not_after_ms] for kid, k in sorted(self._keys.items())],
            "retired_bootstrap": [[kid, at] for kid, at in sorted(self._retired_bootstrap.items())],
            "revoked": [[jti, at] for at, jti in self._revoked_order],
            "generation": self.generation,
        }

    def restore(self, data: Any) -> None:
        self._keys = {str(kid): _Key(bytes(pk), int(na), "log") for kid, pk, na in data["keys"]}
        self._retired_bootstrap = {str(kid): int(at) for kid, at in data["retired_bootstrap"]}
        self._revoked = {str(jti): int(at) for jti, at in data["revoked"]}
        self._revoked_order = SortedList((at, jti) for jti, at in self._revoked.items())
        self.generation = int(data["generation"])
        self._reset_view()


def _kid(v: Any) -> str:
    if type(v) is not str or not 0 < len(v) <= limits.kid_chars_max:
        raise InvalidArgument(f"kid must be a string of 1..{limits.kid_chars_max} characters")
    return v


def _jti(v: Any) -> str:
    if type(v) is not str or not 0 < len(v) <= _JTI_CHARS_MAX:
        raise InvalidArgument(f"jti must be a string of 1..{_JTI_CHARS_MAX} characters")
    return v


def _public_key(v: Any) -> bytes:
    if type(v) is not bytes or len(v) != ED25519_PUBLIC_KEY_BYTES:
        raise InvalidArgument(f"public_key must be {ED25519_PUBLIC_KEY_BYTES} raw bytes (Ed25519)")
    return v


def _ms(v: Any, name: str) -> int:
    if type(v) is not int or not 0 <= v <= limits.raft_counter_max:
        raise InvalidArgument(f"{name} must be an int in 0..2**53")
    return v
