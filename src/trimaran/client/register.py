"""Client methods of the ``register`` service (the replicated register map).

They are a mixin over two generic calls, ``command`` (exactly-once, through the session) and
``read`` (with a consistency level), so each later service (``c.kv`` for the KV cache, jobs, chat)
is one more small class over the same two calls. Arguments are checked here against the same
limits the node enforces, so an oversized key fails fast with ``TooLarge`` and nothing is sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trimaran import limits
from trimaran.errors import InvalidArgument, ProtocolError, TooLarge

SERVICE = "register"
#: A key or value: text is sent as its UTF-8 bytes.
BytesLike = str | bytes | bytearray | memoryview


def to_bytes(value: BytesLike, what: str) -> bytes:
    """``value`` as bytes (text as UTF-8), or ``InvalidArgument`` for anything else."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidArgument(f"{what} must be str or bytes, not {type(value).__name__}")


def check_key(key: BytesLike) -> bytes:
    data = to_bytes(key, "key")
    if not data:
        raise InvalidArgument("key must not be empty")
    if len(data) > limits.key_bytes_max:
        raise TooLarge(f"key of {len(data)} bytes is over key_bytes_max={limits.key_bytes_max}")
    return data


def check_value(value: BytesLike) -> bytes:
    data = to_bytes(value, "value")
    if len(data) > limits.value_bytes_max:
        raise TooLarge(f"value of {len(data)} bytes is over value_bytes_max={limits.value_bytes_max}")
    return data


class RegisterMethods:
    """``set``/``get``/``cas``/``delete``/``incr`` on the register service."""

    if TYPE_CHECKING:  # provided by the client class this mixes into

        async def command(self, service: str, command: Any, *, timeout_ms: int | None = None) -> Any: ...

        async def read(
            self, service: str, query: Any, consistency: str = "linearizable", *, timeout_ms: int | None = None
        ) -> Any: ...

    async def set(self, key: BytesLike, value: BytesLike, *, timeout_ms: int | None = None) -> None:
        """Store ``value`` under ``key``; returns once the write is committed on a majority and applied."""
        await self.command(SERVICE, ["set", check_key(key), check_value(value)], timeout_ms=timeout_ms)

    async def get(
        self, key: BytesLike, consistency: str = "linearizable", *, timeout_ms: int | None = None
    ) -> bytes | None:
        """The value under ``key`` (None if absent). ``consistency``: ``"linearizable"`` (default),
        ``"lease"`` (leader lease, no round trip to a quorum) or ``"stale"`` (any replica's state)."""
        result = await self.read(SERVICE, ["get", check_key(key)], consistency, timeout_ms=timeout_ms)
        return _expect(result, (bytes, type(None)), "get")

    async def cas(
        self, key: BytesLike, expected: BytesLike | None, new: BytesLike, *, timeout_ms: int | None = None
    ) -> bool:
        """Set ``key`` to ``new`` if its value is ``expected`` (None = absent); True if it was set."""
        command = ["cas", check_key(key), None if expected is None else check_value(expected), check_value(new)]
        return _expect(await self.command(SERVICE, command, timeout_ms=timeout_ms), bool, "cas")

    async def delete(self, key: BytesLike, *, timeout_ms: int | None = None) -> bool:
        """Remove ``key``; True if it existed."""
        return _expect(await self.command(SERVICE, ["delete", check_key(key)], timeout_ms=timeout_ms), bool, "delete")

    async def incr(self, key: BytesLike, delta: int = 1, *, timeout_ms: int | None = None) -> int:
        """Add ``delta`` to the integer stored (as decimal text) under ``key`` (absent = 0); the new value."""
        if type(delta) is not int or not -(1 << 63) <= delta < 1 << 63:
            raise InvalidArgument("delta must be an int64")
        return _expect(await self.command(SERVICE, ["incr", check_key(key), delta], timeout_ms=timeout_ms), int, "incr")


def _expect(result: Any, kind: type | tuple[type, ...], op: str) -> Any:
    if not isinstance(result, kind) or (kind is int and isinstance(result, bool)):
        raise ProtocolError(f"{op}: unexpected result type {type(result).__name__} from the node")
    return result
