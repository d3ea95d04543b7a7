"""Clock offsets between nodes, measured over the peer connections, and the clock check.

Why: a leader stamps what it proposes with its wall clock, and log time (TTLs, session expiry,
every deadline of the services) follows those stamps (:mod:`trimaran.cluster.replica`). Replicas
stay consistent whatever the stamps say, but with one node's clock 30 s fast and another's 30 s
slow a 5 s TTL key lived 65 s once leadership moved from the fast node to the slow one (issue 16).
So, like CockroachDB's maximum clock offset, each node measures every peer's clock and a node
whose clock is beyond ``clock_offset_ms_max`` from a majority of the voters refuses to lead
(:meth:`trimaran.cluster.raft.Raft.set_clock_suspect`: it does not campaign, and a leader hands
over). The core reads no clock: this module tells it, as an input.

Measuring (NTP's on-wire exchange, one round trip): every ``clock_probe_interval_ms`` a node sends
each peer a probe carrying its wall clock ``t1`` and its monotonic clock; the peer answers at once
with its wall clock ``t2`` and the two echoed values; on receipt ``rtt`` is the monotonic time
elapsed (a wall-clock step during the probe does not distort it) and the peer's offset is
``t2 - (t1 + rtt / 2)``: the peer's clock minus ours, wrong by at most ``rtt / 2``. A peer's
estimate is, of its last ``CLOCK_SAMPLES_PER_PEER_MAX`` fresh samples, the one with the least round
trip (NTP's clock filter: the least delayed sample is the least distorted). Samples older than
``CLOCK_SAMPLE_AGE_INTERVALS_MAX`` probe intervals are forgotten, so a peer gone quiet is unknown.

The check: a peer *agrees* when ``abs(offset) - rtt / 2 <= clock_offset_ms_max`` (it may be
within the bound). This node is *suspect* when it and the voters that agree are no majority of the
voters; a voter not measured (down, unreachable, or too old to answer probes) does not agree,
because this node cannot tell its clock apart from a wrong one without a majority, just as it
cannot win an election without one. With one clock far off in three nodes, only that node is
suspect; with one fast and one slow, so is the third (no majority of clocks agrees with it), and
the cluster has no leader until the clocks are fixed: unavailable and loud (``status``, logs)
rather than silently wrong TTLs. ``clock_offset_ms_max = 0`` turns the check off (offsets are still
measured and shown).

Wire: two frames on peer connections, told apart from Raft messages (msgpack lists whose first
item is an int tag) by a string first item::

    ["clock_probe", t1_wall_ms, t1_monotonic_us]                  sent by A to B
    ["clock_reply", t1_wall_ms, t1_monotonic_us, t2_wall_ms]      B's answer, on B's connection to A

A node sends probes only to peers whose ``peer_hello`` carried ``"clock_probes": 1``. An older node
ignores that key, never receives a probe and never sends one, so nodes of both versions keep
talking during a rolling upgrade (a new protocol version would have made older acceptors refuse
the newer dialers). An older voter simply counts as not measured.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import trio

from trimaran import limits
from trimaran.errors import ProtocolError
from trimaran.protocols.codec import pack
from trimaran.protocols.framing import encode_frame

log = logging.getLogger("trimaran.node.clock")

#: The ``peer_hello`` key saying "I answer clock probes and understand their replies".
HELLO_FEATURE = "clock_probes"
PROBE = "clock_probe"
REPLY = "clock_reply"
#: Samples kept per peer (the least delayed of them is the estimate).
CLOCK_SAMPLES_PER_PEER_MAX = 4
#: A sample older than this many probe intervals is forgotten.
CLOCK_SAMPLE_AGE_INTERVALS_MAX = 10
#: A reply whose round trip took longer says too little about the offset; it is dropped.
CLOCK_PROBE_RTT_MS_MAX = 10_000
#: While a peer has no fresh sample, it is probed this often (a node that just connected should
#: not wait a whole interval before it may campaign).
CLOCK_PROBE_RETRY_MS = 100
#: At most one warning per peer in this long while its clock disagrees.
CLOCK_WARNING_INTERVAL_MS = 60_000


def wall_clock_ms() -> int:
    """The wall clock, in ms since the epoch: what a leader stamps its entries with."""
    return int(time.time() * 1000)


def monotonic_us() -> int:
    return int(trio.current_time() * 1_000_000)


def is_clock_frame(obj: Any) -> bool:
    """A clock frame (not a Raft message, whose first item is an int tag)."""
    return type(obj) is list and len(obj) > 0 and type(obj[0]) is str


def probe_frame(t1_wall_ms: int, t1_monotonic_us: int) -> bytes:
    return encode_frame(pack([PROBE, t1_wall_ms, t1_monotonic_us]))


def reply_frame(t1_wall_ms: int, t1_monotonic_us: int, t2_wall_ms: int) -> bytes:
    return encode_frame(pack([REPLY, t1_wall_ms, t1_monotonic_us, t2_wall_ms]))


def _check_ints(obj: list[Any], count: int) -> list[int]:
    if len(obj) != count + 1 or not all(type(v) is int and abs(v) <= limits.raft_counter_max for v in obj[1:]):
        raise ProtocolError(f"{obj[0]}: expected {count} integers")
    return obj[1:]


@dataclass(frozen=True, slots=True)
class ClockSample:
    """One round trip: the peer's clock minus ours, the round trip, and when it came back."""

    offset_ms: float
    rtt_ms: float
    at_us: int


def sample(t1_wall_ms: int, t1_monotonic_us: int, t2_wall_ms: int, now_monotonic_us: int) -> ClockSample | None:
    """The sample a reply gives, or None if its round trip is negative or too long to tell anything."""
    rtt_us = now_monotonic_us - t1_monotonic_us
    if not 0 <= rtt_us <= CLOCK_PROBE_RTT_MS_MAX * 1000:
        return None
    rtt_ms = rtt_us / 1000
    return ClockSample(t2_wall_ms - (t1_wall_ms + rtt_ms / 2), rtt_ms, now_monotonic_us)


def agrees(estimate: ClockSample, offset_ms_max: int) -> bool:
    """The peer's clock may be within the bound of ours (the benefit of the doubt: rtt / 2)."""
    return abs(estimate.offset_ms) - estimate.rtt_ms / 2 <= offset_ms_max


def is_suspect(node_id: int, voters: Sequence[int], agreeing_peers: set[int]) -> bool:
    """This node and the voters whose clocks agree with it are no majority of the voters."""
    if not voters:
        return False
    agreeing = 1 + sum(1 for v in voters if v != node_id and v in agreeing_peers)
    return agreeing < len(voters) // 2 + 1


class ClockMonitor:
    """Probes the peers, keeps their offsets, and tells the core when this node is suspect.

    ``send_frame(peer, frame) -> bool`` queues a frame on the connection to ``peer`` if it is up;
    ``voters()`` gives the voters of the latest membership; ``on_suspect(bool)`` is called on every
    change of the verdict (the driver hands it to Raft). All on the trio thread.
    """

    def __init__(
        self,
        node_id: int,
        peer_ids: Sequence[int],
        offset_ms_max: int,
        probe_interval_ms: int,
        send_frame: Callable[[int, bytes], bool],
        voters: Callable[[], Sequence[int]],
        on_suspect: Callable[[bool], None],
        wall_clock_ms: Callable[[], int] = wall_clock_ms,
        monotonic_us: Callable[[], int] = monotonic_us,
    ) -> None:
        assert offset_ms_max >= 0 and probe_interval_ms > 0
        self.node_id = node_id
        self.offset_ms_max = offset_ms_max
        self.probe_interval_ms = probe_interval_ms
        self._send_frame = send_frame
        self._voters = voters
        self._on_suspect = on_suspect
        self._wall_clock_ms = wall_clock_ms
        self._monotonic_us = monotonic_us
        self._samples: dict[int, deque[ClockSample]] = {
            p: deque(maxlen=CLOCK_SAMPLES_PER_PEER_MAX) for p in sorted(peer_ids)
        }
        #: Peers whose hello said they answer probes.
        self._capable: set[int] = set()
        self._probed_at_us: dict[int, int] = {}
        self._warned_at_us: dict[int, int] = {}
        self.suspect = False
        #: Counters (reported by status).
        self.probes_sent = 0
        self.replies_received = 0
        self.samples_dropped = 0

    # ------------------------------------------------------------------ inputs

    def on_peer_hello(self, peer: int, hello: dict[str, Any]) -> None:
        """A peer's handshake arrived: it answers probes if it says so (older nodes do not)."""
        if hello.get(HELLO_FEATURE) == 1:
            self._capable.add(peer)
        else:
            self._capable.discard(peer)

    def on_frame(self, peer: int, obj: list[Any]) -> None:
        """A clock frame from ``peer`` (see :func:`is_clock_frame`); ``ProtocolError`` if malformed."""
        kind = obj[0]
        if kind == PROBE:
            t1_wall_ms, t1_monotonic_us = _check_ints(obj, 2)
            self._send_frame(peer, reply_frame(t1_wall_ms, t1_monotonic_us, self._wall_clock_ms()))
        elif kind == REPLY:
            t1_wall_ms, t1_monotonic_us, t2_wall_ms = _check_ints(obj, 3)
            self.replies_received += 1
            s = sample(t1_wall_ms, t1_monotonic_us, t2_wall_ms, self._monotonic_us())
            if s is None or peer not in self._samples:
                self.samples_dropped += 1
                return
            self._samples[peer].append(s)
            self._warn_if_far(peer, s)
            self.evaluate()
        else:
            raise ProtocolError(f"unknown clock frame {kind!r:.40}")

    # ------------------------------------------------------------------ the verdict

    def estimate(self, peer: int) -> ClockSample | None:
        """The least delayed fresh sample of ``peer``, or None if there is none."""
        samples = self._samples.get(peer)
        if not samples:
            return None
        oldest_us = self._monotonic_us() - CLOCK_SAMPLE_AGE_INTERVALS_MAX * self.probe_interval_ms * 1000
        fresh = [s for s in samples if s.at_us >= oldest_us]
        return min(fresh, key=lambda s: s.rtt_ms) if fresh else None

    def agreeing_peers(self) -> set[int]:
        out = set()
        for peer in self._samples:
            est = self.estimate(peer)
            if est is not None and agrees(est, self.offset_ms_max):
                out.add(peer)
        return out

    def evaluate(self) -> bool:
        """Recompute whether this node is suspect; tell ``on_suspect`` when that changes."""
        suspect = self.offset_ms_max > 0 and is_suspect(self.node_id, self._voters(), self.agreeing_peers())
        if suspect != self.suspect:
            self.suspect = suspect
            self._log_verdict(suspect)
            self._on_suspect(suspect)
        return suspect

    def _log_verdict(self, suspect: bool) -> None:
        offsets = ", ".join(
            f"node {p}: {'unknown' if e is None else f'{e.offset_ms:+.0f} ms (rtt {e.rtt_ms:.1f} ms)'}"
            for p, e in ((p, self.estimate(p)) for p in self._samples)
        )
        if not suspect:
            log.info("node %d: clock agrees with a majority of the voters; may lead (%s)", self.node_id, offsets)
        elif any(e is not None and not agrees(e, self.offset_ms_max) for e in map(self.estimate, self._samples)):
            log.warning(
                "node %d: wall clock is off by more than clock_offset_ms_max=%d ms from a majority of the "
                "voters (peer clocks minus ours: %s); refusing leadership until the clocks are fixed",
                self.node_id,
                self.offset_ms_max,
                offsets,
            )
        else:
            log.info(
                "node %d: clock not yet compared with a majority of the voters (%s); not leading until it is",
                self.node_id,
                offsets or "no peers",
            )

    def _warn_if_far(self, peer: int, s: ClockSample) -> None:
        if self.offset_ms_max <= 0 or agrees(s, self.offset_ms_max):
            return
        last = self._warned_at_us.get(peer)
        if last is not None and s.at_us - last < CLOCK_WARNING_INTERVAL_MS * 1000:
            return
        self._warned_at_us[peer] = s.at_us
        log.warning(
            "node %d: node %d's clock is %+.0f ms from ours (rtt %.1f ms), beyond clock_offset_ms_max=%d ms",
            self.node_id,
            peer,
            s.offset_ms,
            s.rtt_ms,
            self.offset_ms_max,
        )

    # ------------------------------------------------------------------ probing

    def probe_due(self) -> None:
        """Probe every capable peer whose last probe is an interval old (a retry period old while it
        has no fresh sample); a peer whose connection is down is skipped."""
        now_us = self._monotonic_us()
        for peer in sorted(self._capable):
            if peer not in self._samples:
                continue
            wait_ms = self.probe_interval_ms
            if self.estimate(peer) is None:
                wait_ms = min(wait_ms, CLOCK_PROBE_RETRY_MS)
            last = self._probed_at_us.get(peer)
            if last is not None and now_us - last < wait_ms * 1000:
                continue
            if self._send_frame(peer, probe_frame(self._wall_clock_ms(), now_us)):
                self._probed_at_us[peer] = now_us
                self.probes_sent += 1

    async def run(self) -> None:
        """Probe and re-check (samples age out) until cancelled."""
        period_s = min(CLOCK_PROBE_RETRY_MS, self.probe_interval_ms) / 1000
        while True:
            self.probe_due()
            self.evaluate()
            await trio.sleep(period_s)

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The ``clock`` part of the status op (see :mod:`trimaran.protocols.client_protocol`)."""
        now_us = self._monotonic_us()
        peers = []
        for peer in self._samples:
            est = self.estimate(peer)
            peers.append(
                {
                    "node_id": peer,
                    "offset_ms": None if est is None else round(est.offset_ms),
                    "rtt_ms": None if est is None else round(est.rtt_ms, 3),
                    "age_ms": None if est is None else (now_us - est.at_us) // 1000,
                    "agrees": None if est is None or not self.offset_ms_max else agrees(est, self.offset_ms_max),
                }
            )
        return {
            "offset_ms_max": self.offset_ms_max,
            "suspect": self.suspect,
            "peers": peers,
            "probes_sent": self.probes_sent,
            "replies_received": self.replies_received,
            "samples_dropped": self.samples_dropped,
        }
