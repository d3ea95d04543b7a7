"""The ``auth`` service's methods on a client (``c.auth``): trusted keys and revocations.

Each goes through the log (exactly-once) and needs the ``admin:*`` scope once a node enforces
tokens. See :mod:`trimaran.services.auth` for the semantics; tokens themselves are made offline
(:func:`trimaran.protocols.tokens.sign`, or ``trimaran auth token``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from trimaran import limits
from trimaran.errors import InvalidArgument, ProtocolError

SERVICE = "auth"


class _Calls(Protocol):
    async def command(self, service: str, command: Any, *, timeout_ms: int | None = None) -> Any: ...

    async def read(
        self, service: str, query: Any, consistency: str = "linearizable", *, timeout_ms: int | None = None
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key the cluster knows: ``not_after_ms`` 0 means no end; ``source`` is "config" or "log"."""

    kid: str
    public_key: bytes
    not_after_ms: int
    source: str


def _kid(kid: Any) -> str:
    if not isinstance(kid, str) or not 0 < len(kid) <= limits.kid_chars_max:
        raise InvalidArgument(f"kid must be a string of 1..{limits.kid_chars_max} characters")
    return kid


class AuthClient:
    """``c.auth`` on an async client."""

    def __init__(self, client: _Calls) -> None:
        self._client = client

    async def trust(self, kid: str, public_key: bytes, *, not_after_ms: int = 0, timeout_ms: int | None = None) -> bool:
        """Trust ``public_key`` (32 raw Ed25519 bytes) under ``kid``; False if it already was."""
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise InvalidArgument("public_key must be 32 raw bytes (Ed25519)")
        return bool(await self._client.command(SERVICE, ["trust", _kid(kid), public_key, int(not_after_ms)], timeout_ms=timeout_ms))

    async def retire(self, kid: str, *, timeout_ms: int | None = None) -> bool:
        """Stop trusting ``kid`` from now (log time); False if it was not trusted."""
        return bool(await self._client.command(SERVICE, ["retire", _kid(kid)], timeout_ms=timeout_ms))

    async def revoke(self, jti: str, *, exp_ms: int = 0, timeout_ms: int | None = None) -> bool:
        """Revoke the token with id ``jti``; ``exp_ms`` (its exp, if known) lets the cluster forget
        the revocation once the token would have expired anyway. False if already revoked."""
        if not isinstance(jti, str) or not jti:
            raise InvalidArgument("jti must be a non-empty string")
        return bool(await self._client.command(SERVICE, ["revoke", jti, int(exp_ms)], timeout_ms=timeout_ms))

    async def keys(self, *, timeout_ms: int | None = None) -> list[KeyInfo]:
        """Every key the cluster trusts or has retired recently, by kid."""
        rows = await self._client.read(SERVICE, ["keys"], timeout_ms=timeout_ms)
        try:
            return [KeyInfo(str(kid), bytes(pk), int(na), str(src)) for kid, pk, na, src in rows]
        except (TypeError, ValueError):
            raise ProtocolError("malformed auth keys answer") from None

    async def is_revoked(self, jti: str, *, timeout_ms: int | None = None) -> bool:
        return bool(await self._client.read(SERVICE, ["revoked", jti], timeout_ms=timeout_ms))


class SyncAuthClient:
    """``c.auth`` on a blocking client: the same methods, each run to completion."""

    def __init__(self, inner: AuthClient, call: Callable[..., Any]) -> None:
        self._inner = inner
        self._call = call

    def trust(self, kid: str, public_key: bytes, *, not_after_ms: int = 0, timeout_ms: int | None = None) -> bool:
        return bool(self._call(self._inner.trust, kid, public_key, not_after_ms=not_after_ms, timeout_ms=timeout_ms))

    def retire(self, kid: str, *, timeout_ms: int | None = None) -> bool:
        return bool(self._call(self._inner.retire, kid, timeout_ms=timeout_ms))

    def revoke(self, jti: str, *, exp_ms: int = 0, timeout_ms: int | None = None) -> bool:
        return bool(self._call(self._inner.revoke, jti, exp_ms=exp_ms, timeout_ms=timeout_ms))

    def keys(self, *, timeout_ms: int | None = None) -> list[KeyInfo]:
        result: list[KeyInfo] = self._call(self._inner.keys, timeout_ms=timeout_ms)
        return result

    def is_revoked(self, jti: str, *, timeout_ms: int | None = None) -> bool:
        return bool(self._call(self._inner.is_revoked, jti, timeout_ms=timeout_ms))
