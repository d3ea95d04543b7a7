"""Kept-open connections from a follower's edges to the leader's client port, for forwarding.

A follower's HTTP and RESP edges send what only the leader serves (writes, reads they cannot serve
themselves) to the leader's client port. Opening a connection per forwarded request cost a TCP
connect, a hello, a token verification on the leader (an Ed25519 signature check) and, with TLS,
a handshake: a RESP client on a follower wrote at a quarter of the rate it got on the leader.

:class:`LeaderLinks` keeps one connection per (leader address, token) — a hello says who speaks,
so callers with different tokens cannot share one — and multiplexes every request on it with the
client protocol's request ids: the requests of one call go out in order, with those of every other
call made in the same pass of trio's scheduler, in one write (the leader reads them together: one
driver round), and the answers come back by id to whoever waits.

Bounds: :data:`LINKS_MAX` links (the least recently used is closed past it) and
:data:`LINK_INFLIGHT_MAX` requests in flight on one link (callers wait for room, under the
leader's own per-connection cap). A link that breaks fails its waiters with ``OSError`` (the
caller then falls back as it did when a connect failed: asks its own node again) and is opened
again on the next call. Nothing here retries: a request that may have been sent is the caller's to
judge, as before (its session seq makes a retried write apply once).
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from typing import Any

import trio

from trimaran.errors import TrimaranError, error_from_wire
from trimaran.node.config import Address
from trimaran.node.streams import read_frame
from trimaran.protocols.client_protocol import hello
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.framing import FrameDecoder, encode_frame

#: Links kept open at once (one per leader address and token).
LINKS_MAX = 64
#: Requests in flight on one link (the leader's client port holds more per connection).
LINK_INFLIGHT_MAX = 512

Outcome = tuple[bool, Any]


class _Link:
    """One connection to the leader, its waiters by request id, and the task reading answers."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.next_id = 0
        #: request id -> (set when answered, the answer once it came; None: the link broke).
        self.waiting: dict[int, tuple[trio.Event, list[Outcome | None]]] = {}
        #: Frames to send, and the event that wakes the task sending them (see :meth:`write`).
        self.outbox: list[bytes] = []
        self.wanted = trio.Event()
        self.room = trio.Semaphore(LINK_INFLIGHT_MAX)
        #: Why it can no longer be used (None: usable), and the leader's refusal of its hello.
        self.broken: str | None = None
        self.refusal: TrimaranError | None = None
        self.welcomed = trio.Event()

    async def read(self) -> None:
        """Hand each answer to its waiter until the connection ends; then fail the rest."""
        try:
            while True:
                frame = await read_frame(self.stream, self.decoder)
                if frame is None:
                    raise OSError("the leader closed the connection")
                obj = unpack(frame)
                if isinstance(obj, dict):
                    if obj.get("type") == "error":  # a refused hello, or the connection cut with a reason
                        self.refusal = error_from_wire(obj.get("error"))
                        raise OSError(f"the leader refused the connection: {self.refusal.message}")
                    self.welcomed.set()  # the welcome
                    continue
                if isinstance(obj, list) and len(obj) == 3 and type(obj[0]) is int:
                    waiter = self.waiting.pop(obj[0], None)
                    if waiter is not None:
                        waiter[1].append((True, obj[2]) if obj[1] else (False, error_from_wire(obj[2])))
                        waiter[0].set()
        except (OSError, TrimaranError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.fail(f"{exc}")
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    async def write(self) -> None:
        """Send what the callers queued, until the link breaks. Callers queue their frames and wake
        this task, which runs after every task of the scheduler's current pass: the requests of
        many connections read in one pass leave in one write, and the leader reads them together
        (one driver round, one log entry) where a write per caller cost a send each and split
        them over several rounds."""
        try:
            while self.broken is None:
                await self.wanted.wait()
                self.wanted = trio.Event()
                if self.outbox and self.broken is None:
                    data = b"".join(self.outbox)
                    self.outbox.clear()
                    await self.stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.fail(f"sending: {exc}")

    def fail(self, why: str) -> None:
        """No more use of this link: every waiter learns it broke (its answer is None)."""
        if self.broken is None:
            self.broken = why
        self.welcomed.set()
        self.wanted.set()  # (the writer ends)
        self.outbox.clear()
        for event, box in self.waiting.values():
            box.append(None)
            event.set()
        self.waiting.clear()


class LeaderLinks:
    """See the module docstring. Run :meth:`run` in a nursery first (links' reader tasks live there)."""

    def __init__(self, cluster_id: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.cluster_id = cluster_id
        self.ssl_context = ssl_context
        self._links: OrderedDict[tuple[Address, str | None], _Link] = OrderedDict()
        self._opening: dict[tuple[Address, str | None], trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        #: Links opened since the node started (each a connect, a hello and a token check).
        self.opened = 0
        #: Requests sent or about to be, not answered yet, over every link (see :meth:`busy`).
        self.in_flight = 0

    def busy(self) -> bool:
        """Requests are being relayed to the leader: the node's driver then keeps its own log
        writes off its loop (an inline fsync would hold every relayed answer behind it)."""
        return self.in_flight > 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    async def request_many(self, address: Address, requests: list[tuple[str, dict[str, Any]]], token: str | None) -> list[Outcome]:
        """Each request's (ok, result or typed error), in order. Raises ``OSError`` if the leader
        cannot be reached or the link broke before every answer came (some may have been
        applied), and the typed refusal of the hello (a token the leader does not accept)."""
        self.in_flight += len(requests)
        try:
            return await self._request_many(address, requests, token)
        finally:
            self.in_flight -= len(requests)

    async def _request_many(self, address: Address, requests: list[tuple[str, dict[str, Any]]], token: str | None) -> list[Outcome]:
        link = await self._link(address, token)
        ids: list[int] = []
        boxes: list[tuple[trio.Event, list[Outcome | None]]] = []
        taken = 0
        try:
            for _ in requests:
                try:  # (acquire() would pass through the scheduler even with room)
                    link.room.acquire_nowait()
                except trio.WouldBlock:
                    await link.room.acquire()
                taken += 1
            frames = []
            for op, body in requests:
                link.next_id += 1
                ids.append(link.next_id)
                box: tuple[trio.Event, list[Outcome | None]] = (trio.Event(), [])
                link.waiting[link.next_id] = box
                boxes.append(box)
                frames.append(encode_frame(pack([link.next_id, op, body])))
            if link.broken is not None:
                raise OSError(link.broken)
            link.outbox.extend(frames)
            link.wanted.set()
            outcomes: list[Outcome] = []
            for event, box_outcomes in boxes:
                await event.wait()
                outcome = box_outcomes[0]
                if outcome is None:
                    raise OSError(f"the link to the leader at {address} broke: {link.broken}")
                outcomes.append(outcome)
            return outcomes
        finally:
            for request_id in ids:
                link.waiting.pop(request_id, None)
            for _ in range(taken):
                link.room.release()

    async def _link(self, address: Address, token: str | None) -> _Link:
        key = (address, token)
        link = self._links.get(key)
        if link is None or link.broken is not None:
            # One opening per key: callers arriving meanwhile wait for it, not open their own.
            lock = self._opening.setdefault(key, trio.Lock())
            try:
                async with lock:
                    link = self._links.get(key)
                    if link is None or link.broken is not None:
                        link = await self._open(address, token)
            finally:
                if not lock.statistics().tasks_waiting and self._opening.get(key) is lock:
                    del self._opening[key]
        else:
            self._links.move_to_end(key)
        if not link.welcomed.is_set():
            await link.welcomed.wait()
        if link.refusal is not None:
            raise link.refusal
        if link.broken is not None:
            raise OSError(link.broken)
        return link

    async def _open(self, address: Address, token: str | None) -> _Link:
        assert self._nursery is not None, "LeaderLinks.run first"
        tcp = await trio.open_tcp_stream(address.host, address.port)
        stream: trio.abc.Stream = tcp if self.ssl_context is None else trio.SSLStream(tcp, self.ssl_context, server_hostname=address.host)
        link = _Link(stream)
        self._links[(address, token)] = link
        self.opened += 1
        while len(self._links) > LINKS_MAX:
            _, old = self._links.popitem(last=False)
            old.fail("closed: too many links")
            self._nursery.start_soon(trio.aclose_forcefully, old.stream)
        link.outbox.append(encode_frame(pack(hello(self.cluster_id, token))))  # first
        link.wanted.set()
        self._nursery.start_soon(link.read)
        self._nursery.start_soon(link.write)
        return link
