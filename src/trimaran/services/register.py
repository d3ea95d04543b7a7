"""A tiny replicated register map: the test service that exercises the Replica end to end.

Commands (lists): ``["set", key, value]``, ``["cas", key, expected, new]`` (expected None = absent),
``["delete", key]``, ``["incr", key, delta]``. Queries: ``["get", key]``. Keys and values are bytes;
``incr`` treats a missing key as 0 and stores the decimal ASCII of the result (non-idempotent, so a
command applied twice shows in the history).
"""

from __future__ import annotations

from typing import Any

from trimaran import limits
from trimaran.errors import InvalidArgument, TooLarge
from trimaran.protocols.codec import brief
from trimaran.protocols.service import ApplyContext

INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)


def _key(v: Any) -> bytes:
    if type(v) is not bytes or not v:
        raise InvalidArgument("key must be non-empty bytes")
    if len(v) > limits.key_bytes_max:
        raise TooLarge(f"key of {len(v)} bytes is over key_bytes_max={limits.key_bytes_max}")
    return v


def _value(v: Any) -> bytes:
    if type(v) is not bytes:
        raise InvalidArgument("value must be bytes")
    if len(v) > limits.value_bytes_max:
        raise TooLarge(f"value of {len(v)} bytes is over value_bytes_max={limits.value_bytes_max}")
    return v


class RegisterService:
    name = "register"

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        if type(command) is not list or not command or type(command[0]) is not str:
            raise InvalidArgument("command must be [op, ...]")
        op, args = command[0], command[1:]
        if op == "set" and len(args) == 2:
            self.data[_key(args[0])] = _value(args[1])
            return None
        if op == "cas" and len(args) == 3:
            key, expected, new = _key(args[0]), args[1], _value(args[2])
            if expected is not None:
                expected = _value(expected)
            if self.data.get(key) != expected:
                return False
            self.data[key] = new
            return True
        if op == "delete" and len(args) == 1:
            return self.data.pop(_key(args[0]), None) is not None
        if op == "incr" and len(args) == 2:
            key, delta = _key(args[0]), args[1]
            if type(delta) is not int:
                raise InvalidArgument("delta must be an integer")
            current = self.data.get(key, b"0")
            try:
                value = int(current)
            except ValueError:
                raise InvalidArgument("value is not an integer") from None
            result = value + delta
            if not INT64_MIN <= result <= INT64_MAX:
                raise InvalidArgument("increment overflows int64")
            self.data[key] = str(result).encode()
            return result
        raise InvalidArgument(f"unknown register command {brief(op)} with {len(args)} arguments")

    def on_time(self, ctx: ApplyContext) -> None:
        """The register has no timers."""

    def next_deadline_ms(self) -> int | None:
        return None

    def query(self, query: Any, ctx: ApplyContext) -> Any:
        if type(query) is not list or len(query) != 2 or query[0] != "get":
            raise InvalidArgument("query must be ['get', key]")
        return self.data.get(_key(query[1]))

    def snapshot(self) -> Any:
        return [[k, v] for k, v in sorted(self.data.items())]

    def restore(self, data: Any) -> None:
        self.data = {bytes(k): bytes(v) for k, v in data}
