"""The simulated network: latency with jitter and a long tail, loss, duplication, partitions,
clogged links and flaky nodes. Every random choice comes from one seeded ``random.Random``.

Links are directed (``sender -> recipient``), so a one-way partition blocks only one direction.
A *blocked* link drops what is sent on it; a *clogged* link holds it and releases it, each message
with a fresh latency, when the link unclogs (FoundationDB's "clogging": delay, not loss). Several
faults may block or clog the same link at once, so both are reference counts.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable

from trimaran.simulations.plan import Weather

Link = tuple[int, int]


def _key(link: Link) -> int:
    return link[0] << 8 | link[1]


class SimNetwork:
    """Decides when (and whether, and how many times) each message arrives."""

    def __init__(self, rng: random.Random, weather: Weather, deliver_at: Callable[[int, Any], None]) -> None:
        self.rng = rng
        self._deliver_at = deliver_at
        self._blocked: dict[int, int] = {}
        self._clogged: dict[int, int] = {}
        self._held: dict[int, list[Any]] = {}
        #: Node -> extra loss probability on every link touching it (a flaky node).
        self.flaky_loss: dict[int, float] = {}
        self.link_faults = False
        self.sent_count = self.dropped_count = self.duplicated_count = 0
        self.set_weather(weather)

    def set_weather(self, weather: Weather) -> None:
        self.loss = weather.loss_pm / 1000
        self.dup = weather.dup_pm / 1000
        self.delay_us = weather.delay_us
        self.jitter_us = weather.jitter_us
        self.tail = weather.tail_pm / 1000
        self.tail_us = weather.tail_us

    def heal(self, now_us: int) -> None:
        """Calm weather, and no partitions or clogs."""
        self.set_weather(Weather(delay_us=self.delay_us, jitter_us=min(self.jitter_us, self.delay_us)))
        self._blocked.clear()
        for key in list(self._clogged):
            self._clogged[key] = 1
            self.unclog((key >> 8, key & 0xFF), now_us)
        self._update_link_faults()

    # ------------------------------------------------------------------ sending

    def latency_us(self) -> int:
        """One draw of the one-way latency under the current weather."""
        rng = self.rng
        latency = self.delay_us
        if self.jitter_us:
            latency += int(rng.random() * self.jitter_us)
        if self.tail and rng.random() < self.tail:
            latency += int(rng.random() * self.tail_us)
        return latency

    def lost(self, sender: int, recipient: int) -> bool:
        """Whether one message on this link is lost (weather plus flaky nodes)."""
        loss = self.loss
        if self.flaky_loss:
            loss = max(loss, self.flaky_loss.get(sender, 0.0), self.flaky_loss.get(recipient, 0.0))
        return bool(loss) and self.rng.random() < loss

    def send(self, msg: Any, now_us: int) -> None:
        """Send one Raft message: it is delivered zero, one or two times, later."""
        # The hot path of the simulator (one call per message): the common case, no link fault
        # and no flaky node, is inlined; it draws from the rng exactly as lost() and latency_us().
        self.sent_count += 1
        if self.link_faults or self.flaky_loss:
            self._send_faulty(msg, now_us)
            return
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            self.dropped_count += 1
            return
        latency = self.delay_us
        if self.jitter_us:
            latency += int(rng.random() * self.jitter_us)
        if self.tail and rng.random() < self.tail:
            latency += int(rng.random() * self.tail_us)
        self._deliver_at(now_us + latency, msg)
        if self.dup and rng.random() < self.dup:
            self.duplicated_count += 1
            self._deliver_at(now_us + self.latency_us(), msg)

    def _send_faulty(self, msg: Any, now_us: int) -> None:
        sender, recipient = msg.sender, msg.recipient
        key = sender << 8 | recipient
        if key in self._blocked:
            self.dropped_count += 1
            return
        if key in self._clogged:
            self._held[key].append(msg)
            return
        if self.lost(sender, recipient):
            self.dropped_count += 1
            return
        self._deliver_at(now_us + self.latency_us(), msg)
        if self.dup and self.rng.random() < self.dup:
            self.duplicated_count += 1
            self._deliver_at(now_us + self.latency_us(), msg)

    # ------------------------------------------------------------------ link faults

    def block(self, links: Iterable[Link]) -> None:
        for link in links:
            key = _key(link)
            self._blocked[key] = self._blocked.get(key, 0) + 1
        self._update_link_faults()

    def unblock(self, links: Iterable[Link]) -> None:
        for link in links:
            key = _key(link)
            count = self._blocked.get(key, 0) - 1
            if count > 0:
                self._blocked[key] = count
            else:
                self._blocked.pop(key, None)
        self._update_link_faults()

    def clog(self, link: Link) -> None:
        key = _key(link)
        self._clogged[key] = self._clogged.get(key, 0) + 1
        self._held.setdefault(key, [])
        self._update_link_faults()

    def unclog(self, link: Link, now_us: int) -> None:
        key = _key(link)
        count = self._clogged.get(key, 0) - 1
        if count > 0:
            self._clogged[key] = count
            return
        self._clogged.pop(key, None)
        for msg in self._held.pop(key, []):
            self._deliver_at(now_us + self.latency_us(), msg)
        self._update_link_faults()

    def _update_link_faults(self) -> None:
        self.link_faults = bool(self._blocked or self._clogged)
