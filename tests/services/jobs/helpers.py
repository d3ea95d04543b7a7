"""A fake log for the job service's tests: entries with increasing indexes and a log clock."""

from __future__ import annotations

import hashlib
from typing import Any

from trimaran.errors import TrimaranError
from trimaran.protocols.codec import pack
from trimaran.protocols.service import ApplyContext
from trimaran.services.jobs import JobsService


class Log:
    """Each ``entry`` is a new log entry (index + 1) at the current log time; ``on_time`` runs
    before its commands, as the Replica does. Queries see the last entry's index and time."""

    def __init__(self, svc: JobsService | None = None, now_ms: int = 1_000_000) -> None:
        self.svc = svc if svc is not None else JobsService()
        self.index = 0
        self.now_ms = now_ms

    @property
    def ctx(self) -> ApplyContext:
        return ApplyContext(max(self.index, 1), self.now_ms)

    def entry(self, *commands: list[Any], at_ms: int | None = None) -> list[Any]:
        """One entry holding ``commands`` (none: a clock-only entry); each outcome or error raised."""
        self.index += 1
        if at_ms is not None:
            assert at_ms >= self.now_ms
            self.now_ms = at_ms
        ctx = ApplyContext(self.index, self.now_ms)
        self.svc.on_time(ctx)
        out: list[Any] = []
        for cmd in commands:
            try:
                out.append(self.svc.apply(cmd, ctx))
            except TrimaranError as exc:
                out.append(exc)
        return out

    def do(self, cmd: list[Any], at_ms: int | None = None) -> Any:
        """Apply one command in its own entry; raise what it raised."""
        (result,) = self.entry(cmd, at_ms=at_ms)
        if isinstance(result, TrimaranError):
            raise result
        return result

    def tick(self, ms: int) -> None:
        """Log time moves ``ms`` forward with a clock-only entry."""
        self.entry(at_ms=self.now_ms + ms)

    def ask(self, query: list[Any]) -> Any:
        return self.svc.query(query, self.ctx)

    # shorthands
    def enqueue(self, queue: str = "q", payload: bytes = b"p", **opts: Any) -> str:
        return self.do(["enqueue", queue, payload, opts or None])

    def session(self, ttl_ms: int = 10_000, worker: str = "w") -> str:
        return self.do(["session_open", worker, ttl_ms])["session"]

    def claim(self, session: str, queues: list[str] | None = None, n: int = 1) -> list[dict[str, Any]]:
        return self.do(["claim", session, queues or ["q"], n])["jobs"]

    def state(self, job_id: str) -> str | None:
        view = self.ask(["job", job_id])
        return None if view is None else view["state"]


def digest(svc: JobsService) -> str:
    return hashlib.sha256(pack(svc.snapshot())).hexdigest()
