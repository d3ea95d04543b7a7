"""The small protocol through which the Replica drives a replicated service.

A service is a deterministic state machine: ``apply`` sees only the command and the context the log
gives it (index, leader timestamp), never a clock or global randomness, so every replica computes
the same state and the same result. Errors a caller should see are raised as ``TrimaranError``
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

    def query(self, query: Any, ctx: ApplyContext) -> Any:
        """Answer a read-only query against the applied state; ``ctx`` is the last applied entry's."""
        ...

    def snapshot(self) -> Any:
        """Plain data from which :meth:`restore` rebuilds an identical state."""
        ...

    def restore(self, data: Any) -> None:
        """Replace the whole state by a snapshot's."""
        ...
