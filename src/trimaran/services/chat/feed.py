"""Delivery of one chat channel to one subscriber, sans-IO: the one piece that decides what a
subscriber is sent, used by the node's WebSocket gateway (:mod:`trimaran.node.http.chat_gateway`)
and by the simulator's twin of it (:mod:`trimaran.simulations.chat_edge`).

A :class:`Feed` keeps where its subscriber stands (``epoch`` and ``last``, the last offset
delivered) and turns what the edge hands it into *pushes*, plain tuples the edge sends on:

=======================================  ========================================================
push                                     meaning
=======================================  ========================================================
``("event", event)``                     a live event of the applied-events window
                                         (:mod:`trimaran.services.chat.events`), sent as it is
``("message", offset, epoch, data,       a message replayed from history
at_ms)``
``("epoch", epoch, recovered, last)``    the channel's epoch changed: ``recovered`` is False when
                                         the history no longer reached back to the subscriber's
                                         position (it resumes after ``last``, the oldest kept - 1),
                                         None for a reset or a new epoch met live (``last`` 0)
``("resync",)``                          live delivery skipped ahead: read the history again
                                         (:meth:`Feed.history_options`, then :meth:`Feed.on_page`)
=======================================  ========================================================

The edge's side of the protocol, in order:

1. ``Feed(channel, since, epoch)``; with ``since`` None (live only) read ``history`` with
   ``{"limit": 0}`` and call :meth:`Feed.on_head`; otherwise read ``history`` with
   :meth:`Feed.history_options` (the first read linearizable, so a publish acknowledged anywhere
   before the subscribe is seen), call :meth:`Feed.on_page`, send its pushes, and repeat while it
   says more is wanted; then :meth:`Feed.go_live`.
2. After every apply round, each event of the subscriber's channel goes to :meth:`Feed.on_event`
   (held while the history is read, delivered in order after it).
3. A ``("resync",)`` push, or an events window that lost events (``gap``: :meth:`Feed.resync`),
   means step 1's history loop again from ``last``.

What it guarantees: the messages pushed are, per epoch, offsets ``last + 1, last + 2, ...`` with no
gap and no duplicate, unless an ``("epoch", ..., False, last)`` push says the history no longer
reached back (the app reloads), since live events are applied state (never an uncommitted entry)
and a live message that does not follow ``last`` makes the feed read the gap from history first.
"""

from __future__ import annotations

from typing import Any

#: Live events held for a feed while its history is read; beyond it, the history is read again.
PENDING_EVENTS_MAX = 10_000

#: Planted bugs for the simulator's mutation tests; never on in a node.
FEED_MUTANTS = {
    "resume_from_since": "a resume takes since as the first offset wanted, not the last one had: "
    "the subscriber is sent its last message again",
}

Push = tuple[Any, ...]


class Feed:
    """Where one subscriber of one channel stands; see the module docstring."""

    __slots__ = ("channel", "epoch", "last", "syncing", "pending", "overflowed", "pending_max")

    def __init__(
        self,
        channel: str,
        since: int | None = None,
        epoch: str | None = None,
        pending_max: int = PENDING_EVENTS_MAX,
        mutants: frozenset[str] = frozenset(),
    ) -> None:
        self.channel = channel
        self.epoch = epoch
        #: The last offset delivered in ``epoch``.
        self.last = 0 if since is None else since
        if since is not None and "resume_from_since" in mutants:
            self.last = max(since - 1, 0)
        #: The history is being read: live events wait in ``pending``.
        self.syncing = True
        self.pending: list[list[Any]] = []
        self.overflowed = False
        self.pending_max = pending_max

    # ------------------------------------------------------------------ history

    def history_options(self) -> dict[str, Any]:
        """The options of the next ``history`` read (``since`` and, once known, ``epoch``)."""
        if self.overflowed:  # too much went by while reading: start again from where we are
            self.pending.clear()
            self.overflowed = False
        options: dict[str, Any] = {"since": self.last}
        if self.epoch is not None:
            options["epoch"] = self.epoch
        return options

    def on_head(self, head: dict[str, Any]) -> list[Push]:
        """A live-only subscription learnt where the channel stands (``history`` with limit 0):
        deliver what follows ``top``."""
        self.epoch, self.last = head["epoch"], head["top"]
        return self.go_live()

    def on_page(self, page: dict[str, Any]) -> tuple[list[Push], bool]:
        """One ``history`` answer: the pushes it makes, and True when the history is read through
        (call :meth:`go_live` once they are sent), False when another read is wanted."""
        out: list[Push] = []
        if not page["recovered"] or (self.epoch is not None and page["epoch"] != self.epoch):
            # The history no longer reaches back to ``last`` (or the channel's epoch changed): go on
            # from the oldest kept, and say so.
            self.epoch, self.last = page["epoch"], page["oldest"] - 1
            out.append(("epoch", self.epoch, False, self.last))
        self.epoch = page["epoch"]
        for offset, data, at_ms in page["messages"]:
            if offset == self.last + 1:
                self.last = offset
                out.append(("message", offset, self.epoch, data, at_ms))
        more = (page["next"] is not None and bool(page["messages"])) or self.overflowed
        return out, not more

    def go_live(self) -> list[Push]:
        """The history is read through: deliver the live events held meanwhile, then live."""
        held, self.pending = self.pending, []
        self.syncing = False
        out: list[Push] = []
        for event in held:
            if self.syncing:  # a held event asked for another read: keep the rest for it
                self.pending.append(event)
            else:
                out.extend(self._deliver(event))
        return out

    def resync(self) -> bool:
        """Read the history again from ``last`` (the events window lost events); False if a read
        is under way already."""
        if self.syncing:
            return False
        self.syncing = True
        return True

    # ------------------------------------------------------------------ live

    def on_event(self, event: list[Any]) -> list[Push]:
        """One live event of this channel (``[seq, kind, channel, offset, epoch, at_ms, payload]``)."""
        if self.syncing:
            if len(self.pending) >= self.pending_max:
                self.overflowed = True
                self.pending.clear()
            elif not self.overflowed:
                self.pending.append(event)
            return []
        return self._deliver(event)

    def take_run(self, first: int, last: int, epoch: str) -> bool:
        """The common case of :meth:`on_event` for a run of live messages in one step: the edge
        found the run to be messages of ``epoch`` with offsets exactly ``first..last``. If the
        feed is live in that epoch and ``first`` follows ``last`` delivered, it advances past them
        and says True (deliver them as they are: :meth:`on_event` would have returned
        ``[("event", e)]`` for each); otherwise it changes nothing and says False (hand them to
        :meth:`on_event` one by one)."""
        if self.syncing or epoch != self.epoch or first != self.last + 1:
            return False
        self.last = last
        return True

    def _deliver(self, event: list[Any]) -> list[Push]:
        kind, offset, epoch = event[1], event[3], event[4]
        if kind == "message":
            out: list[Push] = []
            if epoch != self.epoch:
                if offset != 1:  # a new epoch we joined late: read it from history
                    return self._need_resync()
                self.epoch, self.last = epoch, 0
                out.append(("epoch", epoch, None, 0))
            if offset <= self.last:
                return out  # delivered from history already
            if offset > self.last + 1:
                return out + self._need_resync()
            self.last = offset
            out.append(("event", event))
            return out
        if kind in ("ephemeral", "join", "leave"):
            return [("event", event)]
        if kind == "reset" or (kind == "dropped" and epoch == self.epoch):
            self.epoch, self.last = (epoch if kind == "reset" else None), 0
            return [("epoch", self.epoch, None, 0)]
        return []

    def _need_resync(self) -> list[Push]:
        self.syncing = True
        return [("resync",)]
