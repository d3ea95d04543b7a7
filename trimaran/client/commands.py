"""One-shot calls behind the client-side CLI commands (``trimaran status``, ``trimaran kv ...``).

The CLI only parses arguments and prints; what a command does lives here, so it is testable and
reusable without click. Each function runs its own short trio run.
"""

from __future__ import annotations

import base64
from typing import Any

import trio

from .client import Client
from .status import ClusterStatus, fetch_cluster_status


def cluster_status(
    endpoints: str, *, cluster_id: str | None = None, token: str | None = None, timeout_ms: int = 2_000
) -> ClusterStatus:
    """Every node's status, merged (nodes that do not answer within ``timeout_ms`` show as down)."""

    async def run() -> ClusterStatus:
        async with Client(endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms) as c:
            return await fetch_cluster_status(c)

    return trio.run(run)


def register_call(
    endpoints: str,
    method: str,
    *args: Any,
    cluster_id: str | None = None,
    token: str | None = None,
    timeout_ms: int = 5_000,
) -> Any:
    """Call one register method (``get``, ``set``, ``delete``, ...) of a fresh client and return its result."""

    async def run() -> Any:
        async with Client(endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms) as c:
            return await getattr(c, method)(*args)

    return trio.run(run)


def value_to_json(value: bytes | None) -> dict[str, Any]:
    """A stored value for JSON output: UTF-8 text as ``value``, other bytes as ``value_base64``."""
    if value is None:
        return {"found": False, "value": None}
    try:
        return {"found": True, "value": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"found": True, "value_base64": base64.b64encode(value).decode("ascii")}
