"""The trimaran Python client: trio-native (:func:`connect`) and blocking (:func:`connect_sync`).

::

    async with trimaran.connect(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]) as c:
        revision = await c.kv.set("greeting", "hello", ttl_ms=60_000)
        entry = await c.kv.get("greeting")     # KvEntry(value=b"hello", revision=..., ttl_remaining_ms=...)

``c.kv`` is the KV cache (see :mod:`.kv`), ``c.chat`` chat pub/sub (see :mod:`.chat`), ``c.jobs`` the job queue (see :mod:`.jobs`; workers: :mod:`.worker`); ``c.set``/``c.get``/... address the small ``register``
test service.

Every error is a :class:`trimaran.errors.TrimaranError`; see that module for the tree.
"""

from .chat import ChatClient, ChatEvent, ChatMessage, HistoryPage, SyncChatClient
from .client import Client, connect
from .connection import Address, parse_endpoints
from .jobs import JobInfo, JobPage, JobResult, JobsClient, NewJob, QueueStats, SyncJobsClient
from .kv import KvClient, KvEntry, KvEvent, KvItem, ScanPage, SyncKvClient, WatchPage
from .sync import SyncClient, connect_sync
from .worker import JobContext, JobError, JobHandle, Jobs, Task, Worker, current_job

__all__ = [
    "Address",
    "ChatClient",
    "ChatEvent",
    "ChatMessage",
    "Client",
    "HistoryPage",
    "JobContext",
    "JobError",
    "JobHandle",
    "JobInfo",
    "JobPage",
    "JobResult",
    "Jobs",
    "JobsClient",
    "NewJob",
    "QueueStats",
    "SyncJobsClient",
    "Task",
    "Worker",
    "current_job",
    "KvClient",
    "KvEntry",
    "KvEvent",
    "KvItem",
    "ScanPage",
    "SyncChatClient",
    "SyncClient",
    "SyncKvClient",
    "WatchPage",
    "connect",
    "connect_sync",
    "parse_endpoints",
]
