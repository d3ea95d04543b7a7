"""The chat service: channels with dense offsets and a bounded history, presence sessions with a
TTL, and a window of applied events from which every node pushes to its own subscribers.

Everything is decided by the log: "now" is the leader timestamp carried in the entry
(``ApplyContext.timestamp_ms``), offsets and epochs are counted in apply order, and history ages out
and presence lapses in :meth:`ChatService.on_time` at the same entry on every replica. Channel names
are strings of 1..``limits.chat_channel_chars_max`` characters from ``A-Z a-z 0-9 _ . : @ = -``;
message data and presence info are bytes. Every command and query is a list
``[op, required arguments..., {options}?]`` (see :mod:`trimaran.services.chat.args`).

Commands (through the log, exactly-once per client session: the Replica answers a retried
``(client_id, seq)`` from the session's saved answer, so a retried publish never takes a second
offset; validation is complete before anything changes, so a refused command changes nothing):

=============  ======================================  ===============================================
op             arguments / {options}                   result; errors beyond InvalidArgument/TooLarge
=============  ======================================  ===============================================
``publish``    channel, data / {ephemeral: bool}       [offset, epoch]; ephemeral: [None, epoch or
                                                       None]. LimitExceeded (channels_max)
``reset``      channel                                 True if the channel existed: its history is
                                                       cleared and it gets a new epoch (or, without
                                                       members, is forgotten)
``open``       / {ttl_ms}                              [session_id, expires_at_ms]: a new presence
                                                       session. LimitExceeded (sessions_max)
``heartbeat``  session_id                              expires_at_ms (now + the session's ttl_ms).
                                                       PresenceExpired
``join``       channel, session_id, info (bytes)       True if newly joined, False if only ``info``
                                                       changed. PresenceExpired, LimitExceeded
                                                       (channels_max, members_max,
                                                       channels_per_session_max)
``leave``      channel, session_id                     True if the session was in the channel
``close``      session_id                              channels left (int; 0 if the session is gone)
=============  ======================================  ===============================================

Queries (read-only, at the last applied entry's log time):

============  ==========================================  ===========================================
op            arguments / {options}                       result
============  ==========================================  ===========================================
``history``   channel / {since, epoch, limit}             {"messages": [[offset, data,
                                                          published_at_ms], ...], "epoch", "top",
                                                          "oldest", "recovered", "next", "seq"}
``presence``  channel                                     {"members": [[session_id, info,
                                                          joined_at_ms], ...] by session id, "epoch"}
``channels``  / {start_after, limit}                      {"channels": [[name, epoch, top, oldest,
                                                          members], ...] by name, "next"}
``events``    after (seq) / {channel, limit}              {"events": [...], "next", "gap", "seq"};
                                                          see :mod:`trimaran.services.chat.events`
``stats``     (none)                                      {"channels", "messages", "history_bytes",
                                                          "sessions", "members", "seq",
                                                          "events_kept", "next_deadline_ms"}
============  ==========================================  ===========================================

Semantics, and the choices behind them:

- **Offsets** are dense per channel and epoch: 1, 2, 3, ... in apply order, never reused within an
  epoch (a counter, not the history's length, so trimming never hands an offset out twice).
- **Epochs.** A channel's epoch is an opaque string, ``"<timestamp_ms hex>-<n hex>"`` where ``n``
  counts the epochs this service ever made: made when a channel is created (first ``publish`` or
  ``join``) and when ``reset`` clears its history (a reset channel without members is forgotten
  instead, like any channel left with nothing; its next publish makes a new epoch all the same).
  ``(offset, epoch)`` names one message for good: offsets restart at 1 only in a new epoch. The counter makes two epochs of one log distinct even in
  one entry; the leader timestamp makes a wiped and re-made cluster unlikely to repeat an epoch its
  clients still hold.
- **Channel lifetime.** A channel exists while it keeps history or has presence members; once it
  has neither (its last message aged out or was reset, its last member left) it is forgotten (a
  ``dropped`` event) and no longer counts against ``channels_max``. A later publish makes it again
  in a new epoch: a reader that resumes from the old epoch is told ``recovered: false``, which is
  right, since messages may have aged out unseen.
- **Ephemeral** messages (typing indicators, cursors) are applied through the log like any publish
  and appear in the events window (so every node pushes them live, in order with the rest), but
  they are not kept and take no offset: offsets must stay dense over the kept history, so that a
  resuming reader can tell a gap from an ephemeral message it was never meant to replay. They do not
  make a channel exist.
- **Message size.** ``data`` is at most ``message_bytes_max`` bytes (a constructor argument, at most
  ``limits.chat_message_bytes_max``); over it is ``TooLarge``.
- **History** of a channel keeps at most ``history_messages_max`` messages and
  ``history_bytes_max`` bytes (data + ``MESSAGE_OVERHEAD_BYTES`` each), dropping the oldest; a
  message is dropped once log time reaches ``published_at_ms + history_age_ms``; and over all
  channels at most ``history_bytes_total_max`` bytes are kept, dropping the oldest message anywhere
  (by publish time, ties by channel name; never the message being published) first.
- **history(since, epoch)**: ``since`` is the last offset the reader has. ``recovered`` is True when
  nothing after ``since`` is lost: ``since`` is None, or the epoch given (if any) is the channel's,
  ``since <= top`` and ``since + 1 >= oldest``. Then the page starts at ``since + 1``; otherwise at
  ``oldest`` (the reader must reload). ``oldest`` is the oldest offset kept (``top + 1`` when
  none is), ``top`` the last offset assigned (0 if none), ``epoch`` None when the channel does not
  exist. ``limit`` 0 answers the metadata alone; pages are clamped to ``history_limit_max`` messages
  and stop after ``query_result_bytes_max`` bytes; ``next`` is the ``since`` of the next page, or
  None at ``top``. ``seq`` is the events window's latest sequence in the same state: a subscriber
  that replays history and then follows the events after ``seq`` (skipping ``message`` events at or
  below the last offset it replayed) goes live with no gap and no duplicate.
- **Presence**: see :mod:`trimaran.services.chat.presence`. Each gateway connection opens one
  session and heartbeats it (not one per channel); a ``join`` or ``leave`` naming a live session
  also refreshes it. ``leave`` and ``close`` of an unknown or lapsed session change nothing (its
  channels were left already). Every join and leave makes an event.
- **Bounds** (constructor arguments, each checked against its ceiling in :mod:`trimaran.limits`):
  ``channels_max`` channels; ``message_bytes_max`` per message; per channel
  ``history_messages_max`` / ``history_bytes_max`` / ``history_age_ms`` of history and
  ``presence_members_max`` members; ``history_bytes_total_max`` over all channels;
  ``presence_sessions_max`` sessions, each in at most ``presence_channels_per_session_max``
  channels (so one lapse makes a bounded number of leaves), with TTLs in
  [``chat_presence_ttl_ms_min``, ``chat_presence_ttl_ms_max``]; info at most
  ``chat_presence_info_bytes_max``; the events window ``events_max`` / ``events_bytes_max``; query
  pages ``history_limit_max``, ``channels_limit_max``, ``events_limit_max`` items and
  ``query_result_bytes_max`` bytes. Reaching a state bound is ``LimitExceeded`` (details ``limit``,
  ``value``), except retention, which drops the oldest instead.
- **Configuration** (constructor arguments) is part of the state machine's definition: every replica
  must be built with the same values; snapshots do not carry it.
- **Snapshots** hold every channel (history, epoch, top, members), the presence sessions, the epoch
  counter and the events window, in sorted order, so equal states give equal bytes and snapshot ->
  restore -> snapshot is byte-identical.
"""

from __future__ import annotations

from typing import Any, Callable

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from trimaran import limits
from trimaran.errors import ConfigError, LimitExceeded, PresenceExpired, TooLarge
from trimaran.protocols.service import ApplyContext
from trimaran.services.chat import args
from trimaran.services.chat.channel import Channel, message_bytes
from trimaran.services.chat.events import EventWindow, event_bytes
from trimaran.services.chat.presence import PresenceTable

SNAPSHOT_FORMAT = 1
#: Ceiling of a constructor's ``query_result_bytes_max`` (an answer must fit a frame).
query_result_bytes_max_ceiling = limits.frame_bytes_max // 2

#: Planted bugs for the simulator's mutation tests: each breaks a property a checker must catch.
#: Never on in a node.
CHAT_MUTANTS = {
    "offset_from_length": "a publish's offset is the history's length + 1, so offsets repeat once history is trimmed",
    "ephemeral_takes_offset": "an ephemeral publish takes an offset, leaving gaps in the kept history",
    "resume_off_by_one": "history(since) starts at since instead of since + 1: the reader gets its last message again",
    "recovered_off_by_one": "history says recovered when the one message just after since was dropped",
    "epoch_kept_on_reset": "reset clears the history but keeps the epoch, so old (offset, epoch) pairs name new messages",
    "presence_local_clock": "presence sessions lapse by each replica's own clock instead of the log's timestamps",
}

#: What one presence member costs in a ``presence`` answer, beyond its info (an estimate).
MEMBER_OVERHEAD_BYTES = 64

assert query_result_bytes_max_ceiling >= limits.chat_presence_members_max * (
    limits.chat_presence_info_bytes_max + MEMBER_OVERHEAD_BYTES
), "a full channel's presence fits one answer"


class ChatService:
    """The ``chat`` service; see the module docstring for commands, queries and semantics."""

    name = "chat"

    def __init__(
        self,
        channels_max: int = 10_000,
        message_bytes_max: int = limits.chat_message_bytes_max,
        history_messages_max: int = 1_000,
        history_bytes_max: int = 1 * limits.MIB,
        history_bytes_total_max: int = 256 * limits.MIB,
        history_age_ms: int = 24 * 3_600_000,
        events_max: int = 100_000,
        events_bytes_max: int = 16 * limits.MIB,
        presence_ttl_ms: int = 30_000,
        presence_sessions_max: int = 10_000,
        presence_members_max: int = 1_000,
        presence_channels_per_session_max: int = 100,
        history_limit_max: int = 1_000,
        channels_limit_max: int = 1_000,
        events_limit_max: int = 10_000,
        query_result_bytes_max: int = 8 * limits.MIB,
        mutants: frozenset[str] = frozenset(),
        local_clock_ms: Callable[[], int] | None = None,
    ) -> None:
        """``mutants`` (names from :data:`CHAT_MUTANTS`) and ``local_clock_ms`` (the replica's own
        clock, read only by the ``presence_local_clock`` mutant) exist for the simulator alone."""
        unknown = sorted(mutants - CHAT_MUTANTS.keys())
        if unknown or (("presence_local_clock" in mutants) != (local_clock_ms is not None)):
            raise ConfigError(f"chat mutants {unknown or sorted(mutants)}: unknown, or presence_local_clock without its clock")
        _check_config(
            ("channels_max", channels_max, 1, limits.chat_channels_max),
            ("history_messages_max", history_messages_max, 1, limits.chat_history_messages_max),
            ("message_bytes_max", message_bytes_max, 1, limits.chat_message_bytes_max),
            ("history_bytes_max", history_bytes_max, message_bytes(b"x" * message_bytes_max), limits.chat_history_bytes_max),
            ("history_bytes_total_max", history_bytes_total_max, history_bytes_max, limits.chat_history_bytes_total_max),
            ("history_age_ms", history_age_ms, 1, limits.chat_history_age_ms_max),
            ("events_max", events_max, 1, limits.chat_events_max),
            ("events_bytes_max", events_bytes_max, _largest_event_bytes(message_bytes_max), limits.chat_events_bytes_max),
            ("presence_ttl_ms", presence_ttl_ms, limits.chat_presence_ttl_ms_min, limits.chat_presence_ttl_ms_max),
            ("presence_sessions_max", presence_sessions_max, 1, limits.chat_presence_sessions_max),
            ("presence_members_max", presence_members_max, 1, limits.chat_presence_members_max),
            ("presence_channels_per_session_max", presence_channels_per_session_max, 1, limits.chat_presence_channels_per_session_max),
            ("history_limit_max", history_limit_max, 1, limits.msgpack_array_len_max),
            ("channels_limit_max", channels_limit_max, 1, limits.msgpack_array_len_max),
            ("events_limit_max", events_limit_max, 1, limits.msgpack_array_len_max),
            ("query_result_bytes_max", query_result_bytes_max, message_bytes(b"x" * message_bytes_max), query_result_bytes_max_ceiling),
        )  # fmt: skip
        presence_bytes_max = presence_members_max * (limits.chat_presence_info_bytes_max + MEMBER_OVERHEAD_BYTES)
        if presence_bytes_max > query_result_bytes_max:
            raise ConfigError(
                f"chat presence_members_max={presence_members_max} members may need {presence_bytes_max} bytes, "
                f"over query_result_bytes_max={query_result_bytes_max}"
            )
        self.channels_max = channels_max
        self.message_bytes_max = message_bytes_max
        self.history_messages_max = history_messages_max
        self.history_bytes_max = history_bytes_max
        self.history_bytes_total_max = history_bytes_total_max
        self.history_age_ms = history_age_ms
        self.presence_ttl_ms = presence_ttl_ms
        self.presence_sessions_max = presence_sessions_max
        self.presence_members_max = presence_members_max
        self.presence_channels_per_session_max = presence_channels_per_session_max
        self.history_limit_max = history_limit_max
        self.channels_limit_max = channels_limit_max
        self.events_limit_max = events_limit_max
        self.query_result_bytes_max = query_result_bytes_max
        self._mutants = mutants
        self._local_clock_ms = local_clock_ms
        self._channels: dict[str, Channel] = {}
        self._names: SortedList = SortedList()  # channel names, for the channels query
        # (expires_at_ms of the channel's oldest message, name) of every channel keeping history:
        # the age index, and the "oldest message anywhere" order of the total bytes bound.
        self._aging: SortedList = SortedList()
        self._history_bytes = 0
        self._messages = 0
        self._members = 0
        self._epochs = 0
        self._presence = PresenceTable()
        self._events = EventWindow(events_max, events_bytes_max)
        self._commands: dict[type, Callable[[Any, ApplyContext], Any]] = {
            args.PublishCmd: self._publish,
            args.ResetCmd: self._reset,
            args.OpenCmd: self._open,
            args.HeartbeatCmd: self._heartbeat,
            args.JoinCmd: self._join,
            args.LeaveCmd: self._leave,
            args.CloseCmd: self._close,
        }
        self._queries: dict[type, Callable[[Any], Any]] = {
            args.HistoryQuery: self._history,
            args.PresenceQuery: self._presence_of,
            args.ChannelsQuery: self._list_channels,
            args.EventsQuery: self._events_after,
            args.StatsQuery: self._stats,
        }

    # ------------------------------------------------------------------ Service protocol

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        """Apply one command (see the module table); raises ``InvalidArgument``, ``TooLarge``,
        ``LimitExceeded`` or ``PresenceExpired`` having changed nothing."""
        cmd = args.parse_command(command)
        if type(cmd) is args.PublishCmd and len(cmd.data) > self.message_bytes_max:
            raise TooLarge(f"data of {len(cmd.data)} bytes is over message_bytes_max={self.message_bytes_max}")
        # The Replica calls on_time first; doing it here too keeps apply correct on its own.
        self._due(ctx)
        return self._commands[type(cmd)](cmd, ctx)

    def on_time(self, ctx: ApplyContext) -> None:
        """Lapse presence sessions and age out history due at or before this entry's timestamp."""
        self._due(ctx)

    def next_deadline_ms(self) -> int | None:
        due = [d for d in (self._presence.next_deadline_ms(), self._aging[0][0] if self._aging else None) if d is not None]
        return min(due) if due else None

    def query(self, query: Any, ctx: ApplyContext) -> Any:
        """Answer a read-only query against the applied state; never changes state."""
        q = args.parse_query(query)
        return self._queries[type(q)](q)

    @property
    def events_seq(self) -> int:
        """The sequence of the last event made (0: none yet): what an edge compares after a round."""
        return self._events.seq

    def events_after(self, after_seq: int, channel: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """The edge's read of the applied-events window (the ``events`` query without parsing)."""
        limit = min(limit or self.events_limit_max, self.events_limit_max)
        return self._events.after(after_seq, channel, limit, self.query_result_bytes_max)

    # ------------------------------------------------------------------ time

    def _due(self, ctx: ApplyContext) -> None:
        presence_now_ms = self._local_clock_ms() if self._local_clock_ms is not None else ctx.timestamp_ms
        for session_id in self._presence.due(presence_now_ms):
            self._end_session(session_id, "expired", ctx.timestamp_ms)
        aging = self._aging
        while aging and aging[0][0] <= ctx.timestamp_ms:
            self._drop_oldest(self._channels[aging[0][1]], ctx.timestamp_ms)

    # ------------------------------------------------------------------ state changes

    def _new_epoch(self, ctx: ApplyContext) -> str:
        self._epochs += 1
        return f"{ctx.timestamp_ms:x}-{self._epochs:x}"

    def _event(self, kind: str, ch: Channel | None, name: str, offset: int | None, at_ms: int, payload: Any) -> None:
        self._events.record(kind, name, offset, ch.epoch if ch is not None else None, at_ms, payload)

    def _create(self, name: str, ctx: ApplyContext) -> Channel:
        assert name not in self._channels and len(self._channels) < self.channels_max
        ch = Channel(name, self._new_epoch(ctx))
        self._channels[name] = ch
        self._names.add(name)
        return ch

    def _check_room_for(self, name: str) -> None:
        if name not in self._channels and len(self._channels) >= self.channels_max:
            raise LimitExceeded(
                f"{len(self._channels)} chat channels exist, the most allowed (channels_max)",
                limit="channels_max",
                value=self.channels_max,
            )

    def _forget_if_empty(self, ch: Channel, at_ms: int) -> None:
        if len(ch) or ch.members:
            return
        del self._channels[ch.name]
        self._names.remove(ch.name)
        self._event("dropped", ch, ch.name, None, at_ms, None)

    def _aging_key(self, ch: Channel) -> tuple[int, str] | None:
        return (ch.oldest_message()[2] + self.history_age_ms, ch.name) if len(ch) else None

    def _drop_oldest(self, ch: Channel, at_ms: int) -> None:
        """Drop ``ch``'s oldest kept message (retention), and the channel if nothing is left."""
        old_key = self._aging_key(ch)
        m = ch.pop_oldest()
        self._history_bytes -= message_bytes(m[1])
        self._messages -= 1
        if not len(ch):
            self._aging.remove(old_key)
            self._forget_if_empty(ch, at_ms)
            return
        # Messages published in one log entry share its time, so the next oldest usually keeps the
        # channel's key: the sorted list is then left alone (a remove and an add were a third of
        # the apply of a publish into a full channel).
        new_key = self._aging_key(ch)
        if new_key != old_key:
            self._aging.remove(old_key)
            self._aging.add(new_key)

    def _end_session(self, session_id: int, reason: str, at_ms: int) -> int:
        session = self._presence.remove(session_id)
        for name in session.channels:
            ch = self._channels[name]
            del ch.members[session_id]
            self._members -= 1
            self._event("leave", ch, name, None, at_ms, [session_id, reason])
            self._forget_if_empty(ch, at_ms)
        return len(session.channels)

    def _live_session(self, session_id: int) -> None:
        if session_id not in self._presence.sessions:
            raise PresenceExpired(
                f"presence session {session_id} is unknown or lapsed; open a new one and join again",
                session_id=session_id,
            )

    # ------------------------------------------------------------------ commands

    def _publish(self, c: args.PublishCmd, ctx: ApplyContext) -> list[Any]:
        ch = self._channels.get(c.channel)
        if c.ephemeral and "ephemeral_takes_offset" not in self._mutants:
            self._event("ephemeral", ch, c.channel, None, ctx.timestamp_ms, c.data)
            return [None, ch.epoch if ch is not None else None]
        if ch is None:
            self._check_room_for(c.channel)
            ch = self._create(c.channel, ctx)
        if c.ephemeral:  # the ephemeral_takes_offset mutant: an offset is used and nothing kept
            ch.top += 1
            self._event("ephemeral", ch, c.channel, None, ctx.timestamp_ms, c.data)
            self._forget_if_empty(ch, ctx.timestamp_ms)
            return [None, ch.epoch]
        offset = len(ch) + 1 if "offset_from_length" in self._mutants else ch.top + 1
        old_key = self._aging_key(ch)
        ch.append(offset, c.data, ctx.timestamp_ms)
        if old_key is None:
            self._aging.add(self._aging_key(ch))
        self._history_bytes += message_bytes(c.data)
        self._messages += 1
        self._event("message", ch, c.channel, offset, ctx.timestamp_ms, c.data)
        while len(ch) > self.history_messages_max or ch.size_bytes > self.history_bytes_max:
            self._drop_oldest(ch, ctx.timestamp_ms)
        while self._history_bytes > self.history_bytes_total_max:
            # The oldest message anywhere, but never the one just published (on a tie in log time
            # the channel name decides, which could otherwise pick it): another channel holds
            # bytes, since history_bytes_total_max >= one largest message.
            name = self._aging[0][1]
            if name == ch.name and len(ch) == 1:
                name = self._aging[1][1]
            self._drop_oldest(self._channels[name], ctx.timestamp_ms)
        return [offset, ch.epoch]

    def _reset(self, c: args.ResetCmd, ctx: ApplyContext) -> bool:
        ch = self._channels.get(c.channel)
        if ch is None:
            return False
        if len(ch):
            self._aging.remove(self._aging_key(ch))
            self._history_bytes -= ch.size_bytes
            self._messages -= len(ch)
        if not ch.members:  # nothing left: forgotten in its old epoch; a publish makes a new one
            ch.clear(ch.epoch)
            self._forget_if_empty(ch, ctx.timestamp_ms)
            return True
        ch.clear(ch.epoch if "epoch_kept_on_reset" in self._mutants else self._new_epoch(ctx))
        self._event("reset", ch, c.channel, None, ctx.timestamp_ms, None)
        return True

    def _open(self, c: args.OpenCmd, ctx: ApplyContext) -> list[int]:
        if len(self._presence) >= self.presence_sessions_max:
            raise LimitExceeded(
                f"{len(self._presence)} presence sessions are open, the most allowed (presence_sessions_max)",
                limit="presence_sessions_max",
                value=self.presence_sessions_max,
            )
        ttl_ms = c.ttl_ms if c.ttl_ms is not None else self.presence_ttl_ms
        session_id, expires_at_ms = self._presence.open(ttl_ms, ctx.timestamp_ms)
        return [session_id, expires_at_ms]

    def _heartbeat(self, c: args.HeartbeatCmd, ctx: ApplyContext) -> int:
        self._live_session(c.session_id)
        return self._presence.refresh(c.session_id, ctx.timestamp_ms)

    def _join(self, c: args.JoinCmd, ctx: ApplyContext) -> bool:
        self._live_session(c.session_id)
        session = self._presence.sessions[c.session_id]
        ch = self._channels.get(c.channel)
        joined = ch is None or c.session_id not in ch.members
        if joined:
            self._check_room_for(c.channel)
            if ch is not None and len(ch.members) >= self.presence_members_max:
                raise LimitExceeded(
                    f"channel {c.channel} has {len(ch.members)} members, the most allowed (presence_members_max)",
                    limit="presence_members_max",
                    value=self.presence_members_max,
                )
            if len(session.channels) >= self.presence_channels_per_session_max:
                raise LimitExceeded(
                    f"presence session {c.session_id} is in {len(session.channels)} channels, the most "
                    "allowed (presence_channels_per_session_max)",
                    limit="presence_channels_per_session_max",
                    value=self.presence_channels_per_session_max,
                )
        self._presence.refresh(c.session_id, ctx.timestamp_ms)
        if ch is None:
            ch = self._create(c.channel, ctx)
        if joined:
            ch.members[c.session_id] = [c.info, ctx.timestamp_ms]
            session.channels.add(c.channel)
            self._members += 1
        else:
            ch.members[c.session_id][0] = c.info
        self._event("join", ch, c.channel, None, ctx.timestamp_ms, [c.session_id, c.info])
        return joined

    def _leave(self, c: args.LeaveCmd, ctx: ApplyContext) -> bool:
        session = self._presence.sessions.get(c.session_id)
        if session is None:
            return False
        self._presence.refresh(c.session_id, ctx.timestamp_ms)
        ch = self._channels.get(c.channel)
        if ch is None or c.session_id not in ch.members:
            return False
        del ch.members[c.session_id]
        session.channels.remove(c.channel)
        self._members -= 1
        self._event("leave", ch, c.channel, None, ctx.timestamp_ms, [c.session_id, "left"])
        self._forget_if_empty(ch, ctx.timestamp_ms)
        return True

    def _close(self, c: args.CloseCmd, ctx: ApplyContext) -> int:
        if c.session_id not in self._presence.sessions:
            return 0
        return self._end_session(c.session_id, "closed", ctx.timestamp_ms)

    # ------------------------------------------------------------------ queries

    def _history(self, q: args.HistoryQuery) -> dict[str, Any]:
        ch = self._channels.get(q.channel)
        epoch, top = (ch.epoch, ch.top) if ch is not None else (None, 0)
        oldest = ch.oldest if ch is not None else 1
        if q.since is None:
            recovered = True
        else:
            reach = q.since + (2 if "recovered_off_by_one" in self._mutants else 1)
            recovered = (q.epoch is None or q.epoch == epoch) and q.since <= top and reach >= oldest
        start = oldest
        if q.since is not None and recovered:
            start = max(q.since + (0 if "resume_off_by_one" in self._mutants else 1), oldest)
        out: dict[str, Any] = {
            "messages": [], "epoch": epoch, "top": top, "oldest": oldest, "recovered": recovered, "next": None,
            "seq": self._events.seq,
        }  # fmt: skip
        limit = min(self.history_limit_max if q.limit is None else q.limit, self.history_limit_max)
        if ch is None or start > top:
            return out
        if limit == 0:
            out["next"] = start - 1
            return out
        out["messages"], out["next"] = ch.read(start, limit, self.query_result_bytes_max)
        return out

    def _presence_of(self, q: args.PresenceQuery) -> dict[str, Any]:
        ch = self._channels.get(q.channel)
        if ch is None:
            return {"members": [], "epoch": None}
        return {"members": [[sid, m[0], m[1]] for sid, m in sorted(ch.members.items())], "epoch": ch.epoch}

    def _list_channels(self, q: args.ChannelsQuery) -> dict[str, Any]:
        limit = min(q.limit or self.channels_limit_max, self.channels_limit_max)
        if q.start_after is None:
            names = self._names.irange()
        else:
            names = self._names.irange(minimum=q.start_after, inclusive=(False, True))
        out: list[list[Any]] = []
        for name in names:
            if len(out) >= limit:
                return {"channels": out, "next": out[-1][0]}
            ch = self._channels[name]
            out.append([name, ch.epoch, ch.top, ch.oldest, len(ch.members)])
        return {"channels": out, "next": None}

    def _events_after(self, q: args.EventsQuery) -> dict[str, Any]:
        return self.events_after(q.after, q.channel, q.limit)

    def _stats(self, q: args.StatsQuery) -> dict[str, Any]:
        return {
            "channels": len(self._channels),
            "messages": self._messages,
            "history_bytes": self._history_bytes,
            "sessions": len(self._presence),
            "members": self._members,
            "seq": self._events.seq,
            "events_kept": len(self._events),
            "next_deadline_ms": self.next_deadline_ms(),
        }

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> dict[str, Any]:
        """Plain data, in sorted order (see "Snapshots" in the module docstring)."""
        return {
            "format": SNAPSHOT_FORMAT,
            "epochs": self._epochs,
            "channels": [self._channels[name].snapshot() for name in self._names],
            "presence": self._presence.snapshot(),
            "events": self._events.snapshot(),
        }

    def restore(self, data: Any) -> None:
        """Replace the whole state by a snapshot's (taken by a service with the same configuration)."""
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a chat snapshot of format {SNAPSHOT_FORMAT}")
        self._epochs = data["epochs"]
        self._channels = {}
        for item in data["channels"]:
            ch = Channel.from_snapshot(item)
            self._channels[ch.name] = ch
        self._names = SortedList(self._channels)
        self._aging = SortedList(k for k in map(self._aging_key, self._channels.values()) if k is not None)
        self._history_bytes = sum(ch.size_bytes for ch in self._channels.values())
        self._messages = sum(len(ch) for ch in self._channels.values())
        self._members = sum(len(ch.members) for ch in self._channels.values())
        memberships = [(sid, name) for name in self._names for sid in self._channels[name].members]
        self._presence.restore(data["presence"], memberships)
        self._events.restore(data["events"])


def _largest_event_bytes(message_bytes_max: int) -> int:
    """The largest event the window must always hold: a message or a join with the longest info."""
    name = "c" * limits.chat_channel_chars_max
    return max(event_bytes(name, b"x" * message_bytes_max), event_bytes(name, [0, b"x" * limits.chat_presence_info_bytes_max]))


def _check_config(*bounds: tuple[str, int, int, int]) -> None:
    for name, value, minimum, maximum in bounds:
        if type(value) is not int or not minimum <= value <= maximum:
            raise ConfigError(f"chat {name} must be an int in [{minimum}, {maximum}], not {value!r}")
