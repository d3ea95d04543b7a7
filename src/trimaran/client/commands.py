"""One-shot calls behind the client-side CLI commands (``trimaran status``, ``trimaran kv ...``).

The CLI only parses arguments and prints; what a command does lives here, so it is testable and
reusable without click. Each function runs its own short trio run.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import trio

from .chat import ChatEvent
from trimaran.errors import InvalidArgument

from .client import Client
from .kv import KvEntry, KvEvent, KvItem
from .status import ClusterStatus, fetch_cluster_status
from .worker import Jobs, Worker


def cluster_status(
    endpoints: str, *, cluster_id: str | None = None, token: str | None = None, timeout_ms: int = 2_000
) -> ClusterStatus:
    """Every node's status, merged (nodes that do not answer within ``timeout_ms`` show as down)."""

    async def run() -> ClusterStatus:
        async with Client(endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms) as c:
            return await fetch_cluster_status(c)

    return trio.run(run)


def join_addresses(
    endpoints: str, *, cluster_id: str | None = None, token: str | None = None, timeout_ms: int = 10_000
) -> dict[int, tuple[str | None, str | None]]:
    """Every member's (peer address, client address), as the node of ``endpoints`` that answers
    knows them: what ``trimaran node run --join ENDPOINTS`` dials (needs ``cluster:read``)."""

    async def run() -> dict[int, tuple[str | None, str | None]]:
        async with Client(endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms) as c:
            status = await c.status()
        return {m["node_id"]: (m.get("peer_address"), m.get("address")) for m in status["members"]}

    return trio.run(run)


def service_call(
    endpoints: str,
    service: str,
    method: str,
    *args: Any,
    options: dict[str, Any] | None = None,
    cluster_id: str | None = None,
    token: str | None = None,
    timeout_ms: int = 5_000,
) -> Any:
    """Call one method of a client's service attribute (``c.kv``, ``c.auth``) on a fresh client."""

    async def run() -> Any:
        async with Client(endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms, connect_rounds_max=1) as c:
            return await getattr(getattr(c, service), method)(*args, **(options or {}))

    return trio.run(run)


def save_backup(
    endpoints: str,
    path: str,
    *,
    progress: Callable[[int, int], None] | None = None,
    cluster_id: str | None = None,
    token: str | None = None,
    timeout_ms: int = 600_000,
) -> dict[str, Any]:
    """``Client.backup`` on a fresh client: the backup file's header."""

    async def run() -> dict[str, Any]:
        async with Client(endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms) as c:
            return await c.backup(path, progress=progress)

    return trio.run(run)


def kv_scan(
    endpoints: str,
    prefix: str,
    on_item: Callable[[KvItem], None],
    *,
    limit: int | None = None,
    consistency: str = "linearizable",
    cluster_id: str | None = None,
    token: str | None = None,
    timeout_ms: int = 5_000,
) -> int:
    """Hand every live key under ``prefix`` to ``on_item`` as the pages arrive; how many there were."""

    async def run() -> int:
        count = 0
        async with Client(endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms, connect_rounds_max=1) as c:
            async for item in c.kv.scan(prefix, limit=limit, consistency=consistency):
                on_item(item)
                count += 1
        return count

    return trio.run(run)


def kv_watch(
    endpoints: str,
    key: str,
    on_event: Callable[[KvEvent], None],
    *,
    prefix: bool = False,
    from_revision: int | None = None,
    count: int | None = None,
    cluster_id: str | None = None,
    token: str | None = None,
    timeout_ms: int = 5_000,
) -> None:
    """Hand the changes to ``key`` (or under it, with ``prefix``) to ``on_event`` until ``count``
    events were seen (None: until interrupted). ``timeout_ms`` bounds each poll, not the watch."""

    async def run() -> None:
        seen = 0
        if count == 0:
            return
        async with Client(endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms) as c:
            async for event in c.kv.watch(key, from_revision, prefix=prefix):
                on_event(event)
                seen += 1
                if count is not None and seen >= count:
                    return

    trio.run(run)


def chat_subscribe(
    endpoints: str,
    channel: str,
    on_event: Callable[[ChatEvent], None],
    *,
    since: int | None = None,
    epoch: str | None = None,
    count: int | None = None,
    cluster_id: str | None = None,
    token: str | None = None,
    timeout_ms: int = 5_000,
) -> None:
    """Hand ``channel``'s events to ``on_event`` until ``count`` messages were seen (None: until
    interrupted); replays the history after ``since`` first."""

    async def run() -> None:
        seen = 0
        if count == 0:
            return
        async with Client(endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms) as c:
            async with c.chat.subscribe(channel, since=since, epoch=epoch) as events:
                async for event in events:
                    on_event(event)
                    seen += event.kind == "message"
                    if count is not None and seen >= count:
                        return

    trio.run(run)


def chat_event_to_json(event: ChatEvent) -> dict[str, Any]:
    """One ``chat subscribe --json`` line."""
    out: dict[str, Any] = {"kind": event.kind, "channel": event.channel, "offset": event.offset, "epoch": event.epoch}
    if event.data is not None:
        out.update(bytes_to_json("data", event.data))
    if event.session is not None:
        out["session"] = event.session
    if event.info is not None:
        out.update(bytes_to_json("info", event.info))
    if event.reason is not None:
        out["reason"] = event.reason
    if event.kind == "epoch":
        out["recovered"] = event.recovered
    out["at_ms"] = event.at_ms
    return out


def chat_event_line(event: ChatEvent) -> str:
    """One ``chat subscribe`` line: ``OFFSET DATA`` for a message, ``~ DATA`` ephemeral,
    ``+ SESSION INFO`` / ``- SESSION REASON`` presence, ``# epoch EPOCH`` a new epoch."""
    if event.kind == "message":
        return f"{event.offset} {text(event.data or b'')}"
    if event.kind == "ephemeral":
        return f"~ {text(event.data or b'')}"
    if event.kind == "join":
        return f"+ {event.session} {text(event.info or b'')}"
    if event.kind == "leave":
        return f"- {event.session} {event.reason}"
    return f"# epoch {event.epoch}" + ("" if event.recovered else " (messages were missed: history no longer reaches back)")


def bytes_to_json(name: str, data: bytes | None) -> dict[str, Any]:
    """``{name: text}`` for UTF-8 bytes, ``{name + "_base64": ...}`` for other bytes, ``{name: None}``."""
    if data is None:
        return {name: None}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def entry_to_json(key: str, entry: KvEntry | None) -> dict[str, Any]:
    """``kv get --json``: found, value (or value_base64), revision and remaining TTL."""
    if entry is None:
        return {"key": key, "found": False, "value": None}
    return {
        "key": key,
        "found": True,
        **bytes_to_json("value", entry.value),
        "revision": entry.revision,
        "ttl_remaining_ms": entry.ttl_remaining_ms,
    }


def item_to_json(item: KvItem) -> dict[str, Any]:
    """One ``kv scan --json`` line."""
    return {
        **bytes_to_json("key", item.key),
        **bytes_to_json("value", item.value),
        "revision": item.revision,
        "ttl_remaining_ms": item.ttl_remaining_ms,
    }


def event_to_json(event: KvEvent) -> dict[str, Any]:
    """One ``kv watch --json`` line."""
    return {
        "revision": event.revision,
        "kind": event.kind,
        **bytes_to_json("key", event.key),
        **bytes_to_json("value", event.value),
        "reason": event.reason,
    }


def text(data: bytes) -> str:
    """Bytes for a line of text output: UTF-8, other bytes as backslash escapes."""
    return data.decode("utf-8", errors="backslashreplace")


def item_line(item: KvItem) -> str:
    """One ``kv scan`` line: key, a tab, value."""
    return f"{text(item.key)}\t{text(item.value)}"


def event_line(event: KvEvent) -> str:
    """One ``kv watch`` line: ``REVISION put KEY VALUE`` or ``REVISION delete KEY REASON``."""
    tail = text(event.value) if event.kind == "put" and event.value is not None else (event.reason or "")
    return f"{event.revision} {event.kind} {text(event.key)} {tail}"


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for decoded job values: bytes as UTF-8 text, else base64."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_app(target: str) -> Jobs:
    """The :class:`Jobs` app named by ``MODULE:ATTRIBUTE`` (the module is imported with the current
    directory on ``sys.path``, like other worker CLIs)."""
    import importlib
    import os
    import sys

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise InvalidArgument(f"the app is MODULE:ATTRIBUTE (e.g. myapp.tasks:app), not {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgument(f"cannot import {module_name}: {exc}") from None
    app = getattr(module, attr, None)
    if not isinstance(app, Jobs):
        raise InvalidArgument(f"{target} is not a trimaran.Jobs app (found {type(app).__name__})")
    return app


def run_worker(
    app: Jobs,
    endpoints: str | None,
    *,
    queues: list[str] | None,
    concurrency: int,
    session_ttl_ms: int,
    grace_ms: int,
    cluster_id: str | None = None,
    token: str | None = None,
    timeout_ms: int = 5_000,
    on_started: Callable[[Worker], None] = lambda w: None,
) -> None:
    """Run ``app``'s worker until SIGTERM or SIGINT: the first stops it gracefully (no more
    claims; running jobs get ``grace_ms``, then are given back), a second one stops it at once."""
    import signal

    if app._client is not None:
        raise InvalidArgument("a worker run from the command line needs Jobs(endpoints), not Jobs(client=...)")
    if endpoints is not None:
        app.endpoints = endpoints
    if app.endpoints is None:
        raise InvalidArgument("no endpoints: give --endpoints (or TRIMARAN_ENDPOINTS, or Jobs(endpoints))")
    app.client_options = {**app.client_options, "timeout_ms": timeout_ms}
    for name, value in (("cluster_id", cluster_id), ("token", token)):
        if value is not None:
            app.client_options[name] = value
    worker = app.worker(queues=queues, concurrency=concurrency, session_ttl_ms=session_ttl_ms, grace_ms=grace_ms)

    async def run() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with app, trio.open_nursery() as nursery:

                async def on_signals() -> None:
                    async for _ in signals:
                        if worker.stopping:
                            nursery.cancel_scope.cancel()  # a second signal: stop now
                            return
                        worker.stop()

                async def work(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                    await worker.run(task_status=task_status)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(on_signals)
                await nursery.start(work)
                on_started(worker)

    trio.run(run)
