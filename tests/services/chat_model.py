"""A deliberately naive model of the chat service, for the property tests.

Plain lists and dicts, full scans everywhere, no indexes and no moving heads: slow but obviously
right, so when it and :class:`~trimaran.services.chat.ChatService` disagree the service is the
suspect. It takes commands already known to be well-formed and returns ``("ok", result)`` or
``("err", error class)``. Every event is kept forever; the window is computed as a suffix.
"""

from __future__ import annotations

from typing import Any

from trimaran.errors import LimitExceeded, PresenceExpired
from trimaran.services.chat.channel import MESSAGE_OVERHEAD_BYTES
from trimaran.services.chat.events import EVENT_OVERHEAD_BYTES

DEFAULTS: dict[str, Any] = {
    "channels_max": 10_000,
    "history_messages_max": 1_000,
    "history_bytes_max": 1 << 20,
    "history_bytes_total_max": 256 << 20,
    "history_age_ms": 24 * 3_600_000,
    "events_max": 100_000,
    "events_bytes_max": 16 << 20,
    "presence_ttl_ms": 30_000,
    "presence_sessions_max": 10_000,
    "presence_members_max": 1_000,
    "presence_channels_per_session_max": 100,
}


def msg_size(data: bytes) -> int:
    return len(data) + MESSAGE_OVERHEAD_BYTES


class ModelChat:
    def __init__(self, **config: Any) -> None:
        self.c = {**DEFAULTS, **config}
        # name -> {"epoch", "top", "kept": [[offset, data, at_ms]], "members": {sid: [info, at]}}
        self.channels: dict[str, dict[str, Any]] = {}
        self.sessions: dict[int, dict[str, Any]] = {}  # sid -> {"ttl", "expires", "channels": set}
        self.last_session = 0
        self.epochs = 0
        self.events: list[list[Any]] = []

    # ---------------------------------------------------------------- helpers

    def _epoch(self, now: int) -> str:
        self.epochs += 1
        return f"{now:x}-{self.epochs:x}"

    def _event(self, kind: str, name: str, offset: int | None, now: int, payload: Any) -> None:
        ch = self.channels.get(name)
        self.events.append([len(self.events) + 1, kind, name, offset, ch["epoch"] if ch else None, now, payload])

    def _drop_if_empty(self, name: str, now: int) -> None:
        ch = self.channels[name]
        if not ch["kept"] and not ch["members"]:
            self._event("dropped", name, None, now, None)
            del self.channels[name]

    def total_bytes(self) -> int:
        return sum(msg_size(m[1]) for ch in self.channels.values() for m in ch["kept"])

    def _oldest_anywhere(self, sparing: str | None = None) -> tuple[int, str] | None:
        """(expiry, channel) of the oldest kept message, not counting ``sparing``'s newest."""
        keys = [
            (ch["kept"][0][2] + self.c["history_age_ms"], n)
            for n, ch in self.channels.items()
            if ch["kept"] and not (n == sparing and len(ch["kept"]) == 1)
        ]
        return min(keys) if keys else None

    def _pop_oldest(self, name: str, now: int) -> None:
        self.channels[name]["kept"].pop(0)
        self._drop_if_empty(name, now)

    def advance(self, now: int) -> None:
        due = sorted((s["expires"], sid) for sid, s in self.sessions.items() if s["expires"] <= now)
        for _, sid in due:
            self._end(sid, "expired", now)
        while (oldest := self._oldest_anywhere()) is not None and oldest[0] <= now:
            self._pop_oldest(oldest[1], now)

    def _end(self, sid: int, reason: str, now: int) -> int:
        session = self.sessions.pop(sid)
        for name in sorted(session["channels"]):
            del self.channels[name]["members"][sid]
            self._event("leave", name, None, now, [sid, reason])
            self._drop_if_empty(name, now)
        return len(session["channels"])

    def _room(self, name: str) -> bool:
        return name in self.channels or len(self.channels) < self.c["channels_max"]

    def _make(self, name: str, now: int) -> dict[str, Any]:
        self.channels[name] = {"epoch": self._epoch(now), "top": 0, "kept": [], "members": {}}
        return self.channels[name]

    def _refresh(self, sid: int, now: int) -> int:
        s = self.sessions[sid]
        s["expires"] = now + s["ttl"]
        return s["expires"]

    # ---------------------------------------------------------------- commands

    def apply(self, cmd: list[Any], now: int) -> tuple[str, Any]:
        self.advance(now)
        op = cmd[0]
        opts = cmd[-1] if isinstance(cmd[-1], dict) else {}
        if op == "publish":
            return self._publish(cmd[1], cmd[2], bool(opts.get("ephemeral")), now)
        if op == "reset":
            ch = self.channels.get(cmd[1])
            if ch is None:
                return ("ok", False)
            ch["kept"], ch["top"] = [], 0
            if ch["members"]:
                ch["epoch"] = self._epoch(now)
                self._event("reset", cmd[1], None, now, None)
            else:
                self._drop_if_empty(cmd[1], now)
            return ("ok", True)
        if op == "open":
            if len(self.sessions) >= self.c["presence_sessions_max"]:
                return ("err", LimitExceeded)
            self.last_session += 1
            ttl = opts.get("ttl_ms") or self.c["presence_ttl_ms"]
            self.sessions[self.last_session] = {"ttl": ttl, "expires": now + ttl, "channels": set()}
            return ("ok", [self.last_session, now + ttl])
        if op == "heartbeat":
            if cmd[1] not in self.sessions:
                return ("err", PresenceExpired)
            return ("ok", self._refresh(cmd[1], now))
        if op == "join":
            return self._join(cmd[1], cmd[2], cmd[3], now)
        if op == "leave":
            name, sid = cmd[1], cmd[2]
            if sid not in self.sessions:
                return ("ok", False)
            self._refresh(sid, now)
            if name not in self.channels or sid not in self.channels[name]["members"]:
                return ("ok", False)
            del self.channels[name]["members"][sid]
            self.sessions[sid]["channels"].discard(name)
            self._event("leave", name, None, now, [sid, "left"])
            self._drop_if_empty(name, now)
            return ("ok", True)
        if op == "close":
            return ("ok", self._end(cmd[1], "closed", now) if cmd[1] in self.sessions else 0)
        raise AssertionError(f"model got an unknown op {op}")

    def _publish(self, name: str, data: bytes, ephemeral: bool, now: int) -> tuple[str, Any]:
        ch = self.channels.get(name)
        if ephemeral:
            self._event("ephemeral", name, None, now, data)
            return ("ok", [None, ch["epoch"] if ch else None])
        if ch is None:
            if not self._room(name):
                return ("err", LimitExceeded)
            ch = self._make(name, now)
        ch["top"] += 1
        ch["kept"].append([ch["top"], data, now])
        self._event("message", name, ch["top"], now, data)
        while len(ch["kept"]) > self.c["history_messages_max"] or sum(msg_size(m[1]) for m in ch["kept"]) > self.c["history_bytes_max"]:
            self._pop_oldest(name, now)
        while self.total_bytes() > self.c["history_bytes_total_max"]:
            oldest = self._oldest_anywhere(sparing=name)  # never the message just published
            assert oldest is not None
            self._pop_oldest(oldest[1], now)
        return ("ok", [ch["top"], ch["epoch"]])

    def _join(self, name: str, sid: int, info: bytes, now: int) -> tuple[str, Any]:
        if sid not in self.sessions:
            return ("err", PresenceExpired)
        ch = self.channels.get(name)
        new = ch is None or sid not in ch["members"]
        if new and (
            not self._room(name)
            or (ch is not None and len(ch["members"]) >= self.c["presence_members_max"])
            or len(self.sessions[sid]["channels"]) >= self.c["presence_channels_per_session_max"]
        ):
            return ("err", LimitExceeded)
        self._refresh(sid, now)
        if ch is None:
            ch = self._make(name, now)
        if new:
            ch["members"][sid] = [info, now]
            self.sessions[sid]["channels"].add(name)
        else:
            ch["members"][sid][0] = info
        self._event("join", name, None, now, [sid, info])
        return ("ok", new)

    # ---------------------------------------------------------------- queries

    def history(self, name: str, since: int | None, epoch: str | None) -> dict[str, Any]:
        """The whole answer with every message from the start (the service pages it)."""
        ch = self.channels.get(name)
        top = ch["top"] if ch else 0
        kept = ch["kept"] if ch else []
        oldest = kept[0][0] if kept else top + 1
        cur_epoch = ch["epoch"] if ch else None
        if since is None:
            recovered = True
        else:
            recovered = (epoch is None or epoch == cur_epoch) and since <= top and since + 1 >= oldest
        start = since + 1 if since is not None and recovered else oldest
        return {
            "messages": [m for m in kept if m[0] >= start],
            "epoch": cur_epoch,
            "top": top,
            "oldest": oldest,
            "recovered": recovered,
            "seq": len(self.events),
        }

    def presence(self, name: str) -> list[list[Any]]:
        ch = self.channels.get(name)
        return [[sid, m[0], m[1]] for sid, m in sorted(ch["members"].items())] if ch else []

    def window(self) -> tuple[list[list[Any]], int]:
        """(events kept, the oldest kept seq): the longest suffix within both bounds."""
        kept: list[list[Any]] = []
        size = 0
        for ev in reversed(self.events):
            payload = ev[6]
            p = len(payload) if type(payload) is bytes else (8 + len(payload[1]) if type(payload) is list else 0)
            ev_size = len(ev[2]) + p + EVENT_OVERHEAD_BYTES
            if len(kept) + 1 > self.c["events_max"] or size + ev_size > self.c["events_bytes_max"]:
                break
            kept.append(ev)
            size += ev_size
        return kept[::-1], len(self.events) - len(kept) + 1

    def next_deadline(self) -> int | None:
        due = [s["expires"] for s in self.sessions.values()]
        oldest = self._oldest_anywhere()
        if oldest is not None:
            due.append(oldest[0])
        return min(due) if due else None
