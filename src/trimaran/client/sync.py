"""A blocking facade over :class:`~.client.Client`, for code that is not trio.

``connect_sync`` starts one dedicated thread running ``trio.run``; the async client lives there,
and each blocking method hands its call to that thread with ``trio.from_thread.run`` and waits.
Any number of caller threads may share one facade: their calls become concurrent tasks of the one
trio run, pipelined on the client's one connection.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Callable

import trio

from trimaran.errors import InvalidArgument, TrimaranError

from .client import TIMEOUT_MS_DEFAULT, Client, Endpoints
from .connection import Address
from .auth import SyncAuthClient
from .chat import SyncChatClient
from .jobs import SyncJobsClient
from .kv import SyncKvClient
from .members import SyncMembersClient
from .register import BytesLike

#: How long closing waits for the trio thread (it only has to cancel its tasks).
_JOIN_TIMEOUT_S = 10.0


class SyncClient:
    """The blocking twin of :class:`Client`; same methods, same errors. Use ``with connect_sync(...)``."""

    def __init__(self, endpoints: Endpoints | None = None, **options: Any) -> None:
        # Built here so bad options fail in the caller's thread, before any thread starts.
        self._client = Client(endpoints, **options)
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        #: The KV cache service's methods, blocking: ``c.kv.set("k", b"v", ttl_ms=5000)``.
        self.kv = SyncKvClient(self._client.kv, self._call)
        #: The auth service's methods, blocking: ``c.auth.revoke(jti)``.
        self.auth = SyncAuthClient(self._client.auth, self._call)
        self.chat = SyncChatClient(self._client.chat, self._call)
        #: The job queue's methods, blocking: ``c.jobs.enqueue("emails", {"to": "a@b.c"})``.
        self.jobs = SyncJobsClient(self._client.jobs, self._call)
        #: Membership and leadership, blocking: ``c.members.list()``, ``c.members.transfer(2)``.
        self.members = SyncMembersClient(self._client.members, self._call)

    # ------------------------------------------------------------------ lifetime

    def __enter__(self) -> SyncClient:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def open(self) -> None:
        """Start the background trio thread (``with`` does this)."""
        with self._lock:
            if self._thread is not None or self._closed:
                raise InvalidArgument("a SyncClient is opened once")
            self._thread = threading.Thread(target=self._thread_main, name="trimaran-client", daemon=True)
            self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def close(self) -> None:
        """Stop the trio thread; calls still running in other threads get an error."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            token, stop = self._token, self._stop
        if token is not None and stop is not None:
            try:
                trio.from_thread.run_sync(stop.set, trio_token=token)
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
            self._thread.join(_JOIN_TIMEOUT_S)

    def _thread_main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to open(); the thread must not die silently
            if not self._ready.is_set():
                self._startup_error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        async with self._client:
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        token = self._token
        if token is None or self._closed:
            raise InvalidArgument("the client is not open: use `with trimaran.connect_sync(...) as c:`")

        async def run() -> Any:
            return await fn(*args, **kwargs)

        try:
            return trio.from_thread.run(run, trio_token=token)
        except trio.RunFinishedError:
            raise InvalidArgument("the client was closed") from None
        except trio.Cancelled:
            # Only happens when close() cancels a call that was still running.
            raise TrimaranError("the client was closed while the call was running") from None

    # ------------------------------------------------------------------ the Client's API, blocking

    @property
    def leader_id(self) -> int | None:
        return self._client.leader_id

    def command(self, service: str, command: Any, *, timeout_ms: int | None = None) -> Any:
        """Blocking :meth:`Client.command`."""
        return self._call(self._client.command, service, command, timeout_ms=timeout_ms)

    def read(
        self, service: str, query: Any, consistency: str = "linearizable", *, timeout_ms: int | None = None
    ) -> Any:
        """Blocking :meth:`Client.read`."""
        return self._call(self._client.read, service, query, consistency, timeout_ms=timeout_ms)

    def status(self, *, timeout_ms: int | None = None) -> dict[str, Any]:
        """Blocking :meth:`Client.status`."""
        return self._call(self._client.status, timeout_ms=timeout_ms)

    def node_status(self, address: str | Address, *, timeout_ms: int | None = None) -> dict[str, Any]:
        """Blocking :meth:`Client.node_status`."""
        return self._call(self._client.node_status, address, timeout_ms=timeout_ms)

    def node_read(self, address: str | Address, service: str, query: Any, *, timeout_ms: int | None = None) -> Any:
        """Blocking :meth:`Client.node_read`."""
        return self._call(self._client.node_read, address, service, query, timeout_ms=timeout_ms)

    def set(self, key: BytesLike, value: BytesLike, *, timeout_ms: int | None = None) -> None:
        """Blocking :meth:`Client.set`."""
        self._call(self._client.set, key, value, timeout_ms=timeout_ms)

    def get(self, key: BytesLike, consistency: str = "linearizable", *, timeout_ms: int | None = None) -> bytes | None:
        """Blocking :meth:`Client.get`."""
        return self._call(self._client.get, key, consistency, timeout_ms=timeout_ms)

    def cas(self, key: BytesLike, expected: BytesLike | None, new: BytesLike, *, timeout_ms: int | None = None) -> bool:
        """Blocking :meth:`Client.cas`."""
        return self._call(self._client.cas, key, expected, new, timeout_ms=timeout_ms)

    def delete(self, key: BytesLike, *, timeout_ms: int | None = None) -> bool:
        """Blocking :meth:`Client.delete`."""
        return self._call(self._client.delete, key, timeout_ms=timeout_ms)

    def incr(self, key: BytesLike, delta: int = 1, *, timeout_ms: int | None = None) -> int:
        """Blocking :meth:`Client.incr`."""
        return self._call(self._client.incr, key, delta, timeout_ms=timeout_ms)


def connect_sync(
    endpoints: Endpoints | None = None,
    *,
    cluster_id: str | None = None,
    token: str | None = None,
    timeout_ms: int = TIMEOUT_MS_DEFAULT,
    **options: Any,
) -> SyncClient:
    """The blocking client, for scripts and threaded servers (Flask, Django)::

        with trimaran.connect_sync("127.0.0.1:7001,127.0.0.1:7002") as c:
            c.set("greeting", "hello")
            print(c.get("greeting"))

    Same options (endpoints default to ``$TRIMARAN_ENDPOINTS``, else ``make run``'s) and errors as
    :func:`trimaran.connect`; safe to share between threads.
    """
    return SyncClient(endpoints, cluster_id=cluster_id, token=token, timeout_ms=timeout_ms, **options)
