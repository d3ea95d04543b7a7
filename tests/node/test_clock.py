"""The clock monitor (:mod:`trimaran.node.clock`) on its own: the NTP-style arithmetic, the choice of
the least delayed sample, the majority rule, the frames and who gets probed. Clocks are injected."""

from __future__ import annotations

from typing import Any

import pytest

from trimaran import limits
from trimaran.errors import ProtocolError
from tests.node.helpers import bare_transport
from trimaran.node.clock import (
    CLOCK_PROBE_RETRY_MS,
    CLOCK_PROBE_RTT_MS_MAX,
    CLOCK_SAMPLE_AGE_INTERVALS_MAX,
    CLOCK_SAMPLES_PER_PEER_MAX,
    ClockMonitor,
    ClockSample,
    agrees,
    is_clock_frame,
    is_suspect,
    probe_frame,
    reply_frame,
    sample,
)
from trimaran.node.transport import encode_for_peer, peer_hello
from trimaran.protocols.codec import unpack
from trimaran.protocols.messages import Heartbeat


def body(frame: bytes) -> Any:
    return unpack(frame[limits.frame_header_bytes :])


def test_offset_is_the_peer_clock_minus_ours_at_the_middle_of_the_round_trip() -> None:
    # Sent at our 1000 (monotonic 5 s), answered at the peer's 31_004, back 8 ms later.
    s = sample(1_000, 5_000_000, 31_004, 5_008_000)
    assert s == ClockSample(offset_ms=30_000, rtt_ms=8, at_us=5_008_000)
    assert sample(1_000, 5_000_000, 1_000, 4_999_000) is None  # negative round trip: a forged echo
    assert sample(1_000, 0, 1_000, (CLOCK_PROBE_RTT_MS_MAX + 1) * 1000) is None  # says too little


def test_a_peer_agrees_while_its_offset_may_be_within_the_bound() -> None:
    assert agrees(ClockSample(500, 0.1, 0), 500) and agrees(ClockSample(-500, 0.1, 0), 500)
    assert not agrees(ClockSample(501, 0, 0), 500) and not agrees(ClockSample(-30_000, 1, 0), 500)
    assert agrees(ClockSample(700, 400, 0), 500)  # it may be 500 off: the benefit of the doubt


@pytest.mark.parametrize(
    ("voters", "agreeing", "suspect"),
    [
        ((1, 2, 3), {2, 3}, False),
        ((1, 2, 3), {2}, False),  # itself and node 2: a majority
        ((1, 2, 3), set(), True),  # nobody measured agrees (far off, or unknown)
        ((1, 2, 3, 4, 5), {2}, True),
        ((1, 2, 3, 4, 5), {2, 3}, False),
        ((1,), set(), False),  # a single voter is its own majority
        ((), set(), False),  # a node waiting to join
        ((1, 2), set(), True),
    ],
)
def test_a_node_is_suspect_when_it_and_the_agreeing_voters_are_no_majority(
    voters: tuple[int, ...], agreeing: set[int], suspect: bool
) -> None:
    assert is_suspect(1, voters, agreeing) is suspect


class Rig:
    """A monitor for node 1 with peers 2 and 3, injected clocks, and the frames it sends."""

    def __init__(self, offset_ms_max: int = 500, skew_ms: int = 0) -> None:
        self.wall_ms = 1_000_000
        self.mono_us = 10_000_000
        self.skew_ms = skew_ms
        self.sent: list[tuple[int, Any]] = []
        self.verdicts: list[bool] = []
        self.up = {2, 3}
        self.monitor = ClockMonitor(
            1,
            (2, 3),
            offset_ms_max,
            100,
            self.send,
            lambda: (1, 2, 3),
            self.verdicts.append,
            lambda: self.wall_ms,
            lambda: self.mono_us,
        )

    def send(self, peer: int, frame: bytes) -> bool:
        if peer not in self.up:
            return False
        self.sent.append((peer, body(frame)))
        return True

    def answer(self, peer: int, skew_ms: int, delay_us: int = 2_000) -> None:
        """The probe sent to ``peer`` comes back ``delay_us`` later from a clock ``skew_ms`` off."""
        probe = next(obj for p, obj in reversed(self.sent) if p == peer and obj[0] == "clock_probe")
        self.mono_us += delay_us
        self.wall_ms += delay_us // 1000
        t2 = probe[1] + skew_ms + delay_us // 2000
        self.monitor.on_frame(peer, ["clock_reply", probe[1], probe[2], t2])

    def advance_ms(self, ms: int) -> None:
        self.mono_us += ms * 1000
        self.wall_ms += ms


def test_only_peers_that_said_so_in_their_hello_are_probed() -> None:
    rig = Rig()
    rig.monitor.on_peer_hello(2, peer_hello("c", 2, 1, {}))
    rig.monitor.on_peer_hello(3, {"type": "peer_hello"})  # an older node: no clock_probes key
    rig.monitor.probe_due()
    assert [(p, obj[0]) for p, obj in rig.sent] == [(2, "clock_probe")]
    rig.monitor.probe_due()
    assert len(rig.sent) == 1  # not again before the retry period
    rig.advance_ms(CLOCK_PROBE_RETRY_MS)
    rig.up = set()  # connection down: nothing queued (a stale probe would be a wrong sample)
    rig.monitor.probe_due()
    assert len(rig.sent) == 1


def test_a_probe_is_answered_with_our_clock_and_the_echoed_values() -> None:
    rig = Rig()
    rig.monitor.on_frame(3, ["clock_probe", 42, 7])
    assert rig.sent == [(3, ["clock_reply", 42, 7, rig.wall_ms])]


@pytest.mark.parametrize(
    "obj",
    [["clock_probe", 1], ["clock_probe", 1, "x"], ["clock_reply", 1, 2], ["clock_reply", 1, 2, 2**62], ["clock_nap", 1]],
)
def test_a_malformed_clock_frame_is_a_protocol_error(obj: list[Any]) -> None:
    with pytest.raises(ProtocolError):
        Rig().monitor.on_frame(2, obj)


def test_the_estimate_is_the_least_delayed_fresh_sample() -> None:
    rig = Rig()
    for peer in (2, 3):
        rig.monitor.on_peer_hello(peer, peer_hello("c", peer, 1, {}))
    for delay_us, skew in ((9_000, 40), (1_000, 10), (5_000, 25)):
        rig.advance_ms(100)
        rig.monitor.probe_due()
        rig.answer(2, skew, delay_us)
    est = rig.monitor.estimate(2)
    assert est is not None and est.rtt_ms == 1 and abs(est.offset_ms - 10) <= 1
    assert rig.monitor.estimate(3) is None
    # Only the last few samples are kept, and old ones are forgotten: a peer gone quiet is unknown.
    assert len(rig.monitor._samples[2]) <= CLOCK_SAMPLES_PER_PEER_MAX
    rig.advance_ms(CLOCK_SAMPLE_AGE_INTERVALS_MAX * 100 + 1)
    assert rig.monitor.estimate(2) is None


def test_the_verdict_follows_the_measurements_and_is_reported_on_change() -> None:
    rig = Rig()
    for peer in (2, 3):
        rig.monitor.on_peer_hello(peer, peer_hello("c", peer, 1, {}))
    assert rig.monitor.evaluate() is True and rig.verdicts == [True]  # nothing measured yet
    rig.monitor.probe_due()
    rig.answer(2, 0)
    assert rig.verdicts == [True, False]  # node 2 agrees: with itself, a majority of three
    rig.advance_ms(100)
    rig.monitor.probe_due()
    rig.answer(2, -30_000)
    rig.answer(3, -30_000)
    # The least delayed sample of node 2 is still the old one until it ages out.
    rig.advance_ms(CLOCK_SAMPLE_AGE_INTERVALS_MAX * 100 - 50)
    rig.monitor.probe_due()
    rig.answer(2, -30_000, delay_us=1_000)
    assert rig.verdicts == [True, False, True]
    status = rig.monitor.status()
    assert status["suspect"] is True and status["offset_ms_max"] == 500
    assert [(p["node_id"], p["agrees"]) for p in status["peers"]] == [(2, False), (3, False)]
    assert -30_001 <= status["peers"][0]["offset_ms"] <= -29_999


def test_with_the_check_off_offsets_are_measured_but_never_suspect() -> None:
    rig = Rig(offset_ms_max=0)
    rig.monitor.on_peer_hello(2, peer_hello("c", 2, 1, {}))
    rig.monitor.probe_due()
    rig.answer(2, 60_000)
    assert rig.monitor.evaluate() is False and rig.verdicts == []
    assert rig.monitor.status()["peers"][0]["offset_ms"] == 60_000


async def test_the_transport_hands_clock_frames_to_the_monitor_and_messages_to_the_driver() -> None:
    transport = bare_transport()
    frame = probe_frame(5, 6)[limits.frame_header_bytes :]
    assert transport._decode(frame, 2) is None  # no monitor: ignored, the connection stays
    seen: list[tuple[int, Any]] = []

    class Monitor:
        def on_frame(self, peer: int, obj: Any) -> None:
            seen.append((peer, obj))

    transport.clock = Monitor()  # type: ignore[assignment]
    assert transport._decode(reply_frame(5, 6, 7)[limits.frame_header_bytes :], 2) is None
    assert seen == [(2, ["clock_reply", 5, 6, 7])]
    hb = Heartbeat(3, 2, 1, 0)
    assert transport._decode(encode_for_peer(hb)[limits.frame_header_bytes :], 2) == hb
    assert not is_clock_frame([1, 2]) and not is_clock_frame({"clock_probe": 1}) and is_clock_frame(["x"])
    assert transport.send_frame(9, frame) is False  # not a peer


def test_the_bound_is_configurable_from_the_command_line(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import trimaran.node.logs as logs_module
    import trimaran.node.node as node_module
    from trimaran.cli import main
    from trimaran.node.config import NodeConfig

    seen: list[NodeConfig] = []
    monkeypatch.setattr(node_module, "run_node_process", lambda config, parent_pid=None: seen.append(config))
    monkeypatch.setattr(logs_module, "configure_logging", lambda level, node_id, log_format: None)
    args = ["node", "run", "--id", "1", "--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0"]
    args += ["--data-dir", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert CliRunner().invoke(main, [*args, "--clock-offset-max-ms", "0"]).exit_code == 0
    assert [c.clock_offset_ms_max for c in seen] == [500, 0]  # default on, like CockroachDB's 500 ms
    assert CliRunner().invoke(main, [*args, "--clock-offset-max-ms", "-1"]).exit_code == 2


def test_config_checks_the_clock_settings(tmp_path: Any) -> None:
    from trimaran.errors import ConfigError
    from trimaran.node.config import Address, NodeConfig

    config = NodeConfig(1, Address("127.0.0.1", 0), Address("127.0.0.1", 0), (), str(tmp_path))
    for bad in ({"clock_offset_ms_max": -1}, {"clock_probe_interval_ms": 0}, {"clock_probe_interval_ms": 10**9}):
        with pytest.raises(ConfigError, match="clock"):
            config.replace(**bad).validate()
