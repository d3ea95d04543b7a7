"""The LMDB writer: one dedicated OS thread that owns the store and does group commit.

Why a thread of its own: LMDB ties a write transaction to the OS thread that began it, and an
fsync blocks for milliseconds, which must not stall the trio loop (ticks, peers, clients). trio's
``to_thread.run_sync`` would also work with a ``CapacityLimiter(1)``, but it promises neither the
same OS thread for every call nor coalescing; a thread fed by a queue gives both plainly.

Group commit: while one transaction is being fsynced, the driver keeps handing over batches; the
next round takes *every* queued batch (up to ``group_batches_max``) and writes them as one
``storage.write([...])``: one transaction, one fsync. Batches are written in the order they were
submitted and reported back in that order, which is what :mod:`trimaran.cluster.ready` requires
("batches become durable in the order their Readies were taken").

Results go back to the trio thread with ``TrioToken.run_sync_soon`` (thread-safe, non-blocking),
so the writer never waits for the event loop before starting the next group.

Inline writes: :meth:`StorageWriter.write_inline` lets the driver write a small group on its own
thread when this thread has nothing outstanding, which saves a wake-up each way (the queue, then
``run_sync_soon``): on this path a follower's append goes from the socket to the fsync and back to
the socket without a thread switch. LMDB requires a write transaction to begin and end on one
thread, and one write transaction at a time; a lock around every ``storage.write`` gives both.

``StorageFullError`` is not fatal, whether the map is at its cap or the file system is full: the
refused group is kept and retried, ahead of anything newer, every ``retry_ms``; the driver is told
so it can refuse new client writes meanwhile, and is told again when a retry succeeds. The refused
group was aborted as a whole (one LMDB transaction), so the store never holds part of it, and the
driver's in-memory log simply stays ahead of the store, as it is while any write is in flight:
nothing it holds is reported durable, so nothing is acknowledged, until the retry lands. Any other
storage error is fatal for the node (it cannot promise durability any more): it is reported and
the thread stops.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

import trio

from trimaran.errors import StorageFullError
from trimaran.node.logs import SLOW_WRITE_S, event
from trimaran.node.stats import FSYNC_BUCKETS_S, Buckets
from trimaran.storage import BootState, LmdbStorage, WriteBatch

log = logging.getLogger("trimaran.node.writer")

#: Sentinel asking the thread to finish the queued work, close the store and exit.
_STOP = object()


@dataclass(slots=True)
class WriteResult:
    """Everything submitted with a sequence number <= ``seq`` is durable (when ``error`` is None)."""

    seq: int
    #: ``StorageFullError`` (retrying; nothing at or after the failed group is durable yet) or a
    #: fatal error (the thread has stopped).
    error: BaseException | None = None


class StorageWriter:
    """Owns one ``LmdbStorage`` on one OS thread; see the module docstring."""

    def __init__(
        self,
        path: str,
        on_result: Callable[[WriteResult], None],
        *,
        map_bytes_initial: int,
        map_bytes_max: int,
        group_batches_max: int = 1024,
        retry_ms: int = 1_000,
    ) -> None:
        self._path = path
        self._on_result = on_result
        self._map_bytes_initial = map_bytes_initial
        self._map_bytes_max = map_bytes_max
        self._group_batches_max = group_batches_max
        self._retry_s = retry_ms / 1000
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._booted = trio.Event()
        self._boot: BootState | None = None
        self._boot_error: BaseException | None = None
        self._closed = trio.Event()
        #: Held by whoever writes to the store (this thread or an inline write): one at a time.
        self._store_lock = threading.Lock()
        #: The open store (None before it is open and once it is closed).
        self._storage: LmdbStorage | None = None
        self._stopping = False
        #: Counters for status/metrics: groups written and batches in them (by the thread, inline).
        self._thread_groups = 0
        self._thread_batches = 0
        self.inline_groups = 0
        self._inline_batches = 0
        #: Seconds each group's write took (one LMDB transaction and its fsync), successful or not;
        #: observed under the store lock, so the thread and inline writes never race on it.
        self.write_seconds = Buckets(FSYNC_BUCKETS_S)

    @property
    def groups_written(self) -> int:
        return self._thread_groups + self.inline_groups

    @property
    def batches_written(self) -> int:
        return self._thread_batches + self._inline_batches

    async def start(self) -> BootState:
        """Start the thread; it opens the store and reads it back. Raises what opening raised."""
        assert self._thread is None, "start() once"
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name=f"trimaran-writer:{self._path}", daemon=True)
        self._thread.start()
        await self._booted.wait()
        if self._boot_error is not None:
            await self._closed.wait()
            raise self._boot_error
        assert self._boot is not None
        return self._boot

    def submit(self, seq: int, batch: WriteBatch) -> None:
        """Queue a batch; ``seq`` must increase by one per call. Never blocks."""
        self._queue.put((seq, batch))

    def write_inline(self, batches: list[WriteBatch]) -> bool:
        """Write ``batches`` as one group (one transaction, one fsync) on the calling thread; True
        once they are durable.

        The caller must have nothing outstanding with the thread (every submitted batch reported
        durable), or order would break. False means nothing was written: the store is not open, the
        thread is writing, or the write failed; the caller then submits the batches as usual, and
        the thread retries and reports (a full store is retried, anything else is fatal there).
        """
        if self._storage is None or self._stopping or not self._store_lock.acquire(blocking=False):
            return False
        try:
            storage = self._storage
            if storage is None:
                return False
            try:
                self._timed_write(storage, batches)
            except Exception as exc:  # noqa: BLE001 - the thread retries and reports it
                log.debug("inline write failed (%r); handing it to the writer thread", exc)
                return False
        finally:
            self._store_lock.release()
        self.inline_groups += 1
        self._inline_batches += len(batches)
        return True

    def disk_space(self) -> tuple[int, int] | None:
        """(free, size) in bytes of the store's room (``LmdbStorage.space``); None when it is not
        open. Any thread (a short read transaction and two stat calls)."""
        storage = self._storage
        if storage is None:
            return None
        try:
            return storage.space()
        except Exception:  # noqa: BLE001 - closed meanwhile (lmdb.Error) or statvfs failed
            return None

    async def stop(self) -> None:
        """Write what is queued, close the store, end the thread. Safe to call more than once."""
        if self._thread is None:
            return
        self._stopping = True
        self._queue.put(_STOP)
        await self._closed.wait()

    # ------------------------------------------------------------------ the thread

    def _timed_write(self, storage: LmdbStorage, batches: list[WriteBatch]) -> None:
        """``storage.write`` timed into ``write_seconds`` (the caller holds the store lock)."""
        started = time.perf_counter()
        try:
            storage.write(batches)
        finally:
            seconds = time.perf_counter() - started
            self.write_seconds.observe(seconds)
            if seconds > SLOW_WRITE_S:
                entries = sum(len(b.entries) for b in batches)
                event(log, logging.WARNING, "slow_write", "a group commit of %d entries took %.3f s (LMDB write and fsync)", entries, seconds,
                      seconds=round(seconds, 3), entries=entries)  # fmt: skip

    def _call_soon(self, fn: Callable[..., object], *args: object) -> None:
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass  # the loop is gone: nobody is waiting for this any more

    def _set_boot(self, boot: BootState | None, error: BaseException | None) -> None:
        self._boot, self._boot_error = boot, error
        self._booted.set()

    def _run(self) -> None:
        storage: LmdbStorage | None = None
        try:
            storage = LmdbStorage(self._path, self._map_bytes_initial, self._map_bytes_max)
            boot = storage.load()
        except BaseException as exc:  # reported to start(), which re-raises it in the trio task
            if storage is not None:
                storage.close()
            self._call_soon(self._set_boot, None, exc)
            self._call_soon(self._closed.set)
            return
        self._storage = storage
        self._call_soon(self._set_boot, boot, None)
        try:
            self._loop(storage)
        finally:
            with self._store_lock:
                self._storage = None
                storage.close()
            self._call_soon(self._closed.set)

    def _take(self, retry_at: float | None) -> tuple[list[tuple[int, WriteBatch]], bool]:
        """Wait for work, then drain the queue (up to group_batches_max). While a refused group is
        held (``retry_at``: when to retry it, on the monotonic clock), keep gathering until then
        and no longer: new batches do not make a full disk retry sooner."""
        items: list[object] = []
        if retry_at is None:
            items.append(self._queue.get())
        else:
            while len(items) < self._group_batches_max and _STOP not in items:
                remaining_s = retry_at - time.monotonic()
                if remaining_s <= 0:
                    break
                try:
                    items.append(self._queue.get(timeout=remaining_s))
                except queue.Empty:
                    break
        while len(items) < self._group_batches_max:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        stopping = _STOP in items
        work = [item for item in items if item is not _STOP]
        return work, stopping  # type: ignore[return-value]

    def _loop(self, storage: LmdbStorage) -> None:
        held: list[tuple[int, WriteBatch]] = []
        retry_at: float | None = None
        stopping = False
        while True:
            new, stopping_now = self._take(retry_at if held else None)
            stopping = stopping or stopping_now
            group = held + new
            if group:
                try:
                    with self._store_lock:
                        self._timed_write(storage, [batch for _, batch in group])
                except StorageFullError as exc:
                    if not held:  # once per episode, not once per retry
                        log.error("storage full: %s; retrying every %.1f s", exc, self._retry_s)
                    held = group
                    retry_at = time.monotonic() + self._retry_s
                    self._call_soon(self._on_result, WriteResult(group[-1][0], exc))
                except BaseException as exc:
                    log.critical("storage write failed: %r; the node stops", exc)
                    self._call_soon(self._on_result, WriteResult(group[-1][0], exc))
                    return
                else:
                    if held:
                        log.warning("storage accepts writes again")
                    held = []
                    self._thread_groups += 1
                    self._thread_batches += len(group)
                    self._call_soon(self._on_result, WriteResult(group[-1][0]))
            if stopping and (held or self._queue.empty()):
                # A held (refused) group is given up on stop: it was never acknowledged to anyone.
                return
