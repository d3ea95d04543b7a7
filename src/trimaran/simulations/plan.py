"""A fault plan: the weather of a run (network, disk and clock settings) and its timed faults.

A plan is drawn from a seed swarm-style (:func:`draw_plan`): the seed decides which fault classes
are on and how strong they are, so a sweep covers quiet runs, single-fault runs and storms. A plan
is plain data with a compact text form (:meth:`FaultPlan.encode` / :func:`decode_plan`), so a
failing run can be shrunk (fewer, weaker faults) and replayed with ``--plan``.

Every choice a fault makes while it runs (which links a swizzle clogs, which record rots, which
node a membership change targets) comes from the fault's own ``salt``, not from its position in
the plan: dropping one fault while shrinking leaves the others' choices unchanged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Iterator

from trimaran.simulations.harness import sub_seed

#: Fault kinds and the names of their integer arguments, in encoding order.
FAULT_ARGS: dict[str, tuple[str, ...]] = {
    # Partition: shape 0 = two halves, 1 = one node isolated, 2 = one-way (mask cannot send to the
    # rest), 3 = bridge (mask is cut from the rest except through one node in it), 4 = the current
    # leader and ``mask`` other nodes cut from the rest (a minority with its old leader).
    "part": ("shape", "mask", "dur_ms"),
    # "Swizzle": clog about half the links one by one, then unclog them in a different order.
    # A clogged link holds its messages (delays them) until it unclogs.
    "clog": ("links", "step_ms", "salt"),
    # A flaky minority: every link of these nodes loses messages from now until the heal.
    "flaky": ("mask", "loss_pm"),
    # In crash, pause and clock faults, node 0 means the leader of the moment (Jepsen's "kill the
    # leader"): leader changes are where consensus bugs live.
    # Crash: mode 0 = now, 1 = at the next fsync, before it lands (unsynced writes lost), 2 = right
    # after the next fsync, before the messages waiting for it leave, 3 = before the next fsync
    # that carries a new term or vote. torn: the first unsynced write lands partially.
    "crash": ("node", "down_ms", "mode", "torn"),
    # Pause (SIGSTOP): no ticks, no messages handled, no fsync completions; then resume, stale.
    "pause": ("node", "dur_ms"),
    # A rotten record: crash, corrupt a durable record, and try to restart: the CRC check refuses
    # it, so the node's disk has failed and the node stays down.
    "disk": ("node", "down_ms", "salt"),
    # Clock rate step: the node's ticks come every rate_pm/1000 of their usual interval.
    "clock": ("node", "rate_pm", "dur_ms"),
    # Clock jump: the node's clock leaps forward by this many ticks at once.
    "jump": ("node", "ticks"),
    # Membership changes through the leader, ``count`` of them back to back (the leader must
    # refuse all but the first): action 0 = remove a voter, 1 = add a learner, 2 = promote a
    # learner, 3 = whatever the cluster's shape allows.
    "member": ("action", "count", "salt"),
    # Leadership transfer to a voter chosen by salt.
    "transfer": ("salt",),
}

#: Fault kinds that last a while (their last argument is a duration in ms, halved when shrinking).
DURATION_KINDS = {"part": "dur_ms", "pause": "dur_ms", "clock": "dur_ms", "crash": "down_ms", "disk": "down_ms"}


@dataclass(frozen=True, slots=True)
class Fault:
    """One timed fault: ``kind`` with integer ``args`` named by :data:`FAULT_ARGS`, at ``at_ms``."""

    at_ms: int
    kind: str
    args: tuple[int, ...]

    def arg(self, name: str) -> int:
        return self.args[FAULT_ARGS[self.kind].index(name)]

    def with_arg(self, name: str, value: int) -> Fault:
        args = list(self.args)
        args[FAULT_ARGS[self.kind].index(name)] = value
        return Fault(self.at_ms, self.kind, tuple(args))

    def encode(self) -> str:
        return ":".join([str(self.at_ms), self.kind, *map(str, self.args)])

    def describe(self) -> str:
        named = " ".join(f"{n}={v}" for n, v in zip(FAULT_ARGS[self.kind], self.args))
        return f"{self.at_ms / 1000:.3f}s {self.kind} {named}"


@dataclass(frozen=True, slots=True)
class Weather:
    """Settings in force from the start until the heal time (drift and snapshots: the whole run)."""

    #: Message loss and duplication, per mille (0-300 and 0-100).
    loss_pm: int = 0
    dup_pm: int = 0
    #: One-way latency: base, plus a uniform jitter (jitter much above the base reorders messages).
    delay_us: int = 500
    jitter_us: int = 0
    #: Long tail: this share of messages (per mille) takes an extra uniform [0, tail_us).
    tail_pm: int = 0
    tail_us: int = 0
    #: fsync latency: base plus uniform jitter.
    fsync_us: int = 1_000
    fsync_jitter_us: int = 0
    #: Per-node tick-rate drift, per mille (+ = slow clock: longer tick interval).
    drift_pm: tuple[int, ...] = ()
    #: Replica snapshots: every this many applied entries, keeping this many entries below.
    snap_every: int = 10_000
    snap_keep: int = 1_000
    #: Raft's replication window: bytes per AppendEntries and messages in flight per follower
    #: (small values split catch-up into many appends and exercise the pipeline).
    append_bytes: int = 16_384
    inflight: int = 32

    #: Knobs a shrinker may calm, with their neutral value.
    CALM: ClassVar[tuple[tuple[str, int], ...]] = (
        ("loss_pm", 0),
        ("dup_pm", 0),
        ("jitter_us", 0),
        ("tail_pm", 0),
        ("fsync_jitter_us", 0),
    )


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The weather of a run and its faults in time order (what a seed draws, a shrink reduces)."""

    weather: Weather = field(default_factory=Weather)
    faults: tuple[Fault, ...] = ()

    def encode(self) -> str:
        """The compact, replayable text form: ``key=value,...;at:kind:arg:...,...``."""
        w = self.weather
        parts = []
        for name in _WEATHER_FIELDS:
            value = getattr(w, name)
            parts.append(f"{name}={'/'.join(map(str, value)) if name == 'drift_pm' else value}")
        return ",".join(parts) + ";" + ",".join(f.encode() for f in self.faults)

    def describe(self) -> list[str]:
        """Human lines: the weather, then one line per fault."""
        w = self.weather
        lines = [
            f"weather: loss={w.loss_pm / 10:.1f}% dup={w.dup_pm / 10:.1f}% delay={w.delay_us}us"
            f"+{w.jitter_us}us tail={w.tail_pm / 10:.1f}%x{w.tail_us}us fsync={w.fsync_us}us+{w.fsync_jitter_us}us"
            f" drift={list(w.drift_pm)}‰ snapshot every {w.snap_every} keep {w.snap_keep}"
            f" append={w.append_bytes}B inflight={w.inflight}"
        ]
        lines.extend("  " + f.describe() for f in self.faults)
        return lines


_WEATHER_FIELDS = (
    "loss_pm",
    "dup_pm",
    "delay_us",
    "jitter_us",
    "tail_pm",
    "tail_us",
    "fsync_us",
    "fsync_jitter_us",
    "drift_pm",
    "snap_every",
    "snap_keep",
    "append_bytes",
    "inflight",
)


class PlanError(ValueError):
    """A plan string that does not parse."""


def decode_plan(text: str) -> FaultPlan:
    """Parse :meth:`FaultPlan.encode` output (whitespace ignored)."""
    text = "".join(text.split())
    weather_text, _, faults_text = text.partition(";")
    values: dict[str, object] = {}
    try:
        for item in filter(None, weather_text.split(",")):
            name, _, value = item.partition("=")
            if name not in _WEATHER_FIELDS:
                raise PlanError(f"unknown weather setting {name!r}")
            values[name] = tuple(int(v) for v in value.split("/") if v) if name == "drift_pm" else int(value)
        faults = []
        for item in filter(None, faults_text.split(",")):
            at, kind, *args = item.split(":")
            if kind not in FAULT_ARGS or len(args) != len(FAULT_ARGS[kind]):
                raise PlanError(f"bad fault {item!r}: kinds are {', '.join(FAULT_ARGS)}")
            faults.append(Fault(int(at), kind, tuple(int(a) for a in args)))
    except ValueError as exc:
        if isinstance(exc, PlanError):
            raise
        raise PlanError(f"malformed plan: {exc}") from None
    return FaultPlan(Weather(**values), tuple(sorted(faults, key=lambda f: f.at_ms)))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ drawing

#: Fault classes a seed may switch on, with the chance that it does.
SWARM_CLASSES: tuple[tuple[str, float], ...] = (
    ("loss", 0.5),
    ("dup", 0.4),
    ("reorder", 0.5),
    ("tail", 0.4),
    ("part", 0.6),
    ("clog", 0.3),
    ("flaky", 0.15),
    ("crash", 0.6),
    ("pause", 0.35),
    ("disk", 0.2),
    ("drift", 0.5),
    ("clock", 0.3),
    ("member", 0.35),
    ("transfer", 0.35),
    ("snapshots", 0.6),
    ("window", 0.4),
    # A storm multiplies the rate of crashes, pauses, partitions, transfers and membership changes.
    ("storm", 0.25),
)


def _random_mask(rng: random.Random, nodes: int, size: int) -> int:
    chosen = rng.sample(range(1, nodes + 1), size)
    return sum(1 << n for n in chosen)


def _draw_fault(rng: random.Random, kind: str, at_ms: int, nodes: int) -> Fault:
    minority = (nodes - 1) // 2
    node = rng.randint(1, nodes) if rng.random() < 0.6 else 0
    salt = rng.getrandbits(31)
    if kind == "part":
        shape = rng.randrange(5)
        size = 1 if shape == 1 else rng.randint(1, max(1, nodes // 2))
        mask = rng.randint(0, max(0, minority - 1)) if shape == 4 else _random_mask(rng, nodes, size)
        args: tuple[int, ...] = (shape, mask, rng.randint(500, 15_000))
    elif kind == "clog":
        args = (rng.randint(2, nodes * (nodes - 1) // 2 + 1), rng.randint(50, 2_000), salt)
    elif kind == "flaky":
        args = (_random_mask(rng, nodes, rng.randint(1, max(1, minority))), rng.randint(100, 500))
    elif kind == "crash":
        args = (node, rng.choice([0, rng.randint(10, 500), rng.randint(500, 10_000)]), rng.randrange(4), rng.randrange(2))
    elif kind == "pause":
        args = (node, rng.randint(100, 8_000))
    elif kind == "disk":
        args = (node or 1 + salt % nodes, rng.randint(0, 3_000), salt)
    elif kind == "clock":
        args = (node, rng.choice([rng.randint(200, 900), rng.randint(1_100, 4_000)]), rng.randint(1_000, 15_000))
    elif kind == "jump":
        args = (node or 1 + salt % nodes, rng.randint(1, 40))
    elif kind == "member":
        args = (rng.choice([0, 1, 2, 3, 3, 3]), rng.choice([1, 1, 2, 3]), salt)
    else:
        args = (salt,)
    return Fault(at_ms, kind, args)


def draw_plan(seed: int, nodes: int, heal_ms: int) -> FaultPlan:
    """The swarm plan of ``seed``: which fault classes are on, how strong, and when each fault hits."""
    rng = random.Random(sub_seed(seed, "plan"))
    on = {name: rng.random() < chance for name, chance in SWARM_CLASSES}
    delay_us = rng.randint(100, 3_000)
    weather = Weather(
        loss_pm=rng.randint(1, 300) if on["loss"] else 0,
        dup_pm=rng.randint(1, 100) if on["dup"] else 0,
        delay_us=delay_us,
        jitter_us=rng.randint(delay_us, 20 * delay_us) if on["reorder"] else delay_us // 4,
        tail_pm=rng.randint(1, 60) if on["tail"] else 0,
        tail_us=rng.randint(20_000, 3_000_000) if on["tail"] else 0,
        fsync_us=rng.randint(100, 15_000),
        fsync_jitter_us=rng.randint(0, 20_000),
        drift_pm=tuple(rng.randint(-60, 60) if on["drift"] else 0 for _ in range(nodes)),
        snap_every=rng.choice([8, 24, 64, 200]) if on["snapshots"] else 10_000,
        snap_keep=rng.choice([0, 2, 16]),
        append_bytes=rng.choice([256, 1024, 4096]) if on["window"] else 16_384,
        inflight=rng.choice([1, 2, 4, 8]) if on["window"] else 32,
    )
    window_ms = max(1, heal_ms - 1_000)
    faults: list[Fault] = []
    per_minute = {"part": 6, "clog": 2, "flaky": 1, "crash": 8, "pause": 4, "disk": 1, "clock": 3, "member": 6, "transfer": 5}
    if on["storm"]:
        for kind in ("part", "crash", "pause", "member", "transfer"):
            per_minute[kind] *= 4
    for kind, rate in per_minute.items():
        if not on[kind]:
            continue
        count = rng.randint(1, max(1, rate * window_ms // 60_000))
        for _ in range(count if kind not in ("flaky", "disk") else min(count, 2)):
            faults.append(_draw_fault(rng, kind, 1_000 + rng.randrange(window_ms), nodes))
    if on["clock"]:
        faults.extend(_draw_fault(rng, "jump", 1_000 + rng.randrange(window_ms), nodes) for _ in range(rng.randint(1, 4)))
    faults.sort(key=lambda f: (f.at_ms, f.kind, f.args))
    return FaultPlan(weather, tuple(faults))


# ------------------------------------------------------------------------------------------ shrinking


def smaller_plans(plan: FaultPlan) -> Iterator[FaultPlan]:
    """Candidate simplifications of ``plan``, most aggressive first (a shrinker keeps the first
    one that still fails, then asks again)."""
    faults = plan.faults
    # Drop chunks of faults: halves, quarters, ... single faults (ddmin-style).
    size = max(1, len(faults) // 2) if faults else 0
    while size >= 1:
        for start in range(0, len(faults), size):
            yield replace(plan, faults=faults[:start] + faults[start + size :])
        size //= 2
    for knob, neutral in Weather.CALM:
        value = getattr(plan.weather, knob)
        if value != neutral:
            calmer: dict[str, Any] = {knob: neutral}
            yield replace(plan, weather=replace(plan.weather, **calmer))
            if abs(value) > 1:
                calmer[knob] = value // 2
                yield replace(plan, weather=replace(plan.weather, **calmer))
    if any(plan.weather.drift_pm):
        yield replace(plan, weather=replace(plan.weather, drift_pm=tuple(0 for _ in plan.weather.drift_pm)))
    for i, fault in enumerate(faults):
        duration = DURATION_KINDS.get(fault.kind)
        if duration is not None and fault.arg(duration) > 50:
            weaker = fault.with_arg(duration, fault.arg(duration) // 2)
            yield replace(plan, faults=faults[:i] + (weaker,) + faults[i + 1 :])
