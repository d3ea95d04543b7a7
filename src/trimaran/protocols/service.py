"""The small protocol through which the Replica drives a replicated service.

A service is a deterministic state machine: ``apply`` sees only the command and the context the log
gives it (index, leader timestamp), never a clock or global randomness, so every replica computes
the same state and the same result. Time is log time: a query sees the timestamp of the last applied
entry, never the reader's clock, so an expired key cannot reappear after a leader change with a
slower clock (which would break linearizability). Errors a caller should see are raised as ``TrimaranError``
subclasses (they are deterministic too, and become the command's saved result).

Commands, results, queries and snapshots are plain msgpack-able data (None, bool, int, float, str,
bytes, lists and str-keyed dicts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(slots=True, frozen=True)
class ApplyContext:
    #: Log index of the entry carrying the command (a service may use it as a revision).
    index: int
    #: Leader-assigned timestamp of that entry, made monotonic by the Replica; the only "now" a
    #: service may use (TTLs, leases, delays).
    timestamp_ms: int


class Service(Protocol):
    #: Name commands address; unique in a Replica.
    name: str

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        """Apply one command; return its result or raise a ``TrimaranError``."""
        ...

    def on_time(self, ctx: ApplyContext) -> None:
        """Log time moved to ``ctx.timestamp_ms``: expire what is due. Called once for every applied
        entry, before its commands, so every replica expires the same things at the same log
        position (a service without timers does nothing)."""
        ...

    def next_deadline_ms(self) -> int | None:
        """The earliest log time at which :meth:`on_time` has work, or None. When it has passed on
        the leader's clock and the log is idle, the leader appends a timestamp-only entry, so log
        time keeps moving without client writes."""
        ...

    def query(self, query: Any, ctx: ApplyContext) -> Any:
        """Answer a read-only query against the applied state; ``ctx`` is the last applied entry's."""
        ...

    def snapshot(self) -> Any:
        """Plain data from which :meth:`restore` rebuilds an identical state."""
        ...

    def restore(self, data: Any) -> None:
        """Replace the whole state by a snapshot's."""
        ...


#: A service MAY also define ``on_unapplied(index: int, command: Any) -> None``: called once at
#: boot for each of its commands in the node's own log past what the node has applied (the Replica's
#: ``_show_unapplied_tail``). Such a command may already be committed (applied before a crash whose
#: commit index never reached the disk) or may never commit. Only edge decisions may use it (the auth
#: service refuses a token whose revocation sits there), never replicated state or query answers.
UNAPPLIED_HOOK = "on_unapplied"
