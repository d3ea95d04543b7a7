"""The JSON both HTTP edge surfaces (REST bodies, WebSocket frames) write: bytes as text when they
are UTF-8 and as base64 when not, typed errors as ``{"code", "name", "message", "details"}``."""

from __future__ import annotations

import base64
import json
from typing import Any

from trimaran.errors import TrimaranError


def data_fields(data: bytes, name: str = "data") -> dict[str, str]:
    """``{name: text}`` for UTF-8 bytes, else ``{name + "_base64": ...}``."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def error_json(exc: TrimaranError) -> dict[str, Any]:
    """A typed error: its wire code, its class name in :mod:`trimaran.errors`, message and details."""
    wire = exc.to_wire()
    return {"code": wire["code"], "name": type(exc).__name__, "message": wire["message"], "details": wire["details"]}


def _default(value: Any) -> Any:
    # Bytes in error details (a key, a current value): text when UTF-8, else escaped text.
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    return repr(value)


def encode(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=_default)
