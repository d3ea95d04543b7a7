"""The auth side of the simulated workload: deterministic keys and tokens, and an admin client that
trusts new keys, retires old ones and revokes tokens in use while the faults strike.

Keys are Ed25519 keys derived from the seed (:func:`~trimaran.protocols.tokens.private_key_from_bytes`
of a sha256 of the seed and the key's label; never ``os.urandom``), and tokens are real PASETO
v4.public tokens (:func:`trimaran.protocols.tokens.sign`; Ed25519 signatures are deterministic),
so the same seed signs the same bytes. Every token is issued a minute before any node's clock
starts and lives :data:`TOKEN_TTL_MS`: none expires within a run, so every refusal a client meets
is a revocation, a retirement, or a key its node has not applied yet.

:class:`TokenIssuer` plays the token service clients refresh from: every node is configured with
two bootstrap keys (``admin`` signs the admin client's token, never retired; ``user0`` signs the
first client tokens). A client's token comes from the newest key whose trust was acknowledged and
whose retirement was not proposed, one token per (client, key) until it is revoked, so a client
refused for a key its node has not applied yet gets the same token back and tries another node,
and only revocations and retirements cost a new signature.

:class:`AuthAdmin` is a client of the ``auth`` service with an ``admin:*`` token, from the start
until the heal, one command at a time with the KV clients' retries (same seq) and deadlines:
``revoke`` a token some client holds (half the time), ``trust`` a new key, or ``retire`` a key
(the bootstrap ``user0`` too), keeping at least one other usable key. A command acknowledged is in
the durability check like any write; the auth checker (:mod:`trimaran.simulations.auth_edge`)
decides whether every node refused what it had to.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from trimaran import limits
from trimaran.protocols import tokens
from trimaran.protocols.tokens import TrustedKey
from trimaran.simulations.auth_edge import SIM_CLUSTER_ID
from trimaran.simulations.checkers import CheckFailure
from trimaran.simulations.workload import Client, ClientContext, PendingOp, WorkloadConfig

#: Every token's lifetime: longer than any run (the CLI takes any --sim-seconds, tokens may not
#: outlive token_ttl_ms_max).
TOKEN_TTL_MS = limits.token_ttl_ms_max
#: Tokens are issued this long before the nodes' clocks start (their ``iat`` is never ahead of a
#: node's clock, whatever its offset).
ISSUED_BEFORE_MS = 60_000
#: Keys the admin adds in one run, besides the two bootstrap keys (trusted_keys_max bounds the
#: cluster's; this bounds the signing work).
NEW_KEYS_MAX = 6
USER_SCOPES = ["kv:*", "jobs:*", "chat:*"]
ADMIN_SCOPES = ["admin:*"]

#: A key's life as the issuer sees it.
BOOTSTRAP, PROPOSED, USABLE, RETIRING, ABANDONED = "bootstrap", "proposed", "usable", "retiring", "abandoned"


@dataclass(slots=True)
class SimKey:
    kid: str
    private_pem: bytes
    public_key: bytes
    state: str


def derive_key(seed: int, kid: str, state: str) -> SimKey:
    """The run's key ``kid``: the same bytes for the same seed, in any process."""
    pem = tokens.private_key_from_bytes(hashlib.sha256(f"{seed}:auth-key:{kid}".encode()).digest())
    return SimKey(kid, pem, tokens.public_key_of(pem), state)


@dataclass(frozen=True, slots=True)
class Issued:
    token: str
    holder: int
    kid: str


class TokenIssuer:
    """Signs the run's tokens (see the module docstring); knows what the admin proposed."""

    def __init__(self, seed: int, issued_at_ms: int) -> None:
        self.seed = seed
        self.issued_at_ms = issued_at_ms
        self.keys: list[SimKey] = [derive_key(seed, "admin", BOOTSTRAP), derive_key(seed, "user0", BOOTSTRAP)]
        #: jti -> what was issued, in issue order.
        self.issued: dict[str, Issued] = {}
        #: Holder -> the jti it was last given.
        self.current: dict[int, str] = {}
        #: Token ids whose revocation was proposed (insertion-ordered; never a set, whose order
        #: would follow hash()).
        self.revoked: dict[str, None] = {}
        self.admin_holder = -1
        self._admin_token = ""

    @property
    def exp_ms(self) -> int:
        return self.issued_at_ms + TOKEN_TTL_MS

    def bootstrap(self) -> tuple[TrustedKey, ...]:
        """The keys every node's configuration trusts."""
        return tuple(TrustedKey(k.kid, k.public_key) for k in self.keys if k.state == BOOTSTRAP)

    def credential(self, holder: int) -> str:
        """The token ``holder`` presents from now on (see the module docstring)."""
        if holder == self.admin_holder:
            if not self._admin_token:
                self._admin_token = self._sign(self.keys[0], holder, ADMIN_SCOPES)
            return self._admin_token
        key = self.newest_usable()
        jti = self.current.get(holder)
        if jti is not None and jti not in self.revoked and self.issued[jti].kid == key.kid:
            return self.issued[jti].token
        return self._sign(key, holder, USER_SCOPES)

    def _sign(self, key: SimKey, holder: int, scopes: list[str]) -> str:
        jti = f"t{len(self.issued) + 1}"
        token = tokens.sign(
            key.private_pem, kid=key.kid, sub=f"client-{holder}", scopes=scopes, audience=SIM_CLUSTER_ID,
            now_ms=self.issued_at_ms, ttl_ms=TOKEN_TTL_MS, jti=jti,
        )  # fmt: skip
        self.issued[jti] = Issued(token, holder, key.kid)
        self.current[holder] = jti
        return token

    def usable(self) -> list[SimKey]:
        """User keys tokens may be signed with, oldest first."""
        return [k for k in self.keys[1:] if k.state in (BOOTSTRAP, USABLE)]

    def newest_usable(self) -> SimKey:
        usable = self.usable()
        assert usable, "the admin retires a key only while another one is usable"
        return usable[-1]

    # ------------------------------------------------------------------ the admin's choices

    def revocable(self) -> list[str]:
        """Token ids clients hold now (by holder), not revoked: what a revocation hurts most."""
        return [jti for holder, jti in sorted(self.current.items()) if holder != self.admin_holder and jti not in self.revoked]

    def new_key(self) -> SimKey | None:
        if len(self.keys) - 2 >= NEW_KEYS_MAX:
            return None
        key = derive_key(self.seed, f"user{len(self.keys) - 1}", PROPOSED)
        self.keys.append(key)
        return key

    def retirable(self) -> list[SimKey]:
        """Usable keys that may go: every usable key but one (the newest stays)."""
        return self.usable()[:-1]


class AuthAdmin(Client):
    """The admin client of the ``auth`` service (see the module docstring)."""

    def __init__(self, index: int, config: WorkloadConfig, rng: random.Random, ctx: ClientContext, issuer: TokenIssuer) -> None:
        super().__init__(index, config, rng, ctx)
        self.issuer = issuer
        issuer.admin_holder = index
        #: Commands acknowledged, by op.
        self.done: dict[str, int] = {"trust": 0, "retire": 0, "revoke": 0}

    def _begin_next(self) -> None:
        now = self.ctx.now_us
        if self.client_id == 0 or now >= self.stop_at_us:
            super()._begin_next()  # the session first; at the stop time, stop
            return
        op = self._draw_command(now)
        if op is None:
            self._set_timer(now + self.rng.randint(0, self.config.think_us_max))
            return
        self.op = op
        self._attempt()

    def _draw_command(self, now: int) -> PendingOp | None:
        rng, issuer = self.rng, self.issuer
        roll = rng.randrange(10)
        order = ("revoke", "trust", "retire") if roll < 5 else ("trust", "retire", "revoke") if roll < 7 else ("retire", "revoke", "trust")
        for op in order:
            command = self._command(op, rng, issuer)
            if command is not None:
                self.seq += 1
                return PendingOp(-1, op, b"", (command[1],), self.seq, now + self.config.op_deadline_us, command, service="auth")
        return None

    @staticmethod
    def _command(op: str, rng: random.Random, issuer: TokenIssuer) -> list[object] | None:
        if op == "revoke":
            jtis = issuer.revocable()
            if not jtis:
                return None
            jti = rng.choice(jtis)
            issuer.revoked[jti] = None  # issued no more, from the proposal on
            return ["revoke", jti, issuer.exp_ms]
        if op == "trust":
            key = issuer.new_key()
            return None if key is None else ["trust", key.kid, key.public_key, 0]
        keys = issuer.retirable()
        if not keys:
            return None
        key = rng.choice(keys)
        key.state = RETIRING  # no token is signed with it from the proposal on
        return ["retire", key.kid]

    def _complete(self, op: PendingOp, value: object) -> None:
        if op.kind == "register":
            super()._complete(op, value)
            return
        if type(value) is not bool:
            raise CheckFailure("workload", f"admin: unexpected answer {value!r} to {op.describe_request()}")
        if op.kind == "trust":
            self._key(op).state = USABLE
        self.done[op.kind] += 1
        self.ack_seq = op.seq
        self.acked_writes.append((self.client_id, op.seq))
        self.op = None
        self._set_timer(self.ctx.now_us + self.rng.randint(0, self.config.think_us_max))

    def _give_up(self, op: PendingOp) -> None:
        if op.kind == "register":
            super()._give_up(op)
            return
        # Not in the KV history, and not a liveness failure: the admin stops at the heal.
        if op.kind == "trust":
            self._key(op).state = ABANDONED  # may or may not be trusted: never used
        self.given_up += 1
        self.op = None
        self._set_timer(self.ctx.now_us + self.rng.randint(0, self.config.think_us_max))

    def _key(self, op: PendingOp) -> SimKey:
        (key,) = [k for k in self.issuer.keys if k.kid == op.args[0]]
        return key
